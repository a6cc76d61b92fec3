/**
 * One connection's buffer for READ data (the iSCSI target's sessions, the NFS server's connections, on a
 * serving thread where a read is answered at once with `readSync`): a read takes a slice instead of a
 * fresh buffer — a fresh 1 MiB buffer a READ costs a page fault for every page it touches. Slices are
 * carved one after another; the arena is used again from the start only once nothing holds a slice (no
 * request in progress and no answer waiting in the socket's queue: the caller says so with `reset`), and
 * a connection whose answers wait in the queue `abandon`s it to them and takes a new one.
 */
export class ReadArena {
  private arena: Buffer | undefined
  private used = 0

  constructor(private readonly size: number) {}

  /** `length` bytes, or undefined for a read larger than a quarter of the arena (a buffer of its own). */
  take(length: number): Buffer | undefined {
    if (length > this.size / 4) return undefined
    if (!this.arena || this.used + length > this.arena.length) {
      this.arena = Buffer.allocUnsafeSlow(this.size)
      this.used = 0
    }
    const b = this.arena.subarray(this.used, this.used + length)
    this.used += length
    return b
  }

  /** Answers waiting in the socket's queue may hold slices: leave the arena to them; the next take starts a new one. */
  abandon(): void {
    this.arena = undefined
  }

  /** Nothing holds a slice any more: carve from the start again. */
  reset(): void {
    this.used = 0
  }
}

/**
 * When a read served on one thread is worth waking another to help (decoding its later chunks and the
 * stream's next ones): a large read, or a small one that continues a sequential run — a client streaming in
 * 32 or 64 KiB requests one at a time. A random small read is not: a wake-up costs more than it would gain.
 * The one rule of the NBD threads' nudge (src/serve/nbd/thread.ts) and of the iSCSI and NFS threads' wake-ups
 * (idle-ahead.ts).
 */

/** Reads of this size or more want help. */
export const HELP_BYTES = 128 * 1024
/** Smaller ones once this many in a row each started where the one before ended (the third in a row). */
export const HELP_AFTER_SEQUENTIAL = 2

/** One thread's view of its own reads: where the last ended, how many in a row started there. */
export class HelpWanted {
  private lastEnd = -1
  private inRow = 0

  /** A read of `length` bytes at `offset` starts on this thread: true when it wants another thread's help. */
  read(offset: number, length: number): boolean {
    this.inRow = offset === this.lastEnd ? this.inRow + 1 : 0
    this.lastEnd = offset + length
    return length >= HELP_BYTES || this.inRow >= HELP_AFTER_SEQUENTIAL
  }
}

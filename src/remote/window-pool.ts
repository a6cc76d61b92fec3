/**
 * Memory for read-ahead windows (readahead.ts), reused. A window lives in a SharedArrayBuffer so that
 * serving threads read its bytes in place (link.ts); a fresh one per window cost the fetching thread more
 * than receiving the bytes: every page of it faulted in, zeroed, and unmapped again later (on this
 * machine a fresh 8 MiB SharedArrayBuffer filled at ~0.3 GB/s against ~9 GB/s for one written again;
 * `--cpu-prof` of `vdev serve URL` under nbdcopy: 1.4 of the main thread's 3.7 s in that copy).
 *
 * Buffers come in four sizes (1, 2, 4 and 8 MiB: a window's length rounded up) and go back to the pool
 * once nobody can read them any more:
 * - the read-ahead has dropped the window (`drop`) and its GET has settled (`settled`): no byte will land
 *   in it again;
 * - and no serving thread holds a view of it: the owner counts a thread in (`hold`) when it posts the
 *   thread a view, the thread counts itself out (`letGo`, on its side of the shared counters) when it no
 *   longer keeps the slice. A thread that dies holding one keeps that buffer out of the pool: it is
 *   forgotten (left to the garbage collector) rather than waited for, past MAX_BUSY.
 * Free buffers are kept up to FREE_BYTES; past that, released ones are left to the garbage collector.
 */

const MiB = 1 << 20
/** Buffer sizes: a window of at most 8 MiB (readahead.ts MAX_WINDOW) fits one. */
const CLASSES = [MiB, 2 * MiB, 4 * MiB, 8 * MiB]
/** Free buffers kept, in bytes. */
const FREE_BYTES = 32 * MiB
/** Slots of the shared holder counts: buffers tracked at once. */
export const SLOTS = 256
/** Buffers dropped but still held by a thread, remembered at most (then forgotten). */
const MAX_BUSY = 64

export interface PooledWindow {
  /** Exactly the window's length, over the pooled buffer's start. */
  buf: Buffer
  /** Its holder count in the shared counters, or -1: not pooled (no slot was free). */
  slot: number
}

interface Entry {
  whole: Buffer
  slot: number
  dropped: boolean
  settled: boolean
}

export class WindowPool {
  /** Int32 per slot: how many serving threads hold a view of the buffer in it. Shared with the threads. */
  readonly holders = new Int32Array(new SharedArrayBuffer(SLOTS * 4))
  private readonly free: Buffer[][] = CLASSES.map(() => [])
  private freeBytes = 0
  private readonly entries = new Map<SharedArrayBuffer, Entry>()
  /** Buffers dropped and settled but still held by a thread: back to `free` once nobody holds them. */
  private busy: Entry[] = []
  private readonly slots: Entry[] = []
  /** Slots of forgotten buffers a thread still holds. */
  private stuck: number[] = []
  private readonly freeSlots: number[] = Array.from({length: SLOTS}, (_, i) => SLOTS - 1 - i)
  /** Buffers allocated and buffers handed out again (for tests and stats). */
  allocated = 0
  reused = 0

  /** A buffer of `len` bytes (≤ 8 MiB) for a window. */
  take(len: number): PooledWindow {
    const c = CLASSES.indexOf(WindowPool.capacity(len))
    if (c < 0) return {buf: Buffer.from(new SharedArrayBuffer(len)), slot: -1}
    this.reclaim()
    // No slot to count holders in (slots held by threads that never let go): memory of its own, not pooled.
    if (!this.freeSlots.length) return {buf: Buffer.from(new SharedArrayBuffer(len)), slot: -1}
    let whole = this.free[c].pop()
    if (whole) {
      this.freeBytes -= whole.length
      this.reused++
    } else {
      whole = Buffer.from(new SharedArrayBuffer(CLASSES[c]))
      this.allocated++
    }
    const slot = this.freeSlots.pop()!
    const e: Entry = {whole, slot, dropped: false, settled: false}
    this.slots[slot] = e
    this.entries.set(whole.buffer as SharedArrayBuffer, e)
    return {buf: whole.subarray(0, len), slot}
  }

  /** The read-ahead no longer holds window `w`. */
  drop(w: PooledWindow): void {
    const e = this.slots[w.slot]
    if (w.slot < 0 || !e || e.whole.buffer !== w.buf.buffer || e.dropped) return
    e.dropped = true
    if (!e.settled) this.landingBytes += e.whole.length
    this.done(e)
  }

  /** No byte will land in window `w` again (its GET succeeded, or failed for good). */
  settled(w: PooledWindow): void {
    const e = this.slots[w.slot]
    if (w.slot < 0 || !e || e.whole.buffer !== w.buf.buffer || e.settled) return
    e.settled = true
    if (e.dropped) this.landingBytes -= e.whole.length
    this.done(e)
  }

  /**
   * Memory of windows the read-ahead dropped whose GET is still landing: the read-ahead's budget counts it
   * (readahead.ts held) until the GET settles.
   */
  landingBytes = 0

  /** The memory behind a window of `len` bytes (what the budget counts). */
  static capacity(len: number): number {
    return CLASSES.find((size) => size >= len) ?? len
  }

  /**
   * The owner posts a serving thread a view of `b` (a window's bytes): count the thread in. Returns the
   * slot the thread counts itself out of (letGo), or -1 when `b` is not a pooled window's.
   */
  hold(b: Buffer): number {
    const e = this.entries.get(b.buffer as SharedArrayBuffer)
    if (!e) return -1
    Atomics.add(this.holders, e.slot, 1)
    return e.slot
  }

  private done(e: Entry): void {
    if (!e.dropped || !e.settled) return
    if (Atomics.load(this.holders, e.slot) === 0) return this.recycle(e)
    this.busy.push(e)
    // A thread that died holding a view never lets go: forget the oldest (the collector frees it).
    if (this.busy.length > MAX_BUSY) this.forget(this.busy.shift()!)
  }

  /** Buffers that nobody holds any more go back; slots of forgotten buffers nobody holds are free again. */
  private reclaim(): void {
    if (this.busy.length) {
      const still: Entry[] = []
      for (const e of this.busy) {
        if (Atomics.load(this.holders, e.slot) === 0) this.recycle(e)
        else still.push(e)
      }
      this.busy = still
    }
    if (this.stuck.length) this.stuck = this.stuck.filter((slot) => Atomics.load(this.holders, slot) !== 0 || !this.freeSlots.push(slot))
  }

  private recycle(e: Entry): void {
    this.forget(e)
    if (this.freeBytes + e.whole.length > FREE_BYTES) return
    this.free[CLASSES.indexOf(e.whole.length)].push(e.whole)
    this.freeBytes += e.whole.length
  }

  private forget(e: Entry): void {
    this.entries.delete(e.whole.buffer as SharedArrayBuffer)
    delete this.slots[e.slot]
    // A slot still held keeps its count: it is given out again only once that is back to 0.
    if (Atomics.load(this.holders, e.slot) === 0) this.freeSlots.push(e.slot)
    else this.stuck.push(e.slot)
  }

  /** Free buffers, in bytes (for tests). */
  get freeNow(): number {
    this.reclaim()
    return this.freeBytes
  }
}

/** On a serving thread: it no longer keeps the view it was posted with `slot` (WindowPool.hold). */
export function letGo(holders: Int32Array | undefined, slot: number | undefined): void {
  if (holders && slot !== undefined && slot >= 0) Atomics.sub(holders, slot, 1)
}

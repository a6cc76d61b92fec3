/**
 * Decode-ahead shared by the serving threads of one device: a few decoded chunks in shared memory, filled
 * by threads that have no request to serve while a reader streams through the image, and read by whichever
 * thread then gets the request for them (docs/performance.md).
 *
 * Every serving thread has its own instance of the image (its own file descriptor, index and decoded-chunk
 * cache); what they share is one SharedArrayBuffer, created by the process's instance (VdimgImage.threadLink)
 * and handed to each thread:
 *
 *   - streams: where the last few sequential readers are (the end of their latest read, how many reads in a
 *     row continued it, when). Two threads serving the halves of one request update a stream in either order;
 *     the table is a heuristic, so plain (racy) stores are enough: a torn value only misdirects one decode.
 *   - slots: `slots` decoded chunks, chunk i in slot i % slots. A slot's `state` (empty, decoding, ready) is
 *     claimed with compare-and-swap, and a `version` that is odd while the slot is written makes a copy out of
 *     it a seqlock read: a copy is used only if the version was even and the same before and after it, and
 *     the slot held the wanted chunk. So no reader ever takes bytes of another chunk or of a half-written one.
 *
 *   - requests: the chunks of each read being served; a thread with nothing to do decodes the last ones while
 *     the reader works from the first (the chunks of one large request decoded on several threads at once).
 *
 * Memory: `slots` chunks (4 MiB of 128 KiB chunks; at least 4 chunks, at most 16 MiB), once per device.
 * Only whole chunks are decoded ahead; bad areas are zeroed by the reader after it copies (FORMAT.md §6), as
 * for any chunk, so the errors a reader sees are exactly those it would see without read-ahead.
 */

/** Bytes of decoded chunks held ahead, per device (rounded to whole chunks, at least MIN_SLOTS). */
export const READ_AHEAD_BYTES = 4 << 20
const MIN_SLOTS = 4
const MAX_SLOTS = 64
/** Streams followed at once (more concurrent sequential readers take turns). */
const STREAMS = 4
/** A read continues a stream when it starts within this many bytes of the stream's end (either side). */
const NEAR = 4 << 20
/** Reads in a row that continue a stream before its chunks are decoded ahead. */
const SEQUENTIAL_AFTER = 2
/** A stream with no read for this long is over. */
const STREAM_IDLE_MS = 1000
/** How long a reader waits for a chunk another thread is decoding ahead before decoding it itself. */
const WAIT_MS = 20

const EMPTY = 0
const DECODING = 1
const READY = 2
/** Decoding it ahead failed (damaged, unreadable): left for the read that needs it, never tried again ahead. */
const FAILED = 3

/** Requests being served at once that idle threads may help with (one per serving thread, at most). */
const REQUESTS = 16

/** Int32 fields: per slot [state, version, length]; the counters; per request [in use]. */
const I_SLOT = 3
const C_PREFETCHED = 0
const C_USED = 1
const C_WAITED = 2
const C_HELPED = 3
const COUNTERS = 4
/** Float64 fields: per slot [chunk]; per stream [end, hits, last use (ms since the epoch)]; per request [first chunk, last chunk, chunk now being read]. */
const F_STREAM = 3
const F_REQUEST = 3

export interface ReadAheadStats {
  /** Chunks decoded ahead. */
  prefetched: number
  /** Chunks read from the shared slots instead of decoded by the reader. */
  used: number
  /** Reads that waited for a chunk another thread was decoding ahead. */
  waited: number
  /** Chunks of a request being served that another, idle, thread decoded for it (counted in `prefetched` too). */
  helped: number
}

/** Layout of the shared buffer for an image of `chunkSize` chunks. */
function geometry(chunkSize: number): {slots: number; ints: number; floats: number; dataAt: number; bytes: number} {
  const slots = Math.max(MIN_SLOTS, Math.min(MAX_SLOTS, Math.floor(READ_AHEAD_BYTES / chunkSize)))
  const ints = slots * I_SLOT + COUNTERS + REQUESTS
  const floats = slots + STREAMS * F_STREAM + REQUESTS * F_REQUEST
  const floatsAt = Math.ceil((ints * 4) / 8) * 8
  const dataAt = Math.ceil((floatsAt + floats * 8) / 64) * 64
  return {slots, ints, floats, dataAt, bytes: dataAt + slots * chunkSize}
}

export class SharedReadAhead {
  readonly slots: number
  private readonly i32: Int32Array
  private readonly f64: Float64Array
  private readonly data: Buffer
  private readonly chunkSize: number

  /** The shared buffer for an image with chunks of `chunkSize` bytes (once per device). */
  static create(chunkSize: number): SharedArrayBuffer {
    return new SharedArrayBuffer(geometry(chunkSize).bytes)
  }

  constructor(sab: SharedArrayBuffer, chunkSize: number) {
    const g = geometry(chunkSize)
    if (sab.byteLength !== g.bytes) throw new Error(`read-ahead buffer of ${sab.byteLength} bytes, not ${g.bytes}`)
    this.slots = g.slots
    this.chunkSize = chunkSize
    this.i32 = new Int32Array(sab, 0, g.ints)
    this.f64 = new Float64Array(sab, Math.ceil((g.ints * 4) / 8) * 8, g.floats)
    this.data = Buffer.from(sab, g.dataAt, g.slots * chunkSize)
  }

  /** Bytes this shares between the threads (the bound on read-ahead's memory). */
  get bytes(): number {
    return this.i32.buffer.byteLength
  }

  stats(): ReadAheadStats {
    const c = this.slots * I_SLOT
    return {
      prefetched: Atomics.load(this.i32, c + C_PREFETCHED),
      used: Atomics.load(this.i32, c + C_USED),
      waited: Atomics.load(this.i32, c + C_WAITED),
      helped: Atomics.load(this.i32, c + C_HELPED),
    }
  }

  private count(which: number): void {
    Atomics.add(this.i32, this.slots * I_SLOT + which, 1)
  }

  /** A read of [offset, offset+length) was served: follow the stream it belongs to, or start one. */
  note(offset: number, length: number): void {
    const f = this.f64
    const base = this.slots
    const now = Date.now()
    let oldest = 0
    for (let s = 0; s < STREAMS; s++) {
      const at = base + s * F_STREAM
      const end = f[at]
      if (f[at + 2] > 0 && now - f[at + 2] < STREAM_IDLE_MS && offset >= end - NEAR && offset <= end + NEAR) {
        if (offset + length > end) f[at] = offset + length
        f[at + 1] = f[at + 1] + 1
        f[at + 2] = now
        return
      }
      if (f[at + 2] < f[base + oldest * F_STREAM + 2]) oldest = s
    }
    const at = base + oldest * F_STREAM
    f[at] = offset + length
    f[at + 1] = 0
    f[at + 2] = now
  }

  /**
   * A read of chunks first..last begins (only worth it for two chunks or more): idle threads may decode its
   * later chunks while the reader works through the first ones (help). Returns a handle for `reading` and
   * `end`, or -1 (no free entry: the read goes alone).
   */
  begin(first: number, last: number): number {
    if (last <= first) return -1
    const base = this.slots * I_SLOT + COUNTERS
    for (let r = 0; r < REQUESTS; r++) {
      if (Atomics.compareExchange(this.i32, base + r, 0, 2) !== 0) continue // 2: being set up
      const at = this.slots + STREAMS * F_STREAM + r * F_REQUEST
      this.f64[at] = first
      this.f64[at + 1] = last
      this.f64[at + 2] = first
      Atomics.store(this.i32, base + r, 1)
      return r
    }
    return -1
  }

  /** The read of handle `r` now decodes chunk i itself: helpers take only chunks after it. */
  reading(r: number, i: number): void {
    if (r >= 0) this.f64[this.slots + STREAMS * F_STREAM + r * F_REQUEST + 2] = i
  }

  /** The read of handle `r` is done. */
  end(r: number): void {
    if (r >= 0) Atomics.store(this.i32, this.slots * I_SLOT + COUNTERS + r, 0)
  }

  /** Whether a slot holds chunk i or is being written (then tryClaim would refuse it): a cheap first look. */
  private held(i: number): boolean {
    const slot = i % this.slots
    const st = Atomics.load(this.i32, slot * I_SLOT)
    return st === DECODING || (st !== EMPTY && this.f64[slot] === i)
  }

  /**
   * Claim chunk i's slot for decoding, unless a slot holds it or is being written, or holds another chunk
   * that is still `wanted` (ahead of a live stream or of a read under way): two streams whose windows meet in
   * one slot would otherwise evict each other's chunk turn by turn, and idle threads decode for ever.
   */
  private tryClaim(i: number, wanted: (j: number) => boolean): number {
    const slot = i % this.slots
    const st = Atomics.load(this.i32, slot * I_SLOT)
    if (st !== EMPTY && this.f64[slot] === i) return -1 // there, or on its way
    if (st === DECODING) return -1 // another chunk is being written there
    if (st !== EMPTY && wanted(this.f64[slot])) return -1 // another chunk someone will read soon
    if (Atomics.compareExchange(this.i32, slot * I_SLOT, st, DECODING) !== st) return -1
    Atomics.add(this.i32, slot * I_SLOT + 1, 1) // odd: being written
    this.f64[slot] = i
    return slot
  }

  /**
   * The next chunk worth decoding ahead — the first of a live sequential stream's next `slots / 2` chunks
   * that no slot holds or is decoding — claimed for the caller (slot state: decoding), or undefined.
   * `skip(i)` says chunks with nothing to decode (zero, unread, past the end).
   */
  claim(skip: (i: number) => boolean): {chunk: number; slot: number} | undefined {
    const f = this.f64
    const base = this.slots * I_SLOT + COUNTERS
    const ms = Date.now()
    const ahead = this.slots >> 1
    // The chunks someone will read soon: each read under way's rest, each live stream's next `ahead`.
    const windows: number[] = []
    for (let r = 0; r < REQUESTS; r++) {
      if (Atomics.load(this.i32, base + r) !== 1) continue
      const at = this.slots + STREAMS * F_STREAM + r * F_REQUEST
      windows.push(f[at + 2], Math.min(f[at + 1], f[at + 2] + ahead))
    }
    for (let s = 0; s < STREAMS; s++) {
      const at = this.slots + s * F_STREAM
      if (f[at + 1] < SEQUENTIAL_AFTER || ms - f[at + 2] >= STREAM_IDLE_MS) continue
      const first = Math.floor(f[at] / this.chunkSize)
      windows.push(first, first + ahead - 1)
    }
    const wanted = (j: number): boolean => {
      for (let w = 0; w < windows.length; w += 2) if (j >= windows[w] && j <= windows[w + 1]) return true
      return false
    }
    // First, help a read under way: its last chunks, from the end back towards the one its reader is on.
    for (let r = 0; r < REQUESTS; r++) {
      if (Atomics.load(this.i32, base + r) !== 1) continue
      const at = this.slots + STREAMS * F_STREAM + r * F_REQUEST
      const now = f[at + 2]
      for (let i = Math.min(f[at + 1], now + (this.slots >> 1)); i > now; i--) {
        if (Atomics.load(this.i32, base + r) !== 1) break
        // skip() looks the chunk up in the index: only for chunks no slot has.
        if (this.held(i) || skip(i)) continue
        const slot = this.tryClaim(i, wanted)
        if (slot >= 0) {
          this.count(C_HELPED)
          return {chunk: i, slot}
        }
      }
    }
    // Then the next chunks of a live sequential stream.
    for (let s = 0; s < STREAMS; s++) {
      const at = this.slots + s * F_STREAM
      if (f[at + 1] < SEQUENTIAL_AFTER || ms - f[at + 2] >= STREAM_IDLE_MS) continue
      const first = Math.floor(f[at] / this.chunkSize)
      for (let i = first; i < first + ahead; i++) {
        if (this.held(i) || skip(i)) continue
        const slot = this.tryClaim(i, wanted)
        if (slot >= 0) return {chunk: i, slot}
      }
    }
    return undefined
  }

  /** Where a claimed slot's chunk is decoded to (`length` bytes). */
  slotBuffer(slot: number, length: number): Buffer {
    return this.data.subarray(slot * this.chunkSize, slot * this.chunkSize + length)
  }

  /**
   * Finish a claimed slot: its chunk decoded (`length` bytes), or failed — then the slot keeps the chunk's
   * number with nothing in it, so that idle threads do not claim it again and again (a damaged chunk would
   * keep them decoding it until its stream went idle); the read that needs it decodes it and fails itself.
   */
  release(slot: number, length: number | undefined): void {
    const b = slot * I_SLOT
    Atomics.store(this.i32, b + 2, length ?? 0)
    Atomics.add(this.i32, b + 1, 1) // even: written
    Atomics.store(this.i32, b, length === undefined ? FAILED : READY)
    if (length !== undefined) this.count(C_PREFETCHED)
    Atomics.notify(this.i32, b)
  }

  /**
   * Copy bytes [from, to) of chunk i into `out` at `at` when a slot holds it (when another thread is
   * decoding it right now: first `whileWaiting()` — one unit of decode-ahead, as long as it finds one and the
   * chunk is not ready — then a wait of a moment); false when it is not there (the caller decodes it itself).
   */
  copyOut(i: number, out: Buffer, at: number, from: number, to: number, whileWaiting?: () => boolean): boolean {
    const slot = i % this.slots
    const b = slot * I_SLOT
    let st = Atomics.load(this.i32, b)
    if ((st !== READY && st !== DECODING) || this.f64[slot] !== i) return false
    if (st === DECODING) {
      this.count(C_WAITED)
      // Rather than sleep while another thread finishes this chunk, decode ones nobody has started (a
      // reader that only waited would keep pace with the helper instead of working beside it).
      while (whileWaiting?.()) if ((st = Atomics.load(this.i32, b)) !== DECODING) break
      const until = Date.now() + WAIT_MS
      while (st === DECODING && Date.now() < until) {
        Atomics.wait(this.i32, b, DECODING, WAIT_MS)
        st = Atomics.load(this.i32, b)
      }
      if (st !== READY) return false
    }
    const v = Atomics.load(this.i32, b + 1)
    if (v & 1 || this.f64[slot] !== i || Atomics.load(this.i32, b + 2) < to) return false
    this.data.copy(out, at, slot * this.chunkSize + from, slot * this.chunkSize + to)
    if (Atomics.load(this.i32, b + 1) !== v || this.f64[slot] !== i) return false
    this.count(C_USED)
    return true
  }
}

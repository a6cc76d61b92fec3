/**
 * Read-ahead for sequential streams over a remote object, after mountpoint-s3's prefetcher and nbdkit's
 * readahead filter, for several streams at once (nbdcopy reads a device as four sequential streams 128 MiB
 * apart; the serving threads' reads of one stream arrive slightly out of order).
 *
 * A stream is where reads have been going: a read within SLACK (256 KiB) of a stream's last read continues
 * it. A read that continues a stream for the second time running (within RECENT reads of the last: random
 * reads land near a stream now and then, rarely twice in a row) and lies past everything the stream
 * fetched ahead starts a window there;
 * the window starts at 1 MiB and doubles with each window the stream starts, up to MAX_WINDOW; the next
 * window is fetched while the stream is half way through the current one. A read that a window holds is
 * answered from it. Anything else — a read behind the stream's windows (out of order), one that straddles
 * a window's end, one of 1 MiB or more (verify and extract read ~4 MiB batches: their own read-ahead) —
 * goes straight to the server for exactly its bytes. A read near no stream (a seek) goes straight to the
 * server and becomes a new stream, replacing the least recently used of MAX_STREAMS; its windows start at
 * 1 MiB again.
 *
 * A window stops where bytes another stream read or will read begin (claimed()): streams over consecutive
 * parts of the object fetch each byte once. The window a stream moved on from is kept until the stream is
 * SLACK past it, for its stragglers.
 *
 * Memory: the windows' buffers held (each stream's current, next and previous, and dropped ones still landing;
 * window-pool.ts rounds a window up to 1, 2, 4 or 8 MiB) stay within BUDGET bytes in all, whatever the access
 * pattern: a window that would exceed it is not started (the read goes straight to the server).
 */

import {WindowPool, type PooledWindow} from './window-pool'

export const INITIAL_WINDOW = 1 << 20
export const MAX_WINDOW = 8 << 20
/** How far from a stream's last read a read still continues it (serving threads reorder a few chunks). */
const SLACK = 256 << 10
/** A continuation counts towards starting windows only if the stream was used within this many reads. */
const RECENT = 8
export const MAX_STREAMS = 8
/** A stream used within this many reads is active: where it began cuts other streams' windows (claimed()). */
const ACTIVE = 64
/** Bytes of windows held at once, over every stream. */
export const BUDGET = 32 << 20

/**
 * GET [pos, pos+len). With `window`: into `window.into` (a SharedArrayBuffer's bytes: serving threads read
 * a window in place, link.ts), telling `window.arrived` how many bytes from the start have landed (a retry
 * GETs the rest only; after a malformed answer — more bytes than asked — it starts over, writing the same
 * bytes of the pinned object again).
 */
export type Fetch = (len: number, pos: number, window?: {into: Buffer; arrived: (n: number) => void}) => Promise<Buffer>

/** A read answered from a window waits for its bytes, and for this many more when the window has them. */
const SLICE_MIN = 256 << 10

interface Span {
  pos: number
  len: number
  /** The window's bytes (memory from the pool); those before `received` have landed. */
  buf: Buffer
  mem: PooledWindow
  received: number
  /** Reads waiting for bytes [pos, pos+need) of the window to land. */
  waiters: Array<{need: number; resolve: () => void; reject: (e: unknown) => void}>
  failed?: unknown
}

interface Stream {
  /** Where its lowest read began (its first reads may arrive out of order). */
  begin: number
  lastEnd: number
  /** Recent reads that continued it: windows start from the second (random reads rarely continue one twice). */
  runs: number
  window: number
  current?: Span
  next?: Span
  /** The window before `current`, kept until the stream is SLACK past it: its reads arrive slightly out of order. */
  prev?: Span
  used: number
}

export class ReadAhead {
  private streams: Stream[] = []
  private tick = 0
  /** Reads answered from a window, and windows fetched (for tests and stats). */
  hits = 0
  windows = 0

  constructor(
    private readonly fetch: Fetch,
    private readonly size: () => number,
    /** Where windows' memory comes from and goes back to (window-pool.ts). */
    readonly pool = new WindowPool(),
  ) {}

  /** The read-ahead no longer holds `w` (its memory goes back to the pool once nothing reads it). */
  private drop(w: Span | undefined): void {
    if (w) this.pool.drop(w.mem)
  }

  private dropStream(s: Stream): void {
    for (const w of windowsOf(s)) this.drop(w)
  }

  /**
   * Memory of windows held now: each window's buffer (its length rounded up to 1, 2, 4 or 8 MiB,
   * window-pool.ts), and the buffers of windows dropped while their GET still lands.
   */
  get held(): number {
    let n = this.pool.landingBytes
    for (const s of this.streams) for (const w of windowsOf(s)) n += w.mem.buf.buffer.byteLength
    return n
  }

  /**
   * The bytes [pos, pos+len); when a window holds them, up to `max` bytes from `pos` (never past the
   * window, nor past what of it has landed), so that a serving thread can answer the stream's next reads
   * itself (link.ts). What a window answers is a view of its SharedArrayBuffer (its bytes are never changed
   * once landed): copy it to keep or hand it on.
   */
  read(len: number, pos: number, max = len): Promise<Buffer> {
    const end = pos + len
    let s = this.streams.find((x) => windowsOf(x).some((w) => inside(w, pos, end)))
    s ??= this.streams.find((x) => pos >= x.lastEnd - SLACK && pos <= x.lastEnd + SLACK)
    if (!s) {
      // A seek: a new stream, straight to the server.
      if (this.streams.length >= MAX_STREAMS) {
        const lru = this.streams.reduce((a, b) => (a.used <= b.used ? a : b))
        this.streams.splice(this.streams.indexOf(lru), 1)
        this.dropStream(lru)
      }
      this.streams.push({begin: pos, lastEnd: end, runs: 0, window: INITIAL_WINDOW, used: ++this.tick})
      return this.fetch(len, pos)
    }
    // Random reads land near a stream now and then; a stream read again and again is a stream.
    s.runs = this.tick - s.used <= RECENT ? s.runs + 1 : 0
    s.used = ++this.tick
    s.lastEnd = Math.max(s.lastEnd, end)
    s.begin = Math.min(s.begin, pos)
    if (s.next && inside(s.next, pos, end)) {
      // The stream reached the window fetched ahead: it becomes the current one.
      this.drop(s.prev)
      s.prev = s.current
      s.current = s.next
      s.next = undefined
    }
    if (s.prev && pos >= s.prev.pos + s.prev.len + SLACK) {
      this.drop(s.prev)
      s.prev = undefined
    }
    const p = s.prev
    if (p && inside(p, pos, end)) {
      // A straggler of the stream (serving threads reorder its reads) behind the window it moved on to.
      this.hits++
      return answer(p, pos, end, Math.max(end, Math.min(p.pos + p.len, pos + max)))
    }
    const c = s.current
    if (c && inside(c, pos, end)) {
      this.hits++
      // What the caller takes: the stream has read that far (the window's half-way mark counts it).
      const upto = Math.max(end, Math.min(c.pos + c.len, pos + max))
      s.lastEnd = Math.max(s.lastEnd, upto)
      if (!s.next && upto > c.pos + c.len / 2 && c.pos + c.len < this.size()) s.next = this.start(s, c.pos + c.len)
      return answer(c, pos, end, upto)
    }
    // Behind or across what the stream fetched ahead, or a large read: exactly its bytes.
    const frontier = Math.max(c ? c.pos + c.len : 0, s.next ? s.next.pos + s.next.len : 0)
    if (len >= INITIAL_WINDOW || pos < frontier || s.runs < 2) return this.fetch(len, pos)
    const span = this.start(s, pos, len)
    if (!span) return this.fetch(len, pos)
    this.dropStream(s)
    s.current = span
    s.next = undefined
    s.prev = undefined
    const upto = Math.max(end, Math.min(span.pos + span.len, pos + max))
    s.lastEnd = Math.max(s.lastEnd, upto)
    return answer(span, pos, end, upto)
  }

  /** Fetch a window for stream `s` from `pos` (at least `min` bytes) within the budget, and double its next one. */
  private start(s: Stream, pos: number, min = 0): Span | undefined {
    const len = Math.min(this.size() - pos, Math.max(min, s.window), this.claimed(s, pos) - pos)
    if (len < min || len <= 0) return undefined
    // What this window replaces (the stream's current one, when it starts afresh) is freed with it.
    // (Dropped, they count until their GETs settle: only those already landed are freed at once.)
    const freed = min > 0 ? windowsOf(s).reduce((n, w) => n + (w.received === w.len ? w.mem.buf.buffer.byteLength : 0), 0) : 0
    if (this.held - freed + WindowPool.capacity(len) > BUDGET) return undefined
    s.window = Math.min(MAX_WINDOW, s.window * 2)
    this.windows++
    const mem = this.pool.take(len)
    const span: Span = {pos, len, buf: mem.buf, mem, received: 0, waiters: []}
    const arrived = (n: number): void => {
      if (n <= span.received) return
      span.received = n
      if (span.waiters.some((w) => w.need <= n)) {
        const ready = span.waiters.filter((w) => w.need <= n)
        span.waiters = span.waiters.filter((w) => w.need > n)
        for (const w of ready) w.resolve()
      }
    }
    this.fetch(len, pos, {into: span.buf, arrived}).then(
      () => {
        arrived(len)
        // After the reads just answered have taken their views (microtasks: a thread's view is counted
        // as it is posted, WindowPool.hold) — not before, or the memory could go back to the pool under them.
        setImmediate(() => this.pool.settled(mem))
      },
      (err) => {
        // A failed window is dropped: the reads that wanted it get the error, later reads fetch again.
        span.failed = err
        for (const w of span.waiters.splice(0)) w.reject(err)
        if (s.current === span) s.current = undefined
        if (s.next === span) s.next = undefined
        if (s.prev === span) s.prev = undefined
        this.pool.drop(mem)
        setImmediate(() => this.pool.settled(mem))
      },
    )
    return span
  }

  /**
   * Where the bytes from `pos` on are another stream's: `pos` itself when a window of another stream holds
   * it, or when an active stream that began ahead of this one has read past `pos` from where it began; else
   * the nearest point past `pos` where such a stream began or a window of another stream starts. That
   * stream reads (or read) the bytes from there, so a window of this one stops there. Active: read at least
   * twice running or holding a window (a random read near by is not a stream), and used within the last
   * ACTIVE reads (a stream of long ago does not cut a re-read's windows; nor does a stream that began behind
   * this one, as a re-read from inside what it read). nbdcopy reads a device as 128 MiB segments on four
   * connections: without this each stream's last window ran up to 8 MiB into the next segment, which that
   * segment's own stream had fetched (16 % more bytes than the image for a whole read, bench:remote).
   */
  private claimed(s: Stream, pos: number): number {
    let at = Infinity
    for (const o of this.streams) {
      if (o === s) continue
      for (const w of windowsOf(o)) {
        if (w.pos <= pos && pos < w.pos + w.len) return pos
        if (w.pos > pos) at = Math.min(at, w.pos)
      }
      // Another active stream that began ahead of this one: its bytes from where it began.
      if (o.begin <= s.begin || this.tick - o.used > ACTIVE || (o.runs < 2 && !o.current && !o.next)) continue
      if (pos >= o.begin && pos < o.lastEnd) return pos
      if (o.begin > pos) at = Math.min(at, o.begin)
    }
    return at
  }

  clear(): void {
    for (const s of this.streams) this.dropStream(s)
    this.streams = []
  }
}

/**
 * A read's answer from window `w`: once its bytes [pos, end) have landed, and SLICE_MIN more (within
 * `upto`), the bytes from `pos` up to `upto` or to what has landed, whichever comes first — a view of the
 * window's shared memory. A window streams in: a read waits for its own bytes, not for the whole window.
 */
function answer(w: Span, pos: number, end: number, upto: number): Promise<Buffer> {
  const need = Math.min(upto, Math.max(end, pos + SLICE_MIN)) - w.pos
  const slice = (): Buffer => w.buf.subarray(pos - w.pos, Math.max(end - w.pos, Math.min(upto - w.pos, w.received)))
  if (w.received >= need) return Promise.resolve(slice())
  if (w.failed !== undefined) return Promise.reject(w.failed)
  return new Promise<void>((resolve, reject) => w.waiters.push({need, resolve, reject})).then(slice)
}

/** The windows stream `s` holds (current, next, previous). */
function windowsOf(s: Stream): Span[] {
  const out: Span[] = []
  if (s.current) out.push(s.current)
  if (s.next) out.push(s.next)
  if (s.prev) out.push(s.prev)
  return out
}

function inside(s: Span, pos: number, end: number): boolean {
  return pos >= s.pos && end <= s.pos + s.len
}

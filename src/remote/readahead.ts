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
 * Memory: windows held (each stream's current and next) stay within BUDGET bytes in all, whatever the
 * access pattern: a window that would exceed it is not started (the read goes straight to the server).
 */

export const INITIAL_WINDOW = 1 << 20
export const MAX_WINDOW = 8 << 20
/** How far from a stream's last read a read still continues it (serving threads reorder a few chunks). */
const SLACK = 256 << 10
/** A continuation counts towards starting windows only if the stream was used within this many reads. */
const RECENT = 8
export const MAX_STREAMS = 8
/** Bytes of windows held at once, over every stream. */
export const BUDGET = 32 << 20

/** `shared`: the bytes in a SharedArrayBuffer (a window: serving threads read it in place, link.ts). */
type Fetch = (len: number, pos: number, shared?: boolean) => Promise<Buffer>

interface Span {
  pos: number
  len: number
  data: Promise<Buffer>
}

interface Stream {
  lastEnd: number
  /** Recent reads that continued it: windows start from the second (random reads rarely continue one twice). */
  runs: number
  window: number
  current?: Span
  next?: Span
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
  ) {}

  /** Bytes of windows held now. */
  get held(): number {
    let n = 0
    for (const s of this.streams) n += (s.current?.len ?? 0) + (s.next?.len ?? 0)
    return n
  }

  /**
   * The bytes [pos, pos+len); when a window holds them, up to `max` bytes from `pos` (never past the
   * window), so that a serving thread can answer the stream's next reads itself (link.ts). What a window
   * answers is a view of its SharedArrayBuffer (never written again): copy it to keep or hand it on.
   */
  read(len: number, pos: number, max = len): Promise<Buffer> {
    const end = pos + len
    let s = this.streams.find((x) => (x.current && inside(x.current, pos, end)) || (x.next && inside(x.next, pos, end)))
    s ??= this.streams.find((x) => pos >= x.lastEnd - SLACK && pos <= x.lastEnd + SLACK)
    if (!s) {
      // A seek: a new stream, straight to the server.
      if (this.streams.length >= MAX_STREAMS) this.streams.splice(this.streams.indexOf(this.streams.reduce((a, b) => (a.used <= b.used ? a : b))), 1)
      this.streams.push({lastEnd: end, runs: 0, window: INITIAL_WINDOW, used: ++this.tick})
      return this.fetch(len, pos)
    }
    // Random reads land near a stream now and then; a stream read again and again is a stream.
    s.runs = this.tick - s.used <= RECENT ? s.runs + 1 : 0
    s.used = ++this.tick
    s.lastEnd = Math.max(s.lastEnd, end)
    if (s.next && inside(s.next, pos, end)) {
      // The stream reached the window fetched ahead: it becomes the current one.
      s.current = s.next
      s.next = undefined
    }
    const c = s.current
    if (c && inside(c, pos, end)) {
      this.hits++
      // What the caller takes: the stream has read that far (the window's half-way mark counts it).
      const upto = Math.max(end, Math.min(c.pos + c.len, pos + max))
      s.lastEnd = Math.max(s.lastEnd, upto)
      if (!s.next && upto > c.pos + c.len / 2 && c.pos + c.len < this.size()) s.next = this.start(s, c.pos + c.len)
      return c.data.then((d) => d.subarray(pos - c.pos, upto - c.pos))
    }
    // Behind or across what the stream fetched ahead, or a large read: exactly its bytes.
    const frontier = Math.max(c ? c.pos + c.len : 0, s.next ? s.next.pos + s.next.len : 0)
    if (len >= INITIAL_WINDOW || pos < frontier || s.runs < 2) return this.fetch(len, pos)
    const span = this.start(s, pos, len)
    if (!span) return this.fetch(len, pos)
    s.current = span
    s.next = undefined
    const upto = Math.max(end, Math.min(span.pos + span.len, pos + max))
    s.lastEnd = Math.max(s.lastEnd, upto)
    return span.data.then((d) => d.subarray(0, upto - pos))
  }

  /** Fetch a window for stream `s` from `pos` (at least `min` bytes) within the budget, and double its next one. */
  private start(s: Stream, pos: number, min = 0): Span | undefined {
    const len = Math.min(this.size() - pos, Math.max(min, s.window))
    // What this window replaces (the stream's current one, when it starts afresh) is freed with it.
    const freed = min > 0 ? (s.current?.len ?? 0) + (s.next?.len ?? 0) : 0
    if (this.held - freed + len > BUDGET) return undefined
    s.window = Math.min(MAX_WINDOW, s.window * 2)
    this.windows++
    const span: Span = {pos, len, data: this.fetch(len, pos, true)}
    // A failed window is dropped: the reads that wanted it get the error, later reads fetch again.
    span.data.catch(() => {
      if (s.current === span) s.current = undefined
      if (s.next === span) s.next = undefined
    })
    return span
  }

  clear(): void {
    this.streams = []
  }
}

function inside(s: Span, pos: number, end: number): boolean {
  return pos >= s.pos && end <= s.pos + s.len
}

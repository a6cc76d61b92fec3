/**
 * Read-ahead for sequential streams over a remote object, after mountpoint-s3's prefetcher and nbdkit's
 * readahead filter: a read that continues the previous one (within SLACK, since serving threads' reads
 * arrive slightly out of order) fetches a window from where it starts; the window starts at 1 MiB and
 * doubles with each window the stream uses, up to MAX_WINDOW; the next window is fetched while the
 * stream is half way through the current one; a read elsewhere (a seek) goes straight to the server and
 * the next sequential run starts again at 1 MiB. A read of 1 MiB or more is its own read-ahead (verify and
 * extract read ~4 MiB batches, several at once) and goes straight to the server. Memory: at most two
 * windows (the current one and the one being fetched), 2 × MAX_WINDOW, whatever the access pattern.
 */

export const INITIAL_WINDOW = 1 << 20
export const MAX_WINDOW = 8 << 20
/** How far from the previous read's end a read still counts as continuing it. */
const SLACK = 1 << 20

type Fetch = (len: number, pos: number) => Promise<Buffer>

interface Span {
  pos: number
  len: number
  data: Promise<Buffer>
}

export class ReadAhead {
  private window = INITIAL_WINDOW
  private current: Span | undefined
  private next: Span | undefined
  private lastEnd = -1
  /** Reads answered from a window, and windows fetched (for tests and stats). */
  hits = 0
  windows = 0

  constructor(
    private readonly fetch: Fetch,
    private readonly size: () => number,
  ) {}

  read(len: number, pos: number): Promise<Buffer> {
    const end = pos + len
    const continues = this.lastEnd >= 0 && pos >= this.lastEnd - SLACK && pos <= this.lastEnd + SLACK
    this.lastEnd = Math.max(end, continues ? this.lastEnd : 0)
    if (this.next && inside(this.next, pos, end)) {
      // The stream reached the window fetched ahead: it becomes the current one.
      this.current = this.next
      this.next = undefined
    }
    const c = this.current
    // A read of a window or more (verify and extract read ~4 MiB batches, several at once) does its own
    // read-ahead: it goes straight to the server, and a window fetched beside it would be wasted.
    if (len >= INITIAL_WINDOW && !(c && inside(c, pos, end))) return this.fetch(len, pos)
    if (c && inside(c, pos, end)) {
      this.hits++
      if (!this.next && end > c.pos + c.len / 2 && c.pos + c.len < this.size()) this.next = this.start(c.pos + c.len)
      return c.data.then((d) => Buffer.from(d.subarray(pos - c.pos, end - c.pos)))
    }
    if (!continues) {
      // A seek: straight to the server, and the next run starts small.
      this.window = INITIAL_WINDOW
      return this.fetch(len, pos)
    }
    const span = this.start(pos, len)
    this.current = span
    this.next = undefined
    return span.data.then((d) => Buffer.from(d.subarray(0, len)))
  }

  /** Fetch a window from `pos` (at least `min` bytes), and double the next one's size. */
  private start(pos: number, min = 0): Span {
    const len = Math.min(this.size() - pos, Math.max(min, this.window))
    this.window = Math.min(MAX_WINDOW, this.window * 2)
    this.windows++
    const span: Span = {pos, len, data: this.fetch(len, pos)}
    // A failed window is dropped: the reads that wanted it get the error, later reads fetch again.
    span.data.catch(() => {
      if (this.current === span) this.current = undefined
      if (this.next === span) this.next = undefined
    })
    return span
  }

  clear(): void {
    this.current = undefined
    this.next = undefined
    this.lastEnd = -1
    this.window = INITIAL_WINDOW
  }
}

function inside(s: Span, pos: number, end: number): boolean {
  return pos >= s.pos && end <= s.pos + s.len
}

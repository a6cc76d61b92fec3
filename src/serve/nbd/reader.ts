/**
 * Exact-length reads from a stream socket: the protocol code asks for n bytes and gets exactly n, or an
 * EndOfStream when the peer goes away first. Input is buffered only up to a high-water mark (the socket
 * is paused above it), and skipped payloads are dropped as they arrive, never buffered whole.
 */
import type {Socket} from 'node:net'

export class EndOfStream extends Error {
  constructor() {
    super('connection closed by the peer')
    this.name = 'EndOfStream'
  }
}

const HIGH_WATER = 4 * 1024 * 1024

export class SocketReader {
  private chunks: Buffer[] = []
  private available = 0
  private ended = false
  private pending: {n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void} | null = null
  private skipping: {left: number; resolve: () => void; reject: (e: Error) => void} | null = null
  private paused = false

  constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => this.push(d))
    socket.on('end', () => this.end())
    socket.on('close', () => this.end())
  }

  private push(d: Buffer): void {
    if (this.skipping) {
      const drop = Math.min(d.length, this.skipping.left)
      this.skipping.left -= drop
      d = d.subarray(drop)
      if (this.skipping.left === 0) {
        const s = this.skipping
        this.skipping = null
        s.resolve()
      }
      if (d.length === 0) return
    }
    this.chunks.push(d)
    this.available += d.length
    if (this.pending && this.available >= this.pending.n) {
      const p = this.pending
      this.pending = null
      p.resolve(this.take(p.n))
    }
    // Above the mark, stop reading, unless a read waits for more than that (it bounds its own size).
    if (this.available > HIGH_WATER && !this.paused && !this.pending) {
      this.paused = true
      this.socket.pause()
    }
  }

  private end(): void {
    if (this.ended) return
    this.ended = true
    const err = new EndOfStream()
    if (this.pending) {
      const p = this.pending
      this.pending = null
      p.reject(err)
    }
    if (this.skipping) {
      const s = this.skipping
      this.skipping = null
      s.reject(err)
    }
  }

  private take(n: number): Buffer {
    // A zero-length WRITE has a payload of no bytes, and nothing need be buffered for it.
    if (n === 0) return Buffer.alloc(0)
    let out: Buffer
    const first = this.chunks[0]
    if (first.length >= n) {
      out = first.subarray(0, n)
      if (first.length === n) this.chunks.shift()
      else this.chunks[0] = first.subarray(n)
    } else {
      out = Buffer.allocUnsafe(n)
      let at = 0
      while (at < n) {
        const c = this.chunks[0]
        const k = Math.min(c.length, n - at)
        c.copy(out, at, 0, k)
        at += k
        if (k === c.length) this.chunks.shift()
        else this.chunks[0] = c.subarray(k)
      }
    }
    this.available -= n
    if (this.paused && this.available <= HIGH_WATER / 2) {
      this.paused = false
      this.socket.resume()
    }
    return out
  }

  /** n bytes now if they are buffered, else null (the fast path of the request loop). */
  tryRead(n: number): Buffer | null {
    return this.available >= n ? this.take(n) : null
  }

  /** Exactly n bytes. The caller bounds n (it never comes from the wire unchecked). */
  read(n: number): Promise<Buffer> {
    if (this.available >= n) return Promise.resolve(this.take(n))
    if (this.ended) return Promise.reject(new EndOfStream())
    if (this.paused) {
      this.paused = false
      this.socket.resume()
    }
    return new Promise((resolve, reject) => (this.pending = {n, resolve, reject}))
  }

  /** Every byte buffered so far, taken out of the reader (the socket is being handed to someone else). */
  takeBuffered(): Buffer {
    const out = this.available > 0 ? this.take(this.available) : Buffer.alloc(0)
    return Buffer.from(out) // a copy: `take` may return a view of a larger chunk
  }

  /** Put bytes taken by takeBuffered back in front (the hand-off did not happen). */
  putBack(b: Buffer): void {
    if (b.length === 0) return
    this.chunks.unshift(b)
    this.available += b.length
  }

  /** Discard n bytes without keeping them (a refused write's payload). */
  skip(n: number): Promise<void> {
    const now = Math.min(n, this.available)
    if (now > 0) this.take(now)
    const left = n - now
    if (left === 0) return Promise.resolve()
    if (this.ended) return Promise.reject(new EndOfStream())
    if (this.paused) {
      this.paused = false
      this.socket.resume()
    }
    return new Promise((resolve, reject) => (this.skipping = {left, resolve, reject}))
  }
}

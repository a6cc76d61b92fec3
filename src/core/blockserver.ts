/**
 * The block-serving core every backend uses: a request (offset, length) in, bytes or an errno out.
 * It applies the bad-area policy (default: EIO for any request touching a bad area — requests are
 * sector-aligned, so this is exact at sector granularity; `zero`: bad bytes read as zeros), bounds the
 * number of reads in flight, counts what it serves, and can drain before a backend tears down.
 */
import type {BlockSource, ReadResult} from './source'
import type {BadRange} from './errors'

export type BadPolicy = 'error' | 'zero'

/** A failed block request, carrying the errno a backend hands the kernel or a protocol peer. */
export class BlockError extends Error {
  constructor(
    readonly errno: 'EIO' | 'EINVAL' | 'ENOSPC' | 'EPERM' | 'ESHUTDOWN',
    message: string,
    readonly bad: BadRange[] = [],
  ) {
    super(message)
    this.name = 'BlockError'
  }
}

export interface BlockStats {
  reads: number
  bytes: number
  errors: number
  badReads: number
  inFlight: number
  cacheHits?: number
  cacheMisses?: number
}

export interface BlockServerOptions {
  badPolicy?: BadPolicy
  /** Reads served at once; more wait in a queue. */
  maxInFlight?: number
  /** Called for faults (not bad areas), so a daemon can log them. */
  onFault?: (offset: number, length: number, err: unknown) => void
}

export class BlockServer {
  readonly size: number
  readonly sectorSize: number
  readonly badPolicy: BadPolicy
  private readonly maxInFlight: number
  private inFlight = 0
  private waiting: Array<() => void> = []
  private idle: Array<() => void> = []
  private closed = false
  private readonly counters = {reads: 0, bytes: 0, errors: 0, badReads: 0}

  constructor(
    readonly source: BlockSource & {cacheStats?: () => {hits: number; misses: number}},
    private readonly opts: BlockServerOptions = {},
  ) {
    this.size = source.size
    this.sectorSize = source.sectorSize
    this.badPolicy = opts.badPolicy ?? 'error'
    this.maxInFlight = opts.maxInFlight ?? 64
  }

  get stats(): BlockStats {
    const c = this.source.cacheStats?.()
    return {...this.counters, inFlight: this.inFlight, cacheHits: c?.hits, cacheMisses: c?.misses}
  }

  /** Serve one read. Rejects with BlockError only. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRequest(offset, length)
    await this.acquire()
    this.counters.reads++
    try {
      return this.accept(await this.source.read(offset, length), length)
    } catch (err) {
      if (err instanceof BlockError) throw err
      this.counters.errors++
      this.opts.onFault?.(offset, length, err)
      throw new BlockError('EIO', (err as Error)?.message ?? String(err))
    } finally {
      this.release()
    }
  }

  /**
   * Serve one read synchronously into `dst` (or a new buffer), for serving threads over a synchronous
   * source (see BlockSource.readSync). Same checks, policy and counters as read(); throws BlockError.
   */
  readSync(offset: number, length: number, dst?: Buffer): Buffer {
    if (!this.source.synchronous || !this.source.readSync) throw new BlockError('EINVAL', 'source cannot be read synchronously')
    this.checkRequest(offset, length)
    this.counters.reads++
    let r
    try {
      r = this.source.readSync(offset, length, dst)
    } catch (err) {
      this.counters.errors++
      this.opts.onFault?.(offset, length, err)
      throw new BlockError('EIO', (err as Error)?.message ?? String(err))
    }
    return this.accept(r, length)
  }

  /** The checks every request gets before the source is asked: open, well formed, inside the image. */
  private checkRequest(offset: number, length: number): void {
    if (this.closed) throw new BlockError('ESHUTDOWN', 'device is shutting down')
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw new BlockError('EINVAL', `invalid request (${offset}, ${length})`)
    if (offset + length > this.size)
      throw new BlockError('EINVAL', `read of ${length} bytes at ${offset} extends past the end (${this.size})`)
  }

  /** The bad-area policy and counters applied to what the source answered. */
  private accept(r: ReadResult, length: number): Buffer {
    if (r.bad.length > 0) {
      this.counters.badReads++
      if (this.badPolicy === 'error') {
        this.counters.errors++
        const b = r.bad[0]
        throw new BlockError('EIO', `unreadable area at byte ${b.offset} (${b.status})`, r.bad)
      }
    }
    this.counters.bytes += length
    return r.data
  }

  private acquire(): Promise<void> {
    if (this.inFlight < this.maxInFlight) {
      this.inFlight++
      return Promise.resolve()
    }
    return new Promise((resolve) => this.waiting.push(() => (this.inFlight++, resolve())))
  }

  private release(): void {
    this.inFlight--
    const next = this.waiting.shift()
    if (next) next()
    else if (this.inFlight === 0) for (const f of this.idle.splice(0)) f()
  }

  /** Refuse new reads and wait for those in flight (and queued) to finish. */
  async drain(): Promise<void> {
    this.closed = true
    if (this.inFlight === 0 && this.waiting.length === 0) return
    await new Promise<void>((resolve) => this.idle.push(resolve))
  }
}

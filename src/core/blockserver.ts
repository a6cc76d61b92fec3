/**
 * The block-serving core every backend and protocol server uses: a request (offset, length) in, bytes or
 * an errno out. It checks each request, passes it through the layers over the source (the bad-area
 * policy, src/layers/bad-policy.ts), bounds the reads in flight, counts what it serves and can drain
 * before a backend tears down.
 *
 * Counters live in a Float64Array slot (src/core/counters.ts): the server's own, or a slot of shared memory
 * on a serving thread. Serving threads register their slots with the main thread's server (addCounters),
 * so `stats` is the whole device's, however many threads serve it.
 */
import type {BlockSource, ReadResult} from './source'
import {COUNTER, CounterSlots, SLOT_SIZE, addSlot, zeroCounts, type ServedCounts} from './counters'
import {BlockError, type BadPolicy} from './block-error'
import {BadAreaPolicy} from '../layers/bad-policy'

export {BlockError, errnoOf, type BadPolicy} from './block-error'

export type BlockStats = ServedCounts

/** What a writable server (an overlay) took: writes, write-zeroes, discards, flushes and their bytes. */
export type WriteStats = Pick<ServedCounts, 'writes' | 'writeBytes' | 'zeroes' | 'trims' | 'flushes' | 'writeErrors'>

export interface BlockServerOptions {
  badPolicy?: BadPolicy
  /** Reads served at once; more wait in a queue. */
  maxInFlight?: number
  /** Called for faults (not bad areas), so a daemon can log them. */
  onFault?: (offset: number, length: number, err: unknown) => void
  /** Called when a write, write-zeroes, discard or flush fails (a full or failing disk under the overlay). */
  onWriteFault?: (what: string, offset: number, length: number, err: BlockError) => void
  /** Count into this slot (SLOT_SIZE values; a serving thread's slot of shared memory) instead of its own. */
  counters?: Float64Array
  /** Called as each read starts (a serving thread's idle work: src/threads/idle-ahead.ts). */
  onRead?: (offset: number, length: number) => void
}

export class BlockServer {
  readonly size: number
  readonly sectorSize: number
  readonly badPolicy: BadPolicy
  /** The top of the layer stack reads go through. */
  private readonly top: BlockSource
  private readonly maxInFlight: number
  private inFlight = 0
  private waiting: Array<() => void> = []
  private idle: Array<() => void> = []
  private closed = false
  private readonly c: Float64Array
  private readonly others: CounterSlots[] = []

  constructor(
    /** The source at the bottom of the stack (its descriptor opens it again on a serving thread). */
    readonly source: BlockSource,
    private readonly opts: BlockServerOptions = {},
  ) {
    this.size = source.size
    this.sectorSize = source.sectorSize
    this.badPolicy = opts.badPolicy ?? 'error'
    this.maxInFlight = opts.maxInFlight ?? 64
    this.top = new BadAreaPolicy(source, this.badPolicy)
    this.c = opts.counters ?? new Float64Array(SLOT_SIZE)
  }

  /** Count the reads of serving threads (their shared slots) in `stats`. */
  addCounters(slots: CounterSlots): void {
    this.others.push(slots)
  }

  /** What this server and every serving thread registered with it have served. */
  get stats(): BlockStats {
    this.publishCache()
    const out = addSlot(zeroCounts(), this.c)
    for (const s of this.others) s.sum(out)
    return out
  }

  /** The writes part of `stats` (every thread's). */
  get writeStats(): WriteStats {
    const {writes, writeBytes, zeroes, trims, flushes, writeErrors} = this.stats
    return {writes, writeBytes, zeroes, trims, flushes, writeErrors}
  }

  /** The counter slot this server counts into. */
  get counters(): Float64Array {
    return this.c
  }

  /** Copy the source's cache counters into the slot (cheap; called after each synchronous read). */
  private publishCache(): void {
    const cs = this.source.cacheStats?.()
    if (!cs) return
    this.c[COUNTER.cacheHits] = cs.hits
    this.c[COUNTER.cacheMisses] = cs.misses
  }

  /** Serve one read. Rejects with BlockError only. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRequest(offset, length)
    this.opts.onRead?.(offset, length)
    await this.acquire()
    this.c[COUNTER.reads]++
    try {
      return this.accept(await this.top.read(offset, length), length)
    } catch (err) {
      throw this.failed(offset, length, err)
    } finally {
      this.release()
    }
  }

  /** For a serving thread with no request: one unit of the source's read-ahead work (BlockSource.prefetch); false when none. */
  prefetch(): boolean {
    if (this.closed) return false
    return this.source.prefetch?.() ?? false
  }

  /**
   * Serve one read synchronously into `dst` (or a new buffer), for serving threads over a synchronous
   * source (see BlockSource.readSync). Same checks, policy and counters as read(); throws BlockError.
   */
  readSync(offset: number, length: number, dst?: Buffer): Buffer {
    if (!this.top.synchronous || !this.top.readSync) throw new BlockError('EINVAL', 'source cannot be read synchronously')
    this.checkRequest(offset, length)
    this.opts.onRead?.(offset, length)
    this.c[COUNTER.reads]++
    this.c[COUNTER.inFlight]++
    try {
      return this.accept(this.top.readSync(offset, length, dst), length)
    } catch (err) {
      throw this.failed(offset, length, err)
    } finally {
      this.c[COUNTER.inFlight]--
      this.publishCache()
    }
  }

  /** True when readSync answers without waiting on a device, the network or another thread (BlockSource.immediate). */
  get immediate(): boolean {
    return this.top.immediate === true && this.top.readSync !== undefined
  }

  /** True when the source takes writes (an overlay): then write, zero, trim and flush may be called. */
  get writable(): boolean {
    return this.source.writable === true
  }

  /** Serve one write. Rejects with BlockError only: EPERM on a read-only source, ENOSPC past the end. */
  write(offset: number, data: Buffer, opts: {fua?: boolean} = {}): Promise<void> {
    return this.mutation(offset, data.length, 'write', () => {
      this.c[COUNTER.writes]++
      this.c[COUNTER.writeBytes] += data.length
      return this.source.write!(offset, data, opts)
    })
  }

  /** Make a range read as zeros. */
  zero(offset: number, length: number, opts: {fua?: boolean} = {}): Promise<void> {
    return this.mutation(offset, length, 'write-zeroes', () => (this.c[COUNTER.zeroes]++, this.source.zero!(offset, length, opts)))
  }

  /** Discard a range (it reads as zeros afterwards). */
  trim(offset: number, length: number, opts: {fua?: boolean} = {}): Promise<void> {
    return this.mutation(offset, length, 'trim', () => (this.c[COUNTER.trims]++, this.source.trim!(offset, length, opts)))
  }

  /** Make every write answered so far durable. A read-only server has nothing to flush. */
  async flush(): Promise<void> {
    if (!this.writable) return
    if (this.closed) throw new BlockError('ESHUTDOWN', 'device is shutting down')
    this.c[COUNTER.flushes]++
    await this.acquire()
    try {
      await this.source.flush!()
    } catch (err) {
      const e = this.writeFailed(err)
      this.opts.onWriteFault?.('flush', 0, 0, e)
      throw e
    } finally {
      this.release()
    }
  }

  private async mutation(offset: number, length: number, what: string, f: () => Promise<void>): Promise<void> {
    if (this.closed) throw new BlockError('ESHUTDOWN', 'device is shutting down')
    if (!this.writable) throw new BlockError('EPERM', 'the export is read-only')
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw new BlockError('EINVAL', `invalid request (${offset}, ${length})`)
    // NBD: "The server SHOULD return NBD_ENOSPC if it receives a write request including one or more sectors beyond the size".
    if (offset + length > this.size) throw new BlockError('ENOSPC', `${what} of ${length} bytes at ${offset} extends past the end (${this.size})`)
    await this.acquire()
    try {
      await f()
    } catch (err) {
      const e = this.writeFailed(err)
      this.opts.onWriteFault?.(what, offset, length, e)
      throw e
    } finally {
      this.release()
    }
  }

  private writeFailed(err: unknown): BlockError {
    this.c[COUNTER.writeErrors]++
    if (err instanceof BlockError) return err
    return new BlockError('EIO', (err as Error)?.message ?? String(err))
  }

  /** The checks every request gets before the source is asked: open, well formed, inside the image. */
  private checkRequest(offset: number, length: number): void {
    if (this.closed) throw new BlockError('ESHUTDOWN', 'device is shutting down')
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw new BlockError('EINVAL', `invalid request (${offset}, ${length})`)
    if (offset + length > this.size)
      throw new BlockError('EINVAL', `read of ${length} bytes at ${offset} extends past the end (${this.size})`)
  }

  /** Counters for what the layers answered. */
  private accept(r: ReadResult, length: number): Buffer {
    if (r.bad.length > 0) this.c[COUNTER.badReads]++
    this.c[COUNTER.bytes] += length
    return r.data
  }

  /** Every failure becomes a BlockError: bad areas (from the policy layer) as they are, faults as EIO, logged. */
  private failed(offset: number, length: number, err: unknown): BlockError {
    this.c[COUNTER.errors]++
    if (err instanceof BlockError) {
      if (err.bad.length > 0) this.c[COUNTER.badReads]++
      return err
    }
    this.opts.onFault?.(offset, length, err)
    return new BlockError('EIO', (err as Error)?.message ?? String(err))
  }

  private acquire(): Promise<void> {
    if (this.inFlight < this.maxInFlight) {
      this.inFlight++
      this.c[COUNTER.inFlight]++
      return Promise.resolve()
    }
    return new Promise((resolve) => this.waiting.push(() => (this.inFlight++, this.c[COUNTER.inFlight]++, resolve())))
  }

  private release(): void {
    this.inFlight--
    this.c[COUNTER.inFlight]--
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

/**
 * A serving thread's view of the overlay (docs/OVERLAY.md, "Serving"): the thread's own instance of the
 * base (opened synchronously from the base's descriptor) for reads of ranges the overlay has never touched;
 * its own appends of whole-sector writes, write-zeroes and discards without FUA to the one log, at the
 * append point it shares with the owner (overlay-log.ts: the same lock, sequence and tail, so the log is
 * exactly what the owner alone would have written); and a link to the overlay's owner (src/layers/overlay.ts,
 * Overlay.threadLink) for everything else — reads of covered ranges, partial-sector and FUA writes,
 * flushes and extents. The coverage bitmap is set before a record is written, and a record is published to
 * the owner's map before the write is answered, so a read that starts after a write was acknowledged sees
 * the bit, asks the owner, and the owner's map has the record. A serving thread answers one request at a
 * time: every call is synchronous (Atomics.wait).
 */
import {BlockError} from '../core/block-error'
import type {BlockSource, Extent, ReadResult, SourceDescriptor, WriteOptions} from '../core/source'
import {SyncCaller} from '../threads/sync-call'
import {MAX_RECORD_DATA, REC_TRIM, REC_WRITE, REC_ZERO, writeError, type OverlayAnswer, type OverlayCall, type OverlayLink} from './overlay'
import {SharedLog} from './overlay-log'

const ERRNOS = new Set(['EIO', 'EINVAL', 'ENOSPC', 'EPERM', 'ESHUTDOWN'])

export class OverlayView implements BlockSource {
  readonly size: number
  readonly sectorSize: number
  readonly writable = true
  readonly synchronous = true
  readonly descriptor: SourceDescriptor
  private readonly owner: SyncCaller<OverlayCall, OverlayAnswer>
  private readonly bits: Uint8Array
  private readonly granuleShift: number
  private readonly log: SharedLog
  private readonly id: Buffer
  private readonly path: string

  constructor(
    private readonly base: BlockSource,
    link: OverlayLink,
    descriptor: SourceDescriptor,
  ) {
    if (!base.synchronous || !base.readSync) throw new BlockError('EINVAL', 'an overlay view needs a base opened for synchronous reads')
    this.size = base.size
    this.sectorSize = base.sectorSize
    this.descriptor = descriptor
    this.owner = new SyncCaller(link.link)
    this.bits = new Uint8Array(link.coverage)
    this.granuleShift = link.granuleShift
    this.log = new SharedLog(link.log)
    this.id = Buffer.from(link.id)
    this.path = descriptor.path
  }

  /**
   * Append the record of a whole-sector mutation without FUA here, on this thread (false: the owner must do
   * it — a partial sector to merge, FUA, a range past the end, an empty range or data over a record's most).
   * Zero and discard records carry no data: one record for any length, as the owner writes them.
   */
  private append(type: number, offset: number, length: number, fua: boolean | undefined, data?: Buffer): boolean {
    const s = this.sectorSize
    if (fua || length <= 0 || (data && length > MAX_RECORD_DATA) || offset < 0 || offset + length > this.size) return false
    if (offset % s !== 0 || (length % s !== 0 && offset + length !== this.size)) return false
    // Set before the record is written: from now on reads of these granules go to the owner.
    const g = 2 ** this.granuleShift
    for (let i = Math.floor(offset / g), last = Math.floor((offset + length - 1) / g); i <= last; i++) Atomics.or(this.bits, i >> 3, 1 << (i & 7))
    for (let attempt = 0; ; attempt++) {
      // No limit: compaction holds the lock through its last step (as long as that takes), as the owner's appends wait.
      this.log.lock()
      let r: ReturnType<SharedLog['appendLocked']>
      try {
        r = this.log.appendLocked(this.id, type, offset, length, data)
      } catch (err) {
        throw writeError(this.path, err)
      } finally {
        this.log.unlock()
      }
      if (r === 'closed') throw new BlockError('ESHUTDOWN', 'the overlay is closed')
      if (r === 'full') {
        // The owner has not taken the records published so far: have it do so now, then try again.
        if (attempt > 0) return false
        this.call({op: 'poke'})
        continue
      }
      // The tail reached the point where the owner looks at compaction again: tell it, without waiting.
      if (r) this.owner.post({op: 'poke'})
      return true
    }
  }

  /** Whether the overlay has touched any granule of [offset, offset+length). */
  private covered(offset: number, length: number): boolean {
    if (length === 0) return false
    const g = 2 ** this.granuleShift
    for (let i = Math.floor(offset / g), last = Math.floor((offset + length - 1) / g); i <= last; i++) {
      if (Atomics.load(this.bits, i >> 3) & (1 << (i & 7))) return true
    }
    return false
  }

  private call(c: OverlayCall, transfer: ArrayBuffer[] = []): OverlayAnswer {
    try {
      return this.owner.call(c, transfer)
    } catch (err) {
      const code = (err as {code?: string}).code
      throw new BlockError(code && ERRNOS.has(code) ? (code as BlockError['errno']) : 'EIO', (err as Error).message)
    }
  }

  readSync(offset: number, length: number, dst?: Buffer): ReadResult {
    if (!this.covered(offset, length)) return this.base.readSync!(offset, length, dst)
    const a = this.call({op: 'read', offset, length})
    const data = Buffer.from(a.data!)
    if (data.length !== length) throw new BlockError('EIO', `the overlay's owner answered ${data.length} bytes for a read of ${length}`)
    if (dst && dst.length >= length) {
      data.copy(dst, 0)
      return {data: dst.subarray(0, length), bad: a.bad ?? []}
    }
    return {data, bad: a.bad ?? []}
  }

  read(offset: number, length: number): Promise<ReadResult> {
    return settle(() => this.readSync(offset, length))
  }

  write(offset: number, data: Buffer, opts: WriteOptions = {}): Promise<void> {
    return settle(() => {
      if (this.append(REC_WRITE, offset, data.length, opts.fua, data)) return
      // The thread's buffer is reused for the next request: the owner gets a copy of its own.
      const copy = new Uint8Array(data).buffer as ArrayBuffer
      this.call({op: 'write', offset, data: copy, fua: opts.fua}, [copy])
    })
  }

  zero(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    return settle(() => void (this.append(REC_ZERO, offset, length, opts.fua) || this.call({op: 'zero', offset, length, fua: opts.fua})))
  }

  trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    return settle(() => void (this.append(REC_TRIM, offset, length, opts.fua) || this.call({op: 'trim', offset, length, fua: opts.fua})))
  }

  flush(): Promise<void> {
    return settle(() => void this.call({op: 'flush'}))
  }

  /** The owner's exclusive turn, waited for here (this thread blocks until it is granted), then given back. */
  async exclusive<T>(f: () => Promise<T>): Promise<T> {
    this.call({op: 'lock'})
    try {
      return await f()
    } finally {
      this.call({op: 'unlock'})
    }
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    return settle(() => this.call({op: 'extents', offset, length}).extents ?? [])
  }

  cacheStats() {
    return this.base.cacheStats?.() ?? {hits: 0, misses: 0}
  }

  async close(): Promise<void> {
    this.owner.close()
    await this.base.close()
  }
}

function settle<T>(f: () => T): Promise<T> {
  try {
    return Promise.resolve(f())
  } catch (err) {
    return Promise.reject(err)
  }
}

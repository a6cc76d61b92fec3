/**
 * The bad-area policy as a layer over any source, in the manner of nbdkit's ddrescue filter: under
 * `error` a read that touches a bad area fails with EIO (requests are sector-aligned, so this is exact per
 * sector) and names the first bad byte; under `zero` it passes the zeros the source returned there. Either
 * way the bad ranges stay in the result or the error, so the server above can count them.
 */
import {BlockError, type BadPolicy} from '../core/block-error'
import type {BlockSource, Extent, ReadResult, SourceDescriptor} from '../core/source'

export class BadAreaPolicy implements BlockSource {
  readonly size: number
  readonly sectorSize: number

  constructor(
    readonly inner: BlockSource,
    readonly policy: BadPolicy,
  ) {
    this.size = inner.size
    this.sectorSize = inner.sectorSize
  }

  get synchronous(): boolean {
    return this.inner.synchronous === true
  }

  get immediate(): boolean {
    return this.inner.immediate === true
  }

  get descriptor(): SourceDescriptor | undefined {
    return this.inner.descriptor
  }

  async read(offset: number, length: number): Promise<ReadResult> {
    return this.apply(await this.inner.read(offset, length))
  }

  readSync(offset: number, length: number, dst?: Buffer): ReadResult {
    if (!this.inner.readSync) throw new BlockError('EINVAL', 'source cannot be read synchronously')
    return this.apply(this.inner.readSync(offset, length, dst))
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    if (!this.inner.extents) return Promise.resolve([{offset, length, kind: 'data'}])
    return this.inner.extents(offset, length)
  }

  cacheStats() {
    return this.inner.cacheStats?.() ?? {hits: 0, misses: 0}
  }

  close(): Promise<void> {
    return this.inner.close()
  }

  private apply(r: ReadResult): ReadResult {
    if (r.bad.length > 0 && this.policy === 'error') {
      const b = r.bad[0]
      throw new BlockError('EIO', `unreadable area at byte ${b.offset} (${b.status})`, r.bad)
    }
    return r
  }
}

/**
 * The layer contract, after nbdkit's plugin/filter split: a *source* (an image) has a size and answers
 * reads; *layers* wrap a source and present the same interface; an *exporter* (a backend) turns reads
 * into a block device. Offsets and lengths are JavaScript numbers: exact up to 2^53 bytes (8 PiB).
 */
import type {BadRange} from './errors'

export interface ReadResult {
  /** Exactly `length` bytes. Bytes inside `bad` are zero (they were never stored). */
  data: Buffer
  /** Bad areas intersecting the request, clipped to it, in ascending order. Empty when all is readable. */
  bad: BadRange[]
}

export type ExtentKind = 'data' | 'zero' | 'bad'

export interface Extent {
  offset: number
  length: number
  kind: ExtentKind
}

export interface BlockSource {
  readonly size: number
  /** Logical sector size of the original medium: 512, 2048 or 4096. */
  readonly sectorSize: number
  /** Read [offset, offset+length). Rejects only for faults (corrupt chunk, I/O error), never for bad areas. */
  read(offset: number, length: number): Promise<ReadResult>
  /**
   * Optional synchronous read into `dst` (or a new buffer), for dedicated serving threads that answer one
   * request at a time. Present only when the source was opened for it (a VDIMG image with {sync: true}).
   */
  readSync?(offset: number, length: number, dst?: Buffer): ReadResult
  /** True when readSync may be called. */
  readonly synchronous?: boolean
  /** Describe [offset, offset+length) as runs of data, zeros and bad areas (for NBD block status). */
  extents?(offset: number, length: number): Promise<Extent[]>
  close(): Promise<void>
}

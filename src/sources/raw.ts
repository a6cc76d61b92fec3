/**
 * A raw image — a file or a block device, opened read-only — optionally with the GNU ddrescue mapfile
 * that rescued it, served without conversion (what nbdkit's file plugin + ddrescue filter do): exact
 * bytes where the map says finished ('+'), a bad area of the block's status everywhere else. As when
 * `vdev create` reads a map: a gap before the first block and everything past the map's end are
 * non-tried; the device is as long as the file or the map, whichever is longer (ddrescue leaves the
 * output file short when the end of the disk was never read), and a map that marks bytes past the end of
 * the file as finished does not fit it (a format error). Bytes in bad areas read as zeros.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {VdevError, ioError, type BadRange} from '../core/errors'
import type {BlockSource, Extent, OpenSourceOptions, ReadResult, SourceDescriptor} from '../core/source'
import {BadAreaMap} from '../format/badmap'
import {readMapfile} from '../format/mapfile'
import {blockDeviceSectorSize, blockDeviceSize} from '../sys/blockdev'

export interface RawOptions {
  /** A GNU ddrescue mapfile describing which bytes of the file were rescued. */
  mapfile?: string
  /** Logical sector size (default: the block device's, else 512). */
  sectorSize?: number
}

const SECTOR_SIZES = new Set([512, 1024, 2048, 4096])

export class RawImage implements BlockSource {
  readonly descriptor: SourceDescriptor
  private closed = false

  private constructor(
    readonly path: string,
    private readonly fd: number,
    /** Bytes the file holds; past them (up to `size`) the map has only non-finished areas. */
    readonly fileSize: number,
    readonly size: number,
    readonly sectorSize: number,
    readonly badAreas: BadAreaMap,
    readonly synchronous: boolean,
    /** A block device (a failing disk can take seconds per read), not a regular file. */
    private readonly isDevice: boolean,
    opts: RawOptions,
  ) {
    const options: Record<string, string | number> = {sectorSize}
    if (opts.mapfile) options.mapfile = opts.mapfile
    this.descriptor = {kind: 'raw', path, options}
  }

  static open(file: string, opts: RawOptions = {}, how: OpenSourceOptions = {}): RawImage {
    const abs = path.resolve(file)
    if (opts.sectorSize !== undefined && !SECTOR_SIZES.has(opts.sectorSize))
      throw new VdevError('usage', `sector size ${opts.sectorSize} is not one of 512, 1024, 2048, 4096`)
    let fd: number
    try {
      fd = fs.openSync(abs, fs.constants.O_RDONLY)
    } catch (err) {
      throw ioError(file, err)
    }
    try {
      const st = fs.fstatSync(fd)
      if (st.isDirectory()) throw new VdevError('io', `${file}: is a directory`)
      const isDev = st.isBlockDevice()
      if (!isDev && !st.isFile()) throw new VdevError('io', `${file}: not a regular file or a block device`)
      const fileSize = isDev ? blockDeviceSize(fd) : st.size
      const sectorSize = opts.sectorSize ?? (isDev ? blockDeviceSectorSize(fd) : 512)
      let size = fileSize
      let bad = BadAreaMap.EMPTY
      if (opts.mapfile) {
        const map = readMapfile(path.resolve(opts.mapfile))
        if (map.finishedEnd > fileSize)
          throw new VdevError('format', `${file}: the file is ${fileSize} bytes but the mapfile ${opts.mapfile} marks bytes up to ${map.finishedEnd} as rescued (not the map of this file?)`)
        size = Math.max(fileSize, map.extent)
        const ranges: BadRange[] = [...map.bad]
        // Past the map's end: non-tried (the ddrescue manual's rule, as `vdev create` applies it).
        if (size > map.extent) ranges.push({offset: map.extent, length: size - map.extent, status: 'non-tried'})
        bad = BadAreaMap.fromRanges(ranges)
      }
      return new RawImage(abs, fd, fileSize, size, sectorSize, bad, how.sync === true, isDev, opts)
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size)
      throw new VdevError('usage', `${this.path}: read of ${length} bytes at ${offset} is outside the image (${this.size} bytes)`)
  }

  /** Bytes of [offset, offset+length) the file holds, read into `out`; zeros past its end and in bad areas. */
  private finish(out: Buffer, offset: number, length: number, got: number): ReadResult {
    if (got < length) out.fill(0, got, length)
    const bad = this.badAreas.intersect(offset, length)
    for (const b of bad) out.fill(0, b.offset - offset, b.offset - offset + b.length)
    return {data: out, bad}
  }

  readSync(offset: number, length: number, dst?: Buffer): ReadResult {
    this.checkRange(offset, length)
    const out = dst ? dst.subarray(0, length) : Buffer.allocUnsafe(length)
    const want = Math.max(0, Math.min(length, this.fileSize - offset))
    let done = 0
    while (done < want) {
      let n: number
      try {
        n = fs.readSync(this.fd, out, done, want - done, offset + done)
      } catch (err) {
        throw ioError(this.path, err, `read error at byte ${offset + done}`)
      }
      if (n === 0) break // the file shrank: the rest reads as zeros
      done += n
    }
    return this.finish(out, offset, length, done)
  }

  get immediate(): boolean {
    return this.synchronous && !this.isDevice
  }

  async read(offset: number, length: number): Promise<ReadResult> {
    // A serving thread's instance of a file answers at once, as the VDIMG reader does in sync mode: a pread(2)
    // of a file costs less than the round trip through libuv's pool. A device's reads stay asynchronous so
    // a slow sector never stalls the thread's event loop (the iSCSI target answers pings there).
    if (this.immediate) return this.readSync(offset, length)
    this.checkRange(offset, length)
    const out = Buffer.allocUnsafe(length)
    const want = Math.max(0, Math.min(length, this.fileSize - offset))
    let done = 0
    while (done < want) {
      const n = await new Promise<number>((resolve, reject) =>
        fs.read(this.fd, out, done, want - done, offset + done, (err, got) =>
          err ? reject(ioError(this.path, err, `read error at byte ${offset + done}`)) : resolve(got),
        ),
      )
      if (n === 0) break
      done += n
    }
    return this.finish(out, offset, length, done)
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length)
    const out: Extent[] = []
    let at = offset
    for (const b of this.badAreas.intersect(offset, length)) {
      if (b.offset > at) out.push({offset: at, length: b.offset - at, kind: 'data'})
      out.push({offset: b.offset, length: b.length, kind: 'bad'})
      at = b.offset + b.length
    }
    if (at < offset + length) out.push({offset: at, length: offset + length - at, kind: 'data'})
    return out
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    fs.closeSync(this.fd)
  }
}

/** What `vdev info` reports about a raw image (the VDIMG fields that apply, with format "raw"). */
export interface RawInfo {
  path: string
  format: 'raw'
  mapfile: string | null
  size: number
  sectorSize: number
  fileSize: number
  badAreaSummary: ReturnType<BadAreaMap['totals']>
  badBytes: number
  badAreaCount: number
  /** The first bad ranges (all of them with --all). */
  badAreas: BadRange[]
}

export function describeRaw(img: RawImage, opts: {maxRanges?: number} = {}): RawInfo {
  const summary = img.badAreas.totals()
  const max = opts.maxRanges ?? 20
  const ranges: BadRange[] = []
  for (let i = 0; i < Math.min(max, img.badAreas.count); i++) ranges.push(img.badAreas.get(i))
  const mapfile = img.descriptor.options?.mapfile
  return {
    path: img.path,
    format: 'raw',
    mapfile: typeof mapfile === 'string' ? mapfile : null,
    size: img.size,
    sectorSize: img.sectorSize,
    fileSize: img.fileSize,
    badAreaSummary: summary,
    badBytes: Object.values(summary).reduce((s, v) => s + v.bytes, 0),
    badAreaCount: img.badAreas.count,
    badAreas: ranges,
  }
}

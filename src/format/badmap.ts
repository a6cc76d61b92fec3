/**
 * BadAreaMap: the sorted, non-overlapping byte ranges of an image that were not read successfully, each
 * with its ddrescue status. Finished areas are not stored: everything not listed is readable.
 * Held in typed arrays (24 bytes per range on disk, 17 in memory) and searched by bisection, so maps of
 * millions of ranges from badly failing media stay cheap.
 */
import type {BadRange, BadStatus} from '../core/errors'
import {BAD_ENTRY_SIZE, BAD_STATUS_BY_CODE, BAD_STATUS_CODES, LayoutError} from './layout'

export class BadAreaMap {
  private constructor(
    private readonly starts: Float64Array,
    private readonly ends: Float64Array,
    private readonly codes: Uint8Array,
  ) {}

  static readonly EMPTY = new BadAreaMap(new Float64Array(0), new Float64Array(0), new Uint8Array(0))

  /** Build from ranges in any order; adjacent ranges of the same status merge. Throws on overlap. */
  static fromRanges(ranges: Iterable<BadRange>): BadAreaMap {
    const list = [...ranges].filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset)
    const merged: BadRange[] = []
    for (const r of list) {
      const last = merged[merged.length - 1]
      if (last && r.offset < last.offset + last.length)
        throw new Error(`bad areas overlap at byte ${r.offset}`)
      if (last && last.status === r.status && last.offset + last.length === r.offset) last.length += r.length
      else merged.push({...r})
    }
    const m = new BadAreaMap(new Float64Array(merged.length), new Float64Array(merged.length), new Uint8Array(merged.length))
    merged.forEach((r, i) => {
      m.starts[i] = r.offset
      m.ends[i] = r.offset + r.length
      m.codes[i] = BAD_STATUS_CODES[r.status]
    })
    return m
  }

  get count(): number {
    return this.starts.length
  }

  get(i: number): BadRange {
    return {offset: this.starts[i], length: this.ends[i] - this.starts[i], status: BAD_STATUS_BY_CODE[this.codes[i]] as BadStatus}
  }

  *[Symbol.iterator](): IterableIterator<BadRange> {
    for (let i = 0; i < this.count; i++) yield this.get(i)
  }

  /** Index of the first range whose end is after `offset`. */
  private firstEndingAfter(offset: number): number {
    let lo = 0
    let hi = this.starts.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.ends[mid] <= offset) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Ranges intersecting [offset, offset+length), clipped to it. An empty range intersects nothing. */
  intersect(offset: number, length: number): BadRange[] {
    const end = offset + length
    const out: BadRange[] = []
    if (length <= 0) return out
    for (let i = this.firstEndingAfter(offset); i < this.starts.length && this.starts[i] < end; i++) {
      const s = Math.max(this.starts[i], offset)
      const e = Math.min(this.ends[i], end)
      out.push({offset: s, length: e - s, status: BAD_STATUS_BY_CODE[this.codes[i]] as BadStatus})
    }
    return out
  }

  /** True when every byte of [offset, offset+length) lies in some bad range. */
  covers(offset: number, length: number): boolean {
    let at = offset
    const end = offset + length
    for (let i = this.firstEndingAfter(offset); i < this.starts.length && this.starts[i] <= at && at < end; i++) at = this.ends[i]
    return at >= end
  }

  touches(offset: number, length: number): boolean {
    if (length <= 0) return false
    const i = this.firstEndingAfter(offset)
    return i < this.starts.length && this.starts[i] < offset + length
  }

  /** Total bad bytes per status. */
  totals(): Record<BadStatus, {count: number; bytes: number}> {
    const t = {
      'non-tried': {count: 0, bytes: 0},
      'non-trimmed': {count: 0, bytes: 0},
      'non-scraped': {count: 0, bytes: 0},
      'bad-sector': {count: 0, bytes: 0},
    }
    for (let i = 0; i < this.count; i++) {
      const s = t[BAD_STATUS_BY_CODE[this.codes[i]] as BadStatus]
      s.count++
      s.bytes += this.ends[i] - this.starts[i]
    }
    return t
  }

  /** The end of the last range (0 when empty). */
  get end(): number {
    return this.count ? this.ends[this.count - 1] : 0
  }

  /** FORMAT.md §6: 24 bytes per range. */
  encode(): Buffer {
    const b = Buffer.alloc(this.count * BAD_ENTRY_SIZE)
    for (let i = 0; i < this.count; i++) {
      const at = i * BAD_ENTRY_SIZE
      b.writeBigUInt64LE(BigInt(this.starts[i]), at)
      b.writeBigUInt64LE(BigInt(this.ends[i] - this.starts[i]), at + 8)
      b.writeUInt8(this.codes[i], at + 16)
    }
    return b
  }

  /** Decode and validate (sorted, non-overlapping, non-empty, known status, inside the image). */
  static decode(b: Buffer, base: number, imageSize: number): BadAreaMap {
    if (b.length % BAD_ENTRY_SIZE !== 0)
      throw new LayoutError(`bad-area map length ${b.length} is not a multiple of ${BAD_ENTRY_SIZE}`, base)
    const n = b.length / BAD_ENTRY_SIZE
    const m = new BadAreaMap(new Float64Array(n), new Float64Array(n), new Uint8Array(n))
    let prevEnd = 0
    for (let i = 0; i < n; i++) {
      const at = i * BAD_ENTRY_SIZE
      const off = b.readBigUInt64LE(at)
      const len = b.readBigUInt64LE(at + 8)
      const code = b.readUInt8(at + 16)
      const where = base + at
      if (!BAD_STATUS_BY_CODE[code]) throw new LayoutError(`bad-area range ${i} has unknown status ${code}`, where + 16)
      if (len === 0n) throw new LayoutError(`bad-area range ${i} is empty`, where + 8)
      if (off + len > BigInt(imageSize))
        throw new LayoutError(`bad-area range ${i} (${len} bytes at ${off}) extends past the image end ${imageSize}`, where)
      const s = Number(off)
      if (s < prevEnd) throw new LayoutError(`bad-area range ${i} at ${off} overlaps or is out of order`, where)
      m.starts[i] = s
      m.ends[i] = s + Number(len)
      m.codes[i] = code
      prevEnd = m.ends[i]
    }
    return m
  }
}

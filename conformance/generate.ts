/**
 * Generates the VDIMG conformance corpus (docs/FORMAT.md §11): small valid, damaged and invalid images,
 * each with the result a reader must give, in JSON. Run `npm run conformance` (it writes conformance/cases/);
 * the files are committed so that other implementations can use them without running vdev, and a test
 * checks that this script reproduces them byte for byte.
 *
 * Deliberately independent of vdev's reader and writer (src/format/): it encodes every structure itself
 * from FORMAT.md, builds zstd frames by hand (raw and RLE blocks), and computes the expected results from
 * what it put in, so the corpus checks vdev's code rather than repeating it. The one frame with compressed
 * blocks was made once by libzstd 1.5.7 (level 19, with a frame checksum) and is embedded below.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'

// ---------------------------------------------------------------------------------------------------------
// Primitives

const CRC_TABLE = (() => {
  const t = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    t[n] = c >>> 0
  }
  return t
})()

/** CRC-32C (Castagnoli), FORMAT.md conventions. */
export function crc32c(b: Uint8Array): number {
  let c = 0xffffffff
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

const sha256 = (b: Uint8Array): string => crypto.createHash('sha256').update(b).digest('hex')

/** Text-like bytes (the same function made the embedded frame's content: text(1, 4096)). */
export function text(seed: number, len: number): Buffer {
  const words = ['block', 'sector', 'disk', 'rescue', 'image', 'chunk', 'frame', 'zstd', 'conformance', 'vdimg']
  let s = ''
  for (let n = 0; s.length < len; n++) s += `${seed}:${n} ${words[(n * 7 + seed) % words.length]} ${words[(n * 3 + seed * 5) % words.length]}\n`
  return Buffer.from(s.slice(0, len), 'latin1')
}

/** Incompressible bytes: a SHA-256 chain. */
export function noise(seed: number, len: number): Buffer {
  const out = Buffer.alloc(len)
  let h = crypto.createHash('sha256').update(`noise ${seed}`).digest()
  for (let at = 0; at < len; at += 32) {
    h.copy(out, at, 0, Math.min(32, len - at))
    h = crypto.createHash('sha256').update(h).digest()
  }
  return out
}

/** text(1, 4096) as one zstd frame: compressed blocks, Frame_Content_Size 4096, single segment, a content checksum. */
const COMPRESSED_FRAME = Buffer.from(
  'KLUv/WQAD4UMAAZUNBmAS9ogElogHcOmuSITOiWR3d07XfrGRaUDPAApACYABpUFImCWBIAxMHecCByNiCEkDAKIMQIgYTCHhkFg6jgxP04WRQFIMBYDxUIxPk4OikdBMYyFQ1kaho4DiIiIiIh3d3d3d2ZmZmZmVVVVVVX///+/bdu2j5M9TvQ4yeNkeSiNhRFmZmZmVlVVVVX1////27Zt20RERERE3t3d3d1VVVVVVc3MzMzMDLdt26bT6XQ6nU6n03d3d3d3VVVVVVUzMzMzMxERERER7+7u7u4sgN2oIdwMS3V2xqCTJK0GESAIgxBGiAAjMWU+HoNj53I226xj6j13Te4ZFx3kXNePeZwtH8d5uj2O5+jaMZ+z5eM4T7XH8xxdO+Zytn0c5yltKJMzHWca4Ey/mXAz3WZKNtNZM5XVzGcYF5zs+WKjRxIvyOjbxVHXMBaSzPeU484QLjDZ9pUnzIlxm9tqW2pL2sJsl62IYksA21GKkgU6YtOEBMC3la5mwdsg1WepPQKoo4G2BZVakOLXrwK8d7NX',
  'base64',
)

interface FrameOptions {
  /** Frame_Content_Size: written in 4 bytes (default), or left out ('none'). */
  fcs?: number | 'none'
  /** Single_Segment_Flag (default: when the content size is written). */
  single?: boolean
  /** Window_Size as a Window_Descriptor byte (when not single segment; default 0x10: 4 KiB... see below). */
  windowDescriptor?: number
  dictId?: number
  /** Cut the content into blocks of this many bytes (default: one block). */
  block?: number
  /** RLE blocks of this byte instead of raw blocks (the content must be that byte throughout). */
  rle?: number
}

/** A zstd frame (RFC 8878) of raw or RLE blocks, byte by byte. */
export function zstdFrame(content: Buffer, o: FrameOptions = {}): Buffer {
  const fcs = o.fcs === 'none' ? undefined : (o.fcs ?? content.length)
  const single = o.single ?? fcs !== undefined
  const hdr: number[] = [0x28, 0xb5, 0x2f, 0xfd]
  const didFlag = o.dictId === undefined ? 0 : 3
  const fcsFlag = fcs === undefined ? 0 : 2
  hdr.push((fcsFlag << 6) | ((single ? 1 : 0) << 5) | didFlag)
  // Window_Descriptor: exponent e, mantissa m: Window_Size = 2^(10+e) * (1 + m/8). 0x10 = 2^12 = 4 KiB.
  if (!single) hdr.push(o.windowDescriptor ?? 0x10)
  if (o.dictId !== undefined) for (let k = 0; k < 4; k++) hdr.push((o.dictId >>> (8 * k)) & 0xff)
  if (fcs !== undefined) for (let k = 0; k < 4; k++) hdr.push((fcs >>> (8 * k)) & 0xff)
  const parts: Buffer[] = [Buffer.from(hdr)]
  const step = o.block ?? Math.max(1, content.length)
  for (let at = 0; at < content.length || at === 0; at += step) {
    const part = content.subarray(at, at + step)
    const last = at + step >= content.length ? 1 : 0
    const type = o.rle !== undefined ? 1 : 0
    const bh = last | (type << 1) | (part.length << 3)
    parts.push(Buffer.from([bh & 0xff, (bh >> 8) & 0xff, (bh >> 16) & 0xff]))
    parts.push(o.rle !== undefined ? Buffer.from([o.rle]) : part)
    if (content.length === 0) break
  }
  return Buffer.concat(parts)
}

/** A skippable frame (RFC 8878 §3.1.2) holding `payload`. */
function skippableFrame(payload: Buffer): Buffer {
  const h = Buffer.alloc(8)
  h.writeUInt32LE(0x184d2a50, 0)
  h.writeUInt32LE(payload.length, 4)
  return Buffer.concat([h, payload])
}

// ---------------------------------------------------------------------------------------------------------
// Recovery data (§13): GF(2^8) with x^8 + x^4 + x^3 + x^2 + 1, a Cauchy matrix, written from the text alone

const GF_EXP = new Uint8Array(512)
const GF_LOG = new Uint8Array(256)
;(() => {
  let x = 1
  for (let i = 0; i < 255; i++) {
    GF_EXP[i] = x
    GF_LOG[x] = i
    x <<= 1
    if (x & 0x100) x ^= 0x11d
  }
  for (let i = 255; i < 512; i++) GF_EXP[i] = GF_EXP[i - 255]
})()
const gfMul = (a: number, b: number): number => (a === 0 || b === 0 ? 0 : GF_EXP[GF_LOG[a] + GF_LOG[b]])
const gfInv = (a: number): number => GF_EXP[255 - GF_LOG[a]]
// §13.2's check values.
if (gfInv(0x0c) !== 0x3d || gfInv(2) !== 0x8e || gfInv(3) !== 0xf4 || gfInv(4) !== 0x47 || gfInv(5) !== 0xa7) throw new Error('GF(2^8) tables disagree with FORMAT.md §13.2')
if ((gfMul(0x8e, 1) ^ gfMul(0xf4, 2) ^ gfMul(0x47, 3)) !== 0xb2 || (gfMul(0xf4, 1) ^ gfMul(0x8e, 2) ^ gfMul(0xa7, 3)) !== 0x01) throw new Error('GF(2^8) products disagree with FORMAT.md §13.2')

export interface RecoverySpec {
  /** Data slices per stripe and parity slices per stripe (§13.3). */
  k: number
  m: number
  /** Slice size S (default 512: many slices in a small image). */
  sliceSize?: number
}

/**
 * Section 8 over the protected region `[256, regionEnd)` of the file whose bytes from 256 on are `region`
 * (§13.1–§13.3): the recovery header, parity and data-slice CRCs, padding, parity slices, the header again.
 */
function recoverySection(region: Buffer, regionEnd: number, r: RecoverySpec): Buffer {
  const S = r.sliceSize ?? 512
  const regionOffset = 256
  const origin = Math.floor(regionOffset / S) * S
  const D = Math.ceil((regionEnd - origin) / S)
  const T = Math.ceil(D / r.k)
  const slice = (i: number): Buffer => {
    const b = Buffer.alloc(S)
    if (i >= D) return b
    const from = origin + i * S
    for (let a = Math.max(from, regionOffset); a < Math.min(from + S, regionEnd); a++) b[a - from] = region[a - regionOffset]
    return b
  }
  const parity: Buffer[] = []
  for (let st = 0; st < T; st++)
    for (let row = 0; row < r.m; row++) {
      const p = Buffer.alloc(S)
      for (let j = 0; j < r.k; j++) {
        const c = gfInv(row ^ (r.m + j))
        const d = slice(j * T + st)
        for (let b = 0; b < S; b++) p[b] ^= gfMul(c, d[b])
      }
      parity.push(p)
    }
  const crcs = 64 + 4 * T * r.m + 4 * D
  const parityOffset = Math.ceil(crcs / S) * S
  const out = Buffer.alloc(parityOffset + S * T * r.m + 64)
  const h = Buffer.alloc(64)
  Buffer.from('VDRECOV1', 'latin1').copy(h, 0)
  h.writeUInt32LE(S, 8)
  h.writeUInt16LE(8, 12)
  h.writeUInt16LE(r.k, 14)
  h.writeUInt16LE(r.m, 16)
  h.writeUInt32LE(T, 20)
  h.writeBigUInt64LE(BigInt(regionOffset), 24)
  h.writeBigUInt64LE(BigInt(regionEnd - regionOffset), 32)
  h.writeBigUInt64LE(BigInt(parityOffset), 40)
  h.writeUInt32LE(crc32c(h.subarray(0, 60)), 60)
  h.copy(out, 0)
  parity.forEach((p, n) => out.writeUInt32LE(crc32c(p), 64 + 4 * n))
  for (let i = 0; i < D; i++) out.writeUInt32LE(crc32c(slice(i)), 64 + 4 * T * r.m + 4 * i)
  parity.forEach((p, n) => p.copy(out, parityOffset + n * S))
  h.copy(out, out.length - 64)
  return out
}

// ---------------------------------------------------------------------------------------------------------
// Images

const MAGIC = Buffer.from([0x89, 0x56, 0x44, 0x49, 0x4d, 0x47, 0x0d, 0x0a])
const KIND = {zero: 0, raw: 1, zstd: 2, unread: 3} as const
type KindName = keyof typeof KIND
const STATUS = {'non-tried': 1, 'non-trimmed': 2, 'non-scraped': 3, 'bad-sector': 4} as const
type StatusName = keyof typeof STATUS

interface ChunkSpec {
  kind: KindName
  /** The chunk's logical bytes (zero and unread chunks: zeros when left out). */
  content?: Buffer
  /** Stored bytes (default: the content for raw, a one-block raw zstd frame for zstd). */
  stored?: Buffer
  /** Entry fields written instead of the right ones. */
  entry?: {offset?: bigint; storedLength?: number; dataCrc?: number; storedCrc?: number; kind?: number; reserved?: number}
  /** Point at the previous stored chunk's bytes instead of storing new ones. */
  sharePrevious?: boolean
}

interface GroupSpec {
  /** No second-level table: every chunk of the group has this fill kind (its chunk specs are ignored). */
  fill?: number
  /** First-level entry fields written instead of the right ones. */
  offset?: bigint
  length?: number
  crc?: number
  fillKind?: number
  /** Change the table's bytes after its CRC is computed. */
  damageTable?: (t: Buffer) => void
  /** Version 1.1: change the bytes of the table's copy in section 4 (§12.2). */
  damageCopy?: (t: Buffer) => void
}

interface SectionSpec {
  type: number
  flags: number
  data: Buffer
  /** Place the section at another section's bytes (its index in the list) rather than at new bytes. */
  at?: number
  /** Version 1.1: placed with the copies, after the padding that follows the section table (§12.3). */
  copy?: boolean
  /** Version 1.2: section 8, placed before the copies and followed by zeros to a multiple of 4096 (§13.4). */
  recovery?: boolean
  /** Entry fields written instead of the right ones. */
  offset?: bigint
  length?: bigint
  crc?: number
  reserved?: number
}

interface BadSpec {
  offset: number | bigint
  length: number | bigint
  status: number
}

interface ImageSpec {
  sectorSize?: number
  chunkSize?: number
  l2Entries?: number
  size: number
  chunks: (i: number) => ChunkSpec
  groups?: Record<number, GroupSpec>
  bad?: BadSpec[]
  /** Raw bad-area map bytes instead of `bad`'s encoding. */
  badBytes?: Buffer
  /** Metadata bytes; null: no metadata section. */
  metadata?: Buffer | null
  /**
   * The sections in table order (default: chunk index, bad-area map, metadata; built from the above; with
   * `copies`, then their copies, types 4–7).
   */
  sections?: (defaults: Defaults) => SectionSpec[]
  /**
   * Version 1.1 (§12): minor 1, the copy sections, the section table's copy and the header's copy (the
   * trailer), laid out as §12.3 says.
   */
  copies?: boolean
  /** Version 1.2 (§13): minor 2 and a recovery section (type 8, the last entry), with the copies of 1.1. */
  recovery?: RecoverySpec
  header?: {
    major?: number
    minor?: number
    headerSize?: number
    flags?: number
    sectorSize?: number
    chunkSize?: number
    l2Entries?: number
    size?: bigint
    chunkCount?: bigint
    sectionCount?: number
    sectionTableOffset?: bigint
    sectionTableCrc?: number
    /** Media hash field (default: the image's, with flag HASH). */
    hash?: Buffer
    reserved?: number
    /** Version 1.1 (§12.1). */
    copyTableOffset?: bigint
    trailerOffset?: bigint
    headerCrc?: number
  }
  /** Change the section table's bytes after its CRC is computed. */
  damageSectionTable?: (t: Buffer) => void
  /** Version 1.1: change the bytes of the section table's copy. */
  damageSectionTableCopy?: (t: Buffer) => void
  /** Bytes appended after the section table (ignored by readers). */
  trailer?: Buffer
  /** Final edit of the whole file (truncate, overwrite). */
  post?: (file: Buffer, at: Layout) => Buffer
}

interface Defaults {
  index: SectionSpec
  bad: SectionSpec
  metadata: SectionSpec | undefined
  /** Version 1.1: sections 4–7 (7 only with metadata). */
  copies: SectionSpec[]
  /** Version 1.2: section 8. */
  recovery: SectionSpec | undefined
}

interface Layout {
  sectionTable: number
  /** Version 1.1: the section table's copy and the trailer (0 in 1.0). */
  copyTable: number
  trailer: number
  sections: Array<{type: number; offset: number; length: number}>
  /** Version 1.2: where the protected region ends (the end of the chunk data and tables). */
  regionEnd: number
  /** Offset of each group's second-level table (0 when none). */
  tables: number[]
  /** Offset of each chunk's stored bytes (0 when none). */
  stored: number[]
  headerEnd: number
}

interface Built {
  file: Buffer
  layout: Layout
  /** The logical image: chunk contents, bad areas as zeros. */
  image: Buffer
  mediaSha256: string
  /** The bad-area map as meant (damage done to the file afterwards, e.g. to one copy, does not change it). */
  badMap: Buffer
}

function encodeBad(bad: BadSpec[]): Buffer {
  const b = Buffer.alloc(bad.length * 24)
  bad.forEach((r, i) => {
    b.writeBigUInt64LE(BigInt(r.offset), i * 24)
    b.writeBigUInt64LE(BigInt(r.length), i * 24 + 8)
    b[i * 24 + 16] = r.status
  })
  return b
}

function build(s: ImageSpec): Built {
  const sectorSize = s.sectorSize ?? 512
  const chunkSize = s.chunkSize ?? 4096
  const l2Entries = s.l2Entries ?? 256
  const chunkCount = Math.ceil(s.size / chunkSize)
  const groupCount = Math.ceil(chunkCount / l2Entries)
  const image = Buffer.alloc(s.size)
  const parts: Buffer[] = []
  let pos = 256
  const put = (b: Buffer): number => {
    const at = pos
    parts.push(b)
    pos += b.length
    return at
  }
  const layout: Layout = {sectionTable: 0, copyTable: 0, trailer: 0, sections: [], regionEnd: 0, tables: [], stored: new Array(chunkCount).fill(0), headerEnd: 256}
  /** Version 1.1: each table as it should be, for section 4 (after damageCopy). */
  const tableCopies: Buffer[] = []
  const l1 = Buffer.alloc(groupCount * 24)
  let prevStored: {offset: number; length: number} | undefined
  for (let g = 0; g < groupCount; g++) {
    const gs = s.groups?.[g] ?? {}
    const first = g * l2Entries
    const n = Math.min(l2Entries, chunkCount - first)
    let tableAt = 0
    let tableLen = 0
    let tableCrc = 0
    if (gs.fill === undefined) {
      const table = Buffer.alloc(n * 24)
      for (let k = 0; k < n; k++) {
        const i = first + k
        const c = s.chunks(i)
        const len = Math.min(chunkSize, s.size - i * chunkSize)
        const content = c.content ?? Buffer.alloc(len)
        if (content.length !== len) throw new Error(`chunk ${i}: content of ${content.length} bytes, not ${len}`)
        content.copy(image, i * chunkSize)
        let stored: Buffer = Buffer.alloc(0)
        if (c.kind === 'raw') stored = c.stored ?? content
        if (c.kind === 'zstd') stored = c.stored ?? zstdFrame(content)
        let offset = 0
        if (stored.length) {
          if (c.sharePrevious && prevStored) offset = prevStored.offset
          else offset = put(stored)
          prevStored = {offset, length: stored.length}
        }
        layout.stored[i] = offset
        const e = c.entry ?? {}
        const at = k * 24
        table.writeBigUInt64LE(e.offset ?? BigInt(offset), at)
        table.writeUInt32LE(e.storedLength ?? stored.length, at + 8)
        table.writeUInt32LE(e.dataCrc ?? (stored.length ? crc32c(content) : 0), at + 12)
        table[at + 16] = e.kind ?? KIND[c.kind]
        table[at + 17] = e.reserved ?? 0
        table.writeUInt32LE(e.storedCrc ?? (stored.length ? crc32c(stored) : 0), at + 20)
      }
      tableCrc = crc32c(table)
      const copy = Buffer.from(table)
      gs.damageCopy?.(copy)
      tableCopies.push(copy)
      gs.damageTable?.(table)
      tableAt = put(table)
      tableLen = table.length
    }
    layout.tables.push(tableAt)
    l1.writeBigUInt64LE(gs.offset ?? BigInt(tableAt), g * 24)
    l1.writeUInt32LE(gs.length ?? tableLen, g * 24 + 8)
    l1.writeUInt32LE(gs.crc ?? tableCrc, g * 24 + 12)
    l1[g * 24 + 16] = gs.fillKind ?? gs.fill ?? 0
  }
  layout.regionEnd = pos
  const recovery: SectionSpec | undefined = s.recovery ? {type: 8, flags: 0, data: recoverySection(Buffer.concat(parts), pos, s.recovery), copy: true, recovery: true} : undefined
  const bad = s.bad ?? []
  for (const r of bad) {
    const from = Number(r.offset)
    const to = Math.min(s.size, from + Number(r.length))
    if (from < s.size && to > from) image.fill(0, from, to)
  }
  const mediaSha256 = sha256(image)

  const index: SectionSpec = {type: 1, flags: 1, data: l1}
  const badMap: SectionSpec = {type: 2, flags: 1, data: s.badBytes ?? encodeBad(bad)}
  const metadata: SectionSpec | undefined = s.metadata === null ? undefined : {type: 3, flags: 0, data: s.metadata ?? Buffer.from('{"model":"conformance"}')}
  const defaults: Defaults = {
    index,
    bad: badMap,
    metadata,
    copies: [
      {type: 4, flags: 0, data: Buffer.concat(tableCopies), copy: true},
      {type: 5, flags: 0, data: l1, copy: true},
      {type: 6, flags: 0, data: badMap.data, copy: true},
      ...(metadata ? [{type: 7, flags: 0, data: metadata.data, copy: true}] : []),
    ],
    recovery,
  }
  const list = s.sections
    ? s.sections(defaults)
    : [defaults.index, defaults.bad, ...(defaults.metadata ? [defaults.metadata] : []), ...(s.copies || s.recovery ? defaults.copies : []), ...(recovery ? [recovery] : [])]
  // Originals first; in 1.1 the copies follow the section table after zero padding to a multiple of 4096
  // (§12.3), so their offsets are known before the table is written.
  const placed: Array<{offset: number; length: number}> = []
  for (const sec of list) {
    if (sec.copy) {
      placed.push({offset: -1, length: sec.data.length})
      continue
    }
    const offset = sec.at !== undefined ? placed[sec.at].offset : put(sec.data)
    placed.push({offset, length: sec.data.length})
  }
  const tableAt = pos
  const laidOut = s.copies || s.recovery
  const padding = laidOut ? (4096 - ((tableAt + list.length * 32) % 4096)) % 4096 : 0
  let copyAt = tableAt + list.length * 32 + padding
  // 1.2: the recovery section first, then zeros to a multiple of 4096, then the copies (§13.4).
  let recoveryPad = 0
  for (const pass of [true, false]) {
    for (const [k, sec] of list.entries()) {
      if (!sec.copy || !!sec.recovery !== pass) continue
      placed[k].offset = sec.at !== undefined ? placed[sec.at].offset : copyAt
      if (sec.at === undefined) copyAt += sec.data.length
    }
    if (pass && list.some((x) => x.recovery)) {
      recoveryPad = (4096 - (copyAt % 4096)) % 4096
      copyAt += recoveryPad
    }
  }
  for (const [k, sec] of list.entries()) layout.sections.push({type: sec.type, offset: placed[k].offset, length: sec.data.length})
  const table = Buffer.alloc(list.length * 32)
  list.forEach((sec, k) => {
    const at = k * 32
    table.writeUInt32LE(sec.type, at)
    table.writeUInt32LE(sec.flags, at + 4)
    table.writeBigUInt64LE(sec.offset ?? BigInt(placed[k].offset), at + 8)
    table.writeBigUInt64LE(sec.length ?? BigInt(placed[k].length), at + 16)
    table.writeUInt32LE(sec.crc ?? crc32c(sec.data), at + 24)
    table.writeUInt32LE(sec.reserved ?? 0, at + 28)
  })
  const tableCrc = crc32c(table)
  const tableCopy = Buffer.from(table)
  s.damageSectionTable?.(table)
  layout.sectionTable = put(table)
  let trailerPart: Buffer | undefined
  if (laidOut) {
    put(Buffer.alloc(padding))
    for (const sec of list) if (sec.recovery && sec.at === undefined) put(sec.data)
    if (list.some((x) => x.recovery)) put(Buffer.alloc(recoveryPad))
    for (const sec of list) if (sec.copy && !sec.recovery && sec.at === undefined) put(sec.data)
    s.damageSectionTableCopy?.(tableCopy)
    layout.copyTable = put(tableCopy)
    trailerPart = Buffer.alloc(256) // the header's copy, filled in below
    layout.trailer = put(trailerPart)
  }
  if (s.trailer) put(s.trailer)

  const h = s.header ?? {}
  const header = Buffer.alloc(256)
  MAGIC.copy(header, 0)
  header.writeUInt16LE(h.major ?? 1, 8)
  header.writeUInt16LE(h.minor ?? (s.recovery ? 2 : s.copies ? 1 : 0), 10)
  header.writeUInt32LE(h.headerSize ?? 256, 12)
  header.writeUInt32LE(h.flags ?? 1, 16)
  header.writeUInt32LE(h.sectorSize ?? sectorSize, 20)
  header.writeUInt32LE(h.chunkSize ?? chunkSize, 24)
  header.writeUInt32LE(h.l2Entries ?? l2Entries, 28)
  header.writeBigUInt64LE(h.size ?? BigInt(s.size), 32)
  header.writeBigUInt64LE(h.chunkCount ?? BigInt(chunkCount), 40)
  header.writeBigUInt64LE(h.sectionTableOffset ?? BigInt(layout.sectionTable), 48)
  header.writeUInt32LE(h.sectionCount ?? list.length, 56)
  header.writeUInt32LE(h.sectionTableCrc ?? tableCrc, 60)
  ;(h.hash ?? ((h.flags ?? 1) & 1 ? Buffer.from(mediaSha256, 'hex') : Buffer.alloc(32))).copy(header, 64)
  // Version 1.1 gives header bytes 96–111 a meaning (FORMAT.md §12.1: the copies' offsets, 0 = none); from
  // minor 1 on only bytes 112–251 are reserved.
  header.writeBigUInt64LE(h.copyTableOffset ?? BigInt(layout.copyTable), 96)
  header.writeBigUInt64LE(h.trailerOffset ?? BigInt(layout.trailer), 104)
  if (h.reserved !== undefined) header.fill(h.reserved, (h.minor ?? (s.recovery ? 2 : s.copies ? 1 : 0)) >= 1 ? 112 : 96, 252)
  header.writeUInt32LE(h.headerCrc ?? crc32c(header.subarray(0, 252)), 252)
  trailerPart && header.copy(trailerPart)
  let file: Buffer = Buffer.concat([header, ...parts])
  if (s.post) file = s.post(file, layout)
  return {file, layout, image, mediaSha256, badMap: badMap.data}
}

// ---------------------------------------------------------------------------------------------------------
// Expected results

type Tool = 'info' | 'verify' | 'extract'

export interface Expected {
  /** The case's name: NAME.vdimg beside NAME.json. */
  name: string
  /** The FORMAT.md rule it checks. */
  rule: string
  /**
   * valid: every byte reads. damaged: the image opens; `damaged` ranges of the image fail to read (and/or
   * `warnings` non-critical sections are ignored), every other byte reads. invalid: the image is refused.
   */
  result: 'valid' | 'damaged' | 'invalid'
  file: {bytes: number; sha256: string}
  // valid and damaged:
  size?: number
  sectorSize?: number
  chunkSize?: number
  version?: string
  /** The recorded media hash (lowercase hex), or null when header flag HASH is clear. */
  mediaSha256?: string | null
  /** SHA-256 of the image as read, bad areas and damaged ranges as zeros (`vdev extract IMG -`). */
  sha256?: string
  badAreas?: Array<{offset: number; length: number; status: StatusName}>
  /** The metadata a reader takes ({} when absent or damaged). */
  metadata?: unknown
  /** Image byte ranges that cannot be read (damaged chunks), merged when adjacent. */
  damaged?: Array<{offset: number; length: number}>
  /** Damaged non-critical sections a reader ignores (vdev: one warning line each). */
  warnings?: number
  // invalid:
  /** format: malformed or corrupt; unsupported: a valid image this reader cannot read (newer major, unknown critical section). */
  error?: 'format' | 'unsupported'
  /** The file offset vdev reports (FORMAT.md §9, "Which offset"). */
  offset?: number
  /** What is wrong, in vdev's words (its error line contains this). */
  reason?: string
  /** vdev's exit codes (README, "Exit codes"). */
  vdevExit: Record<Tool, number>
  /**
   * Version 1.2 damaged images (§13.3, "Using it"): whether every damaged byte can be rebuilt — the
   * structures from their copies, chunk data and tables from the recovery data — and, when it can, the
   * SHA-256 of the file as written before the damage (what a byte-exact repair gives back).
   * `recoveryDamaged`: section 8 fails its section CRC — a damaged section for a verifier, though a reader
   * that only reads the image never reads section 8 (so no warning when opening or reading).
   */
  repair?: {repairable: boolean; fileSha256?: string; recoveryDamaged?: boolean}
}

interface Case {
  name: string
  rule: string
  build: () => Built
  /** Damaged chunks (their image ranges are computed) and ignored sections. */
  damagedChunks?: number[]
  warnings?: number
  /** Expected metadata when it is not the default {"model":"conformance"}. */
  metadata?: unknown
  invalid?: {error: 'format' | 'unsupported'; offset: number | ((b: Built) => number); reason: string}
  /** The reader takes no media hash (flag clear). */
  noHash?: boolean
  /** Version 1.2: whether the damage can be repaired, and the file before it (when it can). */
  repair?: {repairable: boolean; intact?: () => Built; recoveryDamaged?: boolean}
}

function expected(c: Case, b: Built): Expected {
  const file = {bytes: b.file.length, sha256: sha256(b.file)}
  if (c.invalid) {
    const offset = typeof c.invalid.offset === 'function' ? c.invalid.offset(b) : c.invalid.offset
    return {name: c.name, rule: c.rule, result: 'invalid', file, error: c.invalid.error, offset, reason: c.invalid.reason, vdevExit: {info: 4, verify: 4, extract: 4}}
  }
  // The header as built says what the image is.
  const f = b.file
  const size = Number(f.readBigUInt64LE(32))
  const chunkSize = f.readUInt32LE(24)
  const badAreas: Expected['badAreas'] = []
  const sections = b.layout.sections
  if (sections.some((s) => s.type === 2))
    for (let at = 0; at < b.badMap.length; at += 24) {
      const status = Object.keys(STATUS).find((k) => STATUS[k as StatusName] === b.badMap[at + 16]) as StatusName
      badAreas.push({offset: Number(b.badMap.readBigUInt64LE(at)), length: Number(b.badMap.readBigUInt64LE(at + 8)), status})
    }
  const damaged: Array<{offset: number; length: number}> = []
  const read = Buffer.from(b.image)
  for (const i of c.damagedChunks ?? []) {
    const offset = i * chunkSize
    const length = Math.min(chunkSize, size - offset)
    read.fill(0, offset, offset + length)
    const last = damaged[damaged.length - 1]
    if (last && last.offset + last.length === offset) last.length += length
    else damaged.push({offset, length})
  }
  const warnings = c.warnings ?? 0
  const result = damaged.length || warnings ? 'damaged' : 'valid'
  return {
    name: c.name,
    rule: c.rule,
    result,
    file,
    size,
    sectorSize: f.readUInt32LE(20),
    chunkSize,
    version: `${f.readUInt16LE(8)}.${f.readUInt16LE(10)}`,
    mediaSha256: c.noHash ? null : b.mediaSha256,
    sha256: sha256(read),
    badAreas,
    metadata: c.metadata ?? {model: 'conformance'},
    damaged,
    warnings,
    vdevExit: {info: 0, verify: result === 'valid' ? 0 : 5, extract: damaged.length ? 5 : 0},
    ...(c.repair ? {repair: {repairable: c.repair.repairable, ...(c.repair.intact ? {fileSha256: sha256(c.repair.intact().file)} : {}), ...(c.repair.recoveryDamaged ? {recoveryDamaged: true} : {})}} : {}),
  }
}

// ---------------------------------------------------------------------------------------------------------
// The cases

const CS = 4096
/**
 * The basic image: 3 full chunks and a partial one (1000 bytes; the last sector is partial too): zstd with
 * compressed blocks, zstd of one RLE block, zero, zstd of one RLE block. valid-basic stores chunk 1 raw.
 */
const BASIC_SIZE = 3 * CS + 1000
function basicChunk(i: number): ChunkSpec {
  if (i === 0) return {kind: 'zstd', content: text(1, CS), stored: COMPRESSED_FRAME}
  if (i === 1) return {kind: 'zstd', content: Buffer.alloc(CS, 0x11), stored: zstdFrame(Buffer.alloc(CS, 0x11), {rle: 0x11})}
  if (i === 2) return {kind: 'zero'}
  return {kind: 'zstd', content: Buffer.alloc(1000, 0xab), stored: zstdFrame(Buffer.alloc(1000, 0xab), {rle: 0xab})}
}
const basic = (over: Partial<ImageSpec> = {}): Built => build({size: BASIC_SIZE, chunks: basicChunk, ...over})
/** Chunk 1 of the basic image, whatever its spec. */
const chunk1 = (c: Partial<ChunkSpec>, over: Partial<ImageSpec> = {}): Built =>
  basic({chunks: (i) => (i === 1 ? {...basicChunk(1), ...c} : basicChunk(i)), ...over})
/** The basic image with chunk 1 stored as this zstd frame of text(2, 4096). */
const frame1 = (stored: Buffer): Built => chunk1({kind: 'zstd', content: text(2, CS), stored})
const T2 = text(2, CS)

/** Two groups (l2_entries 256): 257 chunks; group 0 has no table, group 1 one raw chunk. */
const TWO_GROUPS = 257 * CS
function twoGroups(group0: GroupSpec, over: Partial<ImageSpec> = {}): Built {
  return build({size: TWO_GROUPS, chunks: (i) => (i === 256 ? {kind: 'raw', content: noise(2, CS)} : {kind: 'zero'}), groups: {0: group0}, ...over})
}

/** Section types FORMAT.md §3 promises never to assign: unknown to every reader. */
const UNKNOWN = 0x7fff0000
const meta = (s: string | Buffer): Partial<ImageSpec> => ({metadata: Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8')})
const nested = (depth: number) => '{"a":'.repeat(1) + '['.repeat(depth - 1) + ']'.repeat(depth - 1) + '}'
const sectionOffset = (type: number) => (b: Built) => b.layout.sections.find((s) => s.type === type)!.offset
const tableEntry = (k: number, field: number) => (b: Built) => b.layout.sectionTable + k * 32 + field
const l2Entry = (g: number, k: number, field: number) => (b: Built) => b.layout.tables[g] + k * 24 + field
/** The basic image in version 1.1 (§12). */
const v11 = (over: Partial<ImageSpec> = {}): Built => basic({copies: true, ...over})
/** A section's offset in a layout. */
const section = (type: number) => (l: Layout) => l.sections.find((s) => s.type === type)!.offset
/** A post edit flipping one bit at `at(layout) + plus`, and then whatever `more` does. */
const flip =
  (at: (l: Layout) => number, plus = 0, more?: (f: Buffer, l: Layout) => void) =>
  (f: Buffer, l: Layout): Buffer => {
    const out = Buffer.from(f)
    out[at(l) + plus] ^= 1
    more?.(out, l)
    return out
  }

/**
 * Version 1.2 (§13): 4 raw chunks of noise (chunk i at file byte 256 + 4096·i, the table at 16640, the
 * protected region [256, 16736)), 512-byte slices: D = 33 data slices, k = 8, m = 2, T = 5 stripes (slice a
 * is in stripe a mod 5; its byte 100 is in chunk ⌊(512·a + 100 − 256) / 4096⌋).
 */
const v12 = (over: Partial<ImageSpec> = {}): Built => build({size: 4 * CS, chunks: (i) => ({kind: 'raw', content: noise(20 + i, CS)}), recovery: {k: 8, m: 2}, ...over})
/** Flip one byte in each of these 512-byte slices of the file (at byte 100 of the slice). */
const slices =
  (list: number[], more?: (f: Buffer, l: Layout) => void) =>
  (f: Buffer, l: Layout): Buffer => {
    const out = Buffer.from(f)
    for (const a of list) out[a * 512 + 100] ^= 0x5a
    more?.(out, l)
    return out
  }
/** Parity slice (stripe st, row r) of section 8 in a v12 image: 64 + 4·T·m + 4·D = 236 → parity at 512. */
const paritySlice = (l: Layout, st: number, r: number) => l.sections.find((x) => x.type === 8)!.offset + 512 + (st * 2 + r) * 512
const V12_INTACT = (): Built => v12()

export const CASES: Case[] = [
  // --- valid images
  {
    name: 'valid-basic',
    rule: '§4: zstd (compressed blocks, frame checksum), raw, zero chunks; a partial last chunk and sector',
    build: () => chunk1({kind: 'raw', content: noise(1, CS), stored: undefined}),
  },
  {name: 'valid-empty-image', rule: '§2, §3: size 0, no sections at all (no chunk index is needed when chunk_count is 0)', build: () => build({size: 0, chunks: basicChunk, sections: () => []}), metadata: {}},
  {
    name: 'valid-bad-areas',
    rule: '§6: bad areas (unaligned, adjacent ones of the same status not merged), an unread chunk inside one',
    build: () =>
      basic({
        chunks: (i) => (i === 2 ? {kind: 'unread'} : basicChunk(i)),
        bad: [
          {offset: 100, length: 3, status: 4},
          {offset: 2 * CS, length: 2048, status: 1},
          {offset: 2 * CS + 2048, length: 2048, status: 1},
          {offset: 3 * CS + 999, length: 1, status: 2},
        ],
      }),
  },
  {
    name: 'valid-bad-areas-many',
    rule: '§6: more bad areas than the image has sectors (40 one-byte areas in 26 sectors): only entries × 24 ≤ 1,073,741,808 bounds the map',
    build: () => basic({bad: Array.from({length: 40}, (_, k) => ({offset: 2000 + 2 * k, length: 1, status: 1 + (k % 4)}))}),
  },
  {
    name: 'valid-nonzero-in-bad-area',
    rule: '§6: bytes a chunk stores inside a bad area read as zero; data_crc covers the bytes as stored',
    // The raw chunk keeps its bytes inside the area (and data_crc covers them); the expected image has zeros there.
    build: () => chunk1({}, {bad: [{offset: CS + 10, length: 20, status: 3}]}),
  },
  {
    name: 'valid-unread-outside-bad-areas',
    rule: '§4: an unread chunk reads as zeros like a zero chunk; only the bad-area map says what is bad',
    build: () => basic({chunks: (i) => (i === 2 ? {kind: 'unread'} : basicChunk(i))}),
  },
  {
    name: 'valid-zero-chunk-in-bad-area',
    rule: '§4: a chunk wholly inside a bad area may be stored as zero instead of unread',
    build: () => basic({bad: [{offset: 2 * CS, length: CS, status: 4}]}),
  },
  {
    name: 'valid-unread-group',
    rule: '§5: a group without a table, fill_kind unread, inside a bad area; a group with a table',
    build: () => twoGroups({fill: 3}, {bad: [{offset: 0, length: 256 * CS, status: 1}]}),
  },
  {
    name: 'valid-tableless-nonzero-length-crc',
    rule: '§5: a group without a table: length and CRC in its entry are ignored',
    build: () => twoGroups({fill: 0, length: 1234, crc: 0xdeadbeef}),
  },
  {
    name: 'valid-fill-kind-with-table',
    rule: '§5: fill_kind is ignored when the group has a table',
    build: () => basic({groups: {0: {fillKind: 3}}}),
  },
  {
    name: 'valid-empty-sections',
    rule: '§3: zero-length sections (a bad-area map at the metadata section\'s offset, as vdev 1.0 writes, and empty metadata)',
    build: () => basic({metadata: Buffer.alloc(0), sections: (d) => [d.index, {...d.bad, data: Buffer.alloc(0)}, {...d.metadata!, data: Buffer.alloc(0), at: 1}]}),
    metadata: {},
  },
  {
    name: 'valid-sections-share-bytes',
    rule: '§3: sections may share bytes with each other (an unknown section over the metadata)',
    build: () => basic({sections: (d) => [d.metadata!, d.index, d.bad, {type: UNKNOWN, flags: 0, data: d.metadata!.data, at: 0}]}),
  },
  {
    name: 'valid-chunks-share-bytes',
    rule: '§5: two chunk entries may point at the same stored bytes',
    build: () => basic({chunks: (i) => (i === 2 ? {...basicChunk(1), sharePrevious: true} : basicChunk(i))}),
  },
  {
    name: 'valid-section-flags',
    rule: '§3: section flag bits 1-31 are ignored; CRITICAL on metadata, or missing on a known type, changes nothing',
    build: () =>
      basic({sections: (d) => [{...d.index, flags: 0xfffffffe}, {...d.bad, flags: 0}, {...d.metadata!, flags: 0xffffffff}]}),
  },
  {
    name: 'valid-unknown-sections',
    rule: '§3: unknown non-critical sections are skipped, and may repeat',
    build: () => basic({sections: (d) => [d.index, {type: UNKNOWN + 1, flags: 2, data: Buffer.from('one')}, d.bad, d.metadata!, {type: UNKNOWN + 1, flags: 0, data: Buffer.from('two')}]}),
  },
  {
    name: 'valid-newer-minor',
    rule: '§2 Versioning: minor 9 with reserved bytes set (header bytes 112–251, since 1.1 (§12.1) gives 96–111 a meaning whose zero is "no copies"; section, index and bad-area entries) and trailing bytes reads as 1.0',
    build: () =>
      basic({
        header: {minor: 9, reserved: 0x5a},
        chunks: (i) => ({...basicChunk(i), entry: {reserved: 0xa5}}),
        bad: [{offset: 0, length: 512, status: 4}],
        sections: (d) => [{...d.index, reserved: 0xffffffff}, d.bad, d.metadata!],
        // A bad-area entry's reserved byte too, with the CRCs that cover it recomputed.
        post: (f, at) => {
          const m = at.sections[1]
          f[m.offset + 17] = 0x77
          f.writeUInt32LE(crc32c(f.subarray(m.offset, m.offset + m.length)), at.sectionTable + 32 + 24)
          f.writeUInt32LE(crc32c(f.subarray(at.sectionTable, at.sectionTable + 3 * 32)), 60)
          f.writeUInt32LE(crc32c(f.subarray(0, 252)), 252)
          return f
        },
        trailer: Buffer.from('a newer writer may append bytes no 1.0 structure points at'),
      }),
  },
  {
    name: 'valid-hash-flag-clear',
    rule: '§2: with flag HASH clear a reader ignores the media_sha256 field, even when it is not zero',
    build: () => basic({header: {flags: 0, hash: Buffer.alloc(32, 0x11)}}),
    noHash: true,
  },
  {name: 'valid-sector-4096', rule: '§2: sector size 4096, size not a multiple of it', build: () => basic({sectorSize: 4096})},
  {name: 'valid-sector-2048', rule: '§2: sector size 2048', build: () => basic({sectorSize: 2048})},
  {name: 'valid-zstd-no-content-size', rule: '§4: a zstd frame without Frame_Content_Size (window from its descriptor)', build: () => frame1(zstdFrame(T2, {fcs: 'none'}))},
  {name: 'valid-zstd-blocks', rule: '§4: a zstd frame of several blocks', build: () => frame1(zstdFrame(T2, {block: 1000}))},
  {
    name: 'valid-zstd-window-8mib',
    rule: '§4: a zstd Window_Size of exactly 8 MiB',
    build: () => frame1(zstdFrame(T2, {fcs: 'none', windowDescriptor: 13 << 3})),
  },
  {
    name: 'valid-zstd-dictionary-id-zero',
    rule: '§4: a Dictionary_ID field holding 0 (no dictionary)',
    build: () => frame1(zstdFrame(T2, {dictId: 0})),
  },
  {name: 'valid-metadata-duplicate-keys', rule: '§8: a repeated key: the last one counts', build: () => basic(meta('{"model":"first","model":"conformance"}'))},
  {
    name: 'valid-metadata-wrong-types',
    rule: '§8: well-known keys with the wrong JSON type are kept as stored; no reader relies on them',
    build: () => basic(meta('{"model":"conformance","size":"big","sectorSize":-1.5,"ddrescue":{"currentPos":"x"}}')),
    metadata: {model: 'conformance', size: 'big', sectorSize: -1.5, ddrescue: {currentPos: 'x'}},
  },
  {
    name: 'valid-metadata-big-number',
    rule: '§8: numbers are IEEE 754 doubles: 2^53+1 reads as 2^53',
    build: () => basic(meta('{"model":"conformance","size":9007199254740993}')),
    metadata: {model: 'conformance', size: 9007199254740992},
  },
  {
    name: 'valid-metadata-depth-64',
    rule: '§8: metadata nested exactly 64 levels',
    build: () => basic(meta(nested(64))),
    metadata: JSON.parse(nested(64)),
  },

  // --- damaged images: the reader opens them and reads everything else
  {name: 'damaged-metadata-crc', rule: '§3, §9: a non-critical section whose CRC fails is ignored', build: () => basic({sections: (d) => [d.index, d.bad, {...d.metadata!, crc: 1}]}), warnings: 1, metadata: {}},
  {name: 'damaged-metadata-not-json', rule: '§8: metadata that is not JSON is ignored', build: () => basic(meta('{"model":')), warnings: 1, metadata: {}},
  {name: 'damaged-metadata-array', rule: '§8: metadata that is not an object is ignored', build: () => basic(meta('["model"]')), warnings: 1, metadata: {}},
  {name: 'damaged-metadata-bom', rule: '§8: metadata starting with a byte-order mark is ignored', build: () => basic(meta('\ufeff{"model":"conformance"}')), warnings: 1, metadata: {}},
  {
    name: 'damaged-metadata-bad-utf8',
    rule: '§8: metadata that is not UTF-8 is ignored',
    build: () => basic(meta(Buffer.concat([Buffer.from('{"model":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]))),
    warnings: 1,
    metadata: {},
  },
  {name: 'damaged-metadata-depth-65', rule: '§8: metadata nested 65 levels is ignored', build: () => basic(meta(nested(65))), warnings: 1, metadata: {}},
  {
    name: 'damaged-unknown-section-crc',
    rule: '§3: an unknown non-critical section whose CRC fails: the image reads, a warning',
    build: () => basic({sections: (d) => [d.index, d.bad, d.metadata!, {type: UNKNOWN + 2, flags: 0, data: Buffer.from('future'), crc: 7}]}),
    warnings: 1,
  },
  {name: 'damaged-chunk-stored-crc', rule: '§5: stored_crc fails: that chunk only', build: () => chunk1({entry: {storedCrc: 1}}), damagedChunks: [1]},
  {name: 'damaged-chunk-data-crc', rule: '§5: data_crc fails (stored_crc holds): that chunk, for a whole-image check', build: () => chunk1({kind: 'zstd', content: T2, stored: zstdFrame(T2), entry: {dataCrc: 1}}), damagedChunks: [1]},
  {name: 'damaged-chunk-unknown-kind', rule: '§4, §5: an unknown chunk kind: that chunk only', build: () => chunk1({entry: {kind: 4}}), damagedChunks: [1]},
  {name: 'damaged-chunk-zero-with-bytes', rule: '§5: a zero chunk with stored_length: that chunk', build: () => chunk1({kind: 'zero', content: undefined, entry: {storedLength: 10}}), damagedChunks: [1]},
  {name: 'damaged-chunk-raw-length', rule: '§5: a raw chunk not storing its logical length', build: () => chunk1({kind: 'raw', stored: undefined, entry: {storedLength: CS - 1}}), damagedChunks: [1]},
  {name: 'damaged-chunk-zstd-too-long', rule: '§4: a zstd stored_length over the bound', build: () => chunk1({entry: {storedLength: CS + 32 + 1025}}), damagedChunks: [1]},
  {name: 'damaged-chunk-past-eof', rule: '§5: stored bytes past the end of the file', build: () => chunk1({entry: {offset: 1n << 40n}}), damagedChunks: [1]},
  {name: 'damaged-chunk-in-header', rule: '§5: stored bytes inside the header', build: () => chunk1({entry: {offset: 16n}}), damagedChunks: [1]},
  {name: 'damaged-chunk-offset-2-64', rule: '§2, §5: a chunk offset of 2^64-1', build: () => chunk1({entry: {offset: (1n << 64n) - 1n}}), damagedChunks: [1]},
  {name: 'damaged-zstd-trailing-bytes', rule: '§4: bytes after the zstd frame', build: () => frame1(Buffer.concat([zstdFrame(T2), Buffer.from([0, 0, 0, 0])])), damagedChunks: [1]},
  {name: 'damaged-zstd-two-frames', rule: '§4: two zstd frames', build: () => frame1(Buffer.concat([zstdFrame(T2.subarray(0, 2048), {fcs: 'none'}), zstdFrame(T2.subarray(2048), {fcs: 'none'})])), damagedChunks: [1]},
  {name: 'damaged-zstd-skippable-frame', rule: '§4: a skippable frame before the zstd frame', build: () => frame1(Buffer.concat([skippableFrame(Buffer.from('hi')), zstdFrame(T2)])), damagedChunks: [1]},
  {name: 'damaged-zstd-dictionary', rule: '§4: a frame that needs a dictionary', build: () => frame1(zstdFrame(T2, {dictId: 7})), damagedChunks: [1]},
  {name: 'damaged-zstd-window-16mib', rule: '§4: a Window_Size over 8 MiB', build: () => frame1(zstdFrame(T2, {fcs: 'none', windowDescriptor: 14 << 3})), damagedChunks: [1]},
  {name: 'damaged-zstd-content-size', rule: '§4: Frame_Content_Size not the logical length', build: () => frame1(zstdFrame(T2, {fcs: CS - 1})), damagedChunks: [1]},
  {name: 'damaged-zstd-short', rule: '§4: a frame (no content size) that yields fewer bytes than the chunk', build: () => chunk1({kind: 'zstd', content: T2, stored: zstdFrame(T2.subarray(0, CS - 1), {fcs: 'none'})}), damagedChunks: [1]},
  {
    name: 'damaged-zstd-frame-checksum',
    rule: '§4: a frame whose content checksum fails (stored_crc holds)',
    build: () => {
      const f = Buffer.from(COMPRESSED_FRAME)
      f[f.length - 1] ^= 0xff
      return chunk1({kind: 'zstd', content: text(1, CS), stored: f})
    },
    damagedChunks: [1],
  },
  {name: 'damaged-index-table-crc', rule: '§5, §9: an index table whose CRC fails: every chunk of its group', build: () => basic({groups: {0: {crc: 5}}}), damagedChunks: [0, 1, 2, 3]},
  {name: 'damaged-index-table-length', rule: '§5: an index table of the wrong length', build: () => twoGroups({fill: 0}, {groups: {0: {fill: 0}, 1: {length: 48}}}), damagedChunks: [256]},
  {name: 'damaged-index-table-past-eof', rule: '§5: an index table past the end of the file', build: () => twoGroups({fill: 0}, {groups: {0: {fill: 0}, 1: {offset: 1n << 40n}}}), damagedChunks: [256]},
  {name: 'damaged-index-fill-kind', rule: '§5: a group without a table whose fill_kind is not 0 or 3', build: () => twoGroups({fill: 1}), damagedChunks: Array.from({length: 256}, (_, i) => i)},

  // --- invalid images: refused whole
  {name: 'invalid-empty-file', rule: '§2: a file shorter than 8 bytes is not a VDIMG file', build: () => basic({post: () => Buffer.alloc(0)}), invalid: {error: 'format', offset: 0, reason: 'not a VDIMG image (bad magic)'}},
  {name: 'invalid-magic-only', rule: '§2: the magic and no version: truncated', build: () => basic({post: (f) => f.subarray(0, 10)}), invalid: {error: 'format', offset: 10, reason: 'truncated header (10 of 256 bytes)'}},
  {name: 'invalid-short-header', rule: '§2: a header cut short', build: () => basic({post: (f) => f.subarray(0, 100)}), invalid: {error: 'format', offset: 100, reason: 'truncated header (100 of 256 bytes)'}},
  {name: 'invalid-bad-magic', rule: '§2: wrong magic', build: () => basic({post: (f) => ((f[1] = 0x76), f)}), invalid: {error: 'format', offset: 0, reason: 'not a VDIMG image (bad magic)'}},
  {name: 'invalid-major-2', rule: '§2: another major version (checked before the CRC)', build: () => basic({header: {major: 2, headerCrc: 0}, post: (f) => f.subarray(0, 64)}), invalid: {error: 'unsupported', offset: 8, reason: 'format version 2.0 is not supported'}},
  {name: 'invalid-header-crc', rule: '§2: header CRC', build: () => basic({header: {headerCrc: 1}}), invalid: {error: 'format', offset: 252, reason: 'header checksum mismatch'}},
  {name: 'invalid-header-size', rule: '§2: header_size not 256', build: () => basic({header: {headerSize: 512}}), invalid: {error: 'format', offset: 12, reason: 'header size 512 is not 256'}},
  {name: 'invalid-header-flags', rule: '§2: unknown header flags', build: () => basic({header: {flags: 3}}), invalid: {error: 'format', offset: 16, reason: 'unknown header flags 0x3'}},
  {name: 'invalid-sector-size', rule: '§2: sector size 1024', build: () => basic({header: {sectorSize: 1024}}), invalid: {error: 'format', offset: 20, reason: 'sector size 1024 is not 512, 2048 or 4096'}},
  {name: 'invalid-chunk-size', rule: '§2: chunk size not a power of two', build: () => basic({header: {chunkSize: 5000}}), invalid: {error: 'format', offset: 24, reason: 'chunk size 5000 is not a power of two'}},
  {name: 'invalid-l2-entries', rule: '§2: l2_entries out of range', build: () => basic({header: {l2Entries: 128}}), invalid: {error: 'format', offset: 28, reason: 'index table size 128 is not a power of two from 256 to 65536'}},
  {name: 'invalid-size-2-53', rule: '§2: a 64-bit field of 2^53 or more', build: () => basic({header: {size: 1n << 53n}}), invalid: {error: 'format', offset: 32, reason: 'image size 9007199254740992 is out of range'}},
  {name: 'invalid-chunk-count', rule: '§2: chunk_count not ceil(size / chunk_size)', build: () => basic({header: {chunkCount: 5n}}), invalid: {error: 'format', offset: 40, reason: 'chunk count 5 does not match image size'}},
  {name: 'invalid-section-count', rule: '§2: more than 4096 sections', build: () => basic({header: {sectionCount: 4097}}), invalid: {error: 'format', offset: 56, reason: 'section count 4097 is absurd'}},
  {name: 'invalid-truncated', rule: '§2, §9: the file cut by one byte: the section table lies outside it', build: () => basic({post: (f) => f.subarray(0, f.length - 1)}), invalid: {error: 'format', offset: 48, reason: 'lies outside the file'}},
  {name: 'invalid-section-table-in-header', rule: '§2: the section table inside the header', build: () => basic({header: {sectionTableOffset: 128n}}), invalid: {error: 'format', offset: 48, reason: 'lies outside the file'}},
  {name: 'invalid-section-table-crc', rule: '§3: section table CRC', build: () => basic({damageSectionTable: (t) => (t[4] ^= 2)}), invalid: {error: 'format', offset: (b) => b.layout.sectionTable, reason: 'section table checksum mismatch'}},
  {
    name: 'invalid-unknown-section-past-eof',
    rule: '§3: every section, even a skipped one, lies inside the file',
    build: () => basic({sections: (d) => [d.index, d.bad, d.metadata!, {type: UNKNOWN + 3, flags: 0, data: Buffer.from('x'), length: 1n << 40n}]}),
    invalid: {error: 'format', offset: tableEntry(3, 8), reason: `section type ${UNKNOWN + 3} (1099511627776 bytes at byte`},
  },
  {
    name: 'invalid-section-in-header',
    rule: '§3: a section inside the header',
    build: () => basic({sections: (d) => [d.index, d.bad, {...d.metadata!, offset: 200n}]}),
    invalid: {error: 'format', offset: tableEntry(2, 8), reason: 'overlaps the header'},
  },
  {name: 'invalid-chunk-index-crc', rule: '§3, §9: chunk index CRC', build: () => basic({sections: (d) => [{...d.index, crc: 1}, d.bad, d.metadata!]}), invalid: {error: 'format', offset: sectionOffset(1), reason: 'chunk index checksum mismatch'}},
  {name: 'invalid-bad-area-map-crc', rule: '§3, §9: bad-area map CRC', build: () => basic({sections: (d) => [d.index, {...d.bad, crc: 1}, d.metadata!]}), invalid: {error: 'format', offset: sectionOffset(2), reason: 'bad-area map checksum mismatch'}},
  {
    name: 'invalid-duplicate-chunk-index',
    rule: '§3: two sections of type 1',
    build: () => basic({sections: (d) => [d.index, d.bad, d.metadata!, {...d.index, at: 0}]}),
    invalid: {error: 'format', offset: sectionOffset(1), reason: 'duplicate section of type 1'},
  },
  {
    name: 'invalid-duplicate-metadata',
    rule: '§3: two sections of type 3 (even though metadata is not critical)',
    build: () => basic({sections: (d) => [d.index, d.bad, d.metadata!, {...d.metadata!, at: 2}]}),
    invalid: {error: 'format', offset: sectionOffset(3), reason: 'duplicate section of type 3'},
  },
  {
    name: 'invalid-unknown-critical',
    rule: '§3: an unknown critical section',
    build: () => basic({sections: (d) => [d.index, d.bad, d.metadata!, {type: UNKNOWN + 4, flags: 1, data: Buffer.from('new')}]}),
    invalid: {error: 'unsupported', offset: (b) => b.layout.sections[3].offset, reason: `unknown critical section type ${UNKNOWN + 4}: this image needs a newer vdev`},
  },
  {name: 'invalid-no-chunk-index', rule: '§3: no chunk index though chunk_count > 0', build: () => basic({sections: (d) => [d.bad, d.metadata!]}), invalid: {error: 'format', offset: (b) => b.layout.sectionTable, reason: 'no chunk index section'}},
  {
    name: 'invalid-chunk-index-length',
    rule: '§5: a chunk index of the wrong length',
    build: () => basic({sections: (d) => [{...d.index, data: Buffer.concat([d.index.data, Buffer.alloc(24)])}, d.bad, d.metadata!]}),
    invalid: {error: 'format', offset: sectionOffset(1), reason: 'chunk index is 48 bytes, expected 24'},
  },
  {
    name: 'invalid-index-offset-2-53',
    rule: '§2, §5: a first-level table offset of 2^53 or more',
    build: () => basic({groups: {0: {offset: (1n << 64n) - 1n}}}),
    invalid: {error: 'format', offset: sectionOffset(1), reason: 'index table offset 18446744073709551615 is out of range'},
  },
  {name: 'invalid-bad-area-unsorted', rule: '§6: unsorted', build: () => basic({bad: [{offset: 2000, length: 10, status: 1}, {offset: 1000, length: 10, status: 1}]}), invalid: {error: 'format', offset: (b) => sectionOffset(2)(b) + 24, reason: 'bad-area range 1 at 1000 overlaps or is out of order'}},
  {name: 'invalid-bad-area-overlap', rule: '§6: overlapping', build: () => basic({bad: [{offset: 1000, length: 10, status: 1}, {offset: 1005, length: 10, status: 4}]}), invalid: {error: 'format', offset: (b) => sectionOffset(2)(b) + 24, reason: 'bad-area range 1 at 1005 overlaps or is out of order'}},
  {name: 'invalid-bad-area-empty', rule: '§6: an empty area', build: () => basic({bad: [{offset: 1000, length: 0, status: 1}]}), invalid: {error: 'format', offset: (b) => sectionOffset(2)(b) + 8, reason: 'bad-area range 0 is empty'}},
  {name: 'invalid-bad-area-past-end', rule: '§6: an area past the image end', build: () => basic({bad: [{offset: BASIC_SIZE - 10, length: 11, status: 1}]}), invalid: {error: 'format', offset: sectionOffset(2), reason: 'bad-area range 0 (11 bytes at 13278) extends past the image end 13288'}},
  {name: 'invalid-bad-area-status', rule: '§6: an unknown status', build: () => basic({bad: [{offset: 0, length: 10, status: 5}]}), invalid: {error: 'format', offset: (b) => sectionOffset(2)(b) + 16, reason: 'bad-area range 0 has unknown status 5'}},
  {name: 'invalid-bad-area-length', rule: '§6: a map length not a multiple of 24', build: () => basic({badBytes: Buffer.alloc(25)}), invalid: {error: 'format', offset: sectionOffset(2), reason: 'bad-area map length 25 is not a multiple of 24'}},

  // --- version 1.1: every critical structure twice (§12)
  {name: 'valid-1.1', rule: '§12: minor 1, sections 4–7 after zero padding to a multiple of 4096, the section table copy, the header copy last', build: () => v11()},
  {
    name: 'valid-1.1-tableless-group',
    rule: '§12.2: section 4 holds the tables of the groups that have one, in group order (group 0 has none)',
    build: () => twoGroups({fill: 0}, {copies: true}),
  },
  {name: 'damaged-1.1-header', rule: '§12.4: a header whose CRC fails is read from the trailer (the file\'s last 256 bytes)', build: () => v11({post: flip(() => 252)}), warnings: 1},
  {name: 'damaged-1.1-trailer', rule: '§12.4: a trailer that differs from a good header is a damaged copy', build: () => v11({post: flip((l) => l.trailer + 20)}), warnings: 1},
  {name: 'damaged-1.1-trailer-outside', rule: '§12.1, §12.4: a file cut inside its trailer: the copy lies outside the file (damaged), the rest reads', build: () => v11({post: (f) => f.subarray(0, f.length - 100)}), warnings: 1},
  {name: 'damaged-1.1-section-table', rule: '§12.4: a section table whose CRC fails is read from its copy', build: () => v11({damageSectionTable: (t) => (t[40] ^= 1)}), warnings: 1},
  {name: 'damaged-1.1-section-table-copy', rule: '§12.4: a section table copy that differs from a good original is damaged', build: () => v11({damageSectionTableCopy: (t) => (t[40] ^= 1)}), warnings: 1},
  {name: 'damaged-1.1-chunk-index', rule: '§12.4: a chunk index whose bytes fail its CRC is read from section 5', build: () => v11({post: flip(section(1))}), warnings: 1},
  {name: 'damaged-1.1-chunk-index-copy', rule: '§12.4: a section 5 whose bytes fail the CRC is a damaged copy', build: () => v11({post: flip(section(5))}), warnings: 1},
  {
    name: 'damaged-1.1-bad-area-map',
    rule: '§12.4: a bad-area map whose bytes fail its CRC is read from section 6',
    build: () => v11({bad: [{offset: 100, length: 3, status: 4}, {offset: 2 * CS, length: 512, status: 1}], post: flip(section(2), 8)}),
    warnings: 1,
  },
  {name: 'damaged-1.1-metadata', rule: '§12.4: metadata whose bytes fail its CRC is read from section 7', build: () => v11({post: flip(section(3), 3)}), warnings: 1},
  {name: 'damaged-1.1-index-table', rule: '§12.4: a second-level table whose CRC fails is read from its copy in section 4: no chunk is lost', build: () => v11({groups: {0: {damageTable: (t) => (t[30] ^= 1)}}}), warnings: 1},
  {
    name: 'damaged-1.1-index-table-both',
    rule: '§12.4, §9: a second-level table and its copy both failing the CRC: every chunk of the group is lost',
    build: () => v11({groups: {0: {damageTable: (t) => (t[30] ^= 1), damageCopy: (t) => (t[30] ^= 1)}}}),
    damagedChunks: [0, 1, 2, 3],
  },
  {
    name: 'damaged-1.1-table-copies-length',
    rule: '§12.2: section 4 whose length is not the sum of the tables\' lengths is ignored (a warning)',
    build: () => v11({sections: (d) => [d.index, d.bad, d.metadata!, {...d.copies[0], data: Buffer.concat([d.copies[0].data, Buffer.alloc(24)])}, ...d.copies.slice(1)]}),
    warnings: 1,
  },
  {name: 'invalid-1.1-header-and-trailer', rule: '§12.4: the header and its copy both failing: the header\'s own error', build: () => v11({post: flip((l) => l.trailer + 252, 0, (f) => (f[252] ^= 1))}), invalid: {error: 'format', offset: 252, reason: 'header checksum mismatch'}},
  {
    name: 'invalid-1.1-section-table-both',
    rule: '§12.4: the section table and its copy both failing the CRC',
    build: () => v11({damageSectionTable: (t) => (t[40] ^= 1), damageSectionTableCopy: (t) => (t[72] ^= 1)}),
    invalid: {error: 'format', offset: (b) => b.layout.sectionTable, reason: 'section table checksum mismatch'},
  },
  {
    name: 'invalid-1.1-chunk-index-both',
    rule: '§12.4, §9: the chunk index and section 5 both failing the CRC',
    build: () => v11({post: flip(section(1), 0, (f, l) => (f[l.sections.find((s) => s.type === 5)!.offset] ^= 1))}),
    invalid: {error: 'format', offset: sectionOffset(1), reason: 'chunk index checksum mismatch, and its copy too'},
  },
  {
    name: 'invalid-1.1-duplicate-copy',
    rule: '§12.2: each of types 1–7 at most once',
    build: () => v11({sections: (d) => [d.index, d.bad, d.metadata!, ...d.copies, {...d.copies[1], at: 4}]}),
    invalid: {error: 'format', offset: sectionOffset(5), reason: 'duplicate section of type 5'},
  },
  {
    name: 'invalid-1.1-trailer-offset-zero',
    rule: '§12.1: copy_table_offset set and trailer_offset 0',
    build: () => v11({header: {trailerOffset: 0n}}),
    invalid: {error: 'format', offset: 96, reason: 'the section table copy and header copy offsets must both be set or both be 0'},
  },

  // --- version 1.2: recovery data (§13)
  {name: 'valid-1.2-recovery', rule: '§13: minor 2, section 8 (k 8, m 2, 512-byte slices) last in the table, right after the padding, then zeros to 4096, then the copies', build: () => v12()},
  {
    name: 'damaged-1.2-one-slice',
    rule: '§13.3: one lost data slice (slice 10: chunk 1) is rebuilt from the parity of its stripe',
    build: () => v12({post: slices([10])}),
    damagedChunks: [1],
    repair: {repairable: true, intact: V12_INTACT},
  },
  {
    name: 'damaged-1.2-two-slices-one-stripe',
    rule: '§13.2: m = 2 lost slices of one stripe (slices 10 and 20: chunks 1 and 2) are rebuilt',
    build: () => v12({post: slices([10, 20])}),
    damagedChunks: [1, 2],
    repair: {repairable: true, intact: V12_INTACT},
  },
  {
    name: 'damaged-1.2-beyond-parity',
    rule: '§13.3: m + 1 lost slices in one stripe (slices 10, 20, 25: chunks 1, 2, 3) cannot be rebuilt',
    build: () => v12({post: slices([10, 20, 25])}),
    damagedChunks: [1, 2, 3],
    repair: {repairable: false},
  },
  {
    name: 'damaged-1.2-spread',
    rule: '§13.1: five lost slices of chunk 1, one in each stripe (slices 10–14), are each rebuilt',
    build: () => v12({post: slices([10, 11, 12, 13, 14])}),
    damagedChunks: [1],
    repair: {repairable: true, intact: V12_INTACT},
  },
  {
    name: 'damaged-1.2-parity-slice',
    rule: '§13.3: a parity slice that fails its CRC is not used: one lost slice and one good parity slice in the stripe still rebuild it',
    build: () => v12({post: slices([10], (f, l) => (f[paritySlice(l, 0, 0) + 7] ^= 1))}),
    damagedChunks: [1],
    repair: {repairable: true, intact: V12_INTACT, recoveryDamaged: true},
  },
  {
    name: 'damaged-1.2-parity-too-few',
    rule: '§13.3: two lost slices and one good parity slice in the stripe: not rebuilt',
    build: () => v12({post: slices([10, 20], (f, l) => (f[paritySlice(l, 0, 1) + 7] ^= 1))}),
    damagedChunks: [1, 2],
    repair: {repairable: false, recoveryDamaged: true},
  },
  {
    name: 'damaged-1.2-recovery-header',
    rule: '§13.3: a recovery header that fails its checks is taken from the section\'s end',
    build: () => v12({post: slices([10], (f, l) => (f[l.sections.find((x) => x.type === 8)!.offset + 20] ^= 1))}),
    damagedChunks: [1],
    repair: {repairable: true, intact: V12_INTACT, recoveryDamaged: true},
  },
  {
    name: 'damaged-1.2-index-table-both',
    rule: '§13.1, §12.4: a second-level table lost in both copies is rebuilt from the parity (it is in the protected region)',
    // Damaged in the file after the parity was computed over the good table.
    build: () => v12({post: slices([], (f, l) => ((f[l.tables[0] + 30] ^= 1), (f[l.sections.find((x) => x.type === 4)!.offset + 30] ^= 1)))}),
    damagedChunks: [0, 1, 2, 3],
    repair: {repairable: true, intact: V12_INTACT},
  },
]

/** Build one case: its image and its expected result. */
export function generateCase(c: Case): {image: Buffer; expected: Expected} {
  const b = c.build()
  return {image: b.file, expected: expected(c, b)}
}

/** Write every case into `dir` (NAME.vdimg, NAME.json) and an index; returns the file names written. */
export function generate(dir: string): string[] {
  fs.mkdirSync(dir, {recursive: true})
  const names: string[] = []
  const index: Array<{name: string; result: string; rule: string}> = []
  for (const c of CASES) {
    const {image, expected} = generateCase(c)
    fs.writeFileSync(path.join(dir, `${c.name}.vdimg`), image)
    fs.writeFileSync(path.join(dir, `${c.name}.json`), JSON.stringify(expected, null, 2) + '\n')
    names.push(`${c.name}.vdimg`, `${c.name}.json`)
    index.push({name: c.name, result: expected.result, rule: c.rule})
  }
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify(index, null, 2) + '\n')
  names.push('index.json')
  return names
}

if (require.main === module) {
  const dir = process.argv[2] ?? path.join(__dirname, '..', '..', 'conformance', 'cases')
  const names = generate(dir)
  let bytes = 0
  for (const n of names) bytes += fs.statSync(path.join(dir, n)).size
  console.log(`${CASES.length} cases, ${names.length} files, ${bytes} bytes in ${dir}`)
}

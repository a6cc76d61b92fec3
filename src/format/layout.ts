/**
 * VDIMG on-disk structures, exactly as docs/FORMAT.md (version 1.1; 1.0 is 1.1 without the copies of §12)
 * defines them. Every structure is
 * defined once, here; the rest of the code uses these encoders and decoders, never raw offsets.
 * All integers are little-endian. 64-bit fields are decoded as bigint and range-checked before use.
 */
import {crc32c} from './crc'

/** FORMAT.md §2: "\x89VDIMG\r\n" — the high byte and CR LF catch 7-bit and newline-mangling transfers. */
export const MAGIC = Buffer.from([0x89, 0x56, 0x44, 0x49, 0x4d, 0x47, 0x0d, 0x0a])
export const VERSION_MAJOR = 1
/** The minor version this writer writes (FORMAT.md §12: 1.1 adds a second copy of every critical structure). */
export const VERSION_MINOR = 1
/** The minor version of an image with recovery data (FORMAT.md §13: 1.2 adds section type 8). */
export const VERSION_MINOR_RECOVERY = 2
/** FORMAT.md §12: where the copies start, and how far apart a structure and its copy must be. */
export const COPY_ALIGN = 4096

export const HEADER_SIZE = 256
/** Chunk data follows the header directly, so every byte of a file vdev writes is under a checksum. */
export const DATA_START = HEADER_SIZE

export const MIN_CHUNK_SIZE = 4096
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024
/**
 * `vdev create`'s chunk size when none is given: qcow2's cluster size. A random 4 KiB read decodes its chunk up
 * to the read's end, so halving the chunk from 128 KiB made random reads 1.6–1.9x faster through FUSE + loop
 * (5.5–6.8k → 10.3–11.5k IOPS at QD1 on the corpus, 2026-12-02 23:38 UTC) for +2.2% stored size (still no
 * larger than qemu-img's qcow2-zstd of the same data); create, extract and sequential reads measured level
 * (docs/performance.md, "The default chunk size").
 */
export const DEFAULT_CHUNK_SIZE = 64 * 1024
export const SECTOR_SIZES = [512, 2048, 4096] as const
export const MIN_L2_ENTRIES = 256
export const MAX_L2_ENTRIES = 65536
export const DEFAULT_L2_ENTRIES = 4096

/** FORMAT.md §4: chunk kinds. */
export enum ChunkKind {
  Zero = 0, // no stored bytes; all zero
  Raw = 1, // stored uncompressed
  Zstd = 2, // one zstd frame
  Unread = 3, // no stored bytes; every byte lies in a bad area (reads as zero)
}
export const CHUNK_KIND_NAMES: Record<ChunkKind, string> = {
  [ChunkKind.Zero]: 'zero',
  [ChunkKind.Raw]: 'raw',
  [ChunkKind.Zstd]: 'zstd',
  [ChunkKind.Unread]: 'unread',
}

/** FORMAT.md §3: section types. */
export enum SectionType {
  ChunkIndex = 1,
  BadAreaMap = 2,
  Metadata = 3,
  /** 1.1 (§12): a copy of every second-level index table, concatenated in group order. */
  IndexTablesCopy = 4,
  /** 1.1 (§12): byte-identical copies of sections 1, 2 and 3. */
  ChunkIndexCopy = 5,
  BadAreaMapCopy = 6,
  MetadataCopy = 7,
  /** 1.2 (§13): Reed–Solomon parity over the chunk data and index tables. */
  Recovery = 8,
}
/** FORMAT.md §12: the section each copy section duplicates, byte for byte. */
export const COPY_OF: Partial<Record<number, SectionType>> = {
  [SectionType.ChunkIndexCopy]: SectionType.ChunkIndex,
  [SectionType.BadAreaMapCopy]: SectionType.BadAreaMap,
  [SectionType.MetadataCopy]: SectionType.Metadata,
}
/** Section types a reader of this version knows; each may appear at most once. */
export const LAST_KNOWN_SECTION = SectionType.Recovery
export const SECTION_FLAG_CRITICAL = 1

/** FORMAT.md §6: bad-area statuses, numbered after ddrescue's characters. */
export const BAD_STATUS_CODES = {
  'non-tried': 1, // '?'
  'non-trimmed': 2, // '*'
  'non-scraped': 3, // '/'
  'bad-sector': 4, // '-'
} as const
export type BadStatusName = keyof typeof BAD_STATUS_CODES
export const BAD_STATUS_BY_CODE: Record<number, BadStatusName> = {
  1: 'non-tried',
  2: 'non-trimmed',
  3: 'non-scraped',
  4: 'bad-sector',
}

export const SECTION_ENTRY_SIZE = 32
export const L1_ENTRY_SIZE = 24
export const L2_ENTRY_SIZE = 24
export const BAD_ENTRY_SIZE = 24
/** FORMAT.md §6: the most areas a bad-area map may hold (its bytes stay under 1 GiB). */
export const MAX_BAD_AREAS = Math.floor(2 ** 30 / BAD_ENTRY_SIZE)

/** Thrown by decoders; the reader adds the file name. `offset` is the absolute byte offset in the file. */
export class LayoutError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message)
  }
}

export interface Header {
  major: number
  minor: number
  headerSize: number
  flags: number
  sectorSize: number
  chunkSize: number
  l2Entries: number
  size: number
  chunkCount: number
  sectionTableOffset: number
  sectionCount: number
  sectionTableCrc: number
  /** 32 bytes; all zero when `flags & HEADER_FLAG_HASH` is clear. */
  sha256: Buffer
  /**
   * 1.1 (FORMAT.md §12): offset of the section table's copy, and of the header's copy (the trailer, the
   * file's last 256 bytes as written); both 0 when the image has no copies (always, in a 1.0 header).
   */
  copyTableOffset: number
  trailerOffset: number
}
/** Header flag bit 0: the media SHA-256 field is set. */
export const HEADER_FLAG_HASH = 1
const KNOWN_HEADER_FLAGS = HEADER_FLAG_HASH

function u64(buf: Buffer, at: number, what: string, base: number): number {
  const v = buf.readBigUInt64LE(at)
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new LayoutError(`${what} ${v} is out of range`, base + at)
  return Number(v)
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0
}

/** A header to encode; the 1.1 copy fields default to 0 (no copies). */
export type HeaderFields = Omit<Header, 'copyTableOffset' | 'trailerOffset'> & Partial<Pick<Header, 'copyTableOffset' | 'trailerOffset'>>

export function encodeHeader(h: HeaderFields): Buffer {
  const b = Buffer.alloc(HEADER_SIZE)
  MAGIC.copy(b, 0)
  b.writeUInt16LE(h.major, 8)
  b.writeUInt16LE(h.minor, 10)
  b.writeUInt32LE(HEADER_SIZE, 12)
  b.writeUInt32LE(h.flags, 16)
  b.writeUInt32LE(h.sectorSize, 20)
  b.writeUInt32LE(h.chunkSize, 24)
  b.writeUInt32LE(h.l2Entries, 28)
  b.writeBigUInt64LE(BigInt(h.size), 32)
  b.writeBigUInt64LE(BigInt(h.chunkCount), 40)
  b.writeBigUInt64LE(BigInt(h.sectionTableOffset), 48)
  b.writeUInt32LE(h.sectionCount, 56)
  b.writeUInt32LE(h.sectionTableCrc, 60)
  h.sha256.copy(b, 64, 0, 32)
  b.writeBigUInt64LE(BigInt(h.copyTableOffset ?? 0), 96)
  b.writeBigUInt64LE(BigInt(h.trailerOffset ?? 0), 104)
  b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
  return b
}

/**
 * Decode and validate the header. Checks run in the order a reader needs them: magic, major version,
 * checksum, then every field's range, so a wrong file, a newer file and a damaged file are told apart.
 */
export function decodeHeader(b: Buffer, fileSize: number): Header {
  // FORMAT.md §2: fewer than 8 bytes, or other bytes there, is not a VDIMG file; the magic with fewer than
  // 12 bytes (no version) or fewer than 256 (a header cut short) is a truncated one.
  if (b.length < 8 || !b.subarray(0, 8).equals(MAGIC)) throw new LayoutError('not a VDIMG image (bad magic)', 0)
  if (b.length < 12) throw new LayoutError(`truncated header (${b.length} of ${HEADER_SIZE} bytes)`, b.length)
  const major = b.readUInt16LE(8)
  const minor = b.readUInt16LE(10)
  if (major !== VERSION_MAJOR)
    throw new LayoutError(`format version ${major}.${minor} is not supported (this reader reads ${VERSION_MAJOR}.x)`, 8)
  if (b.length < HEADER_SIZE) throw new LayoutError(`truncated header (${b.length} of ${HEADER_SIZE} bytes)`, b.length)
  const headerSize = b.readUInt32LE(12)
  if (headerSize !== HEADER_SIZE) throw new LayoutError(`header size ${headerSize} is not ${HEADER_SIZE}`, 12)
  const stored = b.readUInt32LE(252)
  if (crc32c(b.subarray(0, 252)) !== stored) throw new LayoutError('header checksum mismatch', 252)
  const flags = b.readUInt32LE(16)
  if (flags & ~KNOWN_HEADER_FLAGS) throw new LayoutError(`unknown header flags 0x${flags.toString(16)}`, 16)
  const sectorSize = b.readUInt32LE(20)
  if (!(SECTOR_SIZES as readonly number[]).includes(sectorSize))
    throw new LayoutError(`sector size ${sectorSize} is not 512, 2048 or 4096`, 20)
  const chunkSize = b.readUInt32LE(24)
  if (!isPowerOfTwo(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE)
    throw new LayoutError(`chunk size ${chunkSize} is not a power of two from 4 KiB to 4 MiB`, 24)
  if (chunkSize < sectorSize) throw new LayoutError(`chunk size ${chunkSize} is smaller than the sector size`, 24)
  const l2Entries = b.readUInt32LE(28)
  if (!isPowerOfTwo(l2Entries) || l2Entries < MIN_L2_ENTRIES || l2Entries > MAX_L2_ENTRIES)
    throw new LayoutError(`index table size ${l2Entries} is not a power of two from 256 to 65536`, 28)
  const size = u64(b, 32, 'image size', 0)
  const chunkCount = u64(b, 40, 'chunk count', 0)
  if (chunkCount !== Math.ceil(size / chunkSize))
    throw new LayoutError(`chunk count ${chunkCount} does not match image size ${size}`, 40)
  const sectionTableOffset = u64(b, 48, 'section table offset', 0)
  const sectionCount = b.readUInt32LE(56)
  if (sectionCount > 4096) throw new LayoutError(`section count ${sectionCount} is absurd`, 56)
  if (sectionTableOffset < HEADER_SIZE || sectionTableOffset + sectionCount * SECTION_ENTRY_SIZE > fileSize)
    throw new LayoutError(
      `section table (${sectionCount} entries at byte ${sectionTableOffset}) lies outside the file (${fileSize} bytes): truncated?`,
      48,
    )
  const sha256 = Buffer.from(b.subarray(64, 96))
  // 1.1 fields live in bytes 1.0 reserved: a 1.0 header's are ignored, whatever they hold.
  let copyTableOffset = 0
  let trailerOffset = 0
  if (minor >= 1) {
    copyTableOffset = u64(b, 96, 'section table copy offset', 0)
    trailerOffset = u64(b, 104, 'header copy offset', 0)
    if ((copyTableOffset === 0) !== (trailerOffset === 0))
      throw new LayoutError('the section table copy and header copy offsets must both be set or both be 0', 96)
    if (copyTableOffset !== 0 && (copyTableOffset < HEADER_SIZE || trailerOffset < copyTableOffset + sectionCount * SECTION_ENTRY_SIZE))
      throw new LayoutError(`section table copy at byte ${copyTableOffset} and header copy at byte ${trailerOffset} are out of place`, 96)
  }
  return {
    major,
    minor,
    headerSize,
    flags,
    sectorSize,
    chunkSize,
    l2Entries,
    size,
    chunkCount,
    sectionTableOffset,
    sectionCount,
    sectionTableCrc: b.readUInt32LE(60),
    sha256,
    copyTableOffset,
    trailerOffset,
  }
}

export interface Section {
  type: number
  flags: number
  offset: number
  length: number
  crc: number
}

export function encodeSections(sections: Section[]): Buffer {
  const b = Buffer.alloc(sections.length * SECTION_ENTRY_SIZE)
  sections.forEach((s, i) => {
    const at = i * SECTION_ENTRY_SIZE
    b.writeUInt32LE(s.type, at)
    b.writeUInt32LE(s.flags, at + 4)
    b.writeBigUInt64LE(BigInt(s.offset), at + 8)
    b.writeBigUInt64LE(BigInt(s.length), at + 16)
    b.writeUInt32LE(s.crc, at + 24)
  })
  return b
}

export function decodeSections(b: Buffer, base: number, fileSize: number): Section[] {
  const out: Section[] = []
  for (let at = 0; at + SECTION_ENTRY_SIZE <= b.length; at += SECTION_ENTRY_SIZE) {
    const s: Section = {
      type: b.readUInt32LE(at),
      flags: b.readUInt32LE(at + 4),
      offset: u64(b, at + 8, 'section offset', base),
      length: u64(b, at + 16, 'section length', base),
      crc: b.readUInt32LE(at + 24),
    }
    if (s.offset < HEADER_SIZE)
      throw new LayoutError(`section type ${s.type} (${s.length} bytes at byte ${s.offset}) overlaps the header`, base + at + 8)
    // A copy (1.1, §12) outside the file is a damaged copy, not a damaged image: the reader decides.
    // So is recovery data (1.2, §13) outside the file: nothing reads without it.
    const copy = s.type >= SectionType.IndexTablesCopy && s.type <= SectionType.Recovery
    if (!copy && s.offset + s.length > fileSize)
      throw new LayoutError(
        `section type ${s.type} (${s.length} bytes at byte ${s.offset}) lies outside the file (${fileSize} bytes): truncated?`,
        base + at + 8,
      )
    out.push(s)
  }
  return out
}

/** An L1 entry locates one L2 table, or says every chunk of its group has one kind (zero or unread). */
export interface L1Entry {
  offset: number // 0: no table
  length: number
  crc: number
  fillKind: ChunkKind
}

export function encodeL1(entries: L1Entry[]): Buffer {
  const b = Buffer.alloc(entries.length * L1_ENTRY_SIZE)
  entries.forEach((e, i) => {
    const at = i * L1_ENTRY_SIZE
    b.writeBigUInt64LE(BigInt(e.offset), at)
    b.writeUInt32LE(e.length, at + 8)
    b.writeUInt32LE(e.crc, at + 12)
    b.writeUInt8(e.fillKind, at + 16)
  })
  return b
}

export function decodeL1Entry(b: Buffer, i: number, base: number): L1Entry {
  const at = i * L1_ENTRY_SIZE
  return {
    offset: u64(b, at, 'index table offset', base),
    length: b.readUInt32LE(at + 8),
    crc: b.readUInt32LE(at + 12),
    fillKind: b.readUInt8(at + 16),
  }
}

export interface ChunkEntry {
  offset: number
  storedLength: number
  /** CRC-32C of the chunk's uncompressed bytes (0 for zero and unread chunks). */
  crc: number
  kind: ChunkKind
  /** CRC-32C of the stored bytes (0 when nothing is stored), so any damaged stored byte is caught. */
  storedCrc: number
}

export function writeL2Entry(b: Buffer, i: number, e: ChunkEntry): void {
  const at = i * L2_ENTRY_SIZE
  b.writeBigUInt64LE(BigInt(e.offset), at)
  b.writeUInt32LE(e.storedLength, at + 8)
  b.writeUInt32LE(e.crc, at + 12)
  b.writeUInt8(e.kind, at + 16)
  b.fill(0, at + 17, at + 20)
  b.writeUInt32LE(e.storedCrc, at + 20)
}

export function readL2Entry(b: Buffer, i: number, base: number): ChunkEntry {
  const at = i * L2_ENTRY_SIZE
  return {
    offset: u64(b, at, 'chunk offset', base),
    storedLength: b.readUInt32LE(at + 8),
    crc: b.readUInt32LE(at + 12),
    kind: b.readUInt8(at + 16),
    storedCrc: b.readUInt32LE(at + 20),
  }
}

/**
 * Where every field of a valid image is, so that mutations can aim at fields rather than bytes, and the
 * lenient checksum fix-up that lets a mutated image get past the checksums to the code behind them.
 * Field positions follow docs/FORMAT.md (and the constants of src/format/layout.ts).
 */
import {crc32c} from '../../src/format/crc'
import {
  BAD_ENTRY_SIZE,
  ChunkKind,
  HEADER_SIZE,
  L1_ENTRY_SIZE,
  L2_ENTRY_SIZE,
  SECTION_ENTRY_SIZE,
  SectionType,
  decodeHeader,
  decodeL1Entry,
  decodeSections,
  readL2Entry,
  type Header,
  type Section,
} from '../../src/format/layout'
import * as zstd from 'zstd-napi/binding'

/** The structures, and (1.1, FORMAT.md §12) their copies. */
export type Struct = 'header' | 'section' | 'l1' | 'l2' | 'bad' | 'trailer' | 'section-copy' | 'l1-copy' | 'l2-copy' | 'bad-copy'
export const COPY_STRUCTS: ReadonlySet<Struct> = new Set(['trailer', 'section-copy', 'l1-copy', 'l2-copy', 'bad-copy'])
export type Width = 1 | 2 | 4 | 8

export interface Field {
  struct: Struct
  name: string
  /** Absolute position in the file. */
  at: number
  width: Width
}

/** FORMAT.md §2–§6: [name, offset in the structure, width]. */
export const HEADER_FIELDS: Array<[string, number, Width]> = [
  ['magic', 0, 1],
  ['magic+7', 7, 1],
  ['major', 8, 2],
  ['minor', 10, 2],
  ['header_size', 12, 4],
  ['flags', 16, 4],
  ['sector_size', 20, 4],
  ['chunk_size', 24, 4],
  ['l2_entries', 28, 4],
  ['size', 32, 8],
  ['chunk_count', 40, 8],
  ['section_table_offset', 48, 8],
  ['section_count', 56, 4],
  ['section_table_crc', 60, 4],
  ['media_sha256', 64, 4],
  ['copy_table_offset', 96, 8],
  ['trailer_offset', 104, 8],
  ['reserved', 112, 4],
  ['reserved+136', 248, 4],
  ['header_crc', 252, 4],
]
export const SECTION_FIELDS: Array<[string, number, Width]> = [
  ['type', 0, 4],
  ['flags', 4, 4],
  ['offset', 8, 8],
  ['length', 16, 8],
  ['crc', 24, 4],
  ['reserved', 28, 4],
]
export const L1_FIELDS: Array<[string, number, Width]> = [
  ['offset', 0, 8],
  ['length', 8, 4],
  ['crc', 12, 4],
  ['fill_kind', 16, 1],
  ['reserved', 17, 1],
]
export const L2_FIELDS: Array<[string, number, Width]> = [
  ['offset', 0, 8],
  ['stored_length', 8, 4],
  ['data_crc', 12, 4],
  ['kind', 16, 1],
  ['reserved', 17, 1],
  ['stored_crc', 20, 4],
]
export const BAD_FIELDS: Array<[string, number, Width]> = [
  ['offset', 0, 8],
  ['length', 8, 8],
  ['status', 16, 1],
  ['reserved', 17, 1],
]

export interface StoredChunk {
  chunk: number
  /** Position of its second-level entry. */
  entryAt: number
  offset: number
  length: number
  kind: ChunkKind
}

export interface Layout {
  fileSize: number
  header: Header
  /** Section table entries with their positions. */
  sections: Array<Section & {at: number}>
  /** The chunk index section: first-level entries with their positions. */
  l1Entries: Array<{at: number; offset: number; length: number}>
  /** Second-level tables, with the position of the first-level entry that points at each. */
  l2Tables: Array<{group: number; offset: number; length: number; l1At: number}>
  /** Every second-level entry's position. */
  l2Entries: number[]
  badEntries: number[]
  chunks: StoredChunk[]
  fields: Field[]
  /** Where each structure starts and ends: values for "point at something else". */
  landmarks: number[]
}

/** Map a valid image (the library's decoders do the parsing: the base images are valid). */
export function parseLayout(b: Buffer): Layout {
  const header = decodeHeader(b.subarray(0, HEADER_SIZE), b.length)
  const tableAt = header.sectionTableOffset
  const sections = decodeSections(b.subarray(tableAt, tableAt + header.sectionCount * SECTION_ENTRY_SIZE), tableAt, b.length).map((s, i) => ({
    ...s,
    at: tableAt + i * SECTION_ENTRY_SIZE,
  }))
  const fields: Field[] = []
  const add = (struct: Struct, base: number, defs: Array<[string, number, Width]>) => {
    for (const [name, off, width] of defs) fields.push({struct, name, at: base + off, width})
  }
  add('header', 0, HEADER_FIELDS)
  const landmarks = [0, HEADER_SIZE, tableAt, tableAt + header.sectionCount * SECTION_ENTRY_SIZE, b.length]
  for (const s of sections) {
    add('section', s.at, SECTION_FIELDS)
    landmarks.push(s.offset, s.offset + s.length)
  }
  const l1Entries: Layout['l1Entries'] = []
  const l2Tables: Layout['l2Tables'] = []
  const l2Entries: number[] = []
  const badEntries: number[] = []
  const chunks: StoredChunk[] = []
  const index = sections.find((s) => s.type === SectionType.ChunkIndex)
  if (index) {
    const l1 = b.subarray(index.offset, index.offset + index.length)
    for (let g = 0; g < index.length / L1_ENTRY_SIZE; g++) {
      const at = index.offset + g * L1_ENTRY_SIZE
      const e = decodeL1Entry(l1, g, index.offset)
      l1Entries.push({at, offset: e.offset, length: e.length})
      add('l1', at, L1_FIELDS)
      if (e.offset === 0) continue
      l2Tables.push({group: g, offset: e.offset, length: e.length, l1At: at})
      landmarks.push(e.offset, e.offset + e.length)
      const table = b.subarray(e.offset, e.offset + e.length)
      for (let k = 0; k < e.length / L2_ENTRY_SIZE; k++) {
        const eat = e.offset + k * L2_ENTRY_SIZE
        l2Entries.push(eat)
        add('l2', eat, L2_FIELDS)
        const c = readL2Entry(table, k, e.offset)
        if (c.storedLength > 0) {
          chunks.push({chunk: g * header.l2Entries + k, entryAt: eat, offset: c.offset, length: c.storedLength, kind: c.kind})
          landmarks.push(c.offset)
        }
      }
    }
  }
  const bad = sections.find((s) => s.type === SectionType.BadAreaMap)
  if (bad)
    for (let at = bad.offset; at + BAD_ENTRY_SIZE <= bad.offset + bad.length; at += BAD_ENTRY_SIZE) {
      badEntries.push(at)
      add('bad', at, BAD_FIELDS)
    }
  // 1.1: the copies — the trailer, the section table copy, and copy sections 4 (tables), 5 (index), 6 (bad areas).
  if (header.trailerOffset && header.trailerOffset + HEADER_SIZE <= b.length) {
    add('trailer', header.trailerOffset, HEADER_FIELDS)
    landmarks.push(header.trailerOffset)
  }
  if (header.copyTableOffset && header.copyTableOffset + header.sectionCount * SECTION_ENTRY_SIZE <= b.length) {
    for (let i = 0; i < header.sectionCount; i++) add('section-copy', header.copyTableOffset + i * SECTION_ENTRY_SIZE, SECTION_FIELDS)
    landmarks.push(header.copyTableOffset)
  }
  const inside = (s: Section | undefined) => s && s.offset + s.length <= b.length
  const l1Copy = sections.find((s) => s.type === SectionType.ChunkIndexCopy)
  if (inside(l1Copy)) for (let at = l1Copy!.offset; at + L1_ENTRY_SIZE <= l1Copy!.offset + l1Copy!.length; at += L1_ENTRY_SIZE) add('l1-copy', at, L1_FIELDS)
  const badCopy = sections.find((s) => s.type === SectionType.BadAreaMapCopy)
  if (inside(badCopy)) for (let at = badCopy!.offset; at + BAD_ENTRY_SIZE <= badCopy!.offset + badCopy!.length; at += BAD_ENTRY_SIZE) add('bad-copy', at, BAD_FIELDS)
  const tablesCopy = sections.find((s) => s.type === SectionType.IndexTablesCopy)
  if (inside(tablesCopy)) for (let at = tablesCopy!.offset; at + L2_ENTRY_SIZE <= tablesCopy!.offset + tablesCopy!.length; at += L2_ENTRY_SIZE) add('l2-copy', at, L2_FIELDS)
  return {fileSize: b.length, header, sections, l1Entries, l2Tables, l2Entries, badEntries, chunks, fields, landmarks: [...new Set(landmarks)].sort((x, y) => x - y)}
}

/** Which checksums the fix-up recomputes. */
export interface FixLevels {
  /** Chunk CRCs of the entries listed in `dirty` (stored_crc; data_crc too when the bytes decode). */
  chunks: boolean
  l2: boolean
  sections: boolean
  table: boolean
  header: boolean
  /**
   * 1.1 (FORMAT.md §12): make the copies follow their originals again (index tables into section 4,
   * sections 1–3 into 5–7, the section table and the header into their copies), so that a mutation is seen
   * the same in both copies and the reader cannot read around it — the code behind the checksums is reached.
   */
  mirror: boolean
}
export const FIX_ALL: FixLevels = {chunks: true, l2: true, sections: true, table: true, header: true, mirror: true}
export const FIX_NONE: FixLevels = {chunks: false, l2: false, sections: false, table: false, header: false, mirror: false}

function safeU64(b: Buffer, at: number): number | undefined {
  if (at + 8 > b.length) return undefined
  const v = b.readBigUInt64LE(at)
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(v)
}

function inFile(b: Buffer, off: number | undefined, len: number | undefined): boolean {
  return off !== undefined && len !== undefined && off >= 0 && len >= 0 && off + len <= b.length
}

let dctx: zstd.DCtx | undefined
const decodeScratch = Buffer.alloc(4 * 1024 * 1024 + 1)

/**
 * Recompute checksums bottom-up, following the (possibly mutated) pointers wherever they lead inside
 * the file: chunk CRCs of dirty entries, second-level table CRCs, section CRCs, the section table CRC,
 * the header CRC. Pointers that lead outside the file are left alone (the reader must report them).
 */
export function fixChecksums(b: Buffer, levels: FixLevels, dirty: ReadonlySet<number>): void {
  if (b.length < HEADER_SIZE) return
  const tableAt = safeU64(b, 48)
  const count = b.readUInt32LE(56)
  const tableOk = count <= 4096 && inFile(b, tableAt, count * SECTION_ENTRY_SIZE)
  if (tableOk) {
    const entries: Array<{at: number; type: number; offset: number; length: number}> = []
    for (let i = 0; i < count; i++) {
      const at = tableAt! + i * SECTION_ENTRY_SIZE
      const offset = safeU64(b, at + 8)
      const length = safeU64(b, at + 16)
      if (inFile(b, offset, length)) entries.push({at, type: b.readUInt32LE(at), offset: offset!, length: length!})
    }
    if (levels.chunks && dirty.size) fixChunks(b, dirty)
    if (levels.l2)
      for (const s of entries) {
        if (s.type !== SectionType.ChunkIndex) continue
        for (let at = s.offset; at + L1_ENTRY_SIZE <= s.offset + s.length; at += L1_ENTRY_SIZE) {
          const off = safeU64(b, at)
          const len = b.readUInt32LE(at + 8)
          if (off && inFile(b, off, len)) b.writeUInt32LE(crc32c(b.subarray(off, off + len)), at + 12)
        }
      }
    if (levels.mirror) mirrorSections(b, entries)
    if (levels.sections) for (const s of entries) b.writeUInt32LE(crc32c(b.subarray(s.offset, s.offset + s.length)), s.at + 24)
    if (levels.table) b.writeUInt32LE(crc32c(b.subarray(tableAt!, tableAt! + count * SECTION_ENTRY_SIZE)), 60)
    if (levels.mirror) {
      const copyAt = safeU64(b, 96)
      if (copyAt && inFile(b, copyAt, count * SECTION_ENTRY_SIZE)) b.copy(b, copyAt, tableAt!, tableAt! + count * SECTION_ENTRY_SIZE)
    }
  } else if (levels.chunks && dirty.size) fixChunks(b, dirty)
  if (levels.header) b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
  if (levels.mirror) {
    const trailer = safeU64(b, 104)
    if (trailer && inFile(b, trailer, HEADER_SIZE)) b.copy(b, trailer, 0, HEADER_SIZE)
  }
}

/** Copy sections 1–3 over 5–7 and the index tables over section 4, wherever the (mutated) pointers allow. */
function mirrorSections(b: Buffer, entries: Array<{type: number; offset: number; length: number}>): void {
  const of = (t: number) => entries.find((s) => s.type === t)
  for (const t of [SectionType.ChunkIndex, SectionType.BadAreaMap, SectionType.Metadata]) {
    const o = of(t)
    const c = of(t + 4)
    if (o && c && o.length === c.length) b.copy(b, c.offset, o.offset, o.offset + o.length)
  }
  const l1 = of(SectionType.ChunkIndex)
  const copies = of(SectionType.IndexTablesCopy)
  if (!l1 || !copies) return
  let at = copies.offset
  for (let e = l1.offset; e + L1_ENTRY_SIZE <= l1.offset + l1.length; e += L1_ENTRY_SIZE) {
    const off = safeU64(b, e)
    const len = b.readUInt32LE(e + 8)
    if (!off) continue
    if (!inFile(b, off, len) || at + len > copies.offset + copies.length) return
    b.copy(b, at, off, off + len)
    at += len
  }
}

/** stored_crc from the stored bytes; data_crc from them too (raw) or from what they decode to (zstd). */
function fixChunks(b: Buffer, dirty: ReadonlySet<number>): void {
  for (const at of dirty) {
    if (at + L2_ENTRY_SIZE > b.length) continue
    const off = safeU64(b, at)
    const len = b.readUInt32LE(at + 8)
    const kind = b[at + 16]
    if (!len || !inFile(b, off, len)) continue
    const stored = b.subarray(off!, off! + len)
    const storedCrc = crc32c(stored)
    b.writeUInt32LE(storedCrc, at + 20)
    if (kind === ChunkKind.Raw) b.writeUInt32LE(storedCrc, at + 12)
    else if (kind === ChunkKind.Zstd) {
      dctx ??= new zstd.DCtx()
      try {
        const n = dctx.decompress(decodeScratch, stored)
        b.writeUInt32LE(crc32c(decodeScratch.subarray(0, n)), at + 12)
      } catch {
        /* not a frame (any more): the reader reports it */
      }
    }
  }
}

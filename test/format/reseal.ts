/**
 * For tests that edit an image by hand and then "re-seal" it as a writer would: in a 1.1 image
 * (FORMAT.md §12) every copy must follow its original, or the edit shows up as a damaged copy.
 */
import {crc32c} from '../../src/format/crc'
import {HEADER_SIZE, L1_ENTRY_SIZE, SECTION_ENTRY_SIZE, SectionType, decodeSections, encodeSections, type Section} from '../../src/format/layout'

export function sectionsOf(b: Buffer): Section[] {
  const at = Number(b.readBigUInt64LE(48))
  return decodeSections(b.subarray(at, at + b.readUInt32LE(56) * SECTION_ENTRY_SIZE), at, b.length)
}

/** Where group g's index table copy is (its original's place when the image has no copies). */
export function tableCopyOffset(b: Buffer, g: number): number | undefined {
  const secs = sectionsOf(b)
  const l1 = secs.find((s) => s.type === SectionType.ChunkIndex)!
  const copies = secs.find((s) => s.type === SectionType.IndexTablesCopy)
  if (!copies) return undefined
  let at = copies.offset
  for (let k = 0; k < g; k++) if (b.readBigUInt64LE(l1.offset + k * L1_ENTRY_SIZE) !== 0n) at += b.readUInt32LE(l1.offset + k * L1_ENTRY_SIZE + 8)
  return at
}

/** The copy of the section of type `type` (1–3), if the image has one. */
export function sectionCopy(b: Buffer, type: SectionType): Section | undefined {
  return sectionsOf(b).find((s) => s.type === type + 4)
}

/**
 * Recompute every checksum above the bytes, as a writer would: copies (index tables, sections 1–3) are
 * rewritten from their originals first, then every section's CRC, the section table and its copy, the
 * header and its copy.
 */
export function reseal(b: Buffer): Buffer {
  const secs = sectionsOf(b)
  const l1 = secs.find((s) => s.type === SectionType.ChunkIndex)
  const copies = secs.find((s) => s.type === SectionType.IndexTablesCopy)
  if (l1 && copies) {
    let at = copies.offset
    for (let k = 0; k < l1.length / L1_ENTRY_SIZE; k++) {
      const off = Number(b.readBigUInt64LE(l1.offset + k * L1_ENTRY_SIZE))
      const len = b.readUInt32LE(l1.offset + k * L1_ENTRY_SIZE + 8)
      if (!off) continue
      // A table pointer made absurd on purpose: its copy stays as it was (the reader refuses the pointer).
      if (off + len <= b.length && at + len <= copies.offset + copies.length) b.copy(b, at, off, off + len)
      at += len
    }
  }
  for (const s of secs) {
    const original = s.type >= 5 && s.type <= 7 ? secs.find((o) => o.type === s.type - 4) : undefined
    if (original && original.length === s.length) b.copy(b, s.offset, original.offset, original.offset + original.length)
  }
  for (const s of secs) s.crc = crc32c(b.subarray(s.offset, s.offset + s.length))
  const table = encodeSections(secs)
  table.copy(b, Number(b.readBigUInt64LE(48)))
  b.writeUInt32LE(crc32c(table), 60)
  b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
  const minor = b.readUInt16LE(10)
  const copyTable = minor >= 1 ? Number(b.readBigUInt64LE(96)) : 0
  const trailer = minor >= 1 ? Number(b.readBigUInt64LE(104)) : 0
  if (copyTable && copyTable + table.length <= b.length) table.copy(b, copyTable)
  if (trailer && trailer + HEADER_SIZE <= b.length) b.copy(b, trailer, 0, HEADER_SIZE)
  return b
}

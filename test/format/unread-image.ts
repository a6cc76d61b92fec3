/**
 * A valid VDIMG image of `size` bytes whose every chunk is unread (one non-tried area, no chunk stored), as a
 * rescue that read nothing leaves: a few KiB on disk for any size, e.g. 16 TiB, for tests of huge images.
 */
import * as fs from 'node:fs'
import {BadAreaMap} from '../../src/format/badmap'
import {crc32c} from '../../src/format/crc'
import {ChunkKind, HEADER_SIZE, SECTION_FLAG_CRITICAL, SectionType, encodeHeader, encodeL1, encodeSections, type Section} from '../../src/format/layout'

export function writeUnreadImage(file: string, size: number, chunkSize = 4 << 20, l2Entries = 65536): string {
  const chunkCount = size / chunkSize
  const l1 = encodeL1(Array.from({length: Math.ceil(chunkCount / l2Entries)}, () => ({offset: 0, length: 0, crc: 0, fillKind: ChunkKind.Unread})))
  const bad = BadAreaMap.fromRanges([{offset: 0, length: size, status: 'non-tried'}]).encode()
  const secs: Section[] = [
    {type: SectionType.ChunkIndex, flags: SECTION_FLAG_CRITICAL, offset: HEADER_SIZE, length: l1.length, crc: crc32c(l1)},
    {type: SectionType.BadAreaMap, flags: SECTION_FLAG_CRITICAL, offset: HEADER_SIZE + l1.length, length: bad.length, crc: crc32c(bad)},
  ]
  const table = encodeSections(secs)
  const header = encodeHeader({
    major: 1,
    minor: 0,
    headerSize: HEADER_SIZE,
    flags: 0,
    sectorSize: 512,
    chunkSize,
    l2Entries,
    size,
    chunkCount,
    sectionTableOffset: HEADER_SIZE + l1.length + bad.length,
    sectionCount: secs.length,
    sectionTableCrc: crc32c(table),
    sha256: Buffer.alloc(32),
  })
  fs.writeFileSync(file, Buffer.concat([header, l1, bad, table]))
  return file
}

import {strict as assert} from 'node:assert'
import {crc32c} from '../../src/format/crc'
import {
  BAD_ENTRY_SIZE,
  ChunkKind,
  HEADER_SIZE,
  L1_ENTRY_SIZE,
  L2_ENTRY_SIZE,
  MAGIC,
  SECTION_ENTRY_SIZE,
  decodeHeader,
  decodeL1Entry,
  decodeSections,
  encodeHeader,
  encodeL1,
  encodeSections,
  readL2Entry,
  writeL2Entry,
} from '../../src/format/layout'
import {BadAreaMap} from '../../src/format/badmap'

describe('VDIMG layout (docs/FORMAT.md)', () => {
  it('CRC-32C matches the standard check value and RFC 3720 vectors', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283)
    assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa) // RFC 3720 B.4: 32 bytes of zeros
    assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43) // 32 bytes of 0xFF
  })

  it('header: field offsets and sizes as the table in §2 says', () => {
    const sha = Buffer.alloc(32, 0xab)
    const h = encodeHeader({
      major: 1, minor: 0, headerSize: 0, flags: 1, sectorSize: 4096, chunkSize: 65536, l2Entries: 4096,
      size: 0x123456789, chunkCount: Math.ceil(0x123456789 / 65536), sectionTableOffset: 0x1000, sectionCount: 3,
      sectionTableCrc: 0xdeadbeef, sha256: sha,
    })
    assert.equal(h.length, HEADER_SIZE)
    assert.deepEqual(h.subarray(0, 8), MAGIC)
    assert.deepEqual([...MAGIC], [0x89, 0x56, 0x44, 0x49, 0x4d, 0x47, 0x0d, 0x0a])
    assert.equal(h.readUInt16LE(8), 1)
    assert.equal(h.readUInt16LE(10), 0)
    assert.equal(h.readUInt32LE(12), 256)
    assert.equal(h.readUInt32LE(16), 1)
    assert.equal(h.readUInt32LE(20), 4096)
    assert.equal(h.readUInt32LE(24), 65536)
    assert.equal(h.readUInt32LE(28), 4096)
    assert.equal(h.readBigUInt64LE(32), 0x123456789n)
    assert.equal(h.readBigUInt64LE(48), 0x1000n)
    assert.equal(h.readUInt32LE(56), 3)
    assert.equal(h.readUInt32LE(60), 0xdeadbeef)
    assert.deepEqual(h.subarray(64, 96), sha)
    assert.ok(h.subarray(96, 252).every((b) => b === 0))
    assert.equal(h.readUInt32LE(252), crc32c(h.subarray(0, 252)))
    const d = decodeHeader(h, 1 << 20)
    assert.equal(d.size, 0x123456789)
    assert.equal(d.chunkSize, 65536)
    assert.equal(d.sectorSize, 4096)
  })

  it('section, L1, L2 and bad-area entries are 32, 24, 24 and 24 bytes with the documented offsets', () => {
    assert.equal(SECTION_ENTRY_SIZE, 32)
    assert.equal(L1_ENTRY_SIZE, 24)
    assert.equal(L2_ENTRY_SIZE, 24)
    assert.equal(BAD_ENTRY_SIZE, 24)
    const s = encodeSections([{type: 2, flags: 1, offset: 300, length: 48, crc: 0x11223344}])
    assert.equal(s.length, 32)
    assert.equal(s.readUInt32LE(0), 2)
    assert.equal(s.readUInt32LE(4), 1)
    assert.equal(s.readBigUInt64LE(8), 300n)
    assert.equal(s.readBigUInt64LE(16), 48n)
    assert.equal(s.readUInt32LE(24), 0x11223344)
    assert.deepEqual(decodeSections(s, 0, 1000)[0], {type: 2, flags: 1, offset: 300, length: 48, crc: 0x11223344})
    const l1 = encodeL1([{offset: 0x1_0000_0000, length: 96, crc: 7, fillKind: 0}, {offset: 0, length: 0, crc: 0, fillKind: ChunkKind.Unread}])
    assert.equal(l1.length, 48)
    assert.equal(l1.readBigUInt64LE(0), 0x1_0000_0000n)
    assert.equal(l1.readUInt32LE(8), 96)
    assert.equal(l1.readUInt32LE(12), 7)
    assert.equal(l1.readUInt8(24 + 16), 3)
    assert.deepEqual(decodeL1Entry(l1, 1, 0), {offset: 0, length: 0, crc: 0, fillKind: 3})
    const l2 = Buffer.alloc(48, 0xee)
    writeL2Entry(l2, 1, {offset: 4096, storedLength: 1000, crc: 0xaabbccdd, kind: ChunkKind.Zstd, storedCrc: 0x01020304})
    assert.equal(l2.readBigUInt64LE(24), 4096n)
    assert.equal(l2.readUInt32LE(32), 1000)
    assert.equal(l2.readUInt32LE(36), 0xaabbccdd)
    assert.equal(l2.readUInt8(40), 2)
    assert.deepEqual([...l2.subarray(41, 44)], [0, 0, 0])
    assert.equal(l2.readUInt32LE(44), 0x01020304)
    assert.deepEqual(readL2Entry(l2, 1, 0), {offset: 4096, storedLength: 1000, crc: 0xaabbccdd, kind: 2, storedCrc: 0x01020304})
    const bad = BadAreaMap.fromRanges([{offset: 1024, length: 512, status: 'bad-sector'}]).encode()
    assert.equal(bad.length, 24)
    assert.equal(bad.readBigUInt64LE(0), 1024n)
    assert.equal(bad.readBigUInt64LE(8), 512n)
    assert.equal(bad.readUInt8(16), 4)
  })

  it('header decoding tells a wrong file, a newer major version and damage apart', () => {
    const good = encodeHeader({
      major: 1, minor: 0, headerSize: 0, flags: 0, sectorSize: 512, chunkSize: 131072, l2Entries: 4096,
      size: 1000, chunkCount: 1, sectionTableOffset: 256, sectionCount: 0, sectionTableCrc: 0, sha256: Buffer.alloc(32),
    })
    assert.throws(() => decodeHeader(Buffer.from('hello world, not an image'), 1000), /bad magic/)
    const newer = Buffer.from(good)
    newer.writeUInt16LE(2, 8)
    assert.throws(() => decodeHeader(newer, 1000), /version 2\.0 is not supported/)
    const minor = Buffer.from(good)
    minor.writeUInt16LE(7, 10)
    minor.writeUInt32LE(crc32c(minor.subarray(0, 252)), 252)
    assert.equal(decodeHeader(minor, 1000).minor, 7) // a newer minor version is readable
    const flipped = Buffer.from(good)
    flipped[100] ^= 1
    assert.throws(() => decodeHeader(flipped, 1000), /header checksum mismatch/)
  })

  it('header fields claiming absurd sizes are rejected before anything is allocated', () => {
    const mk = (patch: (b: Buffer) => void) => {
      const b = encodeHeader({
        major: 1, minor: 0, headerSize: 0, flags: 0, sectorSize: 512, chunkSize: 131072, l2Entries: 4096,
        size: 1000, chunkCount: 1, sectionTableOffset: 256, sectionCount: 0, sectionTableCrc: 0, sha256: Buffer.alloc(32),
      })
      patch(b)
      b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
      return b
    }
    assert.throws(() => decodeHeader(mk((b) => b.writeBigUInt64LE(0xffffffffffffffffn, 32)), 1000), /image size .* out of range/)
    assert.throws(() => decodeHeader(mk((b) => b.writeUInt32LE(3000, 24)), 1000), /chunk size 3000/)
    assert.throws(() => decodeHeader(mk((b) => b.writeUInt32LE(1 << 30, 24)), 1000), /chunk size/)
    assert.throws(() => decodeHeader(mk((b) => b.writeUInt32LE(1000, 20)), 1000), /sector size 1000/)
    assert.throws(() => decodeHeader(mk((b) => b.writeUInt32LE(0x7fffffff, 56)), 1000), /section count/)
    assert.throws(() => decodeHeader(mk((b) => b.writeBigUInt64LE(1n << 40n, 48)), 1000), /outside the file/)
    assert.throws(() => decodeHeader(mk((b) => b.writeBigUInt64LE(99n, 40)), 1000), /chunk count 99/)
    assert.throws(() => decodeHeader(mk((b) => b.writeUInt32LE(2, 16)), 1000), /unknown header flags/)
  })
})

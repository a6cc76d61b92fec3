import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {openImage} from '../../src/format/reader'
import {BlockServer, BlockError} from '../../src/core/blockserver'
import {crc32c} from '../../src/format/crc'
import {verifyImage} from '../../src/format/verify'
import {decodeHeader, decodeSections, encodeSections, L2_ENTRY_SIZE} from '../../src/format/layout'
import {parseMapfile} from '../../src/format/mapfile'
import {prng, textish, tmpDir} from '../helpers'

describe('reader: cache and concurrency', function () {
  this.timeout(120_000)
  let t: ReturnType<typeof tmpDir>
  let img: string
  let data: Buffer
  before(async () => {
    t = tmpDir()
    data = textish(3, 64 * 65536)
    fs.writeFileSync(path.join(t.dir, 'a.raw'), data)
    img = path.join(t.dir, 'a.vdimg')
    const input = openInput(path.join(t.dir, 'a.raw'))
    await createImage(input, img, {chunkSize: 65536})
    await input.close()
  })
  after(() => t.cleanup())

  for (const threads of [0, 2]) {
    it(`many concurrent reads of one chunk cause one decompression (decompressThreads ${threads})`, async () => {
      const im = await openImage(img, {decompressThreads: threads})
      try {
        const reads = Array.from({length: 50}, (_, i) => im.read(5 * 65536 + i * 512, 512))
        const got = await Promise.all(reads)
        got.forEach((r, i) => assert.ok(r.data.equals(data.subarray(5 * 65536 + i * 512, 5 * 65536 + i * 512 + 512))))
        const s = im.cacheStats()
        assert.equal(s.misses, 1)
        assert.equal(s.hits, 49)
      } finally {
        await im.close()
      }
    })
  }

  it('the decompressed-chunk cache stays within its byte limit and evicts least recently used', async () => {
    const im = await openImage(img, {cacheBytes: 4 * 65536})
    try {
      for (let i = 0; i < 64; i++) await im.read(i * 65536, 100)
      assert.ok(im.cacheStats().bytes <= 4 * 65536)
      const before = im.cacheStats().misses
      await im.read(63 * 65536, 100) // most recent: a hit
      assert.equal(im.cacheStats().misses, before)
      await im.read(0, 100) // long evicted: a miss
      assert.equal(im.cacheStats().misses, before + 1)
    } finally {
      await im.close()
    }
  })

  it('reads outside the image are refused', async () => {
    const im = await openImage(img)
    try {
      await assert.rejects(im.read(data.length - 10, 11), /outside the image/)
      await assert.rejects(im.read(-1, 1), /outside the image/)
      assert.equal((await im.read(data.length, 0)).data.length, 0)
    } finally {
      await im.close()
    }
  })

  it('sync mode: readSync into a caller buffer matches, with decode buffers reused under a tiny cache', async () => {
    const im = await openImage(img, {sync: true, cacheBytes: 2 * 65536})
    try {
      assert.equal(im.synchronous, true)
      const dst = Buffer.alloc(300_000)
      const r = prng(5, 4 * 400)
      for (let k = 0; k < 400; k++) {
        const off = r.readUInt32LE(k * 4) % data.length
        const len = Math.min(data.length - off, 1 + (r.readUInt16LE(k * 2) * 5) % 300_000)
        const got = im.readSync(off, len, dst)
        assert.equal(got.data.buffer, dst.buffer, 'read into the caller buffer')
        assert.ok(got.data.equals(data.subarray(off, off + len)), `readSync(${off}, ${len})`)
      }
      assert.ok(im.cacheStats().bytes <= 2 * 65536)
      assert.ok((await im.read(1000, 5000)).data.equals(data.subarray(1000, 6000)))
    } finally {
      await im.close()
    }
  })

  it('BlockServer.readSync applies the bad-area policy like read()', async () => {
    const raw = path.join(t.dir, 'b.raw')
    fs.writeFileSync(raw, data.subarray(0, 1 << 20))
    const bimg = path.join(t.dir, 'b.vdimg')
    const input = openInput(raw)
    await createImage(input, bimg, {mapfile: parseMapfile('0 +\n0 0x1000 +\n0x1000 0x200 -\n0x1200 0xFEE00 +\n', 'b.map')})
    await input.close()
    const im = await openImage(bimg, {sync: true})
    try {
      const strict = new BlockServer(im)
      assert.ok(strict.readSync(0, 4096).equals(data.subarray(0, 4096)))
      assert.throws(() => strict.readSync(4096, 512), (e: BlockError) => e.errno === 'EIO' && e.bad[0].offset === 4096)
      assert.ok(strict.readSync(4608, 512).equals(data.subarray(4608, 5120)))
      assert.throws(() => strict.readSync(1 << 20, 1), (e: BlockError) => e.errno === 'EINVAL')
      const lenient = new BlockServer(im, {badPolicy: 'zero'})
      assert.ok(lenient.readSync(4096, 512).every((b) => b === 0))
      assert.equal(strict.stats.errors, 1)
    } finally {
      await im.close()
    }
  })

  it('a wrong data CRC over intact stored bytes: served by default, refused with checkDataCrc, failed by verify', async () => {
    // Re-seal every checksum above chunk 3's entry after changing its data CRC.
    const b = fs.readFileSync(img)
    const h = decodeHeader(b, b.length)
    const secs = decodeSections(b.subarray(h.sectionTableOffset, h.sectionTableOffset + h.sectionCount * 32), h.sectionTableOffset, b.length)
    const idx = secs.findIndex((x) => x.type === 1)
    const l1At = secs[idx].offset
    const l2At = Number(b.readBigUInt64LE(l1At))
    const l2Len = b.readUInt32LE(l1At + 8)
    b.writeUInt32LE(b.readUInt32LE(l2At + 3 * L2_ENTRY_SIZE + 12) ^ 1, l2At + 3 * L2_ENTRY_SIZE + 12)
    b.writeUInt32LE(crc32c(b.subarray(l2At, l2At + l2Len)), l1At + 12)
    secs[idx].crc = crc32c(b.subarray(l1At, l1At + secs[idx].length))
    const table = encodeSections(secs)
    table.copy(b, h.sectionTableOffset)
    b.writeUInt32LE(crc32c(table), 60)
    b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
    const bad = path.join(t.dir, 'datacrc.vdimg')
    fs.writeFileSync(bad, b)
    const served = await openImage(bad)
    try {
      assert.ok((await served.read(3 * 65536, 65536)).data.equals(data.subarray(3 * 65536, 4 * 65536)))
      const v = await verifyImage(served, {threads: 1})
      assert.equal(v.ok, false)
      assert.match(v.problems[0].message, /chunk 3 \(image bytes 196608-262143\): data checksum mismatch/)
    } finally {
      await served.close()
    }
    const strict = await openImage(bad, {checkDataCrc: true})
    try {
      await assert.rejects(strict.read(3 * 65536, 10), /chunk 3 .*data checksum mismatch/)
    } finally {
      await strict.close()
    }
  })
})

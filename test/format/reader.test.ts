import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {openImage} from '../../src/format/reader'
import {textish, tmpDir} from '../helpers'

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
})

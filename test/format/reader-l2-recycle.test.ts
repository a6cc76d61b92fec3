/**
 * Sync mode recycles the second-level index table a load evicts for the next load. An image with more
 * index groups than the reader caches (64), read at random and in order: every byte must still be the
 * source's — a recycled table that was still in use, or one too short, would send reads to wrong chunks.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {openInput} from '../../src/format/input'
import {openImage} from '../../src/format/reader'
import {createImage} from '../../src/format/writer'
import {prng, textish, tmpDir} from '../helpers'

describe('reader sync mode: index tables recycled across more groups than the cache holds', function () {
  this.timeout(120_000)
  const CHUNK = 4096
  const L2 = 256 // chunks per index group: one group per MiB
  const GROUPS = 150 // more than the 64 cached tables; the last group is partial
  const SIZE = GROUPS * L2 * CHUNK - 7 * CHUNK
  let t: ReturnType<typeof tmpDir>
  let img: string
  let data: Buffer

  before(async () => {
    t = tmpDir()
    data = Buffer.alloc(SIZE)
    // Text (zstd chunks) and random bytes (raw chunks) in alternate groups, a zero group now and then.
    for (let g = 0; g * L2 * CHUNK < SIZE; g++) {
      if (g % 7 === 3) continue
      const at = g * L2 * CHUNK
      const len = Math.min(L2 * CHUNK, SIZE - at)
      ;(g % 2 ? prng(g, len) : textish(g, len)).copy(data, at)
    }
    fs.writeFileSync(path.join(t.dir, 'a.raw'), data)
    img = path.join(t.dir, 'a.vdimg')
    const input = openInput(path.join(t.dir, 'a.raw'))
    try {
      await createImage(input, img, {chunkSize: CHUNK, l2Entries: L2})
    } finally {
      await input.close()
    }
  })
  after(() => t?.cleanup())

  it('random reads across every group, then the whole image in order, read the source bytes', async () => {
    const im = await openImage(img, {sync: true, cacheBytes: 64 * CHUNK})
    try {
      assert.equal(im.l2Entries, L2)
      const dst = Buffer.alloc(3 * CHUNK)
      let seed = 7
      for (let i = 0; i < 20_000; i++) {
        seed = (seed * 1103515245 + 12345) >>> 0
        const off = (seed % Math.floor((SIZE - dst.length) / 512)) * 512
        im.readSync(off, dst.length, dst)
        if (!dst.equals(data.subarray(off, off + dst.length))) assert.fail(`bytes at ${off} (read ${i})`)
      }
      const big = Buffer.alloc(1 << 20)
      for (let off = 0; off < SIZE; off += big.length) {
        const len = Math.min(big.length, SIZE - off)
        im.readSync(off, len, big)
        if (!big.subarray(0, len).equals(data.subarray(off, off + len))) assert.fail(`bytes of ${off}+${len}`)
      }
      // The last (partial) group's table is shorter: reading it and then full groups again stays exact.
      for (const off of [SIZE - CHUNK, 3 * L2 * CHUNK, SIZE - 2 * CHUNK, 100 * L2 * CHUNK + 512]) {
        im.readSync(off, CHUNK, dst)
        assert.ok(dst.subarray(0, CHUNK).equals(data.subarray(off, off + CHUNK)), `bytes at ${off}`)
      }
    } finally {
      await im.close()
    }
  })
})

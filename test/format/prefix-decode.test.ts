import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {ChunkDecoder, ChunkDecodeError, ChunkEncoder, zstdMultiBlock} from '../../src/format/codec'
import {crc32c} from '../../src/format/crc'
import {ChunkKind} from '../../src/format/layout'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {openImage} from '../../src/format/reader'
import {prng, textish, tmpDir} from '../helpers'

const CHUNK = 128 * 1024

/** A chunk that compresses well but not absurdly: text with a random run in the middle. */
function chunkData(seed: number): Buffer {
  const b = textish(seed, CHUNK)
  prng(seed + 100, 8192).copy(b, 60_000)
  return b
}

/** `name`.vdimg in `dir` holding `data`, with 128 KiB chunks. */
async function imageOf(dir: string, name: string, data: Buffer): Promise<string> {
  const raw = path.join(dir, `${name}.raw`)
  const img = path.join(dir, `${name}.vdimg`)
  fs.writeFileSync(raw, data)
  const input = openInput(raw)
  try {
    await createImage(input, img, {chunkSize: CHUNK})
  } finally {
    await input.close()
  }
  return img
}

function encode(data: Buffer, targetBlock?: number): {stored: Buffer; crc: number; storedCrc: number; kind: ChunkKind} {
  const enc = new ChunkEncoder(3, targetBlock)
  const dst = Buffer.alloc(data.length)
  const e = enc.encodeInto(data, dst)
  return {stored: dst.subarray(0, e.length), crc: e.crc, storedCrc: e.storedCrc, kind: e.kind}
}

describe('prefix decoding of zstd chunks', () => {
  const data = chunkData(1)

  it('the writer splits a chunk into blocks; zstd (whole 128 KiB blocks) does not', () => {
    const split = encode(data)
    const whole = encode(data, 0)
    assert.equal(split.kind, ChunkKind.Zstd)
    assert.equal(whole.kind, ChunkKind.Zstd)
    assert.equal(zstdMultiBlock(split.stored), true)
    assert.equal(zstdMultiBlock(whole.stored), false)
    // Splitting costs little: under 2% on this chunk.
    assert.ok(split.stored.length < whole.stored.length * 1.02, `${split.stored.length} vs ${whole.stored.length}`)
    // Both are ordinary frames that decode to the same bytes.
    const d = new ChunkDecoder()
    assert.ok(d.decode(split.kind, split.stored, CHUNK, split.crc, split.storedCrc).equals(data))
    assert.ok(d.decode(whole.kind, whole.stored, CHUNK, whole.crc, whole.storedCrc).equals(data))
  })

  it('zstdMultiBlock reads the frame header, and says no to anything else', () => {
    assert.equal(zstdMultiBlock(Buffer.alloc(0)), false)
    assert.equal(zstdMultiBlock(Buffer.from('not a zstd frame at all')), false)
    const split = encode(data).stored
    assert.equal(zstdMultiBlock(split.subarray(0, 6)), false, 'truncated before the first block header')
  })

  it('decodes only the blocks a small read needs, with the right bytes', () => {
    const {stored, storedCrc, kind} = encode(data)
    const d = new ChunkDecoder()
    for (const need of [1, 4096, 20_000, 65_536]) {
      const dst = Buffer.alloc(CHUNK, 0xee)
      const n = d.decodePrefixInto(kind, stored, storedCrc, dst, need)
      assert.ok(n >= need && n < CHUNK, `need ${need}: got ${n}`)
      assert.ok(dst.subarray(0, n).equals(data.subarray(0, n)), `need ${need}: bytes`)
    }
    // The decoder is reusable after stopping mid-frame: a whole decode right after is still right.
    assert.ok(d.decode(kind, stored, CHUNK, encode(data).crc, storedCrc).equals(data))
  })

  it('decodes whole when the frame has one block, when the need is the whole chunk, and for raw chunks', () => {
    const d = new ChunkDecoder()
    const whole = encode(data, 0)
    const dst = Buffer.alloc(CHUNK)
    assert.equal(d.decodePrefixInto(whole.kind, whole.stored, whole.storedCrc, dst, 4096), CHUNK)
    assert.ok(dst.equals(data))
    const split = encode(data)
    assert.equal(d.decodePrefixInto(split.kind, split.stored, split.storedCrc, dst.fill(0), CHUNK), CHUNK)
    assert.ok(dst.equals(data))
    const noise = prng(9, CHUNK)
    const raw = encode(noise)
    assert.equal(raw.kind, ChunkKind.Raw)
    assert.equal(d.decodePrefixInto(raw.kind, raw.stored, raw.storedCrc, dst, 4096), CHUNK)
    assert.ok(dst.equals(noise))
  })

  it('checks the stored CRC first, and reports a frame cut short', () => {
    const {stored, storedCrc, kind} = encode(data)
    const d = new ChunkDecoder()
    const flipped = Buffer.from(stored)
    flipped[flipped.length >> 1] ^= 0x40
    assert.throws(() => d.decodePrefixInto(kind, flipped, storedCrc, Buffer.alloc(CHUNK), 4096), (e: Error) => e instanceof ChunkDecodeError && /stored bytes checksum/.test(e.message))
    // A frame whose blocks end early (its CRC re-sealed): the decoder cannot produce what was asked.
    const cut = encode(data).stored.subarray(0, 200)
    assert.throws(() => d.decodePrefixInto(kind, cut, crc32c(cut), Buffer.alloc(CHUNK), 100_000), ChunkDecodeError)
  })
})

describe('reader: serving reads decode prefixes of chunks', function () {
  this.timeout(120_000)
  let t: ReturnType<typeof tmpDir>
  let img: string
  let src: Buffer
  before(async () => {
    t = tmpDir()
    src = Buffer.concat(Array.from({length: 24}, (_, i) => (i % 5 === 4 ? Buffer.alloc(CHUNK) : chunkData(i))))
    src = Buffer.concat([src, textish(77, 5000)]) // a short last chunk
    img = await imageOf(t.dir, 'p', src)
  })
  after(() => t.cleanup())

  it('a small read at a chunk start decodes a prefix; a read past it decodes the chunk whole; bytes always match', async () => {
    const im = await openImage(img, {sync: true})
    try {
      const dst = Buffer.alloc(CHUNK)
      im.readSync(2 * CHUNK, 4096, dst)
      assert.ok(dst.subarray(0, 4096).equals(src.subarray(2 * CHUNK, 2 * CHUNK + 4096)))
      assert.deepEqual([im.cacheStats().misses, im.cacheStats().prefixes], [1, 1])
      im.readSync(2 * CHUNK + 4096, 512, dst) // inside the decoded blocks: a hit
      assert.deepEqual([im.cacheStats().hits, im.cacheStats().misses], [1, 1])
      im.readSync(3 * CHUNK - 4096, 4096, dst) // the chunk's end: decoded whole
      assert.ok(dst.subarray(0, 4096).equals(src.subarray(3 * CHUNK - 4096, 3 * CHUNK)))
      assert.deepEqual([im.cacheStats().misses, im.cacheStats().prefixes], [2, 1])
      im.readSync(2 * CHUNK + 100_000, 4096, dst) // now whole in the cache
      assert.equal(im.cacheStats().misses, 2)
      // Random reads of every size, and 4 KiB reads straight through, all match the source.
      const r = prng(3, 4 * 2000)
      for (let k = 0; k < 2000; k++) {
        const off = r.readUInt32LE(k * 4) % src.length
        const len = Math.min(src.length - off, 1 + (k % 4 === 0 ? r.readUInt32LE(k * 4) % (3 * CHUNK) : r.readUInt16LE(k * 2) % 8192))
        const big = Buffer.alloc(len)
        assert.ok(im.readSync(off, len, big).data.equals(src.subarray(off, off + len)), `readSync(${off}, ${len})`)
      }
      for (let off = 0; off < src.length; off += 4096) {
        const len = Math.min(4096, src.length - off)
        assert.ok(im.readSync(off, len, dst).data.equals(src.subarray(off, off + len)), `sequential ${off}`)
      }
      assert.ok(im.cacheStats().prefixes > 1)
      assert.ok((await im.read(0, src.length)).data.equals(src))
    } finally {
      await im.close()
    }
  })

  it('a tiny cache evicts prefixes and whole chunks alike and stays within its limit', async () => {
    const im = await openImage(img, {sync: true, cacheBytes: 2 * CHUNK})
    try {
      const dst = Buffer.alloc(8192)
      const r = prng(4, 4 * 3000)
      for (let k = 0; k < 3000; k++) {
        const off = r.readUInt32LE(k * 4) % (src.length - 8192)
        assert.ok(im.readSync(off, 8192, dst).data.equals(src.subarray(off, off + 8192)))
        assert.ok(im.cacheStats().bytes <= 2 * CHUNK)
      }
    } finally {
      await im.close()
    }
  })

  it('with checkDataCrc every chunk is decoded whole (the data CRC covers the whole chunk)', async () => {
    const im = await openImage(img, {sync: true, checkDataCrc: true})
    try {
      const dst = Buffer.alloc(4096)
      for (let c = 0; c < 24; c++) im.readSync(c * CHUNK, 4096, dst)
      assert.equal(im.cacheStats().prefixes, 0)
    } finally {
      await im.close()
    }
  })

  it('the async reader never hands out a prefix left in the cache', async () => {
    const im = await openImage(img, {sync: true})
    try {
      im.readSync(6 * CHUNK, 100, Buffer.alloc(100))
      assert.equal(im.cacheStats().prefixes, 1)
      const whole = await im.chunk(6)
      assert.ok(whole && whole.equals(src.subarray(6 * CHUNK, 7 * CHUNK)))
    } finally {
      await im.close()
    }
  })
})

describe('reader (asynchronous): prefixes without breaking one-load-per-chunk', function () {
  this.timeout(120_000)
  let t: ReturnType<typeof tmpDir>
  let img: string
  let src: Buffer
  before(async () => {
    t = tmpDir()
    src = Buffer.concat(Array.from({length: 12}, (_, i) => chunkData(i + 40)))
    img = await imageOf(t.dir, 'q', src)
  })
  after(() => t.cleanup())

  it('loads that go to decompression workers decode prefixes too', async () => {
    const im = await openImage(img, {decompressThreads: 2})
    try {
      // Twelve chunks at once: all but the lone first load go to the workers (or to this thread when they are busy).
      const got = await Promise.all(Array.from({length: 12}, (_, c) => im.read(c * CHUNK + 1000, 4096)))
      got.forEach((r, c) => assert.ok(r.data.equals(src.subarray(c * CHUNK + 1000, c * CHUNK + 5096)), `chunk ${c}`))
      assert.deepEqual([im.cacheStats().misses, im.cacheStats().prefixes], [12, 12])
      // Reads past those prefixes, concurrently again: each chunk decoded whole, once more.
      const tail = await Promise.all(Array.from({length: 12}, (_, c) => im.read((c + 1) * CHUNK - 4096, 4096)))
      tail.forEach((r, c) => assert.ok(r.data.equals(src.subarray((c + 1) * CHUNK - 4096, (c + 1) * CHUNK)), `chunk ${c} end`))
      assert.deepEqual([im.cacheStats().misses, im.cacheStats().prefixes], [24, 12])
    } finally {
      await im.close()
    }
  })

  for (const threads of [0, 2]) {
    it(`a lone small read decodes a prefix; reads past it get the whole chunk (decompressThreads ${threads})`, async () => {
      const im = await openImage(img, {decompressThreads: threads})
      try {
        assert.ok((await im.read(CHUNK, 4096)).data.equals(src.subarray(CHUNK, CHUNK + 4096)))
        assert.deepEqual([im.cacheStats().misses, im.cacheStats().prefixes], [1, 1])
        assert.ok((await im.read(2 * CHUNK - 512, 512)).data.equals(src.subarray(2 * CHUNK - 512, 2 * CHUNK)))
        assert.equal(im.cacheStats().misses, 2)
        assert.ok((await im.chunk(1))!.equals(src.subarray(CHUNK, 2 * CHUNK)))
        assert.equal(im.cacheStats().misses, 2, 'now whole in the cache')
      } finally {
        await im.close()
      }
    })

    it(`concurrent reads of one chunk share one load that decodes as far as the furthest needs (decompressThreads ${threads})`, async () => {
      const im = await openImage(img, {decompressThreads: threads})
      try {
        const at = [0, 100, 9000, 70_000, 3000]
        const got = await Promise.all(at.map((o) => im.read(4 * CHUNK + o, 4096)))
        got.forEach((r, k) => assert.ok(r.data.equals(src.subarray(4 * CHUNK + at[k], 4 * CHUNK + at[k] + 4096)), `read at +${at[k]}`))
        assert.deepEqual([im.cacheStats().misses, im.cacheStats().hits], [1, at.length - 1])
        // Many random reads over every chunk, concurrently, all right.
        const r = prng(8, 4 * 400)
        const reads = Array.from({length: 400}, (_, k) => {
          const off = r.readUInt32LE(k * 4) % (src.length - 20_000)
          const len = 1 + (r.readUInt16LE(k * 2) % 20_000)
          return im.read(off, len).then((x) => assert.ok(x.data.equals(src.subarray(off, off + len)), `read(${off}, ${len})`))
        })
        await Promise.all(reads)
        assert.ok((await im.read(0, src.length)).data.equals(src))
      } finally {
        await im.close()
      }
    })
  }
})

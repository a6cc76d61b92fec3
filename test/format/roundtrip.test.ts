import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {createImage} from '../../src/format/writer'
import {openInput, streamInput, type InputSource} from '../../src/format/input'
import {Readable} from 'node:stream'
import {openImage} from '../../src/format/reader'
import {parseMapfile} from '../../src/format/mapfile'
import {verifyImage} from '../../src/format/verify'
import {extractImage} from '../../src/format/extract'
import {describeImage} from '../../src/format/describe'
import {prng, sha256, textish, tmpDir} from '../helpers'

/** A source of `size` bytes where every region of 64 KiB is random, text-like or zero. */
function mixedSource(seed: number, size: number): Buffer {
  const b = Buffer.alloc(size)
  const pick = prng(seed, Math.ceil(size / 65536) + 1)
  for (let at = 0, i = 0; at < size; at += 65536, i++) {
    const n = Math.min(65536, size - at)
    const kind = pick[i] % 3
    if (kind === 0) prng(seed * 1000 + i, n).copy(b, at)
    else if (kind === 1) textish(seed * 1000 + i, n).copy(b, at)
  }
  return b
}

describe('create → read/extract/verify round trips', function () {
  this.timeout(300_000)
  let t: ReturnType<typeof tmpDir>
  before(() => (t = tmpDir()))
  after(() => t.cleanup())

  const seeds = [1, 2, 3, 4, 5, 6, 7, 8]
  const chunkSizes = [4096, 16384, 65536, 131072, 1 << 20, 4 << 20]
  const levels = [-3, 1, 3, 9]
  for (const seed of seeds) {
    const r = prng(seed, 8)
    const chunkSize = chunkSizes[r[0] % chunkSizes.length]
    const level = levels[r[1] % levels.length]
    // Sizes not a multiple of the chunk (nor, for some, of the sector).
    const size = 1 + ((r.readUInt32LE(2) % (6 << 20)) | 0)
    it(`seed ${seed}: ${size} bytes, chunk ${chunkSize}, level ${level}`, async () => {
      const data = mixedSource(seed, size)
      const raw = path.join(t.dir, `rt${seed}.raw`)
      const img = path.join(t.dir, `rt${seed}.vdimg`)
      fs.writeFileSync(raw, data)
      const input = openInput(raw)
      const res = await createImage(input, img, {chunkSize, level, threads: 1 + (seed % 3), l2Entries: 256})
      await input.close()
      assert.equal(res.size, size)
      assert.equal(res.sha256, sha256(data))
      const im = await openImage(img, {cacheBytes: 3 * chunkSize})
      try {
        assert.equal(im.size, size)
        assert.equal(im.chunkSize, chunkSize)
        assert.ok((await im.read(0, size)).data.equals(data))
        const rnd = prng(seed + 99, 4 * 64)
        for (let i = 0; i < 64; i++) {
          const off = rnd.readUInt32LE(i * 4) % size
          const len = Math.min(size - off, (rnd.readUInt16LE(i * 2) * 7) % (3 * chunkSize))
          const got = await im.read(off, len)
          assert.ok(got.data.equals(data.subarray(off, off + len)), `read(${off}, ${len})`)
          assert.deepEqual(got.bad, [])
        }
        const v = await verifyImage(im, {threads: 2})
        assert.equal(v.ok, true)
        assert.equal(v.sha256.computed, sha256(data))
        const out = path.join(t.dir, `rt${seed}.out`)
        await extractImage(im, out)
        assert.ok(fs.readFileSync(out).equals(data))
      } finally {
        await im.close()
      }
    })
  }

  it('every chunk kind: zero, raw, zstd, unread, and an all-unread index group with no table', async () => {
    const cs = 4096
    const size = 600 * cs + 100
    const data = Buffer.alloc(size)
    prng(1, cs).copy(data, 0) // chunk 0: random → raw
    textish(2, cs).copy(data, cs) // chunk 1: text → zstd
    // chunk 2: zero; chunks 3..299 text; chunks 300..599 + tail: bad (unread), with garbage in the source
    textish(3, 297 * cs).copy(data, 3 * cs)
    prng(4, size - 300 * cs).copy(data, 300 * cs)
    const raw = path.join(t.dir, 'kinds.raw')
    fs.writeFileSync(raw, data)
    const map = parseMapfile(`0 +\n0 ${300 * cs} +\n${300 * cs} ${size - 300 * cs} -\n`, 'k.map')
    const img = path.join(t.dir, 'kinds.vdimg')
    const input = openInput(raw)
    const res = await createImage(input, img, {chunkSize: cs, l2Entries: 256, mapfile: map})
    await input.close()
    assert.deepEqual(res.chunks, {zero: 1, raw: 1, zstd: 298, unread: 301})
    const expected = Buffer.from(data)
    expected.fill(0, 300 * cs) // unreadable bytes are not stored
    assert.equal(res.sha256, sha256(expected))
    const im = await openImage(img)
    try {
      const info = await describeImage(im)
      assert.deepEqual(info.chunks, {zero: 1, raw: 1, zstd: 298, unread: 301})
      const r = await im.read(299 * cs, 2 * cs)
      assert.ok(r.data.equals(expected.subarray(299 * cs, 301 * cs)))
      assert.deepEqual(r.bad, [{offset: 300 * cs, length: cs, status: 'bad-sector'}])
      // group 2 (chunks 512..599) has no table at all: only 2 tables were written
      const tables = Math.ceil(im.chunkCount / im.l2Entries)
      assert.equal(tables, 3)
      assert.equal(im.l1.readBigUInt64LE(2 * 24), 0n)
      assert.equal(im.l1.readUInt8(2 * 24 + 16), 3)
      assert.equal((await verifyImage(im)).ok, true)
      assert.deepEqual(await im.extents(0, 4 * cs), [
        {offset: 0, length: 2 * cs, kind: 'data'},
        {offset: 2 * cs, length: cs, kind: 'zero'},
        {offset: 3 * cs, length: cs, kind: 'data'},
      ])
      assert.deepEqual(await im.extents(299 * cs, 2 * cs), [
        {offset: 299 * cs, length: cs, kind: 'data'},
        {offset: 300 * cs, length: cs, kind: 'bad'},
      ])
    } finally {
      await im.close()
    }
  })

  it('a map that stops before the end of the source: the rest is non-tried and not stored', async () => {
    const data = textish(7, 1 << 20)
    const raw = path.join(t.dir, 'short-map.raw')
    fs.writeFileSync(raw, data)
    const map = parseMapfile('0 +\n0 0x40000 +\n', 's.map')
    const img = path.join(t.dir, 'short-map.vdimg')
    const input = openInput(raw)
    await createImage(input, img, {mapfile: map})
    await input.close()
    const im = await openImage(img)
    try {
      assert.deepEqual([...im.badAreas], [{offset: 0x40000, length: (1 << 20) - 0x40000, status: 'non-tried'}])
      const r = await im.read(0x3fe00, 0x400)
      assert.ok(r.data.subarray(0, 0x200).equals(data.subarray(0x3fe00, 0x40000)))
      assert.ok(r.data.subarray(0x200).every((b) => b === 0))
    } finally {
      await im.close()
    }
  })

  it('reads a stream of unknown size (stdin-like) with a mapfile', async () => {
    const data = textish(9, 3 * 131072 + 777)
    const stream = Readable.from((function* () {
      for (let at = 0; at < data.length; at += 10000) yield data.subarray(at, at + 10000)
    })())
    const map = parseMapfile(`0 +\n0 0x1000 +\n0x1000 0x200 *\n0x1200 ${data.length - 0x1200} +\n`, 'st.map')
    const img = path.join(t.dir, 'stream.vdimg')
    const res = await createImage(streamInput(stream, 'stdin'), img, {mapfile: map})
    assert.equal(res.size, data.length)
    const im = await openImage(img)
    try {
      const expected = Buffer.from(data)
      expected.fill(0, 0x1000, 0x1200)
      assert.ok((await im.read(0, data.length)).data.equals(expected))
      assert.equal(im.sha256, sha256(expected))
    } finally {
      await im.close()
    }
  })

  it('reads a real block device: a read-only loop device with 4096-byte sectors', async function () {
    const data = mixedSource(11, 8 << 20)
    const raw = path.join(t.dir, 'dev.raw')
    fs.writeFileSync(raw, data)
    const r = spawnSync('losetup', ['--find', '--show', '--read-only', '--sector-size', '4096', raw], {encoding: 'utf8'})
    if (r.status !== 0) throw new Error(`losetup failed: ${r.stderr}`)
    const dev = r.stdout.trim()
    try {
      const input = openInput(dev)
      assert.equal(input.size, data.length)
      assert.equal(input.sectorSize, 4096)
      const img = path.join(t.dir, 'dev.vdimg')
      const res = await createImage(input, img, {})
      await input.close()
      assert.equal(res.sectorSize, 4096)
      assert.equal(res.sha256, sha256(data))
      const im = await openImage(img)
      assert.equal(im.sectorSize, 4096)
      await im.close()
    } finally {
      spawnSync('losetup', ['-d', dev])
    }
  })

  it('a 16 TiB image opens in well under a second with bounded memory', async function () {
    const TiB = 2 ** 40
    const size = 16 * TiB
    // A synthetic 16 TiB source: only its first MiB was read (the rest is non-tried), as after a
    // ddrescue run interrupted early on a huge disk. No 16 TiB file is needed.
    const first = textish(16, 1 << 20)
    const input: InputSource = {
      name: 'synthetic',
      size,
      seekable: true,
      async read(buf, pos) {
        buf.fill(0)
        if (pos < first.length) first.copy(buf, 0, pos, Math.min(first.length, pos + buf.length))
        return buf.length
      },
      async close() {},
    }
    const map = parseMapfile(`0 +\n0 0x100000 +\n0x100000 ${size - 0x100000} ?\n`, 'huge.map')
    const img = path.join(t.dir, 'huge.vdimg')
    const res = await createImage(input, img, {mapfile: map, hash: false})
    assert.equal(res.size, size)
    // The first-level index is most of it: 65,536 index groups of 4096 64 KiB chunks (the default chunk size).
    assert.ok(res.fileSize < 4 << 20, `file is ${res.fileSize} bytes`)
    const rssBefore = process.memoryUsage().rss
    const t0 = process.hrtime.bigint()
    const im = await openImage(img)
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    try {
      assert.ok(ms < 500, `open took ${ms} ms`)
      assert.ok(process.memoryUsage().rss - rssBefore < 64 << 20, 'open used more than 64 MiB')
      assert.equal(im.size, size)
      const head = await im.read(0, 4096)
      assert.ok(head.data.equals(first.subarray(0, 4096)))
      const tail = await im.read(size - 4096, 4096)
      assert.ok(tail.data.every((b) => b === 0))
      assert.deepEqual(tail.bad, [{offset: size - 4096, length: 4096, status: 'non-tried'}])
    } finally {
      await im.close()
    }
  })
})

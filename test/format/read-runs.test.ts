/**
 * Sync reads that cover chunks whole (what the loop device sends a serving thread for a stream: 512 KiB
 * and 1 MiB READs): each such chunk is decoded straight into the caller's buffer, and the stored bytes of
 * the chunks one read covers whole that follow each other in the file are read with one pread(2)
 * (reader.ts storedOf); a chunk decoded ahead brings the stored bytes of the chunks after it. Exact bytes
 * for every size and offset (zstd, raw and zero chunks, the image's short last chunk), the preads counted,
 * and a damaged chunk inside a run failing alone.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {openImage} from '../../src/format/reader'
import {ChunkKind} from '../../src/format/layout'
import {SharedReadAhead} from '../../src/format/read-ahead'
import {prng, textish, tmpDir} from '../helpers'

const CHUNK = 64 * 1024
const CHUNKS = 40
/** Not a multiple of the chunk size: the last chunk is short. */
const SIZE = CHUNKS * CHUNK + 5000

/** Chunks in turn: text (zstd), text, random (stored raw), zeros, text. */
function medium(): Buffer {
  const b = Buffer.alloc(SIZE)
  for (let c = 0; c * CHUNK < SIZE; c++) {
    const len = Math.min(CHUNK, SIZE - c * CHUNK)
    const kind = c % 5
    if (kind === 3) continue
    ;(kind === 2 ? prng(c, len) : textish(c, len)).copy(b, c * CHUNK)
  }
  return b
}

/**
 * Count the pread(2)s `f` makes: fs.readSync, which the reader's sync mode reads with (on node:fs's own
 * exports object, which every module's `import * as fs` reads through).
 */
function preads<T>(f: () => T): {value: T; calls: number} {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const nodeFs = require('node:fs') as {readSync: (...a: unknown[]) => number}
  const real = nodeFs.readSync
  let calls = 0
  nodeFs.readSync = (...args: unknown[]) => {
    calls++
    return real(...args)
  }
  try {
    return {value: f(), calls}
  } finally {
    nodeFs.readSync = real
  }
}

describe('sync reads of whole chunks: decoded into the caller\'s buffer, a run\'s stored bytes in one pread', () => {
  let dir: string
  let cleanup: () => void
  let data: Buffer
  let img: string

  before(async () => {
    ;({dir, cleanup} = tmpDir('vdev-read-runs-'))
    data = medium()
    const raw = path.join(dir, 'medium.raw')
    fs.writeFileSync(raw, data)
    img = path.join(dir, 'medium.vdimg')
    const input = openInput(raw)
    try {
      await createImage(input, img, {chunkSize: CHUNK})
    } finally {
      await input.close()
    }
  })

  after(() => cleanup?.())

  it('the image has zstd, raw and zero chunks, its stored chunks back to back', async () => {
    const im = await openImage(img)
    try {
      const kinds = new Set<number>()
      let next = -1
      let adjacent = 0
      for (let i = 0; i < im.chunkCount; i++) {
        const e = await im.entry(i)
        kinds.add(e.kind)
        if (e.kind === ChunkKind.Zero) continue
        if (e.offset === next) adjacent++
        next = e.offset + e.storedLength
      }
      assert.deepEqual([...kinds].sort(), [ChunkKind.Zero, ChunkKind.Raw, ChunkKind.Zstd].sort())
      assert.ok(adjacent > 20, `${adjacent} stored chunks follow the one before in the file`)
    } finally {
      await im.close()
    }
  })

  it('every read, whole chunks or not, gives the medium\'s bytes', async () => {
    const im = await openImage(img, {sync: true})
    try {
      const reads: Array<[number, number]> = [
        [0, 1 << 20],
        [CHUNK, 512 << 10],
        [100, 1 << 20],
        [3 * CHUNK - 1, 2 * CHUNK + 2],
        [SIZE - 70_000, 70_000],
        [SIZE - 5000, 5000],
        [(CHUNKS - 8) * CHUNK, SIZE - (CHUNKS - 8) * CHUNK],
        [0, SIZE],
        [7 * CHUNK + 4096, 4096],
      ]
      for (const [o, l] of reads) {
        // Into a buffer with other bytes in it, at an offset: nothing of them may show through.
        const dst = Buffer.alloc(l + 100, 0xa5).subarray(100)
        const r = im.readSync(o, l, dst)
        assert.ok(r.data.equals(data.subarray(o, o + l)), `read of ${l} at ${o}`)
      }
      // Again, now that some chunks are cached (a hit is copied from the cache).
      for (const [o, l] of reads) assert.ok(im.readSync(o, l).data.equals(data.subarray(o, o + l)), `again: ${l} at ${o}`)
    } finally {
      await im.close()
    }
  })

  it('a 1 MiB read of chunks stored back to back reads their stored bytes with one pread', async () => {
    const im = await openImage(img, {sync: true})
    try {
      im.readSync(0, 4096) // the first index table, read on the first use
      const o = 4 * CHUNK
      const {value, calls} = preads(() => im.readSync(o, 1 << 20))
      assert.ok(value.data.equals(data.subarray(o, o + (1 << 20))))
      // 16 chunks, 3 of them zero: 13 stored back to back (an index table between them would make it 2).
      assert.ok(calls >= 1 && calls <= 2, `${calls} preads for 13 stored chunks`)
      // A 4 KiB read of a chunk not read before is still one pread of that chunk alone.
      const small = preads(() => im.readSync(30 * CHUNK + 8192, 4096))
      assert.equal(small.calls, 1)
      assert.ok(small.value.data.equals(data.subarray(30 * CHUNK + 8192, 30 * CHUNK + 12288)))
    } finally {
      await im.close()
    }
  })

  it('decoding ahead: the chunks after the one claimed come in the same pread, and the reader gets exact bytes from them', async () => {
    const sab = SharedReadAhead.create(CHUNK)
    const reader = await openImage(img, {sync: true, readAhead: sab})
    const ahead = await openImage(img, {sync: true, readAhead: sab})
    try {
      // Two reads in a row make a stream; the other instance then decodes its next chunks.
      for (const o of [0, 128 << 10]) assert.ok(reader.readSync(o, 128 << 10).data.equals(data.subarray(o, o + (128 << 10))))
      ahead.readSync(0, 4096) // its first index table
      let units = 0
      const {calls} = preads(() => {
        while (ahead.prefetch()) units++
      })
      assert.ok(units >= 8, `${units} chunks decoded ahead`)
      assert.ok(calls * 3 <= units, `${calls} preads for ${units} chunks decoded ahead`)
      const o = 256 << 10
      const before = new SharedReadAhead(sab, CHUNK).stats().used
      assert.ok(reader.readSync(o, 1 << 20).data.equals(data.subarray(o, o + (1 << 20))))
      assert.ok(new SharedReadAhead(sab, CHUNK).stats().used > before, 'the read took chunks decoded ahead')
    } finally {
      await Promise.all([reader.close(), ahead.close()])
    }
  })

  it('a damaged chunk inside a run fails alone: reads that cover it fail naming it, the chunks around it read exact', async () => {
    const bad = Buffer.from(fs.readFileSync(img))
    const im0 = await openImage(img)
    let victim: {i: number; offset: number; storedLength: number} | undefined
    try {
      for (let i = 10; i < 20 && !victim; i++) {
        const e = await im0.entry(i)
        if (e.kind === ChunkKind.Zstd) victim = {i, offset: e.offset, storedLength: e.storedLength}
      }
    } finally {
      await im0.close()
    }
    assert.ok(victim)
    bad[victim.offset + (victim.storedLength >> 1)] ^= 0x40
    const damaged = path.join(dir, 'damaged.vdimg')
    fs.writeFileSync(damaged, bad)
    const im = await openImage(damaged, {sync: true})
    try {
      const start = (victim.i - 4) * CHUNK
      assert.throws(() => im.readSync(start, 1 << 20), new RegExp(`chunk ${victim.i}\\b`))
      // The chunks before and after it, in reads that cover them whole (runs that end or start at it).
      const before = im.readSync(start, 4 * CHUNK)
      assert.ok(before.data.equals(data.subarray(start, start + 4 * CHUNK)))
      const after = (victim.i + 1) * CHUNK
      assert.ok(im.readSync(after, 8 * CHUNK).data.equals(data.subarray(after, after + 8 * CHUNK)))
      // And a read of it again fails again (nothing of it was cached).
      assert.throws(() => im.readSync(victim.i * CHUNK, CHUNK), new RegExp(`chunk ${victim.i}\\b`))
    } finally {
      await im.close()
    }
  })
})

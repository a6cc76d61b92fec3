/**
 * The overlay layer (src/layers/overlay.ts, docs/OVERLAY.md) over a raw source: merged reads, writes at
 * any alignment, write-zeroes and discards, writes into bad areas, reopen, the wrong base, a torn tail,
 * the BlockServer's write checks, and the base file never written.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockError, BlockServer} from '../../src/core/blockserver'
import {VdevError} from '../../src/core/errors'
import {HEADER_SIZE, RECORD_HEADER_SIZE, Overlay, inspectOverlay} from '../../src/layers/overlay'
import {RawImage} from '../../src/sources/raw'
import {commitOverlay} from '../../src/layers/overlay-commit'
import {openImage} from '../../src/format/reader'
import {prng, sha256, tmpDir, writeTruthMap} from '../helpers'

const SIZE = 4 << 20

describe('overlay layer', function () {
  this.timeout(30_000)
  let t: {dir: string; cleanup: () => void}
  let raw: string
  let map: string
  let baseBytes: Buffer
  const open = (file: string, opts: {mapfile?: boolean} = {}) => Overlay.open(RawImage.open(raw, {mapfile: opts.mapfile ? map : undefined}), file)

  beforeEach(() => {
    t = tmpDir('vdev-overlay-')
    raw = path.join(t.dir, 'base.img')
    map = path.join(t.dir, 'base.map')
    baseBytes = prng(7, SIZE)
    fs.writeFileSync(raw, baseBytes)
    writeTruthMap(map, SIZE, [{offset: 8192, length: 1024}])
  })
  afterEach(() => t.cleanup())

  it('merges writes, zeroes and discards with the base at any alignment, and survives reopening', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const expect = Buffer.from(baseBytes)
    const o = await open(file)
    assert.equal(o.writable, true)
    // Serving threads open a view of it (src/layers/overlay-view.ts): the descriptor names the overlay and its base.
    assert.equal(o.descriptor?.kind, 'overlay')
    assert.equal(String(o.descriptor?.options?.base), JSON.stringify(o.base.descriptor))
    assert.equal(o.base.descriptor?.kind, 'raw')
    const w = (at: number, b: Buffer) => (b.copy(expect, at), o.write(at, b))
    await w(4096, prng(1, 8192))
    await w(100, prng(2, 300)) // inside one sector
    await w(1000, prng(3, 5000)) // across sectors, unaligned both ends
    await w(SIZE - 700, prng(4, 700)) // up to the end
    await o.zero(65536, 65536)
    expect.fill(0, 65536, 131072)
    await o.trim(200_000, 10_000) // unaligned: whole sectors discarded, the ends written as zeros
    expect.fill(0, 200_000, 210_000)
    await w(70_000, prng(5, 512)) // over a zeroed range
    await o.flush()
    for (const [at, len] of [[0, SIZE], [99, 401], [65000, 70000], [199_999, 10_002]])
      assert.ok((await o.read(at, len)).data.equals(expect.subarray(at, at + len)), `read ${at}+${len}`)
    const ext = await o.extents(65536, 65536)
    assert.deepEqual(ext.map((e) => e.kind), ['zero', 'data', 'zero'])
    await o.close()
    const again = await open(file)
    assert.ok((await again.read(0, SIZE)).data.equals(expect))
    await again.close()
    assert.equal(sha256(fs.readFileSync(raw)), sha256(baseBytes), 'the base file is unchanged')
    const info = inspectOverlay(file)
    assert.equal(info.size, SIZE)
    assert.equal(info.base.kind, 'raw-identity')
    assert.equal(info.discardedBytes, 0)
    assert.ok(info.extents.some((e) => e.kind === 'trim') && info.extents.some((e) => e.kind === 'zero'))
  })

  it('a write into a bad area makes those sectors readable; the rest of the area stays bad', async () => {
    const o = await open(path.join(t.dir, 'o.vdovl'), {mapfile: true})
    const server = new BlockServer(o)
    await assert.rejects(server.read(8192, 512), (e: BlockError) => e.errno === 'EIO')
    const data = prng(9, 512)
    await server.write(8192, data)
    assert.ok((await server.read(8192, 512)).equals(data))
    const r = await o.read(8192, 1024)
    assert.deepEqual(r.bad.map((b) => [b.offset, b.length]), [[8704, 512]])
    await assert.rejects(server.read(8192, 1024), (e: BlockError) => e.errno === 'EIO')
    await server.drain()
    await o.close()
  })

  it('the server checks writes: ENOSPC past the end, EPERM on a read-only source', async () => {
    const o = await open(path.join(t.dir, 'o.vdovl'))
    const server = new BlockServer(o)
    await assert.rejects(server.write(SIZE - 512, Buffer.alloc(1024)), (e: BlockError) => e.errno === 'ENOSPC')
    await assert.rejects(server.zero(SIZE, 512), (e: BlockError) => e.errno === 'ENOSPC')
    await server.write(0, Buffer.alloc(512, 1))
    await server.flush()
    assert.equal(server.writeStats.writes, 1, 'a refused write is not counted as served')
    assert.equal(server.writeStats.flushes, 1)
    await o.close()
    const ro = new BlockServer(RawImage.open(raw, {}))
    assert.equal(ro.writable, false)
    await assert.rejects(ro.write(0, Buffer.alloc(512)), (e: BlockError) => e.errno === 'EPERM')
    await ro.flush() // nothing to flush, and no error
    await ro.source.close()
  })

  it('overlay commit: a new image of base + changes, written bad sectors good, both parents named, the base untouched', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const o = await open(file, {mapfile: true})
    const data = prng(31, 512)
    await o.write(8192, data)
    await o.write(100_000, prng(32, 70_000))
    await o.zero(1 << 20, 1 << 20)
    const want = (await o.read(0, SIZE)).data
    await o.close()
    const out = path.join(t.dir, 'new.vdimg')
    const r = await commitOverlay(RawImage.open(raw, {mapfile: map}), file, out, {baseName: raw, version: 'test'})
    assert.equal(r.badAreas, 1)
    const img = await openImage(out)
    try {
      assert.deepEqual([...img.badAreas].map((b) => [b.offset, b.length, b.status]), [[8704, 512, 'bad-sector']])
      const got = await img.read(0, SIZE)
      assert.ok(got.data.equals(want))
      const parents = img.metadata.parents as {base: {identity: string}; overlay: {id: string}}
      assert.match(parents.base.identity, /^raw identity [0-9a-f]{64}$/)
      assert.equal(parents.overlay.id, inspectOverlay(file).id)
      assert.equal(img.sha256, r.sha256)
    } finally {
      await img.close()
    }
    assert.equal(sha256(fs.readFileSync(raw)), sha256(baseBytes), 'the base file is unchanged')
  })

  it('concurrent overlapping writes: what is read before closing is what replays after', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const o = await open(file)
    const ops: Array<Promise<void>> = []
    for (let i = 0; i < 200; i++) {
      const at = ((i * 7919) % 1000) * 512 + (i % 3) * 100
      const len = 512 * (1 + (i % 9)) + (i % 2) * 77
      if (i % 10 === 3) ops.push(o.zero(at, len))
      else if (i % 10 === 7) ops.push(o.trim(at, len))
      else ops.push(o.write(at, prng(100 + i, len)))
    }
    await Promise.all(ops)
    const before = (await o.read(0, SIZE)).data
    await o.close()
    const again = await open(file)
    assert.ok((await again.read(0, SIZE)).data.equals(before))
    await again.close()
  })

  it('refuses the overlay of another base with one line', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    await (await open(file)).close()
    const other = path.join(t.dir, 'other.img')
    const b = Buffer.from(baseBytes)
    b[SIZE - 1] ^= 1 // differs in the last MiB only
    fs.writeFileSync(other, b)
    await assert.rejects(Overlay.open(RawImage.open(other, {}), file), (e: VdevError) => e.code === 'usage' && /belongs to another base/.test(e.message) && !e.message.includes('\n'))
  })

  it('cuts a torn tail on open and keeps every whole record before it', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const o = await open(file)
    const a = prng(11, 4096)
    await o.write(0, a)
    await o.write(4096, prng(12, 4096))
    await o.close()
    const full = fs.statSync(file).size
    assert.equal(full, HEADER_SIZE + 2 * (RECORD_HEADER_SIZE + 4096))
    // The second record torn in the middle of its data (as a crash during the write leaves it).
    fs.truncateSync(file, full - 1000)
    assert.equal(inspectOverlay(file).discardedBytes, RECORD_HEADER_SIZE + 4096 - 1000)
    const again = await open(file)
    assert.ok((await again.read(0, 4096)).data.equals(a))
    assert.ok((await again.read(4096, 4096)).data.equals(baseBytes.subarray(4096, 8192)), 'the torn write is not seen, not even in part')
    assert.equal(fs.statSync(file).size, HEADER_SIZE + RECORD_HEADER_SIZE + 4096)
    // A record whose data was garbled is dropped too, and so is everything after it.
    const b2 = prng(13, 4096)
    await again.write(8192, b2)
    await again.write(12288, b2)
    await again.close()
    const fd = fs.openSync(file, 'r+')
    fs.writeSync(fd, crypto.randomBytes(16), 0, 16, HEADER_SIZE + 2 * (RECORD_HEADER_SIZE + 4096) - 100)
    fs.closeSync(fd)
    const third = await open(file)
    assert.ok((await third.read(8192, 8192)).data.equals(baseBytes.subarray(8192, 16384)))
    assert.ok((await third.read(0, 4096)).data.equals(a))
    await third.close()
  })

  it('refuses a file that is not an overlay, or a damaged header, as a format error', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    await (await open(file)).close()
    const b = fs.readFileSync(file)
    b[20] ^= 0x40
    fs.writeFileSync(file, b)
    await assert.rejects(open(file), (e: VdevError) => e.code === 'format' && /checksum/.test(e.message))
    assert.throws(() => inspectOverlay(raw), (e: VdevError) => e.code === 'format')
    fs.writeFileSync(file, Buffer.alloc(10))
    await assert.rejects(open(file), (e: VdevError) => e.code === 'format')
  })
})

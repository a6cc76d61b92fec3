/**
 * A serving thread's view of the overlay (src/layers/overlay-view.ts) in a real worker thread, against its
 * owner on this thread: reads of untouched ranges come from the thread's own base, reads of written ranges
 * and every write, zero, trim, flush and extents call the owner; what one side writes the other reads; bad
 * areas stay bad until written; the owner's log replays to the same bytes. Two threads appending their
 * own records to the one log while the owner appends too (and compacts it): every record in sequence, the
 * same bytes read before and after reopening.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {Overlay, inspectOverlay} from '../../src/layers/overlay'
import {RawImage} from '../../src/sources/raw'
import {prng, tmpDir, writeTruthMap} from '../helpers'

const SIZE = 2 << 20
const SOURCES = path.resolve(__dirname, '..', '..', 'src', 'sources', 'index.js')

/** The thread: open the view, run the steps, post what it saw. */
const THREAD = `
const {parentPort, workerData} = require('node:worker_threads')
const {openSource} = require(workerData.sources)
;(async () => {
  const v = await openSource(workerData.descriptor, {sync: true, link: workerData.link})
  const out = {}
  const hex = (b) => Buffer.from(b).toString('hex')
  out.synchronous = v.synchronous === true && v.writable === true
  out.untouched = hex(v.readSync(65536, 4096).data)
  out.ownerWrote = hex(v.readSync(8192, 4096).data)
  const bad = v.readSync(1 << 20, 4096)
  out.badBefore = bad.bad.length
  await v.write(100000, Buffer.alloc(5000, 0x5a))
  await v.write(1 << 20, Buffer.alloc(4096, 0x77))
  out.badAfter = v.readSync(1 << 20, 4096).bad.length
  await v.zero(300000, 8192)
  await v.trim(400000, 4096)
  await v.flush()
  out.mine = hex(v.readSync(100000, 5000).data)
  out.extents = await v.extents(0, ${SIZE})
  try { await v.write(${SIZE} - 100, Buffer.alloc(200)) } catch (e) { out.pastEnd = e.errno ?? e.message }
  await v.close()
  parentPort.postMessage(out)
})().catch((e) => parentPort.postMessage({error: String(e && e.stack || e)}))
`

describe('overlay view on a serving thread', function () {
  this.timeout(60_000)
  let t: {dir: string; cleanup: () => void}
  beforeEach(() => (t = tmpDir('vdev-ovview-')))
  afterEach(() => t.cleanup())

  it('reads untouched ranges from its own base, everything else through the owner; both sides see each other', async () => {
    const raw = path.join(t.dir, 'base.img')
    const map = path.join(t.dir, 'base.map')
    const base = prng(21, SIZE)
    fs.writeFileSync(raw, base)
    writeTruthMap(map, SIZE, [{offset: 1 << 20, length: 4096}])
    const file = path.join(t.dir, 'o.vdovl')
    const owner = await Overlay.open(RawImage.open(raw, {mapfile: map}), file)
    await owner.write(8192, Buffer.alloc(4096, 0x11))
    const link = owner.threadLink()
    const w = new Worker(THREAD, {eval: true, workerData: {sources: SOURCES, descriptor: owner.descriptor, link: link.value}, transferList: link.transfer})
    const out = (await new Promise((resolve, reject) => {
      w.once('message', resolve)
      w.once('error', reject)
    })) as Record<string, unknown>
    await w.terminate()
    assert.equal(out.error, undefined, String(out.error))
    assert.equal(out.synchronous, true)
    assert.equal(out.untouched, base.subarray(65536, 65536 + 4096).toString('hex'), 'an untouched range reads the base')
    assert.equal(out.ownerWrote, Buffer.alloc(4096, 0x11).toString('hex'), "the owner's write is seen by the thread")
    assert.equal(out.badBefore, 1, 'a bad area is bad through the view')
    assert.equal(out.badAfter, 0, 'written, it is readable')
    assert.equal(out.mine, Buffer.alloc(5000, 0x5a).toString('hex'))
    const kinds = (out.extents as Array<{offset: number; kind: string}>).filter((e) => e.kind !== 'data' || e.offset === 100000 - (100000 % 512))
    assert.ok(kinds.some((e) => e.kind === 'zero'), JSON.stringify(out.extents))
    assert.ok(out.pastEnd, 'a write past the end fails')
    // The owner reads what the thread wrote, and so does a reopened overlay (the owner's log).
    const mine = await owner.read(0, SIZE)
    assert.ok(mine.data.subarray(100000, 105000).equals(Buffer.alloc(5000, 0x5a)))
    assert.ok(mine.data.subarray(300000, 308192).equals(Buffer.alloc(8192)))
    assert.ok(mine.data.subarray(400000, 404096).equals(Buffer.alloc(4096)))
    await owner.close()
    const again = await Overlay.open(RawImage.open(raw, {mapfile: map}), file)
    assert.ok((await again.read(0, SIZE)).data.equals(mine.data), 'the log replays to the same bytes')
    await again.close()
  })

  /** A thread that writes its region of the image: whole sectors (its own appends), partial ones and zeros (the owner's). */
  const WRITER = `
const {parentPort, workerData} = require('node:worker_threads')
const {openSource} = require(workerData.sources)
;(async () => {
  const v = await openSource(workerData.descriptor, {sync: true, link: workerData.link})
  const {region, n, at, mixed} = workerData
  const model = Buffer.from(v.readSync(at, region).data)
  let seed = workerData.seed
  const rnd = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8
  let records = 0
  for (let i = 0; i < n; i++) {
    // Mixed: a small part of the region, written over and over (dead records for compaction to drop).
    const off = (rnd() % ((mixed ? region / 16 : region) / 512 - 2)) * 512
    if (mixed && i % 500 === 499) {
      const b = Buffer.alloc(300, i & 0xff)
      await v.write(at + off + 100, b)
      b.copy(model, off + 100)
    } else if (mixed && i % 700 === 699) {
      await v.zero(at + off, 1024)
      model.fill(0, off, off + 1024)
    } else {
      const b = Buffer.alloc(512, (i * 7 + region) & 0xff)
      b.writeUInt32LE(i, 0)
      await v.write(at + off, b)
      b.copy(model, off)
    }
    records++
  }
  await v.flush()
  await v.close()
  parentPort.postMessage({model, records})
})().catch((e) => parentPort.postMessage({error: String(e && e.stack || e)}))
`

  // Without compaction: whole sectors only and the owner idle until the threads are done, so more records
  // are published than the ring holds (the threads have the owner take them). With it: partial sectors and
  // zeros through the owner, and the owner writing and compacting while the threads append.
  for (const compactMinBytes of [0, 64 * 1024]) {
    it(`two threads append to the log beside the owner, every record in sequence${compactMinBytes ? ', the owner writing and compacting meanwhile' : ' (more than the ring of published records holds)'}`, async () => {
      const REGION = 1 << 20
      const raw = path.join(t.dir, 'base.img')
      fs.writeFileSync(raw, prng(5, 3 * REGION))
      const file = path.join(t.dir, 'o.vdovl')
      const owner = await Overlay.open(RawImage.open(raw), file, {compactMinBytes})
      const mixed = compactMinBytes > 0
      const N = mixed ? 2500 : 9000
      const run = (k: number) => {
        const link = owner.threadLink()
        const w = new Worker(WRITER, {eval: true, workerData: {sources: SOURCES, descriptor: owner.descriptor, link: link.value, region: REGION, at: k * REGION, n: N, seed: k + 1, mixed}, transferList: link.transfer})
        return new Promise<{model: Buffer; records: number; error?: string}>((resolve, reject) => {
          w.once('message', (m) => void w.terminate().then(() => resolve(m)))
          w.once('error', reject)
        })
      }
      const threads = [run(0), run(1)]
      if (!mixed) await Promise.all(threads)
      // The owner writes the third region meanwhile (its own appends, between the threads').
      const mine = Buffer.from((await owner.read(2 * REGION, REGION)).data)
      let ownerRecords = 0
      for (let i = 0; i < 1500; i++) {
        const off = ((i * 7919) % (REGION / 512)) * 512
        const b = Buffer.alloc(512, i & 0xff)
        await owner.write(2 * REGION + off, b)
        b.copy(mine, off)
        ownerRecords++
        if (i % 100 === 0) await new Promise((r) => setImmediate(r))
      }
      const outs = await Promise.all(threads)
      for (const o of outs) assert.equal(o.error, undefined, String(o.error))
      await owner.compacted()
      const models = [outs[0].model, outs[1].model, mine]
      const all = (await owner.read(0, 3 * REGION)).data
      for (let k = 0; k < 3; k++) assert.ok(all.subarray(k * REGION, (k + 1) * REGION).equals(models[k]), `region ${k} reads what was written`)
      if (compactMinBytes) assert.ok(owner.compactions >= 1, `compacted while the threads wrote (${owner.compactions})`)
      await owner.close()
      const info = inspectOverlay(file)
      assert.equal(info.discardedBytes, 0)
      if (!compactMinBytes) assert.equal(info.records, outs[0].records + outs[1].records + ownerRecords, 'every record is in the valid prefix, in sequence')
      const again = await Overlay.open(RawImage.open(raw), file)
      assert.ok((await again.read(0, 3 * REGION)).data.equals(all), 'the log replays to the same bytes')
      await again.close()
    })
  }
})

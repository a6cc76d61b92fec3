/**
 * A serving thread's view of the overlay (src/layers/overlay-view.ts) in a real worker thread, against its
 * owner on this thread: reads of untouched ranges come from the thread's own base, reads of written ranges
 * and every write, zero, trim, flush and extents call the owner; what one side writes the other reads; bad
 * areas stay bad until written; the owner's log replays to the same bytes.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {Overlay} from '../../src/layers/overlay'
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
})

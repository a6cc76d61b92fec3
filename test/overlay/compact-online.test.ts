/**
 * Compaction while serving (src/layers/overlay.ts, docs/OVERLAY.md "Compaction while serving"): an overlay whose
 * log fills with overwritten records compacts itself while reads and writes go on — every read returns what
 * the writes acknowledged before it left, the file shrinks, the id and base stay, it reopens to the same
 * bytes; a compaction that cannot finish (the overlay closed under it) leaves the log as it was and no
 * temporary file. The kill -9 case is in serve-overlay.test.ts.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Overlay, inspectOverlay} from '../../src/layers/overlay'
import {RawImage} from '../../src/sources/raw'
import {prng, tmpDir} from '../helpers'

const SIZE = 4 << 20
const BLOCK = 4096

describe('overlay compaction while serving', function () {
  this.timeout(120_000)
  let t: {dir: string; cleanup: () => void}
  let raw: string
  const open = (file: string, compactMinBytes: number, log?: (l: string) => void) => Overlay.open(RawImage.open(raw), file, {compactMinBytes, log})

  beforeEach(() => {
    t = tmpDir('vdev-compact-online-')
    raw = path.join(t.dir, 'base.img')
    fs.writeFileSync(raw, prng(5, SIZE))
  })
  afterEach(() => t.cleanup())

  it('compacts under concurrent writes, zeroes and reads; every read sees the acknowledged state; reopens the same', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const lines: string[] = []
    const o = await open(file, 256 << 10, (l) => lines.push(l))
    const id = inspectOverlay(file).id
    const model = Buffer.from(prng(5, SIZE))
    let x = 99
    const rnd = (n: number) => ((x = (x * 1103515245 + 12345) % 2147483648), x % n)
    // 96 blocks in the first MiB and a few large writes elsewhere: most of the log becomes dead quickly.
    let maxFile = 0
    for (let round = 0; round < 60; round++) {
      const pending: Array<Promise<void>> = []
      for (let k = 0; k < 24; k++) {
        const op = rnd(10)
        const at = op === 9 ? (1 << 20) + rnd(3 << 20) : rnd(96) * BLOCK
        const len = op === 9 ? Math.min(SIZE - at, 1 + rnd(200_000)) : BLOCK
        // Distinct blocks in one batch: two writes in flight to one block may land in either order.
        if (op === 8) {
          model.fill(0, at, at + len)
          pending.push(o.zero(at, len))
        } else {
          const d = prng(round * 100 + k, len)
          d.copy(model, at)
          pending.push(o.write(at, d))
        }
        await Promise.all(pending.splice(0))
        // A read while writes (and perhaps a compaction) go on: what was acknowledged so far.
        const r0 = rnd(SIZE - 300_000)
        const r = await o.read(r0, 300_000)
        assert.ok(r.data.equals(model.subarray(r0, r0 + 300_000)), `round ${round}: read at ${r0} differs`)
      }
      maxFile = Math.max(maxFile, fs.statSync(file).size)
    }
    await o.compacted()
    await o.flush()
    assert.ok(o.compactions >= 3, `${o.compactions} compactions: ${lines.join('\n')}`)
    assert.ok(lines.every((l) => /compacted while serving, \d+ → \d+ bytes/.test(l)), lines.join('\n'))
    const whole = await o.read(0, SIZE)
    assert.ok(whole.data.equals(model))
    await o.close()
    const info = inspectOverlay(file)
    assert.equal(info.id, id)
    assert.equal(info.discardedBytes, 0)
    const again = await open(file, 0)
    assert.ok((await again.read(0, SIZE)).data.equals(model))
    await again.close()
    assert.deepEqual(fs.readdirSync(t.dir).filter((n) => n.endsWith('.compact')), [])
  })

  it('a compaction the close interrupts leaves the log as it was and no temporary file', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const o = await open(file, 0)
    for (let i = 0; i < 12; i++) await o.write(0, prng(i, 1 << 20))
    await o.close()
    const before = fs.readFileSync(file)
    // Opening finds 11 MiB dead: it starts compacting at once; closing at once abandons it.
    const lines: string[] = []
    const p = await open(file, 1 << 20, (l) => lines.push(l))
    await p.close()
    assert.deepEqual(fs.readdirSync(t.dir).filter((n) => n.endsWith('.compact')), [])
    const after = fs.readFileSync(file)
    if (lines.some((l) => /compacted while serving/.test(l))) assert.ok(after.length < before.length / 10)
    else assert.ok(after.equals(before), 'the log changed though compaction did not finish')
    const q = await open(file, 0)
    assert.ok((await q.read(0, 1 << 20)).data.equals(prng(11, 1 << 20)))
    await q.close()
  })
})

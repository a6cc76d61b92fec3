/**
 * `vdev overlay compact` (src/layers/overlay-compact.ts): after many overwrites, zeroes and discards the
 * compacted overlay reads exactly the same bytes (and bad-area state) over the same base, is smaller, keeps
 * its id and base, opens clean; a torn tail is dropped; an overlay in use is refused; the CLI says so.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Overlay, inspectOverlay} from '../../src/layers/overlay'
import {compactOverlay} from '../../src/layers/overlay-compact'
import {RawImage} from '../../src/sources/raw'
import {VdevError} from '../../src/core/errors'
import {prng, runCli, tmpDir, writeTruthMap} from '../helpers'

const SIZE = 4 << 20

describe('overlay compact', function () {
  this.timeout(60_000)
  let t: {dir: string; cleanup: () => void}
  let raw: string
  let map: string
  const open = (file: string) => Overlay.open(RawImage.open(raw, {mapfile: map}), file)

  beforeEach(() => {
    t = tmpDir('vdev-compact-')
    raw = path.join(t.dir, 'base.img')
    map = path.join(t.dir, 'base.map')
    fs.writeFileSync(raw, prng(3, SIZE))
    writeTruthMap(map, SIZE, [{offset: 1 << 20, length: 64 << 10}])
  })
  afterEach(() => t.cleanup())

  /** Many overlapping writes, zeroes and discards; returns the bytes and bad list the overlay reads. */
  async function churn(file: string): Promise<{data: Buffer; bad: string}> {
    const o = await open(file)
    let x = 12345
    const rnd = (n: number) => ((x = (x * 1103515245 + 12345) % 2147483648), x % n)
    for (let i = 0; i < 400; i++) {
      const at = rnd(SIZE - 70_000)
      const op = rnd(10)
      if (op < 7) await o.write(at, prng(i, 1 + rnd(65_536)))
      else if (op < 9) await o.zero(at, 1 + rnd(65_536))
      else await o.trim(at, 1 + rnd(65_536))
    }
    await o.flush()
    const r = await o.read(0, SIZE)
    await o.close()
    return {data: r.data, bad: JSON.stringify(r.bad)}
  }

  it('reads the same bytes and bad areas after compaction, from a much smaller file with the same id and base', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const before = await churn(file)
    const infoBefore = inspectOverlay(file)
    const r = compactOverlay(file)
    assert.equal(r.bytesBefore, infoBefore.fileBytes)
    assert.ok(r.bytesAfter < r.bytesBefore / 2, `${r.bytesBefore} → ${r.bytesAfter}`)
    const infoAfter = inspectOverlay(file)
    assert.equal(infoAfter.fileBytes, r.bytesAfter)
    assert.equal(infoAfter.id, infoBefore.id)
    assert.deepEqual(infoAfter.base, infoBefore.base)
    assert.equal(infoAfter.discardedBytes, 0)
    assert.deepEqual(infoAfter.extents, infoBefore.extents, 'the same extents, kinds included')
    assert.equal(infoAfter.records, r.recordsAfter)
    const o = await open(file)
    const after = await o.read(0, SIZE)
    await o.close()
    assert.ok(after.data.equals(before.data), 'the same bytes')
    assert.equal(JSON.stringify(after.bad), before.bad, 'the same bad areas')
    assert.deepEqual(fs.readdirSync(t.dir).filter((f) => f.endsWith('.compact')), [], 'no temporary file left')
    // Compacting again changes nothing.
    const again = compactOverlay(file)
    assert.equal(again.bytesAfter, r.bytesAfter)
  })

  it('drops a torn tail; refuses an overlay a server holds (exit 6 from the CLI), and reports through the CLI', async () => {
    const file = path.join(t.dir, 'o.vdovl')
    const before = await churn(file)
    fs.appendFileSync(file, Buffer.from('a torn record that never completed'))
    const held = await open(file)
    assert.throws(() => compactOverlay(file), (e: unknown) => e instanceof VdevError && e.code === 'exists' && /in use/.test(e.message))
    const cli = await runCli(['overlay', 'compact', file])
    assert.equal(cli.code, 6, cli.stderr)
    assert.equal(cli.stderr.trim().split('\n').length, 1)
    await held.close()
    // Opening for writing cut the torn tail already; add one again to see compaction drop it.
    fs.appendFileSync(file, Buffer.from('another torn record'))
    const ok = await runCli(['overlay', 'compact', file, '--json'])
    assert.equal(ok.code, 0, ok.stderr)
    const j = JSON.parse(ok.stdout) as {discardedBytes: number; bytesAfter: number}
    assert.equal(j.discardedBytes, 'another torn record'.length)
    const o = await open(file)
    assert.ok((await o.read(0, SIZE)).data.equals(before.data))
    await o.close()
    const notOverlay = path.join(t.dir, 'x')
    fs.writeFileSync(notOverlay, 'not an overlay')
    const bad = await runCli(['overlay', 'compact', notOverlay])
    assert.equal(bad.code, 4, bad.stderr)
    assert.match(bad.stderr, /not a valid vdev overlay/)
    assert.equal(fs.readFileSync(notOverlay, 'utf8'), 'not an overlay', 'a file that is not an overlay is left alone')
  })
})

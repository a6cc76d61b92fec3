/**
 * Real GNU ddrescue against a source that really fails reads where we choose (nbdkit's ddrescue filter
 * behind nbdfuse), then `vdev create --mapfile` with the mapfile ddrescue wrote.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {openImage} from '../../src/format/reader'
import {readMapfile} from '../../src/format/mapfile'
import {ddrescue, failingSource, runCli, textish, tmpDir} from '../helpers'

const KiB = 1024
const SIZE = 4 << 20
// Where the "medium" fails: three areas, one of a single sector.
const TRUTH = [
  {offset: 256 * KiB, length: 512},
  {offset: 1024 * KiB, length: 64 * KiB},
  {offset: 3000 * KiB, length: 8 * KiB},
]

function truthMap(): string {
  const lines = ['0 +']
  let at = 0
  for (const b of TRUTH) {
    lines.push(`0x${at.toString(16)} 0x${(b.offset - at).toString(16)} +`, `0x${b.offset.toString(16)} 0x${b.length.toString(16)} -`)
    at = b.offset + b.length
  }
  lines.push(`0x${at.toString(16)} 0x${(SIZE - at).toString(16)} +`)
  return lines.join('\n') + '\n'
}

describe('real GNU ddrescue mapfiles', function () {
  this.timeout(300_000)
  let t: ReturnType<typeof tmpDir>
  let src: {file: string; stop: () => Promise<void>} | undefined
  const original = textish(42, SIZE)

  before(async () => {
    t = tmpDir()
    fs.writeFileSync(path.join(t.dir, 'medium.raw'), original)
    fs.writeFileSync(path.join(t.dir, 'truth.map'), truthMap())
    src = await failingSource(t.dir, path.join(t.dir, 'medium.raw'), path.join(t.dir, 'truth.map'))
  })
  after(async () => {
    await src?.stop()
    t.cleanup()
  })

  const runs: Array<[string, string[], string[]]> = [
    ['a complete run (bad-sector areas)', [], ['bad-sector']],
    ['a run without scraping (-n: non-scraped areas)', ['-n'], ['non-scraped']],
    ['a run without trimming or scraping (-N -n: non-trimmed areas)', ['-N', '-n'], ['non-trimmed']],
    ['a run stopped early (-s 2MiB: the rest non-tried)', ['-s', String(2 << 20)], ['bad-sector', 'non-tried']],
  ]
  for (const [what, opts, statuses] of runs) {
    it(`${what}: bad areas kept with their status, readable bytes exact`, async () => {
      const name = opts.join('').replace(/[^a-zA-Z0-9]/g, '') || 'full'
      const rescued = path.join(t.dir, `${name}.img`)
      const map = path.join(t.dir, `${name}.map`)
      ddrescue(src!.file, rescued, map, opts)
      const parsed = readMapfile(map)
      const img = path.join(t.dir, `${name}.vdimg`)
      const r = await runCli(['create', '--mapfile', map, rescued, img, '--json'])
      assert.equal(r.code, 0, r.stderr)
      const im = await openImage(img)
      try {
        // The image's bad areas are exactly the mapfile's non-finished blocks (plus non-tried to the end
        // when ddrescue stopped early and the rescued file is shorter than the medium).
        const fromMap = [...parsed.bad]
        const got = [...im.badAreas].slice(0, fromMap.length)
        assert.deepEqual(got, fromMap)
        const seen = new Set([...im.badAreas].map((b) => b.status))
        for (const s of statuses) assert.ok(seen.has(s as never), `expected a ${s} area, got ${[...seen]}`)
        // Every byte the medium could not give is inside a bad area.
        for (const b of TRUTH) if (b.offset < im.size) assert.ok(im.badAreas.covers(b.offset, Math.min(b.length, im.size - b.offset)))
        // Everything outside the bad areas is the original, and bad bytes read as zero.
        const all = (await im.read(0, im.size)).data
        let at = 0
        for (const b of im.badAreas) {
          assert.ok(all.subarray(at, b.offset).equals(original.subarray(at, b.offset)), `bytes ${at}-${b.offset}`)
          assert.ok(all.subarray(b.offset, b.offset + b.length).every((x) => x === 0))
          at = b.offset + b.length
        }
        assert.ok(all.subarray(at).equals(original.subarray(at, im.size)))
        assert.equal(im.metadata.tool, 'GNU ddrescue 1.27')
        assert.match(String((im.metadata.ddrescue as {commandLine: string}).commandLine), /ddrescue/)
      } finally {
        await im.close()
      }
      // extract --mapfile-out gives back a mapfile with the same blocks.
      const back = path.join(t.dir, `${name}.back.map`)
      const x = await runCli(['extract', img, path.join(t.dir, `${name}.out`), '--mapfile-out', back])
      assert.equal(x.code, 0, x.stderr)
      const reparsed = readMapfile(back)
      assert.deepEqual([...reparsed.bad].slice(0, parsed.bad.count), [...parsed.bad])
      assert.equal(reparsed.currentPos, parsed.currentPos)
      assert.equal(reparsed.currentStatus, parsed.currentStatus)
    })
  }

  it('create from the failing source itself without a mapfile fails with a read error and writes nothing', async () => {
    const out = path.join(t.dir, 'direct.vdimg')
    const r = await runCli(['create', src!.file, out])
    assert.equal(r.code, 3)
    assert.match(r.stderr, /^vdev: .*disk: read error at byte \d+: input\/output error\n$/)
    assert.equal(fs.existsSync(out), false)
    assert.deepEqual(fs.readdirSync(t.dir).filter((f) => f.includes('direct')), [])
  })
})

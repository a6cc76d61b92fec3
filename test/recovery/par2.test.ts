/**
 * vdev's recovery data against par2 (par2cmdline, Debian `par2`), on the same image file and the same
 * damage: `par2 create -r5 -s4096` beside `vdev create --recovery 5%`, then both repair. Within what both
 * promise (each stripe within its parity, and the whole within par2's recovery blocks) both give back the
 * original byte for byte; where vdev's stripes differ from par2's one big code, the test says which repairs.
 */
import {strict as assert} from 'node:assert'
import {spawnSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {SectionType} from '../../src/format/layout'
import {openImage} from '../../src/format/reader'
import {decodeRecoveryHeader, RECOVERY_HEADER_SIZE, sliceOrigin, type RecoveryLayout} from '../../src/format/recovery'
import {openInput} from '../../src/format/input'
import {createImage} from '../../src/format/writer'
import {have, prng, runCli, textish, tmpDir} from '../helpers'

function par2(args: string[], cwd: string): {code: number; out: string} {
  const r = spawnSync('par2', args, {cwd, encoding: 'utf8', timeout: 60_000})
  return {code: r.status ?? -1, out: `${r.stdout}${r.stderr}`}
}

describe('recovery: vdev repair and par2 repair on the same damage', function () {
  this.timeout(120_000)
  let t: ReturnType<typeof tmpDir>
  let good: Buffer
  let l: RecoveryLayout
  let parDir: string

  before(async function () {
    assert.ok(have('par2'), 'par2 is not installed (scripts/install-deps.sh installs it)')
    t = tmpDir()
    const src = path.join(t.dir, 'src.raw')
    fs.writeFileSync(src, Buffer.concat([prng(41, 1 << 20), textish(42, 1 << 20), prng(43, 512 << 10)]))
    const file = path.join(t.dir, 'img.vdimg')
    const input = openInput(src)
    try {
      await createImage(input, file, {chunkSize: 16384, recovery: 5, threads: 2})
    } finally {
      await input.close()
    }
    good = fs.readFileSync(file)
    const img = await openImage(file)
    const rec = img.sections.find((s) => s.type === SectionType.Recovery)!
    await img.close()
    l = decodeRecoveryHeader(good.subarray(rec.offset, rec.offset + RECOVERY_HEADER_SIZE), rec.offset, rec.length)
    // par2's recovery set for the same file, kept apart: each case copies it beside a damaged copy.
    parDir = path.join(t.dir, 'par2')
    fs.mkdirSync(parDir)
    fs.writeFileSync(path.join(parDir, 'img.vdimg'), good)
    const c = par2(['create', '-q', '-r5', '-s4096', '-n1', 'img.par2', 'img.vdimg'], parDir)
    assert.equal(c.code, 0, c.out)
  })
  after(() => t?.cleanup())

  /** Apply `ranges` to a vdev copy and a par2 copy; repair both; say whether each got the original back. */
  const both = async (name: string, ranges: Array<[number, number]>) => {
    const bad = Buffer.from(good)
    for (const [off, len] of ranges) for (let i = 0; i < len; i++) bad[off + i] ^= 0xa5
    const v = path.join(t.dir, `${name}.vdimg`)
    fs.writeFileSync(v, bad)
    const vr = await runCli(['repair', v])
    const d = path.join(t.dir, `par2-${name}`)
    fs.mkdirSync(d)
    for (const f of fs.readdirSync(parDir)) fs.copyFileSync(path.join(parDir, f), path.join(d, f))
    fs.writeFileSync(path.join(d, 'img.vdimg'), bad)
    const pr = par2(['repair', '-q', 'img.par2'], d)
    return {
      vdev: vr.code === 0 && fs.readFileSync(v).equals(good),
      vdevCode: vr.code,
      par2: pr.code === 0 && fs.readFileSync(path.join(d, 'img.vdimg')).equals(good),
      par2Code: pr.code,
      out: `${vr.stderr}\n${pr.out}`,
    }
  }
  const slice = (i: number) => sliceOrigin(l) + i * l.sliceSize

  it('spread damage within every stripe\'s parity: both repair, byte-identical', async () => {
    const ranges: Array<[number, number]> = []
    for (let s = 0; s < l.stripes; s++) for (let j = 0; j < Math.min(3, l.m); j++) ranges.push([slice((j * 7 + 1) * l.stripes + s) + 100, 1])
    const r = await both('spread', ranges)
    assert.deepEqual([r.vdev, r.par2], [true, true], r.out)
  })

  it('one consecutive run of damaged 4 KiB blocks: both repair, byte-identical', async () => {
    const n = Math.min(l.stripes * (l.m - 1), Math.floor((good.length / 4096) * 0.05) - 3)
    const r = await both('run', [[slice(20), n * l.sliceSize]])
    assert.deepEqual([r.vdev, r.par2], [true, true], r.out)
  })

  it('m + 1 slices of one stripe (few in all): par2\'s single code repairs, vdev\'s stripe cannot, and says so', async () => {
    const ranges: Array<[number, number]> = []
    for (let j = 0; j <= l.m; j++) ranges.push([slice(j * l.stripes + 1) + 9, 1])
    const r = await both('one-stripe', ranges)
    assert.deepEqual([r.vdev, r.vdevCode, r.par2], [false, 5, true], r.out)
  })

  it('damage beyond 5% of the file: neither repairs', async () => {
    const r = await both('beyond', [[slice(4), Math.ceil(good.length * 0.08)]])
    assert.deepEqual([r.vdev, r.par2], [false, false], r.out)
    assert.equal(r.vdevCode, 5)
    assert.notEqual(r.par2Code, 0)
  })
})

/**
 * Raw images with a GNU ddrescue mapfile, served without conversion: a medium that really fails reads
 * (nbdkit's ddrescue filter behind nbdfuse) rescued by real GNU ddrescue — stopped before the end, so its
 * output file is shorter than the medium and the map's tail is non-tried — then read through RawImage
 * (both modes), `vdev info`, `vdev serve` compared sector by sector with nbdkit's file plugin + ddrescue
 * filter over the same file and map, and `vdev attach` (FUSE + loop, serving threads) with `vdev list`'s
 * counters.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {ChildProcess} from 'node:child_process'
import {readMapfile} from '../../src/format/mapfile'
import {describeSource, openSource} from '../../src/sources'
import {RawImage} from '../../src/sources/raw'
import {ddrescue, failingSource, have, runCli, textish, tmpDir, writeTruthMap} from '../helpers'
import {IS_ROOT, Sandbox, readSectors} from '../sandbox'
import {PYTHON, hasPythonNbd, run, startNbdkit, stopChild} from '../nbd/fixture'

const SECTOR = 512
const SIZE = 2 << 20
/** The medium fails here (ddrescue marks them bad-sector, or non-trimmed/non-scraped on a short run). */
const TRUTH = [
  {offset: 64 * 1024, length: 512},
  {offset: 300 * 1024, length: 16 * 1024},
  {offset: 1200 * 1024, length: 4096},
]
/** ddrescue stops this many bytes before the end: they stay non-tried and the output file is short. */
const TAIL = 256 * 1024

describe('raw image + ddrescue mapfile as a source', function () {
  this.timeout(300_000)
  let t: ReturnType<typeof tmpDir>
  const medium = textish(7, SIZE)
  let raw: string
  let map: string

  before(async function () {
    if (!IS_ROOT || !have('ddrescue') || !have('nbdfuse') || !have('nbdkit')) this.skip()
    t = tmpDir('vdev-raw-')
    const src = path.join(t.dir, 'medium.raw')
    fs.writeFileSync(src, medium)
    const truth = path.join(t.dir, 'truth.map')
    writeTruthMap(truth, SIZE, TRUTH)
    const failing = await failingSource(t.dir, src, truth)
    raw = path.join(t.dir, 'rescued.img')
    map = path.join(t.dir, 'rescued.map')
    try {
      ddrescue(failing.file, raw, map, ['-d', '-s', String(SIZE - TAIL)])
    } finally {
      await failing.stop()
    }
  })
  after(() => t?.cleanup())

  /** What each sector should be: the medium's bytes, or bad (from ddrescue's own map). */
  function badSector(offset: number): boolean {
    const m = readMapfile(map)
    return m.bad.intersect(offset, SECTOR).length > 0 || offset >= m.extent
  }

  it('ddrescue really left a short file and a map with bad areas and a non-tried tail', () => {
    assert.ok(fs.statSync(raw).size <= SIZE - TAIL, `rescued file is ${fs.statSync(raw).size} bytes`)
    const m = readMapfile(map)
    assert.equal(m.extent, SIZE)
    assert.ok(m.bad.count >= TRUTH.length)
  })

  for (const sync of [false, true]) {
    it(`RawImage (${sync ? 'sync' : 'async'}): the medium's bytes where finished, zeros and the map's status everywhere else`, async () => {
      const img = RawImage.open(raw, {mapfile: map}, {sync})
      try {
        assert.equal(img.immediate, sync)
        assert.equal(img.size, SIZE)
        assert.equal(img.sectorSize, 512)
        assert.deepEqual(img.descriptor, {kind: 'raw', path: raw, options: {sectorSize: 512, mapfile: map}})
        const r = sync ? img.readSync(0, SIZE) : await img.read(0, SIZE)
        const expectBad = [...readMapfile(map).bad]
        assert.deepEqual(r.bad, expectBad)
        const want = Buffer.from(medium)
        for (const b of expectBad) want.fill(0, b.offset, b.offset + b.length)
        assert.ok(r.data.equals(want), 'bytes differ from the medium outside the bad areas')
        assert.ok(r.bad.some((b) => b.status === 'non-tried' && b.offset + b.length === SIZE), 'the tail is non-tried')
        // A read that starts past the end of the file (inside the map) is all zeros and all bad.
        const tail = sync ? img.readSync(SIZE - 4096, 4096) : await img.read(SIZE - 4096, 4096)
        assert.ok(tail.data.equals(Buffer.alloc(4096)))
        assert.deepEqual(tail.bad, [{offset: SIZE - 4096, length: 4096, status: 'non-tried'}])
      } finally {
        await img.close()
      }
    })
  }

  it('opens again from its descriptor (what a serving thread does)', async () => {
    const d = describeSource(raw, {mapfile: map})
    const a = await openSource(d, {sync: true})
    try {
      assert.deepEqual(a.descriptor, d.options?.sectorSize ? d : {...d, options: {...d.options, sectorSize: 512}})
      assert.ok(a.readSync!(0, 65536).data.equals(medium.subarray(0, 65536)))
      // A file's instance on a serving thread answers at once, read() too (no trip through libuv's pool).
      assert.equal(a.immediate, true)
      let settled = false
      void a.read(0, 4096).then(() => (settled = true))
      await Promise.resolve()
      assert.ok(settled, 'read() of a sync instance over a file answered in the same turn')
    } finally {
      await a.close()
    }
  })

  it('bad input: a map that marks bytes past the end of the file as finished, a directory, a missing map, a raw file without --format', async () => {
    const short = path.join(t.dir, 'short.img')
    fs.writeFileSync(short, medium.subarray(0, 4096))
    const full = path.join(t.dir, 'full.map')
    fs.writeFileSync(full, `0 +\n0 0x${SIZE.toString(16)} +\n`)
    const cases: Array<{args: string[]; code: number; re: RegExp}> = [
      {args: ['info', short, '--mapfile', full], code: 4, re: /short\.img: the file is 4096 bytes but the mapfile .* marks bytes up to 2097152 as rescued/},
      {args: ['info', t.dir, '--format', 'raw'], code: 3, re: /is a directory/},
      {args: ['info', raw, '--mapfile', path.join(t.dir, 'nope.map')], code: 3, re: /nope\.map: cannot open: no such file or directory/},
      {args: ['info', raw], code: 4, re: /rescued\.img: not a VDIMG image \(bad magic\) \(at byte 0\); a raw image is served with --format raw, or --mapfile MAP/},
      {args: ['info', raw, '--format', 'vdimg', '--mapfile', map], code: 2, re: /--mapfile goes with a raw image/},
    ]
    for (const c of cases) {
      const r = await runCli(c.args)
      assert.equal(r.code, c.code, `${c.args.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, c.re)
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`)
    }
  })

  it('a block device (a read-only loop device over the rescued file) is taken as raw by itself, read-only', async () => {
    const padded = path.join(t.dir, 'blockdev.img')
    fs.copyFileSync(raw, padded)
    fs.truncateSync(padded, SIZE)
    const lo = await run('losetup', ['-f', '--show', '-r', padded])
    const dev = lo.stdout.toString().trim()
    assert.match(dev, /^\/dev\/loop\d+$/, lo.stderr)
    try {
      const info = await runCli(['info', dev, '--json'])
      assert.equal(info.code, 0, info.stderr)
      const j = JSON.parse(info.stdout)
      assert.deepEqual([j.format, j.size, j.sectorSize, j.badAreaCount], ['raw', SIZE, 512, 0])
      const img = await openSource(describeSource(dev), {sync: true})
      try {
        assert.equal(img.descriptor?.kind, 'raw')
        assert.ok(img.readSync!(0, SIZE).data.equals(fs.readFileSync(padded)))
        // A device may take seconds for a failing sector: an event-loop body keeps its reads asynchronous.
        assert.equal(img.synchronous, true)
        assert.equal(img.immediate, false)
      } finally {
        await img.close()
      }
    } finally {
      await run('losetup', ['-d', dev])
    }
  })

  it('vdev info --mapfile describes it', async () => {
    const r = await runCli(['info', raw, '--mapfile', map, '--json'])
    assert.equal(r.code, 0, r.stderr)
    const j = JSON.parse(r.stdout)
    const m = readMapfile(map)
    assert.equal(j.format, 'raw')
    assert.equal(j.size, SIZE)
    assert.equal(j.mapfile, map)
    assert.equal(j.fileSize, fs.statSync(raw).size)
    assert.equal(j.badAreaCount, m.bad.count)
    assert.deepEqual(j.badAreas, [...m.bad].slice(0, 20))
  })

  describe('vdev serve --mapfile, against nbdkit file + ddrescue filter over the same file and map', function () {
    let ours: ChildProcess | undefined
    let theirs: ChildProcess | undefined
    after(async () => {
      await stopChild(ours)
      await stopChild(theirs)
    })

    it('same bytes and EIO at exactly the same sectors (serving threads)', async function () {
      if (!(await hasPythonNbd())) this.skip()
      const a = path.join(t.dir, 'ours.sock')
      const b = path.join(t.dir, 'theirs.sock')
      const {spawn} = await import('node:child_process')
      ours = spawn(process.execPath, [path.resolve(__dirname, '..', '..', '..', 'bin', 'run.js'), 'serve', raw, '--mapfile', map, '--listen', `unix:${a}`, '--json', '--threads', '2'], {stdio: ['ignore', 'pipe', 'pipe']})
      const ready = await new Promise<string>((resolve, reject) => {
        let out = ''
        ours!.stdout!.on('data', (d) => {
          out += d
          if (out.includes('\n')) resolve(out)
        })
        ours!.on('exit', (c) => reject(new Error(`vdev serve exited ${c}`)))
      })
      assert.equal(JSON.parse(ready).protocol, 'nbd')
      // nbdkit's file plugin is as long as the file: pad a copy to the map's size (the short tail is non-tried).
      const padded = path.join(t.dir, 'padded.img')
      fs.copyFileSync(raw, padded)
      fs.truncateSync(padded, SIZE)
      theirs = await startNbdkit(b, ['--filter=ddrescue', 'file', padded, `ddrescue-mapfile=${map}`])
      const py = `
import json, sys, nbd
a, b, size, sector = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ha, hb = nbd.NBD(), nbd.NBD()
ha.connect_uri(a); hb.connect_uri(b)
def rd(h, n, off):
    try: return ('ok', h.pread(n, off))
    except nbd.Error as e: return ('err', e.errnum)
out = {'sectors': 0, 'eio': 0, 'mismatch': []}
for off in range(0, size, sector):
    ra, rb = rd(ha, sector, off), rd(hb, sector, off)
    out['sectors'] += 1
    if ra != rb: out['mismatch'].append(off)
    elif ra[0] == 'err': out['eio'] += 1
print(json.dumps(out))
`
      const r = await run(PYTHON, ['-c', py, `nbd+unix:///?socket=${a}`, `nbd+unix:///?socket=${b}`, String(SIZE), String(SECTOR)], {timeout: 240_000})
      const res = JSON.parse(r.stdout) as {sectors: number; eio: number; mismatch: number[]}
      assert.deepEqual(res.mismatch, [])
      let bad = 0
      for (let off = 0; off < SIZE; off += SECTOR) if (badSector(off)) bad++
      assert.equal(res.eio, bad)
      assert.ok(bad > TAIL / SECTOR)
      ours.kill('SIGTERM')
      const closing = await new Promise<string>((resolve) => {
        let err = ''
        ours!.stderr!.on('data', (d) => (err += d))
        ours!.on('exit', () => resolve(err))
      })
      ours = undefined
      // Its closing line sums what the serving threads served: one read per sector, and the bad ones.
      const m = /served (\d+) reads, (\d+) bytes, (\d+) errors \((\d+) touching bad areas\)/.exec(closing)
      assert.ok(m, closing)
      assert.ok(Number(m[1]) >= SIZE / SECTOR, closing)
      assert.equal(Number(m[4]), bad, closing)
    })
  })

  describe('vdev attach --mapfile (FUSE + loop on serving threads) and vdev list --json counters', function () {
    let sb: Sandbox
    before(() => (sb = new Sandbox('vdev-raw-attach-')))
    after(async () => {
      const left = await sb.teardown()
      assert.deepEqual(left, [], 'the test left these behind')
    })

    it('exact bytes and EIO at exactly the bad sectors; list counts the reads and the bad reads', async () => {
      const r = await sb.vdev(['attach', raw, '--mapfile', map, '--backend', 'fuse', '--json'])
      assert.equal(r.code, 0, r.stderr)
      const a = JSON.parse(r.stdout) as {id: string; device: string; pid: number}
      sb.trackPid(a.pid)
      const before = JSON.parse((await sb.vdev(['list', '--json'])).stdout)[0]
      assert.equal(before.format, 'raw')
      assert.equal(before.mapfile, map)
      let reads = 0
      let badReads = 0
      // Every 16th sector, one O_DIRECT read each (the kernel's own reads, e.g. udev's probes, come on top).
      for (let s = 0; s < SIZE / SECTOR; s += 16) {
        const got = await readSectors(a.device, s, 1)
        reads++
        if (badSector(s * SECTOR)) {
          badReads++
          assert.notEqual(got.code, 0, `sector ${s} should fail`)
          assert.match(got.stderr, /Input\/output error/)
        } else {
          assert.equal(got.code, 0, `sector ${s}: ${got.stderr}`)
          assert.ok(got.data.equals(medium.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s} differs`)
        }
      }
      assert.ok(badReads > 10)
      const after = JSON.parse((await sb.vdev(['list', '--json'])).stdout)[0]
      assert.ok(after.stats.reads - before.stats.reads >= reads, JSON.stringify([before.stats, after.stats]))
      // Reads of a bad sector with O_DIRECT reach the server once each; nothing else touches bad areas.
      assert.equal(after.stats.badReads - before.stats.badReads, badReads, JSON.stringify([before.stats, after.stats]))
      const d = await sb.vdev(['detach', a.id])
      assert.equal(d.code, 0, d.stderr)
      const log = fs.readFileSync(path.join(sb.stateDir, 'logs', `${a.id}.log`), 'utf8')
      assert.match(log, /serving .*rescued\.img \(raw, map .*rescued\.map\).*2 serving threads/)
      const closing = /served (\d+) reads, \d+ bytes, \d+ errors \((\d+) touching bad areas\)/.exec(log)
      assert.ok(closing && Number(closing[1]) >= after.stats.reads, log)
    })
  })
})

/**
 * `vdev serve`'s NBD server checked with real peers: libnbd's nbdinfo and nbdcopy, qemu-img over nbd://,
 * python3-libnbd, and nbdkit's ddrescue filter serving the same raw bytes and mapfile as the reference for
 * which sectors must fail. Images are real VDIMG files made by the real writer, and the raw file with its
 * mapfile served as it is (src/sources/raw.ts).
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {ChildProcess} from 'node:child_process'
import {BlockServer, type BadPolicy} from '../../src/core/blockserver'
import type {BlockSource} from '../../src/core/source'
import {openInput} from '../../src/format/input'
import {openImage} from '../../src/format/reader'
import {createImage} from '../../src/format/writer'
import {RawImage} from '../../src/sources/raw'
import {startNbdServer, type RunningNbdServer} from '../../src/serve/nbd'
import {
  makeFixture, run, hasTool, hasPythonNbd, startNbdkit, stopChild, isBadSector, PYTHON, SECTOR, ZERO_RUN,
  type Fixture,
} from './fixture'

interface Served {
  image: BlockSource
  running: RunningNbdServer
  uri: string
}

async function serve(file: string, opts: {badPolicy?: BadPolicy; unix?: string; threads?: number; mapfile?: string} = {}): Promise<Served> {
  const image = opts.mapfile ? RawImage.open(file, {mapfile: opts.mapfile}) : await openImage(file)
  const name = path.basename(file)
  const running = await startNbdServer(new BlockServer(image, {badPolicy: opts.badPolicy}), {
    listen: opts.unix ? {kind: 'unix', path: opts.unix} : {kind: 'tcp', host: '127.0.0.1', port: 0},
    exportName: name,
    threads: opts.threads ? {perConnection: opts.threads} : undefined,
  })
  if (opts.threads) assert.equal(running.threadsPerConnection, opts.threads)
  const a = running.address
  const uri = a.kind === 'unix' ? `nbd+unix:///${name}?socket=${a.path}` : `nbd://127.0.0.1:${a.port}/${name}`
  return {image, running, uri}
}

async function stop(s: Served | undefined): Promise<void> {
  if (!s) return
  await s.running.close()
  await s.image.close()
}

/** Reads both exports sector by sector and in random ranges; prints what differs as JSON. */
const COMPARE_PY = String.raw`
import json, random, sys, nbd
a, b, size, sector = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ha, hb = nbd.NBD(), nbd.NBD()
ha.connect_uri(a); hb.connect_uri(b)
def rd(h, n, off):
    try:
        return ('ok', h.pread(n, off))
    except nbd.Error as e:
        return ('err', e.errnum)
out = {'sectors': 0, 'eio': [], 'mismatch': [], 'ranges': 0, 'range_mismatch': []}
for off in range(0, size, sector):
    ra, rb = rd(ha, sector, off), rd(hb, sector, off)
    out['sectors'] += 1
    if ra != rb: out['mismatch'].append([off, ra[0], rb[0]])
    elif ra[0] == 'err': out['eio'].append([off, ra[1]])
rnd = random.Random(4)
for i in range(400):
    n = rnd.randrange(1, 129) * sector
    off = rnd.randrange(0, size // sector) * sector
    n = min(n, size - off)
    ra, rb = rd(ha, n, off), rd(hb, n, off)
    out['ranges'] += 1
    if ra != rb: out['range_mismatch'].append([off, n, ra[0], rb[0]])
print(json.dumps(out))
`

/** pread_structured over a range with a bad sector inside: the error chunk names the bad offset. */
const ERROR_OFFSET_PY = String.raw`
import json, sys, nbd
uri, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD(); h.connect_uri(uri)
seen = []
def chunk(user_data, subbuf, offset, status, error):
    seen.append({'offset': offset, 'len': len(subbuf), 'status': status, 'error': getattr(error, 'value', error)})
    return 0
try:
    h.pread_structured(n, off, lambda *a: chunk(None, *a))
    res = 'ok'
except nbd.Error as e:
    res = e.errnum
print(json.dumps({'result': res, 'chunks': seen, 'READ_ERROR': nbd.READ_ERROR}))
`

// Served on the main thread, and by serving threads (threads.ts) with their own image instances.
for (const threads of [0, 2]) {
  const mode = threads ? `${threads} serving threads per connection` : 'main thread'
  describe(`nbd server with real peers (nbdinfo, nbdcopy, qemu-img, libnbd, nbdkit ddrescue filter; ${mode})`, function () {
    this.timeout(120_000)
    let fx: Fixture
    let bad: Served | undefined
    let good: Served | undefined
    let nbdkit: ChildProcess | undefined

    before(async function () {
      for (const t of ['nbdinfo', 'nbdcopy', 'qemu-img', 'nbdkit'])
        if (!hasTool(t)) throw new Error(`${t} is not installed (scripts/install-deps.sh installs it)`)
      fx = await makeFixture()
      bad = await serve(fx.image, {threads})
      good = await serve(fx.goodImage, {unix: path.join(fx.dir, 'good.sock'), threads})
    })

    after(async () => {
      await stopChild(nbdkit)
      await stop(bad)
      await stop(good)
      fx?.cleanup()
    })

    it('nbdinfo sees the size, read-only, block sizes, export name and base:allocation', async () => {
      const r = await run('nbdinfo', ['--json', bad!.uri])
      const info = JSON.parse(r.stdout)
      const e = info.exports[0]
      assert.equal(e['export-name'], 'disk.vdimg')
      assert.equal(e['export-size'], fx.size)
      assert.equal(e.is_read_only, true)
      assert.equal(e.can_multi_conn, true)
      assert.equal(e.can_trim, false)
      assert.equal(e.can_zero, false)
      assert.equal(e.block_size_minimum, SECTOR)
      assert.equal(e.block_size_maximum, 32 * 1024 * 1024)
      assert.ok(e.contexts.includes('base:allocation'))
      assert.equal(info['protocol'], 'newstyle-fixed')
      assert.equal(info.structured, true)
    })

    it('nbdinfo --list lists the export; the empty name selects it too', async () => {
      const list = await run('nbdinfo', ['--list', '--json', bad!.uri])
      assert.deepEqual(JSON.parse(list.stdout).exports.map((x: {'export-name': string}) => x['export-name']), ['disk.vdimg'])
      const a = bad!.running.address as {port: number}
      const dflt = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${a.port}`])
      assert.equal(Number(dflt.stdout.trim()), fx.size)
      const wrong = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${a.port}/nope`], {allowFail: true})
      assert.notEqual(wrong.code, 0)
    })

    it('nbdinfo --map: the zero run is a hole that reads as zeros; bad areas are never claimed as zeros', async () => {
      const r = await run('nbdinfo', ['--map', '--json', bad!.uri])
      const map: Array<{offset: number; length: number; type: number}> = JSON.parse(r.stdout)
      assert.equal(map.reduce((s, m) => s + m.length, 0), fx.size)
      const zero = map.filter((m) => m.type === 3)
      assert.deepEqual(zero.map((m) => [m.offset, m.length]), [[ZERO_RUN.offset, ZERO_RUN.length]])
      for (const b of fx.bad) {
        const m = map.find((x) => x.offset <= b.offset && b.offset < x.offset + x.length)!
        assert.equal(m.type, 0, `bad area at ${b.offset} reported as type ${m.type}`)
      }
    })

    it('nbdcopy (4 connections) of a fully readable image equals the source (qemu-img compare)', async () => {
      const out = path.join(fx.dir, 'copy.raw')
      await run('nbdcopy', ['--connections=4', good!.uri, out])
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', fx.goodRaw, out], {allowFail: true})
      assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr)
      assert.ok(fs.readFileSync(out).equals(fs.readFileSync(fx.goodRaw)))
    })

    it('an image whose size is not a whole number of sectors: the exact size, minimum block size 1, every byte readable (nbdinfo, nbdcopy, qemu-img compare)', async () => {
      const size = 3 * 1024 * 1024 + 1000
      const data = crypto.randomBytes(size)
      const raw = path.join(fx.dir, 'odd.raw')
      const image = path.join(fx.dir, 'odd.vdimg')
      fs.writeFileSync(raw, data)
      const input = openInput(raw)
      try {
        await createImage(input, image, {chunkSize: 64 * 1024, threads: 1})
      } finally {
        await input.close()
      }
      const s = await serve(image, {threads})
      try {
        const e = JSON.parse((await run('nbdinfo', ['--json', s.uri])).stdout).exports[0]
        assert.equal(e['export-size'], size)
        assert.equal(e.block_size_minimum, 1)
        const out = path.join(fx.dir, 'odd-copy.raw')
        await run('nbdcopy', [s.uri, out])
        assert.ok(fs.readFileSync(out).equals(data))
        // qemu rounds both up to 512 bytes with zeros; with a minimum block of 512 it aborted on the last extent.
        const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.uri, raw], {allowFail: true})
        assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr)
      } finally {
        await stop(s)
      }
    })

    it('nbdcopy of an image with bad areas fails with an I/O error', async () => {
      const r = await run('nbdcopy', [bad!.uri, path.join(fx.dir, 'bad-copy.raw')], {allowFail: true})
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /Input\/output error/)
    })

    it('qemu-img reads over nbd://: info, compare with the raw source, map', async () => {
      const a = good!.running.address as {path: string}
      const uri = `nbd+unix:///good.vdimg?socket=${a.path}`
      const info = JSON.parse((await run('qemu-img', ['info', '--output=json', uri])).stdout)
      assert.equal(info['virtual-size'], fx.size)
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', fx.goodRaw, uri], {allowFail: true})
      assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr)
      const map: Array<{start: number; length: number; zero: boolean; data: boolean}> = JSON.parse(
        (await run('qemu-img', ['map', '--output=json', '-f', 'raw', uri])).stdout,
      )
      const zeros = map.filter((m) => m.zero && !m.data)
      assert.deepEqual(zeros.map((m) => [m.start, m.length]), [[ZERO_RUN.offset, ZERO_RUN.length]])
    })

    it('sector by sector and in 400 random ranges: same bytes as nbdkit --filter=ddrescue, EIO exactly where it fails', async function () {
      if (!(await hasPythonNbd())) this.skip()
      const sock = path.join(fx.dir, 'nbdkit.sock')
      nbdkit = await startNbdkit(sock, ['--filter=ddrescue', 'file', fx.raw, `ddrescue-mapfile=${fx.mapfile}`])
      const r = await run(PYTHON, ['-c', COMPARE_PY, bad!.uri, `nbd+unix:///?socket=${sock}`, String(fx.size), String(SECTOR)], {timeout: 100_000})
      const res = JSON.parse(r.stdout)
      assert.equal(res.sectors, fx.size / SECTOR)
      assert.deepEqual(res.mismatch, [])
      assert.deepEqual(res.range_mismatch, [])
      const expected = []
      for (let off = 0; off < fx.size; off += SECTOR) if (isBadSector(off)) expected.push([off, 5])
      assert.deepEqual(res.eio, expected)
      assert.ok(res.eio.length > 100, 'the fixture has bad sectors of every ddrescue status')
    })

    it('a raw file with its ddrescue mapfile, served as it is: the same bytes and EIOs as nbdkit --filter=ddrescue', async function () {
      if (!(await hasPythonNbd())) this.skip()
      const sock = path.join(fx.dir, 'nbdkit-raw.sock')
      const ref = await startNbdkit(sock, ['--filter=ddrescue', 'file', fx.raw, `ddrescue-mapfile=${fx.mapfile}`])
      const raw = await serve(fx.raw, {mapfile: fx.mapfile, unix: path.join(fx.dir, 'raw.sock'), threads})
      try {
        const r = await run(PYTHON, ['-c', COMPARE_PY, raw.uri, `nbd+unix:///?socket=${sock}`, String(fx.size), String(SECTOR)], {timeout: 100_000})
        const res = JSON.parse(r.stdout)
        assert.equal(res.sectors, fx.size / SECTOR)
        assert.deepEqual(res.mismatch, [])
        assert.deepEqual(res.range_mismatch, [])
        const expected = []
        for (let off = 0; off < fx.size; off += SECTOR) if (isBadSector(off)) expected.push([off, 5])
        assert.deepEqual(res.eio, expected)
        if (threads) assert.ok(raw.running.nbd.threads!.stats.connections >= 1)
        // What the threads served is in the server's stats: one read per sector, each bad one counted.
        assert.ok(raw.running.nbd.server.stats.reads >= fx.size / SECTOR)
        assert.ok(raw.running.nbd.server.stats.badReads >= expected.length)
      } finally {
        await stop(raw)
        await stopChild(ref)
      }
    })

    it('a structured read across a bad sector reports NBD_REPLY_TYPE_ERROR_OFFSET at that sector', async function () {
      if (!(await hasPythonNbd())) this.skip()
      const b = fx.bad[0]
      const off = b.offset - 4 * SECTOR
      const r = await run(PYTHON, ['-c', ERROR_OFFSET_PY, bad!.uri, String(off), String(16 * SECTOR)])
      const res = JSON.parse(r.stdout)
      assert.equal(res.result, 5)
      const errors = res.chunks.filter((c: {status: number}) => c.status === res.READ_ERROR)
      assert.equal(errors.length, 1)
      assert.equal(errors[0].offset, b.offset)
      assert.equal(errors[0].error, 5)
    })

    it('--bad-policy zero: bad areas read as zeros and are reported as holes', async () => {
      const z = await serve(fx.image, {badPolicy: 'zero', unix: path.join(fx.dir, 'zero.sock'), threads})
      try {
        const out = path.join(fx.dir, 'zero-copy.raw')
        await run('nbdcopy', [z.uri, out])
        const expected = fs.readFileSync(fx.raw)
        for (const b of fx.bad) expected.fill(0, b.offset, b.offset + b.length)
        assert.ok(fs.readFileSync(out).equals(expected))
        const map: Array<{offset: number; length: number; type: number}> = JSON.parse((await run('nbdinfo', ['--map', '--json', z.uri])).stdout)
        for (const b of fx.bad) {
          const m = map.find((x) => x.offset <= b.offset && b.offset < x.offset + x.length)!
          assert.equal(m.type, 3)
        }
      } finally {
        await stop(z)
      }
    })

    if (threads) {
      it('(the peers above were served by the threads)', () => {
        for (const srv of [bad!, good!]) {
          const st = srv.running.nbd.threads!.stats
          assert.ok(st.connections >= 3, `${st.connections} connections handed to the threads`)
          assert.equal(st.refused, 0)
        }
      })
    }
  })
}

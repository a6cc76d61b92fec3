/**
 * The kernel NBD backend against the real nbd driver (runs in the test VM: docs/vm-harness.md). A .vdimg made
 * by the real writer from a partitioned raw disk with bad areas is attached through the backend; the kernel's
 * view of it is checked with real tools (blockdev, dd with O_DIRECT, GNU ddrescue), never through our code.
 */
import {strict as assert} from 'node:assert'
import {spawn} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {createInterface} from 'node:readline'
import {backend} from '../../backends/linux/nbd'
import {freeNbd, nbdState} from '../../backends/linux/nbd/sysfs'
import type {AttachedDevice} from '../../src/core/backend'
import {BlockServer} from '../../src/core/blockserver'
import {readMapfile} from '../../src/format/mapfile'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {RawImage} from '../../src/sources/raw'
import {pollMicroseconds, threadCount} from '../../src/threads/config'
import type {AttachServerInfo} from './attach-server'
import {BAD, DISK_SIZE, PARTITIONS, SECTOR, ddSectors, isBadSector, DECODED_AHEAD, makeFixture, readSequentially, run, type DiskFixture} from './disk-fixture'
import {logOf} from '../../src/lifecycle/registry'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const connectedNbd = (): string[] =>
  fs.readdirSync('/sys/block').filter((n) => /^nbd\d+$/.test(n) && fs.existsSync(`/sys/block/${n}/pid`))
/** What the attach daemon gives the backend: its declared serving threads (src/threads/config.ts). */
const attachContext = (image: string, dir: string, log: (l: string) => void) => ({
  id: 'vdev-test',
  image,
  runDir: dir,
  log,
  threads: threadCount(backend.name, backend.threadModel),
  pollMicroseconds: pollMicroseconds(backend.name, backend.threadModel),
})

describe('kernel NBD backend (real kernel)', function () {
  this.timeout(600_000)
  let fx: DiskFixture
  let image: VdimgImage
  let server: BlockServer
  let attached: AttachedDevice | undefined
  const log: string[] = []

  before(async () => {
    assert.deepEqual(connectedNbd(), [], 'nbd devices connected before the suite')
    fx = await makeFixture()
    image = await openImage(fx.image)
    server = new BlockServer(image)
    attached = await backend.attach(server, attachContext(fx.image, fx.dir, (l) => log.push(l)))
  })

  after(async () => {
    try {
      await attached?.detach()
    } finally {
      await image?.close()
      fx?.cleanup()
    }
  })

  it('probes available on a kernel with the nbd module, as root', async () => {
    const p = await backend.probe()
    assert.ok(p.available, p.available ? '' : p.reason)
  })

  it('is a read-only /dev/nbdN of the image size and sector size', async () => {
    const dev = attached!.device
    assert.match(dev, /^\/dev\/nbd\d+$/)
    assert.equal((await run('blockdev', ['--getro', dev])).stdout.toString().trim(), '1')
    assert.equal((await run('blockdev', ['--getsize64', dev])).stdout.toString().trim(), String(DISK_SIZE))
    assert.equal((await run('blockdev', ['--getss', dev])).stdout.toString().trim(), String(SECTOR))
    const w = await run('dd', ['if=/dev/zero', `of=${dev}`, 'bs=512', 'count=1', 'oflag=direct', 'status=none'])
    assert.notEqual(w.code, 0)
    assert.match(w.stderr, /Operation not permitted|Read-only file system|Permission denied/)
    // The kernel records which thread serves it.
    assert.ok(nbdState(Number(/\d+$/.exec(dev)![0])).pid! > 0)
    // The kernel's requests are served by the backend's serving threads (src/serve/nbd/threads.ts).
    assert.ok(threadCount(backend.name, backend.threadModel) >= 2)
    assert.ok(log.some((l) => /\d+ serving threads$/.test(l)), log.join('\n'))
  })

  it('shows the partitions of the image', async () => {
    const dev = attached!.device
    assert.deepEqual(attached!.partitions, [`${dev}p1`, `${dev}p2`])
    for (const [i, p] of PARTITIONS.entries()) {
      const size = await run('blockdev', ['--getsize64', `${dev}p${i + 1}`])
      assert.equal(size.stdout.toString().trim(), String(p.size * SECTOR))
    }
  })

  it('gives GNU ddrescue the image back, and the same bad areas as the mapfile', async () => {
    const out = path.join(fx.dir, 'rescued.raw')
    const map = path.join(fx.dir, 'rescued.map')
    const r = await run('ddrescue', ['-d', '-b', String(SECTOR), '-r', '0', attached!.device, out, map], {timeoutMs: 300_000})
    assert.equal(r.code, 0, r.stderr)
    const got = readMapfile(map).bad.intersect(0, DISK_SIZE).map((b) => [b.offset, b.length])
    assert.deepEqual(got, BAD.map((b) => [b.offset, b.length]))
    const rescued = fs.readFileSync(out)
    let at = 0
    for (const b of [...BAD, {offset: DISK_SIZE, length: 0}]) {
      assert.ok(rescued.subarray(at, b.offset).equals(fx.data.subarray(at, b.offset)), `bytes differ in [${at}, ${b.offset})`)
      at = b.offset + b.length
    }
  })

  it('fails exactly the unreadable sectors with EIO; their neighbours read', async () => {
    const dev = attached!.device
    for (const b of BAD) {
      const first = b.offset / SECTOR
      const last = (b.offset + b.length) / SECTOR - 1
      for (const s of [first, last]) {
        const r = await ddSectors(dev, s, 1)
        assert.equal(r.data, null, `sector ${s} read`)
        assert.match(r.stderr, /Input\/output error/)
      }
      for (const s of [first - 1, last + 1]) {
        if (s < 0 || s >= DISK_SIZE / SECTOR) continue
        assert.equal(isBadSector(s), false)
        const r = await ddSectors(dev, s, 1)
        assert.ok(r.data?.equals(fx.data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s}: ${r.stderr}`)
      }
    }
  })

  it('a raw file with its ddrescue mapfile on serving threads: its bytes, EIO exactly at the bad sectors', async () => {
    const raw = RawImage.open(fx.raw, {mapfile: fx.mapfile})
    const rawServer = new BlockServer(raw)
    const rawLog: string[] = []
    let dev: AttachedDevice | undefined
    try {
      dev = await backend.attach(rawServer, attachContext(fx.raw, fx.dir, (l) => rawLog.push(l)))
      assert.ok(rawLog.some((l) => /\d+ serving threads$/.test(l)), rawLog.join('\n'))
      assert.deepEqual(dev.partitions, [`${dev.device}p1`, `${dev.device}p2`])
      for (const b of BAD) {
        const first = b.offset / SECTOR
        const last = (b.offset + b.length) / SECTOR - 1
        for (const s of [first, last]) assert.equal((await ddSectors(dev.device, s, 1)).data, null, `sector ${s} read`)
        for (const s of [first - 1, last + 1]) {
          if (s < 0 || s >= DISK_SIZE / SECTOR) continue
          const r = await ddSectors(dev.device, s, 1)
          assert.ok(r.data?.equals(fx.data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s}: ${r.stderr}`)
        }
      }
      // The first partition up to its bad sector, in one read.
      const p = PARTITIONS[0].start
      const n = BAD[0].offset / SECTOR - p
      const r = await ddSectors(dev.device, p, n)
      assert.ok(r.data?.equals(fx.data.subarray(p * SECTOR, (p + n) * SECTOR)), r.stderr)
    } finally {
      await dev?.detach()
      await raw.close()
    }
    const st = rawServer.stats
    assert.ok(st.reads > 0 && st.badReads >= 2 * BAD.length, JSON.stringify(st))
    assert.ok(rawLog.some((l) => / on serving threads$/.test(l)), rawLog.join('\n'))
  })

  it('does not hang readers when the server is killed; the kernel releases the device', async () => {
    const server = spawn(process.execPath, [path.join(__dirname, 'attach-server.js'), 'nbd', fx.image], {stdio: ['ignore', 'pipe', 'pipe']})
    let stderr = ''
    server.stderr.on('data', (b: Buffer) => (stderr += b.toString()))
    try {
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({input: server.stdout}).once('line', resolve)
        server.once('exit', (code) => reject(new Error(`server exited (${code}): ${stderr}`)))
      })
      const info = JSON.parse(line) as AttachServerInfo
      const index = Number(/\d+$/.exec(info.device)![0])
      assert.notEqual(info.device, attached!.device)
      // Reads the first MiB again and again until a read fails or comes back short (a released nbd device
      // stays as a node of size 0, where dd succeeds with nothing), then exits 1.
      const loop = 'while [ "$(dd if="$1" bs=64K count=16 iflag=direct status=none | wc -c)" = 1048576 ]; do :; done; exit 1'
      const reader = run('sh', ['-c', loop, 'reader', info.device], {timeoutMs: 60_000})
      await new Promise((r) => setTimeout(r, 1000))
      server.kill('SIGKILL')
      const started = Date.now()
      const res = await reader
      assert.equal(res.signal, null, `the reader hung for ${(Date.now() - started) / 1000}s and was killed`)
      assert.notEqual(res.code, 0)
      for (let i = 0; i < 100 && nbdState(index).pid !== undefined; i++) await new Promise((r) => setTimeout(r, 50))
      await backend.cleanup(info.state, () => undefined)
      const s = nbdState(index)
      assert.equal(s.pid, undefined, 'still connected after the server died')
      assert.equal(s.sizeBytes, 0)
    } finally {
      server.kill('SIGKILL')
    }
  })

  it('a server stopped with SIGTERM detaches cleanly', async () => {
    const server = spawn(process.execPath, [path.join(__dirname, 'attach-server.js'), 'nbd', fx.image], {stdio: ['ignore', 'pipe', 'pipe']})
    try {
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({input: server.stdout}).once('line', resolve)
        server.once('exit', (code) => reject(new Error(`server exited (${code})`)))
      })
      const info = JSON.parse(line) as AttachServerInfo
      const index = Number(/\d+$/.exec(info.device)![0])
      const r = await ddSectors(info.device, 0, 8)
      assert.ok(r.data?.equals(fx.data.subarray(0, 8 * SECTOR)))
      const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)))
      server.kill('SIGTERM')
      assert.equal(await exited, 0)
      const s = nbdState(index)
      assert.equal(s.pid, undefined)
      assert.equal(s.sizeBytes, 0)
    } finally {
      server.kill('SIGKILL')
    }
  })

  it('vdev attach --backend nbd / vdev detach (once the lifecycle commands exist): read-ahead set, chunks decoded ahead', async function () {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'src', 'commands', 'attach.js'))) this.skip()
    const bin = path.join(ROOT, 'bin', 'run.js')
    const a = await run(process.execPath, [bin, 'attach', fx.image, '--backend', 'nbd', '--json'], {timeoutMs: 120_000})
    assert.equal(a.code, 0, a.stderr)
    const info = JSON.parse(a.stdout.toString()) as {id: string; device: string; backend: string; readOnly: boolean; partitions: string[]}
    try {
      assert.equal(info.backend, 'nbd')
      assert.match(info.device, /^\/dev\/nbd\d+$/)
      assert.equal(info.partitions.length, 2)
      assert.equal((await run('blockdev', ['--getro', info.device])).stdout.toString().trim(), '1')
      // Sectors 2040-2047 lie just before the first bad sector (2055); 2048-2055 would include it.
      const r = await ddSectors(info.device, 2040, 8)
      assert.ok(r.data?.equals(fx.data.subarray(2040 * SECTOR, 2048 * SECTOR)), r.stderr)
      const bad = await ddSectors(info.device, BAD[0].offset / SECTOR, 1)
      assert.equal(bad.data, null)
      // The backend's read-ahead, and decode-ahead on the connection's threads: the idle one decodes ahead.
      assert.equal(Number(fs.readFileSync(`/sys/block/${path.basename(info.device)}/queue/read_ahead_kb`, 'utf8')), backend.readAheadKiB)
      await readSequentially(info.device, fx.data)
    } finally {
      const d = await run(process.execPath, [bin, 'detach', info.device], {timeoutMs: 120_000})
      // Whatever happened, leave no device behind for the tests after this one.
      if (d.code !== 0) await run(process.execPath, [bin, 'detach', '--force', info.device], {timeoutMs: 120_000})
      assert.equal(d.code, 0, d.stderr)
    }
    const index = Number(/\d+$/.exec(info.device)![0])
    assert.equal(nbdState(index).pid, undefined)
    assert.match(fs.readFileSync(logOf(info.id), 'utf8'), DECODED_AHEAD)
  })

  it('detach leaves no connected nbd device (pid gone, size 0)', async () => {
    const dev = attached!.device
    const index = Number(/\d+$/.exec(dev)![0])
    await attached!.detach()
    attached = undefined
    const s = nbdState(index)
    assert.equal(s.pid, undefined)
    assert.equal(s.sizeBytes, 0)
    assert.deepEqual(connectedNbd(), [])
    assert.ok(freeNbd().some((f) => f.index === index))
    assert.ok(log.some((l) => l.includes(`${dev} disconnected`)), log.join('\n'))
    // Everything above was read through the serving threads, and counted in the server's stats.
    const st = server.stats
    assert.ok(st.reads > 100, JSON.stringify(st))
    assert.ok(st.badReads >= 2 * BAD.length, JSON.stringify(st))
    const served = log.map((l) => /served (\d+) reads, .* on serving threads$/.exec(l)).find(Boolean)
    assert.equal(Number(served?.[1]), st.reads, log.join('\n'))
  })
})

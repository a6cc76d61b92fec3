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
import type {AttachServerInfo} from './attach-server'
import {BAD, DISK_SIZE, PARTITIONS, SECTOR, ddSectors, isBadSector, makeFixture, run, type DiskFixture} from './disk-fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const connectedNbd = (): string[] =>
  fs.readdirSync('/sys/block').filter((n) => /^nbd\d+$/.test(n) && fs.existsSync(`/sys/block/${n}/pid`))

describe('kernel NBD backend (real kernel)', function () {
  this.timeout(600_000)
  let fx: DiskFixture
  let image: VdimgImage
  let attached: AttachedDevice | undefined
  const log: string[] = []

  before(async () => {
    assert.deepEqual(connectedNbd(), [], 'nbd devices connected before the suite')
    fx = await makeFixture()
    image = await openImage(fx.image)
    const ctx = {id: 'vdev-test', image: fx.image, runDir: fx.dir, log: (l: string) => log.push(l)}
    attached = await backend.attach(new BlockServer(image), ctx)
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
    // A VDIMG image: the kernel's requests are served by serving threads (src/serve/nbd/threads.ts).
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

  it('vdev attach --backend nbd / vdev detach (once the lifecycle commands exist)', async function () {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'src', 'commands', 'attach.js'))) this.skip()
    const bin = path.join(ROOT, 'bin', 'run.js')
    const a = await run(process.execPath, [bin, 'attach', fx.image, '--backend', 'nbd', '--json'], {timeoutMs: 120_000})
    assert.equal(a.code, 0, a.stderr)
    const info = JSON.parse(a.stdout.toString()) as {device: string; backend: string; readOnly: boolean; partitions: string[]}
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
    } finally {
      const d = await run(process.execPath, [bin, 'detach', info.device], {timeoutMs: 120_000})
      // Whatever happened, leave no device behind for the tests after this one.
      if (d.code !== 0) await run(process.execPath, [bin, 'detach', '--force', info.device], {timeoutMs: 120_000})
      assert.equal(d.code, 0, d.stderr)
    }
    const index = Number(/\d+$/.exec(info.device)![0])
    assert.equal(nbdState(index).pid, undefined)
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
    // Everything above was read through the serving threads.
    const served = log.map((l) => /serving threads served (\d+) reads/.exec(l)).find(Boolean)
    assert.ok(served && Number(served[1]) > 100, log.join('\n'))
  })
})

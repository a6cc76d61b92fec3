/**
 * `vdev attach --backend iscsi` in the test VM (docs/vm-harness.md): the CLI, with its registry in a temp
 * dir, starts vdev's iSCSI target in the attach daemon and logs the Linux kernel's initiator (iscsi_tcp +
 * sd) in with iscsistart → /dev/sdX. Checked with real tools: read-only, the image size, both partitions,
 * exact bytes with O_DIRECT, EIO exactly at the unreadable sectors, `vdev list --json` stats, a busy device
 * refused, `vdev detach` leaving no session and no disk (logged out through iscsiadm and an iscsid started
 * for it), a raw image + ddrescue mapfile, and `vdev detach --force` after the server was killed.
 */
import {strict as assert} from 'node:assert'
import {spawn} from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {backend} from '../../backends/linux/iscsi'
import {listSessions} from '../../backends/linux/iscsi/sysfs'
import {BAD, DISK_SIZE, PARTITIONS, SECTOR, ddSectors, isBadSector, makeFixture, run, type DiskFixture} from './disk-fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const BIN = path.join(ROOT, 'bin', 'run.js')
const OURS = 'iqn.2026-01.dev.vdev:attach.'

interface AttachJson {
  id: string
  device: string
  backend: string
  pid: number
  readOnly: boolean
  partitions: string[]
}

const vdev = (args: string[], timeoutMs = 180_000) => run(process.execPath, [BIN, ...args], {timeoutMs})
const ourSessions = () => listSessions().filter((s) => s.targetName.startsWith(OURS))

async function attach(args: string[]): Promise<AttachJson> {
  const a = await vdev(['attach', ...args, '--backend', 'iscsi', '--json'])
  assert.equal(a.code, 0, `vdev attach: ${a.stderr}`)
  return JSON.parse(a.stdout.toString()) as AttachJson
}

/** EIO at the first and last sector of every bad area; the sectors beside them read exact bytes. */
async function checkBadAreas(device: string, data: Buffer): Promise<void> {
  for (const b of BAD) {
    const first = b.offset / SECTOR
    const last = (b.offset + b.length) / SECTOR - 1
    for (const s of [first, last]) {
      const r = await ddSectors(device, s, 1)
      assert.equal(r.data, null, `sector ${s} read although unreadable`)
      // sd fails a MEDIUM ERROR as BLK_STS_MEDIUM, which reaches read(2) as ENODATA ("No data available").
      assert.match(r.stderr, /Input\/output error|No data available/)
    }
    for (const s of [first - 1, last + 1]) {
      if (s < 0 || s >= DISK_SIZE / SECTOR) continue
      assert.equal(isBadSector(s), false)
      const r = await ddSectors(device, s, 1)
      assert.ok(r.data?.equals(data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s}: ${r.stderr}`)
    }
  }
}

describe('vdev attach --backend iscsi (the kernel initiator, real kernel)', function () {
  this.timeout(600_000)
  let fx: DiskFixture
  let stateDir: string
  const savedStateDir = process.env.VDEV_STATE_DIR
  let info: AttachJson | undefined

  before(async function () {
    if (process.env.VDEV_IN_VM !== '1') this.skip()
    assert.deepEqual(ourSessions(), [], 'vdev iSCSI sessions before the suite')
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-state-'))
    process.env.VDEV_STATE_DIR = stateDir
    fx = await makeFixture()
    info = await attach([fx.image])
  })

  after(async () => {
    try {
      if (stateDir) await vdev(['detach', '--all', '--force'])
      // Whatever failed, leave no disk behind for the files after this one.
      for (const s of ourSessions()) for (const d of s.disks) fs.writeFileSync(`/sys/block/${d}/device/delete`, '1')
    } finally {
      if (savedStateDir === undefined) delete process.env.VDEV_STATE_DIR
      else process.env.VDEV_STATE_DIR = savedStateDir
      fx?.cleanup()
      if (stateDir) fs.rmSync(stateDir, {recursive: true, force: true})
    }
  })

  it('probes available (iscsi_tcp, crc32c, iscsistart, root)', async () => {
    const p = await backend.probe()
    assert.ok(p.available, p.available ? '' : p.reason)
  })

  it('is a read-only /dev/sdX of the image size, with both partitions', async () => {
    const dev = info!.device
    assert.equal(info!.backend, 'iscsi')
    assert.match(dev, /^\/dev\/sd[a-z]+$/)
    assert.equal(info!.readOnly, true)
    assert.deepEqual(info!.partitions, [`${dev}1`, `${dev}2`])
    assert.equal((await run('blockdev', ['--getro', dev])).stdout.toString().trim(), '1')
    assert.equal((await run('blockdev', ['--getsize64', dev])).stdout.toString().trim(), String(DISK_SIZE))
    for (const [i, p] of PARTITIONS.entries()) {
      const size = await run('blockdev', ['--getsize64', `${dev}${i + 1}`])
      assert.equal(size.stdout.toString().trim(), String(p.size * SECTOR))
    }
    const w = await run('dd', ['if=/dev/zero', `of=${dev}`, 'bs=512', 'count=1', 'oflag=direct', 'status=none'])
    assert.notEqual(w.code, 0)
    // One session, logged in, to this attach's own target.
    const s = ourSessions()
    assert.equal(s.length, 1)
    assert.equal(s[0].state, 'LOGGED_IN')
    assert.deepEqual(s[0].disks, [path.basename(dev)])
  })

  it('O_DIRECT reads: exact bytes in every 64 KiB run without an unreadable sector', async () => {
    const run64 = 128
    for (let s = 0; s < DISK_SIZE / SECTOR; s += run64) {
      let clean = true
      for (let k = s; k < s + run64; k++) if (isBadSector(k)) clean = false
      if (!clean) continue
      const r = await ddSectors(info!.device, s / run64, 1, run64 * SECTOR)
      assert.ok(r.data, `read at sector ${s} failed: ${r.stderr}`)
      assert.ok(r.data.equals(fx.data.subarray(s * SECTOR, (s + run64) * SECTOR)), `bytes differ at sector ${s}`)
    }
  })

  it('EIO exactly at the unreadable sectors; the sectors beside them read exact bytes', async () => {
    await checkBadAreas(info!.device, fx.data)
  })

  it('vdev list --json shows it running, with what it served', async () => {
    // The daemon republishes its counters every 2 s; `list` also asks for fresh ones.
    await new Promise((r) => setTimeout(r, 2500))
    const l = await vdev(['list', '--json'])
    assert.equal(l.code, 0, l.stderr)
    const all = JSON.parse(l.stdout.toString()) as Array<{id: string; device: string; state: string; backend: string; stats?: {reads: number; bytes: number; errors: number; badReads: number}}>
    const d = all.find((x) => x.id === info!.id)
    assert.ok(d, l.stdout.toString())
    assert.equal(d.state, 'running')
    assert.equal(d.backend, 'iscsi')
    assert.equal(d.device, info!.device)
    assert.ok(d.stats && d.stats.reads > 100 && d.stats.badReads >= 2 * BAD.length && d.stats.errors >= 2 * BAD.length, JSON.stringify(d.stats))
  })

  it('vdev detach of an open device is refused (busy, exit 8)', async () => {
    const holder = spawn('sh', ['-c', 'exec 3<"$1"; echo open; exec sleep 60', 'holder', `${info!.device}1`], {stdio: ['ignore', 'pipe', 'ignore']})
    try {
      await new Promise((resolve) => holder.stdout.once('data', resolve))
      const d = await vdev(['detach', info!.device])
      assert.equal(d.code, 8, d.stderr)
      assert.ok(fs.existsSync(`/sys/block/${path.basename(info!.device)}`))
    } finally {
      holder.kill('SIGKILL')
      await new Promise((r) => holder.once('close', r))
    }
  })

  it('vdev detach logs the session out: no session, no disk, no registry entry', async () => {
    const disk = path.basename(info!.device)
    const d = await vdev(['detach', info!.device])
    assert.equal(d.code, 0, d.stderr)
    info = undefined
    assert.deepEqual(ourSessions(), [])
    assert.ok(!fs.existsSync(`/sys/block/${disk}`), `${disk} still exists`)
    assert.ok(!fs.existsSync(`/dev/${disk}`), `/dev/${disk} still exists`)
    const l = JSON.parse((await vdev(['list', '--json'])).stdout.toString()) as unknown[]
    assert.deepEqual(l, [])
  })

  it('a raw image with its ddrescue mapfile: exact bytes, EIO exactly at the bad sectors; detached clean', async () => {
    const raw = await attach([fx.raw, '--mapfile', fx.mapfile])
    try {
      assert.deepEqual(raw.partitions, [`${raw.device}1`, `${raw.device}2`])
      await checkBadAreas(raw.device, fx.data)
      // The first partition up to its bad sector, in one read.
      const p = PARTITIONS[0].start
      const n = BAD[0].offset / SECTOR - p
      const r = await ddSectors(raw.device, p, n)
      assert.ok(r.data?.equals(fx.data.subarray(p * SECTOR, (p + n) * SECTOR)), r.stderr)
    } finally {
      const d = await vdev(['detach', raw.device])
      assert.equal(d.code, 0, d.stderr)
    }
    assert.deepEqual(ourSessions(), [])
    assert.ok(!fs.existsSync(raw.device))
  })

  it('kill -9 of the server: vdev list says dead, vdev detach --force removes the session and the disk', async () => {
    const k = await attach([fx.image])
    const disk = path.basename(k.device)
    process.kill(k.pid, 'SIGKILL')
    for (let i = 0; i < 50; i++) {
      try {
        process.kill(k.pid, 0)
      } catch {
        break
      }
      await new Promise((r) => setTimeout(r, 100))
    }
    const l = JSON.parse((await vdev(['list', '--json'])).stdout.toString()) as Array<{id: string; state: string}>
    assert.equal(l.find((x) => x.id === k.id)?.state, 'dead')
    const d = await vdev(['detach', '--force', k.device])
    assert.equal(d.code, 0, d.stderr)
    assert.ok(!fs.existsSync(`/sys/block/${disk}`), `${disk} still exists after detach --force: ${d.stderr}`)
    assert.deepEqual(ourSessions(), [], `session left after detach --force: ${d.stderr}`)
  })
})

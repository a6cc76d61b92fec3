/**
 * Runs inside the test VM (docs/vm-harness.md): the Linux kernel's iSCSI initiator (iscsi_tcp + sd) logged
 * in with open-iscsi's `iscsistart -g 1` against `vdev serve --protocol iscsi` (its own process, serving
 * threads as the CLI starts them). The disk appears as /dev/sdX: read-only, the image's size, its two
 * partitions, exact bytes with O_DIRECT, EIO exactly at the unreadable sectors, and the kernel logging a
 * "critical medium error" at the first unreadable sector.
 */
import {strict as assert} from 'node:assert'
import {spawn, type ChildProcess} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BAD, DISK_SIZE, PARTITIONS, SECTOR, ddSectors, isBadSector, makeFixture, run, type DiskFixture} from './disk-fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const INITIATOR = 'iqn.2026-01.dev.vdev.test:vm'

/** The sd disk of the iSCSI session, once the kernel has scanned it. */
async function findDisk(timeoutMs: number): Promise<string | undefined> {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    for (const s of fs.existsSync('/sys/class/iscsi_session') ? fs.readdirSync('/sys/class/iscsi_session') : []) {
      const dev = path.join('/sys/class/iscsi_session', s, 'device')
      const stack = [dev]
      while (stack.length) {
        const d = stack.pop()!
        let entries: string[] = []
        try {
          entries = fs.readdirSync(d)
        } catch {
          continue
        }
        if (entries.includes('block')) {
          const blocks = fs.readdirSync(path.join(d, 'block'))
          if (blocks.length) return blocks[0]
        }
        for (const e of entries) if (/^(target|\d+:\d+:\d+:\d+$)/.test(e)) stack.push(path.join(d, e))
      }
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  return undefined
}

describe('iscsi: the Linux kernel initiator (iscsi_tcp + sd, iscsistart) against vdev serve', function () {
  this.timeout(600_000)
  let fx: DiskFixture
  let server: ChildProcess | undefined
  let serverErr = ''
  let ready: {target: string; listen: string}
  let disk: string | undefined

  before(async function () {
    if (process.env.VDEV_IN_VM !== '1') this.skip()
    fx = await makeFixture()
    server = spawn(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'serve', fx.image, '--protocol', 'iscsi', '--listen', '127.0.0.1:3260', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    server.stderr!.on('data', (d) => (serverErr += d))
    ready = await new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error(`no ready line: ${serverErr}`)), 120_000)
      server!.stdout!.on('data', (d) => {
        out += d
        if (out.includes('\n')) {
          clearTimeout(timer)
          resolve(JSON.parse(out.slice(0, out.indexOf('\n'))))
        }
      })
      server!.on('exit', (code) => reject(new Error(`vdev serve exited (${code}): ${serverErr}`)))
    })
    fs.mkdirSync('/run/lock/iscsi', {recursive: true})
    const login = await run('iscsistart', ['-i', INITIATOR, '-t', ready.target, '-g', '1', '-a', '127.0.0.1', '-p', '3260'], {timeoutMs: 120_000})
    assert.equal(login.code, 0, `iscsistart: ${login.stdout.toString()} ${login.stderr} / target: ${serverErr}`)
    disk = await findDisk(60_000)
    assert.ok(disk, `no sd disk appeared for the session; target log: ${serverErr}`)
  })

  after(async () => {
    // Take the disk away before the target stops (there is no iscsid here to log the session out).
    if (disk) fs.writeFileSync(`/sys/block/${disk}/device/delete`, '1')
    if (server && server.exitCode === null) {
      server.kill('SIGTERM')
      await new Promise((r) => server!.once('exit', r))
    }
    fx?.cleanup()
  })

  it('/dev/sdX is read-only, the image size, with its two partitions', async () => {
    // The partition scan follows the disk's appearance (sd probes asynchronously).
    const part1 = `/sys/block/${disk}/${disk}1`
    for (let i = 0; i < 150 && !fs.existsSync(part1); i++) await new Promise((r) => setTimeout(r, 200))
    assert.equal(fs.readFileSync(`/sys/block/${disk}/ro`, 'utf8').trim(), '1')
    assert.equal(Number(fs.readFileSync(`/sys/block/${disk}/size`, 'utf8')) * 512, DISK_SIZE)
    PARTITIONS.forEach((p, i) => {
      const part = `/sys/block/${disk}/${disk}${i + 1}`
      assert.ok(fs.existsSync(part), `${part} missing`)
      assert.equal(Number(fs.readFileSync(`${part}/start`, 'utf8')), p.start)
      assert.equal(Number(fs.readFileSync(`${part}/size`, 'utf8')), p.size)
    })
  })

  it('O_DIRECT reads: exact bytes in every 64 KiB run without an unreadable sector', async () => {
    const run64 = 128
    for (let s = 0; s < DISK_SIZE / SECTOR; s += run64) {
      let clean = true
      for (let k = s; k < s + run64; k++) if (isBadSector(k)) clean = false
      if (!clean) continue
      const r = await ddSectors(`/dev/${disk}`, s / run64, 1, run64 * SECTOR)
      assert.ok(r.data, `read at sector ${s} failed: ${r.stderr}`)
      assert.ok(r.data.equals(fx.data.subarray(s * SECTOR, (s + run64) * SECTOR)), `bytes differ at sector ${s}`)
    }
  })

  it('EIO exactly at unreadable sectors; the sectors next to them read exact bytes; the kernel logs a critical medium error', async () => {
    for (const b of BAD) {
      const first = b.offset / SECTOR
      const last = (b.offset + b.length) / SECTOR - 1
      for (const s of [first - 1, first, last, last + 1]) {
        if (s < 0 || s >= DISK_SIZE / SECTOR) continue
        const r = await ddSectors(`/dev/${disk}`, s, 1)
        if (isBadSector(s)) assert.equal(r.data, null, `sector ${s} read although unreadable`)
        else {
          assert.ok(r.data, `sector ${s} failed: ${r.stderr}`)
          assert.ok(r.data.equals(fx.data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s} differs`)
        }
      }
    }
    const dmesg = (await run('dmesg', [])).stdout.toString()
    const first = BAD[0].offset / SECTOR
    assert.match(dmesg, new RegExp(`critical medium error, dev ${disk}, sector ${first}\\b`), dmesg.split('\n').filter((l) => /sd|iscsi|medium/i.test(l)).slice(-20).join('\n'))
  })
})

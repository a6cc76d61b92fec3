/**
 * Runs inside the test VM (docs/vm-harness.md): the way a Linux system with open-iscsi installed logs in —
 * iscsid running, `iscsiadm -m discovery -t sendtargets` then `iscsiadm -m node … --login` — against
 * `vdev serve --protocol iscsi` (its own process). Discovery must list the target at the address the
 * initiator reached (portal group 1); the login must give /dev/sdX read-only, of the image's size, with its
 * partitions and exact bytes; `iscsiadm -m session` must show it; `--logout` must end the session and take
 * the disk away.
 *
 * The VM's / is the host's, read-only: /etc/iscsi (node records, iscsid.conf, the initiator name) is a
 * tmpfs for this file's time, holding a copy of the host's iscsid.conf and an initiator name of its own.
 */
import {strict as assert} from 'node:assert'
import {spawn, type ChildProcess} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {DISK_SIZE, PARTITIONS, SECTOR, ddSectors, isBadSector, makeFixture, run, type DiskFixture} from './disk-fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const INITIATOR = 'iqn.2026-01.dev.vdev.test:vm-iscsid'
const PORT = 3262
const PORTAL = `127.0.0.1:${PORT}`

/** open-iscsi's tools may signal their own process group as they exit: each runs in a session of its own. */
function tool(cmd: string, args: string[], timeoutMs = 120_000): Promise<{code: number | null; out: string}> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, {stdio: ['ignore', 'pipe', 'pipe'], detached: true})
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({code, out})
    })
    child.on('error', (e) => {
      clearTimeout(timer)
      resolve({code: -1, out: e.message})
    })
  })
}

/** The sd disk of the session whose targetname is `iqn`, once the kernel has scanned it. */
function diskOf(iqn: string): string | undefined {
  const root = '/sys/class/iscsi_session'
  for (const s of fs.existsSync(root) ? fs.readdirSync(root) : []) {
    let name = ''
    try {
      name = fs.readFileSync(path.join(root, s, 'targetname'), 'utf8').trim()
    } catch {
      continue
    }
    if (name !== iqn) continue
    const stack = [path.join(root, s, 'device')]
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
  return undefined
}

function sessionsOf(iqn: string): string[] {
  const root = '/sys/class/iscsi_session'
  return (fs.existsSync(root) ? fs.readdirSync(root) : []).filter((s) => {
    try {
      return fs.readFileSync(path.join(root, s, 'targetname'), 'utf8').trim() === iqn
    } catch {
      return false
    }
  })
}

async function until<T>(what: () => T | undefined | false, timeoutMs: number): Promise<T | undefined> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = what()
    if (v) return v
    if (Date.now() > end) return undefined
    await new Promise((r) => setTimeout(r, 200))
  }
}

describe('iscsi: open-iscsi as a system runs it (iscsid, iscsiadm discovery + login + logout) against vdev serve', function () {
  this.timeout(600_000)
  let fx: DiskFixture
  let server: ChildProcess | undefined
  let serverErr = ''
  let iscsid: ChildProcess | undefined
  let mounted = false
  let target = ''
  let disk: string | undefined

  before(async function () {
    if (process.env.VDEV_IN_VM !== '1') this.skip()
    fx = await makeFixture()
    server = spawn(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'serve', fx.image, '--protocol', 'iscsi', '--listen', PORTAL, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    server.stderr!.on('data', (d) => (serverErr += d))
    const ready: {target: string} = await new Promise((resolve, reject) => {
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
    target = ready.target
    // A writable /etc/iscsi of this test's own.
    const conf = fs.readFileSync('/etc/iscsi/iscsid.conf')
    assert.equal((await run('mount', ['-t', 'tmpfs', '-o', 'mode=0755', 'tmpfs', '/etc/iscsi'])).code, 0)
    mounted = true
    fs.writeFileSync('/etc/iscsi/iscsid.conf', conf)
    fs.writeFileSync('/etc/iscsi/initiatorname.iscsi', `InitiatorName=${INITIATOR}\n`, {mode: 0o600})
    fs.mkdirSync('/run/lock/iscsi', {recursive: true})
    iscsid = spawn('iscsid', ['-f'], {stdio: ['ignore', 'ignore', 'pipe'], detached: true})
    let iscsidErr = ''
    iscsid.stderr!.on('data', (d) => (iscsidErr += d))
    // iscsiadm answers once iscsid listens (21: no sessions is an answer; 20, "cannot connect to iscsid", is not).
    const end = Date.now() + 60_000
    for (;;) {
      const r = await tool('iscsiadm', ['-m', 'session'], 20_000)
      if (r.code === 0 || r.code === 21) break
      assert.ok(Date.now() < end, `iscsid did not answer: ${r.out} / ${iscsidErr}`)
      await new Promise((res) => setTimeout(res, 500))
    }
  })

  after(async () => {
    if (target && sessionsOf(target).length > 0) await tool('iscsiadm', ['-m', 'node', '-T', target, '-p', PORTAL, '--logout'], 60_000)
    if (target && sessionsOf(target).length > 0) {
      // Last resort: the disk goes, the kernel's session stays (only iscsid could end it).
      const d = diskOf(target)
      if (d) fs.writeFileSync(`/sys/block/${d}/device/delete`, '1')
    }
    if (iscsid && iscsid.exitCode === null) {
      iscsid.kill('SIGTERM')
      await Promise.race([new Promise((r) => iscsid!.once('exit', r)), new Promise((r) => setTimeout(r, 10_000))])
      if (iscsid.exitCode === null) iscsid.kill('SIGKILL')
    }
    if (mounted) await run('umount', ['-l', '/etc/iscsi'])
    if (server && server.exitCode === null) {
      server.kill('SIGTERM')
      await new Promise((r) => server!.once('exit', r))
    }
    fx?.cleanup()
  })

  it('discovery (SendTargets) lists the target at the portal the initiator reached, group 1', async () => {
    const r = await tool('iscsiadm', ['-m', 'discovery', '-t', 'sendtargets', '-p', PORTAL], 60_000)
    assert.equal(r.code, 0, `${r.out} / target: ${serverErr}`)
    assert.ok(r.out.split('\n').includes(`${PORTAL},1 ${target}`), r.out)
    assert.match(serverErr, /discovery session \d+ of "iqn\.2026-01\.dev\.vdev\.test:vm-iscsid"/)
  })

  it('iscsiadm --login: /dev/sdX read-only, the image size, its partitions, exact bytes; iscsiadm -m session shows it', async () => {
    const r = await tool('iscsiadm', ['-m', 'node', '-T', target, '-p', PORTAL, '--login'], 120_000)
    assert.equal(r.code, 0, `${r.out} / target: ${serverErr}`)
    disk = await until(() => diskOf(target), 60_000)
    assert.ok(disk, `no sd disk for the session; target log: ${serverErr}`)
    const part1 = `/sys/block/${disk}/${disk}1`
    await until(() => fs.existsSync(part1), 30_000)
    assert.equal(fs.readFileSync(`/sys/block/${disk}/ro`, 'utf8').trim(), '1')
    assert.equal(Number(fs.readFileSync(`/sys/block/${disk}/size`, 'utf8')) * 512, DISK_SIZE)
    PARTITIONS.forEach((p, i) => {
      const part = `/sys/block/${disk}/${disk}${i + 1}`
      assert.ok(fs.existsSync(part), `${part} missing`)
      assert.equal(Number(fs.readFileSync(`${part}/start`, 'utf8')), p.start)
    })
    // The first and last clean 64 KiB runs, byte for byte.
    const run64 = 128
    const runs = [] as number[]
    for (let s = 0; s < DISK_SIZE / SECTOR; s += run64) {
      let clean = true
      for (let k = s; k < s + run64; k++) if (isBadSector(k)) clean = false
      if (clean) runs.push(s)
    }
    for (const s of [runs[0], runs[runs.length - 1]]) {
      const d = await ddSectors(`/dev/${disk}`, s / run64, 1, run64 * SECTOR)
      assert.ok(d.data?.equals(fx.data.subarray(s * SECTOR, (s + run64) * SECTOR)), `bytes at sector ${s}: ${d.stderr}`)
    }
    const list = await tool('iscsiadm', ['-m', 'session'], 30_000)
    assert.equal(list.code, 0, list.out)
    assert.match(list.out, new RegExp(`tcp: \\[\\d+\\] ${PORTAL.replace(/\./g, '\\.')},1 ${target.replace(/\./g, '\\.')} \\(non-flash\\)`))
    assert.match(serverErr, /session \d+ of "iqn\.2026-01\.dev\.vdev\.test:vm-iscsid"/)
  })

  it('iscsiadm --logout ends the session and takes the disk away', async () => {
    const r = await tool('iscsiadm', ['-m', 'node', '-T', target, '-p', PORTAL, '--logout'], 60_000)
    assert.equal(r.code, 0, r.out)
    assert.ok(await until(() => sessionsOf(target).length === 0, 30_000), 'the kernel session is gone')
    assert.ok(!fs.existsSync(`/sys/block/${disk}`), `${disk} is gone`)
  })
})

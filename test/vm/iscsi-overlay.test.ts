/**
 * Runs inside the test VM (docs/vm-harness.md): the Linux kernel's iSCSI initiator (iscsi_tcp + sd, logged
 * in with open-iscsi's `iscsistart`) on a writable LUN — `vdev serve --protocol iscsi --overlay FILE`. The
 * disk is read-write; `mkfs.ext4` (which discards the disk first: UNMAP), files written, synced (SYNCHRONIZE
 * CACHE: the LUN says it has a write cache) and read back after the caches are dropped; then the server is
 * stopped and started again with the same overlay, a new session logs in, and the file system checks
 * clean and holds the files. The image file never changes.
 */
import {strict as assert} from 'node:assert'
import {spawn, type ChildProcess} from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {run} from './disk-fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const SIZE = 64 << 20

/** sd disks of iSCSI sessions (every session's, those deleted excluded). */
function disks(): string[] {
  const out: string[] = []
  for (const s of fs.existsSync('/sys/class/iscsi_session') ? fs.readdirSync('/sys/class/iscsi_session') : []) {
    const stack = [path.join('/sys/class/iscsi_session', s, 'device')]
    while (stack.length) {
      const d = stack.pop()!
      let entries: string[] = []
      try {
        entries = fs.readdirSync(d)
      } catch {
        continue
      }
      if (entries.includes('block')) out.push(...fs.readdirSync(path.join(d, 'block')))
      for (const e of entries) if (/^(target|\d+:\d+:\d+:\d+$)/.test(e)) stack.push(path.join(d, e))
    }
  }
  return out
}

async function newDisk(before: string[], timeoutMs: number): Promise<string | undefined> {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    const d = disks().find((x) => !before.includes(x))
    // The disk shows under the session before /sys/block/sdX exists, and has a size once sd has probed it.
    let size = 0
    try {
      if (d) size = Number(fs.readFileSync(`/sys/block/${d}/size`, 'utf8'))
    } catch {
      size = 0
    }
    if (d && size > 0) return d
    await new Promise((r) => setTimeout(r, 200))
  }
  return undefined
}

describe('iscsi: a writable LUN (--overlay) with the Linux kernel initiator', function () {
  this.timeout(900_000)
  let dir: string
  let base: string
  let baseSha: string
  let overlay: string
  let mnt: string
  let server: {child: ChildProcess; err: () => string; ready: {target: string}} | undefined
  let disk: string | undefined
  let mounted = false
  const files = new Map<string, string>()

  /** Serve on `port` and log in. (Each run on its own port: iscsistart refuses a second session to a portal whose first one, without iscsid here, is never logged out.) */
  const serve = async (port: number) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'serve', base, '--format', 'raw', '--protocol', 'iscsi', '--listen', `127.0.0.1:${port}`, '--overlay', overlay, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let err = ''
    child.stderr!.on('data', (d) => (err += d))
    const ready = await new Promise<{target: string}>((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error(`no ready line: ${err}`)), 120_000)
      child.stdout!.on('data', (d) => {
        out += d
        if (out.includes('\n')) {
          clearTimeout(timer)
          resolve(JSON.parse(out.slice(0, out.indexOf('\n'))))
        }
      })
      child.on('exit', (code) => reject(new Error(`vdev serve exited (${code}): ${err}`)))
    })
    server = {child, err: () => err, ready}
    const before = disks()
    fs.mkdirSync('/run/lock/iscsi', {recursive: true})
    const login = await run('iscsistart', ['-i', `iqn.2026-01.dev.vdev.test:vm-rw-${Date.now()}`, '-t', ready.target, '-g', '1', '-a', '127.0.0.1', '-p', String(port)], {timeoutMs: 120_000})
    assert.equal(login.code, 0, `iscsistart: ${login.stdout.toString()} ${login.stderr} / target: ${err}`)
    disk = await newDisk(before, 60_000)
    assert.ok(disk, `no sd disk appeared for the session; target log: ${err}`)
  }

  /** Unmount, delete the disk (no iscsid here to log the session out), stop the server; its closing line. */
  const mount = async (...args: string[]) => {
    const r = await run('mount', [...args, `/dev/${disk}`, mnt])
    assert.equal(r.code, 0, `mount ${args.join(' ')}: ${r.stderr}; ${(await run('dmesg', [])).stdout.toString().split('\n').slice(-15).join('\n')}`)
    mounted = true
  }
  const stop = async (): Promise<string> => {
    if (mounted) await run('umount', [mnt])
    mounted = false
    if (disk) fs.writeFileSync(`/sys/block/${disk}/device/delete`, '1')
    disk = undefined
    const s = server
    server = undefined
    if (!s || s.child.exitCode !== null) return s?.err() ?? ''
    s.child.kill('SIGTERM')
    await new Promise((r) => s.child.once('exit', r))
    return s.err()
  }

  before(async function () {
    if (process.env.VDEV_IN_VM !== '1') this.skip()
    dir = fs.mkdtempSync('/tmp/vdev-vm-iscsi-rw-')
    base = path.join(dir, 'base.raw')
    fs.writeFileSync(base, Buffer.alloc(SIZE))
    baseSha = crypto.createHash('sha256').update(fs.readFileSync(base)).digest('hex')
    overlay = path.join(dir, 'disk.vdovl')
    mnt = path.join(dir, 'mnt')
    fs.mkdirSync(mnt)
    await serve(3260)
  })

  after(async () => {
    await stop().catch(() => undefined)
    if (dir) fs.rmSync(dir, {recursive: true, force: true})
  })

  it('/dev/sdX is read-write; mkfs.ext4, files written and synced, read back after the caches are dropped', async () => {
    assert.equal(fs.readFileSync(`/sys/block/${disk}/ro`, 'utf8').trim(), '0')
    assert.equal(Number(fs.readFileSync(`/sys/block/${disk}/size`, 'utf8')) * 512, SIZE)
    const mkfs = await run('mkfs.ext4', ['-q', '-F', `/dev/${disk}`], {timeoutMs: 300_000})
    assert.equal(mkfs.code, 0, mkfs.stderr)
    await mount()
    fs.mkdirSync(path.join(mnt, 'dir'))
    for (const [name, size] of [
      ['big.bin', 3 << 20],
      ['dir/small.txt', 1000],
      ['dir/mid.bin', 200_000],
    ] as const) {
      const data = crypto.randomBytes(size)
      fs.writeFileSync(path.join(mnt, name), data)
      files.set(name, crypto.createHash('sha256').update(data).digest('hex'))
    }
    assert.equal((await run('sync', [])).code, 0)
    assert.equal((await run('umount', [mnt])).code, 0)
    mounted = false
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
    await mount('-o', 'ro')
    for (const [name, sha] of files) assert.equal(crypto.createHash('sha256').update(fs.readFileSync(path.join(mnt, name))).digest('hex'), sha, name)
  })

  it('after a restart with the same overlay (a new session) the file system checks clean and holds the files; the image never changed', async () => {
    const closing = await stop()
    // The kernel discarded (mkfs) and flushed (sync, journal commits) through the target.
    assert.match(closing, /\d+ writes \(\d+ bytes\), \d+ write-zeroes, [1-9]\d* trims, [1-9]\d* flushes, 0 failed/, closing)
    assert.equal(crypto.createHash('sha256').update(fs.readFileSync(base)).digest('hex'), baseSha)
    await serve(3261)
    const fsck = await run('e2fsck', ['-fn', `/dev/${disk}`], {timeoutMs: 300_000})
    assert.equal(fsck.code, 0, `${fsck.stdout.toString()} ${fsck.stderr}`)
    await mount('-o', 'ro')
    for (const [name, sha] of files) assert.equal(crypto.createHash('sha256').update(fs.readFileSync(path.join(mnt, name))).digest('hex'), sha, name)
  })
})

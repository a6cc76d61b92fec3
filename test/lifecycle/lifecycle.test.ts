/**
 * The lifecycle as users and scripts meet it: `vdev attach | list | detach | backends` as real processes
 * against the real kernel (FUSE + loop), with a private registry (VDEV_STATE_DIR). Output shapes, exit
 * codes and one-line errors; busy refusal; a server killed with SIGKILL (readers fail within seconds, the
 * device shows as dead, detach --force cleans up); --foreground with SIGTERM; a connection aborted under
 * a live server. Every test leaves no loop device, mount or process behind.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {BIN, prng} from '../helpers'
import {IS_ROOT, Sandbox, attach, readSectors, run} from '../fuse/fixtures'

function oneLineError(stderr: string, re?: RegExp): void {
  const lines = stderr.split('\n').filter(Boolean)
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`)
  assert.match(lines[0], /^vdev: /)
  assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace')
  if (re) assert.match(lines[0], re)
}

/** A small image with two bad areas, made by the real `vdev create`. */
async function makeImage(sb: Sandbox, name: string, seed: number, size = 4 << 20): Promise<{image: string; data: Buffer}> {
  const data = prng(seed, size)
  const raw = sb.p(`${name}.raw`)
  fs.writeFileSync(raw, data)
  fs.writeFileSync(sb.p(`${name}.map`), `# Mapfile\n0x0 +\n0x0 0x10000 +\n0x10000 0x200 -\n0x10200 0x${(size - 0x10200).toString(16)} +\n`)
  const image = sb.p(`${name}.vdimg`)
  const r = await sb.vdev(['create', raw, image, '--mapfile', sb.p(`${name}.map`)])
  assert.equal(r.code, 0, r.stderr)
  return {image, data}
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z')
  } catch {
    return false
  }
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) return false
    await new Promise((r) => setTimeout(r, 50))
  }
  return true
}

describe('vdev attach | list | detach | backends', function () {
  this.timeout(120_000)
  let sb: Sandbox | undefined
  const S = (): Sandbox => sb!

  beforeEach(function () {
    if (!IS_ROOT) this.skip() // FUSE mounts and loop devices need root
    sb = new Sandbox('vdev-life-')
  })
  afterEach(async function () {
    if (!sb) return
    const left = await sb.teardown()
    sb = undefined
    assert.deepEqual(left, [], 'the test left devices, mounts or processes behind')
  })

  it('backends (and its alias doctor) lists every backend with available/reason', async () => {
    const r = await S().vdev(['backends', '--json'])
    assert.equal(r.code, 0, r.stderr)
    const rows = JSON.parse(r.stdout) as Array<{name: string; available: boolean; reason: string}>
    assert.deepEqual(rows.map((x) => x.name).sort(), ['fuse', 'iscsi', 'macos-nfs', 'nbd', 'ublk', 'windows-iscsi'])
    const fuse = rows.find((x) => x.name === 'fuse')!
    assert.equal(fuse.available, true)
    for (const x of rows) if (!x.available) assert.ok(x.reason.length > 5, `${x.name} has a reason`)
    assert.equal(rows[0].available, true, 'available backends come first')
    const d = await S().vdev(['doctor', '--json'])
    assert.deepEqual(JSON.parse(d.stdout).map((x: {name: string}) => x.name), rows.map((x) => x.name))
    const human = await S().vdev(['backends'])
    assert.match(human.stdout, /^fuse\s+available\s+/m)
  })

  it('attach prints the device path only; --json has {id, device, backend, image, pid, readOnly, partitions}; list shows it', async () => {
    const a = await makeImage(S(), 'a', 1)
    const r = await S().vdev(['attach', a.image])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^\/dev\/loop\d+\n$/)
    assert.equal(r.stderr, '')
    const device = r.stdout.trim()

    const b = await makeImage(S(), 'b', 2)
    const j = await attach(S(), b.image)
    assert.deepEqual(Object.keys(j).sort(), ['backend', 'device', 'id', 'image', 'partitions', 'pid', 'readOnly'])
    assert.equal(j.backend, 'fuse')
    assert.equal(j.image, fs.realpathSync(b.image))
    assert.equal(j.readOnly, true)
    assert.deepEqual(j.partitions, [])
    assert.ok(pidAlive(j.pid), 'the server runs in the background')
    assert.match(j.id, /^vdev\d+$/)

    const l = await S().vdev(['list', '--json'])
    assert.equal(l.code, 0, l.stderr)
    const listed = JSON.parse(l.stdout) as Array<Record<string, unknown>>
    assert.deepEqual(listed.map((x) => [x.device, x.state, x.image]), [
      [device, 'running', fs.realpathSync(a.image)],
      [j.device, 'running', j.image],
    ])
    for (const x of listed) for (const k of ['id', 'device', 'backend', 'image', 'pid', 'readOnly', 'partitions', 'state']) assert.ok(k in x, k)
    const human = await S().vdev(['list'])
    assert.match(human.stdout, /^ID\s+DEVICE\s+STATE\s+BACKEND\s+PID/)
    assert.match(human.stdout, new RegExp(`^${j.id}\\s+${j.device}\\s+running\\s+fuse\\s+${j.pid}`, 'm'))

    // The bytes, and EIO at the bad sector.
    const ok = await readSectors(j.device, 0, 128)
    assert.equal(ok.code, 0, ok.stderr)
    assert.ok(ok.data.equals(b.data.subarray(0, 128 * 512)))
    const bad = await readSectors(j.device, 0x10000 / 512, 1)
    assert.notEqual(bad.code, 0)

    // Detach by image path and by id; then nothing is left.
    const d1 = await S().vdev(['detach', a.image])
    assert.equal(d1.code, 0, d1.stderr)
    assert.equal(d1.stdout, '')
    const d2 = await S().vdev(['detach', j.id, '--json'])
    assert.equal(d2.code, 0, d2.stderr)
    assert.deepEqual(JSON.parse(d2.stdout), {detached: [{id: j.id, device: j.device, image: j.image, how: 'stopped'}]})
    assert.equal(pidAlive(j.pid), false)
    const empty = await S().vdev(['list', '--json'])
    assert.deepEqual(JSON.parse(empty.stdout), [])
    assert.equal((await S().vdev(['list'])).stdout, 'no attached devices\n')
  })

  it('refuses to attach the same image twice, also under another path', async () => {
    const a = await makeImage(S(), 'a', 3)
    const j = await attach(S(), a.image)
    const again = await S().vdev(['attach', a.image])
    assert.equal(again.code, 6)
    oneLineError(again.stderr, new RegExp(`already attached as ${j.device} \\(${j.id}\\)`))
    fs.symlinkSync(a.image, S().p('link.vdimg'))
    fs.linkSync(a.image, S().p('hard.vdimg'))
    for (const other of [S().p('link.vdimg'), S().p('hard.vdimg')]) {
      const r = await S().vdev(['attach', other])
      assert.equal(r.code, 6, `${other}: ${r.stderr}`)
    }
    const d = await S().vdev(['detach', '--all'])
    assert.equal(d.code, 0, d.stderr)
  })

  it('refuses to detach a device a process holds open, unless --force; then its reads fail and the kernel frees it on close', async () => {
    const a = await makeImage(S(), 'a', 4)
    const j = await attach(S(), a.image)
    const holder = spawn('sh', ['-c', 'exec 3<"$1"; exec sleep 120', 'sh', j.device], {stdio: 'ignore'})
    S().trackPid(holder.pid)
    assert.ok(await waitFor(() => fs.readdirSync(`/proc/${holder.pid}/fd`).some((fd) => {
      try {
        return fs.readlinkSync(`/proc/${holder.pid}/fd/${fd}`) === j.device
      } catch {
        return false
      }
    }), 5000))
    const busy = await S().vdev(['detach', j.device])
    assert.equal(busy.code, 8)
    oneLineError(busy.stderr, new RegExp(`is busy: ${j.device} is open by process ${holder.pid} \\(sleep\\); use --force`))
    assert.ok(pidAlive(j.pid), 'still served after the refusal')

    const f = await S().vdev(['detach', j.device, '--force'])
    assert.equal(f.code, 0, f.stderr)
    assert.match(f.stderr, /was busy \(.*open by process.*\); detached anyway: .*frees it on their last close/)
    assert.equal(pidAlive(j.pid), false)
    const r = await readSectors(j.device, 0, 1)
    assert.notEqual(r.code, 0, 'reads of a force-detached device fail')
    holder.kill('SIGKILL')
    await new Promise((res) => holder.on('exit', res))
    assert.ok(await waitFor(() => !fs.existsSync(`/sys/block/${j.device.slice(5)}/loop/backing_file`), 5000), 'freed on last close')
    assert.deepEqual(S().entries(), [])
  })

  it('kill -9 of the server: readers get errors within seconds, list says dead, detach --force cleans up', async () => {
    const a = await makeImage(S(), 'a', 5, 16 << 20)
    const j = await attach(S(), a.image)
    const conn = JSON.parse(fs.readFileSync(path.join(S().stateDir, 'devices', `${j.id}.json`), 'utf8')).backendState.connection as number
    // A reader going over the device again and again (past the bad sector at 64 KiB), bypassing the page cache.
    const reader = spawn('sh', ['-c', 'while dd if="$1" of=/dev/null bs=64k skip=16 iflag=direct status=none; do :; done', 'sh', j.device], {stdio: 'ignore'})
    S().trackPid(reader.pid)
    const readerExit = new Promise<number>((res) => reader.on('exit', () => res(Date.now())))
    await new Promise((r) => setTimeout(r, 500))
    assert.equal(reader.exitCode, null, 'the reader is reading')
    const killedAt = Date.now()
    process.kill(j.pid, 'SIGKILL')
    const exitedAt = await Promise.race([readerExit, new Promise<number>((r) => setTimeout(() => r(-1), 15_000))])
    assert.notEqual(exitedAt, -1, 'the reader hangs after the server was killed')
    assert.ok(exitedAt - killedAt < 10_000, `the reader took ${exitedAt - killedAt} ms to fail`)
    const r = await readSectors(j.device, 0, 1)
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /Input\/output error/)

    const l = await S().vdev(['list', '--json'])
    assert.deepEqual(JSON.parse(l.stdout).map((x: {id: string; state: string}) => [x.id, x.state]), [[j.id, 'dead']])
    assert.match((await S().vdev(['list'])).stdout, new RegExp(`^${j.id}\\s+${j.device}\\s+dead`, 'm'))
    const again = await S().vdev(['attach', a.image])
    assert.equal(again.code, 6)
    oneLineError(again.stderr, /server is dead: run "vdev detach vdev\d+ --force" first/)

    const d = await S().vdev(['detach', j.id, '--force', '--json'])
    assert.equal(d.code, 0, d.stderr)
    assert.equal(JSON.parse(d.stdout).detached[0].how, 'cleaned')
    assert.equal(fs.existsSync(`/sys/block/${j.device.slice(5)}/loop/backing_file`), false, 'loop device released')
    assert.equal(fs.existsSync(`/sys/fs/fuse/connections/${conn}`), false, 'FUSE connection gone')
    assert.deepEqual(S().entries(), [])
    assert.deepEqual(fs.readdirSync(path.join(S().stateDir, 'run')), [])
  })

  it('kill -9 of the server of a mounted device: detach refuses, --force detaches, the kernel frees the device at umount', async function () {
    const dir = S().p('fs')
    fs.mkdirSync(dir)
    fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello\n')
    fs.writeFileSync(S().p('fs.raw'), '')
    fs.truncateSync(S().p('fs.raw'), 16 << 20)
    const mk = await run('mkfs.ext4', ['-q', '-F', '-d', dir, S().p('fs.raw')])
    assert.equal(mk.code, 0, mk.stderr)
    const c = await S().vdev(['create', S().p('fs.raw'), S().p('fs.vdimg')])
    assert.equal(c.code, 0, c.stderr)
    const j = await attach(S(), S().p('fs.vdimg'))
    const mnt = await S().mountRo(j.device)
    assert.equal(fs.readFileSync(path.join(mnt, 'hello.txt'), 'utf8'), 'hello\n')
    process.kill(j.pid, 'SIGKILL')
    assert.ok(await waitFor(() => !pidAlive(j.pid), 5000))
    const busy = await S().vdev(['detach', j.device])
    assert.equal(busy.code, 8)
    oneLineError(busy.stderr, new RegExp(`${j.device} is mounted on ${mnt}`))
    const d = await S().vdev(['detach', j.device, '--force'])
    assert.equal(d.code, 0, d.stderr)
    assert.deepEqual(S().entries(), [])
    await S().umount(mnt)
    assert.ok(await waitFor(() => !fs.existsSync(`/sys/block/${j.device.slice(5)}/loop/backing_file`), 5000), 'freed at umount')
  })

  it('--foreground serves until SIGTERM, then detaches cleanly and exits 0', async () => {
    const a = await makeImage(S(), 'a', 6)
    const child = spawn(process.execPath, [BIN, 'attach', a.image, '--foreground', '--json'], {env: {...process.env, ...S().env()}, stdio: ['ignore', 'pipe', 'pipe']})
    S().trackPid(child.pid)
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)))
    assert.ok(await waitFor(() => out.trim().endsWith('}'), 30_000), `no ready JSON: ${err}`)
    const j = JSON.parse(out)
    assert.equal(j.pid, child.pid)
    const l = await S().vdev(['list', '--json'])
    assert.deepEqual(JSON.parse(l.stdout).map((x: {device: string; state: string}) => [x.device, x.state]), [[j.device, 'running']])
    const r = await readSectors(j.device, 8, 8)
    assert.ok(r.data.equals(a.data.subarray(8 * 512, 16 * 512)))
    child.kill('SIGTERM')
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('timeout'), 15_000))])
    assert.equal(code, 0, `exit ${code}: ${err}`)
    assert.equal(err, '')
    assert.deepEqual(S().entries(), [])
    assert.equal(fs.existsSync(`/sys/block/${j.device.slice(5)}/loop/backing_file`), false)
  })

  it('a server whose FUSE connection is aborted under it cleans up and exits', async () => {
    const a = await makeImage(S(), 'a', 7)
    const j = await attach(S(), a.image)
    const conn = JSON.parse(fs.readFileSync(path.join(S().stateDir, 'devices', `${j.id}.json`), 'utf8')).backendState.connection as number
    fs.writeFileSync(`/sys/fs/fuse/connections/${conn}/abort`, '1')
    assert.ok(await waitFor(() => !pidAlive(j.pid), 10_000), 'the server exits')
    assert.deepEqual(S().entries(), [])
    const log = fs.readFileSync(path.join(S().stateDir, 'logs', `${j.id}.log`), 'utf8')
    assert.match(log, /stopping: the kernel closed the device/)
  })

  it('detach --all detaches every device; detach of nothing matching says so', async () => {
    const images = [await makeImage(S(), 'a', 8), await makeImage(S(), 'b', 9), await makeImage(S(), 'c', 10)]
    const devs = []
    for (const i of images) devs.push(await attach(S(), i.image))
    const d = await S().vdev(['detach', '--all', '--json'])
    assert.equal(d.code, 0, d.stderr)
    assert.deepEqual(JSON.parse(d.stdout).detached.map((x: {id: string}) => x.id).sort(), devs.map((x) => x.id).sort())
    for (const x of devs) assert.equal(pidAlive(x.pid), false)
    const none = await S().vdev(['detach', '/dev/loop999'])
    assert.equal(none.code, 9)
    oneLineError(none.stderr, /no attached device matches \/dev\/loop999/)
    const both = await S().vdev(['detach'])
    assert.equal(both.code, 2)
    oneLineError(both.stderr, /either a TARGET or --all/)
  })

  it('bad input: one clear line, a non-zero exit, nothing left in the registry', async () => {
    const a = await makeImage(S(), 'a', 11)
    const corrupt = S().p('corrupt.vdimg')
    const bytes = fs.readFileSync(a.image)
    bytes[20] ^= 0xff // inside the header: its checksum no longer matches
    // ... and inside its copy, the file's last 256 bytes (format 1.1, FORMAT.md §12): no good header is left.
    bytes[bytes.length - 256 + 20] ^= 0xff
    fs.writeFileSync(corrupt, bytes)
    const cases: Array<[string[], number, RegExp]> = [
      [['attach', corrupt], 4, new RegExp(`${corrupt.replace(/[.]/g, '\\.')}: `)],
      [['attach', S().p('a.raw')], 4, /not a VDIMG image/],
      [['attach', S().p('missing.vdimg')], 3, /missing\.vdimg: cannot open: no such file or directory/],
      [['attach', a.image, '--backend', 'nope'], 2, /nope/],
    ]
    for (const [args, code, re] of cases) {
      const r = await S().vdev(args)
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`)
      oneLineError(r.stderr, re)
      const j = await S().vdev([...args, '--json'])
      assert.equal(j.code, code)
      assert.equal(JSON.parse(j.stdout).error.code.length > 0, true)
    }
    const unavailable = (JSON.parse((await S().vdev(['backends', '--json'])).stdout) as Array<{name: string; available: boolean}>).find((b) => !b.available && b.name !== 'macos-nfs')
    if (unavailable) {
      const r = await S().vdev(['attach', a.image, '--backend', unavailable.name])
      assert.equal(r.code, 7)
      oneLineError(r.stderr, new RegExp(`backend ${unavailable.name} is not available: `))
    }
    assert.deepEqual(S().entries(), [])
    assert.deepEqual(fs.existsSync(path.join(S().stateDir, 'run')) ? fs.readdirSync(path.join(S().stateDir, 'run')) : [], [])
    assert.deepEqual(fs.existsSync(path.join(S().stateDir, 'logs')) ? fs.readdirSync(path.join(S().stateDir, 'logs')) : [], [])
  })

  it('not root, or no /dev/fuse: exit 7 with the reason', async () => {
    const a = await makeImage(S(), 'a', 12)
    fs.chmodSync(S().dir, 0o755)
    const home = S().p('home')
    fs.mkdirSync(home, {mode: 0o777})
    const asNobody = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', `HOME=${home}`, `VDEV_STATE_DIR=${S().stateDir}`, process.execPath, BIN, 'attach', a.image, '--backend', 'fuse'])
    assert.equal(asNobody.code, 7, asNobody.stderr)
    oneLineError(asNobody.stderr, /backend fuse is not available: needs root/)

    // A private mount namespace whose /dev is an empty tmpfs: no /dev/fuse, no /dev/loop-control.
    const noDev = await run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs tmpfs /dev && exec "$@"', 'sh', 'env', `VDEV_STATE_DIR=${S().stateDir}`, process.execPath, BIN, 'attach', a.image])
    assert.equal(noDev.code, 7, noDev.stderr)
    oneLineError(noDev.stderr, /fuse: \/dev\/fuse does not exist/)
    assert.deepEqual(S().entries(), [])
  })
})

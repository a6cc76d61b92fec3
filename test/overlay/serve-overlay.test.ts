/**
 * `vdev serve --overlay FILE` / `--scratch` with real peers (qemu-io, qemu-img, nbdcopy, nbdinfo, e2fsck,
 * debugfs) and a raw client: writes land in the overlay and survive a restart, the base file never changes,
 * the wrong base and a read-only overlay are refused with one line, writes past the end fail, kill -9 at
 * random points loses no write acknowledged by a flush, and a full file system fails writes with ENOSPC
 * without corrupting anything. Every process and mount made here is removed in the after hooks.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import * as P from '../../src/serve/nbd/protocol'
import {inspectOverlay} from '../../src/layers/overlay'
import {BIN, have, prng, sha256, tmpDir} from '../helpers'
import {RawClient} from '../nbd/rawclient'
import {run} from '../nbd/fixture'

const SIZE = 8 << 20
const started: ChildProcess[] = []
const mounts: string[] = []

interface Serve {
  child: ChildProcess
  ready: Record<string, unknown>
  stderr: () => string
  exited: Promise<{code: number | null; signal: NodeJS.Signals | null}>
}

function startServe(args: string[], env?: Record<string, string>): Promise<Serve> {
  const child = spawn(process.execPath, [BIN, 'serve', '--json', ...args], {stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, ...env}})
  started.push(child)
  let out = ''
  let err = ''
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null}>((resolve) => child.on('exit', (code, signal) => resolve({code, signal})))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line within 20 s; stderr: ${err}`)), 20_000)
    child.stderr!.on('data', (d) => (err += d))
    child.stdout!.on('data', (d) => {
      out += d
      const nl = out.indexOf('\n')
      if (nl >= 0) {
        clearTimeout(timer)
        const ready = JSON.parse(out.slice(0, nl)) as Record<string, unknown>
        if (ready.error) reject(new Error(`vdev serve failed: ${JSON.stringify(ready.error)}; stderr: ${err}`))
        else resolve({child, ready, stderr: () => err, exited})
      }
    })
    void exited.then(({code}) => (clearTimeout(timer), reject(new Error(`vdev serve exited (${code}) before it was ready: ${err}`))))
  })
}

function runServe(args: string[]): {code: number | null; stderr: string} {
  const r = spawnSync(process.execPath, [BIN, 'serve', '--json', ...args], {encoding: 'utf8', timeout: 30_000})
  return {code: r.status, stderr: r.stderr}
}

async function stop(s: Serve): Promise<number | null> {
  s.child.kill('SIGTERM')
  return (await s.exited).code
}

const uri = (sock: string) => `nbd+unix:///?socket=${sock}`

describe('vdev serve --overlay', function () {
  this.timeout(180_000)
  let t: {dir: string; cleanup: () => void}
  let base: string
  let baseSha: string
  let sock: string

  before(function () {
    if (process.platform !== 'linux' || !have('qemu-io') || !have('nbdcopy')) this.skip()
  })
  beforeEach(() => {
    t = tmpDir('vdev-serve-overlay-')
    base = path.join(t.dir, 'base.img')
    fs.writeFileSync(base, prng(21, SIZE))
    baseSha = sha256(fs.readFileSync(base))
    sock = path.join(t.dir, 's.sock')
  })
  afterEach(async () => {
    for (const c of started.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    for (const m of mounts.splice(0)) spawnSync('umount', ['-l', m])
    t.cleanup()
  })

  it('advertises the write flags, takes qemu-io writes, keeps them across a restart, never writes the base', async () => {
    const ov = path.join(t.dir, 'disk.vdovl')
    let s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    assert.equal(s.ready.overlay, ov)
    const info = await run('nbdinfo', ['--json', uri(sock)])
    const exp = JSON.parse(info.stdout).exports[0]
    assert.equal(exp.is_read_only, false)
    for (const f of ['can_flush', 'can_fua', 'can_trim', 'can_zero']) assert.equal(exp[f], true, f)
    await run('qemu-io', ['-f', 'raw', uri(sock), '-c', 'write -P 0xab 4096 65536', '-c', 'write -P 0x5a -f 1m 4096', '-c', 'write -z 2m 1m', '-c', 'discard 4m 8192', '-c', 'flush'])
    assert.equal(await stop(s), 0)
    assert.match(s.stderr(), /writes/)
    s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    const r = await run('qemu-io', ['-f', 'raw', uri(sock), '-c', 'read -P 0xab 4096 65536', '-c', 'read -P 0x5a 1m 4096', '-c', 'read -P 0 2m 1m', '-c', 'read -P 0 4m 8192'])
    assert.doesNotMatch(r.stdout, /Pattern verification failed/)
    // Everything else is the base, as it was.
    const out = path.join(t.dir, 'out.img')
    await run('nbdcopy', [uri(sock), out])
    const got = fs.readFileSync(out)
    const want = prng(21, SIZE)
    want.fill(0xab, 4096, 4096 + 65536)
    want.fill(0x5a, 1 << 20, (1 << 20) + 4096)
    want.fill(0, 2 << 20, 3 << 20)
    want.fill(0, 4 << 20, (4 << 20) + 8192)
    assert.ok(got.equals(want))
    assert.equal(await stop(s), 0)
    assert.equal(sha256(fs.readFileSync(base)), baseSha, 'the base file is unchanged')
    const oi = await run(process.execPath, [BIN, 'overlay', 'info', ov, '--json'])
    assert.equal(JSON.parse(oi.stdout).bytesWritten, 65536 + 4096 + (1 << 20) + 8192)
    const d = await run(process.execPath, [BIN, 'overlay', 'diff', ov, '--mapfile-out', path.join(t.dir, 'changed.map')])
    assert.equal(d.stdout.trim().split('\n')[0], '4096 65536')
    assert.match(fs.readFileSync(path.join(t.dir, 'changed.map'), 'utf8'), /0x00001000 {2}0x00010000 {2}\+/)
  })

  it('an ext4 file system written with qemu-img convert reads back whole through the overlay', async function () {
    if (!have('mkfs.ext4') || !have('qemu-img') || !have('debugfs')) this.skip()
    const src = path.join(t.dir, 'src')
    fs.mkdirSync(src)
    fs.writeFileSync(path.join(src, 'hello.txt'), 'written through the overlay\n')
    const fsimg = path.join(t.dir, 'fs.img')
    await run('mkfs.ext4', ['-q', '-F', '-d', src, fsimg, '8M'])
    const ov = path.join(t.dir, 'fs.vdovl')
    let s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', fsimg, uri(sock)])
    assert.equal(await stop(s), 0)
    s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    const out = path.join(t.dir, 'out.img')
    await run('nbdcopy', [uri(sock), out])
    assert.equal(await stop(s), 0)
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(fsimg)))
    await run('e2fsck', ['-fn', out])
    assert.equal((await run('debugfs', ['-R', 'cat /hello.txt', out])).stdout, 'written through the overlay\n')
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
  })

  it('mkfs.ext4 through nbdfuse (the kernel FUSE write path into the export) survives a restart', async function () {
    if (!have('nbdfuse') || !have('mkfs.ext4') || !have('debugfs') || !fs.existsSync('/dev/fuse') || process.getuid?.() !== 0) this.skip()
    const ov = path.join(t.dir, 'fs.vdovl')
    let s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    const mnt = path.join(t.dir, 'fuse')
    fs.mkdirSync(mnt)
    const fuse = spawn('nbdfuse', [path.join(mnt, 'disk'), uri(sock)], {stdio: ['ignore', 'ignore', 'pipe']})
    started.push(fuse)
    mounts.push(mnt)
    const fuseExit = new Promise<void>((resolve) => fuse.on('exit', () => resolve()))
    for (let i = 0; i < 100 && !fs.existsSync(path.join(mnt, 'disk')); i++) await new Promise((r) => setTimeout(r, 50))
    const src = path.join(t.dir, 'src')
    fs.mkdirSync(src)
    fs.writeFileSync(path.join(src, 'note.txt'), 'made by mkfs through nbdfuse\n')
    await run('mkfs.ext4', ['-q', '-F', '-d', src, path.join(mnt, 'disk')])
    await run('fusermount3', ['-u', mnt])
    await fuseExit
    mounts.splice(mounts.indexOf(mnt), 1)
    assert.equal(await stop(s), 0)
    s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    const out = path.join(t.dir, 'out.img')
    await run('nbdcopy', [uri(sock), out])
    assert.equal(await stop(s), 0)
    await run('e2fsck', ['-fn', out])
    assert.equal((await run('debugfs', ['-R', 'cat /note.txt', out])).stdout, 'made by mkfs through nbdfuse\n')
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
  })

  it('over a VDIMG image: the overlay names its media hash, the image still verifies, overlay commit writes a new image', async () => {
    const img = path.join(t.dir, 'disk.vdimg')
    await run(process.execPath, [BIN, 'create', base, img])
    const imgSha = sha256(fs.readFileSync(img))
    const media = JSON.parse((await run(process.execPath, [BIN, 'info', img, '--json'])).stdout).sha256 as string
    const ov = path.join(t.dir, 'disk.vdovl')
    const s = await startServe([img, '--overlay', ov, '--listen', `unix:${sock}`])
    await run('qemu-io', ['-f', 'raw', uri(sock), '-c', 'write -P 0x77 0 1m', '-c', 'flush', '-c', 'read -P 0x77 0 1m'])
    assert.equal(await stop(s), 0)
    const info = JSON.parse((await run(process.execPath, [BIN, 'overlay', 'info', ov, '--json'])).stdout)
    assert.deepEqual(info.base, {kind: 'media-sha256', sha256: media})
    assert.equal(sha256(fs.readFileSync(img)), imgSha, 'the image file is unchanged')
    await run(process.execPath, [BIN, 'verify', img])
    // overlay commit: a new image that verifies and holds the change; refusals with their exit codes.
    const out = path.join(t.dir, 'new.vdimg')
    await run(process.execPath, [BIN, 'overlay', 'commit', img, ov, out])
    await run(process.execPath, [BIN, 'verify', out])
    const raw = path.join(t.dir, 'new.raw')
    await run(process.execPath, [BIN, 'extract', out, raw])
    const want = prng(21, SIZE)
    want.fill(0x77, 0, 1 << 20)
    assert.ok(fs.readFileSync(raw).equals(want))
    assert.equal((await run(process.execPath, [BIN, 'overlay', 'commit', img, ov, out], {allowFail: true})).code, 6)
    const other = path.join(t.dir, 'other.img')
    fs.writeFileSync(other, prng(23, SIZE))
    const wrong = await run(process.execPath, [BIN, 'overlay', 'commit', other, ov, path.join(t.dir, 'x.vdimg'), '--format', 'raw'], {allowFail: true})
    assert.equal(wrong.code, 2)
    assert.equal(wrong.stderr.trim().split('\n').length, 1)
    assert.ok(!fs.existsSync(path.join(t.dir, 'x.vdimg')))
    assert.equal(sha256(fs.readFileSync(img)), imgSha, 'the image file is unchanged')
  })

  it('refuses the wrong base, a read-only overlay and a non-overlay with one line and their exit codes', async () => {
    const ov = path.join(t.dir, 'disk.vdovl')
    const s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    assert.equal(await stop(s), 0)
    const other = path.join(t.dir, 'other.img')
    fs.writeFileSync(other, prng(22, SIZE))
    const wrong = runServe([other, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    assert.equal(wrong.code, 2)
    assert.match(wrong.stderr, /belongs to another base/)
    assert.equal(wrong.stderr.trim().split('\n').length, 1)
    const notOverlay = runServe([base, '--format', 'raw', '--overlay', other, '--listen', `unix:${sock}`])
    assert.equal(notOverlay.code, 4)
    assert.equal(notOverlay.stderr.trim().split('\n').length, 1)
    assert.equal(sha256(fs.readFileSync(other)), sha256(prng(22, SIZE)), 'a file that is not an overlay is left alone')
    // NFS and iSCSI serve read-write too: test/nfs/writable.test.ts, test/iscsi/overlay-peers.test.ts.
    if (process.getuid?.() !== 0) return
    // A read-only overlay (root ignores file modes: a read-only file system).
    const mnt = path.join(t.dir, 'ro')
    fs.mkdirSync(mnt)
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt])
    mounts.push(mnt)
    fs.copyFileSync(ov, path.join(mnt, 'disk.vdovl'))
    await run('mount', ['-o', 'remount,ro', mnt])
    const ro = runServe([base, '--format', 'raw', '--overlay', path.join(mnt, 'disk.vdovl'), '--listen', `unix:${sock}`])
    assert.equal(ro.code, 3)
    assert.match(ro.stderr, /cannot open the overlay: (EROFS|read-only)/)
    assert.equal(ro.stderr.trim().split('\n').length, 1)
  })

  it('an image that ends in a partial sector: minimum block 1, its last bytes written and read back (qemu-io, nbdcopy)', async () => {
    const odd = path.join(t.dir, 'odd.img')
    const size = (1 << 20) + 1000
    fs.writeFileSync(odd, prng(22, size))
    const s = await startServe([odd, '--format', 'raw', '--scratch', '--listen', `unix:${sock}`])
    try {
      const e = JSON.parse((await run('nbdinfo', ['--json', uri(sock)])).stdout).exports[0]
      assert.equal(e['export-size'], size)
      assert.equal(e.block_size_minimum, 1)
      assert.equal(e.is_read_only, false)
      // The last 1000 bytes (a partial sector) and an unaligned run across the last whole sector.
      await run('qemu-io', ['-f', 'raw', uri(sock), '-c', `write -P 0x3c ${1 << 20} 1000`, '-c', `write -P 0x77 ${(1 << 20) - 300} 200`, '-c', 'flush'])
      const out = path.join(t.dir, 'odd-out.img')
      await run('nbdcopy', [uri(sock), out])
      const want = prng(22, size)
      want.fill(0x3c, 1 << 20, size)
      want.fill(0x77, (1 << 20) - 300, (1 << 20) - 100)
      assert.ok(fs.readFileSync(out).equals(want))
    } finally {
      assert.equal(await stop(s), 0)
    }
  })

  it('--scratch serves read-write and deletes its overlay at exit; writes past the end fail with ENOSPC', async () => {
    const s = await startServe([base, '--format', 'raw', '--scratch', '--listen', `unix:${sock}`])
    const ov = s.ready.overlay as string
    assert.ok(fs.existsSync(ov))
    const c = await RawClient.connect(sock)
    try {
      const {size, flags} = await c.go()
      assert.equal(size, SIZE)
      assert.equal(flags & P.NBD_FLAG_READ_ONLY, 0)
      c.request(P.NBD_CMD_WRITE, SIZE - 512, 1024, 1n)
      c.send(Buffer.alloc(1024, 1))
      assert.equal((await c.reply()).error, P.NBD_ENOSPC)
      c.request(P.NBD_CMD_WRITE_ZEROES, SIZE, 512, 2n)
      assert.equal((await c.reply()).error, P.NBD_ENOSPC)
      c.request(P.NBD_CMD_WRITE, 0, 512, 3n, P.NBD_CMD_FLAG_FUA)
      c.send(Buffer.alloc(512, 7))
      assert.equal((await c.reply()).error, 0)
      c.request(P.NBD_CMD_READ, 0, 512, 4n)
      const r = await c.reply(new Map([[4n, 512]]))
      assert.ok(r.payload.equals(Buffer.alloc(512, 7)))
    } finally {
      c.destroy()
    }
    assert.equal(await stop(s), 0)
    assert.ok(!fs.existsSync(ov), 'the scratch overlay is deleted')
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
  })

  /**
   * Rounds of: check every block written so far holds a value it may hold, then write batches of random
   * 4 KiB blocks, each batch followed by a flush, until the server is killed with SIGKILL at a random moment.
   * Returns the servers' stderr.
   */
  async function killRounds(rounds: number, opts: {env?: Record<string, string>; blocks?: number; killAfterMs?: number; onRestart?: () => void} = {}): Promise<string> {
    const blocks = opts.blocks ?? SIZE / 4096
    const ov = path.join(t.dir, 'crash.vdovl')
    let logs = ''
    const BLOCK = 4096
    const baseBytes = prng(21, SIZE)
    // What each touched block may hold: any of the values its writes before the last flush left it with (one,
    // unless several writes to it were in flight together: NBD lets a server run concurrent commands in any
    // order, and serving threads do), then anything written after that flush.
    const possible = new Map<number, Buffer[]>()
    let seed = 1234
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n
    for (let round = 0; round < rounds; round++) {
      opts.onRestart?.()
      const s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`], opts.env)
      const c = await RawClient.connect(sock).catch((err: Error) => {
        throw new Error(`round ${round}: ${err.message}; socket ${fs.existsSync(sock) ? 'exists' : 'missing'}; ready ${JSON.stringify(s.ready)}; stderr ${s.stderr()}`)
      })
      let cookie = 1n
      try {
        await c.go()
        // Every block touched so far holds one of the values it may hold.
        for (const [at, vals] of possible) {
          c.request(P.NBD_CMD_READ, at, BLOCK, cookie)
          const r = await c.reply(new Map([[cookie++, BLOCK]]))
          assert.equal(r.error, 0)
          const i = vals.findIndex((v) => v.equals(r.payload))
          assert.ok(i >= 0, `round ${round}: block at ${at} holds neither its flushed value nor a later write`)
          possible.set(at, [r.payload])
        }
        setTimeout(() => s.child.kill('SIGKILL'), 30 + rand(opts.killAfterMs ?? 300))
        for (;;) {
          const batch: Array<[number, Buffer]> = []
          for (let k = 1 + rand(8); k > 0; k--) {
            const at = rand(blocks) * BLOCK
            const data = crypto.randomBytes(BLOCK)
            if (!possible.has(at)) possible.set(at, [Buffer.from(baseBytes.subarray(at, at + BLOCK))])
            possible.get(at)!.push(data)
            batch.push([at, data])
            c.request(P.NBD_CMD_WRITE, at, BLOCK, cookie++)
            c.send(data)
          }
          for (let k = 0; k < batch.length; k++) assert.equal((await c.reply()).error, 0)
          c.request(P.NBD_CMD_FLUSH, 0, 0, cookie++)
          assert.equal((await c.reply()).error, 0)
          // Acknowledged after a flush: from now on each block holds one of the values this batch wrote to it.
          const flushed = new Map<number, Buffer[]>()
          for (const [at, data] of batch) flushed.set(at, [...(flushed.get(at) ?? []), data])
          for (const [at, vals] of flushed) possible.set(at, vals)
        }
      } catch (err) {
        if (err instanceof assert.AssertionError) throw err
      } finally {
        c.destroy()
      }
      const {signal} = await s.exited
      assert.equal(signal, 'SIGKILL')
      logs += s.stderr()
    }
    const info = inspectOverlay(ov)
    assert.ok(info.records > 0)
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
    return logs
  }

  it('kill -9 at random points never loses a write acknowledged by a flush', async () => {
    await killRounds(12)
  })

  it('kill -9 at random points, compacting while serving all along, loses no acknowledged write and leaves no temporary file', async () => {
    // Writes to 64 blocks only, compaction whenever the log's dead bytes pass 64 KiB and what it holds (every
    // few dozen writes), rounds of up to 1.5 s: some are killed mid-compaction (its temporary file left behind).
    let interrupted = 0
    const onRestart = () => (interrupted += fs.readdirSync(t.dir).filter((n) => n.endsWith('.compact')).length)
    const logs = await killRounds(8, {env: {VDEV_OVERLAY_COMPACT_MIB: '0.0625'}, blocks: 64, killAfterMs: 1500, onRestart})
    const compactions = logs.match(/compacted while serving/g)?.length ?? 0
    assert.ok(compactions >= 4, `${compactions} compactions in 8 rounds:\n${logs}`)
    console.log(`      ${compactions} compactions, ${interrupted} killed in the middle`)
    assert.doesNotMatch(logs, /compaction while serving failed/)
    // Every round opened the overlay again: stale temporary logs of killed compactions are gone.
    const last = await startServe([base, '--format', 'raw', '--overlay', path.join(t.dir, 'crash.vdovl'), '--listen', `unix:${sock}`])
    assert.equal(await stop(last), 0)
    assert.deepEqual(fs.readdirSync(t.dir).filter((n) => n.endsWith('.compact')), [])
    // What it holds (at most every 4 KiB block of the 8 MiB image, with its record header) bounds it, plus the dead part.
    const info = inspectOverlay(path.join(t.dir, 'crash.vdovl'))
    assert.ok(info.fileBytes < 3 * (SIZE + (SIZE / 4096) * 64) + (1 << 20), `${info.fileBytes} bytes`)
  })

  it('an overlay on a full file system fails writes with ENOSPC, corrupts nothing, and keeps serving', async function () {
    if (process.getuid?.() !== 0) this.skip()
    const mnt = path.join(t.dir, 'small')
    fs.mkdirSync(mnt)
    await run('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mnt])
    mounts.push(mnt)
    const ov = path.join(mnt, 'disk.vdovl')
    const s = await startServe([base, '--format', 'raw', '--overlay', ov, '--listen', `unix:${sock}`])
    const c = await RawClient.connect(sock)
    try {
      await c.go()
      c.request(P.NBD_CMD_WRITE, 0, 4096, 1n)
      c.send(Buffer.alloc(4096, 0x11))
      assert.equal((await c.reply()).error, 0)
      c.request(P.NBD_CMD_WRITE, 1 << 20, 1 << 20, 2n) // more than the file system holds
      c.send(Buffer.alloc(1 << 20, 0x22))
      assert.equal((await c.reply()).error, P.NBD_ENOSPC)
      c.request(P.NBD_CMD_WRITE, 8192, 4096, 3n, P.NBD_CMD_FLAG_FUA) // the space the failed write took is given back
      c.send(Buffer.alloc(4096, 0x33))
      assert.equal((await c.reply()).error, 0)
      c.request(P.NBD_CMD_READ, 0, 3 << 20, 4n)
      const r = await c.reply(new Map([[4n, 3 << 20]]))
      const want = prng(21, 3 << 20)
      want.fill(0x11, 0, 4096)
      want.fill(0x33, 8192, 12288)
      assert.ok(r.payload.equals(want), 'the failed write is not seen, the others are')
    } finally {
      c.destroy()
    }
    assert.equal(await stop(s), 0)
    const info = inspectOverlay(ov)
    assert.equal(info.discardedBytes, 0)
    assert.deepEqual(info.extents.map((e) => [e.offset, e.length]), [[0, 4096], [8192, 4096]])
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
  })
})

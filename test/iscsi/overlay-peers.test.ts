/**
 * `vdev serve --protocol iscsi --overlay FILE` / `--scratch` with qemu's iSCSI driver (qemu-io, qemu-img) as
 * the initiator, through the CLI as a user runs it: writes, write-zeroes and discards land in the overlay
 * (read back through the target, and named by `vdev overlay diff`), `qemu-img convert` writes a whole other
 * disk onto the LUN, the image file's SHA-256 never changes, a restart with the same overlay serves what
 * was written, and without `--overlay` every write is still refused.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {hasTool, run} from '../nbd/fixture'
import {prng, runCli, sha256, tmpDir} from '../helpers'
import {serveIscsi, type Served} from './serve'

const SIZE = 8 << 20

describe('vdev serve --protocol iscsi --overlay with qemu', function () {
  this.timeout(180_000)
  let t: {dir: string; cleanup: () => void}
  let base: string
  let baseSha: string
  let ovl: string
  const running: Served[] = []
  const serve = async (args: string[]) => {
    const s = await serveIscsi([base, '--format', 'raw', '--listen', '127.0.0.1:0', ...args])
    running.push(s)
    return s
  }
  const stop = async (s: Served) => {
    s.child.kill('SIGTERM')
    return s.exited
  }
  /** qemu-io commands in one process; unless allowed to fail, none may say it failed (a pattern mismatch included). */
  const io = async (uri: string, cmds: string[], allowFail = false) => {
    const r = await run('qemu-io', ['-f', 'raw', '--cache', 'writeback', ...cmds.flatMap((c) => ['-c', c]), uri], {allowFail})
    if (!allowFail) assert.doesNotMatch(r.stdout + r.stderr, /fail|error/i, `${cmds.join('; ')}: ${r.stdout}${r.stderr}`)
    return r
  }

  before(function () {
    if (!hasTool('qemu-io') || !hasTool('qemu-img')) this.skip()
    t = tmpDir('vdev-iscsi-overlay-')
    base = path.join(t.dir, 'base.img')
    fs.writeFileSync(base, prng(31, SIZE))
    baseSha = sha256(fs.readFileSync(base))
    ovl = path.join(t.dir, 'disk.vdovl')
  })
  after(async () => {
    for (const s of running) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL')
    t?.cleanup()
  })

  it('qemu-io writes, write-zeroes and discards through the LUN; read back through it; the overlay diff names them; the image unchanged', async () => {
    const s = await serve(['--overlay', ovl])
    assert.equal((s.ready as {overlay?: string}).overlay, ovl)
    // qemu-io's write -z sends WRITE SAME (zeros); discard sends UNMAP (the LUN claims LBPU); flush sends SYNCHRONIZE CACHE.
    await io(s.ready.uri, ['write -P 0xab 1M 64k', 'write -P 0xcd 3M 512', 'write -z 4M 128k', 'discard 5M 64k', 'write -P 0x11 -f 6M 4k', 'flush'])
    await io(s.ready.uri, ['read -P 0xab 1M 64k', 'read -P 0xcd 3M 512', 'read -P 0 4M 128k', 'read -P 0 5M 64k', 'read -P 0x11 6M 4k'])
    // What was not written is the image's.
    const baseBytes = fs.readFileSync(base)
    const near = await io(s.ready.uri, ['read -v 1114112 16'])
    assert.match(near.stdout, new RegExp(`^00110000:  ${[...baseBytes.subarray(1114112, 1114128)].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`, 'm'))
    assert.equal(await stop(s), 0)
    assert.match(s.stderr(), /\d+ writes \(\d+ bytes\), [1-9]\d* write-zeroes, [1-9]\d* trims, [1-9]\d* flushes, 0 failed/)
    const diff = await runCli(['overlay', 'diff', ovl])
    assert.equal(diff.code, 0, diff.stderr)
    const ranges = diff.stdout.trim().split('\n').map((l) => l.split(/\s+/).map(Number))
    for (const [off, len] of [
      [1 << 20, 65536],
      [3 << 20, 512],
      [4 << 20, 131072],
      [5 << 20, 65536],
      [6 << 20, 4096],
    ])
      assert.ok(
        ranges.some(([o, l]) => o <= off && o + l >= off + len),
        `${off}+${len} not in the diff: ${diff.stdout}`,
      )
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
  })

  it('a restart with the same overlay serves what was written; qemu-img convert writes a whole disk; qemu-img compare agrees', async () => {
    let s = await serve(['--overlay', ovl])
    await io(s.ready.uri, ['read -P 0xab 1M 64k', 'read -P 0 4M 128k'])
    const other = path.join(t.dir, 'other.raw')
    fs.writeFileSync(other, prng(32, SIZE))
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', other, s.ready.uri])
    assert.equal(await stop(s), 0)
    s = await serve(['--overlay', ovl])
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.ready.uri, other])
    assert.match(cmp.stdout, /Images are identical/)
    assert.equal(await stop(s), 0)
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
    // Served without the overlay: the image as it was.
    s = await serve([])
    const ro = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.ready.uri, base])
    assert.match(ro.stdout, /Images are identical/)
    const refused = await io(s.ready.uri, ['write -P 0x55 0 4k'], true)
    assert.notEqual(refused.code, 0)
    assert.match(refused.stdout + refused.stderr, /Permission denied|Operation not permitted|read-only|protected/i)
    assert.equal(await stop(s), 0)
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
  })

  it('--scratch: read-write into a temporary overlay on serving threads, gone when serve exits; the threads\' writes are counted', async () => {
    const s = await serve(['--scratch', '--threads', '2'])
    const scratch = (s.ready as {overlay?: string}).overlay!
    assert.ok(fs.existsSync(scratch))
    await io(s.ready.uri, ['write -P 0x77 0 64k', 'read -P 0x77 0 64k'])
    assert.equal(await stop(s), 0)
    assert.doesNotMatch(s.stderr(), /main thread/)
    assert.match(s.stderr(), /stopped; .*; [1-9]\d* writes \(\d+ bytes\)/)
    assert.ok(!fs.existsSync(scratch))
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
  })
})

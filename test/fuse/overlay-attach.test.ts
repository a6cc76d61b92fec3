/**
 * `vdev attach --overlay FILE` and `--scratch` on the host's real kernel (FUSE + loop, read-write), with
 * real tools: ext4 mounted read-write, a file system captured with a dirty journal replayed, e2fsck -y
 * repairing a damaged one, blkdiscard (discard and write-zeroes), a server killed with SIGKILL under a
 * write load that logs every acknowledged fdatasync, and the errors (wrong base, overlay in use, a full
 * or read-only file system under the overlay, writes past the end). The image file never changes.
 */
import * as assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {prng, runCli, sha256, writeTruthMap} from '../helpers'
import {IS_ROOT, Sandbox, mkfsExt4, run, writeTree, type AttachJson} from './fixtures'

interface AttachOut extends AttachJson {
  overlay?: string
}

const fileHash = (f: string): string => sha256(fs.readFileSync(f))

describe('vdev attach --overlay: a writable device, the image untouched (FUSE + loop)', function () {
  this.timeout(300_000)
  let sb: Sandbox

  before(function () {
    if (!IS_ROOT) this.skip() // mount, FUSE and loop need root
    sb = new Sandbox('vdev-ovl-attach-')
  })

  after(async function () {
    if (!sb) return
    const left = await sb.teardown()
    assert.deepEqual(left, [], 'the tests left devices, mounts or processes behind')
  })

  async function attachRw(image: string, extra: string[]): Promise<AttachOut> {
    const r = await sb.vdev(['attach', image, '--backend', 'fuse', '--json', ...extra])
    assert.equal(r.code, 0, `attach: ${r.stderr}`)
    const j = JSON.parse(r.stdout) as AttachOut
    sb.trackPid(j.pid)
    return j
  }

  async function detach(dev: string): Promise<void> {
    const r = await sb.vdev(['detach', dev])
    assert.equal(r.code, 0, `detach: ${r.stderr}`)
  }

  /** An ext4 image (VDIMG) holding a few files. */
  async function ext4Image(name: string, size = 32 << 20): Promise<{raw: string; image: string; src: string}> {
    const src = sb.p(`${name}-src`)
    writeTree(src, [
      {name: 'keep.bin', size: 300_000},
      {name: 'gone.bin', size: 200_000},
      {name: 'dir/inner.bin', size: 70_000},
    ])
    const raw = sb.p(`${name}.raw`)
    mkfsExt4(raw, size, src)
    const image = sb.p(`${name}.vdimg`)
    const r = await runCli(['create', raw, image])
    assert.equal(r.code, 0, r.stderr)
    return {raw, image, src}
  }

  it('ext4 read-write: files written survive detach and re-attach with the overlay; without it, the old content; the image never changes', async () => {
    const {image, src} = await ext4Image('rw')
    const before = fileHash(image)
    const ovl = sb.p('rw.vdovl')
    const dev = await attachRw(image, ['--overlay', ovl])
    assert.equal(dev.readOnly, false)
    assert.equal(dev.overlay, ovl)
    const ro = await run('blockdev', ['--getro', dev.device])
    assert.equal(ro.stdout.toString().trim(), '0')
    const mnt = await sb.mount(dev.device, 'rw-mnt')
    const written = prng(77, 3_000_000)
    fs.writeFileSync(path.join(mnt, 'new.bin'), written)
    fs.mkdirSync(path.join(mnt, 'newdir'))
    fs.writeFileSync(path.join(mnt, 'newdir', 'note.txt'), 'written through the overlay\n')
    fs.rmSync(path.join(mnt, 'gone.bin'))
    assert.equal((await run('sync', [])).code, 0)
    const list = await sb.vdev(['list', '--json'])
    const entry = (JSON.parse(list.stdout) as Array<{device: string; readOnly: boolean; overlay?: string; stats?: {writes?: number; flushes?: number}}>).find((e) => e.device === dev.device)
    assert.ok(entry, list.stdout)
    assert.equal(entry.readOnly, false)
    assert.equal(entry.overlay, ovl)
    assert.ok((entry.stats?.writes ?? 0) > 0 && (entry.stats?.flushes ?? 0) > 0, JSON.stringify(entry.stats))
    await sb.umount(mnt)
    await detach(dev.device)

    assert.equal(fileHash(image), before, 'the image file changed')
    const v = await runCli(['verify', image])
    assert.equal(v.code, 0, v.stderr)
    const info = await runCli(['overlay', 'info', ovl, '--json'])
    assert.equal(info.code, 0, info.stderr)
    assert.ok((JSON.parse(info.stdout) as {bytesWritten: number}).bytesWritten > written.length)

    const again = await attachRw(image, ['--overlay', ovl])
    const m2 = await sb.mountRo(again.device, 'rw-mnt2')
    assert.ok(fs.readFileSync(path.join(m2, 'new.bin')).equals(written))
    assert.equal(fs.readFileSync(path.join(m2, 'newdir', 'note.txt'), 'utf8'), 'written through the overlay\n')
    assert.equal(fs.existsSync(path.join(m2, 'gone.bin')), false)
    assert.ok(fs.readFileSync(path.join(m2, 'keep.bin')).equals(fs.readFileSync(path.join(src, 'keep.bin'))))
    await sb.umount(m2)
    await detach(again.device)

    const plain = await attachRw(image, [])
    assert.equal(plain.readOnly, true)
    const m3 = await sb.mountRo(plain.device, 'rw-mnt3')
    assert.equal(fs.existsSync(path.join(m3, 'new.bin')), false)
    assert.ok(fs.readFileSync(path.join(m3, 'gone.bin')).equals(fs.readFileSync(path.join(src, 'gone.bin'))))
    await sb.umount(m3)
    await detach(plain.device)
    assert.equal(fileHash(image), before)
  })

  it('an ext4 captured with a dirty journal: refused read-only, replayed through a scratch overlay', async () => {
    // The capture: the file system's backing file copied while it is mounted, after sync — the journal
    // holds committed transactions and the superblock says needs_recovery, as in a disk pulled from a
    // running machine.
    const src = sb.p('dirty-src')
    writeTree(src, [{name: 'old.bin', size: 100_000}])
    const raw = sb.p('dirty.raw')
    mkfsExt4(raw, 32 << 20, src)
    const mnt = sb.p('dirty-live')
    fs.mkdirSync(mnt)
    const m = await run('mount', ['-o', 'loop', raw, mnt])
    assert.equal(m.code, 0, m.stderr)
    let captured = sb.p('dirty-captured.raw')
    try {
      fs.writeFileSync(path.join(mnt, 'journalled.bin'), prng(5, 400_000))
      assert.equal((await run('sync', [])).code, 0)
      fs.copyFileSync(raw, captured)
    } finally {
      assert.equal((await run('umount', [mnt])).code, 0)
    }
    const dump = await run('dumpe2fs', ['-h', captured])
    if (!/needs_recovery/.test(dump.stdout.toString())) {
      // The kernel checkpointed everything before the copy: no dirty journal to test with this time.
      captured = ''
    }
    assert.ok(captured, 'the captured image has needs_recovery set')
    const image = sb.p('dirty.vdimg')
    assert.equal((await runCli(['create', captured, image])).code, 0)
    const before = fileHash(image)

    const ro = await attachRw(image, [])
    fs.mkdirSync(sb.p('dirty-ro'))
    const refused = await run('mount', ['-o', 'ro', ro.device, sb.p('dirty-ro')])
    if (refused.code === 0) await run('umount', [sb.p('dirty-ro')])
    assert.notEqual(refused.code, 0, 'a read-only device with a dirty journal cannot be mounted without noload')
    await detach(ro.device)

    const rw = await attachRw(image, ['--scratch'])
    assert.ok(rw.overlay && fs.existsSync(rw.overlay), 'the scratch overlay exists while attached')
    const m2 = await sb.mount(rw.device, 'dirty-mnt', ['-o', 'ro'])
    assert.ok(fs.readFileSync(path.join(m2, 'journalled.bin')).equals(prng(5, 400_000)), 'the replayed journal holds the file')
    await sb.umount(m2)
    await detach(rw.device)
    assert.equal(fs.existsSync(path.dirname(rw.overlay)), false, 'the scratch overlay is removed at detach')
    assert.equal(fileHash(image), before)
  })

  it('e2fsck -y repairs a damaged file system in the overlay; the image keeps its damage', async () => {
    const {raw} = await ext4Image('fsck')
    // Damage: clear the inode of a file that a directory still names (e2fsck: "deleted/unused inode").
    const d = await run('debugfs', ['-w', '-R', 'clri <12>', raw])
    assert.equal(d.code, 0, d.stderr)
    const image = sb.p('fsck-damaged.vdimg')
    assert.equal((await runCli(['create', raw, image])).code, 0)
    const before = fileHash(image)
    const ovl = sb.p('fsck.vdovl')
    const dev = await attachRw(image, ['--overlay', ovl])
    const fix = await run('e2fsck', ['-fy', dev.device])
    assert.equal(fix.code, 1, `e2fsck -fy: exit ${fix.code} (1: errors corrected) ${fix.stdout} ${fix.stderr}`)
    const check = await run('e2fsck', ['-fn', dev.device])
    assert.equal(check.code, 0, `after repair, e2fsck -fn: ${check.stdout}`)
    await detach(dev.device)
    const plain = await attachRw(image, [])
    const still = await run('e2fsck', ['-fn', plain.device])
    assert.equal(still.code, 4, 'without the overlay the damage is still there')
    await detach(plain.device)
    assert.equal(fileHash(image), before)
  })

  it('discard and write-zeroes (blkdiscard) read back as zeros; a write over a bad area makes it readable', async () => {
    const size = 8 << 20
    const raw = sb.p('blocks.raw')
    const data = prng(9, size)
    fs.writeFileSync(raw, data)
    const map = sb.p('blocks.map')
    const bad = {offset: 5 << 20, length: 8192}
    writeTruthMap(map, size, [bad])
    const image = sb.p('blocks.vdimg')
    const c = await runCli(['create', raw, image, '--mapfile', map])
    assert.equal(c.code, 0, c.stderr)
    const dev = await attachRw(image, ['--scratch'])
    const readAt = async (offset: number, length: number) => run('dd', [`if=${dev.device}`, 'bs=4096', `skip=${offset / 4096}`, `count=${length / 4096}`, 'iflag=direct', 'status=none'])
    const discard = await run('blkdiscard', ['-o', String(1 << 20), '-l', String(1 << 20), dev.device])
    assert.equal(discard.code, 0, discard.stderr)
    const zero = await run('blkdiscard', ['-z', '-o', String(3 << 20), '-l', String(256 << 10), dev.device])
    assert.equal(zero.code, 0, zero.stderr)
    assert.ok((await readAt(1 << 20, 1 << 20)).stdout.equals(Buffer.alloc(1 << 20)), 'discarded range reads as zeros')
    assert.ok((await readAt(3 << 20, 256 << 10)).stdout.equals(Buffer.alloc(256 << 10)), 'write-zeroes range reads as zeros')
    assert.ok((await readAt(2 << 20, 1 << 20)).stdout.equals(data.subarray(2 << 20, 3 << 20)), 'the range between is untouched')
    const badRead = await readAt(bad.offset, 4096)
    assert.notEqual(badRead.code, 0, 'the bad area fails before it is written')
    assert.match(badRead.stderr, /Input\/output error/)
    const block = prng(10, 8192)
    const w = await run('dd', [`of=${dev.device}`, 'bs=8192', `seek=${bad.offset / 8192}`, 'count=1', 'oflag=direct', 'conv=fsync', 'iflag=fullblock', 'status=none'], {input: block})
    assert.equal(w.code, 0, w.stderr)
    assert.ok((await readAt(bad.offset, 8192)).stdout.equals(block), 'the written bad area reads what was written')
    // Past the end: the kernel refuses before anything reaches the overlay.
    const past = await run('dd', [`of=${dev.device}`, 'bs=4096', `seek=${size / 4096}`, 'count=1', 'oflag=direct', 'iflag=fullblock', 'status=none'], {input: Buffer.alloc(4096)})
    assert.notEqual(past.code, 0)
    assert.match(past.stderr, /No space left on device/)
    await detach(dev.device)
  })

  it('SIGKILL of the server during a write load: every write acknowledged by fdatasync is there, the overlay valid (3 rounds)', async () => {
    const size = 16 << 20
    const raw = sb.p('crash.raw')
    fs.writeFileSync(raw, prng(11, size))
    const image = sb.p('crash.vdimg')
    assert.equal((await runCli(['create', raw, image])).code, 0)
    const before = fileHash(image)
    const ovl = sb.p('crash.vdovl')
    const acked = new Map<number, number>() // block → round of its last acknowledged write
    const pattern = (block: number, round: number): Buffer => {
      const b = Buffer.alloc(4096, round)
      b.writeUInt32LE(block, 0)
      b.writeUInt32LE(round, 4)
      return b
    }
    for (let round = 1; round <= 3; round++) {
      const dev = await attachRw(image, ['--overlay', ovl])
      const log = sb.p(`crash-${round}.log`)
      // The writer: block, fdatasync (the loop device's flush → FUSE FSYNC → the overlay's fdatasync), then
      // log the block as acknowledged (the log itself fsynced). Killed mid-way, its last writes fail.
      const script = `
        const fs = require('fs')
        const [dev, log, round] = [process.argv[1], process.argv[2], Number(process.argv[3])]
        const fd = fs.openSync(dev, 'r+')
        const lfd = fs.openSync(log, 'a')
        let x = round * 7919
        for (let i = 0; i < 100000; i++) {
          x = (x * 1103515245 + 12345) % 2147483648
          const block = x % ${size / 4096}
          const b = Buffer.alloc(4096, round)
          b.writeUInt32LE(block, 0)
          b.writeUInt32LE(round, 4)
          try { fs.writeSync(fd, b, 0, 4096, block * 4096); fs.fdatasyncSync(fd) } catch { process.exit(0) }
          fs.writeSync(lfd, block + '\\n'); fs.fsyncSync(lfd)
        }`
      const writer = spawn(process.execPath, ['-e', script, dev.device, log, String(round)], {stdio: 'ignore'})
      const exited = new Promise<void>((resolve) => writer.on('exit', () => resolve()))
      await new Promise((r) => setTimeout(r, 1500 + round * 300))
      process.kill(dev.pid, 'SIGKILL')
      await exited
      const force = await sb.vdev(['detach', '--force', dev.id])
      assert.equal(force.code, 0, force.stderr)
      const blocks = fs.readFileSync(log, 'utf8').trim().split('\n').filter(Boolean).map(Number)
      assert.ok(blocks.length > 5, `the writer acknowledged ${blocks.length} writes in round ${round}`)
      for (const b of blocks) acked.set(b, round)
      const info = await runCli(['overlay', 'info', ovl, '--json'])
      assert.equal(info.code, 0, `overlay info after SIGKILL: ${info.stderr}`)
      const check = await attachRw(image, ['--overlay', ovl])
      const fd = fs.openSync(check.device, 'r')
      try {
        for (const [block, r] of acked) {
          const got = Buffer.alloc(4096)
          fs.readSync(fd, got, 0, 4096, block * 4096)
          assert.ok(got.equals(pattern(block, r)), `block ${block}: acknowledged in round ${r}, reads round ${got.readUInt32LE(4)}`)
        }
      } finally {
        fs.closeSync(fd)
      }
      await detach(check.device)
    }
    assert.equal(fileHash(image), before)
  })

  it('clear errors: an overlay of another image, an overlay in use, a full and a read-only file system under it', async () => {
    const {image} = await ext4Image('err-a', 16 << 20)
    const {image: other} = await ext4Image('err-b', 16 << 20)
    const ovl = sb.p('err.vdovl')
    const dev = await attachRw(image, ['--overlay', ovl])
    // In use: a second server on the same overlay (serve NBD, loopback) is refused, exit 6.
    const second = await sb.vdev(['serve', image, '--overlay', ovl, '--listen', '127.0.0.1:0'], 60_000)
    assert.equal(second.code, 6, second.stderr)
    assert.match(second.stderr.trim(), /in use by another vdev process/)
    assert.equal(second.stderr.trim().split('\n').length, 1)
    await detach(dev.device)
    // Another image's overlay: usage error, exit 2, one line naming both bases.
    const wrong = await sb.vdev(['attach', other, '--backend', 'fuse', '--overlay', ovl])
    assert.equal(wrong.code, 2, wrong.stderr)
    assert.match(wrong.stderr.trim(), /belongs to another base/)
    assert.equal(wrong.stderr.trim().split('\n').length, 1)
    assert.equal(sb.entries().length, 0, 'nothing stays registered')
    // A backend that cannot write: refused before anything starts, naming those that can.
    const cannot = await sb.vdev(['attach', image, '--backend', 'iscsi', '--scratch'])
    assert.equal(cannot.code, 2, cannot.stderr)
    assert.match(cannot.stderr.trim(), /iscsi backend cannot attach read-write: .*fuse/)
    assert.equal(cannot.stderr.trim().split('\n').length, 1)

    // A full file system under the overlay: the kernel sees write errors, nothing is corrupted.
    const small = await sb.mount('tmpfs', 'small-fs', ['-t', 'tmpfs', '-o', 'size=2m'])
    const full = path.join(small, 'full.vdovl')
    const d2 = await attachRw(image, ['--overlay', full])
    const big = await run('dd', [`of=${d2.device}`, 'bs=1M', 'count=6', 'oflag=direct', 'conv=fsync', 'iflag=fullblock', 'status=none'], {input: prng(12, 6 << 20)})
    assert.notEqual(big.code, 0, 'writing more than the overlay can hold fails')
    assert.match(big.stderr, /(No space left on device|Input\/output error)/)
    await detach(d2.device)
    assert.match(fs.readFileSync(path.join(sb.stateDir, 'logs', `${d2.id}.log`), 'utf8'), /write of \d+ bytes at \d+ failed \(ENOSPC\)/, 'the daemon logs the failed write')
    const info = await runCli(['overlay', 'info', full, '--json'])
    assert.equal(info.code, 0, `the overlay on the full file system is still valid: ${info.stderr}`)
    assert.equal((JSON.parse(info.stdout) as {discardedBytes: number}).discardedBytes, 0)
    await sb.umount(small)

    // A read-only file system under a new overlay: one line, nothing registered.
    const roDir = await sb.mount('tmpfs', 'ro-fs', ['-t', 'tmpfs', '-o', 'size=1m,ro'])
    const ro = await sb.vdev(['attach', image, '--backend', 'fuse', '--overlay', path.join(roDir, 'x.vdovl')])
    assert.equal(ro.code, 3, ro.stderr)
    assert.match(ro.stderr.trim(), /x\.vdovl.*(read-only|EROFS)/i)
    assert.equal(ro.stderr.trim().split('\n').length, 1)
    assert.equal(sb.entries().length, 0)
    await sb.umount(roDir)
  })
})

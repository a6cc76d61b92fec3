/**
 * Runs inside the test VM (docs/vm-harness.md): the Linux kernel's NFS v3 client against `vdev serve
 * --protocol nfs`, then a read-only loop device on the served file, as a user on Linux (or DiskImages on
 * macOS) would stack them. The server runs in its own process: the kernel's MOUNT and READ calls block
 * this one (mount(2), read(2)) until the server answers.
 */
import {strict as assert} from 'node:assert'
import {execFileSync, spawn, spawnSync, type ChildProcess} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BAD, IMAGE_SIZE, SECTOR, makeImages, type Images} from '../nfs/fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const PAGE = 4096

/** Every 4 KiB page of the file that holds at least one unreadable byte. */
function badPages(): Set<number> {
  const pages = new Set<number>()
  for (const b of BAD)
    for (let p = Math.floor(b.offset / PAGE); p * PAGE < b.offset + b.length; p++) pages.add(p)
  return pages
}

function isBadSector(s: number): boolean {
  return BAD.some((b) => s * SECTOR < b.offset + b.length && (s + 1) * SECTOR > b.offset)
}

/**
 * Read a file or device from start to end with buffered reads, the way cat or dd would: a short read just
 * continues; after EIO the reader moves on by `skip` bytes (a page, or more where the kernel is known to
 * fail whole large folios), counting every page it skipped as failed. Returns the bytes read (zeros where
 * failed) and the failed page numbers.
 */
function readAllSkippingErrors(file: string, size: number, skip = PAGE): {data: Buffer; failed: number[]} {
  const fd = fs.openSync(file, 'r')
  const data = Buffer.alloc(size)
  const failed: number[] = []
  try {
    let at = 0
    while (at < size) {
      const want = Math.min(1 << 20, size - at)
      try {
        const n = fs.readSync(fd, data, at, want, at)
        if (n === 0) break
        at += n
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EIO') throw err
        const next = Math.min(size, (Math.floor(at / skip) + 1) * skip)
        for (let p = Math.floor(at / PAGE); p * PAGE < next; p++) failed.push(p)
        at = next
      }
    }
  } finally {
    fs.closeSync(fd)
  }
  return {data, failed}
}

/** One sector with O_DIRECT through dd: 'ok' with its bytes, or 'eio'. */
function readSectorDirect(dev: string, sector: number): {ok: true; data: Buffer} | {ok: false; err: string} {
  const r = spawnSync('dd', [`if=${dev}`, 'iflag=direct', `bs=${SECTOR}`, `skip=${sector}`, 'count=1', 'status=none'], {
    encoding: 'buffer',
  })
  if (r.status === 0) return {ok: true, data: r.stdout}
  return {ok: false, err: r.stderr.toString()}
}

function sameOutside(got: Buffer, want: Buffer, failedPages: Set<number>): void {
  for (let p = 0; p * PAGE < want.length; p++) {
    if (failedPages.has(p)) continue
    const a = got.subarray(p * PAGE, (p + 1) * PAGE)
    const b = want.subarray(p * PAGE, (p + 1) * PAGE)
    if (!a.equals(b)) assert.fail(`page ${p} (byte ${p * PAGE}) differs from the source`)
  }
}

describe('NFS v3 kernel client against vdev serve --protocol nfs', function () {
  this.timeout(600000)
  let img: Images
  let server: ChildProcess | undefined
  let serverLog = ''
  let port = 0
  const mnt = '/tmp/vdev-nfs-mnt'
  let mounted = false
  let loop = ''

  before(async function () {
    if (process.env.VDEV_IN_VM !== '1') this.skip() // mounts NFS and attaches loop devices: VM only
    img = await makeImages('vdev-vm-nfs-')
    server = spawn(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'serve', img.badImage, '--protocol', 'nfs', '--threads', '2', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    server.stderr!.on('data', (d: Buffer) => {
      serverLog += d.toString()
      process.stderr.write(d)
    })
    const line = await new Promise<string>((resolve, reject) => {
      let out = ''
      server!.stdout!.on('data', (d: Buffer) => {
        out += d.toString()
        if (out.includes('\n')) resolve(out.split('\n')[0])
      })
      server!.once('exit', (code) => reject(new Error(`vdev serve exited ${code}`)))
    })
    const ready = JSON.parse(line) as {listen: string; file: string}
    assert.equal(ready.file, 'bad.img')
    port = Number(ready.listen.split(':').pop())
    fs.mkdirSync(mnt, {recursive: true})
  })

  after(() => {
    if (loop) spawnSync('losetup', ['-d', loop])
    if (mounted) {
      const r = spawnSync('umount', [mnt])
      if (r.status !== 0) spawnSync('umount', ['-f', '-l', mnt])
    }
    if (server && server.exitCode === null) server.kill('SIGTERM')
    img?.cleanup()
  })

  it('mounts with mount -t nfs -o vers=3,proto=tcp,port=P,mountport=P,nolock,ro', () => {
    // No mount.nfs helper is installed: util-linux mount passes the options to mount(2) as text, and the
    // kernel's text parser needs the server address spelled out (addr=).
    const opts = `vers=3,proto=tcp,port=${port},mountport=${port},mountproto=tcp,nolock,ro,addr=127.0.0.1`
    execFileSync('mount', ['-t', 'nfs', '-o', opts, '127.0.0.1:/', mnt], {stdio: 'pipe'})
    mounted = true
    const line = fs
      .readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .find((l) => l.split(' ')[1] === mnt)
    assert.ok(line, 'not in /proc/mounts')
    assert.match(line!, / nfs ro,/)
    assert.match(line!, /vers=3/)
    assert.deepEqual(fs.readdirSync(mnt), ['bad.img'])
    const st = fs.statSync(path.join(mnt, 'bad.img'))
    assert.equal(st.size, IMAGE_SIZE)
    assert.equal(st.mode & 0o777, 0o444)
    assert.ok(st.isFile())
  })

  it('buffered reads of the file through the mount: never a wrong byte; EIO covers every unreadable page', () => {
    // The page cache fails a whole folio when one READ in it fails, and the NFS client builds large folios
    // (up to MiBs) as readahead grows, so EIO here spreads past the bad bytes to their folio. What must
    // hold: every page either reads as the source or fails, every page with a bad byte fails, and every
    // run of failed pages holds a bad byte.
    const {data, failed} = readAllSkippingErrors(path.join(mnt, 'bad.img'), IMAGE_SIZE, 64 * 1024)
    const failedSet = new Set(failed)
    for (const p of badPages()) assert.ok(failedSet.has(p), `page ${p} holds a bad byte but read`)
    sameOutside(data, img.data, failedSet)
    const runs: Array<[number, number]> = []
    for (const p of failed) {
      const last = runs[runs.length - 1]
      if (last && last[1] === p - 1) last[1] = p
      else runs.push([p, p])
    }
    for (const [a, b] of runs)
      assert.ok(
        [...badPages()].some((p) => p >= a && p <= b),
        `pages ${a}-${b} failed without holding a bad byte`,
      )
  })

  it('O_DIRECT reads of the file through the mount are exact: short up to a bad byte, EIO at bad sectors only', () => {
    // NFS direct I/O sends READs for exactly the bytes asked (no alignment needed), so the server's short
    // reads and NFS3ERR_IO reach the reader unchanged.
    const fd = fs.openSync(path.join(mnt, 'bad.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
    const data = Buffer.alloc(IMAGE_SIZE)
    const failedSectors: number[] = []
    try {
      let at = 0
      while (at < IMAGE_SIZE) {
        try {
          const n = fs.readSync(fd, data, at, Math.min(256 * 1024, IMAGE_SIZE - at), at)
          assert.ok(n > 0, `read of 0 bytes at ${at}`)
          at += n
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EIO') throw err
          assert.equal(at % SECTOR, 0, `EIO at ${at}, inside a sector`)
          failedSectors.push(at / SECTOR)
          at += SECTOR
        }
      }
    } finally {
      fs.closeSync(fd)
    }
    const want: number[] = []
    for (let sct = 0; sct * SECTOR < IMAGE_SIZE; sct++) if (isBadSector(sct)) want.push(sct)
    assert.deepEqual(failedSectors, want)
    const sectors = new Set(want)
    for (let sct = 0; sct * SECTOR < IMAGE_SIZE; sct++) {
      if (sectors.has(sct)) continue
      if (!data.subarray(sct * SECTOR, (sct + 1) * SECTOR).equals(img.data.subarray(sct * SECTOR, (sct + 1) * SECTOR)))
        assert.fail(`sector ${sct} differs from the source`)
    }
  })

  it('refuses writes: EROFS opening the file for writing, creating a file', () => {
    assert.throws(() => fs.openSync(path.join(mnt, 'bad.img'), 'r+'), /EROFS|EACCES/)
    assert.throws(() => fs.writeFileSync(path.join(mnt, 'new'), 'x'), /EROFS|EACCES/)
  })

  it('losetup -r of the served file: read-only loop device of the image size', () => {
    loop = execFileSync('losetup', ['-r', '--direct-io=on', '-f', '--show', path.join(mnt, 'bad.img')], {encoding: 'utf8'}).trim()
    assert.match(loop, /^\/dev\/loop\d+$/)
    assert.equal(execFileSync('blockdev', ['--getro', loop], {encoding: 'utf8'}).trim(), '1')
    assert.equal(Number(execFileSync('blockdev', ['--getsize64', loop], {encoding: 'utf8'}).trim()), IMAGE_SIZE)
  })

  it('the whole loop device matches the source outside unreadable areas; EIO exactly at their pages', () => {
    assert.ok(loop, 'no loop device')
    const {data, failed} = readAllSkippingErrors(loop, IMAGE_SIZE)
    assert.deepEqual(failed, [...badPages()].sort((a, b) => a - b))
    sameOutside(data, img.data, badPages())
  })

  it('O_DIRECT on the loop device at the edges of each bad area: EIO at its sectors, neighbours read', () => {
    assert.ok(loop, 'no loop device')
    const sectors = new Set<number>()
    for (const b of BAD) {
      const first = Math.floor(b.offset / SECTOR)
      const last = Math.floor((b.offset + b.length - 1) / SECTOR)
      for (const s of [first - 1, first, Math.floor((first + last) / 2), last, last + 1])
        if (s >= 0 && s * SECTOR < IMAGE_SIZE) sectors.add(s)
    }
    for (const s of [...sectors].sort((a, b) => a - b)) {
      const r = readSectorDirect(loop, s)
      if (isBadSector(s)) {
        assert.equal(r.ok, false, `sector ${s} is unreadable but read`)
        if (!r.ok) assert.match(r.err, /Input\/output error/, `sector ${s}`)
      } else {
        assert.equal(r.ok, true, `sector ${s} is readable: ${r.ok ? '' : r.err}`)
        if (r.ok) assert.ok(r.data.equals(img.data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s} bytes`)
      }
    }
  })

  it('detach, unmount and stop leave nothing behind', async () => {
    execFileSync('losetup', ['-d', loop])
    const gone = loop
    loop = ''
    assert.ok(!execFileSync('losetup', ['-a'], {encoding: 'utf8'}).includes(gone), 'loop device still attached')
    execFileSync('umount', [mnt])
    mounted = false
    assert.ok(!fs.readFileSync('/proc/mounts', 'utf8').includes(` ${mnt} `))
    const exited = new Promise<number | null>((r) => server!.once('exit', (code) => r(code)))
    server!.kill('SIGTERM')
    assert.equal(await exited, 0)
    // The kernel's reads were served on a serving thread: the main thread served none.
    assert.match(serverLog, /connections: [1-9]\d* on serving threads, \d+ on the main thread \(which served 0 reads\)/)
  })
})

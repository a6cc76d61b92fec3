/**
 * Runs inside the test VM (docs/vm-harness.md): the Linux kernel's NFS v3 client mounting `vdev serve
 * --protocol nfs --overlay FILE` read-write. dd with conv=fsync writes into the file (the client's WRITEs
 * and COMMIT), a write over an unreadable area makes it readable, a write past the end fails; after a
 * remount, and after a restart of the server on the same overlay, every written byte reads back; the image
 * file's SHA-256 never changes. The server runs in its own process (mount(2), write(2) and fsync(2) block
 * this one until it answers).
 */
import {strict as assert} from 'node:assert'
import {execFileSync, spawn, spawnSync, type ChildProcess} from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BAD, IMAGE_SIZE, makeImages, type Images} from '../nfs/fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const PAGE = 4096

const fileHash = (f: string): string => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex')

/** Bytes of the file read with O_DIRECT (exactly what the server answers, no page cache). */
function readDirect(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT)
  try {
    const b = Buffer.alloc(length)
    let at = 0
    while (at < length) {
      const n = fs.readSync(fd, b, at, length - at, offset + at)
      assert.ok(n > 0, `read of 0 bytes at ${offset + at}`)
      at += n
    }
    return b
  } finally {
    fs.closeSync(fd)
  }
}

function dd(args: string[], input?: Buffer): {status: number | null; stderr: string} {
  const r = spawnSync('dd', [...args, 'status=none'], {input, encoding: 'buffer'})
  return {status: r.status, stderr: r.stderr.toString()}
}

describe('NFS v3 kernel client, read-write through vdev serve --protocol nfs --overlay', function () {
  this.timeout(600000)
  let img: Images
  let server: ChildProcess | undefined
  let serverLog = ''
  let port = 0
  let overlay = ''
  let imageHash = ''
  const mnt = '/tmp/vdev-nfsw-mnt'
  let mounted = false
  let file = ''

  /** Where dd writes, and what (none overlapping another): a 1 MiB run at 1.5 MiB (over the zero run), the page holding the first bad area, 3 odd bytes. */
  const runAt = 1536 * 1024
  const run = crypto.randomBytes(1 << 20)
  const badPage = Math.floor(BAD[0].offset / PAGE) * PAGE
  const pageData = crypto.randomBytes(PAGE)
  const oddAt = 5 * 1024 * 1024 + 4093
  const odd = Buffer.from([0xde, 0xad, 0x42])

  async function startServer(): Promise<void> {
    serverLog = ''
    server = spawn(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'serve', img.badImage, '--protocol', 'nfs', '--overlay', overlay, '--threads', '2', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    server.stderr!.on('data', (d: Buffer) => (serverLog += d.toString()))
    const line = await new Promise<string>((resolve, reject) => {
      let out = ''
      server!.stdout!.on('data', (d: Buffer) => {
        out += d.toString()
        if (out.includes('\n')) resolve(out.split('\n')[0])
      })
      server!.once('exit', (code) => reject(new Error(`vdev serve exited ${code}: ${serverLog}`)))
    })
    const ready = JSON.parse(line) as {listen: string; file: string; overlay: string}
    assert.equal(ready.file, 'bad.img')
    assert.equal(ready.overlay, overlay)
    port = Number(ready.listen.split(':').pop())
  }

  async function stopServer(): Promise<string> {
    const exited = new Promise<number | null>((r) => server!.once('exit', (code) => r(code)))
    server!.kill('SIGTERM')
    assert.equal(await exited, 0, serverLog)
    server = undefined
    return serverLog
  }

  function mount(): void {
    // wsize 64 KiB: a 1 MiB fsync then takes several UNSTABLE WRITEs and a COMMIT (one WRITE would be sent FILE_SYNC).
    const opts = `vers=3,proto=tcp,port=${port},mountport=${port},mountproto=tcp,nolock,wsize=65536,addr=127.0.0.1`
    execFileSync('mount', ['-t', 'nfs', '-o', opts, '127.0.0.1:/', mnt], {stdio: 'pipe'})
    mounted = true
  }

  function umount(): void {
    execFileSync('umount', [mnt])
    mounted = false
  }

  /** The written ranges read back exactly; the bytes around them are the image's. */
  function checkWritten(): void {
    assert.ok(readDirect(file, runAt, run.length).equals(run), 'the 1 MiB run')
    assert.ok(readDirect(file, runAt - PAGE, PAGE).equals(img.data.subarray(runAt - PAGE, runAt)), 'the page before the run')
    assert.ok(readDirect(file, badPage, PAGE).equals(pageData), 'the page written over a bad area reads as written')
    const around = readDirect(file, oddAt - 10, 16)
    const want = Buffer.from(img.data.subarray(oddAt - 10, oddAt + 6))
    odd.copy(want, 10)
    assert.ok(around.equals(want), 'the three bytes and their neighbours')
  }

  before(async function () {
    if (process.env.VDEV_IN_VM !== '1') this.skip() // mounts NFS: VM only
    img = await makeImages('vdev-vm-nfsw-')
    overlay = path.join(img.dir, 'bad.vdovl')
    imageHash = fileHash(img.badImage)
    file = path.join(mnt, 'bad.img')
    fs.mkdirSync(mnt, {recursive: true})
    await startServer()
  })

  after(() => {
    if (mounted) {
      const r = spawnSync('umount', [mnt])
      if (r.status !== 0) spawnSync('umount', ['-f', '-l', mnt])
    }
    if (server && server.exitCode === null) server.kill('SIGTERM')
    img?.cleanup()
  })

  it('mounts read-write: rw in /proc/mounts, the file mode 0644 and writable', () => {
    mount()
    const line = fs
      .readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .find((l) => l.split(' ')[1] === mnt)
    assert.ok(line, 'not in /proc/mounts')
    assert.match(line!, / nfs rw,/)
    const st = fs.statSync(file)
    assert.equal(st.size, IMAGE_SIZE)
    assert.equal(st.mode & 0o777, 0o644)
    fs.accessSync(file, fs.constants.W_OK)
  })

  it('dd conv=notrunc,fsync writes into the file; a write past the end fails with EFBIG and writes nothing', () => {
    let r = dd([`of=${file}`, 'bs=64k', `seek=${runAt / 65536}`, 'count=16', 'iflag=fullblock', 'conv=notrunc,fsync'], run)
    assert.equal(r.status, 0, r.stderr)
    r = dd([`of=${file}`, 'bs=4096', `seek=${badPage / PAGE}`, 'count=1', 'conv=notrunc,fsync'], pageData)
    assert.equal(r.status, 0, r.stderr)
    r = dd([`of=${file}`, 'bs=1', `seek=${oddAt}`, 'count=3', 'conv=notrunc,fsync'], odd)
    assert.equal(r.status, 0, r.stderr)
    r = dd([`of=${file}`, 'bs=4096', `seek=${IMAGE_SIZE}`, 'oflag=seek_bytes', 'count=1', 'conv=notrunc,fsync'], Buffer.alloc(PAGE, 1))
    assert.notEqual(r.status, 0, 'a write past the end succeeded')
    assert.match(r.stderr, /File too large/)
    assert.equal(fs.statSync(file).size, IMAGE_SIZE)
    // Truncating is refused too (SETATTR of another size: NFS3ERR_INVAL).
    assert.throws(() => fs.truncateSync(file, 0), /EINVAL/)
    assert.equal(fs.statSync(file).size, IMAGE_SIZE)
  })

  it('after a remount (no client cache) every written byte reads back; the image file is unchanged', () => {
    umount()
    mount()
    checkWritten()
    // The rest of the first bad area's neighbourhood still fails where it was bad and not written.
    const stillBad = BAD[1]
    assert.throws(() => readDirect(file, stillBad.offset, 512), /EIO/)
    assert.equal(fileHash(img.badImage), imageHash)
  })

  it('a server restarted on the same overlay serves what was written; its COMMITs were flushes', async () => {
    umount()
    const log = await stopServer()
    const m = /(\d+) writes \((\d+) bytes\).* (\d+) flushes, (\d+) failed/.exec(log)
    assert.ok(m, log)
    assert.ok(Number(m![2]) >= run.length + PAGE + 3, `only ${m![2]} bytes written`)
    assert.ok(Number(m![3]) > 0, 'conv=fsync must reach the server as COMMIT (a flush)')
    assert.equal(m![4], '0', 'no write failed')
    // The kernel's connection was served on a serving thread, through its view of the overlay.
    assert.match(log, /connections: [1-9]\d* on serving threads, \d+ on the main thread \(which served 0 reads\)/)
    await startServer()
    mount()
    checkWritten()
    umount()
    await stopServer()
    assert.equal(fileHash(img.badImage), imageHash, 'the image file changed')
  })
})

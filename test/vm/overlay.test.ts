/**
 * `vdev attach IMG --backend ublk|nbd --overlay FILE` in the test VM (docs/vm-harness.md): the kernel's write
 * path into the copy-on-write overlay (docs/OVERLAY.md), through the CLI with its registry in a temp dir.
 * The image holds an ext4 file system (made by the real mke2fs) in its first 12 MiB and random bytes after.
 *
 * One overlay, three sessions (a CLI start costs many seconds under TCG, so the sessions chain instead of
 * repeating per backend): `vdev attach --backend ublk` writes, then `vdev attach --backend nbd` attaches the
 * same overlay, finds ublk's files and writes its own, then a ublk device made in this process with the other
 * data path (per-tag buffers, no USER_COPY; legacy opcodes) finds both and writes once more. In each CLI
 * session the device is read-write with a write cache, FUA, discard and write-zeroes (sysfs); ext4 is mounted
 * read-write, files are written and synced, `fstrim` runs; `blkdiscard` and `blkdiscard -z` (BLKZEROOUT) of
 * ranges after the file system read back as zeros and land in the overlay as trim and zero records
 * (`inspectOverlay`), an O_DIRECT + O_DSYNC (FUA) write as data; `vdev list --json` counts the writes and the
 * daemon's last log line counts discards, write-zeroes and flushes. Without the overlay the device shows the
 * old content; the image file's sha256 never changes, and it verifies (the verify command's own function).
 */
import {strict as assert} from 'node:assert'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {UblkDevice} from '../../backends/linux/ublk/device'
import {BlockServer} from '../../src/core/blockserver'
import {inspectOverlay, Overlay} from '../../src/layers/overlay'
import {openImage} from '../../src/format/reader'
import {verifyImage} from '../../src/format/verify'
import {openInput} from '../../src/format/input'
import {createImage} from '../../src/format/writer'
import {MiB, run} from './disk-fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const BIN = path.join(ROOT, 'bin', 'run.js')
const DISK = 8 * MiB
/** ext4 spans [0, FS_END); the discard tests use the random bytes after it. */
const FS_END = 6 * MiB
const QUARTER = 256 * 1024
const BLOCK = 64 * 1024
/** What each writing session does after the file system: a discard, a write-zeroes (each 256 KiB), a 64 KiB FUA write. */
const RANGES = {
  ublk: {trimmed: 6 * MiB, zeroed: 6 * MiB + QUARTER, written: 7 * MiB},
  nbd: {trimmed: 6 * MiB + 2 * QUARTER, zeroed: 6 * MiB + 3 * QUARTER, written: 7 * MiB + BLOCK},
  tagbuf: {trimmed: -1, zeroed: 8 * MiB - QUARTER, written: 8 * MiB - 2 * QUARTER},
}
const pattern = (backend: string): Buffer => Buffer.alloc(BLOCK, `${backend} `)

interface AttachJson {
  id: string
  device: string
  backend: string
  readOnly: boolean
  overlay?: string
}

const vdev = (args: string[], timeoutMs = 300_000) => run(process.execPath, [BIN, ...args], {timeoutMs})
const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex')
const out = (r: {stdout: Buffer}): string => r.stdout.toString().trim()
const mounted = (dir: string): boolean => fs.readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === dir)

async function attach(args: string[]): Promise<AttachJson> {
  // A loaded CI machine under TCG can take over a minute to start the daemon.
  const a = await vdev(['attach', ...args, '--json', '--timeout', '240'])
  assert.equal(a.code, 0, `vdev attach ${args.join(' ')}: ${a.stderr}`)
  return JSON.parse(a.stdout.toString()) as AttachJson
}

async function detach(info: AttachJson): Promise<void> {
  const d = await vdev(['detach', info.id])
  assert.equal(d.code, 0, `vdev detach ${info.id}: ${d.stderr}`)
}

/** `length` bytes at `offset`, read with O_DIRECT. */
async function readRange(device: string, offset: number, length: number): Promise<Buffer> {
  const bs = 64 * 1024
  const r = await run('dd', [`if=${device}`, `bs=${bs}`, `skip=${offset / bs}`, `count=${length / bs}`, 'iflag=direct', 'status=none'])
  assert.equal(r.code, 0, r.stderr)
  assert.equal(r.stdout.length, length)
  return r.stdout
}

/** Every byte of [offset, offset+length) in extents of `kind`. */
function coveredBy(extents: Array<{offset: number; length: number; kind: string}>, kind: string, offset: number, length: number): boolean {
  let at = offset
  for (const e of [...extents].filter((x) => x.kind === kind).sort((a, b) => a.offset - b.offset))
    if (e.offset <= at && e.offset + e.length > at) at = e.offset + e.length
  return at >= offset + length
}

describe('vdev attach --overlay on the kernel backends (ublk, kernel NBD; real kernel)', function () {
  this.timeout(900_000)
  let dir: string
  let stateDir: string
  let mnt: string
  let overlay: string
  let image: string
  let raw: Buffer
  let imageSha: string
  const savedStateDir = process.env.VDEV_STATE_DIR
  /** The files the image's ext4 starts with. */
  const original: Record<string, Buffer> = {'hello.txt': Buffer.from('written before the rescue\n'), 'keep.bin': crypto.randomBytes(300 * 1024)}
  /** What the file system holds after each writing session. */
  const files: Record<string, Buffer> = {...original}
  /** The sessions whose ranges (RANGES) were written, in order. */
  const sessions: Array<keyof typeof RANGES> = []

  before(async function () {
    if (process.env.VDEV_IN_VM !== '1') this.skip()
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-overlay-vm-'))
    stateDir = path.join(dir, 'state')
    mnt = path.join(dir, 'mnt')
    overlay = path.join(dir, 'disk.vdovl')
    for (const d of [stateDir, mnt, path.join(dir, 'files')]) fs.mkdirSync(d)
    process.env.VDEV_STATE_DIR = stateDir
    for (const [name, data] of Object.entries(original)) fs.writeFileSync(path.join(dir, 'files', name), data)
    const rawFile = path.join(dir, 'disk.raw')
    fs.writeFileSync(rawFile, crypto.randomBytes(DISK))
    const mk = await run('mkfs.ext4', ['-q', '-F', '-d', path.join(dir, 'files'), rawFile, `${FS_END / 1024}k`])
    assert.equal(mk.code, 0, mk.stderr)
    raw = fs.readFileSync(rawFile)
    image = path.join(dir, 'disk.vdimg')
    const input = openInput(rawFile)
    try {
      await createImage(input, image, {chunkSize: 64 * 1024, threads: 1})
    } finally {
      await input.close()
    }
    imageSha = sha256(fs.readFileSync(image))
  })

  after(async () => {
    try {
      // Whatever failed: no mount, no device, no daemon left for the files after this one.
      if (mnt && mounted(mnt)) await run('umount', ['-l', mnt])
      const devices = stateDir ? path.join(stateDir, 'devices') : ''
      if (devices && fs.existsSync(devices) && fs.readdirSync(devices).length > 0) await vdev(['detach', '--all', '--force'])
    } finally {
      if (savedStateDir === undefined) delete process.env.VDEV_STATE_DIR
      else process.env.VDEV_STATE_DIR = savedStateDir
      if (dir) fs.rmSync(dir, {recursive: true, force: true})
    }
  })

  /**
   * Every file of `files` (and no deleted one) has the same sha256 on the mounted file system. Read
   * asynchronously: when this process serves the device, a synchronous read would wait on itself.
   */
  async function checkFiles(): Promise<void> {
    for (const [name, data] of Object.entries(files)) assert.equal(sha256(await fs.promises.readFile(path.join(mnt, name))), sha256(data), name)
    const names = (await fs.promises.readdir(mnt)).sort()
    assert.equal(names.includes('keep.bin'), 'keep.bin' in files, names.join(' '))
  }

  /** The ranges of every earlier writing session: zeros where discarded or zeroed, the pattern where written. */
  async function checkRanges(device: string): Promise<void> {
    for (const s of sessions) {
      const r = RANGES[s]
      if (r.trimmed >= 0) assert.ok((await readRange(device, r.trimmed, QUARTER)).equals(Buffer.alloc(QUARTER)), `${s}: the discarded range`)
      assert.ok((await readRange(device, r.zeroed, QUARTER)).equals(Buffer.alloc(QUARTER)), `${s}: the zeroed range`)
      assert.ok((await readRange(device, r.written, BLOCK)).equals(pattern(s)), `${s}: the FUA write`)
    }
  }

  /** Mount read-write, check what is there, add files, sync, delete keep.bin, fstrim, unmount. */
  async function writeFiles(dev: string, backend: string): Promise<void> {
    const m = await run('mount', ['-t', 'ext4', dev, mnt])
    assert.equal(m.code, 0, m.stderr)
    try {
      await checkFiles()
      const mine: Record<string, Buffer> = {
        [`${backend}.bin`]: crypto.randomBytes(512 * 1024),
        'hello.txt': Buffer.concat([files['hello.txt'], Buffer.from(`and after, through ${backend}\n`)]),
        [`${backend}/small.txt`]: Buffer.from(`a file in a new directory (${backend})\n`),
      }
      await fs.promises.mkdir(path.join(mnt, backend))
      for (const [name, data] of Object.entries(mine)) await fs.promises.writeFile(path.join(mnt, name), data)
      assert.equal((await run('sync', ['-f', path.join(mnt, 'hello.txt')])).code, 0)
      Object.assign(files, mine)
      if ('keep.bin' in files) {
        await fs.promises.unlink(path.join(mnt, 'keep.bin'))
        delete files['keep.bin']
      }
      // Freed blocks (keep.bin's, and those never used) go to the device as discards.
      const t = await run('fstrim', ['-v', mnt])
      assert.equal(t.code, 0, t.stderr)
      assert.match(out(t), /trimmed/)
    } finally {
      const u = await run('umount', [mnt])
      assert.equal(u.code, 0, u.stderr)
    }
  }

  /** After the file system: a discard (BLKDISCARD), a write-zeroes (BLKZEROOUT), an O_DIRECT + O_DSYNC write (FUA). */
  async function writeRanges(dev: string, s: keyof typeof RANGES): Promise<void> {
    const r = RANGES[s]
    if (r.trimmed >= 0) {
      const d = await run('blkdiscard', ['-o', String(r.trimmed), '-l', String(QUARTER), dev])
      assert.equal(d.code, 0, d.stderr)
    }
    const z = await run('blkdiscard', ['-z', '-o', String(r.zeroed), '-l', String(QUARTER), dev])
    assert.equal(z.code, 0, z.stderr)
    const w = await run('dd', [`of=${dev}`, `bs=${BLOCK}`, `seek=${r.written / BLOCK}`, 'count=1', 'iflag=fullblock', 'oflag=direct,dsync', 'status=none'], {input: pattern(s)})
    assert.equal(w.code, 0, w.stderr)
    sessions.push(s)
    await checkRanges(dev)
  }

  /** Each operation of session `s` is its own kind of record in the overlay: trim, zero, data. */
  function checkRecords(s: keyof typeof RANGES): void {
    const ov = inspectOverlay(overlay)
    const r = RANGES[s]
    if (r.trimmed >= 0) assert.ok(coveredBy(ov.extents, 'trim', r.trimmed, QUARTER), JSON.stringify(ov.extents))
    assert.ok(coveredBy(ov.extents, 'zero', r.zeroed, QUARTER), JSON.stringify(ov.extents))
    assert.ok(coveredBy(ov.extents, 'data', r.written, BLOCK), JSON.stringify(ov.extents))
  }

  /** A session through `vdev attach --backend B --overlay`: everything earlier is there; files, fstrim, the ranges. */
  async function cliSession(backend: 'ublk' | 'nbd', opts: {list: boolean}): Promise<void> {
    const info = await attach([image, '--backend', backend, '--overlay', overlay])
    try {
      assert.equal(info.backend, backend)
      assert.equal(info.readOnly, false)
      assert.equal(info.overlay, overlay)
      const dev = info.device
      const q = `/sys/block/${path.basename(dev)}/queue`
      assert.equal(out(await run('blockdev', ['--getro', dev])), '0')
      assert.equal(out(await run('blockdev', ['--getsize64', dev])), String(DISK))
      assert.equal(fs.readFileSync(`${q}/write_cache`, 'utf8').trim(), 'write back')
      assert.equal(fs.readFileSync(`${q}/fua`, 'utf8').trim(), '1')
      assert.ok(Number(fs.readFileSync(`${q}/discard_max_bytes`, 'utf8')) >= MiB, 'no discard')
      assert.ok(Number(fs.readFileSync(`${q}/write_zeroes_max_bytes`, 'utf8')) >= MiB, 'no write-zeroes')
      await checkRanges(dev)
      await writeFiles(dev, backend)
      await writeRanges(dev, backend)
      if (opts.list) {
        const l = await vdev(['list', '--json'])
        assert.equal(l.code, 0, l.stderr)
        const listed = (JSON.parse(l.stdout.toString()) as Array<{id: string; readOnly: boolean; overlay?: string; stats?: {writes?: number; writeBytes?: number}}>).find((x) => x.id === info.id)
        assert.ok(listed, l.stdout.toString())
        assert.equal(listed.readOnly, false)
        assert.equal(listed.overlay, overlay)
        assert.ok((listed.stats?.writes ?? 0) > 0 && (listed.stats?.writeBytes ?? 0) >= 512 * 1024, JSON.stringify(listed.stats))
      }
    } finally {
      await detach(info)
    }
    // The daemon's last words: what reached the overlay, by kind.
    const log = fs.readFileSync(path.join(stateDir, 'logs', `${info.id}.log`), 'utf8')
    const s = /(\d+) writes \((\d+) bytes\), (\d+) write-zeroes, (\d+) discards, (\d+) flushes, (\d+) failed/.exec(log)
    assert.ok(s, log)
    const [writes, , zeroes, discards, flushes, failed] = s.slice(1).map(Number)
    assert.ok(writes > 0 && zeroes > 0 && discards > 0 && flushes > 0, s[0])
    assert.equal(failed, 0, s[0])
    // Both serve a writable device on their serving threads, through views of the overlay (the tag-buffer
    // session below serves ublk from the owner's thread).
    if (backend === 'ublk') assert.match(log, /ublk: 2 queue\(s\), each served on a thread of its own, read-write/)
    else assert.match(log, /nbd: \/dev\/nbd\d+: \d+ serving threads/)
    // Discards and write-zeroes are records without data, not zero-filled writes.
    checkRecords(backend)
    assert.equal(sha256(fs.readFileSync(image)), imageSha, 'the image file changed')
  }

  it('ublk --overlay: read-write, cache + FUA + discard + write-zeroes; ext4 written and trimmed; each op lands in the overlay', async () => {
    await cliSession('ublk', {list: true})
  })

  it("kernel NBD, the same overlay: ublk's files and ranges are there; the same checks for its own writes", async function () {
    if (sessions.length !== 1) this.skip() // the ublk session failed
    await cliSession('nbd', {list: false})
  })

  it('ublk with tag buffers (no USER_COPY) and legacy opcodes, the same overlay: both sessions there; its writes land too', async function () {
    if (sessions.length !== 2) this.skip()
    // In this process (a CLI start costs much here), through the other data path of UBLK_IO_OP_WRITE: the
    // driver copies the bio into the tag's buffer; and on this thread, the overlay's owner (the CLI sessions
    // serve ublk on serving threads). Only async I/O and tools touch the device from here.
    const server = new BlockServer(await Overlay.open(await openImage(image), overlay))
    const dev = await UblkDevice.create(server, {userCopy: false, legacyOpcodes: true})
    try {
      assert.equal(dev.info.userCopy, false)
      const node = dev.info.blockDevice
      assert.equal(out(await run('blockdev', ['--getro', node])), '0')
      const ro = await run('mount', ['-t', 'ext4', '-o', 'ro', node, mnt])
      assert.equal(ro.code, 0, ro.stderr)
      try {
        await checkFiles()
      } finally {
        await run('umount', [mnt])
      }
      await checkRanges(node)
      await writeRanges(node, 'tagbuf')
      // fsync(2) of the device: blkdev_fsync sends the disk a flush.
      assert.equal((await run('sync', [node])).code, 0)
      const w = server.writeStats
      assert.ok(w.writes > 0 && w.zeroes > 0 && w.flushes > 0 && w.writeErrors === 0, JSON.stringify(w))
    } finally {
      await dev.stop()
      await server.source.close()
    }
    checkRecords('tagbuf')
  })

  it('without the overlay: a read-only device with the old files and bytes; the image file unchanged and verified', async () => {
    const img = await openImage(image)
    try {
      const dev = await UblkDevice.create(new BlockServer(img))
      try {
        const node = dev.info.blockDevice
        assert.equal(out(await run('blockdev', ['--getro', node])), '1')
        const ro = await run('mount', ['-t', 'ext4', '-o', 'ro', node, mnt])
        assert.equal(ro.code, 0, ro.stderr)
        try {
          for (const [name, data] of Object.entries(original)) assert.equal(sha256(await fs.promises.readFile(path.join(mnt, name))), sha256(data), name)
          assert.deepEqual((await fs.promises.readdir(mnt)).sort(), ['hello.txt', 'keep.bin', 'lost+found'])
        } finally {
          await run('umount', [mnt])
        }
        const tail = await readRange(node, FS_END, DISK - FS_END)
        assert.ok(tail.equals(raw.subarray(FS_END)), 'the bytes after the file system changed')
      } finally {
        await dev.stop()
      }
      assert.equal(sha256(fs.readFileSync(image)), imageSha, 'the image file changed')
      // What `vdev verify` runs: every chunk's checksum and the media hash.
      const v = await verifyImage(img, {threads: 1})
      assert.ok(v.ok && v.sha256.match === true, JSON.stringify(v.damaged))
    } finally {
      await img.close()
    }
  })
})

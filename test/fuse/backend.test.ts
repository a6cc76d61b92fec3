/**
 * The FUSE + loop backend in this process, over a raw image with a GNU ddrescue mapfile (RawImage), served
 * both ways: on the main thread (reader threads forward requests to it) and on serving threads (each opens
 * the raw image again from its descriptor). The real kernel's FUSE client and loop driver talk to our
 * server: the FUSE file itself (stat, readdir, open for write, reads, statfs), the negotiated 1 MiB reads,
 * the loop device's properties, EIO exactly at bad sectors, the device's counters (server.stats) exact for
 * the reads we make, and a detach that leaves nothing behind. Everything that touches the mount runs
 * asynchronously or in child processes: this thread may be the one serving the requests.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {backend} from '../../backends/linux/fuse'
import {BlockServer} from '../../src/core/blockserver'
import type {AttachedDevice} from '../../src/core/backend'
import {RawImage} from '../../src/sources/raw'
import {readMountinfo} from '../../src/sys/mountinfo'
import {prng} from '../helpers'
import {IS_ROOT, Sandbox, overlaps, readDirect, run, udevSettle} from './fixtures'

const SIZE = 24 << 20
/** A bad sector in the first page, and a never-tried run of 8 KiB at 8 MiB + 4 KiB. */
const BAD = [
  {offset: 5 * 512, length: 512, status: '-'},
  {offset: (8 << 20) + 4096, length: 8192, status: '?'},
]

/** The mapfile GNU ddrescue would have written for BAD (ddrescue manual, "Mapfile structure"). */
function mapfileText(): string {
  const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`
  const lines = ['# Mapfile. Created by GNU ddrescue version 1.27', '# current_pos  current_status  current_pass', `${hex(SIZE - 512)}     +               1`, '#      pos        size  status']
  let at = 0
  for (const b of BAD) {
    if (b.offset > at) lines.push(`${hex(at)}  ${hex(b.offset - at)}  +`)
    lines.push(`${hex(b.offset)}  ${hex(b.length)}  ${b.status}`)
    at = b.offset + b.length
  }
  lines.push(`${hex(at)}  ${hex(SIZE - at)}  +`)
  return lines.join('\n') + '\n'
}

const touchesBad = (offset: number, length: number) => BAD.some((b) => overlaps(b, {offset, length}))

for (const threads of [0, 2]) {
  const mode = threads ? `${threads} serving threads` : 'main thread'
  describe(`FUSE + loop backend (in process, raw image + ddrescue mapfile, ${mode})`, function () {
    this.timeout(60_000)
    let sb: Sandbox
    let data: Buffer
    let source: RawImage
    let server: BlockServer
    let dev: AttachedDevice | undefined
    const logs: string[] = []

    before(async function () {
      if (!IS_ROOT) this.skip() // mount(2) and loop ioctls need root
      sb = new Sandbox('vdev-fuse-')
      data = prng(7, SIZE)
      fs.writeFileSync(sb.p('raw.img'), data)
      fs.writeFileSync(sb.p('raw.map'), mapfileText())
      source = RawImage.open(sb.p('raw.img'), {mapfile: sb.p('raw.map')})
      server = new BlockServer(source)
      fs.mkdirSync(sb.p('run'))
      const probe = await backend.probe()
      assert.ok(probe.available, `fuse backend unavailable: ${!probe.available && probe.reason}`)
      dev = await backend.attach(server, {id: 'test', image: sb.p('raw.img'), runDir: sb.p('run'), log: (l) => logs.push(l), threads, pollMicroseconds: 50})
    })

    after(async function () {
      if (!sb) return
      if (dev) await dev.detach().catch(() => {})
      await source?.close().catch(() => {})
      const left = await sb.teardown()
      assert.deepEqual(left, [], 'left behind')
    })

    const file = () => path.join(sb.p('run'), 'mnt', 'disk')

    it(`serves on the ${mode}`, () => {
      const want = threads ? `${threads} serving threads` : 'served on the main thread'
      assert.ok(logs.some((l) => l.startsWith('fuse: mounted at') && l.includes(want)), logs.join('\n'))
    })

    it('mounts a read-only fuse.vdev file system holding one read-only file of the image size', async () => {
      const m = readMountinfo().find((x) => x.mountpoint === sb.p('run/mnt'))
      assert.ok(m, 'mounted')
      assert.equal(m.fstype, 'fuse.vdev')
      assert.deepEqual(await fs.promises.readdir(sb.p('run/mnt')), ['disk'])
      const st = await fs.promises.stat(file())
      assert.ok(st.isFile())
      assert.equal(st.size, SIZE)
      assert.equal(st.mode & 0o777, 0o444)
      const sfs = await fs.promises.statfs(sb.p('run/mnt'))
      assert.equal(sfs.bsize, 4096)
      await assert.rejects(fs.promises.open(file(), 'r+'), (e: NodeJS.ErrnoException) => e.code === 'EROFS')
      await assert.rejects(fs.promises.writeFile(sb.p('run/mnt/new'), 'x'), (e: NodeJS.ErrnoException) => e.code === 'EROFS')
      await assert.rejects(fs.promises.stat(sb.p('run/mnt/nothing')), (e: NodeJS.ErrnoException) => e.code === 'ENOENT')
    })

    it('negotiates FUSE 7.x with 1 MiB reads and logs it', () => {
      const line = logs.find((l) => l.startsWith('fuse: protocol 7.'))
      assert.ok(line, logs.join('\n'))
      assert.match(line, /reads up to 1048576 bytes/)
    })

    it('the FUSE file reads the source bytes, EIO where bad, short at the end', async () => {
      const fh = await fs.promises.open(file(), 'r')
      try {
        const b = Buffer.alloc(1 << 20)
        const {bytesRead} = await fh.read(b, 0, b.length, 1 << 20)
        assert.equal(bytesRead, b.length)
        assert.ok(b.equals(data.subarray(1 << 20, 2 << 20)))
        const tail = Buffer.alloc(4096)
        assert.equal((await fh.read(tail, 0, 4096, SIZE - 1000)).bytesRead, 1000)
        assert.ok(tail.subarray(0, 1000).equals(data.subarray(SIZE - 1000)))
        assert.equal((await fh.read(tail, 0, 4096, SIZE)).bytesRead, 0)
        // A buffered read of the page holding the bad sector fails; the page before it reads.
        await assert.rejects(fh.read(Buffer.alloc(512), 0, 512, BAD[0].offset), (e: NodeJS.ErrnoException) => e.code === 'EIO')
        await assert.rejects(fh.read(Buffer.alloc(4096), 0, 4096, BAD[1].offset + 4096), (e: NodeJS.ErrnoException) => e.code === 'EIO')
        const ok = Buffer.alloc(4096)
        assert.equal((await fh.read(ok, 0, 4096, BAD[1].offset - 4096)).bytesRead, 4096)
        assert.ok(ok.equals(data.subarray(BAD[1].offset - 4096, BAD[1].offset)))
      } finally {
        await fh.close()
      }
    })

    it('puts a read-only loop device with direct I/O and the source sector size over it', async () => {
      assert.match(dev!.device, /^\/dev\/loop\d+$/)
      const r = await run('blockdev', ['--getro', '--getss', '--getsize64', dev!.device])
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.stdout.toString().trim().split('\n'), ['1', '512', String(SIZE)])
      const n = dev!.device.slice(5)
      assert.equal(fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim(), file())
      // Direct I/O on a FUSE backing file: accepted by this kernel (6.x); the page cache holds the data once.
      assert.equal(fs.readFileSync(`/sys/block/${n}/loop/dio`, 'utf8').trim(), '1', logs.join('\n'))
      assert.deepEqual(dev!.partitions, [])
      assert.equal(dev!.state.loop, dev!.device)
    })

    it('serves 1 MiB direct reads of the FUSE file as single READs (max_pages negotiated)', async () => {
      const before = server.stats.reads
      const r = await run('dd', [`if=${file()}`, 'of=/dev/null', 'bs=1M', 'skip=12', 'count=8', 'iflag=direct'])
      assert.equal(r.code, 0, r.stderr)
      assert.equal(server.stats.reads - before, 8)
    })

    it("passes the loop device's large requests through whole (not the 128 KiB FUSE default)", async () => {
      const before = server.stats.reads
      const r = await run('dd', [`if=${dev!.device}`, 'of=/dev/null', 'bs=1M', 'skip=12', 'count=8', 'iflag=direct'])
      assert.equal(r.code, 0, r.stderr)
      // The loop queue allows 128 segments: 512 KiB of scattered 4 KiB pages per request.
      const reads = server.stats.reads - before
      assert.ok(reads >= 8 && reads <= 16, `${reads} FUSE reads for 8 MiB`)
    })

    it('reads exactly the source bytes through the loop device outside bad areas', async () => {
      const r = await run('dd', [`if=${dev!.device}`, 'bs=1M', 'skip=9', 'count=15', 'iflag=direct', 'status=none'])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stdout.equals(data.subarray(9 << 20)), 'bytes differ')
    })

    it('fails exactly the unreadable sectors with EIO; neighbours read fine', async () => {
      for (const bad of BAD) {
        const first = bad.offset / 512
        const last = (bad.offset + bad.length) / 512 - 1
        for (const s of [first, last]) {
          const r = await readDirect(dev!.device, s * 512, 512)
          assert.notEqual(r.code, 0, `sector ${s} should fail`)
          assert.match(r.stderr, /Input\/output error/)
        }
        for (const s of [first - 1, last + 1]) {
          const r = await readDirect(dev!.device, s * 512, 512)
          assert.equal(r.code, 0, `sector ${s}: ${r.stderr}`)
          assert.ok(r.stdout.equals(data.subarray(s * 512, s * 512 + 512)), `sector ${s} bytes`)
        }
      }
    })

    it('counts every direct read it serves, and exactly those that touched a bad area', async () => {
      const reads = [
        {offset: 0, length: 4096},
        {offset: 4 * 512, length: 512},
        {offset: 5 * 512, length: 512},
        {offset: 6 * 512, length: 1024},
        {offset: 1 << 20, length: 65536},
        {offset: 8 << 20, length: 4096},
        {offset: (8 << 20) + 4096, length: 4096},
        {offset: (8 << 20) + 8192 - 512, length: 8192},
        {offset: 8 << 20, length: 256 << 10},
        {offset: (8 << 20) + 12288, length: 512},
        {offset: SIZE - 4096, length: 4096},
      ]
      const bad = reads.filter((r) => touchesBad(r.offset, r.length))
      assert.equal(bad.length, 5)
      // The kernel's and udev's own reads of a new device (partition scan, blkid) are over by now.
      await udevSettle()
      const before = server.stats
      for (const {offset, length} of reads) {
        const r = await readDirect(dev!.device, offset, length)
        if (touchesBad(offset, length)) {
          assert.notEqual(r.code, 0, `read ${offset}+${length} touches a bad area`)
          assert.match(r.stderr, /Input\/output error/)
        } else {
          assert.equal(r.code, 0, `read ${offset}+${length}: ${r.stderr}`)
          assert.ok(r.stdout.equals(data.subarray(offset, offset + length)), `bytes of ${offset}+${length}`)
        }
      }
      const after = server.stats
      // O_DIRECT: each read reaches the server (no page cache, no retries) as one READ (up to 512 KiB:
      // larger ones may be split); the kernel's own reads, if any, only add good ones.
      assert.ok(after.reads - before.reads >= reads.length, `${after.reads - before.reads} reads served for ${reads.length}`)
      assert.equal(after.badReads - before.badReads, bad.length, 'reads touching a bad area')
      assert.equal(after.errors - before.errors, bad.length, 'reads answered with an error')
      const good = reads.filter((r) => !touchesBad(r.offset, r.length)).reduce((n, r) => n + r.length, 0)
      assert.ok(after.bytes - before.bytes >= good, `${after.bytes - before.bytes} bytes served, ${good} read`)
      // inFlight is a gauge a serving thread lowers just after its reply reaches the kernel, so dd may
      // return a moment before it does: it must fall to 0 soon, not at once.
      const end = Date.now() + 2000
      while (server.stats.inFlight !== 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10))
      assert.equal(server.stats.inFlight, 0)
    })

    it('refuses writes to the loop device', async () => {
      const r = await run('dd', ['if=/dev/zero', `of=${dev!.device}`, 'bs=512', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'])
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /Read-only file system|Operation not permitted/)
    })

    it('detach releases the loop device and the FUSE mount', async () => {
      const d = dev!
      const n = d.device.slice(5)
      await d.detach()
      dev = undefined
      assert.equal(fs.existsSync(`/sys/block/${n}/loop/backing_file`), false, 'loop device still bound')
      assert.equal(readMountinfo().some((m) => m.mountpoint.startsWith(sb.p('run'))), false, 'FUSE still mounted')
      assert.equal(server.stats.inFlight, 0)
      if (threads) assert.ok(logs.some((l) => /^fuse: serving threads served \d+ reads/.test(l)), logs.join('\n'))
      assert.deepEqual(sb.leftovers(), [])
    })
  })
}

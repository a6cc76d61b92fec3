/**
 * The FUSE + loop backend over a real VDIMG image, served the way `vdev attach` serves one: serving
 * threads that read /dev/fuse themselves and answer each READ with the reader's sync mode straight into
 * the reply buffer (header + data, one write). Against the real kernel (FUSE, loop, dd with O_DIRECT):
 * every byte of zstd, raw, zero and unread chunks exact in 1 MiB requests at chunk-unaligned offsets,
 * EIO for exactly the requests and sectors that touch a bad area, the zero policy, short reads at the
 * end, memory that stays flat while serving, and a detach that leaves nothing behind.
 *
 * Three times: with requests read from /dev/fuse; with FUSE over io_uring (Linux 6.14+; the fuse module's
 * enable_uring switched on for the run and restored after), where READs are decoded into the ring
 * entries' payloads and a writable device's WRITEs come in them; and with FUSE over io_uring offered but
 * io_uring itself refused (kernel.io_uring_disabled = 2 for the run, Linux 6.6+): no thread can make its
 * ring, so INIT is answered without it and every request comes through /dev/fuse (the fallback).
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {backend} from '../../backends/linux/fuse'
import type {AttachedDevice} from '../../src/core/backend'
import {BlockServer, type BadPolicy} from '../../src/core/blockserver'
import {openInput} from '../../src/format/input'
import {readMapfile} from '../../src/format/mapfile'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {createImage} from '../../src/format/writer'
import {readMountinfo} from '../../src/sys/mountinfo'
import {prng, textish} from '../helpers'
import {ENABLE_URING_PARAMETER} from '../../backends/linux/fuse/uring'
import {attach, IS_ROOT, Sandbox, overlaps, readDirect, run} from './fixtures'

const MiB = 1 << 20
const CHUNK = 64 * 1024
/** Not a multiple of the chunk size or of 4 KiB: the last chunk and the last page are partial. */
const SIZE = 20 * MiB + 1536

/** Compressible text (zstd chunks), zeros (zero chunks), random bytes (raw chunks), text again. */
function imageBytes(): Buffer {
  const b = Buffer.alloc(SIZE)
  textish(1, 4 * MiB).copy(b, 0)
  prng(2, 6 * MiB).copy(b, 6 * MiB)
  textish(3, SIZE - 12 * MiB).copy(b, 12 * MiB)
  return b
}

/** ddrescue statuses: a sector inside a zstd chunk, a run across a chunk boundary, two whole chunks, a never-tried tail. */
const BAD = [
  {offset: MiB + 5 * 512, length: 512, status: '-'},
  {offset: 7 * MiB - 1024, length: 3072, status: '-'},
  {offset: 13 * MiB, length: 2 * CHUNK, status: '/'},
]
const TAIL = 1024 // the mapfile ends this many bytes before the end: non-tried
const BAD_ALL = [...BAD, {offset: SIZE - TAIL, length: TAIL, status: '?'}]

function writeMapfile(file: string): void {
  const lines = ['# written by serve-threads.test.ts', '0x0 +']
  let at = 0
  for (const b of BAD) {
    if (b.offset > at) lines.push(`0x${at.toString(16)} 0x${(b.offset - at).toString(16)} +`)
    lines.push(`0x${b.offset.toString(16)} 0x${b.length.toString(16)} ${b.status}`)
    at = b.offset + b.length
  }
  lines.push(`0x${at.toString(16)} 0x${(SIZE - TAIL - at).toString(16)} +`)
  fs.writeFileSync(file, lines.join('\n') + '\n')
}

const touchesBad = (offset: number, length: number) => BAD_ALL.some((b) => overlaps(b, {offset, length}))

/** Every log file under a state directory (the attach daemons'), concatenated. */
function daemonLogs(dir: string): string {
  if (!fs.existsSync(dir)) return ''
  return (fs.readdirSync(dir, {recursive: true}) as string[])
    .filter((f) => f.endsWith('.log'))
    .map((f) => fs.readFileSync(path.join(dir, f), 'utf8'))
    .join('\n')
}

function rssMiB(): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) / 1024
}

/**
 * How the serving threads take requests: the fuse module's enable_uring for the run, the kernel's
 * io_uring_disabled (2: io_uring_setup fails with EPERM for everyone), and whether rings must serve.
 */
const PATHS: Array<{name: string; enableUring: string; ioUringDisabled?: string; uring: boolean}> = [
  {name: 'requests read from /dev/fuse', enableUring: 'N', uring: false},
  {name: 'FUSE over io_uring', enableUring: 'Y', uring: true},
  {name: 'FUSE over io_uring offered, io_uring refused by the kernel (io_uring_disabled = 2): the fallback to /dev/fuse', enableUring: 'Y', ioUringDisabled: '2', uring: false},
]
const IO_URING_DISABLED = '/proc/sys/kernel/io_uring_disabled'

for (const requestPath of PATHS) {
describe(`FUSE + loop backend: serving threads over a VDIMG image (reads straight into the reply) — ${requestPath.name}`, function () {
  this.timeout(120_000)
  let sb: Sandbox
  let enableUringBefore: string | undefined
  let ioUringDisabledBefore: string | undefined
  let data: Buffer
  const devs: Record<BadPolicy, {dev?: AttachedDevice; image?: VdimgImage; logs: string[]}> = {error: {logs: []}, zero: {logs: []}}

  before(async function () {
    if (!IS_ROOT) this.skip() // mount(2) and loop ioctls need root
    if (fs.existsSync(ENABLE_URING_PARAMETER)) {
      enableUringBefore = fs.readFileSync(ENABLE_URING_PARAMETER, 'utf8').trim()
      fs.writeFileSync(ENABLE_URING_PARAMETER, requestPath.enableUring)
    } else if (requestPath.enableUring === 'Y') this.skip() // a kernel before 6.14: no FUSE over io_uring
    if (requestPath.ioUringDisabled !== undefined) {
      if (!fs.existsSync(IO_URING_DISABLED)) this.skip() // before 6.6
      ioUringDisabledBefore = fs.readFileSync(IO_URING_DISABLED, 'utf8').trim()
      fs.writeFileSync(IO_URING_DISABLED, requestPath.ioUringDisabled)
    }
    sb = new Sandbox('vdev-fuse-threads-')
    data = imageBytes()
    fs.writeFileSync(sb.p('disk.raw'), data)
    writeMapfile(sb.p('disk.map'))
    const input = openInput(sb.p('disk.raw'))
    try {
      await createImage(input, sb.p('disk.vdimg'), {chunkSize: CHUNK, mapfile: readMapfile(sb.p('disk.map'))})
    } finally {
      await input.close()
    }
    for (const policy of ['error', 'zero'] as const) {
      const d = devs[policy]
      d.image = await openImage(sb.p('disk.vdimg'))
      const runDir = sb.p(`run-${policy}`)
      if (policy === 'zero') {
        // Reached through a symlink (as /var/run → /run): the kernel reports the mount by its real path.
        fs.mkdirSync(sb.p('real-run-zero'))
        fs.symlinkSync(sb.p('real-run-zero'), runDir)
      } else fs.mkdirSync(runDir)
      d.dev = await backend.attach(new BlockServer(d.image, {badPolicy: policy}), {
        id: policy,
        image: sb.p('disk.vdimg'),
        runDir,
        log: (l) => d.logs.push(l),
        threads: 2,
        pollMicroseconds: 50,
      })
    }
  })

  after(async function () {
    if (enableUringBefore !== undefined) fs.writeFileSync(ENABLE_URING_PARAMETER, enableUringBefore)
    if (ioUringDisabledBefore !== undefined) fs.writeFileSync(IO_URING_DISABLED, ioUringDisabledBefore)
    if (!sb) return
    for (const d of Object.values(devs)) {
      if (d.dev) await d.dev.detach().catch(() => {})
      await d.image?.close().catch(() => {})
    }
    const left = await sb.teardown()
    assert.deepEqual(left, [], 'left behind')
  })

  it('the image has zstd, raw, zero and unread chunks, and the device serves it from serving threads', async () => {
    const kinds = new Set<number>()
    const im = devs.error.image!
    for (let i = 0; i < im.chunkCount; i++) kinds.add((await im.entry(i)).kind)
    assert.deepEqual([...kinds].sort(), [0, 1, 2, 3], 'zero, raw, zstd, unread')
    for (const d of Object.values(devs)) {
      assert.ok(d.logs.some((l) => /\d+ serving threads/.test(l)), d.logs.join('\n'))
      // The path asked for is the one taken.
      assert.equal(d.logs.some((l) => /serving threads over io_uring/.test(l)), requestPath.uring, d.logs.join('\n'))
      // The fallback says why, once per thread: its ring could not be made.
      if (requestPath.ioUringDisabled) assert.equal(d.logs.filter((l) => /^fuse: io_uring: io_uring_setup: Operation not permitted .*; serving through \/dev\/fuse$/.test(l)).length, 2, d.logs.join('\n'))
    }
  })

  it('1 MiB direct reads at chunk-aligned and unaligned offsets: exact bytes, or EIO when they touch a bad area', async () => {
    const device = devs.error.dev!.device
    let checked = 0
    let failed = 0
    for (const shift of [0, 1536, CHUNK - 512]) {
      for (let offset = shift; offset < SIZE; offset += MiB) {
        const length = Math.min(MiB, Math.floor((SIZE - offset) / 512) * 512)
        const r = await readDirect(device, offset, length)
        if (touchesBad(offset, length)) {
          assert.notEqual(r.code, 0, `read ${offset}+${length} touches a bad area and must fail`)
          assert.match(r.stderr, /Input\/output error/)
          failed++
        } else {
          assert.equal(r.code, 0, `read ${offset}+${length}: ${r.stderr}`)
          assert.ok(r.stdout.equals(data.subarray(offset, offset + length)), `bytes of ${offset}+${length}`)
          checked++
        }
      }
    }
    assert.ok(checked >= 40 && failed >= 9, `${checked} exact, ${failed} EIO`)
  })

  it('fails exactly the unreadable sectors with EIO; the sectors next to them read the image bytes', async () => {
    const device = devs.error.dev!.device
    for (const b of BAD_ALL) {
      const first = b.offset / 512
      const last = (b.offset + b.length) / 512 - 1
      for (const s of [first, last]) {
        const r = await readDirect(device, s * 512, 512)
        assert.notEqual(r.code, 0, `sector ${s} should fail`)
        assert.match(r.stderr, /Input\/output error/)
      }
      for (const s of [first - 1, last + 1]) {
        if (s * 512 >= SIZE) continue
        const r = await readDirect(device, s * 512, 512)
        assert.equal(r.code, 0, `sector ${s}: ${r.stderr}`)
        assert.ok(r.stdout.equals(data.subarray(s * 512, s * 512 + 512)), `sector ${s} bytes`)
      }
    }
  })

  it('with --bad-policy zero the whole device reads the image bytes with zeros in the bad areas', async () => {
    const want = Buffer.from(data)
    for (const b of BAD_ALL) want.fill(0, b.offset, b.offset + b.length)
    const r = await run('dd', [`if=${devs.zero.dev!.device}`, 'bs=1M', 'iflag=direct', 'status=none'])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.length, SIZE)
    assert.ok(r.stdout.equals(want), 'bytes differ')
  })

  it('the FUSE file: exact unaligned reads, a short read at the end, nothing past it', async () => {
    const file = path.join(sb.p('run-zero'), 'mnt', 'disk')
    const fh = await fs.promises.open(file, 'r')
    try {
      const b = Buffer.alloc(300_001)
      for (const at of [0, 4 * MiB - 77, 6 * MiB - 1, 12 * MiB + 12345]) {
        assert.equal((await fh.read(b, 0, b.length, at)).bytesRead, b.length)
        assert.ok(b.equals(data.subarray(at, at + b.length)), `bytes at ${at}`)
      }
      const tail = Buffer.alloc(4096, 0xff)
      assert.equal((await fh.read(tail, 0, 4096, SIZE - 3000)).bytesRead, 3000)
      const want = Buffer.from(data.subarray(SIZE - 3000))
      want.fill(0, 3000 - TAIL)
      assert.ok(tail.subarray(0, 3000).equals(want), 'tail bytes (the never-tried end reads as zeros)')
      assert.equal((await fh.read(tail, 0, 4096, SIZE)).bytesRead, 0)
    } finally {
      await fh.close()
    }
    // With the error policy a READ touching a bad area fails as such (not as a short or empty read,
    // which the loop driver would also turn into EIO), and the pages around it read.
    const eh = await fs.promises.open(path.join(sb.p('run-error'), 'mnt', 'disk'), 'r')
    try {
      for (const b of BAD_ALL) {
        await assert.rejects(eh.read(Buffer.alloc(512), 0, 512, b.offset), (e: NodeJS.ErrnoException) => e.code === 'EIO', `read at ${b.offset}`)
        const before = Math.floor(b.offset / 4096) * 4096 - 4096
        const ok = Buffer.alloc(4096)
        assert.equal((await eh.read(ok, 0, 4096, before)).bytesRead, 4096)
        assert.ok(ok.equals(data.subarray(before, before + 4096)), `page before ${b.offset}`)
      }
    } finally {
      await eh.close()
    }
  })

  it('keeps memory flat while serving: 200 MiB more of 512 KiB READs and 4 KiB reads grow the process by less than 40 MiB', async () => {
    const device = devs.zero.dev!.device
    const pass = async () => {
      const r = await run('dd', [`if=${device}`, 'of=/dev/null', 'bs=1M', 'iflag=direct', 'status=none'])
      assert.equal(r.code, 0, r.stderr)
    }
    const small = async () => {
      const r = await run('dd', [`if=${device}`, 'of=/dev/null', 'bs=4k', 'count=3000', 'skip=1000', 'iflag=direct', 'status=none'])
      assert.equal(r.code, 0, r.stderr)
    }
    await pass()
    await small()
    const before = rssMiB()
    for (let i = 0; i < 10; i++) await pass()
    await small()
    const grown = rssMiB() - before
    // A reply buffer kept per READ would add ~200 MiB here; a steady server adds nothing that accumulates.
    assert.ok(grown < 40, `process grew by ${grown.toFixed(1)} MiB`)
  })

  it('serving threads poll for close requests, then stop: an idle device costs no CPU', async () => {
    // 4 KiB reads one at a time (2-6.7 MiB: no bad area): each next request comes right after the reply, while the thread polls.
    const r = await run('dd', [`if=${devs.error.dev!.device}`, 'of=/dev/null', 'bs=4k', 'count=1200', 'skip=512', 'iflag=direct', 'status=none'])
    assert.equal(r.code, 0, r.stderr)
    await new Promise((resolve) => setTimeout(resolve, 300))
    const before = process.cpuUsage()
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const used = process.cpuUsage(before)
    // Threads that kept polling would use a whole core here (~1000 ms).
    assert.ok((used.user + used.system) / 1000 < 100, `idle serving threads used ${((used.user + used.system) / 1000).toFixed(0)} ms of CPU in 1 s`)
  })

  it('a writable device (--overlay): 4 KiB and 1 MiB direct writes read back exact, the rest of the device unchanged, the image untouched', async () => {
    const image = sb.p('disk.vdimg')
    const before = fs.readFileSync(image)
    const ovl = sb.p('w.ovl')
    const dev = await attach(sb, image, ['--overlay', ovl])
    try {
      const list = await sb.vdev(['list', '--json'])
      assert.equal(list.code, 0, list.stderr)
      const listed = (JSON.parse(list.stdout) as Array<{device: string; requests?: string}>).find((e) => e.device === dev.device)
      assert.equal(listed?.requests, requestPath.uring ? 'io_uring' : '/dev/fuse', list.stdout)
      const writes: Array<[number, Buffer]> = [
        [3 * MiB, prng(7, 4096)],
        [9 * MiB + 4096, prng(8, MiB)], // across a raw and a zstd chunk
        [13 * MiB, prng(9, 2 * CHUNK)], // over the whole-chunk bad area: now readable
      ]
      for (const [at, bytes] of writes) {
        const w = await run('dd', [`of=${dev.device}`, 'bs=4k', `seek=${at / 4096}`, 'oflag=direct', 'conv=fsync', 'status=none'], {input: bytes})
        assert.equal(w.code, 0, w.stderr)
      }
      const want = Buffer.from(data)
      for (const b of BAD_ALL) want.fill(0, b.offset, b.offset + b.length) // only where no write covers it, checked below
      for (const [at, bytes] of writes) bytes.copy(want, at)
      for (const [at, bytes] of writes) {
        const r = await readDirect(dev.device, at, bytes.length)
        assert.equal(r.code, 0, r.stderr)
        assert.ok(r.stdout.equals(bytes), `written bytes at ${at}`)
      }
      const r = await readDirect(dev.device, 2 * MiB, 4 * MiB) // no bad area, one write inside
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stdout.equals(want.subarray(2 * MiB, 6 * MiB)), 'bytes around a write')
    } finally {
      const d = await sb.vdev(['detach', dev.device])
      assert.equal(d.code, 0, d.stderr)
    }
    assert.ok(fs.readFileSync(image).equals(before), 'the image changed')
    const log = daemonLogs(sb.stateDir)
    assert.equal(/serving threads over io_uring/.test(log), requestPath.uring, log)
    // The WRITEs came through the ring entries too.
    const fromRings = [...log.matchAll(/served (\d+) requests from its \d+ ring entries/g)].reduce((sum, m) => sum + Number(m[1]), 0)
    assert.ok(requestPath.uring ? fromRings > 10 : fromRings === 0, log)
  })

  it('detach: the serving threads report what they served, then the loop device, the mount (also one reached through a symlink) and the threads are gone', async () => {
    for (const [policy, d] of Object.entries(devs)) {
      const n = d.dev!.device.slice(5)
      await d.dev!.detach()
      await d.dev!.closed
      d.dev = undefined
      const line = d.logs.find((l) => l.startsWith('fuse: serving threads served'))
      assert.ok(line, d.logs.join('\n'))
      const [, reads, bytes, errors, polled] = /served (\d+) reads, (\d+) bytes, (\d+) errors; (\d+) requests taken while polling/.exec(line)!.map(Number)
      assert.ok(reads > 100 && bytes > 20 * MiB, line)
      if (policy === 'error') assert.ok(errors > 0, `EIO replies counted: ${line}`)
      else assert.equal(errors, 0, line)
      // Both devices had runs of requests one at a time (4 KiB dd): some came while a thread polled.
      assert.ok(polled > 0 && polled < reads, line)
      // Over io_uring each thread says how many requests its ring entries served: together, every READ
      // (a fallback to /dev/fuse would leave them at 0); through /dev/fuse there is no ring.
      const fromRings = d.logs.map((l) => /thread \d+ served (\d+) requests from its \d+ ring entries/.exec(l)).filter((m) => m !== null)
      if (requestPath.uring) {
        assert.equal(fromRings.length, 2, d.logs.join('\n'))
        assert.ok(fromRings.reduce((sum, m) => sum + Number(m![1]), 0) >= reads, d.logs.join('\n'))
      } else assert.equal(fromRings.length, 0, d.logs.join('\n'))
      assert.equal(fs.existsSync(`/sys/block/${n}/loop/backing_file`), false, 'loop device still bound')
    }
    assert.equal(readMountinfo().some((m) => m.mountpoint.startsWith(sb.dir)), false, 'FUSE still mounted')
    assert.deepEqual(sb.leftovers(), [])
  })
})
}

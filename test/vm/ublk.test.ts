/**
 * The ublk backend against the real ublk_drv (runs in the test VM: docs/vm-harness.md). A .vdimg made by the
 * real writer from a partitioned raw disk with bad areas is attached through the backend; the kernel's view
 * of it is checked with real tools — blockdev, dd with O_DIRECT, GNU ddrescue — never through our own code.
 */
import {strict as assert} from 'node:assert'
import {spawn} from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {createInterface} from 'node:readline'
import {backend, probeUblk, type UblkState} from '../../backends/linux/ublk'
import {removeDevice, UblkDevice} from '../../backends/linux/ublk/device'
import type {AttachContext, AttachedDevice} from '../../src/core/backend'
import {BlockServer} from '../../src/core/blockserver'
import {openInput} from '../../src/format/input'
import {readMapfile} from '../../src/format/mapfile'
import {createImage} from '../../src/format/writer'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {RawImage} from '../../src/sources/raw'
import type {AttachServerInfo} from './attach-server'
import {BAD, DISK_SIZE, PARTITIONS, SECTOR, ddSectors, isBadSector, DECODED_AHEAD, makeFixture, readSequentially, run, type DiskFixture} from './disk-fixture'
import {logOf} from '../../src/lifecycle/registry'

const ublkNodes = (): string[] => fs.readdirSync('/dev').filter((n) => /^ublk[bc]\d+/.test(n))

describe('ublk backend (real kernel)', function () {
  this.timeout(600_000)
  let fx: DiskFixture
  let image: VdimgImage
  let server: BlockServer
  let attached: AttachedDevice | undefined
  const log: string[] = []
  const context = (image: string, log: string[], threads = 2): AttachContext => ({id: 'vdev-test', image, runDir: fx.dir, log: (l) => log.push(l), threads, pollMicroseconds: 0})

  before(async () => {
    assert.deepEqual(ublkNodes(), [], 'ublk devices left over before the suite')
    fx = await makeFixture()
    image = await openImage(fx.image)
    server = new BlockServer(image)
    attached = await backend.attach(server, context(fx.image, log))
  })

  after(async () => {
    try {
      await attached?.detach()
    } finally {
      await image?.close()
      fx?.cleanup()
      // Whatever a failed test left behind.
      for (const n of ublkNodes().filter((x) => x.startsWith('ublkc')))
        await removeDevice(Number(n.slice(5)), (l) => log.push(l)).catch((e: Error) => log.push(e.message))
    }
  })

  it('probes available on a kernel with ublk_drv, as root', () => {
    const p = probeUblk()
    assert.ok(p.available, p.available ? '' : p.reason)
  })

  it('serves a .vdimg from two queues, each on a thread of its own (the kernel sees two hardware queues)', () => {
    const name = path.basename(attached!.device)
    assert.ok(log.some((l) => /2 queue\(s\), each served on a thread of its own/.test(l)), log.join('\n'))
    assert.deepEqual(fs.readdirSync(`/sys/block/${name}/mq`).sort(), ['0', '1'])
  })

  it('is a read-only /dev/ublkbN of the image size and sector size', async () => {
    const dev = attached!.device
    assert.match(dev, /^\/dev\/ublkb\d+$/)
    const ro = await run('blockdev', ['--getro', dev])
    assert.equal(ro.stdout.toString().trim(), '1')
    assert.equal((await run('blockdev', ['--getsize64', dev])).stdout.toString().trim(), String(DISK_SIZE))
    assert.equal((await run('blockdev', ['--getss', dev])).stdout.toString().trim(), String(SECTOR))
    // A write is refused by the kernel, not by us.
    const w = await run('dd', ['if=/dev/zero', `of=${dev}`, 'bs=512', 'count=1', 'oflag=direct', 'status=none'])
    assert.notEqual(w.code, 0)
    assert.match(w.stderr, /Operation not permitted|Read-only file system|Permission denied/)
  })

  it('shows the partitions of the image', async () => {
    const dev = attached!.device
    assert.deepEqual(attached!.partitions, [`${dev}p1`, `${dev}p2`])
    for (const [i, p] of PARTITIONS.entries()) {
      const node = `${dev}p${i + 1}`
      assert.equal((await run('blockdev', ['--getsize64', node])).stdout.toString().trim(), String(p.size * SECTOR))
      const r = await ddSectors(node, 0, 64)
      assert.ok(r.data, r.stderr)
      assert.ok(r.data.equals(fx.data.subarray(p.start * SECTOR, (p.start + 64) * SECTOR)), `${node}: first 64 sectors differ`)
    }
  })

  it('marks the partitions read-only too', async () => {
    for (const node of attached!.partitions) assert.equal((await run('blockdev', ['--getro', node])).stdout.toString().trim(), '1', node)
  })

  it('takes the logical block size from the image: 4096-byte sectors', async () => {
    const image4k = path.join(fx.dir, 'disk4k.vdimg')
    const input = openInput(fx.raw)
    try {
      await createImage(input, image4k, {chunkSize: 64 * 1024, sectorSize: 4096, threads: 1})
    } finally {
      await input.close()
    }
    const img = await openImage(image4k)
    const dev = await UblkDevice.create(new BlockServer(img))
    try {
      // 6.12 has both: the default path is ioctl-encoded opcodes with USER_COPY.
      assert.equal(dev.info.legacyOpcodes, false)
      assert.equal(dev.info.userCopy, true)
      const node = dev.info.blockDevice
      assert.equal((await run('blockdev', ['--getss', node])).stdout.toString().trim(), '4096')
      assert.equal((await run('blockdev', ['--getsize64', node])).stdout.toString().trim(), String(DISK_SIZE))
      // O_DIRECT reads must now be 4 KiB-aligned: 512-byte ones are refused by the kernel, 4 KiB ones served.
      assert.equal((await ddSectors(node, 1, 1, 512)).data, null)
      const r = await ddSectors(node, 300, 2, 4096)
      assert.ok(r.data?.equals(fx.data.subarray(300 * 4096, 302 * 4096)), r.stderr)
    } finally {
      await dev.stop()
      await img.close()
    }
  })

  it('an image that ends in a partial sector: a disk of its whole sectors, the last of them exact', async () => {
    const raw = path.join(fx.dir, 'odd.raw')
    const size = (1 << 20) + 3 * SECTOR + 100
    fs.writeFileSync(raw, fx.data.subarray(0, size))
    const source = RawImage.open(raw, {sectorSize: SECTOR})
    const log: string[] = []
    const dev = await UblkDevice.create(new BlockServer(source), {log: (l) => log.push(l)})
    try {
      const node = dev.info.blockDevice
      const whole = Math.floor(size / SECTOR)
      assert.equal((await run('blockdev', ['--getsize64', node])).stdout.toString().trim(), String(whole * SECTOR))
      const r = await ddSectors(node, whole - 1, 1)
      assert.ok(r.data?.equals(fx.data.subarray((whole - 1) * SECTOR, whole * SECTOR)), r.stderr)
      assert.ok(log.some((l) => l.includes(`its last 100 bytes are not on it`)), log.join('\n'))
    } finally {
      await dev.stop()
      await source.close()
    }
  })

  it('gives GNU ddrescue the image back, and the same bad areas as the mapfile', async () => {
    const out = path.join(fx.dir, 'rescued.raw')
    const map = path.join(fx.dir, 'rescued.map')
    const r = await run('ddrescue', ['-d', '-b', String(SECTOR), '-q', attached!.device, out, map], {timeoutMs: 300_000})
    assert.equal(r.code, 0, r.stderr)
    const rescued = fs.readFileSync(out)
    const got = readMapfile(map)
    const badList = got.bad.intersect(0, DISK_SIZE).map((b) => [b.offset, b.length])
    assert.deepEqual(badList, BAD.map((b) => [b.offset, b.length]), 'ddrescue found other bad areas than the image has')
    // Outside the bad areas, byte for byte the source.
    let at = 0
    for (const b of [...BAD, {offset: DISK_SIZE, length: 0}]) {
      assert.ok(rescued.subarray(at, b.offset).equals(fx.data.subarray(at, b.offset)), `bytes ${at}..${b.offset} differ`)
      at = b.offset + b.length
    }
  })

  it('fails exactly the unreadable sectors with EIO; their neighbours read', async () => {
    const dev = attached!.device
    for (const b of BAD) {
      const first = b.offset / SECTOR
      const last = (b.offset + b.length) / SECTOR - 1
      for (const s of new Set([first, last])) {
        const r = await ddSectors(dev, s, 1)
        assert.equal(r.data, null, `sector ${s} (${b.status}) read`)
        assert.match(r.stderr, /Input\/output error/)
      }
      for (const s of [first - 1, last + 1]) {
        if (s < 0 || s * SECTOR >= DISK_SIZE) continue
        const r = await ddSectors(dev, s, 1)
        assert.ok(r.data, `sector ${s} next to ${b.status} area: ${r.stderr}`)
        assert.ok(r.data.equals(fx.data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s} differs`)
      }
    }
  })

  for (const onThreads of [false, true])
    it(`serves through per-tag buffers and legacy opcodes (kernels without USER_COPY or the ioctl encoding)${onThreads ? ', on serving threads' : ''}`, async () => {
      const img = await openImage(fx.image)
      const srv = new BlockServer(img)
      const dev = await UblkDevice.create(srv, {userCopy: false, legacyOpcodes: true, depth: 8, maxIoBytes: 256 * 1024, threads: onThreads ? 2 : 0})
      try {
        assert.equal(dev.info.userCopy, false)
        assert.equal(dev.info.legacyOpcodes, true)
        assert.equal(dev.info.threads, onThreads ? 2 : 0)
        const before = srv.stats.reads
        const r = await ddSectors(dev.info.blockDevice, 0, 4, 256 * 1024)
        assert.ok(r.data, r.stderr)
        assert.ok(r.data.equals(fx.data.subarray(0, MiB1)))
        const bad = await ddSectors(dev.info.blockDevice, BAD[0].offset / SECTOR, 1)
        assert.equal(bad.data, null)
        assert.ok(srv.stats.reads >= before + 5, 'the server counted what the queues served')
      } finally {
        await dev.stop()
        await img.close()
      }
      assert.ok(!fs.existsSync(dev.info.blockDevice), `${dev.info.blockDevice} still exists`)
    })

  it('counts every read in the server\'s stats, bad-area reads exactly, across its serving threads', async () => {
    const dev = attached!.device
    const good = [0, 1, 777, 2048, 9000, 16000].filter((s) => !isBadSector(s))
    const badSectors = BAD.map((b) => b.offset / SECTOR)
    const before = server.stats
    for (const s of good) assert.ok((await ddSectors(dev, s, 1)).data?.equals(fx.data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s}`)
    for (const s of badSectors) assert.equal((await ddSectors(dev, s, 1)).data, null, `sector ${s} read`)
    // One 4 KiB request that only partly touches a bad area counts once too.
    const block = Math.floor(BAD[0].offset / 4096)
    assert.equal((await ddSectors(dev, block, 1, 4096)).data, null)
    const after = server.stats
    const n = good.length + badSectors.length + 1
    assert.ok(after.reads - before.reads >= n, `${after.reads - before.reads} reads counted, ${n} made`)
    assert.equal(after.badReads - before.badReads, badSectors.length + 1)
    assert.equal(after.errors - before.errors, badSectors.length + 1)
    assert.ok(after.bytes - before.bytes >= good.length * SECTOR)
    // A gauge lowered just after the completion is committed: dd may return a moment before that.
    const end = Date.now() + 2000
    while (server.stats.inFlight !== 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10))
    assert.equal(server.stats.inFlight, 0)
  })

  it('serves a raw image with its ddrescue mapfile on serving threads: exact bytes where finished, EIO elsewhere', async () => {
    // The output file of a rescue that never read the last 64 KiB, and the mapfile ddrescue wrote with it.
    const size = 4 * MiB1
    const data = crypto.randomBytes(size)
    const raw = path.join(fx.dir, 'rescue.raw')
    fs.writeFileSync(raw, data.subarray(0, size - 0x10000))
    const areas = [
      {pos: 0x100200, size: 0x200, st: '-'},
      {pos: 0x180600, size: 0x1000, st: '*'},
      {pos: 0x2a0e00, size: 0x600, st: '/'},
      {pos: 0x3f0000, size: 0x10000, st: '?'},
    ]
    const hex = (n: number): string => `0x${n.toString(16).toUpperCase().padStart(8, '0')}`
    const lines = [
      '# Mapfile. Created by GNU ddrescue version 1.27',
      '# Command line: ddrescue -d -r0 /dev/sdc rescue.raw rescue.map',
      '# Start time:   2026-11-20 09:12:01',
      '# Current time: 2026-11-20 09:13:40',
      '# Finished',
      '# current_pos  current_status  current_pass',
      '0x003F0000     +               1',
      '#      pos        size  status',
    ]
    let at = 0
    for (const a of areas) {
      if (a.pos > at) lines.push(`${hex(at)}  ${hex(a.pos - at)}  +`)
      lines.push(`${hex(a.pos)}  ${hex(a.size)}  ${a.st}`)
      at = a.pos + a.size
    }
    assert.equal(at, size)
    const map = path.join(fx.dir, 'rescue.map')
    fs.writeFileSync(map, lines.join('\n') + '\n')

    const source = RawImage.open(raw, {mapfile: map})
    const rawLog: string[] = []
    let dev: AttachedDevice | undefined
    try {
      dev = await backend.attach(new BlockServer(source), context(raw, rawLog))
      assert.ok(rawLog.some((l) => /2 queue\(s\), each served on a thread of its own/.test(l)), rawLog.join('\n'))
      assert.equal((await run('blockdev', ['--getsize64', dev.device])).stdout.toString().trim(), String(size))
      const isBad = (s: number): boolean => areas.some((a) => s * SECTOR < a.pos + a.size && (s + 1) * SECTOR > a.pos)
      for (const a of areas) {
        const first = a.pos / SECTOR
        const last = (a.pos + a.size) / SECTOR - 1
        for (const s of new Set([first, last])) {
          const r = await ddSectors(dev.device, s, 1)
          assert.equal(r.data, null, `sector ${s} ('${a.st}') read`)
          assert.match(r.stderr, /Input\/output error/)
        }
        for (const s of [first - 1, last + 1]) {
          if (s * SECTOR >= size || isBad(s)) continue
          const r = await ddSectors(dev.device, s, 1)
          assert.ok(r.data?.equals(data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s} next to '${a.st}': ${r.stderr}`)
        }
      }
      // GNU ddrescue over the device finds exactly the map's non-finished areas, and the file's bytes elsewhere.
      const out = path.join(fx.dir, 'again.raw')
      const again = path.join(fx.dir, 'again.map')
      const r = await run('ddrescue', ['-d', '-b', String(SECTOR), '-r', '0', dev.device, out, again], {timeoutMs: 300_000})
      assert.equal(r.code, 0, r.stderr)
      const bad = readMapfile(again).bad.intersect(0, size).map((b) => [b.offset, b.length])
      assert.deepEqual(bad, areas.map((a) => [a.pos, a.size]))
      const rescued = fs.readFileSync(out)
      at = 0
      for (const a of areas) {
        assert.ok(rescued.subarray(at, a.pos).equals(data.subarray(at, a.pos)), `bytes ${at}..${a.pos} differ`)
        at = a.pos + a.size
      }
    } finally {
      await dev?.detach()
      await source.close()
    }
  })

  it('logs a fault (a damaged chunk) read on a serving thread to the device\'s log, and answers EIO', async () => {
    const src = path.join(fx.dir, 'fault.raw')
    const data = crypto.randomBytes(1 * MiB1)
    fs.writeFileSync(src, data)
    const damaged = path.join(fx.dir, 'fault.vdimg')
    const input = openInput(src)
    try {
      await createImage(input, damaged, {chunkSize: 64 * 1024, threads: 1})
    } finally {
      await input.close()
    }
    // Flip bytes in the middle of chunk 5's stored bytes: its stored CRC no longer matches.
    const probe = await openImage(damaged)
    const e = await probe.entry(5)
    await probe.close()
    assert.ok(e.storedLength > 0)
    const fd = fs.openSync(damaged, 'r+')
    try {
      const b = Buffer.alloc(4)
      const at = e.offset + Math.floor(e.storedLength / 2)
      fs.readSync(fd, b, 0, 4, at)
      for (let i = 0; i < 4; i++) b[i] ^= 0xff
      fs.writeSync(fd, b, 0, 4, at)
    } finally {
      fs.closeSync(fd)
    }
    const img = await openImage(damaged)
    const faultLog: string[] = []
    let dev: AttachedDevice | undefined
    try {
      dev = await backend.attach(new BlockServer(img), context(damaged, faultLog))
      assert.ok(faultLog.some((l) => /each served on a thread of its own/.test(l)), faultLog.join('\n'))
      const sector = (5 * 64 * 1024) / SECTOR + 3
      const r = await ddSectors(dev.device, sector, 1)
      assert.equal(r.data, null, 'a sector of the damaged chunk read')
      assert.match(r.stderr, /Input\/output error/)
      // The chunks around it still read.
      for (const s of [sector - 128, sector + 128]) assert.ok((await ddSectors(dev.device, s, 1)).data?.equals(data.subarray(s * SECTOR, (s + 1) * SECTOR)), `sector ${s}`)
      // The thread's log line travels by message: give it a moment.
      const want = `ublk: fault reading ${SECTOR} bytes at ${sector * SECTOR}: `
      for (let i = 0; i < 50 && !faultLog.some((l) => l.startsWith(want)); i++) await new Promise((res) => setTimeout(res, 20))
      const line = faultLog.find((l) => l.startsWith(want))
      assert.ok(line, `no "${want}" line in:\n${faultLog.join('\n')}`)
      assert.match(line, /chunk 5\b/)
    } finally {
      await dev?.detach()
      await img.close()
    }
  })

  it('does not hang readers when the server is killed; cleanup removes the device', async () => {
    const child = spawn(process.execPath, [path.join(__dirname, 'attach-server.js'), 'ublk', fx.image], {stdio: ['ignore', 'pipe', 'pipe']})
    let stderr = ''
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()))
    let info: AttachServerInfo | undefined
    try {
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({input: child.stdout}).once('line', resolve)
        child.once('exit', (code) => reject(new Error(`server exited (${code}): ${stderr}`)))
      })
      info = JSON.parse(line) as AttachServerInfo
      const {devId} = info.state as UblkState
      // A reader that keeps reading the whole device until a read fails (exit 3), or is killed if it hangs.
      const script = 'while dd if="$1" of=/dev/null bs=64K count=64 iflag=direct status=none; do :; done; exit 3'
      const reader = run('sh', ['-c', script, 'reader', info.device], {
        timeoutMs: 60_000,
      })
      await new Promise((r) => setTimeout(r, 1000))
      child.kill('SIGKILL')
      const started = Date.now()
      const res = await reader
      assert.equal(res.signal, null, `the reader hung for ${(Date.now() - started) / 1000}s and was killed`)
      assert.equal(res.code, 3, `reader: ${res.stderr}`)
      // As `vdev attach` serves a .vdimg: two queues, each on a serving thread.
      assert.match(stderr, /2 queue\(s\), each served on a thread of its own/)
      log.push(`reader failed ${Date.now() - started} ms after the server was killed`)
      // A new reader fails at once too.
      const again = await ddSectors(info.device, 0, 1)
      assert.equal(again.data, null)
      await backend.cleanup(info.state, () => undefined)
      assert.ok(!fs.existsSync(`/dev/ublkc${devId}`), `/dev/ublkc${devId} still exists after cleanup`)
      assert.ok(!fs.existsSync(info.device), `${info.device} still exists after cleanup`)
      // Idempotent: the device is gone, cleanup is a no-op.
      await backend.cleanup(info.state, () => undefined)
    } finally {
      child.kill('SIGKILL')
      if (info) await backend.cleanup(info.state, () => undefined)
    }
  })

  it('vdev attach --backend ublk / vdev detach (once the lifecycle commands exist): read-ahead set, chunks decoded ahead', async function () {
    const bin = path.join(__dirname, '..', '..', '..', 'bin', 'run.js')
    if (!fs.existsSync(path.join(__dirname, '..', '..', 'src', 'commands', 'attach.js'))) this.skip()
    const a = await run(process.execPath, [bin, 'attach', fx.image, '--backend', 'ublk', '--json'], {timeoutMs: 180_000})
    assert.equal(a.code, 0, a.stderr)
    const info = JSON.parse(a.stdout.toString()) as {id: string; device: string; backend: string; readOnly: boolean; partitions: string[]}
    try {
      assert.equal(info.backend, 'ublk')
      assert.match(info.device, /^\/dev\/ublkb\d+$/)
      assert.deepEqual(info.partitions, [`${info.device}p1`, `${info.device}p2`])
      assert.equal((await run('blockdev', ['--getro', info.device])).stdout.toString().trim(), '1')
      const r = await ddSectors(info.device, 2048, 8)
      assert.ok(r.data?.equals(fx.data.subarray(2048 * SECTOR, 2056 * SECTOR)), r.stderr)
      assert.equal((await ddSectors(info.device, BAD[0].offset / SECTOR, 1)).data, null)
      // The backend's read-ahead, and decode-ahead on the queues' threads. A reader on CPU 0 sends every
      // request to one queue; the other queue's thread, woken by it, decodes chunks of its reads under way.
      assert.equal(Number(fs.readFileSync(`/sys/block/${path.basename(info.device)}/queue/read_ahead_kb`, 'utf8')), backend.readAheadKiB)
      await readSequentially(info.device, fx.data, {bs: 256, cpu: 0})
    } finally {
      const d = await run(process.execPath, [bin, 'detach', info.device], {timeoutMs: 120_000})
      if (d.code !== 0) await run(process.execPath, [bin, 'detach', '--force', info.device], {timeoutMs: 120_000})
      assert.equal(d.code, 0, d.stderr)
    }
    assert.ok(!fs.existsSync(info.device), `${info.device} still exists after vdev detach`)
    assert.ok(!fs.existsSync(info.device.replace('ublkb', 'ublkc')), 'char device still exists after vdev detach')
    const logged = fs.readFileSync(logOf(info.id), 'utf8')
    assert.match(logged, DECODED_AHEAD)
    // Whether the woken queue's thread got to a read while it was still under way depends on timing under
    // emulation (a clean CI run saw 0): shown, not asserted. test/ublk/io_uring.test.ts checks the wake-up itself.
    console.log(`      ${/decode-ahead: .*/.exec(logged)?.[0] ?? 'no decode-ahead line'}`)
  })

  it('vdev detach --force cleans up after a killed ublk server (once the lifecycle commands exist)', async function () {
    const bin = path.join(__dirname, '..', '..', '..', 'bin', 'run.js')
    if (!fs.existsSync(path.join(__dirname, '..', '..', 'src', 'commands', 'attach.js'))) this.skip()
    const a = await run(process.execPath, [bin, 'attach', fx.image, '--backend', 'ublk', '--json'], {timeoutMs: 180_000})
    assert.equal(a.code, 0, a.stderr)
    const info = JSON.parse(a.stdout.toString()) as {device: string; pid: number}
    const cdev = info.device.replace('ublkb', 'ublkc')
    try {
      process.kill(info.pid, 'SIGKILL')
      // The kernel fails the device's I/O once its server is gone; a reader gets an error, not a hang.
      let failed = false
      for (let i = 0; i < 50 && !failed; i++) {
        failed = (await ddSectors(info.device, 0, 1)).data === null
        if (!failed) await new Promise((r) => setTimeout(r, 200))
      }
      assert.ok(failed, 'reads still succeed 10 s after the server was killed')
      const d = await run(process.execPath, [bin, 'detach', '--force', info.device], {timeoutMs: 120_000})
      assert.equal(d.code, 0, d.stderr)
      assert.ok(!fs.existsSync(cdev), `${cdev} still exists after vdev detach --force`)
    } finally {
      if (fs.existsSync(cdev)) await removeDevice(Number(cdev.slice('/dev/ublkc'.length)))
    }
  })

  it('detach removes /dev/ublkbN and /dev/ublkcN', async () => {
    const dev = attached!.device
    await attached!.detach()
    attached = undefined
    assert.ok(!fs.existsSync(dev), `${dev} still exists`)
    assert.ok(!fs.existsSync(dev.replace('ublkb', 'ublkc')), 'char device still exists')
    assert.ok(!fs.existsSync(`/sys/block/${path.basename(dev)}`))
    assert.deepEqual(ublkNodes(), [])
  })
})

const MiB1 = 1 << 20

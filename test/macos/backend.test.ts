/**
 * The macOS backend's attach/detach/cleanup flow, run on Linux with the real NFS server and a real .vdimg.
 * macOS's tools cannot run here, so a player takes their part: `mount_nfs` is played by libnfs's real
 * nfs-ls against the port in the mount_nfs argv (the server must really be up and export the file), and
 * hdiutil answers with recorded real output (test/fixtures/macos). Outputs written for a test (diskutil's,
 * whose recorded form we lack) are marked "constructed".
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {COUNTER} from '../../src/core/counters'
import {VdevError} from '../../src/core/errors'
import {loadBackend} from '../../src/core/backends'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {createBackend, servedFileName, type RunResult, type Runner} from '../../backends/macos/nfs'
import {hdiutilAttachArgv, diskutilImageAttachArgv} from '../../backends/macos/nfs/commands'
import {Overlay} from '../../src/layers/overlay'
import {IMAGE_SIZE, makeImages, run as runTool, type Images} from '../nfs/fixture'
import {RpcClient, opaque, str, u32, u64} from '../nfs/rpcclient'

const FIXTURES = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'macos')
const ATTACH_APM = fs.readFileSync(path.join(FIXTURES, 'hdiutil-attach-apm.plist'), 'utf8')

type Script = Partial<Record<'sw_vers' | 'diskutil' | 'hdiutil-attach' | 'hdiutil-detach' | 'umount' | 'hdiutil-info', RunResult[]>>

/** Plays the macOS tools; records every argv. */
class MacTools {
  calls: string[][] = []
  served = ''
  constructor(
    private script: Script,
    private expectFile: string,
    private readWrite = false,
  ) {}

  private next(k: keyof Script, dflt: RunResult): RunResult {
    const q = this.script[k]
    return q && q.length > 0 ? q.length === 1 ? q[0] : q.shift()! : dflt
  }

  runner: Runner = async (argv) => {
    this.calls.push(argv)
    const ok = (stdout = ''): RunResult => ({code: 0, stdout, stderr: ''})
    switch (argv[0]) {
      case '/usr/bin/sw_vers':
        return this.next('sw_vers', ok('15.5\n'))
      case '/sbin/mount_nfs': {
        // Play mount_nfs with a real NFS client against the port it was told to use.
        const port = /port=(\d+),mountport=\1/.exec(argv[2])?.[1]
        if (!port) return {code: 64, stdout: '', stderr: 'mount_nfs: bad options'}
        const r = await runTool('nfs-ls', [`nfs://127.0.0.1${argv[3].slice('127.0.0.1:'.length)}?nfsport=${port}&mountport=${port}&version=3`])
        this.served = r.stdout.toString()
        return r.code === 0 ? ok() : {code: 1, stdout: '', stderr: `mount_nfs: can't mount ${argv[3]}: ${r.stderr}`}
      }
      case '/usr/sbin/diskutil':
        assert.deepEqual(argv, diskutilImageAttachArgv(this.expectFile, {readWrite: this.readWrite}))
        return this.next('diskutil', {code: 1, stdout: '', stderr: 'constructed: not expected'})
      case '/usr/bin/hdiutil':
        if (argv[1] === 'attach') {
          assert.deepEqual(argv, hdiutilAttachArgv(this.expectFile, {readWrite: this.readWrite}))
          return this.next('hdiutil-attach', ok(ATTACH_APM))
        }
        if (argv[1] === 'detach') return this.next('hdiutil-detach', ok('"disk3" ejected.\n'))
        if (argv[1] === 'info') return this.next('hdiutil-info', {code: 1, stdout: '', stderr: 'constructed: no info'})
        break
      case '/sbin/umount':
        return this.next('umount', ok())
    }
    return {code: 127, stdout: '', stderr: `unexpected command ${argv.join(' ')}`}
  }
}

function refuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => (s.destroy(), resolve(false)))
    s.once('error', () => resolve(true))
  })
}

describe('macOS backend: attach, detach and cleanup flow (macOS tools played)', function () {
  this.timeout(30000)
  let img: Images
  let image: VdimgImage
  let server: BlockServer
  let runDir: string
  const logs: string[] = []
  const detachers: Array<() => Promise<void>> = []

  before(async () => {
    img = await makeImages('vdev-macos-')
    image = await openImage(img.goodImage)
    server = new BlockServer(image)
  })
  beforeEach(() => {
    runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-macos-run-'))
  })
  afterEach(async () => {
    for (const d of detachers.splice(0)) await d().catch(() => {})
    fs.rmSync(runDir, {recursive: true, force: true})
  })
  after(async () => {
    await image?.close()
    img?.cleanup()
  })

  function ctx() {
    // Two serving threads, as the daemon gives this backend by default (its thread model).
    return {id: 'vdev9', image: img.goodImage, runDir, log: (l: string) => logs.push(l), threads: 2, pollMicroseconds: 0}
  }
  const fileIn = () => path.join(runDir, 'nfs', servedFileName(img.goodImage))

  it('is the registry\'s macos-nfs backend, for darwin, and unavailable here with the reason', async () => {
    const b = loadBackend('macos-nfs')
    assert.ok(!('error' in b), 'error' in b ? b.error : '')
    assert.equal(b.name, 'macos-nfs')
    assert.equal(b.platform, 'darwin')
    assert.equal(b.preference, 0)
    // Served by the shared serving threads, writable through views of the overlay.
    assert.equal(b.threadModel.kind, 'serving-threads')
    assert.equal(b.writableThreads, true)
    const p = await b.probe()
    assert.equal(p.available, false)
    if (!p.available) assert.match(p.reason, /needs macOS/)
  })

  it('macOS 15: serves the file over NFS, mounts it, attaches with hdiutil, reports diskN, rdiskN and partitions', async () => {
    const tools = new MacTools({}, fileIn())
    const dev = await createBackend({run: tools.runner}).attach(server, ctx())
    detachers.push(() => dev.detach())
    // mount_nfs (played by nfs-ls) saw the live server exporting good.img with the image size.
    assert.match(tools.served, new RegExp(`-r--r--r--\\s+1\\s+0\\s+0\\s+${IMAGE_SIZE}\\s+good\\.img`))
    assert.equal(dev.device, '/dev/disk3')
    assert.deepEqual(dev.aliases, ['/dev/rdisk3'])
    assert.deepEqual(dev.partitions, ['/dev/disk3s1', '/dev/disk3s2'])
    const st = dev.state as {nfsPort: number; mountPoint: string; file: string; device: string; attachTool: string}
    assert.equal(st.mountPoint, path.join(runDir, 'nfs'))
    assert.equal(st.file, fileIn())
    assert.equal(st.device, '/dev/disk3')
    assert.equal(st.attachTool, 'hdiutil')
    assert.ok(fs.statSync(st.mountPoint).isDirectory())
    assert.deepEqual(
      tools.calls.map((c) => c[0] + (c[1] === 'attach' ? ' attach' : '')),
      ['/sbin/mount_nfs', '/usr/bin/sw_vers', '/usr/bin/hdiutil attach'],
    )
    assert.equal(tools.calls[0][3], '127.0.0.1:/')
    // The served bytes are the image's.
    const cat = await runTool('nfs-cat', [`nfs://127.0.0.1//good.img?nfsport=${st.nfsPort}&mountport=${st.nfsPort}&version=3`])
    assert.ok(cat.stdout.equals(img.data))

    await dev.detach()
    assert.deepEqual(tools.calls.slice(3), [
      ['/usr/bin/hdiutil', 'detach', '/dev/disk3'],
      ['/sbin/umount', st.mountPoint],
    ])
    assert.equal(await refuses(st.nfsPort), true, 'the NFS server still listens after detach')
    await dev.detach() // idempotent
    assert.equal(tools.calls.length, 5)
  })

  it('over an overlay: the export is mounted rw and attached -readwrite; writes land in the overlay, the image is untouched', async () => {
    const overlayFile = path.join(runDir, 'disk.overlay')
    const rw = await Overlay.open(await openImage(img.goodImage), overlayFile)
    const rwServer = new BlockServer(rw)
    const before = fs.readFileSync(img.goodImage)
    try {
      const tools = new MacTools({}, fileIn(), true)
      const dev = await createBackend({run: tools.runner}).attach(rwServer, ctx())
      detachers.push(() => dev.detach())
      assert.equal(tools.calls[0][0], '/sbin/mount_nfs')
      assert.match(tools.calls[0][2], /^rw,nolocks,vers=3,tcp,/)
      assert.deepEqual(tools.calls[2].slice(0, 3), ['/usr/bin/hdiutil', 'attach', '-readwrite'])
      // mount_nfs (played by nfs-ls) saw a file it may write.
      assert.match(tools.served, new RegExp(`-rw-r--r--\\s+1\\s+0\\s+0\\s+${IMAGE_SIZE}\\s+good\\.img`))
      // DiskImages' writes, played over NFS as the macOS client sends them: WRITE (UNSTABLE) then COMMIT.
      const port = (dev.state as {nfsPort: number}).nfsPort
      const c = await RpcClient.connect(port)
      try {
        const mnt = (await c.call(100005, 3, 1, str('/'))).body
        const root = mnt.subarray(8, 8 + mnt.readUInt32BE(4))
        const look = (await c.call(100003, 3, 3, Buffer.concat([opaque(root), str('good.img')]))).body
        assert.equal(look.readUInt32BE(0), 0)
        const fh = look.subarray(8, 8 + look.readUInt32BE(4))
        const data = Buffer.alloc(8192, 0xa5)
        const w = (await c.call(100003, 3, 7, Buffer.concat([opaque(fh), u64(1 << 20), u32(data.length, 0), opaque(data)]))).body
        assert.equal(w.readUInt32BE(0), 0, 'WRITE status')
        const commit = (await c.call(100003, 3, 21, Buffer.concat([opaque(fh), u64(0), u32(0)]))).body
        assert.equal(commit.readUInt32BE(0), 0, 'COMMIT status')
      } finally {
        c.close()
      }
      const cat = await runTool('nfs-cat', [`nfs://127.0.0.1//good.img?nfsport=${port}&mountport=${port}&version=3`])
      const expected = Buffer.from(img.data)
      expected.fill(0xa5, 1 << 20, (1 << 20) + 8192)
      assert.ok(cat.stdout.equals(expected), 'the served file has the write')
      // Served on the serving threads, through their views of the overlay: none of it on the main thread.
      assert.ok(rwServer.stats.writes >= 1 && rwServer.stats.reads > 0)
      assert.equal(rwServer.counters[COUNTER.writes] + rwServer.counters[COUNTER.reads], 0)
      await dev.detach()
      assert.ok(fs.readFileSync(img.goodImage).equals(before), 'the image file changed')
      assert.ok(fs.statSync(overlayFile).size > 8192, 'the overlay holds the write')
    } finally {
      await rw.close()
    }
  })

  it('macOS 26 over an overlay: diskutil image attach without --readOnly', async () => {
    const rw = await Overlay.open(await openImage(img.goodImage), path.join(runDir, 'disk.overlay'))
    try {
      const tools = new MacTools({sw_vers: [{code: 0, stdout: '26.0\n', stderr: ''}], diskutil: [{code: 1, stdout: '', stderr: 'constructed: Could not attach'}]}, fileIn(), true)
      const dev = await createBackend({run: tools.runner}).attach(new BlockServer(rw), ctx())
      detachers.push(() => dev.detach())
      assert.deepEqual(tools.calls[2], ['/usr/sbin/diskutil', 'image', 'attach', '--noMount', '--plist', fileIn()])
      assert.deepEqual(tools.calls[3].slice(0, 3), ['/usr/bin/hdiutil', 'attach', '-readwrite'])
      await dev.detach()
    } finally {
      await rw.close()
    }
  })

  it('macOS 26: diskutil image attach first; when it fails, hdiutil attach', async () => {
    const tools = new MacTools(
      {sw_vers: [{code: 0, stdout: '26.0\n', stderr: ''}], diskutil: [{code: 1, stdout: '', stderr: 'constructed: Could not attach'}]},
      fileIn(),
    )
    const dev = await createBackend({run: tools.runner}).attach(server, ctx())
    detachers.push(() => dev.detach())
    assert.deepEqual(
      tools.calls.map((c) => c.slice(0, 3).join(' ')),
      ['/sbin/mount_nfs -o ' + tools.calls[0][2], '/usr/bin/sw_vers -productVersion', '/usr/sbin/diskutil image attach', '/usr/bin/hdiutil attach -readonly'],
    )
    assert.equal((dev.state as {attachTool: string}).attachTool, 'hdiutil')
    assert.ok(logs.some((l) => l.includes('trying hdiutil attach')))
  })

  it('macOS 26: diskutil output parsed (constructed output, dev-entry without /dev/)', async () => {
    const constructed = `<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict><key>system-entities</key><array>
<dict><key>content-hint</key><string>FDisk_partition_scheme</string><key>dev-entry</key><string>disk7</string></dict>
<dict><key>content-hint</key><string>Windows_FAT_32</string><key>dev-entry</key><string>disk7s1</string></dict>
</array></dict></plist>`
    const tools = new MacTools({sw_vers: [{code: 0, stdout: '26.1', stderr: ''}], diskutil: [{code: 0, stdout: constructed, stderr: ''}]}, fileIn())
    const dev = await createBackend({run: tools.runner}).attach(server, ctx())
    detachers.push(() => dev.detach())
    assert.equal(dev.device, '/dev/disk7')
    assert.deepEqual(dev.aliases, ['/dev/rdisk7'])
    assert.deepEqual(dev.partitions, ['/dev/disk7s1'])
    assert.equal((dev.state as {attachTool: string}).attachTool, 'diskutil')
  })

  it('a failing mount_nfs: one clear error, the server stopped, nothing attached', async () => {
    let port = 0
    const b = createBackend({
      run: async (argv) => {
        port = Number(/port=(\d+)/.exec(argv[2] ?? '')?.[1] ?? 0)
        return argv[0] === '/sbin/mount_nfs'
          ? {code: 1, stdout: '', stderr: "mount_nfs: can't mount / from 127.0.0.1 onto /x: Permission denied\n"}
          : {code: 127, stdout: '', stderr: 'unexpected'}
      },
    })
    await assert.rejects(b.attach(server, ctx()), (err: unknown) => {
      assert.ok(err instanceof VdevError)
      assert.equal(err.code, 'io')
      assert.match(err.message, /^mount_nfs 127\.0\.0\.1:\/ on .* failed \(exit 1\): mount_nfs: can't mount .*Permission denied$/)
      return true
    })
    assert.ok(port > 0)
    assert.equal(await refuses(port), true)
  })

  it('a failing hdiutil attach: unmounts (forced), stops the server, reports hdiutil\'s message', async () => {
    const tools = new MacTools({'hdiutil-attach': [{code: 1, stdout: '', stderr: 'hdiutil: attach failed - Resource busy\n'}]}, fileIn())
    await assert.rejects(createBackend({run: tools.runner}).attach(server, ctx()), /hdiutil attach failed \(exit 1\): hdiutil: attach failed - Resource busy/)
    const last = tools.calls[tools.calls.length - 1]
    assert.deepEqual(last, ['/sbin/umount', '-f', path.join(runDir, 'nfs')])
    const port = Number(/port=(\d+)/.exec(tools.calls[0][2])![1])
    assert.equal(await refuses(port), true)
  })

  it('a busy disk: detach refuses (keeping everything), a forced detach then succeeds', async () => {
    const tools = new MacTools(
      {'hdiutil-detach': [{code: 16, stdout: '', stderr: 'hdiutil: couldn\'t unmount "disk3" - Resource busy\n'}, {code: 0, stdout: '', stderr: ''}]},
      fileIn(),
    )
    const dev = await createBackend({run: tools.runner}).attach(server, ctx())
    const port = (dev.state as {nfsPort: number}).nfsPort
    await assert.rejects(dev.detach(), (err: unknown) => err instanceof VdevError && err.code === 'busy' && /Resource busy.*--force/.test(err.message))
    assert.equal(await refuses(port), false, 'a refused detach must leave the server serving')
    await (dev.detach as (o?: {force?: boolean}) => Promise<void>)({force: true})
    assert.deepEqual(tools.calls.slice(-3), [
      ['/usr/bin/hdiutil', 'detach', '/dev/disk3'],
      ['/usr/bin/hdiutil', 'detach', '/dev/disk3', '-force'],
      ['/sbin/umount', '-f', path.join(runDir, 'nfs')],
    ])
    assert.equal(await refuses(port), true)
  })

  it('cleanup after a dead server: forced detach and unmount from the registry state; idempotent', async () => {
    const calls: string[][] = []
    let detachCode = 0
    const b = createBackend({
      run: async (argv) => {
        calls.push(argv)
        if (argv[1] === 'detach') return {code: detachCode, stdout: '', stderr: detachCode ? 'hdiutil: detach failed - No such file or directory' : ''}
        if (argv[1] === 'info') return {code: 0, stdout: fs.readFileSync(path.join(FIXTURES, 'hdiutil-info-macos15.plist'), 'utf8'), stderr: ''}
        return {code: 0, stdout: '', stderr: ''}
      },
    })
    const state = {nfsPort: 1234, mountPoint: '/var/run/vdev/vdev4/nfs', file: '/var/run/vdev/vdev4/nfs/disk.img', device: '/dev/disk5'}
    await b.cleanup({...state}, (l) => logs.push(l))
    assert.deepEqual(calls, [
      ['/usr/bin/hdiutil', 'detach', '/dev/disk5', '-force'],
      ['/sbin/umount', '-f', '/var/run/vdev/vdev4/nfs'],
    ])
    // Again, with the disk already gone (hdiutil info does not list it): still succeeds.
    calls.length = 0
    detachCode = 1
    await b.cleanup({...state}, (l) => logs.push(l))
    assert.deepEqual(
      calls.map((c) => c[1]),
      ['detach', 'info', '-f'],
    )
    // A state from before anything was mounted needs nothing.
    calls.length = 0
    await b.cleanup({}, () => {})
    assert.equal(calls.length, 0)
  })
})

describe('macos-nfs: vdev list cross-checks hdiutil info -plist', () => {
  const INFO = fs.readFileSync(path.join(FIXTURES, 'hdiutil-info-macos15.plist'), 'utf8')
  const runner: Runner = async (argv) => {
    assert.deepEqual(argv.slice(0, 3), ['/usr/bin/hdiutil', 'info', '-plist'])
    return {code: 0, stdout: INFO, stderr: ''}
  }
  const b = createBackend({run: runner})

  it('a disk still listed by hdiutil (recorded macOS 15 output) is not gone', async () => {
    assert.equal(await b.deviceGone!({file: '/Users/someone/build/Other_0.0.0_aarch64.dmg', device: '/dev/disk4'}), false)
  })

  it('a disk hdiutil no longer lists, or listed as another device, is gone', async () => {
    assert.equal(await b.deviceGone!({file: '/private/var/run/vdev/run/vdev0/nfs/disk.img', device: '/dev/disk9'}), true)
    assert.equal(await b.deviceGone!({file: '/Users/someone/build/Other_0.0.0_aarch64.dmg', device: '/dev/disk7'}), true)
  })
})

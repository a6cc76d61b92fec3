/**
 * The NFS server against a real client: libnfs's nfs-ls, nfs-cat and nfs-cp (Debian libnfs-utils 4.0),
 * reading real .vdimg images made by the real writer.
 */
import * as assert from 'node:assert/strict'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {BAD, IMAGE_SIZE, expectedZeroFilled, makeImages, nfsUrl, run, serve, type Images, type Served} from './fixture'

describe('nfs server with libnfs (nfs-ls, nfs-cat, nfs-cp)', function () {
  this.timeout(60000)
  let img: Images
  const running: Served[] = []

  before(async () => {
    img = await makeImages()
  })
  afterEach(async () => {
    for (const s of running.splice(0)) await s.stop()
  })
  after(() => img?.cleanup())

  async function start(file: string, opts: Parameters<typeof serve>[1] = {}): Promise<Served> {
    const s = await serve(file, opts)
    running.push(s)
    return s
  }

  it('lists the export root: one read-only regular file named after the image, with its size', async () => {
    const s = await start(img.goodImage, {fileName: 'good.img'})
    const r = await run('nfs-ls', [`nfs://127.0.0.1/?nfsport=${s.nfs.port}&mountport=${s.nfs.port}&version=3`])
    assert.equal(r.code, 0, r.stderr)
    const lines = r.stdout.toString().trim().split('\n')
    assert.equal(lines.length, 1, r.stdout.toString())
    const f = lines[0].trim().split(/\s+/)
    assert.equal(f[0], '-r--r--r--')
    assert.equal(Number(f[4]), IMAGE_SIZE)
    assert.equal(f[5], 'good.img')
  })

  it('nfs-cat of an image without bad areas gives the source byte for byte', async () => {
    const s = await start(img.goodImage)
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.length, IMAGE_SIZE)
    assert.ok(r.stdout.equals(img.data), 'bytes differ from the source')
  })

  it('nfs-cat of an image with bad areas fails, having written only source bytes before the first one', async () => {
    const s = await start(img.badImage)
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.notEqual(r.code, 0, 'reading through an unreadable area must fail')
    assert.match(r.stderr, /Failed to read/)
    const firstBad = Math.min(...BAD.map((b) => b.offset))
    assert.ok(r.stdout.length <= firstBad, `wrote ${r.stdout.length} bytes, past the first bad byte ${firstBad}`)
    assert.ok(r.stdout.equals(img.data.subarray(0, r.stdout.length)), 'bytes before the failure differ')
    assert.ok(s.block.stats.badReads > 0)
  })

  it('with the zero bad-area policy, nfs-cat reads the whole file with zeros in the bad areas', async () => {
    const s = await start(img.badImage, {badPolicy: 'zero'})
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.equals(expectedZeroFilled(img.data, BAD)))
  })

  it('small rtmax: many short READs still reassemble the whole file', async () => {
    const s = await start(img.goodImage, {rtmax: 8192})
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.equals(img.data))
    assert.ok(s.block.stats.reads >= IMAGE_SIZE / 8192, `only ${s.block.stats.reads} reads`)
  })

  it('nfs-cp into the export is refused with NFS3ERR_ROFS (new file and over the image)', async () => {
    const s = await start(img.goodImage)
    for (const name of ['new.img', 'disk.img']) {
      const r = await run('nfs-cp', [img.raw, nfsUrl(s.nfs.port, name)])
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /NFS3ERR_ROFS/)
    }
    const again = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.ok(again.stdout.equals(img.data), 'the image changed')
  })

  it('a missing file is NOENT and an unknown export is refused at MOUNT', async () => {
    const s = await start(img.goodImage)
    const missing = await run('nfs-cat', [nfsUrl(s.nfs.port, 'other.img')])
    assert.notEqual(missing.code, 0)
    assert.match(missing.stderr, /NOENT|No such file/i)
    const badExport = await run('nfs-ls', [`nfs://127.0.0.1/nope/?nfsport=${s.nfs.port}&mountport=${s.nfs.port}&version=3`])
    assert.notEqual(badExport.code, 0)
    assert.match(badExport.stderr, /MNT3ERR_NOENT/)
  })

  it('several clients at once each read the whole file', async () => {
    const s = await start(img.goodImage)
    const rs = await Promise.all([1, 2, 3, 4].map(() => run('nfs-cat', [nfsUrl(s.nfs.port)])))
    for (const r of rs) {
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stdout.equals(img.data))
    }
  })

  it('vdev serve IMG --protocol nfs --json: ready line, nfs-cat reads the file, SIGTERM stops it', async () => {
    const bin = path.resolve(__dirname, '..', '..', '..', 'bin', 'run.js')
    const child = spawn(process.execPath, [bin, 'serve', img.goodImage, '--protocol', 'nfs', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let out = ''
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString()
          if (out.includes('\n')) resolve(out.split('\n')[0])
        })
        child.once('exit', (code) => reject(new Error(`vdev serve exited ${code} before its ready line`)))
      })
      const ready = JSON.parse(line) as {protocol: string; listen: string; export: string; file: string}
      assert.equal(ready.protocol, 'nfs')
      assert.equal(ready.export, '/')
      assert.equal(ready.file, 'good.img')
      assert.match(ready.listen, /^127\.0\.0\.1:\d+$/)
      const port = Number(ready.listen.split(':')[1])
      const r = await run('nfs-cat', [nfsUrl(port, ready.file)])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stdout.equals(img.data))
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
      child.kill('SIGTERM')
      assert.equal(await exited, 0)
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
  })
})

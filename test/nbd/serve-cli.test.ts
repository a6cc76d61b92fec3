/**
 * `vdev serve` as a user runs it: a real process, its --json ready line, real clients (nbdinfo, nbdcopy),
 * and a clean stop on SIGINT/SIGTERM (exit 0, socket removed). Bad usage fails with one line and a stable
 * exit code. Every process started here is killed in the after hooks, whatever happens.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {spawn, type ChildProcess} from 'node:child_process'
import {makeFixture, run, PYTHON, type Fixture} from './fixture'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const BIN = path.join(ROOT, 'bin', 'run.js')

interface ServeProcess {
  child: ChildProcess
  ready: Record<string, unknown>
  stdout: () => string
  stderr: () => string
  exited: Promise<{code: number | null; signal: NodeJS.Signals | null}>
}

const started: ChildProcess[] = []

function startServe(args: string[]): Promise<ServeProcess> {
  const child = spawn(process.execPath, [BIN, 'serve', ...args], {stdio: ['ignore', 'pipe', 'pipe']})
  started.push(child)
  let out = ''
  let err = ''
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null}>((resolve) =>
    child.on('exit', (code, signal) => resolve({code, signal})),
  )
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line within 20 s; stderr: ${err}`)), 20_000)
    child.stderr!.on('data', (d) => (err += d))
    child.stdout!.on('data', (d) => {
      out += d
      const nl = out.indexOf('\n')
      if (nl >= 0 && timer) {
        clearTimeout(timer)
        try {
          resolve({child, ready: JSON.parse(out.slice(0, nl)), stdout: () => out, stderr: () => err, exited})
        } catch (e) {
          reject(e)
        }
      }
    })
    void exited.then(({code}) => {
      clearTimeout(timer)
      reject(new Error(`vdev serve exited (${code}) before it was ready: ${err}`))
    })
  })
}

function runServe(args: string[]): Promise<{code: number; stdout: string; stderr: string}> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, 'serve', ...args], {stdio: ['ignore', 'pipe', 'pipe']})
    started.push(child)
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('exit', (code) => resolve({code: code ?? -1, stdout: out, stderr: err}))
  })
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

describe('vdev serve (the command)', function () {
  this.timeout(60_000)
  let fx: Fixture

  before(async () => {
    fx = await makeFixture()
  })

  after(() => {
    for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    fx?.cleanup()
  })

  it('--json prints one ready line; nbdinfo and nbdcopy read the export; SIGTERM stops it with exit 0', async () => {
    const s = await startServe([fx.goodImage, '--listen', '127.0.0.1:0', '--json'])
    assert.equal(s.ready.protocol, 'nbd')
    assert.equal(s.ready.export, 'good.vdimg')
    assert.match(String(s.ready.listen), /^127\.0\.0\.1:\d+$/)
    const uri = `nbd://${s.ready.listen}/good.vdimg`
    assert.equal(s.ready.uri, uri)
    assert.equal(Number((await run('nbdinfo', ['--size', uri])).stdout.trim()), fx.size)
    const out = path.join(fx.dir, 'cli-copy.raw')
    await run('nbdcopy', [uri, out])
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(fx.goodRaw)))
    s.child.kill('SIGTERM')
    const e = await s.exited
    assert.equal(e.code, 0, s.stderr())
    assert.equal(s.stdout().trim().split('\n').length, 1, 'nothing but the ready line on stdout')
  })

  it('decode-ahead: a reader at queue depth 1 reads exact bytes and fails exactly on bad areas; the stop log counts chunks decoded ahead and used', async () => {
    const sock = path.join(fx.dir, 'ahead.sock')
    const s = await startServe([fx.image, '--listen', `unix:${sock}`, '--json', '--threads', '2'])
    // 128 KiB reads one at a time through libnbd, as a sequential reader: what failed, and the bytes of the rest.
    const PIECE = 128 * 1024
    const script = [
      'import json, sys, nbd',
      'h = nbd.NBD()',
      'h.connect_uri(sys.argv[1])',
      `out = open(${JSON.stringify(path.join(fx.dir, 'ahead.raw'))}, "wb")`,
      'failed = []',
      'size = h.get_size()',
      'for p in range(2):',
      `  for off in range(0, size, ${PIECE}):`,
      `    n = min(${PIECE}, size - off)`,
      '    try:',
      '      b = h.pread(n, off)',
      '    except nbd.Error:',
      '      failed.append(off)',
      '      b = bytes(n)',
      '    if p == 1: out.write(b)',
      'out.close()',
      'print(json.dumps(failed))',
    ].join('\n')
    try {
      const r = await run(PYTHON, ['-c', script, `nbd+unix:///disk.vdimg?socket=${sock}`])
      const failed = JSON.parse(r.stdout) as number[]
      const want: number[] = []
      for (let off = 0; off < fx.size; off += PIECE) if (fx.bad.some((b) => b.offset < off + PIECE && off < b.offset + b.length)) want.push(off)
      assert.deepEqual(failed, [...want, ...want], 'reads that fail are exactly those touching a bad area')
      const got = fs.readFileSync(path.join(fx.dir, 'ahead.raw'))
      const raw = fs.readFileSync(fx.raw)
      for (let off = 0; off < fx.size; off += PIECE)
        if (!want.includes(off)) assert.ok(got.subarray(off, off + PIECE).equals(raw.subarray(off, off + PIECE)), `bytes of the read at ${off}`)
    } finally {
      s.child.kill('SIGTERM')
    }
    assert.equal((await s.exited).code, 0, s.stderr())
    assert.match(s.stderr(), /decode-ahead: [1-9]\d* chunks decoded ahead \(\d+ for a read under way\), [1-9]\d* read from there/)
  })

  it('serves on a Unix socket; SIGINT stops it, exit 0, the socket is removed', async () => {
    const sock = path.join(fx.dir, 'serve.sock')
    const s = await startServe([fx.image, '--listen', `unix:${sock}`, '--json'])
    assert.deepEqual({...s.ready, uri: undefined}, {protocol: 'nbd', listen: `unix:${sock}`, export: 'disk.vdimg', uri: undefined})
    const info = JSON.parse((await run('nbdinfo', ['--json', `nbd+unix:///disk.vdimg?socket=${sock}`])).stdout)
    assert.equal(info.exports[0].is_read_only, true)
    s.child.kill('SIGINT')
    assert.equal((await s.exited).code, 0)
    assert.equal(fs.existsSync(sock), false)
  })

  it('listens on 127.0.0.1:10809 by default', async function () {
    if (!(await portFree(10809))) this.skip()
    const s = await startServe([fx.goodImage, '--json'])
    assert.equal(s.ready.listen, '127.0.0.1:10809')
    assert.equal(Number((await run('nbdinfo', ['--size', 'nbd://127.0.0.1'])).stdout.trim()), fx.size)
    s.child.kill('SIGTERM')
    assert.equal((await s.exited).code, 0)
  })

  it('a SIGTERM during a copy lets the reads in flight finish before exiting 0', async () => {
    const s = await startServe([fx.goodImage, '--listen', '127.0.0.1:0', '--json'])
    const copy = run('nbdcopy', [`nbd://${s.ready.listen}/`, path.join(fx.dir, 'interrupted.raw')], {allowFail: true})
    await new Promise((r) => setTimeout(r, 20))
    s.child.kill('SIGTERM')
    assert.equal((await s.exited).code, 0, s.stderr())
    await copy // finished or cut off; either way the server exited cleanly and did not hang
  })

  it('refuses a non-loopback address unless --allow-remote, with one line and exit 2', async () => {
    const r = await runServe([fx.image, '--listen', '0.0.0.0:0'])
    assert.equal(r.code, 2)
    assert.equal(r.stdout, '')
    assert.match(r.stderr, /^vdev: --listen 0\.0\.0\.0:0 is not a loopback address.*--allow-remote/)
    assert.equal(r.stderr.trim().split('\n').length, 1)
    const s = await startServe([fx.image, '--listen', '0.0.0.0:0', '--allow-remote', '--json'])
    const port = String(s.ready.listen).split(':').pop()
    assert.equal(Number((await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}`])).stdout.trim()), fx.size)
    s.child.kill('SIGTERM')
    assert.equal((await s.exited).code, 0)
  })

  it('bad input: a missing image, a file that is not an image, a bad address, a port in use', async () => {
    const missing = await runServe([path.join(fx.dir, 'nope.vdimg')])
    assert.equal(missing.code, 3)
    assert.match(missing.stderr, /^vdev: .*nope\.vdimg: cannot open: no such file or directory\n$/)
    const notImage = await runServe([fx.raw, '--listen', '127.0.0.1:0'])
    assert.equal(notImage.code, 4)
    assert.equal(notImage.stderr.split('\n').filter(Boolean).length, 1)
    const badPort = await runServe([fx.image, '--listen', '127.0.0.1:99999'])
    assert.equal(badPort.code, 2)
    assert.match(badPort.stderr, /out of range/)
    const s = await startServe([fx.image, '--listen', '127.0.0.1:0', '--json'])
    const busy = await runServe([fx.image, '--listen', String(s.ready.listen)])
    assert.equal(busy.code, 3)
    assert.match(busy.stderr, /cannot listen on .*: address already in use/)
    s.child.kill('SIGTERM')
    await s.exited
  })

  it('--protocol nfs: the NFS ready line {protocol, listen, export, file}, or a clear "unavailable" error', async () => {
    const nfsBuilt = fs.existsSync(path.join(ROOT, 'dist', 'src', 'serve', 'nfs', 'index.js'))
    if (!nfsBuilt) {
      const r = await runServe([fx.image, '--protocol', 'nfs'])
      assert.equal(r.code, 7)
      assert.match(r.stderr, /^vdev: NFS serving is unavailable/)
      return
    }
    const s = await startServe([fx.image, '--protocol', 'nfs', '--json'])
    assert.equal(s.ready.protocol, 'nfs')
    assert.match(String(s.ready.listen), /^127\.0\.0\.1:\d+$/)
    assert.equal(s.ready.export, '/')
    assert.equal(s.ready.file, 'disk.img')
    s.child.kill('SIGTERM')
    assert.equal((await s.exited).code, 0, s.stderr())
    const unix = await runServe([fx.image, '--protocol', 'nfs', '--listen', 'unix:/tmp/x.sock'])
    assert.equal(unix.code, 2)
  })
})

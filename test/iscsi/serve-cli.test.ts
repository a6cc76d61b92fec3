/**
 * `vdev serve --protocol iscsi` as a user runs it: the ready line, the default address, a raw image + its
 * ddrescue mapfile (MEDIUM ERROR through qemu-io), CHAP from a secret file, the usage errors (one line
 * on stderr, exit 2 / 3, never 1), and what a client sends reaching the log only escaped and cut short.
 * Every process started here is killed in the after hook.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {spawn, type ChildProcess} from 'node:child_process'
import {hasTool, makeFixture, run, type Fixture} from '../nbd/fixture'
import {INITIATOR, IscsiRawClient, pdu} from './rawclient'
import {serveIscsi} from './serve'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const BIN = path.join(ROOT, 'bin', 'run.js')

const started: ChildProcess[] = []

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

describe('vdev serve --protocol iscsi (the command)', function () {
  this.timeout(60_000)
  let fx: Fixture

  before(async () => {
    fx = await makeFixture()
  })

  after(() => {
    for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    fx?.cleanup()
  })

  const serve = async (args: string[]) => {
    const s = await serveIscsi(args)
    started.push(s.child)
    return s
  }

  it('--json: {protocol, listen, target, lun, uri}; listens on 127.0.0.1:3260 by default; SIGINT stops it with exit 0', async function () {
    if (!(await portFree(3260))) this.skip()
    const s = await serve([fx.goodImage])
    assert.equal(s.ready.protocol, 'iscsi')
    assert.equal(s.ready.listen, '127.0.0.1:3260')
    assert.equal(s.ready.lun, 0)
    assert.match(s.ready.target, /^iqn\.2026-01\.dev\.vdev:good-[0-9a-f]{12}$/)
    assert.equal(s.ready.uri, `iscsi://127.0.0.1:3260/${s.ready.target}/0`)
    if (hasTool('iscsi-readcapacity16')) assert.match((await run('iscsi-readcapacity16', [s.ready.uri])).stdout, new RegExp(`Total size:${fx.size}\\b`))
    s.child.kill('SIGINT')
    assert.equal(await s.exited, 0, s.stderr())
    assert.match(s.stderr(), /stopped; served \d+ reads/)
  })

  it('serving threads decode ahead of one session\'s sequential reads (qemu-img convert): exact bytes; the stop line counts chunks decoded ahead and read from there', async function () {
    if (!hasTool('qemu-img')) this.skip()
    const s = await serve([fx.goodImage, '--listen', '127.0.0.1:0', '--threads', '2'])
    const out = path.join(fx.dir, 'ahead-iscsi.raw')
    try {
      // One session, served by one thread; its large READs wake the other to decode the stream's next chunks.
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.ready.uri, out])
      assert.ok(fs.readFileSync(out).equals(fs.readFileSync(fx.goodRaw)), 'qemu-img convert: bytes differ from the source')
    } finally {
      s.child.kill('SIGTERM')
    }
    assert.equal(await s.exited, 0, s.stderr())
    assert.match(s.stderr(), /decode-ahead: [1-9]\d* chunks decoded ahead \(\d+ for a read under way\), [1-9]\d* read from there/)
  })

  it('a raw image + ddrescue mapfile: the target name is stable across restarts, reads fail at the bad sector', async function () {
    const a = await serve([fx.raw, '--mapfile', fx.mapfile, '--listen', '127.0.0.1:0'])
    a.child.kill('SIGTERM')
    assert.equal(await a.exited, 0)
    const b = await serve([fx.raw, '--mapfile', fx.mapfile, '--listen', '127.0.0.1:0'])
    assert.equal(a.ready.target, b.ready.target)
    if (hasTool('qemu-io')) {
      const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${fx.bad[0].offset} 512`, b.ready.uri], {allowFail: true})
      assert.match(r.stdout + r.stderr, /Input\/output error/)
    }
    b.child.kill('SIGTERM')
    assert.equal(await b.exited, 0)
    assert.match(b.stderr(), /stopped; served \d+ reads, \d+ bytes, [1-9]\d* errors \([1-9]\d* touching bad areas\)/)
  })

  it('--allow-remote needs CHAP or --no-auth; CHAP from a secret file works with libiscsi', async function () {
    const open = await runServe([fx.goodImage, '--protocol', 'iscsi', '--listen', '0.0.0.0:0', '--allow-remote'])
    assert.equal(open.code, 2)
    assert.match(open.stderr, /^vdev: an iSCSI target on a non-loopback address needs CHAP/)
    assert.equal(open.stderr.trim().split('\n').length, 1)
    const half = await runServe([fx.goodImage, '--protocol', 'iscsi', '--chap-user', 'u'])
    assert.equal(half.code, 2)
    const missing = await runServe([fx.goodImage, '--protocol', 'iscsi', '--chap-user', 'u', '--chap-secret-file', path.join(fx.dir, 'nope')])
    assert.equal(missing.code, 3)
    assert.match(missing.stderr, /nope: cannot read the CHAP secret: no such file or directory/)
    const nbdChap = await runServe([fx.goodImage, '--chap-user', 'u', '--chap-secret-file', fx.mapfile])
    assert.equal(nbdChap.code, 2)
    const secret = path.join(fx.dir, 'chap.secret')
    fs.writeFileSync(secret, 'a-long-secret-1\n', {mode: 0o600})
    const s = await serve([fx.goodImage, '--listen', '0.0.0.0:0', '--allow-remote', '--chap-user', 'vdev', '--chap-secret-file', secret])
    const port = s.ready.listen.split(':').pop()
    if (hasTool('iscsi-readcapacity16')) {
      const ok = await run('iscsi-readcapacity16', [`iscsi://vdev%a-long-secret-1@127.0.0.1:${port}/${s.ready.target}/0`])
      assert.match(ok.stdout, /Total size:/)
      const no = await run('iscsi-readcapacity16', [`iscsi://127.0.0.1:${port}/${s.ready.target}/0`], {allowFail: true})
      assert.notEqual(no.code, 0)
    }
    s.child.kill('SIGTERM')
    assert.equal(await s.exited, 0)
    const unauth = await serve([fx.goodImage, '--listen', '0.0.0.0:0', '--allow-remote', '--no-auth'])
    unauth.child.kill('SIGTERM')
    assert.equal(await unauth.exited, 0)
  })

  it('a unix: address is a usage error; a port in use is exit 3', async () => {
    const unix = await runServe([fx.goodImage, '--protocol', 'iscsi', '--listen', 'unix:/tmp/x.sock'])
    assert.equal(unix.code, 2)
    assert.match(unix.stderr, /needs a HOST:PORT address/)
    const s = await serve([fx.goodImage, '--listen', '127.0.0.1:0'])
    const busy = await runServe([fx.goodImage, '--protocol', 'iscsi', '--listen', s.ready.listen])
    assert.equal(busy.code, 3)
    assert.match(busy.stderr, /address already in use/)
    s.child.kill('SIGTERM')
    await s.exited
  })

  it('names and text a client sends (control bytes, line separators, 4 KiB) are logged escaped, cut to 64 characters, on one line', async () => {
    // A NUL would end the text pair (RFC 7143 §6.1), so the forged line here ends with U+2028 and DEL instead.
    const HEAD = '\x1b[2J\r\nvdev serve: forged line\u2028\x7f"\\'
    const long = (s: string) => s + 'A'.repeat(4096 - [...s].length)
    const escaped = (max = 64) => `"\\x1b[2J\\x0d\\x0avdev serve: forged line\\u2028\\x7f\\x22\\x5c${'A'.repeat(max - [...HEAD].length)}"… (4096 characters)`
    const s = await serve([fx.goodImage, '--listen', '127.0.0.1:0', '--threads', '1'])
    const port = Number(s.ready.listen.split(':').pop())
    const wait = async (re: RegExp) => {
      for (let i = 0; i < 100 && !re.test(s.stderr()); i++) await new Promise((r) => setTimeout(r, 50))
    }
    // A session whose initiator name is 4 KiB of this: logged in (the name is the initiator's to choose).
    const a = await IscsiRawClient.connect(port)
    await a.login(s.ready.target, {InitiatorName: long(HEAD)})
    await wait(/session \d+ of/)
    // A login to a target of that name: refused, and the refusal names it.
    const b = await IscsiRawClient.connect(port)
    const refused = await b.loginStep(1, 3, true, {InitiatorName: INITIATOR, TargetName: long(HEAD), SessionType: 'Normal'})
    assert.equal(refused.status, 0x0203) // target not found
    await wait(/no target named/)
    // A text pair with no '=': the login fails on it.
    const c = await IscsiRawClient.connect(port)
    c.send(pdu(0x43, 0x87, Buffer.from(`InitiatorName=${INITIATOR}\0${long(HEAD)}\0`), (h) => h.writeUInt32BE(1, 16)))
    await c.read()
    await wait(/malformed text pair/)
    for (const x of [a, b, c]) x.destroy()
    s.child.kill('SIGTERM')
    assert.equal(await s.exited, 0)
    const err = s.stderr()
    const lines = (what: string) => err.split('\n').filter((l) => l.includes(what))
    assert.match(lines('session')[0] ?? err, new RegExp(`^vdev serve: iscsi 127\\.0\\.0\\.1:\\d+: session \\d+ of ${re(escaped())} \\(CID 0\\)$`))
    assert.equal(lines('session').length, 1, err)
    assert.match(lines('no target named')[0] ?? err, new RegExp(`^vdev serve: iscsi 127\\.0\\.0\\.1:\\d+: login refused: no target named ${re(escaped())}$`))
    assert.match(lines('malformed text pair')[0] ?? err, new RegExp(`^vdev serve: iscsi 127\\.0\\.0\\.1:\\d+: login refused: malformed text pair ${re(escaped(40))}$`))
    assert.doesNotMatch(err, /[\x00-\x09\x0b-\x1f\x7f\u2028]/, 'no control bytes or line separators reach the log')
    assert.doesNotMatch(err, /^vdev serve: forged line/m)
  })
})

function re(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

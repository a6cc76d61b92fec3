/**
 * `vdev serve` against NBD clients from the fuzzing campaign (issue 12 §4): one that pipelines 200 reads of
 * 16 MiB and reads no reply (the main-thread server grew to 1.2 GB), and one that names an export with
 * 4 KiB of control bytes (logged verbatim). A real `vdev serve` process, the raw client, its /proc status.
 */
import {strict as assert} from 'node:assert'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn, type ChildProcess} from 'node:child_process'
import * as P from '../../src/serve/nbd/protocol'
import {BIN, runCli, tmpDir} from '../helpers'
import {RawClient} from './rawclient'

const MiB = 1024 * 1024

interface Serve {
  child: ChildProcess
  sock: string
  stderr: () => string
}

/** Memory figures of a process from /proc/PID/status, in bytes. */
function memory(pid: number): {rss: number; peak: number} {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)![1]) * 1024
  return {rss: kib('VmRSS'), peak: kib('VmHWM')}
}

describe('vdev serve against hostile NBD clients (issue 12 §4)', function () {
  this.timeout(180_000)
  let t: ReturnType<typeof tmpDir>
  let data: Buffer
  let image: string
  const started: ChildProcess[] = []

  /** `vdev serve IMAGE --threads 0` on a Unix socket, once its ready line is out. */
  function serve(): Promise<Serve> {
    const sock = path.join(t.dir, `serve-${started.length}.sock`)
    const child = spawn(process.execPath, [BIN, 'serve', image, '--threads', '0', '--listen', `unix:${sock}`, '--json'], {stdio: ['ignore', 'pipe', 'pipe']})
    started.push(child)
    let err = ''
    child.stderr!.on('data', (d) => (err += d))
    return new Promise((resolve, reject) => {
      child.stdout!.once('data', () => resolve({child, sock, stderr: () => err}))
      child.once('exit', (code) => reject(new Error(`vdev serve exited (${code}): ${err}`)))
    })
  }

  before(async () => {
    t = tmpDir()
    data = crypto.randomBytes(32 * MiB)
    fs.writeFileSync(path.join(t.dir, 'disk.raw'), data)
    image = path.join(t.dir, 'disk.vdimg')
    const r = await runCli(['create', path.join(t.dir, 'disk.raw'), image])
    assert.equal(r.code, 0, r.stderr)
  })

  after(() => {
    for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    t?.cleanup()
  })

  it('200 pipelined 16 MiB reads and no reply read: the server holds at most ~64 MiB of replies, then answers all', async () => {
    const s = await serve()
    const pid = s.child.pid!
    const c = await RawClient.connect(s.sock)
    try {
      await c.go()
      const before = memory(pid).rss
      const N = 200
      const L = 16 * MiB
      const lengths = new Map<bigint, number>()
      for (let i = 0; i < N; i++) {
        c.request(P.NBD_CMD_READ, (i % 2) * L, L, BigInt(i))
        lengths.set(BigInt(i), L)
      }
      // Wait until the server stops growing: it stops taking requests once its replies fill the cap.
      let last = memory(pid).rss
      for (let waited = 0, still = 0; waited < 30_000 && still < 4; waited += 250) {
        await new Promise((r) => setTimeout(r, 250))
        const now = memory(pid).rss
        still = Math.abs(now - last) < 4 * MiB ? still + 1 : 0
        last = now
      }
      // Before: 64 reads in flight at once, 16 MiB each, and their replies: 1.2 GB and more.
      const {peak} = memory(pid)
      assert.ok(peak < before + 320 * MiB, `server peak RSS ${(peak / MiB) | 0} MiB (${(before / MiB) | 0} MiB before the reads)`)
      for (let i = 0; i < N; i++) {
        const r = await c.reply(lengths)
        const at = (Number(r.cookie) % 2) * L
        assert.equal(r.error, 0)
        assert.ok(r.payload.equals(data.subarray(at, at + L)), `reply ${r.cookie}`)
      }
    } finally {
      c.destroy()
      s.child.kill('SIGTERM')
    }
  })

  it('an export name of 4 KiB with control bytes is logged cut to 64 characters, escaped, on one line', async () => {
    const HEAD = '\x1b[2J\r\nvdev serve: forged line\x00'
    const s = await serve()
    const c = await RawClient.connect(s.sock)
    try {
      await c.greet()
      const name = Buffer.from(HEAD + 'A'.repeat(4096 - HEAD.length), 'latin1')
      c.send(Buffer.concat([P.encodeOptionHeader(P.NBD_OPT_EXPORT_NAME, name.length), name]))
      await c.closed // an unknown name ends the session
      for (let i = 0; i < 100 && !s.stderr().includes('unknown export'); i++) await new Promise((r) => setTimeout(r, 50))
    } finally {
      c.destroy()
      s.child.kill('SIGTERM')
    }
    const lines = s.stderr().split('\n').filter((l) => l.includes('unknown export'))
    assert.equal(lines.length, 1, s.stderr())
    assert.equal(lines[0], `vdev serve: nbd local: unknown export "\\x1b[2J\\x0d\\x0avdev serve: forged line\\x00${'A'.repeat(64 - HEAD.length)}"… (4096 characters)`)
    assert.doesNotMatch(s.stderr(), /[\x00-\x09\x0b-\x1f\x7f]/, 'no control bytes reach the log')
    assert.doesNotMatch(s.stderr(), /^vdev serve: forged line/m)
  })
})

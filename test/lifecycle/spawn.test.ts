/**
 * Starting attach's background server (spawnServer, src/lifecycle/attach.ts): a start that fails for want
 * of a resource the moment after may have is tried again and said in the server's log; any other failure
 * is not. The resource is really exhausted: a Node process under `prlimit --nofile` holds every descriptor
 * it may have, so spawn() cannot make the server's pipe (EMFILE), then lets them go (or not).
 */
import * as assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {ROOT} from '../helpers'

const SCRIPT = `
const fs = require('fs')
const {spawnServer} = require(${JSON.stringify(path.join(ROOT, 'dist/src/lifecycle/attach.js'))})
const [log, exe, releaseMs] = process.argv.slice(1)
const logFd = fs.openSync(log, 'a')
const held = []
if (releaseMs !== 'none') try { for (;;) held.push(fs.openSync('/dev/null', 'r')) } catch (e) { if (e.code !== 'EMFILE') throw e }
// Leave none: spawn() needs two for the pipe of fd 3.
if (Number(releaseMs) >= 0) setTimeout(() => { for (const fd of held.splice(0)) fs.closeSync(fd) }, Number(releaseMs))
const t0 = Date.now()
spawnServer(['-e', 'require("fs").writeSync(3, "ready\\\\n")'], logFd, process.env, 3, exe === '-' ? process.execPath : exe).then(
  (child) => {
    let text = ''
    child.stdio[3].on('data', (d) => (text += d))
    child.on('exit', (code) => { console.log(JSON.stringify({ok: true, code, text, ms: Date.now() - t0})); process.exit(0) })
  },
  (err) => { console.log(JSON.stringify({ok: false, code: err.code, ms: Date.now() - t0})); process.exit(0) },
)
`

function run(exe: string, releaseMs: number | 'none'): {r: {ok: boolean; code: string | number; text?: string; ms: number}; log: string} {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-spawn-'))
  try {
    const log = path.join(dir, 'server.log')
    const out = execFileSync('prlimit', ['--nofile=64:64', process.execPath, '-e', SCRIPT, log, exe, String(releaseMs)], {encoding: 'utf8', timeout: 30000})
    return {r: JSON.parse(out), log: fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : ''}
  } finally {
    fs.rmSync(dir, {recursive: true, force: true})
  }
}

describe('attach: starting the background server (spawnServer)', () => {
  before(function () {
    try {
      execFileSync('prlimit', ['--version'], {stdio: 'ignore'})
    } catch {
      this.skip()
    }
  })

  it('no descriptor left for its pipe (EMFILE) until 0.1 s later: started on the next try, the failure said in the log', () => {
    const {r, log} = run('-', 100)
    assert.deepEqual({ok: r.ok, code: r.code, text: r.text}, {ok: true, code: 0, text: 'ready\n'})
    const lines = log.split('\n').filter(Boolean)
    assert.equal(lines.length, 1, log)
    assert.match(lines[0], /^\d{4}-\d\d-\d\dT[\d:.]+Z vdev attach: starting the server failed \(spawn \/\S+ EMFILE\); trying again$/)
    assert.ok(r.ms >= 250, `retried after ${r.ms} ms`)
  })

  it('descriptors never free: fails with EMFILE after three tries (0.25 + 0.5 s apart), two lines in the log', () => {
    const {r, log} = run('-', -1)
    assert.deepEqual({ok: r.ok, code: r.code}, {ok: false, code: 'EMFILE'})
    assert.equal(log.split('\n').filter((l) => l.includes('trying again')).length, 2, log)
    assert.ok(r.ms >= 750 && r.ms < 5000, `gave up after ${r.ms} ms`)
  })

  it('a missing program (ENOENT) is not tried again', () => {
    const {r, log} = run('/nonexistent/node', 'none')
    assert.deepEqual({ok: r.ok, code: r.code}, {ok: false, code: 'ENOENT'})
    assert.equal(log, '')
    assert.ok(r.ms < 250, `took ${r.ms} ms`)
  })
})

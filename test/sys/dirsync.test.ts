/**
 * The files vdev builds under a temporary name — `create`'s image, `extract`'s file and mapfile, `repair
 * --out`'s image, whether repaired or copied — reach the disk before they take their name, and the name
 * reaches it before the command returns: an fsync of the file, then the rename (or link), then an fsync
 * of its directory. Traced with strace(1) (`-f -y`: every thread, each descriptor's path) on the real CLI.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {BIN, prng, tmpDir} from '../helpers'

interface Traced {
  code: number
  stderr: string
  /** strace's lines: `fsync(N</path>)`, `rename("a", "b")`, `link("a", "b")`, … */
  calls: string[]
}

/** `vdev ARGS` under strace, tracing the calls that make a file and its name durable. */
function traced(dir: string, args: string[]): Traced {
  const log = path.join(dir, 'strace.log')
  const r = spawnSync(
    'strace',
    ['-f', '-y', '-qq', '-s', '4096', '-o', log, '-e', 'trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat', process.execPath, BIN, ...args],
    {encoding: 'utf8', timeout: 120_000},
  )
  assert.equal(r.error, undefined, String(r.error))
  const calls = fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .map((l) => l.replace(/^\d+\s+/, ''))
    .filter((l) => l && !l.includes('resumed>') && !l.startsWith('+++'))
  fs.rmSync(log)
  return {code: r.status ?? -1, stderr: r.stderr, calls}
}

/**
 * Asserts that `out` got its name by a rename or link of a file fsynced before it, and that `out`'s
 * directory was fsynced after it.
 */
function assertDurable(t: Traced, out: string): void {
  const dir = path.dirname(out)
  const named = t.calls.findIndex((c) => /^(rename|renameat2?|link|linkat)\(/.test(c) && c.includes(`"${out}"`))
  assert.ok(named >= 0, `no rename or link to ${out} in:\n${t.calls.join('\n')}`)
  const from = /"([^"]+)"/.exec(t.calls[named])![1]
  const tmp = path.isAbsolute(from) ? from : path.join(dir, from)
  const syncedFile = t.calls.slice(0, named).some((c) => /^f(data)?sync\(\d+</.test(c) && c.includes(`<${tmp}>`))
  assert.ok(syncedFile, `${tmp} was not fsynced before it was named ${out}:\n${t.calls.join('\n')}`)
  const syncedDir = t.calls.slice(named + 1).some((c) => c.startsWith('fsync(') && c.includes(`<${dir}>`))
  assert.ok(syncedDir, `${dir} was not fsynced after ${out} was named:\n${t.calls.join('\n')}`)
}

describe('sys/dirsync: a new file and its name are on the disk when the command returns', function () {
  this.timeout(240_000)
  let t: ReturnType<typeof tmpDir>
  let raw: string
  before(function () {
    if (process.platform !== 'linux' || spawnSync('strace', ['-V']).status !== 0) this.skip()
    t = tmpDir()
    t.dir = fs.realpathSync(t.dir) // strace names descriptors by their real paths
    // 8 MiB: compressible text, random bytes and zeros, so the image has every kind of chunk.
    raw = path.join(t.dir, 'disk.raw')
    const text = Buffer.from('vdev keeps disk images safe for years. '.repeat(80_000)).subarray(0, 3 << 20)
    fs.writeFileSync(raw, Buffer.concat([text, prng(7, 3 << 20), Buffer.alloc(2 << 20)]))
  })
  after(() => t?.cleanup())

  it('create (a new name: link; --force: rename)', () => {
    const img = path.join(t.dir, 'c.vdimg')
    let r = traced(t.dir, ['create', '--recovery', '5%', raw, img])
    assert.equal(r.code, 0, r.stderr)
    assertDurable(r, img)
    r = traced(t.dir, ['create', '--force', raw, img])
    assert.equal(r.code, 0, r.stderr)
    assertDurable(r, img)
  })

  it('extract FILE and its --mapfile-out', () => {
    const img = path.join(t.dir, 'c.vdimg')
    if (!fs.existsSync(img)) assert.equal(spawnSync(process.execPath, [BIN, 'create', raw, img]).status, 0)
    const out = path.join(t.dir, 'x.raw')
    const map = path.join(t.dir, 'x.map')
    const r = traced(t.dir, ['extract', '--force', '--mapfile-out', map, img, out])
    assert.equal(r.code, 0, r.stderr)
    assertDurable(r, out)
    assertDurable(r, map)
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(raw)), 'extracted bytes')
  })

  it('repair --out: an intact image copied, a damaged one repaired', () => {
    const img = path.join(t.dir, 'r.vdimg')
    assert.equal(spawnSync(process.execPath, [BIN, 'create', '--force', '--recovery', '5%', raw, img]).status, 0)
    const copy = path.join(t.dir, 'copy.vdimg')
    let r = traced(t.dir, ['repair', img, '--out', copy])
    assert.equal(r.code, 0, r.stderr)
    assertDurable(r, copy)
    assert.ok(fs.readFileSync(copy).equals(fs.readFileSync(img)), 'the copy is the image')
    // One byte of the stored data changed: the recovery data repairs it.
    const fd = fs.openSync(img, 'r+')
    try {
      const b = Buffer.alloc(1)
      fs.readSync(fd, b, 0, 1, 1 << 20)
      b[0] ^= 0xff
      fs.writeSync(fd, b, 0, 1, 1 << 20)
    } finally {
      fs.closeSync(fd)
    }
    const fixed = path.join(t.dir, 'fixed.vdimg')
    r = traced(t.dir, ['repair', img, '--out', fixed])
    assert.equal(r.code, 0, r.stderr)
    assertDurable(r, fixed)
    assert.equal(spawnSync(process.execPath, [BIN, 'verify', fixed]).status, 0, 'the repaired image verifies')
  })
})

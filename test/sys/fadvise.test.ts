/**
 * src/sys/fadvise.ts: a file read from start to end is asked for ahead of the reads, so its pages are in
 * the page cache before they are read (checked with fincore(1), util-linux, on a real file evicted first);
 * a file written from start to end has its writeback started every 16 MiB.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {sequentialAdvice, writebackBehind} from '../../src/sys/fadvise'
import * as libc from '../../src/sys/libc'
import {tmpDir} from '../helpers'

const MiB = 1 << 20

/** Bytes of `file` in the page cache. */
function resident(file: string): number {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], {encoding: 'utf8'})
  assert.equal(r.status, 0, r.stderr)
  return Number(r.stdout.trim())
}

/** Resident bytes once they stop growing (WILLNEED only starts the reads). */
async function settled(file: string): Promise<number> {
  let last = -1
  for (let i = 0; i < 100; i++) {
    const now = resident(file)
    if (now === last) return now
    last = now
    await new Promise((r) => setTimeout(r, 50))
  }
  return last
}

describe('sys/fadvise: sequential advice reads a file ahead', function () {
  this.timeout(60_000)
  let t: ReturnType<typeof tmpDir>
  let file: string
  let fd = -1
  before(function () {
    if (process.platform !== 'linux') this.skip()
    t = tmpDir()
    file = path.join(t.dir, 'input.bin')
    fs.writeFileSync(file, crypto.randomBytes(112 * MiB))
    fd = fs.openSync(file, 'r')
    fs.fsyncSync(fd)
    libc.fadvise(fd, 0, 0, libc.POSIX_FADV_DONTNEED)
    // tmpfs (and a few others) keep their pages whatever we advise: nothing to measure there.
    if (resident(file) > 4 * MiB) this.skip()
  })
  after(() => {
    if (fd >= 0) fs.closeSync(fd)
    t?.cleanup()
  })

  it('asks for 64 MiB past each read, not more', async () => {
    const ahead = sequentialAdvice(fd, 112 * MiB)
    ahead(0, 4 * MiB)
    const first = await settled(file)
    assert.ok(first >= 64 * MiB, `${first} bytes resident after advising [0, 68 MiB)`)
    assert.ok(first <= 80 * MiB, `${first} bytes resident: more than asked for`)
    // Further reads inside the advised range ask only for what lies past it, up to the end of the file.
    ahead(4 * MiB, 4 * MiB)
    ahead(40 * MiB, 4 * MiB)
    const all = await settled(file)
    assert.ok(all >= 100 * MiB, `${all} bytes resident after advising the whole file`)
  })

  it('starts where a read lands past the advised range (skipped bytes are not fetched)', async () => {
    libc.fadvise(fd, 0, 0, libc.POSIX_FADV_DONTNEED)
    assert.ok(resident(file) < 4 * MiB)
    const ahead = sequentialAdvice(fd, 112 * MiB)
    ahead(80 * MiB, 4 * MiB)
    const got = await settled(file)
    assert.ok(got >= 30 * MiB && got <= 36 * MiB, `${got} bytes resident after advising [80, 112 MiB)`)
  })
})

describe('sys/fadvise: writeback behind a file written from start to end', function () {
  let t: ReturnType<typeof tmpDir>
  before(function () {
    if (process.platform !== 'linux') this.skip()
    t = tmpDir()
  })
  after(() => t?.cleanup())

  it('starts writeback every 16 MiB written, and gives up on what is not a file', () => {
    const file = path.join(t.dir, 'out.bin')
    const fd = fs.openSync(file, 'w')
    try {
      const chunk = crypto.randomBytes(4 * MiB)
      const behind = writebackBehind(fd)
      const started: boolean[] = []
      for (let at = 0; at < 40 * MiB; at += chunk.length) {
        fs.writeSync(fd, chunk, 0, chunk.length, at)
        started.push(behind(at + chunk.length))
      }
      // 4 MiB writes: at 16 and 32 MiB (sync_file_range returned 0 on the real file).
      assert.deepEqual(started.map((s, i) => (s ? (i + 1) * 4 : 0)).filter(Boolean), [16, 32])
    } finally {
      fs.closeSync(fd)
    }
    assert.equal(fs.statSync(file).size, 40 * MiB)
    const [r, w] = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM)
    try {
      const onSocket = writebackBehind(w)
      assert.equal(onSocket(32 * MiB), false) // ESPIPE
      assert.equal(onSocket(64 * MiB), false) // and no more tries
    } finally {
      libc.close(r)
      libc.close(w)
    }
  })
})

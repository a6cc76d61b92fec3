/**
 * src/sys/fadvise.ts: a file read from start to end is asked for ahead of the reads, so its pages are in
 * the page cache before they are read. Checked with fincore(1) (util-linux) on a real file evicted first.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {sequentialAdvice} from '../../src/sys/fadvise'
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
    assert.equal(await settled(file), 112 * MiB)
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

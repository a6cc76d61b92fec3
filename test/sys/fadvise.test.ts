/**
 * src/sys/fadvise.ts: a file read from start to end is asked for ahead of the reads, so its pages are in
 * the page cache before they are read (checked with fincore(1), util-linux, on a real file evicted first),
 * and the page cache is left as it was found: pages that were not resident are dropped once read, pages
 * that were stay — through the advice itself, `create`'s input and `extract`'s image; a file written from
 * start to end has its writeback started every 16 MiB.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {sequentialAdvice, writebackBehind} from '../../src/sys/fadvise'
import * as libc from '../../src/sys/libc'
import {runCli, textish, tmpDir} from '../helpers'

const MiB = 1 << 20

/** Bytes of `file` in the page cache. */
function resident(file: string): number {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], {encoding: 'utf8'})
  assert.equal(r.status, 0, r.stderr)
  return Number(r.stdout.trim())
}

/**
 * How much the kernel has evicted so far, by the two ways it does without being asked: reclaim's
 * `pgsteal_file` (or kswapd + direct on older kernels) in /proc/vmstat, and the bytes DAMON's `pageout`
 * schemes have been applied to (this machine runs one: it evicts page-cache pages it finds cold without
 * counting them in /proc/vmstat — 11 GB in its first 90 minutes here, with `workingset_refault_file` rising).
 */
function evictions(): {pages: number; damonBytes: number} {
  const stat = fs.readFileSync('/proc/vmstat', 'utf8')
  const get = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(stat)?.[1] ?? 0)
  return {pages: get('pgsteal_file') || get('pgsteal_kswapd') + get('pgsteal_direct'), damonBytes: damonPagedOut()}
}

/** Bytes DAMON's `pageout` schemes have applied to, over every kdamond (0 where there is none, or we may not ask). */
function damonPagedOut(): number {
  const root = '/sys/kernel/mm/damon/admin/kdamonds'
  let total = 0
  try {
    for (const k of fs.readdirSync(root).filter((n) => /^\d+$/.test(n))) {
      const kd = path.join(root, k)
      if (fs.readFileSync(path.join(kd, 'state'), 'utf8').trim() !== 'on') continue
      fs.writeFileSync(path.join(kd, 'state'), 'update_schemes_stats')
      const contexts = path.join(kd, 'contexts')
      for (const c of fs.readdirSync(contexts).filter((n) => /^\d+$/.test(n))) {
        const schemes = path.join(contexts, c, 'schemes')
        for (const sc of fs.readdirSync(schemes).filter((n) => /^\d+$/.test(n))) {
          if (fs.readFileSync(path.join(schemes, sc, 'action'), 'utf8').trim() !== 'pageout') continue
          total += Number(fs.readFileSync(path.join(schemes, sc, 'stats', 'sz_applied'), 'utf8'))
        }
      }
    }
  } catch {
    // no DAMON, or not root: only /proc/vmstat's count
  }
  return total
}

/**
 * Run `attempt` (which asserts that pages were kept) up to three times: a shortfall is retried only when
 * the kernel evicted something by itself meanwhile (CI lost 9 pages of 24 576 once here, with 23 GiB
 * free: DAMON's pageout) — with no eviction, the first failure stands.
 */
async function unlessReclaimed(attempt: () => Promise<void>): Promise<void> {
  for (let i = 1; ; i++) {
    const before = evictions()
    try {
      await attempt()
      return
    } catch (e) {
      const after = evictions()
      const pages = after.pages - before.pages
      const damon = after.damonBytes - before.damonBytes
      if (i === 3 || (pages === 0 && damon === 0)) {
        // A plain Error: mocha leaves out the message of an assertion it shows a diff for.
        throw new Error(`${e instanceof Error ? e.message : String(e)} (attempt ${i}; meanwhile reclaim took ${pages} pages, DAMON paged out ${damon} bytes)`)
      }
    }
  }
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
    ahead.ahead(0, 4 * MiB)
    const first = await settled(file)
    assert.ok(first >= 64 * MiB, `${first} bytes resident after advising [0, 68 MiB)`)
    assert.ok(first <= 80 * MiB, `${first} bytes resident: more than asked for`)
    // Further reads inside the advised range ask only for what lies past it, up to the end of the file.
    ahead.ahead(4 * MiB, 4 * MiB)
    ahead.ahead(40 * MiB, 4 * MiB)
    const all = await settled(file)
    assert.ok(all >= 100 * MiB, `${all} bytes resident after advising the whole file`)
  })

  it('starts where a read lands past the advised range (skipped bytes are not fetched)', async () => {
    libc.fadvise(fd, 0, 0, libc.POSIX_FADV_DONTNEED)
    assert.ok(resident(file) < 4 * MiB)
    const ahead = sequentialAdvice(fd, 112 * MiB)
    ahead.ahead(80 * MiB, 4 * MiB)
    const got = await settled(file)
    assert.ok(got >= 30 * MiB && got <= 36 * MiB, `${got} bytes resident after advising [80, 112 MiB)`)
  })
})

/** Read all of `fd` (`size` bytes) in `step`-byte reads through the advice, `inFlight` at a time, done in order. */
function readThrough(fd: number, size: number, step = 4 * MiB): void {
  const advice = sequentialAdvice(fd, size)
  const buf = Buffer.allocUnsafe(step)
  for (let at = 0; at < size; at += step) {
    advice.ahead(at, step)
    fs.readSync(fd, buf, 0, step, at)
    advice.done(at, step)
  }
  advice.close()
}

describe('sys/fadvise: the page cache is left as it was found', function () {
  this.timeout(60_000)
  let t: ReturnType<typeof tmpDir>
  let file: string
  let fd = -1
  const SIZE = 96 * MiB
  before(function () {
    if (process.platform !== 'linux') this.skip()
    t = tmpDir()
    file = path.join(t.dir, 'input.bin')
    fs.writeFileSync(file, crypto.randomBytes(SIZE))
    fd = fs.openSync(file, 'r')
    fs.fsyncSync(fd)
    libc.fadvise(fd, 0, 0, libc.POSIX_FADV_DONTNEED)
    if (resident(file) > 4 * MiB) this.skip() // tmpfs and the like keep their pages
  })
  after(() => {
    if (fd >= 0) fs.closeSync(fd)
    t?.cleanup()
  })
  const evict = () => {
    libc.fadvise(fd, 0, 0, libc.POSIX_FADV_DONTNEED)
    assert.ok(resident(file) < MiB, 'evicted')
  }

  it('a file not in the page cache leaves nothing there once read through', async () => {
    evict()
    readThrough(fd, SIZE)
    const left = await settled(file)
    assert.ok(left < MiB, `${left} bytes left resident`)
  })

  it('a file in the page cache stays there', () =>
    unlessReclaimed(async () => {
      evict()
      fs.readFileSync(file)
      assert.equal(resident(file), SIZE)
      readThrough(fd, SIZE)
      assert.equal(await settled(file), SIZE)
    }))

  it('only the pages that were not resident are dropped (a cached middle stays)', () =>
    unlessReclaimed(async () => {
      evict()
      // 20–36 MiB cached (not on a step boundary), the rest not.
      const buf = Buffer.allocUnsafe(16 * MiB)
      fs.readSync(fd, buf, 0, buf.length, 20 * MiB)
      const before = libc.residentPages(fd, 0, SIZE)!
      readThrough(fd, SIZE)
      await settled(file)
      const after = libc.residentPages(fd, 0, SIZE)!
      const page = libc.pageSize()
      for (let i = 0; i < after.length; i++) {
        const at = i * page
        const wasCached = at >= 20 * MiB && at < 36 * MiB
        if (wasCached) assert.equal(after[i] & 1, 1, `page at ${at} was resident before and is not now`)
        else assert.equal(after[i] & 1, 0, `page at ${at} was not resident before (${before[i] & 1}) and is now`)
      }
    }))

  it('a step is not dropped while a read before its end is still under way', () =>
    unlessReclaimed(async () => {
      evict()
      const advice = sequentialAdvice(fd, SIZE)
      const buf = Buffer.allocUnsafe(8 * MiB)
      advice.ahead(0, 8 * MiB)
      advice.ahead(8 * MiB, 8 * MiB)
      fs.readSync(fd, buf, 0, buf.length, 8 * MiB)
      advice.done(8 * MiB, 8 * MiB) // the later read first
      fs.readSync(fd, buf, 0, buf.length, 0)
      const page = libc.pageSize()
      const first = libc.residentPages(fd, 0, 16 * MiB)!
      assert.equal(first.reduce((n, r) => n + (r & 1), 0), (16 * MiB) / page, 'both steps kept while the first read is under way')
      advice.done(0, 8 * MiB)
      const now = libc.residentPages(fd, 0, 16 * MiB)!
      assert.equal(now.reduce((n, r) => n + (r & 1), 0), 0, 'both dropped once it is done')
      await settled(file) // the reads WILLNEED started (a page still being read in is not dropped)
      advice.close()
      assert.ok((await settled(file)) < MiB, 'and the steps asked for ahead, at close')
    }))

  it('VDEV_DROP_BEHIND=0 keeps every page', () =>
    unlessReclaimed(async () => {
      evict()
      process.env.VDEV_DROP_BEHIND = '0'
      try {
        readThrough(fd, SIZE)
      } finally {
        delete process.env.VDEV_DROP_BEHIND
      }
      assert.equal(await settled(file), SIZE)
    }))

  it('vdev create leaves its cold input out of the page cache and its warm input in it; extract likewise its image', () =>
    unlessReclaimed(async () => {
      const raw = path.join(t.dir, 'disk.raw')
      fs.writeFileSync(raw, textish(7, 48 * MiB))
      const img = path.join(t.dir, 'disk.vdimg')
      const drop = (f: string) => {
        const d = fs.openSync(f, 'r')
        try {
          fs.fsyncSync(d)
          libc.fadvise(d, 0, 0, libc.POSIX_FADV_DONTNEED)
        } finally {
          fs.closeSync(d)
        }
        assert.ok(resident(f) < MiB, `${f} evicted`)
      }
      drop(raw)
      let r = await runCli(['create', '--force', raw, img])
      assert.equal(r.code, 0, r.stderr)
      assert.ok((await settled(raw)) < MiB, `cold input: ${resident(raw)} bytes left resident`)
      fs.readFileSync(raw)
      r = await runCli(['create', '--force', raw, img])
      assert.equal(r.code, 0, r.stderr)
      assert.equal(await settled(raw), 48 * MiB, 'warm input stays resident')
      drop(img)
      const out = path.join(t.dir, 'out.raw')
      r = await runCli(['extract', '--force', img, out])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(fs.readFileSync(out).equals(fs.readFileSync(raw)), 'extracted bytes')
      assert.ok((await settled(img)) < 64 * 1024, `cold image: ${resident(img)} bytes left resident`)
    }))
})

describe('sys/fadvise: writeback behind a file written from start to end', function () {
  let t: ReturnType<typeof tmpDir>
  before(function () {
    if (process.platform !== 'linux') this.skip()
    t = tmpDir()
  })
  after(() => t?.cleanup())

  it('starts writeback every 16 MiB written, and gives up on what is not a file', async () => {
    const file = path.join(t.dir, 'out.bin')
    const fd = fs.openSync(file, 'w')
    try {
      const chunk = crypto.randomBytes(4 * MiB)
      const wb = writebackBehind(fd)
      const started: boolean[] = []
      for (let at = 0; at < 40 * MiB; at += chunk.length) {
        fs.writeSync(fd, chunk, 0, chunk.length, at)
        started.push(wb.behind(at + chunk.length))
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
      assert.equal(onSocket.behind(32 * MiB), false) // ESPIPE
      assert.equal(onSocket.behind(64 * MiB), false) // and no more tries
      await onSocket.settle() // no flush was started: nothing to wait for
    } finally {
      libc.close(r)
      libc.close(w)
    }
  })

  it('flushes the disk\'s cache in the background every 64 MiB written (the block device\'s flush count)', async function () {
    const file = path.join(t.dir, 'flushed.bin')
    const flushes = deviceFlushes(t.dir)
    if (flushes === undefined) this.skip() // no block device under the directory, or a kernel without flush counts
    const fd = fs.openSync(file, 'w')
    try {
      const chunk = crypto.randomBytes(4 * MiB)
      const wb = writebackBehind(fd)
      // The first 60 MiB: writeback started, no flush yet.
      for (let at = 0; at < 60 * MiB; at += chunk.length) {
        fs.writeSync(fd, chunk, 0, chunk.length, at)
        wb.behind(at + chunk.length)
      }
      await wb.settle()
      const before = deviceFlushes(t.dir)!
      for (let at = 60 * MiB; at < 72 * MiB; at += chunk.length) {
        fs.writeSync(fd, chunk, 0, chunk.length, at)
        wb.behind(at + chunk.length)
      }
      await wb.settle() // the fdatasync started at 64 MiB has ended
      const after = deviceFlushes(t.dir)!
      assert.ok(after > before, `flushes of the device: ${before} before the 64 MiB mark, ${after} after settle()`)
    } finally {
      fs.closeSync(fd)
    }
  })
})

/**
 * How many cache flushes the block device holding `dir` has completed (/sys/dev/block/MAJ:MIN/stat, its
 * 16th field; kernels since 5.5), or undefined where there is no such device (tmpfs, overlay).
 */
function deviceFlushes(dir: string): number | undefined {
  const dev = fs.statSync(dir).dev
  // Linux's new_encode_dev layout, as Node gives st_dev.
  const major = Number((BigInt(dev) >> 8n) & 0xfffn)
  const minor = Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & 0xfff00n))
  try {
    const fields = fs.readFileSync(`/sys/dev/block/${major}:${minor}/stat`, 'utf8').trim().split(/\s+/).map(Number)
    return fields.length >= 16 ? fields[15] : undefined
  } catch {
    return undefined
  }
}

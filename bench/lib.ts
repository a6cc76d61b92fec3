/**
 * Benchmark plumbing: run a real command (argv, no shell) under /usr/bin/time, optionally piping its
 * stdout into a second command, and print tables of ratios. Nothing here asserts: benchmarks print.
 */
import {execFileSync, spawn, spawnSync} from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'

/** The compiled writer (and its defaults, layout.js): a cached .vdimg made by a different writer is rebuilt (tsc rewrites every file
 * on each build, so this compares contents, kept in a `.writer` file beside the image, not times). */
const WRITER = ['writer.js', 'codec.js', 'codec-worker.js', 'layout.js'].map((f) => path.join(__dirname, '..', 'src', 'format', f))

function writerHash(): string {
  const h = crypto.createHash('sha256')
  for (const f of WRITER) h.update(fs.readFileSync(f))
  return h.digest('hex')
}

/** True when `out` is missing or older than any of `inputs`. */
export function stale(out: string, ...inputs: string[]): boolean {
  let t: number
  try {
    t = fs.statSync(out).mtimeMs
  } catch {
    return true
  }
  return inputs.some((i) => fs.statSync(i).mtimeMs > t)
}

/** stale() for a .vdimg: also when it was not made by the writer compiled now. */
export function staleImage(out: string, ...inputs: string[]): boolean {
  let made = ''
  try {
    made = fs.readFileSync(`${out}.writer`, 'utf8')
  } catch {
    /* unknown writer */
  }
  return made !== writerHash() || stale(out, ...inputs)
}

/** Record that `out` was just made by the writer compiled now (see staleImage). */
export function markImage(out: string): void {
  fs.writeFileSync(`${out}.writer`, writerHash())
}

export interface Run {
  seconds: number
  /** Peak resident set size of the (first) command, in KiB. */
  maxRssKiB: number
  /** User + system CPU seconds of the (first) command, all its threads: on a shared machine, less noisy than wall time. */
  cpuSeconds: number
}

/**
 * Run argv under /usr/bin/time, return wall seconds and peak RSS; throws on a non-zero exit. With
 * `pipeTo`, its stdout goes through a real pipe, as a shell makes one (Node's own 'pipe' would be a
 * socketpair), to a reader: `pipeTo(fifo)` is the reader's argv, reading the named pipe `fifo`.
 */
export function timed(argv: string[], opts: {pipeTo?: (fifo: string) => string[]; stdoutFile?: string; env?: NodeJS.ProcessEnv; cwd?: string} = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const rssFile = `/tmp/vdev-bench-rss-${process.pid}-${Math.random().toString(36).slice(2)}`
    const waits: Array<Promise<number>> = []
    let outFd: number | 'ignore' = 'ignore'
    let fifoDir: string | undefined
    const t0 = process.hrtime.bigint()
    if (opts.pipeTo) {
      fifoDir = fs.mkdtempSync('/tmp/vdev-bench-fifo-')
      const fifo = `${fifoDir}/pipe`
      execFileSync('mkfifo', [fifo])
      const reader = opts.pipeTo(fifo)
      const second = spawn(reader[0], reader.slice(1), {stdio: ['ignore', 'ignore', 'inherit']})
      waits.push(new Promise((r) => second.on('exit', (c) => r(c ?? -1))))
      outFd = fs.openSync(fifo, 'w') // returns once the reader has opened its end
    } else if (opts.stdoutFile) outFd = fs.openSync(opts.stdoutFile, 'w')
    const first = spawn('/usr/bin/time', ['-f', '%U %S %M', '-o', rssFile, ...argv], {
      stdio: ['ignore', outFd, 'pipe'],
      env: {...process.env, ...opts.env},
      cwd: opts.cwd,
    })
    if (typeof outFd === 'number') fs.closeSync(outFd) // the child holds its own copy
    let err = ''
    first.stderr!.on('data', (b) => (err += b))
    waits.push(new Promise((r) => first.on('exit', (c) => r(c ?? -1))))
    Promise.all(waits).then((codes) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9
      if (fifoDir) fs.rmSync(fifoDir, {recursive: true, force: true})
      let maxRssKiB = 0
      let cpuSeconds = 0
      try {
        const [user, sys, rss] = fs.readFileSync(rssFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number)
        maxRssKiB = rss
        cpuSeconds = user + sys
        fs.rmSync(rssFile)
      } catch {
        /* time did not write it */
      }
      if (codes.some((c) => c !== 0)) reject(new Error(`${argv.join(' ')} failed (${codes}): ${err.slice(-2000)}`))
      else resolve({seconds, maxRssKiB, cpuSeconds})
    }, reject)
  })
}

/** Best (lowest time) of n runs. */
export async function best(n: number, f: () => Promise<Run>): Promise<Run> {
  let b: Run | undefined
  for (let i = 0; i < n; i++) {
    const r = await f()
    if (!b || r.seconds < b.seconds) b = r
  }
  return b!
}

export function table(headers: string[], rows: Array<Array<string | number>>): string {
  const cells = [headers, ...rows.map((r) => r.map(String))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  const line = (r: string[]) => '| ' + r.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |'
  return [line(cells[0]), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...cells.slice(1).map(line)].join('\n')
}

export const MiB = 1024 * 1024
export const fmt = (n: number, d = 2) => n.toFixed(d)
export const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`

/** Drop the page cache (root): cold-cache measurements. */
export function dropCaches(): void {
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
  } catch {
    /* not root or not permitted: measurements are warm */
  }
}

/**
 * Take one file out of the page cache (posix_fadvise DONTNEED; its pages are clean, so the kernel drops
 * them): a cold-input measurement that leaves the rest of the machine's cache — other people's work on a
 * shared machine — alone. Returns false where it cannot (not Linux, no libc).
 */
export function evict(file: string): boolean {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../src/sys/libc') as typeof import('../src/sys/libc')
    const fd = fs.openSync(file, 'r')
    try {
      return libc.fadvise(fd, 0, 0, libc.POSIX_FADV_DONTNEED) === 0
    } finally {
      fs.closeSync(fd)
    }
  } catch {
    return false
  }
}

/** The machine's load averages (1, 5, 15 minutes) as `uptime` prints them: benchmarks say what they shared the cores with. */
export function loadAverage(): string {
  try {
    return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(', ')
  } catch {
    return 'unknown'
  }
}

/**
 * Read a whole file so that it is in the page cache. Do it right before each measurement: this
 * machine's kernel (DAMON) reclaims cold page cache within seconds, so one warm-up at the start of a
 * benchmark leaves later runs reading from disk.
 */
export function warm(file: string): void {
  const fd = fs.openSync(file, 'r')
  const buf = Buffer.allocUnsafe(MiB)
  try {
    while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Run this benchmark again inside a new network namespace whose loopback is capped at `mbit` Mbit/s (a tbf
 * qdisc; root); the run inside sees BENCH_LINK_INSIDE=mbit.
 */
export function runCapped(mbit: number): never {
  const setup = `ip link set lo up && tc qdisc add dev lo root tbf rate ${mbit}mbit burst ${Math.max(64, Math.round(mbit / 8))}kb latency 50ms`
  const r = spawnSync('unshare', ['-n', 'sh', '-c', `${setup} && exec "$0" "$@"`, process.execPath, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: {...process.env, BENCH_LINK_INSIDE: String(mbit)},
  })
  process.exit(r.status ?? 1)
}

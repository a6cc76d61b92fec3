/**
 * NBD servers the benchmarks start on Unix sockets and stop again: `vdev serve`, nbdkit (file plugin,
 * optionally with filters) and qemu-nbd, plus the CPU time of a server process. Shared by bench:serve and
 * bench:write.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn, type ChildProcess} from 'node:child_process'
import {createInterface} from 'node:readline'

const VDEV = path.resolve(__dirname, '..', '..', 'bin', 'run.js')
const PYTHON = '/usr/bin/python3'

/** Random 4 KiB reads through libnbd; prints {seconds, reads}. Same seed, same offsets for every server. */
const RANDOM_PY = String.raw`
import json, random, sys, time, nbd
uri, n, qd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
blocks = h.get_size() // 4096
rnd = random.Random(20260101)
offs = [rnd.randrange(blocks) * 4096 for _ in range(n)]
t0 = time.perf_counter()
if qd == 1:
    for o in offs:
        h.pread(4096, o)
else:
    bufs = [nbd.Buffer(4096) for _ in range(qd)]
    free = list(range(qd))
    errors = []
    def done(idx, err):
        if err.value if hasattr(err, 'value') else err:
            errors.append(err)
        free.append(idx)
        return 1
    i = 0
    while i < n or h.aio_in_flight() > 0:
        while free and i < n:
            k = free.pop()
            h.aio_pread(bufs[k], offs[i], completion=lambda err, k=k: done(k, err))
            i += 1
        h.poll(-1)
    if errors:
        raise SystemExit('read errors: %d' % len(errors))
print(json.dumps({'seconds': time.perf_counter() - t0, 'reads': n}))
`


export interface Server {
  name: string
  uri: string
  child: ChildProcess
  /** The file it serves (warmed into the page cache before each measurement). */
  file: string
}

/** CPU seconds (user + system, all threads) a process has used so far. */
export function cpuSeconds(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ')
  // proc(5): utime and stime are fields 14 and 15; `fields` starts at field 3.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
}
const CLOCK_TICKS = 100 // sysconf(_SC_CLK_TCK) on Linux

/** A socket file left by an earlier run would look ready before the new server listens. */
export function freshSocket(sock: string): string {
  fs.rmSync(sock, {force: true})
  return sock
}

export function waitForSocket(sock: string, child: ChildProcess, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now()
    const tick = () => {
      if (fs.existsSync(sock)) return resolve()
      if (child.exitCode !== null) return reject(new Error(`${what} exited (${child.exitCode})`))
      if (Date.now() - t0 > 30_000) return reject(new Error(`${what} did not create ${sock}`))
      setTimeout(tick, 50)
    }
    tick()
  })
}

/** `vdev serve IMAGE --listen unix:SOCK --json EXTRA…`, ready once it printed its ready line. */
export async function startVdev(image: string, sock: string, name: string, extra: string[] = []): Promise<Server> {
  const child = spawn(process.execPath, [VDEV, 'serve', image, '--listen', `unix:${sock}`, '--json', ...extra], {stdio: ['ignore', 'pipe', 'inherit']})
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({input: child.stdout!}).once('line', resolve)
    child.once('exit', (c) => reject(new Error(`vdev serve exited (${c})`)))
  })
  const ready = JSON.parse(line) as {export: string}
  return {name, uri: `nbd+unix:///${ready.export}?socket=${sock}`, child, file: image}
}

/** nbdkit's file plugin on RAW: read-only by default, or writable through `filters` (e.g. ['cow']). */
export async function startNbdkit(raw: string, sock: string, opts: {filters?: string[]; name?: string} = {}): Promise<Server> {
  const filters = (opts.filters ?? []).map((f) => `--filter=${f}`)
  const ro = opts.filters?.length ? [] : ['-r']
  const child = spawn('nbdkit', ['-f', ...ro, '-U', sock, ...filters, 'file', raw], {stdio: ['ignore', 'ignore', 'inherit']})
  await waitForSocket(sock, child, 'nbdkit')
  return {name: opts.name ?? 'nbdkit file (raw)', uri: `nbd+unix:///?socket=${sock}`, child, file: raw}
}

/** qemu-nbd on a qcow2 file: read-only by default, or writable (an overlay whose backing file is the image). */
export async function startQemuNbd(qcow2: string, sock: string, opts: {writable?: boolean; name?: string} = {}): Promise<Server> {
  const ro = opts.writable ? [] : ['--read-only']
  const child = spawn('qemu-nbd', [...ro, '--persistent', '--shared=16', '--format=qcow2', `--socket=${sock}`, qcow2], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  await waitForSocket(sock, child, 'qemu-nbd')
  return {name: opts.name ?? 'qemu-nbd (qcow2, zstd)', uri: `nbd+unix:///?socket=${sock}`, child, file: qcow2}
}

export function stop(s: Server | undefined): Promise<void> {
  // A server that died of a signal has exitCode null but will never emit 'exit' again.
  if (!s || s.child.exitCode !== null || s.child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    s.child.once('exit', () => resolve())
    s.child.kill('SIGTERM')
    setTimeout(() => s.child.kill('SIGKILL'), 5000).unref()
  })
}

/** Random 4 KiB reads per second through python3-libnbd at queue depth `qd` (the same offsets for every server). */
export async function randomReadRate(uri: string, n: number, qd: number): Promise<number> {
  const r = await new Promise<string>((resolve, reject) => {
    const child = spawn(PYTHON, ['-c', RANDOM_PY, uri, String(n), String(qd)], {stdio: ['ignore', 'pipe', 'pipe']})
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('exit', (c) => (c === 0 ? resolve(out) : reject(new Error(`random reads on ${uri} failed: ${err}`))))
  })
  const {seconds, reads} = JSON.parse(r) as {seconds: number; reads: number}
  return reads / seconds
}

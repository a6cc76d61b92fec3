/**
 * npm run bench:remote — images read over HTTP (docs/remote.md), in one run, from one nginx on 127.0.0.1
 * (test/remote/nginx.ts) serving the benchmark corpus three ways:
 *   - `vdev serve URL` of the VDIMG image (cold: no cache, a fresh server per measurement),
 *   - nbdkit's curl plugin on the raw image (what you would use without vdev),
 *   - qemu-nbd with qemu's curl (http) driver on a qcow2 (zstd) copy,
 * each read through NBD on a Unix socket: the whole device sequentially (`nbdcopy --no-extents` to null:)
 * and random 4 KiB reads at QD1 and QD32 (python3-libnbd, the same offsets for every server), with the
 * bytes nginx sent beside each time (from its access log). Then a warm re-read: `vdev serve URL --cache
 * DIR` read whole twice (the second from the cache) against `vdev serve` of the local file.
 * With Ceph installed (test/remote/rgw.ts; BENCH_S3=0 skips it), the same image from a RADOS Gateway:
 * `vdev serve s3://` (SigV4 on every GET), and the CPU cost of signing one request (bench/sigv4.ts).
 * Targets (issue 13): sequential ≤ 0.5× nbdkit-curl's time (vdev moves compressed bytes); random QD1 at
 * least nbdkit-curl's rate; a warm-cache re-read as fast as a local image.
 * BENCH_LINK_MBIT=N (root): the whole run in a network namespace of its own whose loopback is capped at N
 * Mbit/s (a tbf qdisc: `unshare -n`, then `tc`), so moving fewer bytes shows as it would on a real link;
 * the machine's own loopback is left alone.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {spawn, type ChildProcess} from 'node:child_process'
import {ensureCorpus, CACHE} from './corpus'
import {fmt, markImage, MiB, runCapped, staleImage, table, timed} from './lib'
import {freshSocket, randomReadRate as randomRate, startVdev, stop, waitForSocket, type Server} from './nbd-servers'
import {Nginx} from '../test/remote/nginx'
import {HAVE_RGW, Rgw} from '../test/remote/rgw'
import {signingCost} from './sigv4'

const VDEV = path.resolve(__dirname, '..', '..', 'bin', 'run.js')
const OUT = path.join(CACHE, 'remote')
/** Most seconds one measurement may take. */
const LIMIT_S = Number(process.env.BENCH_LIMIT_S ?? 300)

async function startNbdkitCurl(url: string, sock: string): Promise<Server> {
  const child = spawn('nbdkit', ['-f', '-r', '-U', sock, 'curl', `url=${url}`], {stdio: ['ignore', 'ignore', 'inherit']})
  await waitForSocket(sock, child, 'nbdkit curl')
  return {name: 'nbdkit curl (raw)', uri: `nbd+unix:///?socket=${sock}`, child, file: ''}
}

async function startQemuCurl(url: string, sock: string): Promise<Server> {
  const child = spawn('qemu-nbd', ['--read-only', '--persistent', '--shared=16', `--socket=${sock}`, '--image-opts', `driver=qcow2,file.driver=http,file.url=${url}`], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  await waitForSocket(sock, child, 'qemu-nbd (curl)')
  return {name: 'qemu-nbd curl (qcow2, zstd)', uri: `nbd+unix:///?socket=${sock}`, child, file: ''}
}

/** Bytes nginx sent for `name` since log line `mark`. */
function sent(nginx: Nginx, name: string, mark: number): number {
  return nginx
    .accessLog()
    .slice(mark)
    .filter((l) => l.includes(`"GET /${name} `) || l.includes(`"HEAD /${name} `))
    .reduce((n, l) => n + Number(l.split('" ')[1].split(' ')[1] || 0), 0)
}

interface Row {
  name: string
  seq: number
  seqBytes: number
  qd1: number
  qd1Bytes: number
  qd32: number
  qd32Bytes: number
}

async function main(): Promise<void> {
  const mbit = Number(process.env.BENCH_LINK_MBIT ?? 0)
  if (mbit > 0 && !process.env.BENCH_LINK_INSIDE) runCapped(mbit)
  const {raw} = await ensureCorpus()
  const size = fs.statSync(raw).size
  fs.mkdirSync(OUT, {recursive: true})
  // bench:serve makes the same two files from the same corpus: use them when they are current.
  const shared = path.join(CACHE, 'serve')
  const vdimg = staleImage(path.join(shared, 'corpus.vdimg'), raw) ? path.join(OUT, 'corpus.vdimg') : path.join(shared, 'corpus.vdimg')
  const qcow2 = fs.existsSync(path.join(shared, 'corpus.qcow2')) ? path.join(shared, 'corpus.qcow2') : path.join(OUT, 'corpus.qcow2')
  if (staleImage(vdimg, raw)) await timed([process.execPath, VDEV, 'create', '--force', raw, vdimg]).then(() => markImage(vdimg))
  if (!fs.existsSync(qcow2)) await timed(['qemu-img', 'convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, qcow2])
  const nQd1 = Number(process.env.BENCH_RANDOM_QD1 ?? 2000)
  const nQd32 = Number(process.env.BENCH_RANDOM_QD32 ?? 10000)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-bench-remote-'))
  const nginx = await Nginx.create(path.join(dir, 'nginx'))
  for (const [name, file] of [['corpus.vdimg', vdimg], ['corpus.raw', raw], ['corpus.qcow2', qcow2]]) fs.symlinkSync(file, path.join(nginx.www, name))
  await nginx.start()
  // S3: the same VDIMG image in a Ceph RADOS Gateway (test/remote/rgw.ts), read by `vdev serve s3://`.
  let rgw: Rgw | undefined
  if (HAVE_RGW && process.env.BENCH_S3 !== '0') {
    rgw = await Rgw.start({deviceBytes: Math.max(1 << 30, 2 * fs.statSync(vdimg).size)})
    await rgw.createBucket('bench')
    await rgw.put('bench', 'corpus.vdimg', fs.readFileSync(vdimg))
    Object.assign(process.env, rgw.env())
  }
  const rows: Row[] = []
  const servers: Array<Server | undefined> = []
  // A fresh server for each measurement: every one starts cold (no decoded chunk, no read-ahead, no cache).
  const kinds: Array<{name: string; object: string; start: (sock: string) => Promise<Server>}> = [
    {name: 'vdev serve URL (VDIMG)', object: 'corpus.vdimg', start: (sock) => startVdev(`${nginx.url}/corpus.vdimg`, sock, 'vdev serve URL (VDIMG)', ['--cache', 'none'])},
    {name: 'nbdkit curl (raw)', object: 'corpus.raw', start: (sock) => startNbdkitCurl(`${nginx.url}/corpus.raw`, sock)},
    {name: 'qemu-nbd curl (qcow2, zstd)', object: 'corpus.qcow2', start: (sock) => startQemuCurl(`${nginx.url}/corpus.qcow2`, sock)},
  ]
  if (rgw) kinds.push({name: 'vdev serve s3:// (VDIMG, RGW)', object: '', start: (sock) => startVdev('s3://bench/corpus.vdimg', sock, 'vdev serve s3:// (VDIMG, RGW)', ['--cache', 'none'])})
  try {
    for (const k of kinds) {
      const measure = async <T>(f: (s: Server) => Promise<T>): Promise<{v: T; bytes: number}> => {
        const s = await k.start(freshSocket(path.join(OUT, 'remote.sock')))
        servers.push(s)
        const mark = nginx.accessLog().length
        try {
          const v = await f(s)
          return {v, bytes: k.object ? sent(nginx, k.object, mark) : NaN}
        } finally {
          await stop(s)
        }
      }
      // A client that stalls (qemu's curl driver under nbdcopy's parallel requests did, here) is cut off at
      // LIMIT_S and its row says so, rather than stopping the whole run.
      const limited = <T>(what: string, p: (s: Server) => Promise<T>, fail: T) => async (s: Server): Promise<T> => {
        const timer = setTimeout(() => {
          process.stderr.write(`${k.name}: ${what} did not finish within ${LIMIT_S} s; killing the server\n`)
          s.child.kill('SIGKILL')
        }, LIMIT_S * 1000)
        try {
          return await p(s)
        } catch {
          return fail
        } finally {
          clearTimeout(timer)
        }
      }
      const seq = await measure(limited('sequential', (s) => timed(['nbdcopy', '--no-extents', s.uri, 'null:']).then((r) => r.seconds), NaN))
      const qd1 = await measure(limited('QD1', (s) => randomRate(s.uri, nQd1, 1), NaN))
      const qd32 = await measure(limited('QD32', (s) => randomRate(s.uri, nQd32, 32), NaN))
      rows.push({name: k.name, seq: seq.v, seqBytes: seq.bytes, qd1: qd1.v, qd1Bytes: qd1.bytes, qd32: qd32.v, qd32Bytes: qd32.bytes})
      process.stderr.write(`${k.name}: ${JSON.stringify(rows[rows.length - 1])}\n`)
    }
    // Warm: the same URL through a cache filled by a first whole read, against the local file.
    const cacheDir = path.join(dir, 'cache')
    const warmRun = async (image: string, extra: string[]): Promise<{first: number; second: number; bytes: number}> => {
      const s = await startVdev(image, freshSocket(path.join(OUT, 'warm.sock')), 'warm', extra)
      await stop(s)
      const s1 = await startVdev(image, freshSocket(path.join(OUT, 'warm.sock')), 'warm', extra)
      const first = (await timed(['nbdcopy', '--no-extents', s1.uri, 'null:'])).seconds
      await stop(s1)
      const mark = nginx.accessLog().length
      const s2 = await startVdev(image, freshSocket(path.join(OUT, 'warm.sock')), 'warm', extra)
      const second = (await timed(['nbdcopy', '--no-extents', s2.uri, 'null:'])).seconds
      await stop(s2)
      return {first, second, bytes: sent(nginx, 'corpus.vdimg', mark)}
    }
    const remoteWarm = await warmRun(`${nginx.url}/corpus.vdimg`, ['--cache', cacheDir, '--cache-size', '4G'])
    const local = await warmRun(vdimg, [])

    const curl = rows.find((r) => r.name.startsWith('nbdkit'))!
    const mb = (b: number) => fmt(b / MiB, 1)
    // The gateway logs no bytes sent: the s3:// row fetches the same ranges of the same object as the URL row.
    const sentMb = (b: number) => (isNaN(b) ? '(RGW: n/a)' : mb(b))
    // A row cut off (or a reference cut off) has no ratio.
    const ratio = (a: number, b: number) => (isNaN(a / b) ? '–' : `${fmt(a / b)}x`)
    console.log(`\ncorpus: ${fmt(size / MiB, 0)} MiB ext4 (VDIMG ${mb(fs.statSync(vdimg).size)} MiB, qcow2 ${mb(fs.statSync(qcow2).size)} MiB); ${os.availableParallelism()} cores; nginx on 127.0.0.1 (files from the page cache); NBD on Unix sockets; a fresh server per measurement (cold)`)
    if (process.env.BENCH_LINK_INSIDE) console.log(`link: loopback of a private network namespace capped at ${process.env.BENCH_LINK_INSIDE} Mbit/s (tbf)`)
    console.log(`sequential: nbdcopy --no-extents to null:; random: 4 KiB reads via python3-libnbd, ${nQd1} at QD1, ${nQd32} at QD32; MiB: what nginx sent\n`)
    console.log(
      table(
        ['server', 'seq s', 'vs nbdkit-curl', 'seq MiB sent', 'QD1 IOPS', 'vs nbdkit-curl', 'QD1 MiB sent', 'QD32 IOPS', 'vs nbdkit-curl', 'QD32 MiB sent'],
        rows.map((r) => [
          r.name,
          isNaN(r.seq) ? `> ${LIMIT_S} (cut off)` : fmt(r.seq, 1), ratio(r.seq, curl.seq), sentMb(r.seqBytes),
          isNaN(r.qd1) ? 'cut off' : fmt(r.qd1, 0), ratio(r.qd1, curl.qd1), sentMb(r.qd1Bytes),
          isNaN(r.qd32) ? 'cut off' : fmt(r.qd32, 0), ratio(r.qd32, curl.qd32), sentMb(r.qd32Bytes),
        ]),
      ),
    )
    console.log(
      `\nwarm re-read (whole device): vdev serve URL --cache: first ${fmt(remoteWarm.first, 1)} s, second ${fmt(remoteWarm.second, 1)} s (${mb(remoteWarm.bytes)} MiB fetched); ` +
        `vdev serve of the local file: ${fmt(local.second, 1)} s → ${fmt(remoteWarm.second / local.second)}x the local time`,
    )
    const v = rows[0]
    console.log(`target: sequential ≤ 0.5x nbdkit-curl's time: ${fmt(v.seq / curl.seq)}x — ${v.seq / curl.seq <= 0.5 ? 'met' : 'NOT met'}`)
    console.log(`target: random QD1 ≥ nbdkit-curl's rate: ${fmt(v.qd1 / curl.qd1)}x — ${v.qd1 >= curl.qd1 ? 'met' : 'NOT met'}`)
    console.log(`target: warm re-read as fast as local: ${fmt(remoteWarm.second / local.second)}x the local time — ${remoteWarm.second <= local.second * 1.1 ? 'met' : 'NOT met'}`)
    if (rgw) {
      const s3 = rows.find((r) => r.name.startsWith('vdev serve s3'))!
      const u = rows[0]
      console.log(`s3:// (RGW) against the same image over http:// (nginx): sequential ${fmt(s3.seq / u.seq)}x the time, QD1 ${fmt(s3.qd1 / u.qd1)}x the rate, QD32 ${fmt(s3.qd32 / u.qd32)}x the rate`)
    }
    const sig = signingCost()
    console.log(
      `SigV4 signing, CPU per request: ${fmt(sig.signUs, 1)} µs (a fresh signing key each time: ${fmt(sig.freshKeyUs, 1)} µs; a SHA-256 of 4 KiB: ${fmt(sig.sha4kUs, 1)} µs)` +
        ` — at the QD1 rate of vdev serve URL above (${fmt(1e6 / rows[0].qd1, 0)} µs a read) ${fmt((100 * sig.signUs * rows[0].qd1) / 1e6, 2)} % of a random read`,
    )
    console.log(`load average during the run: ${os.loadavg().map((l) => fmt(l)).join(' ')} (other work on this machine skews the numbers)`)
  } finally {
    for (const s of servers) await stop(s)
    await nginx.stop()
    await rgw?.stop()
    fs.rmSync(dir, {recursive: true, force: true})
  }
}

main().catch((err) => {
  console.error(`bench:remote: ${(err as Error).message}`)
  process.exit(1)
})

/**
 * npm run bench:serve — `vdev serve` (NBD, VDIMG image) against nbdkit (file plugin on the raw image) and
 * qemu-nbd (qcow2 with zstd clusters of the same data), in one run, through real clients:
 *   - sequential: `nbdcopy --no-extents URI null:` (every byte read; default connections, and one connection),
 *   - random 4 KiB reads through python3-libnbd at queue depth 1 and 32 (aio), the same offsets for every server.
 * Every server listens on a Unix socket on this machine. Each server's file is read whole right before each
 * measurement, so every server is measured from the page cache: on a machine that reclaims cold page
 * cache within seconds (this one's DAMON does), a single warm-up at the start left the later servers
 * reading from disk. The server's CPU time (all its threads, from /proc) is shown per random read.
 * vdev rows: the default (serving threads), the same without polling (--poll-us 0) and on the main thread
 * only (--threads 0, how vdev served before the threads), for the default 64 KiB chunks (qcow2's cluster
 * size: a 4 KiB read decompresses as much as qemu-nbd does); and 128 KiB chunks (the default before).
 * Target (issue 4): vdev serve within 1.2x of qemu-nbd on sequential and random reads of the same data.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {ensureCorpus, CACHE} from './corpus'
import {best, fmt, markImage, MiB, staleImage, table, timed, warm} from './lib'
import {cpuSeconds, freshSocket, randomReadRate, startNbdkit, startQemuNbd, startVdev, stop, type Server} from './nbd-servers'

const VDEV = path.resolve(__dirname, '..', '..', 'bin', 'run.js')
const OUT = path.join(CACHE, 'serve')


/** Random reads per second, and the server's CPU microseconds per read. */
async function randomReads(s: Server, n: number, qd: number): Promise<{iops: number; cpuUs: number}> {
  warm(s.file)
  const cpu0 = cpuSeconds(s.child.pid!)
  const iops = await randomReadRate(s.uri, n, qd)
  return {iops, cpuUs: ((cpuSeconds(s.child.pid!) - cpu0) / n) * 1e6}
}

/** The better of two runs (by rate). */
async function bestOfTwo(f: () => Promise<{iops: number; cpuUs: number}>): Promise<{iops: number; cpuUs: number}> {
  const a = await f()
  const b = await f()
  return a.iops >= b.iops ? a : b
}


async function main(): Promise<void> {
  const {raw} = await ensureCorpus()
  const size = fs.statSync(raw).size
  fs.mkdirSync(OUT, {recursive: true})
  const vdimg = path.join(OUT, 'corpus.vdimg')
  const vdimg128 = path.join(OUT, 'corpus-128k.vdimg')
  const qcow2 = path.join(OUT, 'corpus.qcow2')
  if (staleImage(vdimg, raw)) await timed([process.execPath, VDEV, 'create', '--force', raw, vdimg]).then(() => markImage(vdimg))
  // The default before 64 KiB: a 4 KiB random read decompresses up to twice as much.
  if (staleImage(vdimg128, raw)) await timed([process.execPath, VDEV, 'create', '--force', '--chunk-size', '128K', raw, vdimg128]).then(() => markImage(vdimg128))
  if (!fs.existsSync(qcow2)) await timed(['qemu-img', 'convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, qcow2])
  const reps = Number(process.env.BENCH_REPS ?? 3)
  const nQd1 = Number(process.env.BENCH_RANDOM_QD1 ?? 20000)
  const nQd32 = Number(process.env.BENCH_RANDOM_QD32 ?? 50000)

  const servers: Server[] = []
  const vdevRows: Array<[string, string, string[]]> = [
    ['vdev serve (VDIMG, 64 KiB chunks)', vdimg, []],
    ['vdev serve (64 KiB, --poll-us 0)', vdimg, ['--poll-us', '0']],
    ['vdev serve (64 KiB, --threads 0)', vdimg, ['--threads', '0']],
    ['vdev serve (VDIMG, 128 KiB chunks)', vdimg128, []],
  ]
  try {
    for (const [i, [name, file, extra]] of vdevRows.entries())
      servers.push(await startVdev(file, freshSocket(path.join(OUT, `vdev${i}.sock`)), name, extra))
    servers.push(await startNbdkit(raw, freshSocket(path.join(OUT, 'nbdkit.sock'))))
    servers.push(await startQemuNbd(qcow2, freshSocket(path.join(OUT, 'qemu.sock'))))
    const results = new Map<string, Record<string, number>>()
    for (const s of servers) {
      const copy = (args: string[]) => () => (warm(s.file), timed(['nbdcopy', '--no-extents', ...args, s.uri, 'null:']))
      const seq = await best(reps, copy([]))
      const seq1 = await best(reps, copy(['--connections=1']))
      const qd1 = await bestOfTwo(() => randomReads(s, nQd1, 1))
      const qd32 = await bestOfTwo(() => randomReads(s, nQd32, 32))
      results.set(s.name, {seq: size / MiB / seq.seconds, seq1: size / MiB / seq1.seconds, qd1: qd1.iops, qd1cpu: qd1.cpuUs, qd32: qd32.iops, qd32cpu: qd32.cpuUs})
      process.stderr.write(`${s.name}: done\n`)
    }
    const q = results.get('qemu-nbd (qcow2, zstd)')!
    const rows = [...results.entries()].map(([name, r]) => [
      name,
      fmt(r.seq, 0), `${fmt(r.seq / q.seq)}x`,
      fmt(r.seq1, 0), `${fmt(r.seq1 / q.seq1)}x`,
      fmt(r.qd1, 0), `${fmt(r.qd1 / q.qd1)}x`, fmt(r.qd1cpu, 0),
      fmt(r.qd32, 0), `${fmt(r.qd32 / q.qd32)}x`, fmt(r.qd32cpu, 0),
    ])
    console.log(`\ncorpus: ${fmt(size / MiB, 0)} MiB ext4; ${os.availableParallelism()} cores; each file read into the page cache before each measurement; Unix sockets`)
    console.log(`sequential: nbdcopy --no-extents to null:, best of ${reps}; random: 4 KiB reads via python3-libnbd, ${nQd1} at QD1, ${nQd32} at QD32, best of 2; CPU: the server's (all threads) per read, µs\n`)
    console.log(
      table(
        ['server', 'seq MiB/s', 'vs qemu-nbd', 'seq 1 conn MiB/s', 'vs qemu-nbd', 'rand QD1 IOPS', 'vs qemu-nbd', 'CPU µs', 'rand QD32 IOPS', 'vs qemu-nbd', 'CPU µs'],
        rows,
      ),
    )
    for (const [name, v] of results) {
      if (!name.startsWith('vdev')) continue
      const worst = Math.min(v.seq / q.seq, v.seq1 / q.seq1, v.qd1 / q.qd1, v.qd32 / q.qd32)
      console.log(`target for ${name}: within 1.2x of qemu-nbd (ratio >= 0.83): worst ${fmt(worst)} — ${worst >= 1 / 1.2 ? 'met' : 'NOT met'}`)
    }
    console.log(`load average during the run: ${os.loadavg().map((l) => fmt(l)).join(' ')} (other work on this machine skews the numbers)`)
  } finally {
    for (const s of servers) await stop(s)
  }
}

main().catch((err) => {
  console.error(`bench:serve: ${(err as Error).message}`)
  process.exit(1)
})

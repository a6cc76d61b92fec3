/**
 * npm run bench:iscsi — vdev's iSCSI target against Linux's userspace target tgt (tgtd + tgtadm, the raw
 * corpus file as a read-only LUN through its default rdwr backing store) and against vdev's own NBD server,
 * in one run, all on 127.0.0.1:
 *   - libiscsi's `iscsi-perf` (the iSCSI rows): sequential 128 KiB reads at queue depth 16 (wrapping round
 *     the LUN) and random 4 KiB reads at queue depth 32 (`-r`), each for a fixed time;
 *   - `qemu-img bench` (every row, so the NBD server is measured by the same client): sequential 128 KiB
 *     reads at queue depth 16 through qemu's iscsi:// and nbd:// drivers.
 * Each served file is read into the page cache right before each measurement; best of BENCH_REPS (3).
 * Target (issue 10): vdev's target at least tgt's throughput on the same image.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {createInterface} from 'node:readline'
import {ensureCorpus, CACHE} from './corpus'
import {fmt, markImage, MiB, staleImage, table, timed, warm} from './lib'

const VDEV = path.resolve(__dirname, '..', '..', 'bin', 'run.js')
const OUT = path.join(CACHE, 'serve')
const INITIATOR = 'iqn.2026-01.dev.vdev:bench'
const SEQ_BLOCK = 128 * 1024
const SEQ_QD = 16
const RAND_QD = 32

interface Server {
  name: string
  kind: 'iscsi' | 'nbd'
  /** libiscsi / qemu URL. */
  uri: string
  /** Its logical block size (iscsi-perf counts blocks). */
  blockSize: number
  file: string
  child: ChildProcess
  stop(): Promise<void>
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })
}

function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill(signal)
    setTimeout(() => child.kill('SIGKILL'), 3000).unref()
  })
}

async function startVdev(name: string, file: string, args: string[]): Promise<Server> {
  const child = spawn(process.execPath, [VDEV, 'serve', file, '--json', ...args], {stdio: ['ignore', 'pipe', 'inherit']})
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({input: child.stdout!}).once('line', resolve)
    child.once('exit', (c) => reject(new Error(`vdev serve ${args.join(' ')} exited (${c})`)))
  })
  const ready = JSON.parse(line) as {uri?: string; listen: string; export?: string}
  const iscsi = args.includes('iscsi')
  const uri = iscsi ? ready.uri! : `nbd://${ready.listen}/${ready.export ?? ''}`
  return {name, kind: iscsi ? 'iscsi' : 'nbd', uri, blockSize: 512, file, child, stop: () => stopChild(child)}
}

function tgtadm(ctl: number, args: string[]): void {
  const r = spawnSync('tgtadm', ['-C', String(ctl), '--lld', 'iscsi', ...args], {encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`tgtadm ${args.join(' ')}: ${r.stderr || r.stdout}`)
}

/** tgtd in the foreground on its own control port, the raw file as LUN 1 (tgt's LUN 0 is its controller). */
async function startTgt(raw: string): Promise<Server> {
  const port = await freePort()
  const ctl = 100 + (process.pid % 800)
  const iqn = 'iqn.2026-01.dev.vdev:bench-tgt'
  const child = spawn('tgtd', ['-f', '-C', String(ctl), '--iscsi', `portal=127.0.0.1:${port}`], {stdio: ['ignore', 'ignore', 'inherit']})
  const t0 = Date.now()
  for (;;) {
    if (child.exitCode !== null) throw new Error(`tgtd exited (${child.exitCode})`)
    const r = spawnSync('tgtadm', ['-C', String(ctl), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'], {encoding: 'utf8'})
    if (r.status === 0) break
    if (Date.now() - t0 > 10_000) throw new Error(`tgtd did not answer on control port ${ctl}`)
    await new Promise((r) => setTimeout(r, 100))
  }
  tgtadm(ctl, ['--op', 'new', '--mode', 'target', '--tid', '1', '-T', iqn])
  tgtadm(ctl, ['--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', raw])
  tgtadm(ctl, ['--op', 'update', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '--params', 'readonly=1'])
  tgtadm(ctl, ['--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL'])
  // tgtd -f does not stop on SIGTERM; SIGKILL after the 3 s stopChild gives it.
  return {name: 'tgt (tgtd, raw file, rdwr)', kind: 'iscsi', uri: `iscsi://127.0.0.1:${port}/${iqn}/1`, blockSize: 512, file: raw, child, stop: () => stopChild(child)}
}

/** iscsi-perf's closing "iops average N": reads per second. */
async function iscsiPerf(s: Server, args: string[]): Promise<number> {
  warm(s.file)
  const r = spawnSync('iscsi-perf', ['-i', INITIATOR, ...args, s.uri], {encoding: 'utf8', timeout: 120_000})
  const out = `${r.stdout}${r.stderr}`.replace(/\r/g, '\n')
  const m = [...out.matchAll(/iops average (\d+)/g)].pop()
  if (r.status !== 0 || !m) throw new Error(`iscsi-perf ${args.join(' ')} ${s.uri}: ${out.slice(-300)}`)
  return Number(m[1])
}

/** qemu-img bench: sequential reads of the whole device; MiB/s. */
async function qemuBench(s: Server, size: number): Promise<number> {
  warm(s.file)
  const count = Math.floor(size / SEQ_BLOCK)
  const r = await timed(['qemu-img', 'bench', '-f', 'raw', '-c', String(count), '-d', String(SEQ_QD), '-s', String(SEQ_BLOCK), '-S', String(SEQ_BLOCK), s.uri])
  return (count * SEQ_BLOCK) / MiB / r.seconds
}

async function bestOf(n: number, f: () => Promise<number>): Promise<number> {
  let b = 0
  for (let i = 0; i < n; i++) b = Math.max(b, await f())
  return b
}

async function main(): Promise<void> {
  const {raw} = await ensureCorpus()
  const size = fs.statSync(raw).size
  fs.mkdirSync(OUT, {recursive: true})
  const vdimg = path.join(OUT, 'corpus.vdimg')
  if (staleImage(vdimg, raw)) await timed([process.execPath, VDEV, 'create', '--force', raw, vdimg]).then(() => markImage(vdimg))
  const reps = Number(process.env.BENCH_REPS ?? 3)
  const randSeconds = Number(process.env.BENCH_RANDOM_SECONDS ?? 6)
  const seqSeconds = Number(process.env.BENCH_SEQ_SECONDS ?? 8)
  const servers: Server[] = []
  const load0 = os.loadavg()
  try {
    const port = async () => `127.0.0.1:${await freePort()}`
    servers.push(await startVdev('vdev serve --protocol iscsi (VDIMG, 64 KiB chunks)', vdimg, ['--protocol', 'iscsi', '--listen', await port()]))
    servers.push(await startVdev('vdev serve --protocol iscsi (raw file)', raw, ['--format', 'raw', '--protocol', 'iscsi', '--listen', await port()]))
    servers.push(await startTgt(raw))
    servers.push(await startVdev('vdev serve (NBD, VDIMG, 64 KiB chunks)', vdimg, ['--listen', await port()]))
    const results = new Map<string, {seq?: number; rand?: number; qemu: number}>()
    for (const s of servers) {
      let seq: number | undefined
      let rand: number | undefined
      if (s.kind === 'iscsi') {
        const perReq = SEQ_BLOCK / s.blockSize
        seq = ((await bestOf(reps, () => iscsiPerf(s, ['-m', String(SEQ_QD), '-b', String(perReq), '-t', String(seqSeconds)]))) * SEQ_BLOCK) / MiB
        rand = await bestOf(reps, () => iscsiPerf(s, ['-r', '-m', String(RAND_QD), '-b', String(4096 / s.blockSize), '-t', String(randSeconds)]))
      }
      const qemu = await bestOf(reps, () => qemuBench(s, size))
      results.set(s.name, {seq, rand, qemu})
      process.stderr.write(`${s.name}: done\n`)
    }
    const t = results.get(servers[2].name)!
    const cell = (v: number | undefined, base: number | undefined, d = 0) => (v === undefined ? ['–', '–'] : [fmt(v, d), base ? `${fmt(v / base)}x` : '–'])
    const rows = [...results.entries()].map(([name, r]) => [name, ...cell(r.seq, t.seq), ...cell(r.rand, t.rand), ...cell(r.qemu, t.qemu)])
    console.log(`\ncorpus: ${fmt(size / MiB, 0)} MiB ext4; ${os.availableParallelism()} cores; 127.0.0.1 TCP; each file read into the page cache before each measurement; best of ${reps}`)
    console.log(
      `iscsi-perf: sequential ${SEQ_BLOCK / 1024} KiB reads at QD${SEQ_QD} for ${seqSeconds} s; random 4 KiB reads at QD${RAND_QD} for ${randSeconds} s. ` +
        `qemu-img bench: sequential ${SEQ_BLOCK / 1024} KiB reads at QD${SEQ_QD} (iscsi:// and nbd://)\n`,
    )
    console.log(table(['server', 'iscsi-perf seq MiB/s', 'vs tgt', 'iscsi-perf rand 4K QD32 IOPS', 'vs tgt', 'qemu-img bench seq MiB/s', 'vs tgt'], rows))
    const v = results.get(servers[0].name)!
    const worst = Math.min(v.seq! / t.seq!, v.rand! / t.rand!, v.qemu / t.qemu)
    console.log(`target: vdev's target (VDIMG) at least tgt's throughput: worst ratio ${fmt(worst)} — ${worst >= 1 ? 'met' : 'NOT met'}`)
    console.log(`load average: ${load0.map((l) => fmt(l)).join(' ')} at the start, ${os.loadavg().map((l) => fmt(l)).join(' ')} at the end (other work on this machine skews the numbers)`)
  } finally {
    for (const s of servers) await s.stop()
  }
}

main().catch((err) => {
  console.error(`bench:iscsi: ${(err as Error).message}`)
  process.exit(1)
})

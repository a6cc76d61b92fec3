/**
 * The in-VM half of bench/vm-read.ts (runs inside the test VM, see docs/vm-harness.md): attaches one image
 * through each Linux backend in turn, and reads the file vdev's NFS server exports through the kernel NFS v3
 * client (the file itself, and a loop device over it — the Linux analogue of DiskImages on macOS), plus a
 * plain loop device over the raw bytes as the kernel-only reference; reads each with fio — sequential 1 MiB
 * and random 4 KiB, O_DIRECT — and with buffered 1 MiB reads (dd, the kernel's read-ahead, as `cat DEV`),
 * times `zstd -d` of the same bytes as one stream (issue 14's yardstick), and writes the numbers as JSON to
 * $VDEV_VM_OUT. Numbers from TCG are only comparable with each other, within one run.
 *   node dist/bench/vm/read-guest.js IMAGE.vdimg RAW RAW.zst [nfs-only]
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {loadBackend} from '../../src/core/backends'
import type {BlockSource} from '../../src/core/source'
import {openImage} from '../../src/format/reader'
import {RawImage} from '../../src/sources/raw'
import {pollMicroseconds, threadCount} from '../../src/threads/config'
import {attachNfsForBench} from './nfs-target'
import {run} from './proc'

export interface VmReadRow {
  name: string
  /** What was served: the .vdimg (decompression included) or its raw bytes (the transport alone). */
  kind: 'vdimg' | 'raw'
  available: boolean
  reason?: string
  device?: string
  seqMiBs?: number
  randIops?: number
  randP99us?: number
  /** Seconds to read the whole device with buffered 1 MiB reads (dd without O_DIRECT: the kernel's read-ahead). */
  bufferedSeconds?: number
}

const RAND_SECONDS = Number(process.env.VDEV_BENCH_RAND_SECONDS ?? 8)
/** Serving threads of the NFS rows (as the macos-nfs backend's default). */
const NFS_THREADS = 2

/** Seconds `cmd args` takes, which must exit 0. */
async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = process.hrtime.bigint()
  const r = await run(cmd, args)
  if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr.trim()}`)
  return Number(process.hrtime.bigint() - t0) / 1e9
}

/** fio on a device (spawned: the device may be served by this process, which must keep running). */
async function fio(device: string): Promise<Pick<VmReadRow, 'seqMiBs' | 'randIops' | 'randP99us' | 'bufferedSeconds'>> {
  const common = ['--output-format=json', `--filename=${device}`, '--readonly', '--direct=1', '--group_reporting']
  const seq = await run('fio', [...common, '--name=seq', '--rw=read', '--bs=1M', '--ioengine=psync'])
  if (seq.code !== 0) throw new Error(`fio seq: ${seq.stderr}`)
  const rand = await run('fio', [
    ...common,
    '--name=rand',
    '--rw=randread',
    '--bs=4k',
    '--ioengine=libaio',
    '--iodepth=16',
    `--runtime=${RAND_SECONDS}`,
    '--time_based',
  ])
  if (rand.code !== 0) throw new Error(`fio rand: ${rand.stderr}`)
  const s = JSON.parse(seq.stdout).jobs[0].read
  const r = JSON.parse(rand.stdout).jobs[0].read
  // O_DIRECT left the page cache empty: the whole device through the kernel's read-ahead, as `cat DEV`.
  const bufferedSeconds = await timed('dd', [`if=${device}`, 'of=/dev/null', 'bs=1M', 'status=none'])
  return {seqMiBs: s.bw_bytes / (1 << 20), randIops: r.iops, randP99us: (r.clat_ns?.percentile?.['99.000000'] ?? 0) / 1000, bufferedSeconds}
}

async function main(): Promise<void> {
  const [imageArg, rawArg, zstArg, mode] = process.argv.slice(2)
  const nfsOnly = mode === 'nfs-only'
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-read-'))
  // Copy into the guest's tmpfs: every backend then reads the same memory, not the host over 9p.
  const image = path.join(work, 'bench.vdimg')
  const raw = path.join(work, 'bench.raw')
  fs.copyFileSync(imageArg, image)
  fs.copyFileSync(rawArg, raw)
  const size = fs.statSync(raw).size
  const zst = path.join(work, 'bench.raw.zst')
  fs.copyFileSync(zstArg, zst)
  // The yardstick: zstd -d of the same bytes as one stream, from the same tmpfs, best of two.
  const zstdSeconds = Math.min(
    await timed('zstd', ['-d', '-q', '-f', zst, '-o', '/dev/null']),
    await timed('zstd', ['-d', '-q', '-f', zst, '-o', '/dev/null']),
  )
  fs.rmSync(zst)
  const rows: VmReadRow[] = []

  const losetup = nfsOnly ? undefined : await run('losetup', ['--find', '--show', '--read-only', raw])
  if (!losetup) {
    // --nfs-only: the NFS rows alone
  } else if (losetup.code === 0) {
    const loop = losetup.stdout.trim()
    try {
      rows.push({name: 'loop (raw file, kernel only)', kind: 'raw', available: true, device: loop, ...(await fio(loop))})
    } finally {
      await run('losetup', ['-d', loop])
    }
  } else rows.push({name: 'loop (raw file, kernel only)', kind: 'raw', available: false, reason: losetup.stderr.trim()})

  // Each backend twice: serving the .vdimg (decompression included) and the raw bytes (the transport alone).
  const sources: Array<['vdimg' | 'raw', () => Promise<BlockSource>]> = [
    ['vdimg', () => openImage(image)],
    ['raw', async () => RawImage.open(raw)],
  ]
  for (const [kind, open] of nfsOnly ? sources.slice(0, 1) : sources) {
    for (const name of nfsOnly ? [] : ['ublk', 'nbd', 'fuse']) {
      const label = name
      const b = loadBackend(name)
      if ('error' in b) {
        rows.push({name: label, kind, available: false, reason: b.error})
        continue
      }
      const probe = await b.probe()
      if (!probe.available) {
        rows.push({name: label, kind, available: false, reason: probe.reason})
        continue
      }
      const source = await open()
      const runDir = fs.mkdtempSync(path.join(work, `${name}-`))
      const attached = await b.attach(new BlockServer(source), {
        id: `bench-${name}`,
        image,
        runDir,
        log: (l) => process.stderr.write(`${l}\n`),
        threads: threadCount(name, b.threadModel),
        pollMicroseconds: pollMicroseconds(name, b.threadModel),
      })
      try {
        rows.push({name: label, kind, available: true, device: attached.device, ...(await fio(attached.device))})
      } catch (err) {
        rows.push({name: label, kind, available: false, reason: (err as Error).message})
      } finally {
        await attached.detach()
        await source.close()
      }
      process.stderr.write(`${JSON.stringify(rows[rows.length - 1])}\n`)
    }
    // The NFS server as `vdev serve` and the macos-nfs backend run it (2 serving threads), and on the main
    // thread (--threads 0); with --nfs-only, twice each, alternating (an A/B on a loaded host).
    const nfsRuns = nfsOnly ? [0, NFS_THREADS, 0, NFS_THREADS] : [NFS_THREADS, 0]
    for (const [loop, threads] of [false, true].flatMap((l) => nfsRuns.map((t) => [l, t] as const))) {
      const name = `${loop ? 'nfs + loop' : 'nfs (file)'}, ${threads ? `${threads} threads` : 'main thread'}`
      const source = await open()
      try {
        const t = await attachNfsForBench(source, fs.mkdtempSync(path.join(work, 'nfs-')), {loop, threads})
        try {
          rows.push({name, kind, available: true, device: t.target, ...(await fio(t.target))})
        } finally {
          await t.close()
        }
      } catch (err) {
        rows.push({name, kind, available: false, reason: (err as Error).message})
      } finally {
        await source.close()
      }
      process.stderr.write(`${JSON.stringify(rows[rows.length - 1])}\n`)
    }
  }
  fs.rmSync(work, {recursive: true, force: true})
  const out = JSON.stringify({kernel: os.release(), size, zstdSeconds, rows}, null, 1)
  if (process.env.VDEV_VM_OUT) fs.writeFileSync(process.env.VDEV_VM_OUT, out)
  process.stdout.write(out + '\n')
}

if (require.main === module)
  main().catch((err) => {
    process.stderr.write(`vm-read: ${(err as Error).stack}\n`)
    process.exit(1)
  })

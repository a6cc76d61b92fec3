/**
 * The in-VM half of bench/vm-nfs-read.ts (runs inside the test VM, docs/vm-harness.md): reads one image
 * through ublk, NBD and the kernel NFS v3 client on vdev's NFS server (the file itself with O_DIRECT, and a
 * read-only loop device over it), each serving the .vdimg and its raw bytes, with the same fio jobs — so the
 * NFS rows can be read as ratios against ublk and NBD measured in the same VM run.
 *   node dist/bench/vm/nfs-read-guest.js IMAGE.vdimg RAW
 */
import {spawn} from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {RawFileSource} from '../../src/core/rawsource'
import {loadBackend} from '../../src/core/registry'
import type {BlockSource} from '../../src/core/source'
import {openImage} from '../../src/format/reader'
import {attachNfsForBench} from './nfs-target'

export interface NfsReadRow {
  name: string
  kind: 'vdimg' | 'raw'
  available: boolean
  reason?: string
  seqMiBs?: number
  randIops?: number
  randP99us?: number
}

function run(cmd: string, args: string[]): Promise<{code: number | null; stdout: string; stderr: string}> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, {stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (b) => (stdout += b))
    c.stderr.on('data', (b) => (stderr += b))
    c.on('error', reject)
    c.on('close', (code) => resolve({code, stdout, stderr}))
  })
}

const RAND_SECONDS = Number(process.env.VDEV_BENCH_RAND_SECONDS ?? 8)

/** The same fio jobs as bench/vm/read-guest.ts: sequential 1 MiB psync, random 4 KiB libaio QD16, O_DIRECT. */
async function fio(target: string): Promise<Pick<NfsReadRow, 'seqMiBs' | 'randIops' | 'randP99us'>> {
  const common = ['--output-format=json', `--filename=${target}`, '--readonly', '--direct=1', '--group_reporting']
  const seq = await run('fio', [...common, '--name=seq', '--rw=read', '--bs=1M', '--ioengine=psync'])
  if (seq.code !== 0) throw new Error(`fio seq: ${seq.stderr}`)
  const rand = await run('fio', [...common, '--name=rand', '--rw=randread', '--bs=4k', '--ioengine=libaio', '--iodepth=16', `--runtime=${RAND_SECONDS}`, '--time_based'])
  if (rand.code !== 0) throw new Error(`fio rand: ${rand.stderr}`)
  const s = JSON.parse(seq.stdout).jobs[0].read
  const r = JSON.parse(rand.stdout).jobs[0].read
  return {seqMiBs: s.bw_bytes / (1 << 20), randIops: r.iops, randP99us: (r.clat_ns?.percentile?.['99.000000'] ?? 0) / 1000}
}

async function main(): Promise<void> {
  const [imageArg, rawArg] = process.argv.slice(2)
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-nfs-read-'))
  // Into the guest's tmpfs: every row reads the same memory, not the host over 9p.
  const image = path.join(work, 'bench.vdimg')
  const raw = path.join(work, 'bench.raw')
  fs.copyFileSync(imageArg, image)
  fs.copyFileSync(rawArg, raw)
  const rows: NfsReadRow[] = []
  const sources: Array<['vdimg' | 'raw', () => Promise<BlockSource>]> = [
    ['vdimg', () => openImage(image)],
    ['raw', async () => RawFileSource.open(raw)],
  ]
  for (const [kind, open] of sources) {
    for (const name of ['ublk', 'nbd']) {
      const b = loadBackend(name)
      const probe = 'error' in b ? {available: false as const, reason: b.error} : await b.probe()
      if ('error' in b || !probe.available) {
        rows.push({name, kind, available: false, reason: probe.available ? '' : probe.reason})
        continue
      }
      const source = await open()
      const runDir = fs.mkdtempSync(path.join(work, `${name}-`))
      const attached = await b.attach(new BlockServer(source), {id: `bench-${name}`, image, runDir, log: (l) => process.stderr.write(`${l}\n`)})
      try {
        rows.push({name, kind, available: true, ...(await fio(attached.device))})
      } catch (err) {
        rows.push({name, kind, available: false, reason: (err as Error).message})
      } finally {
        await attached.detach()
        await source.close()
      }
      process.stderr.write(`${JSON.stringify(rows[rows.length - 1])}\n`)
    }
    for (const loop of [false, true]) {
      const name = loop ? 'nfs + loop' : 'nfs (file)'
      const source = await open()
      try {
        const t = await attachNfsForBench(source, fs.mkdtempSync(path.join(work, 'nfs-')), {loop})
        try {
          rows.push({name, kind, available: true, ...(await fio(t.target))})
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
  const out = JSON.stringify({kernel: os.release(), rows}, null, 1)
  if (process.env.VDEV_VM_OUT) fs.writeFileSync(process.env.VDEV_VM_OUT, out)
  process.stdout.write(out + '\n')
}

if (require.main === module)
  main().catch((err) => {
    process.stderr.write(`vm-nfs-read: ${(err as Error).stack}\n`)
    process.exit(1)
  })

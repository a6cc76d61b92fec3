/**
 * Read benchmark of the kernel-native backends, in the test VM (the only place this project's machines have
 * ublk_drv, nbd and an NFS client): ublk, NBD, FUSE+loop and the kernel NFS v3 client on vdev's NFS server
 * (the file, and a loop device over it) serving one image — as .vdimg (decompression included) and as its raw
 * bytes (the transport alone) — plus a plain loop device over the raw bytes, all measured by fio in the same
 * VM run. The VM is TCG-emulated, so only the ratios between rows mean anything.
 *   npm run build && node dist/bench/vm-read.js [--size MiB] [--nfs-only]
 * --nfs-only: only the NFS rows of the .vdimg, on the main thread and on serving threads, twice each alternating.
 * The image: the first --size MiB (default 192) of the benchmark corpus (bench/corpus.ts: an ext4 of
 * /usr/share and /usr/bin), as a .vdimg made by the real writer; cached in .cache/bench/.
 */
import * as fs from 'node:fs'
import {spawnSync} from 'node:child_process'
import * as path from 'node:path'
import {openInput} from '../src/format/input'
import {createImage} from '../src/format/writer'
import {runInVm} from '../test/vm-host/vm'
import {CACHE, ensureCorpus} from './corpus'
import {fmt, markImage, staleImage, table} from './lib'
import type {VmReadRow} from './vm/read-guest'

async function main(): Promise<void> {
  const i = process.argv.indexOf('--size')
  const sizeMiB = i > 0 ? Number(process.argv[i + 1]) : 192
  const {raw: corpus} = await ensureCorpus()
  const raw = path.join(CACHE, `vm-read-${sizeMiB}.raw`)
  const image = path.join(CACHE, `vm-read-${sizeMiB}.vdimg`)
  if (staleImage(image, corpus)) {
    const fd = fs.openSync(corpus, 'r')
    const buf = Buffer.alloc(sizeMiB << 20)
    fs.readSync(fd, buf, 0, buf.length, 0)
    fs.closeSync(fd)
    fs.writeFileSync(raw, buf)
    const input = openInput(raw)
    try {
      await createImage(input, image + '.tmp', {force: true})
    } finally {
      await input.close()
    }
    fs.renameSync(image + '.tmp', image)
    markImage(image)
  }
  // issue 14's yardstick: zstd -d of the same bytes as one stream, timed in the VM beside the devices.
  const zst = raw + '.zst'
  if (!fs.existsSync(zst) || fs.statSync(zst).mtimeMs < fs.statSync(raw).mtimeMs) {
    const z = spawnSync('zstd', ['-q', '-f', '-3', '-T0', raw, '-o', zst], {stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8'})
    if (z.status !== 0) throw new Error(`zstd: ${z.stderr}`)
  }
  const script = path.join(__dirname, 'vm', 'read-guest.js')
  const nfsOnly = process.argv.includes('--nfs-only')
  const r = await runInVm({script: [script, image, raw, zst, ...(nfsOnly ? ['nfs-only'] : [])], timeoutMs: 40 * 60_000, log: (l) => process.stderr.write(`[vm] ${l}\n`)})
  if (r.status !== 0 || !r.out) throw new Error(`the in-VM benchmark failed (status ${r.status}); console: ${r.consoleLog}\n${r.consoleTail}`)
  const {kernel, size, zstdSeconds, rows} = JSON.parse(r.out) as {kernel: string; size: number; zstdSeconds: number; rows: VmReadRow[]}
  console.log(`\nRead benchmark in the test VM (kernel ${kernel}, qemu TCG, ${sizeMiB} MiB image; fio O_DIRECT, seq 1 MiB psync, rand 4 KiB QD16; buffered = dd bs=1M, the kernel's read-ahead)`)
  console.log(`zstd -d of the same bytes as one stream, in the VM: ${fmt(zstdSeconds)} s (issue 14: sequential reads of the .vdimg ≤ 0.6x that time)`)
  const ratio = (a: number | undefined, b: number | undefined) => (a && b ? `${fmt(a / b)}x` : '-')
  const seqSeconds = (x: VmReadRow) => (x.seqMiBs ? size / (x.seqMiBs * (1 << 20)) : undefined)
  for (const kind of ['vdimg', 'raw'] as const) {
    const of = rows.filter((x) => x.kind === kind)
    const ublk = of.find((x) => x.name === 'ublk' && x.available)
    const nbd = of.find((x) => x.name === 'nbd' && x.available)
    console.log(`\nserving the ${kind === 'vdimg' ? '.vdimg (decompression included)' : 'raw bytes (the transport alone)'}:`)
    console.log(
      table(
        ['path', 'seq MiB/s', 'vs ublk', 'vs nbd', 'seq time vs zstd -d', 'buffered s', 'buffered vs zstd -d', 'rand IOPS', 'vs ublk', 'vs nbd', 'rand p99 us'],
        of.map((x) =>
          x.available
            ? [x.name, fmt(x.seqMiBs!, 1), ratio(x.seqMiBs, ublk?.seqMiBs), ratio(x.seqMiBs, nbd?.seqMiBs), ratio(seqSeconds(x), zstdSeconds), fmt(x.bufferedSeconds!), ratio(x.bufferedSeconds, zstdSeconds), fmt(x.randIops!, 0), ratio(x.randIops, ublk?.randIops), ratio(x.randIops, nbd?.randIops), fmt(x.randP99us!, 0)]
            : [x.name, `unavailable: ${x.reason}`, '', '', '', '', '', '', '', '', ''],
        ),
      ),
    )
  }
  console.log(`\nVM boot to suite ${r.suiteStartSeconds?.toFixed(1)} s, whole run ${r.totalSeconds.toFixed(1)} s; console ${r.consoleLog}`)
}

main().catch((err) => {
  process.stderr.write(`vm-read: ${(err as Error).message}\n`)
  process.exit(1)
})

/**
 * npm run bench:create — vdev create and extract against zstd (one stream, no random access),
 * qemu-img (qcow2 with zstd clusters) and ewfacquire (E01, deflate fast) on the same corpus, in one run.
 * Targets (issue 2): create time ≤ 0.8× qemu-img's, output no larger than qcow2-zstd's, and a whole
 * `vdev extract IMG -` no slower than `zstd -d` of the single stream.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {ensureCorpus, CACHE} from './corpus'
import {best, fmt, MiB, ratio, table, timed, warm, type Run} from './lib'

const VDEV = path.resolve(__dirname, '..', '..', 'bin', 'run.js')

async function main(): Promise<void> {
  const {raw} = await ensureCorpus()
  const size = fs.statSync(raw).size
  const out = path.join(CACHE, 'out')
  fs.rmSync(out, {recursive: true, force: true})
  fs.mkdirSync(out)
  const f = (n: string) => path.join(out, n)
  const reps = Number(process.env.BENCH_REPS ?? 2)

  const create: Array<{name: string; run: Run; file: string[]}> = []
  const add = async (name: string, files: string[], argv: () => string[]) => {
    const r = await best(reps, async () => {
      for (const x of files) fs.rmSync(x, {force: true})
      warm(raw) // every tool reads the source from memory
      return timed(argv())
    })
    create.push({name, run: r, file: files})
  }
  await add('vdev create (zstd 3, 128 KiB chunks)', [f('c.vdimg')], () => [process.execPath, VDEV, 'create', raw, f('c.vdimg')])
  await add('vdev create --level 1', [f('c1.vdimg')], () => [process.execPath, VDEV, 'create', '--level', '1', raw, f('c1.vdimg')])
  await add('zstd -3 -T0 (one stream)', [f('c.zst')], () => ['zstd', '-q', '-3', '-T0', raw, '-o', f('c.zst')])
  await add('qemu-img convert -c qcow2 zstd', [f('c.qcow2')], () => [
    'qemu-img', 'convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, f('c.qcow2'),
  ])
  await add('ewfacquire -c deflate:fast (E01)', [f('c.E01')], () => [
    'ewfacquire', '-u', '-q', '-c', 'deflate:fast', '-S', '7GiB', '-t', f('c'), raw,
  ])
  const fileSize = (files: string[]) => files.reduce((s, x) => s + fs.statSync(x).size, 0)
  const qemu = create.find((c) => c.name.startsWith('qemu-img'))!
  const qemuSize = fileSize(qemu.file)
  const rows = create.map((c) => {
    const s = fileSize(c.file)
    return [c.name, fmt(c.run.seconds), fmt((size / MiB) / c.run.seconds, 0), ratio(c.run.seconds, qemu.run.seconds), fmt(s / MiB, 1), fmt((s / size) * 100, 1) + '%', ratio(s, qemuSize), String(Math.round(c.run.maxRssKiB / 1024))]
  })
  console.log(`\ncorpus: ${fmt(size / MiB, 0)} MiB ext4 from /usr/share and /usr/bin; ${os.availableParallelism()} cores; best of ${reps}\n`)
  console.log(table(['create', 'seconds', 'MiB/s', 'time vs qemu-img', 'output MiB', 'of input', 'size vs qcow2', 'peak RSS MiB'], rows))

  // Whole-image decode to a pipe drained by dd, both sides of the comparison the same.
  const sink = (fifo: string) => ['dd', `if=${fifo}`, 'of=/dev/null', 'bs=1M', 'status=none']
  const ex: Array<[string, Run]> = []
  ex.push(['vdev extract IMG - (128 KiB chunks)', await best(reps + 1, () => (warm(f('c.vdimg')), timed([process.execPath, VDEV, 'extract', f('c.vdimg'), '-'], {pipeTo: sink})))])
  ex.push(['vdev extract IMG FILE (sparse file)', await best(reps + 1, async () => {
    fs.rmSync(f('x.raw'), {force: true})
    warm(f('c.vdimg'))
    return timed([process.execPath, VDEV, 'extract', f('c.vdimg'), f('x.raw')])
  })])
  fs.rmSync(f('x.raw'), {force: true})
  ex.push(['zstd -d -c (one stream)', await best(reps + 1, () => (warm(f('c.zst')), timed(['zstd', '-q', '-d', '-c', f('c.zst')], {pipeTo: sink})))])
  ex.push(['qemu-img convert qcow2-zstd → raw FILE', await best(reps, async () => {
    fs.rmSync(f('q.raw'), {force: true})
    warm(f('c.qcow2'))
    return timed(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', f('c.qcow2'), f('q.raw')])
  })])
  fs.rmSync(f('q.raw'), {force: true})
  const zstdD = ex.find((e) => e[0].startsWith('zstd'))![1]
  console.log()
  console.log(table(['decode whole image', 'seconds', 'MiB/s', 'time vs zstd -d', 'peak RSS MiB'], ex.map(([n, r]) => [n, fmt(r.seconds), fmt(size / MiB / r.seconds, 0), ratio(r.seconds, zstdD.seconds), String(Math.round(r.maxRssKiB / 1024))])))
  const vc = create[0]
  console.log(`\ntargets: create ${ratio(vc.run.seconds, qemu.run.seconds)} of qemu-img's time (≤ 0.80x), ` +
    `output ${ratio(fileSize(vc.file), qemuSize)} of qcow2-zstd's (≤ 1.00x), extract ${ratio(ex[0][1].seconds, zstdD.seconds)} of zstd -d's time (≤ 1.00x)`)
  fs.rmSync(out, {recursive: true, force: true})
}

main().catch((err) => {
  console.error(`bench:create: ${err.message}`)
  process.exit(1)
})

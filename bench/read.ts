/**
 * npm run bench:read — reading an attached image, in one run against its peers, on the same ~1.5 GiB ext4
 * corpus (bench/corpus.ts):
 *   - vdev attach (FUSE + loop) of the VDIMG image, its requests read from /dev/fuse; of a copy of it with
 *     decode-ahead off (VDEV_DECODE_AHEAD=0: what reading ahead on the serving threads is worth); and, where the
 *     kernel has it (6.14+), of another copy over FUSE over io_uring (the fuse module's enable_uring set for
 *     that attach only, then restored; BENCH_URING=0 skips it),
 *   - ewfmount + loop and xmount + loop of the same data as E01 (ewfacquire, deflate fast; BENCH_EWF=0 skips them),
 *   - qemu-nbd serving the same data as qcow2 with zstd clusters (sequential: nbdcopy; random: fio's nbd engine),
 *   - zstd -d of the single stream (sequential only: no random access),
 *   - the raw file on a loop device (the limit).
 * BENCH_QUICK=1 measures the 128 KiB-chunk image (the default before) with random reads only.
 * vdev runs twice: the default image (64 KiB chunks, qcow2's cluster size) and one with 128 KiB chunks (the
 * default until 2026-12-02: what the smaller chunks cost and gain).
 * Each measurement runs cold (every cache dropped) and warm (the reader's input files read into the page
 * cache right before; the device's own cache dropped): the whole device sequentially with O_DIRECT 1 MiB
 * reads one at a time (dd) and with buffered reads (cat: the device's read-ahead), best of BENCH_SEQ_REPS (3);
 * random 4 KiB reads at queue depth 1 and 32 (fio, libaio, O_DIRECT, fixed time), best of BENCH_RANDOM_REPS (3)
 * rounds in which the readers take turns (one 10 s run each wandered by up to 2x here); the vdev servers' peak
 * resident memory, also for a large image (64 GiB, data in each of its 128 index groups, a bad sector every
 * 640 KiB: what grows with the image) under random reads and a 4 GiB sequential pass (BENCH_LARGE=0 skips it).
 * Targets (issue 14): sequential ≤ 0.6x the time of zstd -d, both ways, cold and warm; random QD1 and QD32
 * ≥ 1.5x qemu-nbd's IOPS; server memory under 150 MB whatever the image size.
 * Nothing here asserts: it prints a table and the targets with their measured ratios, and the load.
 */
import {spawn, spawnSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {ensureCorpus, CACHE} from './corpus'
import {best, dropCaches, fmt, MiB, markImage, stale, staleImage, table, timed, warm} from './lib'

const VDEV = path.resolve(__dirname, '..', '..', 'bin', 'run.js')
const OUT = path.join(CACHE, 'read')
const STATE = path.join(OUT, 'state')

function sh(argv: string[], what = argv.join(' '), env: NodeJS.ProcessEnv = {}): string {
  const r = spawnSync(argv[0], argv.slice(1), {encoding: 'utf8', env: {...process.env, ...env, VDEV_STATE_DIR: STATE}})
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${(r.stderr || r.stdout).trim().slice(-500)}`)
  return r.stdout
}

function quiet(argv: string[]): void {
  spawnSync(argv[0], argv.slice(1), {stdio: 'ignore', env: {...process.env, VDEV_STATE_DIR: STATE}})
}

/** Build `out` with argv unless it exists and is newer than the corpus. */
async function artifact(out: string, corpus: string, argv: string[]): Promise<void> {
  if (!(out.endsWith('.vdimg') ? staleImage(out, corpus) : stale(out, corpus))) return
  process.stderr.write(`building ${path.basename(out)}…\n`)
  fs.rmSync(out, {force: true})
  await timed(argv)
  if (out.endsWith('.vdimg')) markImage(out)
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

interface Target {
  name: string
  /** A block device to read, or an NBD URI. */
  device?: string
  uri?: string
  /** How direct I/O to the backing file ended up (loop devices). */
  note?: string
  /** The files the reader reads (read into the page cache for warm runs). */
  files: string[]
  /** Measured sequentially only. */
  seqOnly?: boolean
}

const VDEV_NAME = 'vdev attach (FUSE + loop)'
const NO_AHEAD = 'vdev attach, decode-ahead off'
const LARGER = 'vdev attach, 128 KiB chunks'
const URING = 'vdev attach, FUSE over io_uring'
const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring'
const QEMU = 'qemu-nbd (qcow2 zstd)'
const ZSTD = 'zstd -d (one stream)'

/** Put a read-only loop device with direct I/O over `file`; the kernel decides if direct I/O holds. */
function loopOver(file: string): {device: string; note: string} {
  const device = sh(['losetup', '-f', '--show', '-r', '--direct-io=on', file]).trim()
  const dio = fs.readFileSync(`/sys/block/${path.basename(device)}/loop/dio`, 'utf8').trim() === '1'
  return {device, note: dio ? 'loop dio' : 'loop buffered (dio refused)'}
}

/** Sequential runs per reader, best kept: cold reads hit this machine's virtual disk, whose speed wanders. */
const SEQ_REPS = Number(process.env.BENCH_SEQ_REPS ?? 3)
const RANDOM_REPS = Number(process.env.BENCH_RANDOM_REPS ?? 3)

/** fio random 4 KiB reads for a fixed time; IOPS. `target` is a block device or an NBD URI. */
function fioRandom(t: Target, qd: number, seconds: number, extra: string[] = []): number {
  const where = t.device ? [`--filename=${t.device}`, '--ioengine=libaio', '--direct=1'] : ['--ioengine=nbd', `--uri=${t.uri}`]
  const out = sh([
    'fio', '--name=rand', ...where, '--rw=randread', '--bs=4k', `--iodepth=${qd}`, '--time_based', `--runtime=${seconds}`,
    '--randrepeat=1', '--randseed=20260101', '--norandommap', '--output-format=json', ...extra,
  ], `fio on ${t.name}`)
  const j = JSON.parse(out.slice(out.indexOf('{'))) as {jobs: Array<{read: {iops: number}}>}
  return j.jobs[0].read.iops
}

function vmHwmMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) / 1024 : NaN
}

/**
 * A 64 GiB image whose size shows in the server's per-image structures: 4 KiB of random data every
 * 64 MiB (so each of the 128 index groups has a table, twice what the reader caches) and a bad sector
 * every 640 KiB (104857 bad ranges). The raw file is sparse; `vdev create` reads it once (minutes).
 */
async function largeImage(dir: string): Promise<{image: string; badRanges: number}> {
  const GiB = 1024 ** 3
  const size = 64 * GiB
  const raw = path.join(dir, 'large.raw')
  const map = path.join(dir, 'large.map')
  const image = path.join(dir, 'large.vdimg')
  const badStep = 640 * 1024
  const badRanges = Math.floor((size - 512 - 1) / badStep)
  if (!staleImage(image)) return {image, badRanges}
  process.stderr.write('building large.vdimg (64 GiB sparse source)…\n')
  const fd = fs.openSync(raw, 'w')
  try {
    fs.ftruncateSync(fd, size)
    let seed = 1
    const block = Buffer.alloc(4096)
    for (let at = 0; at < size; at += 64 << 20) {
      for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((seed = (seed * 1103515245 + 12345) >>> 0), i)
      fs.writeSync(fd, block, 0, block.length, at + 8192)
    }
  } finally {
    fs.closeSync(fd)
  }
  const lines = ['# bench:read large image: a bad sector every 640 KiB', '0x0 +']
  let at = 0
  for (let b = badStep; b + 512 < size; b += badStep) {
    lines.push(`0x${at.toString(16)} 0x${(b - at).toString(16)} +`, `0x${b.toString(16)} 0x200 -`)
    at = b + 512
  }
  lines.push(`0x${at.toString(16)} 0x${(size - at).toString(16)} +`)
  fs.writeFileSync(map, lines.join('\n') + '\n')
  await timed([process.execPath, VDEV, 'create', raw, `${image}.tmp`, '--mapfile', map])
  fs.renameSync(`${image}.tmp`, image)
  markImage(image)
  fs.rmSync(raw)
  return {image, badRanges}
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (attaches devices, drops caches)')
  const {raw} = await ensureCorpus()
  const size = fs.statSync(raw).size
  fs.mkdirSync(OUT, {recursive: true})
  const f = (n: string) => path.join(OUT, n)
  await artifact(f('corpus.vdimg'), raw, [process.execPath, VDEV, 'create', raw, f('corpus.vdimg')])
  // The default before 64 KiB: a 4 KiB random read decompresses up to twice as much.
  await artifact(f('corpus-128k.vdimg'), raw, [process.execPath, VDEV, 'create', '--chunk-size', '128K', raw, f('corpus-128k.vdimg')])
  if (process.env.BENCH_EWF !== '0') await artifact(f('corpus.E01'), raw, ['ewfacquire', '-u', '-q', '-c', 'deflate:fast', '-S', '7GiB', '-t', f('corpus'), raw])
  await artifact(f('corpus.qcow2'), raw, ['qemu-img', 'convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, f('corpus.qcow2')])
  await artifact(f('corpus.zst'), raw, ['zstd', '-q', '-3', '-T0', raw, '-o', f('corpus.zst')])
  const startLoad = os.loadavg().map((l) => fmt(l)).join(' ')
  const randomSeconds = Number(process.env.BENCH_RANDOM_SECONDS ?? 10)

  const targets: Target[] = []
  const cleanups: Array<() => void> = []
  let vdevPid = 0
  try {
    // vdev: the real CLI, a background server.
    const a = JSON.parse(sh([process.execPath, VDEV, 'attach', f('corpus.vdimg'), '--backend', 'fuse', '--json'], 'vdev attach', {VDEV_FUSE_URING: '0'})) as {device: string; pid: number}
    cleanups.push(() => quiet([process.execPath, VDEV, 'detach', '--all', '--force']))
    vdevPid = a.pid
    const dio = fs.readFileSync(`/sys/block/${path.basename(a.device)}/loop/dio`, 'utf8').trim() === '1'
    targets.push({name: VDEV_NAME, device: a.device, note: dio ? 'loop dio' : 'loop buffered', files: [f('corpus.vdimg')]})
    const a128 = JSON.parse(sh([process.execPath, VDEV, 'attach', f('corpus-128k.vdimg'), '--backend', 'fuse', '--json'], 'vdev attach')) as {device: string; pid: number}
    targets.push({name: LARGER, device: a128.device, note: 'loop dio', files: [f('corpus-128k.vdimg')]})

    if (process.env.BENCH_EWF !== '0') {
      // ewfmount (libewf's FUSE) + loop.
      const ewfMnt = f('mnt-ewf')
      fs.mkdirSync(ewfMnt, {recursive: true})
      quiet(['fusermount', '-u', ewfMnt])
      sh(['ewfmount', f('corpus.E01'), ewfMnt])
      cleanups.push(() => quiet(['fusermount', '-u', ewfMnt]))
      await waitFor(() => fs.existsSync(path.join(ewfMnt, 'ewf1')), 10_000, 'ewfmount')
      const ewf = loopOver(path.join(ewfMnt, 'ewf1'))
      cleanups.push(() => quiet(['losetup', '-d', ewf.device]))
      targets.push({name: 'ewfmount + loop (E01)', device: ewf.device, note: ewf.note, files: [f('corpus.E01')]})

      // xmount (ewf in, raw out) + loop.
      const xMnt = f('mnt-xmount')
      fs.mkdirSync(xMnt, {recursive: true})
      quiet(['fusermount', '-u', xMnt])
      sh(['xmount', '--in', 'ewf', f('corpus.E01'), '--out', 'raw', xMnt])
      cleanups.push(() => quiet(['fusermount', '-u', xMnt]))
      await waitFor(() => fs.readdirSync(xMnt).some((n) => n.endsWith('.dd')), 10_000, 'xmount')
      const xm = loopOver(path.join(xMnt, fs.readdirSync(xMnt).find((n) => n.endsWith('.dd'))!))
      cleanups.push(() => quiet(['losetup', '-d', xm.device]))
      targets.push({name: 'xmount + loop (E01)', device: xm.device, note: xm.note, files: [f('corpus.E01')]})
    }

    // qemu-nbd on qcow2 (zstd clusters), read over a Unix socket.
    const sock = f('qemu.sock')
    fs.rmSync(sock, {force: true})
    const qemu = spawn('qemu-nbd', ['-r', '-f', 'qcow2', '--persistent', '--shared=8', '--socket', sock, f('corpus.qcow2')], {stdio: 'ignore'})
    cleanups.push(() => qemu.kill('SIGKILL'))
    await waitFor(() => fs.existsSync(sock), 10_000, 'qemu-nbd')
    targets.push({name: QEMU, uri: `nbd+unix:///?socket=${sock}`, note: 'nbdcopy / fio nbd', files: [f('corpus.qcow2')]})

    // The raw file on loop: the limit.
    const rawLoop = loopOver(raw)
    cleanups.push(() => quiet(['losetup', '-d', rawLoop.device]))
    targets.push({name: 'raw file + loop (limit)', device: rawLoop.device, note: rawLoop.note, files: [raw]})

    // The same image under another name, attached with decode-ahead off: what decode-ahead is worth.
    const copy = f('corpus-copy.vdimg')
    if (stale(copy, f('corpus.vdimg'))) fs.copyFileSync(f('corpus.vdimg'), copy)
    const off = JSON.parse(sh([process.execPath, VDEV, 'attach', copy, '--backend', 'fuse', '--json'], 'vdev attach', {VDEV_DECODE_AHEAD: '0'})) as {device: string; pid: number}
    targets.splice(2, 0, {name: NO_AHEAD, device: off.device, note: 'loop dio', files: [copy], seqOnly: true})

    // Another copy over FUSE over io_uring: the module parameter is read at INIT, so set only for this attach.
    if (fs.existsSync(ENABLE_URING) && process.env.BENCH_URING !== '0') {
      const uringCopy = f('corpus-uring.vdimg')
      if (stale(uringCopy, f('corpus.vdimg'))) fs.copyFileSync(f('corpus.vdimg'), uringCopy)
      const was = fs.readFileSync(ENABLE_URING, 'utf8').trim()
      fs.writeFileSync(ENABLE_URING, 'Y')
      let u: {device: string; pid: number}
      try {
        u = JSON.parse(sh([process.execPath, VDEV, 'attach', uringCopy, '--backend', 'fuse', '--json'], 'vdev attach')) as {device: string; pid: number}
      } finally {
        fs.writeFileSync(ENABLE_URING, was)
      }
      targets.splice(1, 0, {name: URING, device: u.device, note: 'loop dio, io_uring', files: [uringCopy]})
    }

    const states = ['cold', 'warm'] as const
    type State = (typeof states)[number]
    /** Before each measurement: every cache dropped; warm: then the reader's input files read into the page cache. */
    const prepare = (files: string[], state: State): void => {
      dropCaches()
      if (state === 'warm') for (const file of files) warm(file)
    }
    const key = (name: string, what: string, state: State) => `${name}|${what}|${state}`
    const secs = new Map<string, number>()
    const measure = async (name: string, what: string, state: State, files: string[], argv: string[], pipeTo?: (fifo: string) => string[]) => {
      const r = await best(SEQ_REPS, async () => {
        prepare(files, state)
        return timed(argv, {pipeTo})
      })
      secs.set(key(name, what, state), r.seconds)
      process.stderr.write(`${name}: ${what} ${state} ${fmt(r.seconds)} s (${fmt(size / MiB / r.seconds, 0)} MiB/s)\n`)
    }
    // Cold and warm alternate per reader, so load that comes and goes hits both alike.
    for (const state of states) {
      await measure(ZSTD, 'direct', state, [f('corpus.zst')], ['zstd', '-d', '-q', '-c', f('corpus.zst')], (fifo) => ['dd', `if=${fifo}`, 'of=/dev/null', 'bs=1M', 'status=none'])
      for (const t of targets) {
        // BENCH_QUICK=1: the 128 KiB-chunk image only for random reads (where chunk size shows).
        if (process.env.BENCH_QUICK === '1' && t.name === LARGER) continue
        if (t.device) {
          await measure(t.name, 'direct', state, t.files, ['dd', `if=${t.device}`, 'of=/dev/null', 'bs=1M', 'iflag=direct'])
          await measure(t.name, 'cat', state, t.files, ['cat', t.device])
        } else await measure(t.name, 'direct', state, t.files, ['nbdcopy', '--no-extents', '--connections=1', t.uri!, 'null:'])
      }
    }
    // Best of RANDOM_REPS rounds, the readers taking turns within each, so load that comes and goes hits all alike.
    const rand = new Map<string, number>()
    for (let round = 1; round <= RANDOM_REPS; round++)
      for (const t of targets) {
        if (t.seqOnly) continue
        // Warm random reads only for vdev and qemu-nbd (the targets); the others cold, to keep the run short.
        for (const state of t.name === VDEV_NAME || t.name === URING || t.name === QEMU ? states : (['cold'] as const))
          for (const qd of [1, 32]) {
            prepare(t.files, state)
            const k = key(t.name, `qd${qd}`, state)
            const iops = fioRandom(t, qd, randomSeconds)
            rand.set(k, Math.max(rand.get(k) ?? 0, iops))
            process.stderr.write(`${t.name}: random QD${qd} ${state} ${fmt(iops, 0)} IOPS (round ${round})\n`)
          }
      }
    const hwm = vmHwmMiB(vdevPid)
    const hwm128 = vmHwmMiB(a128.pid)

    const cell = (m: Map<string, number>, name: string, what: string, state: State, d = 2) => (m.has(key(name, what, state)) ? fmt(m.get(key(name, what, state))!, d) : '-')
    const rows = [{name: ZSTD}, ...targets].map((t) => [
      t.name,
      ...states.flatMap((st) => [cell(secs, t.name, 'direct', st), cell(secs, t.name, 'cat', st)]),
      ...states.flatMap((st) => [cell(rand, t.name, 'qd1', st, 0), cell(rand, t.name, 'qd32', st, 0)]),
      'note' in t ? (t.note ?? '') : 'pipe to dd',
    ])
    console.log(`\ncorpus: ${fmt(size / MiB, 0)} MiB ext4 from /usr/share and /usr/bin; ${os.availableParallelism()} cores; ${os.release()}; ${new Date().toISOString()}`)
    console.log(
      `sequential: seconds for the whole device, best of ${SEQ_REPS}: "direct" = O_DIRECT 1 MiB reads one at a time (dd; qemu-nbd: nbdcopy, one connection), ` +
        `"cat" = buffered reads (the device's read-ahead); random: fio 4 KiB randread IOPS, ${randomSeconds} s each, best of ${RANDOM_REPS} rounds (the readers taking turns). ` +
        'cold = every cache dropped first; warm = the reader\'s input file(s) (the .vdimg, .zst, .qcow2, .E01, raw file) read into the page cache first, the device\'s cache dropped\n',
    )
    console.log(
      table(
        ['reader', 'direct s cold', 'cat s cold', 'direct s warm', 'cat s warm', 'QD1 cold', 'QD32 cold', 'QD1 warm', 'QD32 warm', 'path'],
        rows,
      ),
    )
    const check = (what: string, ratio: number, want: number, atMost: boolean) =>
      console.log(`target: ${what}: ${fmt(ratio)} (want ${atMost ? '<=' : '>='} ${fmt(want)}) — ${(atMost ? ratio <= want : ratio >= want) ? 'met' : 'NOT met'}`)
    console.log('')
    for (const st of states) {
      const z = secs.get(key(ZSTD, 'direct', st))!
      check(`sequential O_DIRECT 1 MiB, ${st}: vdev time / zstd -d time`, secs.get(key(VDEV_NAME, 'direct', st))! / z, 0.6, true)
      check(`sequential cat DEV, ${st}: vdev time / zstd -d time`, secs.get(key(VDEV_NAME, 'cat', st))! / z, 0.6, true)
      console.log(
        `  (decode-ahead off, same run: O_DIRECT ${fmt(secs.get(key(NO_AHEAD, 'direct', st))! / z)}, cat ${fmt(secs.get(key(NO_AHEAD, 'cat', st))! / z)}; ` +
          `raw file + loop, the limit: ${fmt(secs.get(key('raw file + loop (limit)', 'direct', st))! / z)}, ${fmt(secs.get(key('raw file + loop (limit)', 'cat', st))! / z)})`,
      )
    }
    for (const st of states)
      for (const qd of [1, 32]) {
        const q = rand.get(key(QEMU, `qd${qd}`, st))!
        check(`random 4 KiB QD${qd}, ${st}: vdev IOPS / qemu-nbd IOPS`, rand.get(key(VDEV_NAME, `qd${qd}`, st))! / q, 1.5, false)
        if (rand.has(key(URING, `qd${qd}`, st))) console.log(`  (FUSE over io_uring, same run: ${fmt(rand.get(key(URING, `qd${qd}`, st))! / q)})`)
      }
    for (const st of states)
      if (secs.has(key(URING, 'direct', st))) {
        const z = secs.get(key(ZSTD, 'direct', st))!
        console.log(`FUSE over io_uring, sequential ${st}: O_DIRECT ${fmt(secs.get(key(URING, 'direct', st))! / z)}, cat ${fmt(secs.get(key(URING, 'cat', st))! / z)} of zstd -d's time`)
      }
    console.log(
      `  (with 128 KiB chunks, the default before, cold: QD1 ${fmt(rand.get(key(LARGER, 'qd1', 'cold'))! / rand.get(key(QEMU, 'qd1', 'cold'))!)}, ` +
        `QD32 ${fmt(rand.get(key(LARGER, 'qd32', 'cold'))! / rand.get(key(QEMU, 'qd32', 'cold'))!)})`,
    )
    const memory = (what: string, mib: number) =>
      console.log(`target: vdev server peak memory (VmHWM), ${what}: ${fmt(mib, 0)} MiB (want < 143 MiB = 150 MB) — ${mib < 150e6 / MiB ? 'met' : 'NOT met'}`)
    memory('1.5 GiB corpus', hwm)
    memory('1.5 GiB corpus, 128 KiB chunks', hwm128)
    if (process.env.BENCH_LARGE !== '0') {
      const large = await largeImage(OUT)
      const l = JSON.parse(sh([process.execPath, VDEV, 'attach', large.image, '--backend', 'fuse', '--json'], 'vdev attach')) as {device: string; pid: number}
      // Reads of the bad sectors fail (EIO), as they should; fio counts them and goes on.
      const t: Target = {name: 'vdev attach, 64 GiB image', device: l.device, files: []}
      const iops = [32, 1].map((qd) => fioRandom(t, qd, randomSeconds, ['--continue_on_error=read']))
      // And a sequential pass over its first 4 GiB: decode-ahead's buffer is per device, whatever the image size.
      dropCaches()
      await timed(['dd', `if=${l.device}`, 'of=/dev/null', 'bs=1M', 'count=4096', 'iflag=direct'])
      memory(`64 GiB image, 128 index groups, ${large.badRanges} bad ranges, random reads (${iops.map((x) => fmt(x, 0)).join(' / ')} IOPS at QD32 / QD1) and 4 GiB sequential`, vmHwmMiB(l.pid))
    }
    console.log(`load average at the start: ${startLoad}`)
    console.log(`load average during the run: ${os.loadavg().map((l) => fmt(l)).join(' ')} (other work on this machine skews the numbers)`)
  } finally {
    for (const c of cleanups.reverse()) {
      try {
        c()
      } catch {
        // keep cleaning
      }
    }
  }
}

main().catch((err) => {
  console.error(`bench:read: ${(err as Error).message}`)
  quiet([process.execPath, VDEV, 'detach', '--all', '--force'])
  process.exit(1)
})

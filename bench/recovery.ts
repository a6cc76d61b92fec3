/**
 * npm run bench:recovery — vdev's recovery data (format 1.2, FORMAT.md §13) against par2 (par2cmdline) on
 * the same image file: the bench corpus as a plain vdev image (no recovery data), then
 *  - `vdev create --recovery N%` (the extra time over a plain create is what the parity costs) and
 *    `par2 create -r N -n1 -s S` of the plain image (S: 4 KiB, or the smallest multiple of it that keeps
 *    par2 within its 32768 source blocks);
 *  - the same damage to both (random 4 KiB blocks spread over the chunk data, and one consecutive run), then
 *    `vdev repair` and `par2 repair`, each checked byte for byte against the undamaged file.
 * Size overhead: the recovery section against par2's .par2 files; both as a share of the plain image.
 * BENCH_RECOVERY_PERCENT (default 5), BENCH_RUNS (default 1; each time is the best of the runs),
 * BENCH_RECOVERY_MIB (use only the corpus's first N MiB: par2 takes many minutes on the whole of it).
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {execFileSync} from 'node:child_process'
import {ensureCorpus} from './corpus'
import {best, fmt, MiB, ratio, table, timed, warm} from './lib'
import {openImage} from '../src/format/reader'
import {SectionType} from '../src/format/layout'
import {decodeRecoveryHeader, RECOVERY_HEADER_SIZE} from '../src/format/recovery'
import {tmpDir} from '../test/helpers'

const ROOT = path.resolve(__dirname, '..', '..')
const BIN = path.join(ROOT, 'bin', 'run.js')
const PERCENT = Number(process.env.BENCH_RECOVERY_PERCENT ?? 5)
const RUNS = Number(process.env.BENCH_RUNS ?? 1)

function sameFile(a: string, b: string): boolean {
  try {
    execFileSync('cmp', ['-s', a, b])
    return true
  } catch {
    return false
  }
}

async function main(): Promise<void> {
  const corpus = (await ensureCorpus()).raw
  const t = tmpDir('vdev-bench-recovery-')
  try {
    let raw = corpus
    const mib = Number(process.env.BENCH_RECOVERY_MIB ?? 0)
    if (mib > 0) {
      raw = path.join(t.dir, 'corpus-prefix.raw')
      const inFd = fs.openSync(corpus, 'r')
      const outFd = fs.openSync(raw, 'w')
      const buf = Buffer.alloc(MiB)
      for (let i = 0; i < mib; i++) {
        const n = fs.readSync(inFd, buf, 0, MiB, i * MiB)
        if (n <= 0) break
        fs.writeSync(outFd, buf, 0, n)
      }
      fs.closeSync(inFd)
      fs.closeSync(outFd)
    }
    const plain = path.join(t.dir, 'plain.vdimg')
    const withRec = path.join(t.dir, 'rec.vdimg')
    // The two creates alternate, best of max(3, RUNS) each: their difference is the parity's cost, smaller than the noise of one run here.
    let createPlain: Awaited<ReturnType<typeof timed>> | undefined
    let createRec: Awaited<ReturnType<typeof timed>> | undefined
    for (let i = 0; i < Math.max(3, RUNS); i++) {
      warm(raw)
      const a = await timed([process.execPath, BIN, 'create', raw, plain, '--force'])
      warm(raw)
      const b = await timed([process.execPath, BIN, 'create', raw, withRec, '--force', '--recovery', `${PERCENT}%`])
      if (!createPlain || a.seconds < createPlain.seconds) createPlain = a
      if (!createRec || b.seconds < createRec.seconds) createRec = b
    }
    if (!createPlain || !createRec) throw new Error('no create runs')
    const plainSize = fs.statSync(plain).size
    const img = await openImage(withRec)
    const sec = img.sections.find((s) => s.type === SectionType.Recovery)!
    await img.close()
    const head = Buffer.alloc(RECOVERY_HEADER_SIZE)
    const fd = fs.openSync(withRec, 'r')
    fs.readSync(fd, head, 0, RECOVERY_HEADER_SIZE, sec.offset)
    fs.closeSync(fd)
    const l = decodeRecoveryHeader(head, sec.offset, sec.length)
    const recBytes = fs.statSync(withRec).size - plainSize

    // par2 on the plain image, in its own directory.
    const parDir = path.join(t.dir, 'par2')
    fs.mkdirSync(parDir)
    const parFile = path.join(parDir, 'plain.vdimg')
    fs.copyFileSync(plain, parFile)
    let block = 4096
    while (Math.ceil(plainSize / block) > 32768) block += 4096
    warm(parFile)
    const par2Create = await best(RUNS, async () => {
      for (const f of fs.readdirSync(parDir)) if (f.endsWith('.par2')) fs.rmSync(path.join(parDir, f))
      return timed(['par2', 'create', '-q', `-r${PERCENT}`, '-n1', `-s${block}`, 'plain.par2', 'plain.vdimg'], {cwd: parDir})
    })
    const parBytes = fs.readdirSync(parDir).filter((f) => f.endsWith('.par2')).reduce((n, f) => n + fs.statSync(path.join(parDir, f)).size, 0)

    // The same damage to both: spread 4 KiB blocks and one run, within what each can repair.
    const regionBlocks = Math.floor((l.regionOffset + l.regionLength) / 4096)
    // Slices are aligned to 4 KiB blocks of the file (FORMAT.md §13.1): one damaged block, one slice. The
    // run costs each stripe at most 2 slices; the spread blocks fill stripes up to m − 2 at most, about half
    // of vdev's parity in all — and of par2's (its blocks are S bytes, each damaged 4 KiB block one of them).
    const run = Math.min(l.stripes * 2, 512)
    let seed = 12345
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n)
    const runAt = 1 + rnd(regionBlocks - run - 2)
    const per = new Map<number, number>()
    const blocks = new Set<number>()
    const want = Math.floor(Math.min(l.stripes * l.m, Math.floor(plainSize / block) * (PERCENT / 100)) * 0.5) - run
    for (let tries = 0; blocks.size < want && tries < want * 100; tries++) {
      const b = 1 + rnd(regionBlocks - 2)
      const st = b % l.stripes // the block's slice index is b (slices start at file offset 0)
      if ((b >= runAt && b < runAt + run) || blocks.has(b) || (per.get(st) ?? 0) >= l.m - 2) continue
      per.set(st, (per.get(st) ?? 0) + 1)
      blocks.add(b)
    }
    const damage = (file: string) => {
      const f = fs.openSync(file, 'r+')
      const junk = Buffer.alloc(4096, 0xe5)
      for (const b of blocks) fs.writeSync(f, junk, 0, 4096, b * 4096)
      for (let b = runAt; b < runAt + run; b++) fs.writeSync(f, junk, 0, 4096, b * 4096)
      fs.closeSync(f)
    }
    const damagedBytes = (blocks.size + run) * 4096

    const vdevBad = path.join(t.dir, 'rec-damaged.vdimg')
    const vdevFixed = path.join(t.dir, 'rec-fixed.vdimg')
    const vdevRepair = await best(RUNS, async () => {
      fs.copyFileSync(withRec, vdevBad)
      damage(vdevBad)
      fs.rmSync(vdevFixed, {force: true})
      warm(vdevBad)
      return timed([process.execPath, BIN, 'repair', vdevBad, '--out', vdevFixed])
    })
    const vdevOk = sameFile(vdevFixed, withRec)
    const par2Repair = await best(RUNS, async () => {
      fs.copyFileSync(plain, parFile)
      damage(parFile)
      for (const f of fs.readdirSync(parDir)) if (/\.vdimg\.\d+$/.test(f)) fs.rmSync(path.join(parDir, f))
      warm(parFile)
      return timed(['par2', 'repair', '-q', 'plain.par2'], {cwd: parDir})
    })
    const parOk = sameFile(parFile, plain)

    const extra = createRec.seconds - createPlain.seconds
    console.log(`bench:recovery — the bench corpus${mib > 0 ? `'s first ${mib} MiB` : ''} (${fmt(plainSize / MiB, 1)} MiB as a plain vdev image), ${PERCENT}% recovery data`)
    console.log(
      `vdev: stripes of ${l.k} data + ${l.m} parity slices of ${l.sliceSize} bytes, ${l.stripes} stripes; par2: ${Math.ceil(plainSize / block)} source blocks of ${block} bytes`,
    )
    console.log(`damage: ${blocks.size} random 4 KiB blocks + a run of ${run} (${fmt(damagedBytes / MiB, 1)} MiB)`)
    console.log()
    console.log(
      table(
        ['tool', 'recovery MiB', 'share of the image', 'create s (parity only)', 'vs par2', 'repair s', 'vs par2', 'repaired exactly', 'peak RSS MiB (create / repair)'],
        [
          [
            `vdev create --recovery ${PERCENT}% / vdev repair`,
            fmt(recBytes / MiB, 1),
            `${fmt((recBytes / plainSize) * 100, 2)}%`,
            `${fmt(createRec.seconds, 1)} (${fmt(extra, 1)} over ${fmt(createPlain.seconds, 1)})`,
            ratio(extra, par2Create.seconds),
            fmt(vdevRepair.seconds, 1),
            ratio(vdevRepair.seconds, par2Repair.seconds),
            vdevOk ? 'yes' : 'NO',
            `${Math.round(createRec.maxRssKiB / 1024)} / ${Math.round(vdevRepair.maxRssKiB / 1024)}`,
          ],
          [
            `par2 create -r${PERCENT} -s${block} / par2 repair`,
            fmt(parBytes / MiB, 1),
            `${fmt((parBytes / plainSize) * 100, 2)}%`,
            fmt(par2Create.seconds, 1),
            '1.00x',
            fmt(par2Repair.seconds, 1),
            '1.00x',
            parOk ? 'yes' : 'NO',
            `${Math.round(par2Create.maxRssKiB / 1024)} / ${Math.round(par2Repair.maxRssKiB / 1024)}`,
          ],
        ],
      ),
    )
  } finally {
    t.cleanup()
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})

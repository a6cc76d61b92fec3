/**
 * Target "recovery": images with recovery data (format 1.2, FORMAT.md §13), mutated where the recovery
 * code reads — the recovery header's fields (with its own CRC recomputed, in one place or both, so the
 * parser behind it is reached), the CRC table, parity slices, the section's table entry, chunk data — with
 * the section checksums recomputed in half the cases, then verified (verify, the repairability assessment)
 * and repaired to a separate file.
 *
 * The contract checked:
 *  - every failure is a VdevError of a code for damaged input (format, unsupported) with a one-line message
 *    naming the file; never another exception (the CLI's exit 1);
 *  - repair leaves no temporary file, never writes over its input when given --out, and what it calls
 *    repaired verifies intact;
 *  - damage confined to chunk data, at most m slices in every stripe, with the recovery data untouched, is
 *    repaired to the original byte for byte — and verify said it was repairable;
 *  - on the CLI slice, `vdev repair` exits 0, 4 or 5 with one stderr line when it fails.
 */
import {spawnSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {VdevError} from '../../src/core/errors'
import {crc32c} from '../../src/format/crc'
import {openInput} from '../../src/format/input'
import {SectionType} from '../../src/format/layout'
import {openImage} from '../../src/format/reader'
import {RECOVERY_HEADER_SIZE, dataSlices, decodeRecoveryHeader, sliceOrigin, type RecoveryLayout} from '../../src/format/recovery'
import {assessRepair, repairImage} from '../../src/format/repair'
import {verifyImage} from '../../src/format/verify'
import {createImage} from '../../src/format/writer'
import {normalize, ROOT, workDir, type CaseContext, type CaseResult, type Target} from '../harness'
import {FIX_NONE, fixChecksums} from '../image/structure'
import type {Rng} from '../rng'

interface Base {
  name: string
  bytes: Buffer
  at: number
  layout: RecoveryLayout
}

/** Recovery header fields: [name, offset, width]. */
const FIELDS: Array<[string, number, 2 | 4 | 8]> = [
  ['slice_size', 8, 4],
  ['field', 12, 2],
  ['k', 14, 2],
  ['m', 16, 2],
  ['reserved', 18, 2],
  ['stripes', 20, 4],
  ['region_offset', 24, 8],
  ['region_length', 32, 8],
  ['parity_offset', 40, 8],
  ['reserved48', 48, 8],
]

function value(rng: Rng, width: number, cur: bigint): bigint {
  const max = (1n << BigInt(width * 8)) - 1n
  const v = rng.pick([0n, 1n, 2n, 255n, 256n, 4096n, 65535n, 65536n, 0xffffffffn, 1n << 53n, (1n << 53n) - 1n, max, cur + 1n, cur - 1n, cur * 2n, cur / 2n, rng.u64()])
  return ((v % (max + 1n)) + (max + 1n)) % (max + 1n)
}

function writeField(b: Buffer, at: number, width: number, v: bigint): void {
  if (width === 2) b.writeUInt16LE(Number(v & 0xffffn), at)
  else if (width === 4) b.writeUInt32LE(Number(v & 0xffffffffn), at)
  else b.writeBigUInt64LE(v, at)
}

function readField(b: Buffer, at: number, width: number): bigint {
  return width === 2 ? BigInt(b.readUInt16LE(at)) : width === 4 ? BigInt(b.readUInt32LE(at)) : b.readBigUInt64LE(at)
}

async function buildBases(dir: string): Promise<Base[]> {
  const out: Base[] = []
  const src = path.join(dir, 'src.raw')
  const data = Buffer.alloc(320 << 10)
  for (let i = 0; i < data.length; i++) data[i] = i % 7 === 0 ? (i * 2654435761) >>> 24 : i < 100000 ? (i * 31) & 0xff : 0
  fs.writeFileSync(src, data)
  for (const [name, recovery, slice] of [
    ['ten', 10, 4096],
    ['small-slices', 3, 512],
  ] as const) {
    const file = path.join(dir, `${name}.vdimg`)
    const input = openInput(src)
    try {
      await createImage(input, file, {chunkSize: 4096, l2Entries: 256, recovery, recoverySliceSize: slice, threads: 1})
    } finally {
      await input.close()
    }
    const img = await openImage(file)
    const sec = img.sections.find((s) => s.type === SectionType.Recovery)!
    await img.close()
    const bytes = fs.readFileSync(file)
    out.push({name, bytes, at: sec.offset, layout: decodeRecoveryHeader(bytes.subarray(sec.offset, sec.offset + RECOVERY_HEADER_SIZE), sec.offset, sec.length)})
  }
  return out
}

export const recoveryTarget: Target = {
  name: 'recovery',
  caseTimeoutMs: 60_000,
  async setup() {
    const dir = workDir('vdev-fuzz-recovery-')
    const bases = await buildBases(dir)
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const rng = ctx.rng
        const base = rng.pick(bases)
        const b = Buffer.from(base.bytes)
        const l = base.layout
        const steps: string[] = [`base ${base.name}`]
        // Mode "exact": only chunk bytes, within every stripe's parity — repair must give the original back.
        const exact = rng.chance(0.3)
        if (exact) {
          const per = new Map<number, number>()
          const n = rng.range(1, l.stripes * l.m)
          for (let t = 0; t < n; t++) {
            const i = rng.int(dataSlices(l))
            const s = i % l.stripes
            if ((per.get(s) ?? 0) >= l.m) continue
            per.set(s, (per.get(s) ?? 0) + 1)
            // A byte of slice i that lies in the region.
            const from = Math.max(l.regionOffset, sliceOrigin(l) + i * l.sliceSize)
            const to = Math.min(l.regionOffset + l.regionLength, sliceOrigin(l) + (i + 1) * l.sliceSize)
            const at = from + rng.int(to - from)
            b[at] ^= 1 + rng.int(255)
            steps.push(`flip byte ${at} (slice ${i}, stripe ${s})`)
          }
        } else {
          const n = rng.range(1, 4)
          for (let t = 0; t < n; t++) {
            const op = rng.pick(['field', 'field', 'field', 'crc-table', 'parity', 'data', 'entry', 'block', 'truncate'])
            if (op === 'field') {
              const [name, off, width] = rng.pick(FIELDS)
              const where = rng.chance(0.7) ? [base.at] : [base.at, base.at + l.length - RECOVERY_HEADER_SIZE]
              const v = value(rng, width, readField(b, base.at + off, width))
              for (const h of where) {
                writeField(b, h + off, width, v)
                if (rng.chance(0.8)) b.writeUInt32LE(crc32c(b.subarray(h, h + 60)), h + 60)
              }
              steps.push(`recovery header ${name} = ${v} in ${where.length} place(s)`)
            } else if (op === 'crc-table') {
              const at = base.at + RECOVERY_HEADER_SIZE + rng.int(Math.max(1, l.parityOffset - RECOVERY_HEADER_SIZE))
              b[at] ^= 0xff
              steps.push(`crc table byte ${at}`)
            } else if (op === 'parity') {
              const at = base.at + l.parityOffset + rng.int(l.stripes * l.m * l.sliceSize)
              b.fill(rng.int(256), at, Math.min(at + rng.pick([1, 100, 4096]), b.length))
              steps.push(`parity at ${at}`)
            } else if (op === 'data') {
              const at = l.regionOffset + rng.int(l.regionLength)
              b.fill(rng.int(256), at, Math.min(at + rng.pick([1, 512, 4096, 20000]), b.length))
              steps.push(`data at ${at}`)
            } else if (op === 'entry') {
              // The section table entry of type 8: offset or length (both tables).
              const tableAt = Number(b.readBigUInt64LE(48))
              const count = b.readUInt32LE(56)
              for (let e = 0; e < count; e++) {
                if (b.readUInt32LE(tableAt + e * 32) !== SectionType.Recovery) continue
                const field = rng.pick([8, 16])
                const v = value(rng, 8, b.readBigUInt64LE(tableAt + e * 32 + field))
                b.writeBigUInt64LE(v, tableAt + e * 32 + field)
                steps.push(`recovery entry +${field} = ${v}`)
              }
            } else if (op === 'block') {
              const at = Math.floor(rng.int(b.length) / 4096) * 4096
              b.fill(0xee, at, Math.min(at + 4096, b.length))
              steps.push(`block at ${at}`)
            } else {
              const cut = rng.range(b.length - 20000, b.length)
              steps.push(`truncate to ${cut}`)
              const short = b.subarray(0, cut)
              b.fill(0, cut)
              return run(short)
            }
          }
          if (rng.chance(0.5)) {
            fixChecksums(b, {...FIX_NONE, sections: true, table: true, header: true, mirror: true}, new Set())
            steps.push('checksums recomputed')
          }
        }
        return run(b)

        async function run(bytes: Buffer): Promise<CaseResult> {
          const failures: string[] = []
          const file = path.join(dir, `case.vdimg`)
          const out = path.join(dir, `case-fixed.vdimg`)
          fs.rmSync(out, {force: true})
          fs.writeFileSync(file, bytes)
          let outcome = ''
          const fail = (where: string, err: unknown) => {
            if (!(err instanceof VdevError)) {
              failures.push(`${where}: threw ${(err as Error)?.name}: ${String((err as Error)?.message).split('\n')[0]} — not a VdevError`)
              return `${where}:internal`
            }
            if (!['format', 'unsupported'].includes(err.code)) failures.push(`${where}: error code '${err.code}' for a damaged image: ${err.message}`)
            if (err.message.includes('\n')) failures.push(`${where}: the message is not one line`)
            // Repair names its output for what it finds there after repairing (--out), its input otherwise.
            if (!err.message.includes(file) && !(where === 'repair' && err.message.includes(out))) failures.push(`${where}: the message does not name the file: ${err.message}`)
            return `${where}:${err.code}:${normalize(err.message.split(file).join('FILE').split(out).join('OUT'), 80)}`
          }
          let repairable: boolean | undefined
          try {
            const img = await openImage(file)
            try {
              const v = await verifyImage(img, {quick: true, threads: 1})
              if (!v.ok) repairable = (await assessRepair(img)).repairable
              outcome = v.ok ? 'verify:ok' : `verify:damaged:${repairable ? 'repairable' : 'not'}`
            } finally {
              await img.close()
            }
          } catch (err) {
            outcome = fail('verify', err)
          }
          try {
            const r = await repairImage(file, {out, threads: 1})
            outcome += r.repaired ? ' repair:ok' : ' repair:partial'
            if (!fs.readFileSync(file).equals(bytes)) failures.push('repair --out changed its input')
            if (r.repaired) {
              const img = await openImage(out)
              try {
                const v = await verifyImage(img, {quick: true, threads: 1})
                if (!v.ok) failures.push(`repair said repaired, verify of its output finds: ${v.damaged[0]?.why}`)
              } finally {
                await img.close()
              }
            }
            if (exact) {
              if (repairable !== true) failures.push('verify did not call damage within the parity repairable')
              if (!r.repaired || !fs.readFileSync(out).equals(base.bytes)) failures.push('damage within the parity was not repaired to the original')
            }
          } catch (err) {
            outcome += ' ' + fail('repair', err)
            if (exact) failures.push(`damage within the parity: repair failed: ${(err as Error).message}`)
          }
          const temps = fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'))
          if (temps.length) failures.push(`temporary files left: ${temps.join(', ')}`)
          if (ctx.cli) {
            const cli = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'repair', file, '--out', out, '--force'], {encoding: 'utf8', timeout: 60_000})
            if (![0, 4, 5].includes(cli.status ?? -1)) failures.push(`vdev repair exited ${cli.status}: ${cli.stderr.slice(0, 300)}`)
            if (cli.status !== 0 && cli.stderr.trim().split('\n').length !== 1) failures.push(`vdev repair printed ${cli.stderr.trim().split('\n').length} lines on stderr`)
            if (/\n\s+at /.test(cli.stderr)) failures.push('vdev repair printed a stack trace')
          }
          return {outcome, failures, input: {ext: 'vdimg', data: bytes}, steps}
        }
      },
      async close() {
        fs.rmSync(dir, {recursive: true, force: true})
      },
    }
  },
}

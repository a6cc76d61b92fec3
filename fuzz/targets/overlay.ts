/**
 * Target "overlay": copy-on-write overlay files (docs/OVERLAY.md) written by the layer itself, then mutated:
 * bytes flipped anywhere, the file cut or extended with garbage, header and record fields set to limits
 * (sizes past 2^53, unknown types and versions, lengths past the file, sequence gaps) with their CRCs fixed
 * up so that the checks behind them are reached.
 *
 * The contract: inspectOverlay and Overlay.open either throw a VdevError (format, unsupported, usage or io)
 * with a one-line message, or give an overlay whose extents are sorted, disjoint and inside the image, and
 * whose reads never fail and return the base outside those extents. Opening for writing leaves no ignored
 * tail behind. Compaction (of a copy) gives the same extents and no tail, or a one-line error with the file
 * untouched. With a CLI slice, `vdev overlay info` exits 0, 2, 3 or 4 with at most one line on stderr.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {VdevError} from '../../src/core/errors'
import {crc32c} from '../../src/format/crc'
import {HEADER_SIZE, Overlay, RECORD_HEADER_SIZE, RECORD_MAGIC, inspectOverlay} from '../../src/layers/overlay'
import {compactOverlay} from '../../src/layers/overlay-compact'
import {RawImage} from '../../src/sources/raw'
import type {Rng} from '../rng'
import {normalize, workDir, type CaseContext, type CaseResult, type Target} from '../harness'

const SIZE = 64 * 1024
const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'run.js')
const LIMITS = [0n, 1n, 511n, 512n, 4096n, BigInt(SIZE), BigInt(SIZE) + 512n, 2n ** 31n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n]

/** Offsets of the record headers in a well-formed log. */
function recordOffsets(b: Buffer): number[] {
  const out: number[] = []
  let at = HEADER_SIZE
  while (at + RECORD_HEADER_SIZE <= b.length && b.readUInt32LE(at) === RECORD_MAGIC) {
    out.push(at)
    const type = b.readUInt16LE(at + 4)
    at += RECORD_HEADER_SIZE + (type === 1 ? Number(b.readBigUInt64LE(at + 24)) : 0)
  }
  return out
}

function mutate(rng: Rng, b: Buffer, steps: string[]): Buffer {
  const recs = recordOffsets(b)
  const op = rng.pick(['flip', 'flip', 'cut', 'extend', 'header-field', 'record-field', 'record-field', 'record-field', 'copy-record'])
  steps.push(op)
  switch (op) {
    case 'flip': {
      const at = rng.int(b.length)
      b[at] ^= 1 << rng.int(8)
      return b
    }
    case 'cut':
      return b.subarray(0, rng.int(b.length + 1))
    case 'extend':
      return Buffer.concat([b, rng.bytes(rng.pick([1, 63, 64, 100, 4096]))])
    case 'header-field': {
      if (b.length < HEADER_SIZE) return b
      const field = rng.pick([8, 12, 16, 24, 28])
      if (field === 16) b.writeBigUInt64LE(rng.pick(LIMITS) & (2n ** 64n - 1n), 16)
      else if (field === 8) b.writeUInt16LE(rng.pick([0, 2, 0xffff]), 8)
      else b.writeUInt32LE(rng.pick([0, 1, 2, 3, 256, 1024, 8192, 0xffffffff]), field)
      b.writeUInt32LE(crc32c(b.subarray(0, HEADER_SIZE - 4)), HEADER_SIZE - 4)
      return b
    }
    case 'record-field': {
      if (!recs.length) return b
      const at = rng.pick(recs)
      const field = rng.pick([4, 8, 16, 24, 48])
      if (field === 4) b.writeUInt16LE(rng.pick([0, 1, 2, 3, 4, 0xffff]), at + 4)
      else if (field === 48) b.writeUInt32LE(rng.int(2 ** 32), at + 48)
      else b.writeBigUInt64LE(rng.pick(LIMITS), at + field)
      b.writeUInt32LE(crc32c(b.subarray(at, at + 60)), at + 60)
      return b
    }
    case 'copy-record': {
      // A record repeated at the end: its sequence number no longer follows.
      if (!recs.length) return b
      const at = rng.pick(recs)
      return Buffer.concat([b, b.subarray(at, at + RECORD_HEADER_SIZE + rng.int(4096))])
    }
  }
  return b
}

function checkError(err: unknown, f: string[]): string {
  if (!(err instanceof VdevError)) {
    f.push(`threw ${(err as Error)?.name}: ${(err as Error)?.message} — not a VdevError`)
    return `threw:${(err as Error)?.name}`
  }
  if (!['format', 'unsupported', 'usage', 'io'].includes(err.code)) f.push(`error code '${err.code}': ${err.message}`)
  if (/[\r\n]/.test(err.message)) f.push(`the message is not one line: ${JSON.stringify(err.message.slice(0, 200))}`)
  return `${err.code}:${normalize(err.message.replace(/^[^:]*: /, ''), 60)}`
}

function checkExtents(list: Array<{offset: number; length: number}>, size: number, f: string[]): void {
  let prev = 0
  for (const e of list) {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.length <= 0) f.push(`extent ${JSON.stringify(e)} is not exact and non-empty`)
    if (e.offset < prev) f.push(`extent at ${e.offset} is out of order or overlaps`)
    if (e.offset + e.length > size) f.push(`extent ${JSON.stringify(e)} ends past the image (${size})`)
    prev = e.offset + e.length
  }
}

export const overlayTarget: Target = {
  name: 'overlay',
  caseTimeoutMs: 15_000,
  async setup() {
    const dir = workDir('vdev-fuzz-overlay-')
    const raw = path.join(dir, 'base.img')
    const baseBytes = Buffer.alloc(SIZE)
    for (let i = 0; i < SIZE; i++) baseBytes[i] = (i * 7 + (i >> 9)) & 0xff
    fs.writeFileSync(raw, baseBytes)
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const rng = ctx.rng
        const file = path.join(dir, 'o.vdovl')
        fs.rmSync(file, {force: true})
        const steps: string[] = []
        // A real overlay: a few writes, zeroes and discards at any alignment.
        const o = await Overlay.open(RawImage.open(raw, {}), file)
        for (let k = rng.int(6); k > 0; k--) {
          const at = rng.int(SIZE)
          const len = 1 + rng.int(Math.min(SIZE - at, rng.pick([1, 512, 4096, 20000])))
          const what = rng.pick(['write', 'write', 'zero', 'trim'])
          if (what === 'write') await o.write(at, rng.bytes(len))
          else if (what === 'zero') await o.zero(at, len)
          else await o.trim(at, len)
          steps.push(`${what} ${at}+${len}`)
        }
        await o.close()
        let b: Buffer = fs.readFileSync(file)
        for (let k = rng.pick([1, 1, 2, 3]); k > 0; k--) b = mutate(rng, Buffer.from(b), steps)
        fs.writeFileSync(file, b)
        const f: string[] = []
        const parts: string[] = []
        let extents: string | undefined
        try {
          const info = inspectOverlay(file)
          checkExtents(info.extents, info.size, f)
          extents = JSON.stringify(info.extents)
          parts.push(`info:ok:${info.records > 0 ? 'records' : 'empty'}${info.discardedBytes ? ':tail' : ''}`)
        } catch (err) {
          parts.push(`info:${checkError(err, f)}`)
        }
        // Compaction of a copy: the same extents, no tail — or a one-line error and the copy untouched.
        const copy = path.join(dir, 'c.vdovl')
        fs.writeFileSync(copy, b)
        try {
          compactOverlay(copy)
          const after = inspectOverlay(copy)
          if (after.discardedBytes !== 0) f.push('compaction left an ignored tail')
          if (extents !== undefined && JSON.stringify(after.extents) !== extents) f.push('compaction changed the extents')
          if (extents === undefined) f.push('compaction accepted an overlay inspectOverlay refuses')
          parts.push('compact:ok')
        } catch (err) {
          parts.push(`compact:${checkError(err, f)}`)
          if (!fs.readFileSync(copy).equals(b)) f.push('a failed compaction changed the file')
        }
        try {
          const ov = await Overlay.open(RawImage.open(raw, {}), file)
          try {
            const r = await ov.read(0, SIZE)
            if (r.data.length !== SIZE) f.push(`read gave ${r.data.length} bytes`)
            const mine = ov.map.entries
            checkExtents(mine.map((e) => ({offset: e.start, length: e.end - e.start})), SIZE, f)
            let at = 0
            for (const e of [...mine, {start: SIZE, end: SIZE}]) {
              if (!r.data.subarray(at, e.start).equals(baseBytes.subarray(at, e.start))) f.push(`bytes ${at}–${e.start} outside the overlay differ from the base`)
              at = e.end
            }
          } finally {
            await ov.close()
          }
          if (inspectOverlay(file).discardedBytes !== 0) f.push('opened for writing, but an ignored tail is left in the file')
          parts.push('open:ok')
        } catch (err) {
          parts.push(`open:${checkError(err, f)}`)
        }
        if (ctx.cli) {
          const r = spawnSync(process.execPath, [BIN, 'overlay', 'info', file], {encoding: 'utf8', timeout: 20_000})
          if (![0, 2, 3, 4].includes(r.status ?? -1)) f.push(`vdev overlay info exited ${r.status ?? r.signal}: ${r.stderr.slice(0, 300)}`)
          if (r.stderr.trim().split('\n').length > 1) f.push(`vdev overlay info wrote more than one line on stderr: ${r.stderr.slice(0, 300)}`)
          parts.push(`cli:${r.status}`)
        }
        return {outcome: parts.join(' '), failures: f, input: {ext: 'vdovl', data: b}, steps}
      },
      async close() {
        fs.rmSync(dir, {recursive: true, force: true})
      },
    }
  },
}

/**
 * The measure of issue 12 §2 ("no single point of failure"), shared by the fast sweep in npm test
 * (block-damage.test.ts), the device test (test/fuse/block-damage.test.ts) and the long run
 * (bench/block-damage.ts): overwrite any one aligned 4 KiB block of an image file; every chunk whose stored
 * bytes do not touch that block still reads exactly, and verify names exactly the chunks that do.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import {VdevError} from '../../src/core/errors'
import {extractImage} from '../../src/format/extract'
import {HEADER_SIZE, L1_ENTRY_SIZE, SECTION_ENTRY_SIZE, SectionType} from '../../src/format/layout'
import {openImage} from '../../src/format/reader'
import {verifyImage} from '../../src/format/verify'
import * as path from 'node:path'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {parseMapfile} from '../../src/format/mapfile'
import {prng, textish} from '../helpers'

export const BLOCK = 4096

export interface Range {
  offset: number
  length: number
}

/** Where everything of a valid image lies: each chunk's stored bytes, and every structure (both copies). */
export interface StoredMap {
  fileSize: number
  chunkSize: number
  chunkCount: number
  size: number
  /** Stored bytes of each chunk (length 0: nothing stored). */
  chunks: Range[]
  structures: Array<Range & {what: string}>
}

/** Map a valid image, from its header, section table and index (the copies' places by FORMAT.md §12's rule). */
export async function storedMap(file: string): Promise<StoredMap> {
  const img = await openImage(file)
  try {
    assert.deepEqual(img.warnings, [])
    const h = img.header
    const structures: StoredMap['structures'] = [{what: 'header', offset: 0, length: HEADER_SIZE}]
    structures.push({what: 'section table', offset: h.sectionTableOffset, length: h.sectionCount * SECTION_ENTRY_SIZE})
    if (h.copyTableOffset) {
      structures.push({what: 'section table copy', offset: h.copyTableOffset, length: h.sectionCount * SECTION_ENTRY_SIZE})
      structures.push({what: 'header copy', offset: h.trailerOffset, length: HEADER_SIZE})
    }
    for (const s of img.sections) structures.push({what: `section ${s.type}`, offset: s.offset, length: s.length})
    const tablesCopy = img.sections.find((s) => s.type === SectionType.IndexTablesCopy)
    let copyAt = tablesCopy?.offset ?? 0
    for (let g = 0; g < img.l1.length / L1_ENTRY_SIZE; g++) {
      const offset = Number(img.l1.readBigUInt64LE(g * L1_ENTRY_SIZE))
      const length = img.l1.readUInt32LE(g * L1_ENTRY_SIZE + 8)
      if (!offset) continue
      structures.push({what: `index table ${g}`, offset, length})
      if (tablesCopy) {
        structures.push({what: `index table ${g} copy`, offset: copyAt, length})
        copyAt += length
      }
    }
    const chunks: Range[] = []
    for (let i = 0; i < img.chunkCount; i++) {
      const e = await img.entry(i)
      chunks.push({offset: e.offset, length: e.storedLength})
    }
    return {fileSize: img.fileSize, chunkSize: img.chunkSize, chunkCount: img.chunkCount, size: img.size, chunks, structures}
  } finally {
    await img.close()
  }
}

export const touches = (r: Range, block: number): boolean => r.length > 0 && r.offset < (block + 1) * BLOCK && r.offset + r.length > block * BLOCK

/** The chunks whose stored bytes touch `block`. */
export function chunksIn(map: StoredMap, block: number): number[] {
  const out: number[] = []
  map.chunks.forEach((c, i) => {
    if (touches(c, block)) out.push(i)
  })
  return out
}

/** `good` with aligned block `block` overwritten by other bytes (only the bytes the file has), written to `out`. */
export function damageBlock(good: Buffer, block: number, out: string): void {
  const b = Buffer.from(good)
  const from = block * BLOCK
  const to = Math.min(b.length, from + BLOCK)
  const junk = prng(0xdead + block, to - from)
  // Never leave a byte as it was (prng could match by chance): the damage must be real everywhere.
  for (let k = 0; k < junk.length; k++) if (junk[k] === b[from + k]) junk[k] ^= 0xff
  junk.copy(b, from)
  fs.writeFileSync(out, b)
}

/**
 * Check the damaged file through the reader (asynchronous and serving paths), verify and extract: exactly
 * the chunks `lost` fail; every other chunk reads as `expected` (the good image's decoded bytes).
 */
export async function checkDamaged(file: string, map: StoredMap, block: number, expected: Buffer, scratch: string): Promise<void> {
  const lost = new Set(chunksIn(map, block))
  const hitsSomething = lost.size > 0 || map.structures.some((s) => touches(s, block))
  const ctx = `block ${block} (bytes ${block * BLOCK}-${(block + 1) * BLOCK - 1})`
  const img = await openImage(file, {onWarning: () => undefined})
  try {
    const v = await verifyImage(img, {threads: 1, quick: true})
    const named = new Set<number>()
    for (const d of v.damaged) for (let c = d.chunk; c >= 0 && c < d.chunk + d.chunks; c++) named.add(c)
    assert.deepEqual([...named].sort((a, b) => a - b), [...lost].sort((a, b) => a - b), `${ctx}: verify names exactly the damaged chunks`)
    assert.equal(v.failedChunks, lost.size, ctx)
    // Damage to a structure that loses no chunk is still listed (a copy, or an original read from its copy).
    assert.equal(v.ok, !hitsSomething, `${ctx}: verify ${v.ok ? 'passed' : 'failed'}: ${v.damaged.map((d) => d.why).join(' | ')}`)
    // Reads (the asynchronous path; extract below reads every chunk through it too): a lost chunk fails.
    for (const i of lost) {
      const from = i * map.chunkSize
      const len = Math.min(map.chunkSize, map.size - from)
      await assert.rejects(img.read(from, len), (err: unknown) => err instanceof VdevError && err.code === 'format', `${ctx}: chunk ${i} must fail`)
    }
    const out = `${scratch}/extract.raw`
    fs.rmSync(out, {force: true})
    const r = await extractImage(img, out, {threads: 1})
    assert.equal(r.damagedChunks, lost.size, ctx)
    const x = fs.readFileSync(out)
    assert.equal(x.length, map.size)
    for (let i = 0; i < map.chunkCount; i++) {
      const from = i * map.chunkSize
      const len = Math.min(map.chunkSize, map.size - from)
      const want = lost.has(i) ? Buffer.alloc(len) : expected.subarray(from, from + len)
      assert.ok(x.subarray(from, from + len).equals(want), `${ctx}: extract wrote wrong bytes for chunk ${i}`)
    }
  } finally {
    await img.close()
  }
  // The serving path: synchronous reads, as a serving thread makes them.
  const s = await openImage(file, {sync: true, onWarning: () => undefined})
  try {
    for (let i = 0; i < map.chunkCount; i++) {
      const from = i * map.chunkSize
      const len = Math.min(map.chunkSize, map.size - from)
      if (lost.has(i)) assert.throws(() => s.readSync(from, len), VdevError, `${ctx}: chunk ${i} must fail (sync)`)
      else assert.ok(s.readSync(from, len).data.equals(expected.subarray(from, from + len)), `${ctx}: chunk ${i} reads wrong bytes (sync)`)
    }
  } finally {
    await s.close()
  }
}

/**
 * A small image with everything in it: 4 KiB chunks in 256-chunk groups (four groups: three tables, one
 * all-zero group without one), raw, zstd (some straddling blocks), zero and unread chunks, bad areas,
 * metadata. About 60 blocks (one raw chunk in `every`: 11 makes about 100).
 */
export async function makeSweepImage(dir: string, every = 23): Promise<{file: string; expected: Buffer}> {
  const cs = 4096
  const size = 3 * 256 * cs + 40 * cs + 1000
  const data = Buffer.alloc(size)
  for (let c = 0; c < Math.ceil(size / cs); c++) {
    if (c >= 256 && c < 512) continue // group 1: all zero, no table
    const at = c * cs
    const len = Math.min(cs, size - at)
    if (c % every === 0) prng(c, len).copy(data, at) // raw
    else if (c % every === 5) textish(c, len).copy(data, at) // zstd, a few KiB: straddles blocks
    else if (c % every !== 7) data.write(`chunk ${c} `.repeat(Math.ceil(len / 10)).slice(0, len), at) // zstd, tiny
  }
  const raw = path.join(dir, 'src.raw')
  fs.writeFileSync(raw, data)
  const bad = [
    [3 * cs + 512, 1024, '-'],
    [600 * cs, 2 * cs, '?'],
  ] as const
  const lines = ['0 +', ...bad.map(([o, l, s]) => `${o} ${l} ${s}`)]
  let at = 0
  for (const [o, l] of bad) {
    lines.push(`${at} ${o - at} +`)
    at = o + l
  }
  lines.push(`${at} ${size - at} +`)
  const map = parseMapfile(['0 +', ...lines.slice(1).sort((a, b) => Number(a.split(' ')[0]) - Number(b.split(' ')[0]))].join('\n') + '\n', 'sweep.map')
  const expected = Buffer.from(data)
  for (const [o, l] of bad) expected.fill(0, o, o + l)
  const file = path.join(dir, 'sweep.vdimg')
  const input = openInput(raw)
  try {
    await createImage(input, file, {chunkSize: cs, l2Entries: 256, mapfile: map, metadata: {model: 'SWEEP', serial: 'S-1'}, threads: 1})
  } finally {
    await input.close()
  }
  return {file, expected}
}


/**
 * The structure-aware VDIMG mutator. A case starts from a valid base image and applies one to three
 * mutations: a field set to an interesting value (0, 1, 2^32−1, 2^53, 2^53+1, 2^64−1, the file size,
 * another structure's offset …), entries swapped or copied, a new metadata object, bad-area map, section
 * table, index table or zstd frame written at the end of the file and pointed at, the image resized,
 * chunk bytes changed, the file truncated or extended. The checksums are then recomputed (all, or all but
 * one level), so the checks behind them are reached; in a 1.1 image the copies are made to follow their
 * originals too, unless a copy itself was mutated. One case in six is plain byte flips, unfixed.
 */
import * as zstd from 'zstd-napi/binding'
import {BAD_ENTRY_SIZE, ChunkKind, HEADER_SIZE, L1_ENTRY_SIZE, L2_ENTRY_SIZE, SECTION_ENTRY_SIZE, SectionType} from '../../src/format/layout'
import type {Rng} from '../rng'
import type {BaseImage} from './bases'
import {COPY_STRUCTS, FIX_ALL, FIX_NONE, fixChecksums, parseLayout, type Field, type FixLevels, type Layout} from './structure'

export interface Mutated {
  bytes: Buffer
  steps: string[]
}

const TWO32 = 1n << 32n
const TWO53 = 1n << 53n
const TWO64 = 1n << 64n

class Work {
  buf: Buffer
  readonly steps: string[] = []
  /** Second-level entries whose chunk checksums the fix-up recomputes. */
  readonly dirty = new Set<number>()
  /** A copy (1.1) was mutated, or a block overwritten: the fix-up must not make the copies follow the originals. */
  copiesTouched = false

  constructor(
    readonly base: BaseImage,
    readonly layout: Layout,
    readonly rng: Rng,
  ) {
    this.buf = Buffer.from(base.bytes)
  }

  get(at: number, width: number): bigint {
    if (at + width > this.buf.length) return 0n
    switch (width) {
      case 1:
        return BigInt(this.buf[at])
      case 2:
        return BigInt(this.buf.readUInt16LE(at))
      case 4:
        return BigInt(this.buf.readUInt32LE(at))
      default:
        return this.buf.readBigUInt64LE(at)
    }
  }

  set(at: number, width: number, value: bigint): void {
    if (at + width > this.buf.length) return
    const max = (1n << BigInt(width * 8)) - 1n
    const v = value < 0n ? max : value & max
    switch (width) {
      case 1:
        this.buf[at] = Number(v)
        break
      case 2:
        this.buf.writeUInt16LE(Number(v), at)
        break
      case 4:
        this.buf.writeUInt32LE(Number(v), at)
        break
      default:
        this.buf.writeBigUInt64LE(v, at)
    }
  }

  /** Append bytes at the end of the file; returns where they start. */
  append(data: Buffer): number {
    const at = this.buf.length
    this.buf = Buffer.concat([this.buf, data])
    return at
  }

  section(type: number): {at: number; offset: number; length: number} | undefined {
    return this.layout.sections.find((s) => s.type === type)
  }

  note(s: string): void {
    this.steps.push(s)
  }
}

/** Values worth trying in a field of this width, plus values tied to this image and this field. */
function interesting(w: Work, f: Field): bigint {
  const rng = w.rng
  const orig = w.get(f.at, f.width)
  const size = BigInt(w.buf.length)
  const specific: Record<string, bigint[]> = {
    sector_size: [0n, 256n, 512n, 1024n, 2048n, 4096n, 8192n],
    chunk_size: [0n, 2048n, 4095n, 4096n, 8192n, 65536n, 4194304n, 8388608n],
    l2_entries: [0n, 128n, 255n, 256n, 4096n, 65536n, 131072n],
    flags: [0n, 1n, 2n, 3n, 0x80000000n],
    kind: [0n, 1n, 2n, 3n, 4n, 255n],
    fill_kind: [0n, 1n, 2n, 3n, 4n, 255n],
    status: [0n, 1n, 2n, 3n, 4n, 5n, 255n],
    type: [0n, 1n, 2n, 3n, 4n, 0xffffffffn],
    major: [0n, 1n, 2n, 0xffffn],
    section_count: [0n, 1n, 2n, 4n, 4096n, 4097n, 0xffffffffn],
  }
  const common: bigint[] = [0n, 1n, 2n, orig + 1n, orig - 1n, orig ^ (1n << BigInt(rng.int(f.width * 8)))]
  const wide: bigint[] =
    f.width >= 4
      ? [255n, 256n, 4096n, 65536n, 0x7fffffffn, 0x80000000n, TWO32 - 1n, size, size - 1n, size + 1n, orig + 24n, orig - 24n]
      : [0x7fn, 0x80n, 0xffn]
  const huge: bigint[] =
    f.width === 8
      ? [TWO32, TWO53 - 1n, TWO53, TWO53 + 1n, 1n << 63n, TWO64 - 1n, TWO64 - 2n, orig * 2n, orig + size, BigInt(rng.pick(w.layout.landmarks)), BigInt(rng.pick(w.layout.landmarks)) + BigInt(rng.range(-24, 24))]
      : f.width === 4
        ? [BigInt(rng.pick(w.layout.landmarks)) & (TWO32 - 1n)]
        : []
  const pool = [...(specific[f.name] ?? []), ...common, ...wide, ...huge]
  return rng.pick(pool)
}

// ---- mutations ----

function setField(w: Work, struct?: Field['struct']): void {
  const fields = struct ? w.layout.fields.filter((f) => f.struct === struct) : w.layout.fields
  if (!fields.length) return setField(w)
  const f = w.rng.pick(fields)
  if (COPY_STRUCTS.has(f.struct)) w.copiesTouched = true
  const v = interesting(w, f)
  w.set(f.at, f.width, v)
  w.note(`${f.struct}.${f.name} @${f.at} = ${v}`)
  // A moved or resized chunk gets checksums of what it now points at, half the time (never for CRC fields).
  if (f.struct === 'l2' && !f.name.endsWith('crc') && w.rng.chance(0.5)) markEntry(w, f.at)
  // Keep chunk_count consistent half the time, so the checks after it are reached.
  if (f.struct === 'header' && (f.name === 'size' || f.name === 'chunk_size') && w.rng.chance(0.5)) syncChunkCount(w)
}

function syncChunkCount(w: Work): void {
  const size = w.get(32, 8)
  const chunk = w.get(24, 4)
  if (chunk === 0n) return
  const count = (size + chunk - 1n) / chunk
  w.set(40, 8, count)
  w.note(`header.chunk_count = ${count} (kept consistent)`)
}

function flipBit(w: Work): void {
  const f = w.rng.pick(w.layout.fields)
  const bit = w.rng.int(f.width * 8)
  w.set(f.at, f.width, w.get(f.at, f.width) ^ (1n << BigInt(bit)))
  w.note(`${f.struct}.${f.name} @${f.at}: bit ${bit} flipped`)
  if (f.struct === 'l2' && !f.name.endsWith('crc') && w.rng.chance(0.5)) markEntry(w, f.at)
}

function markEntry(w: Work, at: number): void {
  const e = w.layout.l2Entries.find((x) => at >= x && at < x + L2_ENTRY_SIZE)
  if (e !== undefined) w.dirty.add(e)
}

/** Swap or copy two entries of one kind (second-level entries, bad areas, sections, first-level entries). */
function shuffleEntries(w: Work, copy: boolean): void {
  const rng = w.rng
  const lists: Array<[string, number[], number]> = [
    ['l2', w.layout.l2Entries, L2_ENTRY_SIZE],
    ['bad', w.layout.badEntries, BAD_ENTRY_SIZE],
    ['section', w.layout.sections.map((s) => s.at), SECTION_ENTRY_SIZE],
    ['l1', w.layout.l1Entries.map((e) => e.at), L1_ENTRY_SIZE],
  ]
  const usable = lists.filter(([, l]) => l.length >= 2)
  if (!usable.length) return setField(w)
  const [name, list, size] = rng.pick(usable)
  const a = rng.pick(list)
  let b = rng.pick(list)
  if (a === b) b = list[(list.indexOf(a) + 1) % list.length]
  const ea = Buffer.from(w.buf.subarray(a, a + size))
  const eb = Buffer.from(w.buf.subarray(b, b + size))
  ea.copy(w.buf, b)
  if (!copy) eb.copy(w.buf, a)
  w.note(`${name} entry @${a} ${copy ? 'copied over' : 'swapped with'} @${b}`)
}

/** New metadata at the end of the file: deep nesting, non-objects, bad UTF-8, odd ddrescue values … */
export function metadataVariant(rng: Rng): {text: string; data: Buffer} {
  const depth = rng.pick([100, 1000, 5000, 20000, 100000])
  const ddValues = [
    {currentPos: -1, currentStatus: '+', currentPass: 1},
    {currentPos: 1e308, currentStatus: '?'},
    {currentPos: 2 ** 60, currentStatus: '+', currentPass: 2 ** 60},
    {currentPos: 0, currentStatus: '\n'},
    {currentPos: 0, currentStatus: 'ab'},
    {currentPos: 0, currentStatus: ''},
    {currentPos: 1.5, currentStatus: 'x', currentPass: 0},
    {currentPos: 0, currentStatus: '+', currentPass: -3},
    {currentPos: 0, currentStatus: '+', currentPass: 1.25},
    {currentPos: '12', currentStatus: 5, currentPass: '2'},
    null,
    [],
    'ddrescue',
  ]
  const variants: Array<() => string | Buffer> = [
    () => `{"x":${'['.repeat(depth)}${']'.repeat(depth)}}`,
    () => `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`,
    () => `{"model":"m","deep":${'{"k":'.repeat(depth)}null${'}'.repeat(depth)}}`,
    () => rng.pick(['[]', '1', 'null', '"str"', 'true', '', ' ', '{', '{"a":1,}', '{"a":1}{"b":2}', '{"a":01}', "{'a':1}"]),
    () => '\ufeff{"model":"bom"}',
    () => Buffer.from([0x7b, 0x22, 0x6d, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0xc3, 0x28, 0x22, 0x7d]),
    () => JSON.stringify({notes: 'x'.repeat(rng.pick([1 << 16, 1 << 20]))}),
    () => JSON.stringify({ddrescue: rng.pick(ddValues)}),
    () => '{"__proto__":{"polluted":1},"constructor":1,"toString":2,"hasOwnProperty":3,"valueOf":null}',
    () => '{"size":1e999,"sectorSize":-0,"model":"\\ud800","serial":"\\u0000\\n"}',
    () => `{${Array.from({length: 20000}, (_, i) => `"k${i}":${i}`).join(',')}}`,
    () => '{"a":1,"a":2,"ddrescue":{"currentPos":1},"ddrescue":{"currentStatus":"?"}}',
    () => JSON.stringify({[`line\nbreak`]: 'v\r\n', tab: '\t', model: 'é'.repeat(100)}),
  ]
  const v = rng.pick(variants)()
  const data = Buffer.isBuffer(v) ? v : Buffer.from(v, 'utf8')
  const text = data.length > 80 ? `${data.subarray(0, 60).toString('latin1')}… (${data.length} bytes)` : data.toString('latin1')
  return {text, data}
}

function replaceMetadata(w: Work): void {
  const {text, data} = metadataVariant(w.rng)
  const s = w.section(SectionType.Metadata)
  if (!s) return setField(w)
  const at = w.append(data)
  w.set(s.at + 8, 8, BigInt(at))
  w.set(s.at + 16, 8, BigInt(data.length))
  w.note(`metadata replaced: ${JSON.stringify(text)}`)
}

/** A new bad-area map: valid-looking ranges, or entries with interesting offsets, lengths and statuses. */
function replaceBadMap(w: Work): void {
  const rng = w.rng
  const s = w.section(SectionType.BadAreaMap)
  if (!s) return setField(w)
  const size = Number(w.get(32, 8))
  const n = rng.pick([0, 1, 2, 3, 10, 100, rng.int(2000)])
  const b = Buffer.alloc(n * BAD_ENTRY_SIZE)
  const sorted = rng.chance(0.5)
  let at = 0
  const offs: bigint[] = [0n, 1n, BigInt(size), BigInt(size) - 1n, TWO53, TWO53 + 1n, TWO64 - 1n, TWO32]
  for (let i = 0; i < n; i++) {
    let off: bigint
    let len: bigint
    if (sorted && size > 0) {
      const gap = rng.int(Math.max(1, Math.floor(size / Math.max(1, n)) / 2))
      off = BigInt(Math.min(size, at + gap))
      len = BigInt(rng.range(rng.chance(0.1) ? 0 : 1, Math.max(1, Math.floor(size / Math.max(1, n) / 2))))
      at = Number(off + len)
    } else {
      off = rng.chance(0.5) ? rng.pick(offs) : BigInt(rng.int(Math.max(1, size)))
      len = rng.chance(0.5) ? rng.pick([0n, 1n, 512n, TWO53, TWO64 - 1n, BigInt(size)]) : BigInt(rng.int(Math.max(1, size)) + 1)
    }
    b.writeBigUInt64LE(off & (TWO64 - 1n), i * BAD_ENTRY_SIZE)
    b.writeBigUInt64LE(len & (TWO64 - 1n), i * BAD_ENTRY_SIZE + 8)
    b[i * BAD_ENTRY_SIZE + 16] = rng.chance(0.9) ? rng.range(1, 4) : rng.pick([0, 5, 255])
  }
  const extra = rng.chance(0.1) ? rng.range(1, 23) : 0 // a length that is not a multiple of 24
  const data = Buffer.concat([b, Buffer.alloc(extra)])
  const pos = w.append(data)
  w.set(s.at + 8, 8, BigInt(pos))
  w.set(s.at + 16, 8, BigInt(data.length))
  w.note(`bad-area map replaced: ${n} entries (${sorted ? 'sorted' : 'interesting'})${extra ? ` + ${extra} stray bytes` : ''}`)
}

/** A new section table: the sections shuffled, some dropped or duplicated, unknown types, critical or not. */
function replaceSectionTable(w: Work): void {
  const rng = w.rng
  const entries: Buffer[] = w.layout.sections.map((s) => Buffer.from(w.buf.subarray(s.at, s.at + SECTION_ENTRY_SIZE)))
  const op = rng.pick(['drop', 'duplicate', 'unknown', 'unknown-critical', 'empty', 'many', 'shuffle'])
  if (op === 'drop' && entries.length) entries.splice(rng.int(entries.length), 1)
  if (op === 'duplicate' && entries.length) entries.push(Buffer.from(rng.pick(entries)))
  if (op === 'unknown' || op === 'unknown-critical' || op === 'many') {
    const k = op === 'many' ? rng.range(10, 300) : 1
    for (let i = 0; i < k; i++) {
      const e = Buffer.alloc(SECTION_ENTRY_SIZE)
      e.writeUInt32LE(rng.pick([0, 4, 5, 99, 0x7fffffff, 0xffffffff]), 0)
      e.writeUInt32LE(op === 'unknown-critical' ? 1 : rng.pick([0, 0, 2, 0xfffffffe]), 4)
      const target = rng.pick(w.layout.landmarks)
      e.writeBigUInt64LE(BigInt(Math.max(HEADER_SIZE, target)), 8)
      e.writeBigUInt64LE(BigInt(rng.pick([0, 1, 24, 100])), 16)
      entries.push(e)
    }
  }
  if (op === 'empty') entries.length = 0
  rng.shuffle(entries)
  const table = Buffer.concat(entries)
  const at = w.append(table)
  w.set(48, 8, BigInt(at))
  const count = entries.length + (rng.chance(0.15) ? rng.pick([-1, 1]) : 0)
  w.set(56, 4, BigInt(Math.max(0, count)))
  w.note(`section table replaced (${op}): ${entries.length} entries, section_count ${Math.max(0, count)}`)
}

/** A second-level table rewritten at the end of the file with interesting entries. */
function replaceL2Table(w: Work): void {
  const rng = w.rng
  if (!w.layout.l2Tables.length) return setField(w)
  const t = rng.pick(w.layout.l2Tables)
  if (t.offset + t.length > w.buf.length) return setField(w)
  const table = Buffer.from(w.buf.subarray(t.offset, t.offset + t.length))
  const n = t.length / L2_ENTRY_SIZE
  const changes = rng.range(1, Math.min(8, n))
  for (let i = 0; i < changes; i++) {
    const k = rng.int(n)
    const at = k * L2_ENTRY_SIZE
    const src = rng.pick(w.layout.chunks)
    table.writeBigUInt64LE(rng.pick([0n, 1n, BigInt(HEADER_SIZE), BigInt(src.offset), BigInt(src.offset + 1), BigInt(w.buf.length - 1), TWO53 + 1n, TWO64 - 1n]) & (TWO64 - 1n), at)
    table.writeUInt32LE(rng.pick([0, 1, src.length, src.length + 1, w.base.chunkSize, w.base.chunkSize + 1, 0xffffffff]) >>> 0, at + 8)
    table[at + 16] = rng.pick([0, 1, 2, 3, 4])
  }
  const pos = w.append(table)
  for (let k = 0; k < n; k++) w.dirty.add(pos + k * L2_ENTRY_SIZE)
  w.set(t.l1At, 8, BigInt(pos))
  w.note(`index table of group ${t.group} rewritten at ${pos} (${changes} entries changed)`)
}

/** Change a stored chunk's bytes, or its kind and length. */
function mutateChunk(w: Work): void {
  const rng = w.rng
  if (!w.layout.chunks.length) return setField(w)
  const c = rng.pick(w.layout.chunks)
  const op = rng.pick(['bytes', 'bytes', 'kind', 'truncate-frame', 'tail'])
  if (op === 'bytes') {
    const n = rng.range(1, 8)
    for (let i = 0; i < n; i++) {
      const at = c.offset + rng.int(c.length)
      w.buf[at] = rng.chance(0.5) ? w.buf[at] ^ (1 << rng.int(8)) : rng.u32() & 0xff
    }
    w.note(`chunk ${c.chunk} (${ChunkKind[c.kind]}): ${n} stored bytes changed`)
  } else if (op === 'kind') {
    const kind = rng.pick([0, 1, 2, 3].filter((k) => k !== c.kind))
    w.buf[c.entryAt + 16] = kind
    w.note(`chunk ${c.chunk}: kind ${ChunkKind[c.kind]} -> ${kind}`)
  } else if (op === 'truncate-frame') {
    const len = rng.range(1, Math.max(1, c.length - 1))
    w.set(c.entryAt + 8, 4, BigInt(len))
    w.note(`chunk ${c.chunk}: stored_length ${c.length} -> ${len}`)
  } else {
    // The last bytes of a zstd frame hold its end; damage there is what prefix decoding never sees.
    const at = c.offset + c.length - 1 - rng.int(Math.min(8, c.length))
    w.buf[at] ^= 0xff
    w.note(`chunk ${c.chunk}: byte ${at - c.offset} of ${c.length} (near the frame's end) flipped`)
  }
  w.dirty.add(c.entryAt)
}

let cctx: zstd.CCtx | undefined
function compress(data: Buffer, opts: {checksum?: boolean; contentSize?: boolean; targetBlock?: number} = {}): Buffer {
  cctx ??= new zstd.CCtx()
  cctx.reset(zstd.ResetDirective.sessionAndParameters)
  cctx.setParameter(zstd.CParameter.compressionLevel, 3)
  cctx.setParameter(zstd.CParameter.checksumFlag, opts.checksum ? 1 : 0)
  cctx.setParameter(zstd.CParameter.contentSizeFlag, opts.contentSize === false ? 0 : 1)
  if (opts.targetBlock) cctx.setParameter(zstd.CParameter.targetCBlockSize, opts.targetBlock)
  const out = Buffer.alloc(data.length + (data.length >> 7) + 1024)
  const n = cctx.compress2(out, data)
  return out.subarray(0, n)
}

/** A crafted zstd frame for a chunk: wrong length, lying content size, two frames, a skippable frame … */
function replaceFrame(w: Work): void {
  const rng = w.rng
  const zstdChunks = w.layout.chunks.filter((c) => c.kind === ChunkKind.Zstd)
  if (!zstdChunks.length) return mutateChunk(w)
  const c = rng.pick(zstdChunks)
  // The chunk's logical length in the base image (an earlier mutation may have changed the header's size).
  const chunkSize = w.base.chunkSize
  const len = Math.max(0, Math.min(chunkSize, w.base.data.length - c.chunk * chunkSize))
  const text = Buffer.from('the sector of the disk was read and then rescued. '.repeat(Math.ceil((len + 64) / 50)))
  const op = rng.pick(['shorter', 'longer', 'empty', 'same', 'checksum-bad', 'two-frames', 'skippable', 'no-size-lie', 'blocks-truncated', 'garbage-after'])
  let frame: Buffer
  switch (op) {
    case 'shorter':
      frame = compress(text.subarray(0, Math.max(0, len - rng.range(1, 100))))
      break
    case 'longer':
      frame = compress(text.subarray(0, len + rng.range(1, 64)))
      break
    case 'empty':
      frame = compress(Buffer.alloc(0))
      break
    case 'checksum-bad': {
      frame = Buffer.from(compress(text.subarray(0, len), {checksum: true}))
      frame[frame.length - 1] ^= 0x55
      break
    }
    case 'two-frames': {
      const half = len >> 1
      frame = Buffer.concat([compress(text.subarray(0, half)), compress(text.subarray(half, len))])
      break
    }
    case 'skippable': {
      const skip = Buffer.alloc(8 + 16)
      skip.writeUInt32LE(0x184d2a50, 0)
      skip.writeUInt32LE(16, 4)
      frame = Buffer.concat([skip, compress(text.subarray(0, len))])
      break
    }
    case 'no-size-lie': {
      // The frame header's content size says one thing, the blocks another.
      frame = Buffer.from(compress(text.subarray(0, len), {contentSize: true}))
      const other = compress(text.subarray(0, Math.max(1, len >> 1)), {contentSize: true})
      frame = Buffer.concat([other.subarray(0, 6), frame.subarray(6)])
      break
    }
    case 'blocks-truncated': {
      const full = compress(text.subarray(0, len), {targetBlock: 1024})
      frame = full.subarray(0, Math.max(1, full.length - rng.range(1, Math.max(1, full.length >> 1))))
      break
    }
    case 'garbage-after':
      frame = Buffer.concat([compress(text.subarray(0, len)), rng.bytes(rng.range(1, 16))])
      break
    default:
      frame = compress(text.subarray(0, len))
  }
  const at = w.append(frame)
  w.set(c.entryAt, 8, BigInt(at))
  w.set(c.entryAt + 8, 4, BigInt(frame.length))
  w.dirty.add(c.entryAt)
  w.note(`chunk ${c.chunk}: zstd frame replaced (${op}, ${frame.length} bytes at ${at})`)
}

/** A new image size (and geometry), with a first-level index rebuilt to match when it stays small. */
function resize(w: Work): void {
  const rng = w.rng
  const orig = Number(w.get(32, 8))
  let chunk = Number(w.get(24, 4))
  let l2 = Number(w.get(28, 4))
  const size = rng.pick([0, 1, chunk - 1, chunk, chunk + 1, orig - 1, orig + 1, orig * 2, 2 ** 26, 2 ** 32, 2 ** 40, 2 ** 50, 2 ** 53 - 1])
  if (size > 2 ** 30) {
    // Big chunks and big groups keep the index of a huge image small.
    chunk = 4 * 1024 * 1024
    l2 = 65536
    w.set(24, 4, BigInt(chunk))
    w.set(28, 4, BigInt(l2))
  }
  const count = Math.ceil(size / chunk)
  const groups = Math.ceil(count / l2)
  w.set(32, 8, BigInt(size))
  w.set(40, 8, BigInt(count))
  const idx = w.section(SectionType.ChunkIndex)
  if (!idx || groups * L1_ENTRY_SIZE > 2 * 1024 * 1024) {
    w.note(`resized to ${size} bytes (chunk ${chunk}, ${count} chunks); index left as it was`)
    return
  }
  const l1 = Buffer.alloc(groups * L1_ENTRY_SIZE)
  const old = w.layout.l1Entries
  for (let g = 0; g < groups; g++) {
    if (g < old.length && chunk === w.base.chunkSize && rng.chance(0.8)) w.buf.copy(l1, g * L1_ENTRY_SIZE, old[g].at, old[g].at + L1_ENTRY_SIZE)
    else l1[g * L1_ENTRY_SIZE + 16] = rng.chance(0.5) ? ChunkKind.Zero : ChunkKind.Unread
  }
  const at = w.append(l1)
  w.set(idx.at + 8, 8, BigInt(at))
  w.set(idx.at + 16, 8, BigInt(l1.length))
  w.note(`resized to ${size} bytes (chunk ${chunk}, index groups of ${l2}, ${count} chunks); index rebuilt at ${at}`)
}

/** Point one structure at another (the header, the section table, another section, a chunk). */
function overlap(w: Work): void {
  const rng = w.rng
  const target = rng.pick(w.layout.landmarks)
  const len = rng.pick([24, 256, 4096, w.buf.length - target])
  const which = rng.pick(['section', 'l1', 'l2'] as const)
  if (which === 'section' && w.layout.sections.length) {
    const s = rng.pick(w.layout.sections)
    w.set(s.at + 8, 8, BigInt(target))
    if (rng.chance(0.5)) w.set(s.at + 16, 8, BigInt(Math.max(0, len)))
    w.note(`section type ${s.type} pointed at ${target}`)
  } else if (which === 'l1' && w.layout.l2Tables.length) {
    const t = rng.pick(w.layout.l2Tables)
    w.set(t.l1At, 8, BigInt(target))
    w.note(`index table of group ${t.group} pointed at ${target}`)
  } else if (w.layout.chunks.length) {
    const c = rng.pick(w.layout.chunks)
    w.set(c.entryAt, 8, BigInt(target))
    w.dirty.add(c.entryAt)
    w.note(`chunk ${c.chunk} pointed at ${target}`)
  }
}

function truncate(w: Work): void {
  const rng = w.rng
  const near = rng.pick(w.layout.landmarks)
  const at = Math.max(0, Math.min(w.buf.length - 1, rng.chance(0.6) ? near + rng.range(-4, 4) : rng.int(w.buf.length)))
  w.buf = w.buf.subarray(0, at)
  w.note(`truncated to ${at} bytes`)
}

function extend(w: Work): void {
  const n = w.rng.pick([1, 24, 4096, 100000])
  w.append(w.rng.chance(0.5) ? Buffer.alloc(n) : w.rng.bytes(n))
  w.note(`extended by ${n} bytes`)
}

const MUTATIONS: ReadonlyArray<readonly [number, (w: Work) => void]> = [
  [30, (w) => setField(w)],
  [6, (w) => setField(w, 'header')],
  [6, (w) => setField(w, 'l2')],
  [4, (w) => setField(w, 'l1')],
  [4, (w) => setField(w, 'bad')],
  [4, (w) => setField(w, 'section')],
  [5, flipBit],
  [3, (w) => shuffleEntries(w, false)],
  [3, (w) => shuffleEntries(w, true)],
  [5, replaceMetadata],
  [5, replaceBadMap],
  [4, replaceSectionTable],
  [4, replaceL2Table],
  [8, mutateChunk],
  [6, replaceFrame],
  [4, resize],
  [4, overlap],
  [2, truncate],
  [1, extend],
  // 1.1 (FORMAT.md §12): the copies, mutated on their own, and whole 4 KiB blocks overwritten (unfixed).
  [3, (w) => setField(w, 'trailer')],
  [2, (w) => setField(w, 'section-copy')],
  [2, (w) => setField(w, 'l1-copy')],
  [3, (w) => setField(w, 'l2-copy')],
  [1, (w) => setField(w, 'bad-copy')],
  [4, overwriteBlock],
]

/** An aligned 4 KiB block (one holding a structure, most of the time) overwritten with random bytes. */
function overwriteBlock(w: Work): void {
  const rng = w.rng
  const at = rng.chance(0.7) ? rng.pick(w.layout.landmarks) : rng.int(w.buf.length)
  const from = Math.floor(Math.min(at, w.buf.length - 1) / 4096) * 4096
  const to = Math.min(w.buf.length, from + 4096)
  rng.bytes(to - from).copy(w.buf, from)
  w.copiesTouched = true // the point is the damage: copies must not be made to follow it
  w.note(`block ${from / 4096} (bytes ${from}-${to - 1}) overwritten`)
}

/** One mutated image from `base`; deterministic in `rng`. */
export function mutateImage(base: BaseImage, rng: Rng): Mutated {
  const w = new Work(base, parseLayout(base.bytes), rng)
  if (rng.chance(1 / 6)) {
    // Plain byte flips, no fix-up: every one must be caught by a checksum or a check.
    const n = rng.pick([1, 1, 2, 4, 16])
    for (let i = 0; i < n; i++) {
      const at = rng.int(w.buf.length)
      w.buf[at] = rng.chance(0.5) ? w.buf[at] ^ (1 << rng.int(8)) : rng.u32() & 0xff
      w.note(`byte @${at} changed (no checksum fix-up)`)
    }
    return {bytes: w.buf, steps: w.steps}
  }
  const n = rng.weighted([
    [6, 1],
    [3, 2],
    [1, 3],
  ] as const)
  // A truncation comes last: the other mutations aim at structures of the whole file.
  const chosen = Array.from({length: n}, () => rng.weighted(MUTATIONS))
  for (const m of [...chosen.filter((m) => m !== truncate), ...chosen.filter((m) => m === truncate)]) m(w)
  let levels: FixLevels = FIX_ALL
  const r = rng.float()
  if (r < 0.08) levels = FIX_NONE
  else if (r < 0.25) {
    const skip = rng.pick(['chunks', 'l2', 'sections', 'table', 'header', 'mirror'] as const)
    levels = {...FIX_ALL, [skip]: false}
  }
  // Copies follow their originals (so the checks behind both are reached) unless a copy was the target, or
  // one case in eight: then the reader has a good copy of what was mutated, or a damaged one to report.
  if (w.copiesTouched || rng.chance(1 / 8)) levels = {...levels, mirror: false}
  fixChecksums(w.buf, levels, w.dirty)
  if (!levels.mirror && levels !== FIX_NONE) w.note('copies left as they were')
  const skipped = (Object.keys(levels) as Array<keyof FixLevels>).filter((k) => !levels[k])
  w.note(skipped.length ? `checksums fixed except: ${skipped.join(', ')}` : 'all checksums fixed')
  return {bytes: w.buf, steps: w.steps}
}

/**
 * Recovery data (format 1.2, FORMAT.md §13): Reed–Solomon erasure parity over the protected region of an
 * image — from byte 256 to the end of the last second-level table, the stored bytes of every chunk and
 * every table — in one non-critical section of type 8. This file holds its layout, the choice of code
 * parameters, the encoder (used by create and by repair) and the decoder of one stripe.
 */
import {VdevError} from '../core/errors'
import {crc32c} from './crc'
import {cauchy, gfInvert, gfMul, mulAdd} from './gf256'
import {simdKernel} from './gf256-simd'

export const RECOVERY_MAGIC = Buffer.from('VDRECOV1', 'latin1')
export const RECOVERY_HEADER_SIZE = 64
export const DEFAULT_SLICE_SIZE = 4096
export const MIN_SLICE_SIZE = 512
export const MAX_SLICE_SIZE = 1 << 20
/** k + m ≤ 256: the Cauchy points r (0…m−1) and m + j (m…m+k−1) are distinct elements of GF(2^8). */
export const MAX_STRIPE = 256
/** Parity held in memory while encoding (one pass over the region per this much parity). */
const PASS_BYTES = 64 << 20

export interface RecoveryParams {
  sliceSize: number
  /** Data slices per stripe. */
  k: number
  /** Parity slices per stripe. */
  m: number
  /** Stripes: data slice i belongs to stripe i mod T, at position floor(i / T). */
  stripes: number
  regionOffset: number
  regionLength: number
}

export interface RecoveryLayout extends RecoveryParams {
  /** Offset of the first parity slice from the section's start: after the header and the CRC table, rounded up to a slice. */
  parityOffset: number
  /** The section's length: header, CRC table, padding, parity slices, header copy. */
  length: number
}

export class RecoveryFormatError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message)
  }
}

/**
 * Slices are aligned to the file, not to the region: slice i is the file bytes [origin + i·S, origin + (i+1)·S)
 * with origin = ⌊region_offset / S⌋·S, bytes outside the region read as zeros — so that one damaged aligned
 * block of the file (a disk's sector or page) costs one slice, not two.
 */
export function sliceOrigin(p: Pick<RecoveryParams, 'sliceSize' | 'regionOffset'>): number {
  return Math.floor(p.regionOffset / p.sliceSize) * p.sliceSize
}

export function dataSlices(p: Pick<RecoveryParams, 'sliceSize' | 'regionOffset' | 'regionLength'>): number {
  return Math.ceil((p.regionOffset + p.regionLength - sliceOrigin(p)) / p.sliceSize)
}

/** Where the CRC of data slice i lies, from the section's start: after the parity slices' CRCs. */
export function dataCrcAt(l: RecoveryParams, i: number): number {
  return RECOVERY_HEADER_SIZE + (l.stripes * l.m + i) * 4
}

export function layoutOf(p: RecoveryParams): RecoveryLayout {
  const crcs = (p.stripes * p.m + dataSlices(p)) * 4
  const parityOffset = Math.ceil((RECOVERY_HEADER_SIZE + crcs) / p.sliceSize) * p.sliceSize
  return {...p, parityOffset, length: parityOffset + p.stripes * p.m * p.sliceSize + RECOVERY_HEADER_SIZE}
}

/**
 * The code for `percent`% of parity over a region: the largest stripes GF(2^8) allows with m/k ≈ percent/100
 * (m = ⌊256·N/(100+N)⌋, k = m·100/N, at most 256 − m); then T = ⌈D/k⌉ stripes for the region's D slices,
 * and when they are not all full, k = ⌈D/T⌉ and m = round(k·N/100) (at least 1), so that the last stripe's
 * missing slices do not cost parity.
 */
export function chooseParams(percent: number, regionOffset: number, regionLength: number, sliceSize = DEFAULT_SLICE_SIZE): RecoveryParams {
  if (!(percent > 0 && percent <= 100)) throw new VdevError('usage', `recovery ${percent}% is not more than 0% and at most 100%`)
  let m = Math.max(1, Math.floor((MAX_STRIPE * percent) / (100 + percent)))
  let k = Math.min(MAX_STRIPE - m, Math.max(1, Math.round((m * 100) / percent)))
  const d = dataSlices({sliceSize, regionOffset, regionLength})
  const stripes = Math.max(1, Math.ceil(d / k))
  // As many stripes as the largest k needs, each as full as the slices allow: the parity is m/k of the data.
  const full = Math.max(1, Math.ceil(d / stripes))
  if (full < k) {
    k = full
    m = Math.min(MAX_STRIPE - k, Math.max(1, Math.round((k * percent) / 100)))
  }
  return {sliceSize, k, m, stripes, regionOffset, regionLength}
}

export function encodeRecoveryHeader(l: RecoveryLayout): Buffer {
  const b = Buffer.alloc(RECOVERY_HEADER_SIZE)
  RECOVERY_MAGIC.copy(b, 0)
  b.writeUInt32LE(l.sliceSize, 8)
  b.writeUInt16LE(8, 12)
  b.writeUInt16LE(l.k, 14)
  b.writeUInt16LE(l.m, 16)
  b.writeUInt32LE(l.stripes, 20)
  b.writeBigUInt64LE(BigInt(l.regionOffset), 24)
  b.writeBigUInt64LE(BigInt(l.regionLength), 32)
  b.writeBigUInt64LE(BigInt(l.parityOffset), 40)
  b.writeUInt32LE(crc32c(b.subarray(0, 60)), 60)
  return b
}

/**
 * A recovery header (64 bytes at `at` in the file), checked against itself and the section it is in:
 * every count is bounded by the section's length before anything is allocated from it.
 */
export function decodeRecoveryHeader(b: Buffer, at: number, sectionLength: number): RecoveryLayout {
  if (b.length < RECOVERY_HEADER_SIZE) throw new RecoveryFormatError('recovery header truncated', at)
  if (!b.subarray(0, 8).equals(RECOVERY_MAGIC)) throw new RecoveryFormatError('recovery header has no magic', at)
  if (crc32c(b.subarray(0, 60)) !== b.readUInt32LE(60)) throw new RecoveryFormatError('recovery header checksum mismatch', at + 60)
  const sliceSize = b.readUInt32LE(8)
  if (sliceSize < MIN_SLICE_SIZE || sliceSize > MAX_SLICE_SIZE || (sliceSize & (sliceSize - 1)) !== 0)
    throw new RecoveryFormatError(`recovery slice size ${sliceSize} is not a power of two from 512 to 1 MiB`, at + 8)
  if (b.readUInt16LE(12) !== 8) throw new RecoveryFormatError(`recovery field GF(2^${b.readUInt16LE(12)}) is not GF(2^8)`, at + 12)
  const k = b.readUInt16LE(14)
  const m = b.readUInt16LE(16)
  if (k < 1 || m < 1 || k + m > MAX_STRIPE) throw new RecoveryFormatError(`recovery stripe of ${k} data and ${m} parity slices (k, m ≥ 1, k + m ≤ 256)`, at + 14)
  if (b.readUInt16LE(18) !== 0) throw new RecoveryFormatError('recovery header reserved field is not zero', at + 18)
  const stripes = b.readUInt32LE(20)
  const u64 = (o: number, what: string) => {
    const v = b.readBigUInt64LE(o)
    if (v >= 1n << 53n) throw new RecoveryFormatError(`recovery ${what} ${v} is out of range`, at + o)
    return Number(v)
  }
  const regionOffset = u64(24, 'region offset')
  const regionLength = u64(32, 'region length')
  const parityOffset = u64(40, 'parity offset')
  for (let o = 48; o < 60; o++) if (b[o] !== 0) throw new RecoveryFormatError('recovery header reserved bytes are not zero', at + o)
  if (regionOffset < 256) throw new RecoveryFormatError(`recovery region starts at byte ${regionOffset}, inside the header`, at + 24)
  const d = dataSlices({sliceSize, regionOffset, regionLength})
  if (regionLength < 1 || stripes !== Math.ceil(d / k)) throw new RecoveryFormatError(`recovery data has ${stripes} stripes; ${d} slices in stripes of ${k} need ${Math.ceil(d / k)}`, at + 20)
  // Bounded by the section before it is multiplied out: T·m·S ≤ the section's length ≤ the file's.
  if (stripes * m > sectionLength / sliceSize) throw new RecoveryFormatError(`recovery data needs more bytes than its section's ${sectionLength}`, at + 20)
  const l = layoutOf({sliceSize, k, m, stripes, regionOffset, regionLength})
  if (parityOffset !== l.parityOffset) throw new RecoveryFormatError(`recovery parity offset ${parityOffset}, expected ${l.parityOffset}`, at + 40)
  if (l.length !== sectionLength) throw new RecoveryFormatError(`recovery section is ${sectionLength} bytes, its header needs ${l.length}`, at)
  return l
}

export type ReadAt = (len: number, pos: number) => Promise<Buffer>

/**
 * Every stripe's parity, stripe-major, and its CRC table: what the section holds between its header and
 * its header copy (with the data slices' CRCs), computed from the region as `read` returns it. Works row by row — row j is the region's
 * bytes [j·T·S, (j+1)·T·S), position j of every stripe side by side — over as many passes as the parity of
 * all stripes takes of PASS_BYTES. `write(buf, at)` receives the section's bytes at section offsets.
 */
export async function encodeRecovery(l: RecoveryLayout, read: ReadAt, write: (buf: Buffer, at: number) => Promise<void>, signal?: AbortSignal): Promise<void> {
  const {sliceSize: S, k, m, stripes: T, regionOffset, regionLength: L} = l
  const rowBytes = T * S
  const width = Math.max(S, Math.floor(PASS_BYTES / (m + 1) / S) * S)
  const D = dataSlices(l)
  const origin = sliceOrigin(l)
  const end = regionOffset + L
  const crcs = Buffer.alloc((T * m + D) * 4)
  for (let c0 = 0; c0 < rowBytes; c0 += width) {
    const w = Math.min(width, rowBytes - c0)
    // With WebAssembly SIMD, the row and the parity live in the kernel's memory (one arena per pass).
    const simd = simdKernel()
    const views = simd ? simd.arena([w, ...Array.from({length: m}, () => w)]) : undefined
    const asBuf = (v: Uint8Array) => Buffer.from(v.buffer, v.byteOffset, v.length)
    const parity = views ? views.slice(1).map((v) => asBuf(v).fill(0)) : Array.from({length: m}, () => Buffer.alloc(w))
    const row = views ? asBuf(views[0]) : Buffer.allocUnsafeSlow(w)
    const mul = simd ? simd.mulAdd : mulAdd
    for (let j = 0; j < k; j++) {
      if (signal?.aborted) throw new VdevError('interrupted', 'interrupted')
      // This row's piece, in file offsets, clipped to the region; the rest of the row is zeros.
      const from = origin + j * rowBytes + c0
      if (from >= end) break
      const a = Math.max(from, regionOffset)
      const b = Math.min(from + w, end)
      row.fill(0)
      if (b > a) (await read(b - a, a)).copy(row, a - from, 0, b - a)
      // Each data slice's CRC (its S bytes, zeros outside the region), so that repair knows which slices of a damaged chunk are lost.
      const first = j * T + c0 / S
      for (let t = 0; t < w / S && first + t < D; t++) crcs.writeUInt32LE(crc32c(row.subarray(t * S, (t + 1) * S)), (T * m + first + t) * 4)
      for (let r = 0; r < m; r++) mul(parity[r], row, cauchy(r, j, m))
    }
    // Stripe-major: stripe s's m slices side by side, so this pass's stripes are one run of the section.
    const s0 = c0 / S
    const ns = w / S
    const out = Buffer.allocUnsafeSlow(ns * m * S)
    for (let s = 0; s < ns; s++)
      for (let r = 0; r < m; r++) {
        const slice = parity[r].subarray(s * S, (s + 1) * S)
        slice.copy(out, (s * m + r) * S)
        crcs.writeUInt32LE(crc32c(slice), ((s0 + s) * m + r) * 4)
      }
    await write(out, l.parityOffset + s0 * m * S)
  }
  const head = encodeRecoveryHeader(l)
  const front = Buffer.alloc(l.parityOffset)
  head.copy(front, 0)
  crcs.copy(front, RECOVERY_HEADER_SIZE)
  await write(front, 0)
  await write(head, l.length - RECOVERY_HEADER_SIZE)
}

/** The region's slice indices of stripe s, by position (j·T + s); indices past the region are virtual zeros. */
export function stripeSlices(l: RecoveryParams, s: number): number[] {
  return Array.from({length: l.k}, (_, j) => j * l.stripes + s)
}

/**
 * Solves one stripe: `data[j]` is position j's slice (S bytes; zeros past the region), `parity[r]` parity
 * row r's slice or undefined when it is damaged; `missing` lists the positions to rebuild. Returns their
 * bytes, in `missing`'s order, or undefined when fewer good parity slices remain than positions are missing.
 */
export function solveStripe(l: RecoveryParams, data: Array<Buffer | undefined>, parity: Array<Buffer | undefined>, missing: number[]): Buffer[] | undefined {
  const S = l.sliceSize
  const rows: number[] = []
  for (let r = 0; r < l.m && rows.length < missing.length; r++) if (parity[r]) rows.push(r)
  if (rows.length < missing.length) return undefined
  if (missing.length === 0) return []
  const lost = new Set(missing)
  // Syndromes: each chosen parity slice minus what the known data contributes to it.
  const syn = rows.map((r) => {
    const s = Buffer.from(parity[r]!)
    for (let j = 0; j < l.k; j++) if (!lost.has(j) && data[j]) mulAdd(s, data[j]!, cauchy(r, j, l.m))
    return s
  })
  const inv = gfInvert(rows.map((r) => missing.map((j) => cauchy(r, j, l.m))))
  return missing.map((_, e) => {
    const out = Buffer.alloc(S)
    for (let i = 0; i < rows.length; i++) mulAdd(out, syn[i], inv[e][i])
    return out
  })
}

/** Parity row r of one stripe from all its data slices (for a damaged parity slice whose stripe is whole). */
export function parityOf(l: RecoveryParams, data: Array<Buffer | undefined>, r: number): Buffer {
  const out = Buffer.alloc(l.sliceSize)
  for (let j = 0; j < l.k; j++) if (data[j]) mulAdd(out, data[j]!, cauchy(r, j, l.m))
  return out
}

export {gfMul}

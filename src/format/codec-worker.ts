/**
 * Codec worker: compresses batches of chunks for `create` and decompresses batches for `extract`,
 * `verify` and the reader. Buffers move by transfer, never by copy.
 */
import {parentPort} from 'node:worker_threads'
import {ChunkEncoder, ChunkDecoder, ChunkDecodeError} from './codec'
import type {ChunkKind} from './layout'

export interface EncodeTask {
  op: 'encode'
  level: number
  buf: ArrayBuffer
  /** Where to put the stored bytes: at least as large as the chunks (stored bytes never exceed them). */
  scratch: ArrayBuffer
  /** [start, length] of each chunk in buf. */
  chunks: Array<[number, number]>
}
export interface EncodeResult {
  /** The task's input buffer, handed back for reuse. */
  buf: ArrayBuffer
  /** The task's scratch buffer: stored bytes of all chunks, back to back, `outLength` of them. */
  out: ArrayBuffer
  outLength: number
  kinds: number[]
  crcs: number[]
  storedCrcs: number[]
  lengths: number[]
}
export interface DecodeItem {
  kind: ChunkKind
  start: number
  storedLength: number
  length: number
  crc: number
  storedCrc: number
  /**
   * Decode only the start of the chunk, at least this many bytes (whole zstd blocks past it; see
   * ChunkDecoder.decodePrefixInto). Only with skipDataCrc: a prefix cannot be checked against data_crc.
   */
  need?: number
}
export interface DecodeTask {
  op: 'decode'
  /** The stored bytes the items' `start`s point into (absent with `slot`). */
  buf?: ArrayBuffer
  items: DecodeItem[]
  /**
   * Decode from and into the shared buffers registered as this slot (SlotMessage) instead of `buf` and
   * `scratch`: nothing is transferred, and the result carries neither (`buf` and `out` are empty).
   */
  slot?: number
  /** Output buffer to fill (at least the items' total length); allocated when absent. */
  scratch?: ArrayBuffer
  /** Leave the decompressed-data checksums to the caller (it checks them on its own thread). */
  skipDataCrc?: boolean
}
/**
 * Shared input and output buffers a decode task can name by number (DecodeTask.slot), sent once to every
 * worker (WorkerPool.broadcast) and used for the whole run: buffers transferred back and forth with every
 * batch count as new external memory in the isolate that receives them, and V8 answers with a full
 * mark-compact every few tens of MiB (docs/performance.md, "extract slower since 04:03 UTC").
 */
export interface SlotMessage {
  op: 'slot'
  slot: number
  in: SharedArrayBuffer
  out: SharedArrayBuffer
}
export interface DecodeResult {
  /** The task's input buffer, handed back for reuse. */
  buf: ArrayBuffer
  /** The items' logical bytes back to back (zero and unread items as zeros). */
  out: ArrayBuffer
  /** Per item: undefined, or the reason it failed. */
  errors: Array<string | undefined>
  /** Per item: how many bytes from its start were decoded (its length unless it asked for a prefix). */
  produced: number[]
}

const encoders = new Map<number, ChunkEncoder>()
const slots = new Map<number, {in: Uint8Array; out: Uint8Array}>()
const EMPTY = new ArrayBuffer(0)
const decoder = new ChunkDecoder()

function encode(t: EncodeTask): EncodeResult {
  let enc = encoders.get(t.level)
  if (!enc) encoders.set(t.level, (enc = new ChunkEncoder(t.level)))
  const src = new Uint8Array(t.buf)
  const out = new Uint8Array(t.scratch)
  const r: EncodeResult = {buf: t.buf, out: t.scratch, outLength: 0, kinds: [], crcs: [], storedCrcs: [], lengths: []}
  let at = 0
  for (const [start, len] of t.chunks) {
    // Room left in `out` is at least the chunks still to come, since stored bytes never exceed a chunk.
    const e = enc.encodeInto(src.subarray(start, start + len), out.subarray(at))
    r.kinds.push(e.kind)
    r.crcs.push(e.crc)
    r.storedCrcs.push(e.storedCrc)
    r.lengths.push(e.length)
    at += e.length
  }
  r.outLength = at
  return r
}

function decode(t: DecodeTask): DecodeResult {
  const slot = t.slot === undefined ? undefined : slots.get(t.slot)
  if (t.slot !== undefined && !slot) throw new Error(`decode: no shared buffers registered as slot ${t.slot}`)
  const src = slot ? slot.in : new Uint8Array(t.buf ?? EMPTY)
  const total = t.items.reduce((s, i) => s + i.length, 0)
  if (slot && slot.out.length < total) throw new Error(`decode: slot ${t.slot} holds ${slot.out.length} bytes, the task ${total}`)
  const out = slot ? slot.out : t.scratch && t.scratch.byteLength >= total ? new Uint8Array(t.scratch) : new Uint8Array(total)
  const errors: Array<string | undefined> = []
  const produced: number[] = []
  let at = 0
  for (const it of t.items) {
    const stored = src.subarray(it.start, it.start + it.storedLength)
    const dst = out.subarray(at, at + it.length)
    try {
      if (it.storedLength === 0) dst.fill(0)
      else if (it.need !== undefined && t.skipDataCrc) {
        produced.push(decoder.decodePrefixInto(it.kind, stored, it.storedCrc, dst, it.need))
        errors.push(undefined)
        at += it.length
        continue
      } else decoder.decodeInto(it.kind, stored, it.crc, it.storedCrc, dst, !t.skipDataCrc)
      errors.push(undefined)
    } catch (err) {
      dst.fill(0)
      errors.push(err instanceof ChunkDecodeError ? err.message : String(err))
    }
    produced.push(it.length)
    at += it.length
  }
  if (slot) return {buf: EMPTY, out: EMPTY, errors, produced}
  return {buf: t.buf ?? EMPTY, out: out.buffer as ArrayBuffer, errors, produced}
}

parentPort?.on('message', (m: ((EncodeTask | DecodeTask) & {id: number}) | SlotMessage) => {
  if (m.op === 'slot') {
    slots.set(m.slot, {in: new Uint8Array(m.in), out: new Uint8Array(m.out)})
    return
  }
  try {
    if (m.op === 'encode') {
      const result = encode(m)
      parentPort!.postMessage({id: m.id, result}, [result.buf, result.out])
    } else {
      const result = decode(m)
      const transfer = m.slot !== undefined ? [] : result.buf === result.out ? [result.out] : [result.buf, result.out]
      parentPort!.postMessage({id: m.id, result}, transfer)
    }
  } catch (err) {
    parentPort!.postMessage({id: m.id, error: (err as Error).message ?? String(err)})
  }
})

/**
 * Sequential decoding of a whole image (for extract and verify). The stored bytes of a batch of chunks
 * are read with one read, decompressed and checked on worker threads into one buffer holding the batch's
 * logical bytes (zero and unread chunks as zeros), and handed to the caller in order. Buffers travel to
 * the workers and back and are reused.
 */
import * as os from 'node:os'
import * as path from 'node:path'
import {VdevError} from '../core/errors'
import {WorkerPool} from '../core/workerpool'
import type {DecodeItem, DecodeResult, DecodeTask, SlotMessage} from './codec-worker'
import {crc32c} from './crc'
import {ChunkKind, type ChunkEntry} from './layout'
import {FileRanges} from './ranges'
import type {VdimgImage} from './reader'
import {sequentialAdvice} from '../sys/fadvise'

export interface DecodedChunk {
  index: number
  entry: ChunkEntry
  /** Set when the chunk failed its checks (its bytes in the batch are zeros). */
  error?: VdevError
}

export interface DecodedBatch {
  /** Image byte offset of the batch. */
  offset: number
  /** The batch's logical bytes; valid only until the callback returns (the buffer is reused). */
  data: Buffer
  /** Every chunk of the batch is zero or unread: `data` is a shared zero buffer that must not be modified. */
  allZero: boolean
  chunks: DecodedChunk[]
}

export interface DecodeAllOptions {
  threads?: number
  onBatch: (b: DecodedBatch) => void | Promise<void>
  /**
   * Stop at the first failing chunk by throwing its error (default true). Otherwise a failing chunk, or
   * every chunk of a damaged index table, is handed over with its `error` set and its bytes as zeros.
   */
  stopOnError?: boolean
  /** Stop between batches when this is aborted, throwing its reason. */
  signal?: AbortSignal
}

export async function decodeAll(img: VdimgImage, opts: DecodeAllOptions): Promise<void> {
  const threads = opts.threads ?? os.availableParallelism()
  const pool = new WorkerPool(path.join(__dirname, 'codec-worker.js'), threads)
  const stop = opts.stopOnError ?? true
  const batchChunks = Math.max(1, Math.floor((4 << 20) / img.chunkSize))
  const batchBytes = batchChunks * img.chunkSize
  const ZEROS = new ArrayBuffer(batchBytes)
  const batches = Math.ceil(img.chunkCount / batchChunks)
  // A slot's input holds a batch's stored bytes read as one span (up to 1 MiB of index tables between
  // them) or gathered (FORMAT.md §4 bounds a chunk's stored length at its length + 1/128 + 1 KiB).
  const inBytes = batchBytes + (2 << 20)
  // Each batch in flight owns a slot: shared input and output buffers the workers decode from and into,
  // registered with every worker once (SlotMessage). Nothing travels with the tasks but their items:
  // buffers transferred per batch made V8 run a full mark-compact every few batches (docs/performance.md).
  type Slot = {id: number; in: SharedArrayBuffer; out: SharedArrayBuffer}
  const free: Slot[] = []
  let slotCount = 0
  const takeSlot = (): Slot => {
    const had = free.pop()
    if (had) return had
    const s: Slot = {id: slotCount++, in: new SharedArrayBuffer(inBytes), out: new SharedArrayBuffer(batchBytes)}
    pool.broadcast({op: 'slot', slot: s.id, in: s.in, out: s.out} satisfies SlotMessage)
    return s
  }
  const tableErrors = new Map<number, VdevError>()
  type Prepared = {first: number; chunks: DecodedChunk[]; slot?: Slot; result: Promise<Pick<DecodeResult, 'errors'>>}
  // A local image is read from start to end: ask the kernel for it well ahead of the reads (cold image).
  const advise = img.ranges instanceof FileRanges ? sequentialAdvice(img.ranges.fd, img.ranges.size) : undefined

  /** Look up a batch's entries, read its stored bytes and hand it to a worker. */
  const prepare = async (batch: number): Promise<Prepared> => {
    const first = batch * batchChunks
    const last = Math.min(img.chunkCount, first + batchChunks)
    const chunks: DecodedChunk[] = []
    const failed = (i: number, error: VdevError): DecodedChunk => ({index: i, entry: {offset: 0, storedLength: 0, crc: 0, kind: ChunkKind.Zero, storedCrc: 0}, error})
    for (let i = first; i < last; i++) {
      const g = Math.floor(i / img.l2Entries)
      const known = tableErrors.get(g)
      if (known) {
        chunks.push(failed(i, known))
        continue
      }
      try {
        chunks.push({index: i, entry: await img.entry(i)})
      } catch (err) {
        // A read that failed (the disk, the network) is not damage: it stops the run with its own error.
        if (stop || !(err instanceof VdevError) || err.code === 'io') throw err
        // A damaged index table fails every chunk of its group: remember it rather than read it again per chunk.
        const tableError = await img.checkTable(g)
        if (tableError) tableErrors.set(g, tableError)
        chunks.push(failed(i, tableError ?? err))
      }
    }
    let lo = Infinity
    let hi = 0
    let sum = 0
    for (const c of chunks)
      if (c.entry.storedLength > 0) {
        lo = Math.min(lo, c.entry.offset)
        hi = Math.max(hi, c.entry.offset + c.entry.storedLength)
        sum += c.entry.storedLength
      }
    // Nothing stored (free space, unread areas): no worker needed, the bytes are a shared zero buffer.
    if (sum === 0 && chunks.every((c) => !c.error)) return {first, chunks, result: Promise.resolve({errors: []})}
    const slot = takeSlot()
    const input = Buffer.from(slot.in)
    const starts = new Map<number, number>()
    if (sum > 0) {
      // Chunks are stored in order, so a batch is one read (index tables may sit between).
      if (hi - lo <= sum + (1 << 20)) {
        advise?.ahead(lo, hi - lo)
        let got: Buffer
        try {
          got = await img.ranges.read(hi - lo, lo, input)
        } finally {
          advise?.done(lo, hi - lo)
        }
        if (got.buffer !== slot.in || got.byteOffset !== 0) got.copy(input) // a source that does not read into the given buffer (remote)
        for (const c of chunks) if (c.entry.storedLength > 0) starts.set(c.index, c.entry.offset - lo)
      } else {
        let at = 0
        for (const c of chunks)
          if (c.entry.storedLength > 0) {
            const got = await img.ranges.read(c.entry.storedLength, c.entry.offset, input.subarray(at))
            if (got.buffer !== slot.in || got.byteOffset !== at) got.copy(input, at)
            starts.set(c.index, at)
            at += c.entry.storedLength
          }
      }
    }
    const items: DecodeItem[] = chunks.map((c) => ({
      kind: c.entry.kind,
      start: starts.get(c.index) ?? 0,
      storedLength: c.error ? 0 : c.entry.storedLength,
      length: img.chunkLength(c.index),
      crc: c.entry.crc,
      storedCrc: c.entry.storedCrc,
    }))
    // The workers decode; this thread, otherwise waiting, checks the data checksums (see finish).
    const task: DecodeTask = {op: 'decode', slot: slot.id, items, skipDataCrc: true}
    const result = pool.run<DecodeResult>(task)
    result.catch(() => undefined)
    return {first, chunks, slot, result}
  }

  const finish = async (p: Prepared) => {
    const r = await p.result
    const out = p.slot?.out ?? ZEROS
    let at = 0
    p.chunks.forEach((c, k) => {
      const len = img.chunkLength(c.index)
      const why = r.errors[k]
      if (why && !c.error) c.error = img.chunkError(c.index, c.entry, why)
      else if (!c.error && c.entry.storedLength > 0 && crc32c(new Uint8Array(out, at, len)) !== c.entry.crc) {
        c.error = img.chunkError(c.index, c.entry, 'data checksum mismatch')
        new Uint8Array(out, at, len).fill(0) // a damaged chunk's bytes are zeros, never the wrong bytes
      }
      at += len
    })
    if (stop) for (const c of p.chunks) if (c.error) throw c.error
    const len = p.chunks.reduce((s, c) => s + img.chunkLength(c.index), 0)
    const allZero = !p.slot
    // FORMAT.md §6: bytes inside bad areas are zero whatever a chunk stores there (data_crc, checked above,
    // covers the bytes as stored).
    if (!allZero) for (const bad of img.badAreas.intersect(p.first * img.chunkSize, len)) new Uint8Array(out, bad.offset - p.first * img.chunkSize, bad.length).fill(0)
    await opts.onBatch({offset: p.first * img.chunkSize, data: Buffer.from(out, 0, len), chunks: p.chunks, allZero})
    if (p.slot) free.push(p.slot)
  }

  // Batches are prepared ahead, concurrently, while earlier ones are consumed in order: reads, decoding
  // and the consumer's writes overlap.
  const ahead: Array<Promise<Prepared>> = []
  let next = 0
  // One batch a worker decoding and one waiting, besides the one being consumed: each holds a slot of
  // ~6.5 MiB once touched, and a fourth batch ahead took extract of the 1.5 GiB corpus from 141 to 150 MB
  // of peak RSS (the limit is 150) without making it faster (docs/performance.md).
  const feed = () => {
    while (ahead.length < threads + 1 && next < batches) {
      const p = prepare(next++)
      p.catch(() => undefined)
      ahead.push(p)
    }
  }
  // Batches of zeros resolve without I/O, and a loop of resolved promises never returns to the event loop:
  // give it a turn now and then so that signals (SIGINT, SIGTERM) and timers are handled.
  let turn = Date.now()
  try {
    feed()
    while (ahead.length) {
      const p = await ahead.shift()!
      feed()
      await finish(p)
      if (opts.signal?.aborted) throw opts.signal.reason
      if (Date.now() - turn > 20) {
        await new Promise((resolve) => setImmediate(resolve))
        turn = Date.now()
        if (opts.signal?.aborted) throw opts.signal.reason
      }
    }
  } finally {
    await Promise.allSettled(ahead)
    advise?.close()
    await pool.close()
  }
}

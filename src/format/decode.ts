/**
 * Sequential decoding of a whole image (for extract and verify): the stored bytes of a run of chunks are
 * read with one read, decompressed and checked on worker threads, and handed to the caller in order.
 */
import * as os from 'node:os'
import * as path from 'node:path'
import {VdevError} from '../core/errors'
import {WorkerPool} from '../core/workerpool'
import type {DecodeItem, DecodeResult, DecodeTask} from './codec-worker'
import {ChunkKind, type ChunkEntry} from './layout'
import {preadExact, type VdimgImage} from './reader'

export interface DecodedChunk {
  index: number
  entry: ChunkEntry
  /** Decompressed bytes; null for zero and unread chunks (all zero). */
  data: Buffer | null
  /** Set instead of data when the chunk failed its checks (verify continues; extract stops). */
  error?: VdevError
}

export interface DecodeAllOptions {
  threads?: number
  onChunk: (c: DecodedChunk) => void | Promise<void>
  /** Stop at the first failing chunk by throwing its error (default true). */
  stopOnError?: boolean
}

interface Pending {
  chunks: Array<{index: number; entry: ChunkEntry; error?: VdevError}>
  result: Promise<DecodeResult | undefined>
  lengths: number[]
}

export async function decodeAll(img: VdimgImage, opts: DecodeAllOptions): Promise<void> {
  const threads = opts.threads ?? os.availableParallelism()
  const pool = new WorkerPool(path.join(__dirname, 'codec-worker.js'), threads)
  const stop = opts.stopOnError ?? true
  const batchChunks = Math.max(1, Math.floor((4 << 20) / img.chunkSize))
  const queue: Pending[] = []
  const maxInFlight = threads * 3

  const finish = async (p: Pending) => {
    const r = await p.result
    let at = 0
    let k = 0
    for (const c of p.chunks) {
      const len = img.chunkLength(c.index)
      if (c.error) {
        if (stop) throw c.error
        await opts.onChunk({index: c.index, entry: c.entry, data: null, error: c.error})
        continue
      }
      if (c.entry.storedLength === 0) {
        await opts.onChunk({index: c.index, entry: c.entry, data: null})
        continue
      }
      const why = r!.errors[k++]
      const data = Buffer.from(r!.out, at, len)
      at += len
      if (why) {
        const error = img.chunkError(c.index, c.entry, why)
        if (stop) throw error
        await opts.onChunk({index: c.index, entry: c.entry, data: null, error})
      } else await opts.onChunk({index: c.index, entry: c.entry, data})
    }
  }

  try {
    for (let first = 0; first < img.chunkCount; first += batchChunks) {
      const last = Math.min(img.chunkCount, first + batchChunks)
      const chunks: Pending['chunks'] = []
      for (let i = first; i < last; i++) {
        try {
          chunks.push({index: i, entry: await img.entry(i)})
        } catch (err) {
          if (stop || !(err instanceof VdevError)) throw err
          chunks.push({index: i, entry: {offset: 0, storedLength: 0, crc: 0, kind: ChunkKind.Zero, storedCrc: 0}, error: err})
        }
      }
      const stored = chunks.filter((c) => !c.error && c.entry.storedLength > 0)
      let result: Promise<DecodeResult | undefined> = Promise.resolve(undefined)
      if (stored.length) {
        // Chunks are stored in order, so a batch is one read (index tables may sit between).
        const lo = Math.min(...stored.map((c) => c.entry.offset))
        const hi = Math.max(...stored.map((c) => c.entry.offset + c.entry.storedLength))
        const sum = stored.reduce((s, c) => s + c.entry.storedLength, 0)
        let buf: Buffer
        const items: DecodeItem[] = []
        if (hi - lo <= sum + (1 << 20)) {
          buf = await preadExact(img.fd, hi - lo, lo, img.path)
          for (const c of stored) items.push(item(c, c.entry.offset - lo, img.chunkLength(c.index)))
        } else {
          buf = Buffer.allocUnsafeSlow(sum)
          let at = 0
          for (const c of stored) {
            ;(await preadExact(img.fd, c.entry.storedLength, c.entry.offset, img.path)).copy(buf, at)
            items.push(item(c, at, img.chunkLength(c.index)))
            at += c.entry.storedLength
          }
        }
        const task: DecodeTask = {op: 'decode', buf: buf.buffer as ArrayBuffer, items}
        result = pool.run<DecodeResult>(task, [task.buf])
        result.catch(() => undefined)
      }
      queue.push({chunks, result, lengths: []})
      while (queue.length >= maxInFlight) await finish(queue.shift()!)
    }
    while (queue.length) await finish(queue.shift()!)
  } finally {
    await pool.close()
  }
}

function item(c: {entry: ChunkEntry}, start: number, length: number): DecodeItem {
  return {kind: c.entry.kind, start, storedLength: c.entry.storedLength, length, crc: c.entry.crc, storedCrc: c.entry.storedCrc}
}

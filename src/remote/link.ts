/**
 * How serving threads read a remote object synchronously (docs/remote.md, "Threads"). Serving threads
 * answer one request at a time with readSync; HTTP is asynchronous. So the process's own instance of the
 * object (HttpObject, on the thread that opened the image: the daemon's or `vdev serve`'s main thread,
 * whose event loop is otherwise idle) does every GET, and each serving thread gets a *link* to it
 * (src/threads/sync-call.ts: a MessagePort and a shared flag the thread sleeps on in Atomics.wait). The
 * owner fetches (through its read-ahead, its shared in-flight GETs and its ETag pin — one of each for the
 * whole process, whatever the number of threads) and answers with the bytes, transferred, not copied.
 *
 * The owner's read has its own deadline (--remote-timeout); the thread waits that long plus a margin, so
 * a read never hangs even if the owner is stuck: it fails with EIO.
 */
import type {TransferListItem} from 'node:worker_threads'
import {EXIT_CODES, VdevError, type ErrorCode} from '../core/errors'
import type {ByteRanges} from '../format/ranges'
import {SyncCaller, offerSyncLink, type SyncLink} from '../threads/sync-call'

/** What travels to a serving thread (structured-cloned; the port inside `link` is transferred). */
export interface RangesLink {
  link: SyncLink
  name: string
  size: number
  /** How long the owner may take for one read (ms). */
  timeoutMs: number
}

type Request = {len: number; pos: number}

/** On the owner's thread: a new link answering from `ranges`. The caller transfers `transfer`. */
export function offerLink(ranges: ByteRanges, timeoutMs: number): {value: RangesLink; transfer: TransferListItem[]} {
  const link = offerSyncLink<Request, ArrayBuffer>(async (m) => {
    const b = await ranges.read(m.len, m.pos)
    // Transfer the bytes when they own their memory whole; copy otherwise.
    const own = b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && !(b.buffer instanceof SharedArrayBuffer)
    const data = own ? (b.buffer as ArrayBuffer) : (new Uint8Array(b).buffer as ArrayBuffer)
    return {value: data, transfer: [data]}
  })
  return {value: {link, name: ranges.name, size: ranges.size, timeoutMs}, transfer: [link.port]}
}

const ERROR_CODES = new Set<string>(Object.keys(EXIT_CODES))

/** On a serving thread: the object's bytes, read synchronously through the link. */
export class LinkedRanges implements ByteRanges {
  readonly synchronous = true
  readonly name: string
  readonly size: number
  private readonly owner: SyncCaller<Request, ArrayBuffer>
  private closed = false

  constructor(
    private readonly link: RangesLink,
    readonly reopen?: Record<string, string | number | boolean>,
  ) {
    this.name = link.name
    this.size = link.size
    this.owner = new SyncCaller(link.link)
  }

  readSync(len: number, pos: number, into?: Buffer): Buffer {
    if (this.closed) throw new VdevError('io', `${this.name}: closed`)
    let data: ArrayBuffer
    try {
      // The owner's read has its own deadline; wait that long plus a margin, never forever.
      data = this.owner.call({len, pos}, [], this.link.timeoutMs + 5000)
    } catch (err) {
      const code = (err as {code?: string}).code
      if (code === 'ETIMEDOUT')
        throw new VdevError('io', `${this.name}: bytes ${pos}-${pos + len - 1}: no answer from the fetching thread within ${Math.round((this.link.timeoutMs + 5000) / 1000)} s`)
      throw new VdevError(code && ERROR_CODES.has(code) ? (code as ErrorCode) : 'io', (err as Error).message)
    }
    const b = Buffer.from(data)
    if (b.length !== len) throw new VdevError('io', `${this.name}: ${b.length} bytes for a read of ${len}`)
    if (into && into.length >= len) {
      b.copy(into, 0)
      return into.subarray(0, len)
    }
    return b
  }

  read(len: number, pos: number, into?: Buffer): Promise<Buffer> {
    try {
      return Promise.resolve(this.readSync(len, pos, into))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.owner.close()
  }
}

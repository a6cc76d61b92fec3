/**
 * How serving threads read a remote object synchronously (docs/remote.md, "Threads"). Serving threads
 * answer one request at a time with readSync; HTTP is asynchronous. So the process's own instance of the
 * object (HttpObject, on the thread that opened the image: the daemon's or `vdev serve`'s main thread,
 * whose event loop is otherwise idle) does every GET, and each serving thread gets a *link* to it
 * (src/threads/sync-call.ts: a MessagePort and a shared flag the thread sleeps on in Atomics.wait). The
 * owner fetches (through its read-ahead, its shared in-flight GETs and its ETag pin — one of each for the
 * whole process, whatever the number of threads) and answers with the bytes, transferred, not copied.
 *
 * Each hop to the owner costs two thread wake-ups, so a thread does what it can without one:
 * - the cache (cache.ts) is files: the thread reads and fills it itself, sharing the owner's counters;
 * - when the owner answers from a read-ahead window, it sends up to SLICE bytes from the read on, and the
 *   thread answers the stream's next reads from that slice (MAX_SLICES per thread: bounded memory).
 * Both stop once the owner has seen the object change (a shared flag): every read then goes to the owner,
 * which fails it.
 *
 * The owner's read has its own deadline (--remote-timeout); the thread waits that long plus a margin, so
 * a read never hangs even if the owner is stuck: it fails with EIO.
 */
import type {TransferListItem} from 'node:worker_threads'
import {EXIT_CODES, VdevError, type ErrorCode} from '../core/errors'
import type {ByteRanges} from '../format/ranges'
import {SyncCaller, offerSyncLink, type SyncLink} from '../threads/sync-call'
import {RangeCache, type SharedCache} from './cache'
import {CurlRanges, Delegate, type DirectTarget} from './curl'
import {letGo, type WindowPool} from './window-pool'

/** Most bytes the owner sends a thread beyond its read, from a read-ahead window. */
export const SLICE = 1 << 20
/** Slices a thread keeps (nbdcopy reads four streams at once). */
export const MAX_SLICES = 4
/** Ends of the threads' recent reads remembered (shared): a read near one may be a stream's next. */
export const RECENT_READS = 16
/**
 * A read starting up to AHEAD past a recent read's end (readahead.ts's reach), or up to BEHIND before it
 * (threads deliver a stream's reads slightly out of order), goes to the owner, whose read-ahead follows streams.
 */
const AHEAD = 256 << 10
const BEHIND = 128 << 10
/** After this many own GETs in a row left to the owner (curl.ts Delegate), the next SKIP_DIRECT reads go to it directly. */
const DELEGATED_RUN = 4
const SKIP_DIRECT = 64

/** What the owner shares with every thread besides the port. */
export interface RangesInfo {
  name: string
  size: number
  /** How long the owner may take for one read (ms). */
  timeoutMs: number
  /** Int32 [0] = 1 once the owner has seen the object change. */
  changed: SharedArrayBuffer
  /** The owner's cache, if it has one. */
  cache?: SharedCache
  /** http(s): how a thread GETs a read itself (curl.ts) instead of asking the owner. */
  direct?: DirectTarget
  /** BigInt64 [requests, bytes, retries] of the threads' own GETs, added to the owner's stats. */
  counters?: SharedArrayBuffer
  /** Float64 [RECENT_READS]: where the threads' recent reads ended. */
  recent?: SharedArrayBuffer
  /** Int32 per slot: threads holding a view of a read-ahead window's memory (window-pool.ts). */
  holders?: SharedArrayBuffer
}

/** What travels to a serving thread (structured-cloned; the port inside `link` is transferred). */
export interface RangesLink extends RangesInfo {
  link: SyncLink
}

type Request = {len: number; pos: number; max: number}
/**
 * Bytes the owner gave away (transferred), or a view of a read-ahead window's shared memory (not copied):
 * the thread counts itself out of `slot` (letGo) when it no longer keeps it.
 */
type Answer = ArrayBuffer | {shared: SharedArrayBuffer; offset: number; length: number; slot: number}
/** Owner side: [pos, pos+len), or up to `max` bytes from pos. */
type Reader = (len: number, pos: number, max: number) => Promise<Buffer>

/**
 * On the owner's thread: a new link answering through `read`. The caller transfers `transfer`. `pool`: the
 * read-ahead's window memory, whose views posted to the thread are counted (WindowPool.hold).
 */
export function offerLink(info: RangesInfo, read: Reader, pool?: WindowPool): {value: RangesLink; transfer: TransferListItem[]} {
  const link = offerSyncLink<Request, Answer>(async (m) => {
    const b = await read(m.len, m.pos, m.max)
    // A window's landed bytes are never written again: the thread reads them where they are, counted in
    // as a holder of the window's memory, which goes back to the pool only once the thread lets go.
    if (b.buffer instanceof SharedArrayBuffer) return {value: {shared: b.buffer, offset: b.byteOffset, length: b.length, slot: pool ? pool.hold(b) : -1}}
    // Transfer the bytes when they own their memory whole; copy otherwise.
    const own = b.byteOffset === 0 && b.byteLength === b.buffer.byteLength
    const data = own ? (b.buffer as ArrayBuffer) : (new Uint8Array(b).buffer as ArrayBuffer)
    return {value: data, transfer: [data]}
  })
  return {value: {...info, link}, transfer: [link.port]}
}

const ERROR_CODES = new Set<string>(Object.keys(EXIT_CODES))

/** A read inside localOnly() of bytes the cache does not hold. */
class NotLocal extends Error {
  constructor() {
    super('not in the cache')
  }
}

/** On a serving thread: the object's bytes, read synchronously through the link. */
export class LinkedRanges implements ByteRanges {
  readonly synchronous = true
  readonly name: string
  readonly size: number
  private readonly owner: SyncCaller<Request, Answer>
  private readonly changed: Int32Array
  private readonly cache: RangeCache | undefined
  /** Bytes the owner sent beyond a read, most recently used last. */
  private slices: Array<{pos: number; data: Buffer; slot: number}> = []
  /** Reads that went to the owner (for tests). */
  calls = 0
  /** Reads this thread fetched itself (for tests); those of them it then left to the owner (Delegate). */
  directCalls = 0
  delegated = 0
  /** Own GETs left to the owner in a row; reads that go to the owner without trying first. */
  private delegatedRun = 0
  private skipDirect = 0
  private readonly direct: CurlRanges | undefined
  private readonly recent: Float64Array | undefined
  private readonly counters: BigInt64Array | undefined
  private readonly holders: Int32Array | undefined
  private recentAt = 0
  private closed = false
  /** Inside localOnly(): reads only from the cache. */
  private local = false

  constructor(
    private readonly link: RangesLink,
    readonly reopen?: Record<string, string | number | boolean>,
  ) {
    this.name = link.name
    this.size = link.size
    // An answer that comes too late (after the thread gave up waiting) or is left at close may view a
    // window: count the thread out of it, as for one it took.
    this.owner = new SyncCaller<Request, Answer>(link.link, (a) => {
      if (!(a instanceof ArrayBuffer)) letGo(this.holders, a.slot)
    })
    this.changed = new Int32Array(link.changed)
    this.cache = link.cache ? RangeCache.attach(link.cache) : undefined
    this.recent = link.recent ? new Float64Array(link.recent) : undefined
    this.counters = link.counters ? new BigInt64Array(link.counters) : undefined
    this.holders = link.holders ? new Int32Array(link.holders) : undefined
    if (link.direct && this.recent) {
      const counters = this.counters
      this.direct = CurlRanges.open(link.direct, {
        name: link.name,
        size: link.size,
        timeoutMs: link.timeoutMs,
        changed: this.changed,
        onBytes: (requests, bytes, retries) => {
          if (!counters) return
          Atomics.add(counters, 0, BigInt(requests))
          Atomics.add(counters, 1, BigInt(bytes))
          if (retries) Atomics.add(counters, 2, BigInt(retries))
        },
      })
    }
  }

  /** Whether [pos, …) starts near where a recent read ended (a stream, which the owner's read-ahead serves). */
  private nearRecent(pos: number): boolean {
    const r = this.recent!
    for (let i = 0; i < r.length; i++) if (pos - r[i] <= AHEAD && r[i] - pos <= BEHIND) return true
    return false
  }

  private remember(end: number): void {
    const r = this.recent
    if (!r) return
    // Racy by design (a hint): threads overwrite slots without locking; a lost slot costs one hop at most.
    r[(this.recentAt = (this.recentAt + 1 + ((Math.random() * 2) | 0)) % r.length)] = end
  }

  /** Whether this seek goes to the owner without an own GET first (after a run of them left to it). */
  private skippingDirect(): boolean {
    if (this.skipDirect <= 0) return false
    this.skipDirect--
    return true
  }

  /** Whether localOnly can find anything: a cache. */
  get hasLocal(): boolean {
    return this.cache !== undefined
  }

  localOnly<T>(f: () => T): T {
    this.local = true
    try {
      return f()
    } finally {
      this.local = false
    }
  }

  checkedCrc(b: Buffer): number | undefined {
    return this.cache?.checkedCrc(b)
  }

  readSync(len: number, pos: number, into?: Buffer): Buffer {
    if (this.closed) throw new VdevError('io', `${this.name}: closed`)
    if (this.local) {
      // Decoding ahead (reader.ts prefetch): the cache or nothing. Not a VdevError: nobody asked for these
      // bytes, so no error about them is reported (nor taken for damage: an index table's copy is not tried).
      const c = len > 0 && Atomics.load(this.changed, 0) === 0 ? this.cache?.get(pos, len, into, false) : undefined
      if (!c) throw new NotLocal()
      return c
    }
    if (len > 0 && Atomics.load(this.changed, 0) === 0) {
      // Straight into the caller's buffer when it has one (the reader's stored-bytes scratch).
      const c = this.cache?.get(pos, len, into)
      if (c) return c
      const v = this.fromSlice(len, pos)
      if (v) {
        this.remember(pos + len)
        this.cache?.put(pos, v)
        return copyOut(v, into, true)
      }
      if (this.direct && pos + len <= this.size && !this.nearRecent(pos) && !this.skippingDirect()) {
        // A seek: GET exactly these bytes here, no hop (a stream's next reads go to the owner's read-ahead).
        this.remember(pos + len)
        this.directCalls++
        let d: Buffer | undefined
        try {
          d = this.direct.read(len, pos, into)
          this.delegatedRun = 0
        } catch (err) {
          // The owner's GET will say what the answer meant (an S3 error), or sign it (no fresh keys here).
          if (!(err instanceof Delegate)) throw err
          this.delegated++
          // Refused again and again (keys the server no longer takes, a clock far off): a wasted GET before
          // every hop. Go straight to the owner for a while, then try again.
          if (++this.delegatedRun >= DELEGATED_RUN) {
            this.skipDirect = SKIP_DIRECT
            this.delegatedRun = 0
          }
        }
        if (d) {
          this.cache?.put(pos, d)
          return d.buffer === into?.buffer ? d : copyOut(d, into, false)
        }
      } else this.remember(pos + len)
    } else if (this.slices.length) this.dropSlices()
    this.calls++
    const a = this.call(len, pos)
    const b = a instanceof ArrayBuffer ? Buffer.from(a) : Buffer.from(a.shared, a.offset, a.length)
    const slot = a instanceof ArrayBuffer ? -1 : a.slot
    let kept = false
    try {
      if (b.length < len || b.length > Math.max(len, SLICE)) throw new VdevError('io', `${this.name}: ${b.length} bytes for a read of ${len}`)
      if (b.length > len) {
        // Kept whole: the next reads of the stream are in it.
        if (this.slices.length >= MAX_SLICES) letGo(this.holders, this.slices.shift()!.slot)
        this.slices.push({pos, data: b, slot})
        kept = true
      }
      const own = b.subarray(0, len)
      this.cache?.put(pos, own)
      return copyOut(own, into, own !== b || !(a instanceof ArrayBuffer))
    } finally {
      // A view not kept is let go once copied out (copyOut copies a view: the caller never gets one).
      if (!kept) letGo(this.holders, slot)
    }
  }

  /** Let go of every slice (the window memory they view goes back to the owner's pool). */
  private dropSlices(): void {
    for (const s of this.slices) letGo(this.holders, s.slot)
    this.slices = []
  }

  /** A view of [pos, pos+len) in a slice the owner sent, or undefined. */
  private fromSlice(len: number, pos: number): Buffer | undefined {
    for (let i = this.slices.length - 1; i >= 0; i--) {
      const s = this.slices[i]
      if (pos < s.pos || pos + len > s.pos + s.data.length) continue
      if (i !== this.slices.length - 1) this.slices.push(this.slices.splice(i, 1)[0])
      return s.data.subarray(pos - s.pos, pos - s.pos + len)
    }
    return undefined
  }

  private call(len: number, pos: number): Answer {
    try {
      // The owner's read has its own deadline; wait that long plus a margin, never forever.
      return this.owner.call({len, pos, max: SLICE}, [], this.link.timeoutMs + 5000)
    } catch (err) {
      const code = (err as {code?: string}).code
      if (code === 'ETIMEDOUT')
        throw new VdevError('io', `${this.name}: bytes ${pos}-${pos + len - 1}: no answer from the fetching thread within ${Math.round((this.link.timeoutMs + 5000) / 1000)} s`)
      throw new VdevError(code && ERROR_CODES.has(code) ? (code as ErrorCode) : 'io', (err as Error).message)
    }
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
    this.dropSlices()
    this.direct?.close()
    this.owner.close()
  }
}

/** `b` into `into` when it fits; else `b`, copied when it is a view (of a slice or a window) the caller must not keep. */
function copyOut(b: Buffer, into: Buffer | undefined, view: boolean): Buffer {
  if (into && into.length >= b.length) {
    b.copy(into, 0)
    return into.subarray(0, b.length)
  }
  return view ? Buffer.from(b) : b
}

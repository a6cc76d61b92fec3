/**
 * The copy-on-write overlay (docs/OVERLAY.md): a layer over any source that takes writes, write-zeroes,
 * discards and flushes into one append-only log file and merges that log with the base on reads. The base
 * is only ever read. The log is the whole format: a checksummed header naming the base, then records, each
 * one checksummed header (and the data it carries) appended at the end; on open the longest valid prefix of
 * records is the overlay, and anything after it (a write torn by a crash) is cut off.
 *
 * Why this is crash safe: a record is appended to fresh space only, so no byte that an earlier record or the
 * header points at is ever rewritten; a record counts only if its header and data checksums match, so a torn
 * record is invisible (its sectors read as they were); flush (and FUA) is fdatasync, so every record
 * acknowledged before it is on stable storage and, the log being a prefix, replayed.
 *
 * One owner: the process's instance (on the thread that opened it) keeps the map. Serving threads get a
 * view of it (overlay-view.ts, through `descriptor` + `threadLink`): reads of ranges the overlay has never
 * touched go straight to the thread's own instance of the base; whole-sector writes are appended by the
 * thread itself at the log's shared append point (overlay-log.ts), which publishes each record to the
 * owner's map; partial-sector and FUA writes, flushes and reads of covered ranges are calls to the owner.
 * A shared bitmap says which granules the overlay covers; a granule's bit is set before the record that
 * touches it is written, so a read that starts after a write was acknowledged always goes to the owner.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import {BlockError} from '../core/block-error'
import {VdevError, ioError, type BadRange} from '../core/errors'
import type {BlockSource, Extent, ReadResult, WriteOptions} from '../core/source'
import {crc32c} from '../format/crc'
import {syncDirectory} from '../sys/dirsync'
import {lockExclusive} from '../sys/file-lock'
import {offerSyncLink} from '../threads/sync-call'
import {RECORD_HEADER_SIZE, RECORD_MAGIC, SharedLog, encodeRecordHeader, type Published} from './overlay-log'
import type {SourceDescriptor, ThreadLink} from '../core/source'

// ---- the format (docs/OVERLAY.md, "Layout"); all integers little-endian ----
export const OVERLAY_MAGIC = Buffer.from('VDEVOVL\0', 'latin1')
export const OVERLAY_VERSION = 1
export const HEADER_SIZE = 4096
export {RECORD_MAGIC, RECORD_HEADER_SIZE, encodeRecordHeader} from './overlay-log'
/** The largest record's data: larger writes become several records. */
export const MAX_RECORD_DATA = 32 * 1024 * 1024
export const BASE_MEDIA_HASH = 1
export const BASE_RAW_IDENTITY = 2
/** Bytes at each end of a raw base hashed into its identity. */
export const IDENTITY_SPAN = 1024 * 1024

export const REC_WRITE = 1
export const REC_ZERO = 2
export const REC_TRIM = 3

export interface BaseIdentity {
  kind: number
  hash: Buffer
}

export interface OverlayHeader {
  version: number
  size: number
  sectorSize: number
  base: BaseIdentity
  id: Buffer
  created: number
}

/** What a base is, for the header: its media hash, or (no media hash) a hash of size, sector size and both ends. */
export async function baseIdentity(base: BlockSource): Promise<BaseIdentity> {
  const media = (base as {sha256?: unknown}).sha256
  if (typeof media === 'string' && /^[0-9a-f]{64}$/i.test(media)) return {kind: BASE_MEDIA_HASH, hash: Buffer.from(media, 'hex')}
  const h = crypto.createHash('sha256')
  const dims = Buffer.alloc(12)
  dims.writeBigUInt64LE(BigInt(base.size), 0)
  dims.writeUInt32LE(base.sectorSize, 8)
  h.update(dims)
  const first = Math.min(IDENTITY_SPAN, base.size)
  h.update((await base.read(0, first)).data)
  const lastAt = Math.max(0, base.size - IDENTITY_SPAN)
  h.update((await base.read(lastAt, base.size - lastAt)).data)
  return {kind: BASE_RAW_IDENTITY, hash: h.digest()}
}

export function describeBase(b: BaseIdentity): string {
  return `${b.kind === BASE_MEDIA_HASH ? 'media sha256' : b.kind === BASE_RAW_IDENTITY ? 'raw identity' : `kind ${b.kind}`} ${b.hash.toString('hex')}`
}

export function encodeHeader(h: OverlayHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE)
  OVERLAY_MAGIC.copy(b, 0)
  b.writeUInt16LE(h.version, 8)
  b.writeUInt16LE(0, 10)
  b.writeUInt32LE(HEADER_SIZE, 12)
  b.writeBigUInt64LE(BigInt(h.size), 16)
  b.writeUInt32LE(h.sectorSize, 24)
  b.writeUInt32LE(h.base.kind, 28)
  h.base.hash.copy(b, 32, 0, 32)
  h.id.copy(b, 64, 0, 16)
  b.writeBigUInt64LE(BigInt(h.created), 80)
  b.writeUInt32LE(crc32c(b.subarray(0, HEADER_SIZE - 4)), HEADER_SIZE - 4)
  return b
}

export function decodeHeader(b: Buffer, name: string): OverlayHeader {
  const bad = (why: string) => new VdevError('format', `${name}: not a valid vdev overlay: ${why}`)
  if (b.length < HEADER_SIZE) throw bad(`shorter than its ${HEADER_SIZE}-byte header (${b.length} bytes)`)
  if (!b.subarray(0, 8).equals(OVERLAY_MAGIC)) throw bad('bad magic (at byte 0)')
  if (b.readUInt32LE(HEADER_SIZE - 4) !== crc32c(b.subarray(0, HEADER_SIZE - 4))) throw bad('header checksum mismatch (at byte 4092)')
  const version = b.readUInt16LE(8)
  if (version !== OVERLAY_VERSION) throw new VdevError('unsupported', `${name}: overlay version ${version} is not supported (this vdev reads version ${OVERLAY_VERSION})`)
  if (b.readUInt32LE(12) !== HEADER_SIZE) throw bad(`header length ${b.readUInt32LE(12)} (at byte 12)`)
  const size = Number(b.readBigUInt64LE(16))
  const sectorSize = b.readUInt32LE(24)
  if (![512, 1024, 2048, 4096].includes(sectorSize)) throw bad(`sector size ${sectorSize} (at byte 24)`)
  if (!Number.isSafeInteger(size) || size <= 0) throw bad(`size ${b.readBigUInt64LE(16)} (at byte 16)`)
  const kind = b.readUInt32LE(28)
  if (kind !== BASE_MEDIA_HASH && kind !== BASE_RAW_IDENTITY) throw bad(`base kind ${kind} (at byte 28)`)
  return {
    version,
    size,
    sectorSize,
    base: {kind, hash: Buffer.from(b.subarray(32, 64))},
    id: Buffer.from(b.subarray(64, 80)),
    created: Number(b.readBigUInt64LE(80)),
  }
}

// ---- the map of written extents ----

export interface MapEntry {
  start: number
  end: number
  kind: 'data' | 'zero'
  /** File offset of byte `start`'s data (data entries). */
  file: number
  /** The record type that made it (REC_ZERO or REC_TRIM for zero entries). */
  type: number
}

/** Non-overlapping extents sorted by start; a newer extent replaces whatever it covers. */
export class ExtentMap {
  readonly entries: MapEntry[] = []

  /** Index of the first entry whose end is > offset. */
  private first(offset: number): number {
    let lo = 0
    let hi = this.entries.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.entries[mid].end <= offset) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  set(e: MapEntry): void {
    const i = this.first(e.start)
    const keep: MapEntry[] = []
    let j = i
    while (j < this.entries.length && this.entries[j].start < e.end) {
      const o = this.entries[j]
      if (o.start < e.start) keep.push({...o, end: e.start})
      if (o.end > e.end) keep.push({...o, start: e.end, file: o.kind === 'data' ? o.file + (e.end - o.start) : 0})
      j++
    }
    const left = keep.filter((k) => k.start < e.start)
    const right = keep.filter((k) => k.start >= e.end)
    this.entries.splice(i, j - i, ...left, e, ...right)
  }

  /** Entries overlapping [offset, end), clipped to it. */
  overlapping(offset: number, end: number): MapEntry[] {
    const out: MapEntry[] = []
    for (let i = this.first(offset); i < this.entries.length && this.entries[i].start < end; i++) {
      const o = this.entries[i]
      const s = Math.max(o.start, offset)
      out.push({...o, start: s, end: Math.min(o.end, end), file: o.kind === 'data' ? o.file + (s - o.start) : 0})
    }
    return out
  }

  get bytes(): number {
    let n = 0
    for (const e of this.entries) n += e.end - e.start
    return n
  }
}

// ---- replay ----

export interface ReplayResult {
  map: ExtentMap
  /** End of the valid prefix: where the next record goes. */
  tail: number
  records: number
  lastSeq: number
  /** Bytes after the valid prefix (a torn or unacknowledged tail), cut off when opened for writing. */
  discarded: number
}

/** Up to `len` bytes at `pos` (fewer at the end of the file). */
export function readAt(fd: number, len: number, pos: number): Buffer {
  const b = Buffer.alloc(len)
  let got = 0
  while (got < len) {
    const n = fs.readSync(fd, b, got, len - got, pos + got)
    if (n === 0) break
    got += n
  }
  return got === len ? b : b.subarray(0, got)
}

/** Read the records after the header and keep the longest valid prefix (docs/OVERLAY.md, "Opening"). */
export function replay(fd: number, h: OverlayHeader, fileSize: number): ReplayResult {
  const map = new ExtentMap()
  let at = HEADER_SIZE
  let seq = 0
  let records = 0
  for (;;) {
    if (at + RECORD_HEADER_SIZE > fileSize) break
    const r = readAt(fd, RECORD_HEADER_SIZE, at)
    if (r.length < RECORD_HEADER_SIZE) break
    if (r.readUInt32LE(0) !== RECORD_MAGIC || r.readUInt32LE(60) !== crc32c(r.subarray(0, 60))) break
    if (!r.subarray(32, 48).equals(h.id)) break
    const type = r.readUInt16LE(4)
    const rseq = Number(r.readBigUInt64LE(8))
    const offset = Number(r.readBigUInt64LE(16))
    const length = Number(r.readBigUInt64LE(24))
    if (rseq !== seq + 1) break
    if (type !== REC_WRITE && type !== REC_ZERO && type !== REC_TRIM) break
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length <= 0 || offset % h.sectorSize !== 0) break
    if (offset + length > h.size || (length % h.sectorSize !== 0 && offset + length !== h.size)) break
    const dataAt = at + RECORD_HEADER_SIZE
    let next = dataAt
    if (type === REC_WRITE) {
      // The size is checked before anything is allocated from it.
      if (length > MAX_RECORD_DATA || dataAt + length > fileSize) break
      const data = readAt(fd, length, dataAt)
      if (data.length < length || crc32c(data) !== r.readUInt32LE(48)) break
      next = dataAt + length
      map.set({start: offset, end: offset + length, kind: 'data', file: dataAt, type})
    } else {
      if (r.readUInt32LE(48) !== 0) break
      map.set({start: offset, end: offset + length, kind: 'zero', file: 0, type})
    }
    seq = rseq
    records++
    at = next
  }
  return {map, tail: at, records, lastSeq: seq, discarded: fileSize - at}
}

// ---- the layer ----

/** A serving thread's call to the overlay's owner (overlay-view.ts). */
export type OverlayCall =
  | {op: 'read'; offset: number; length: number}
  | {op: 'write'; offset: number; data: ArrayBuffer; fua?: boolean}
  | {op: 'zero' | 'trim'; offset: number; length: number; fua?: boolean}
  | {op: 'flush'}
  | {op: 'extents'; offset: number; length: number}
  /** The exclusive turn (BlockSource.exclusive): granted once every earlier turn was given back. */
  | {op: 'lock' | 'unlock'}
  /** Records were appended by the thread (answered, but nothing waits for it): empty the ring, look at compaction. */
  | {op: 'poke'}

export interface OverlayAnswer {
  data?: ArrayBuffer
  bad?: BadRange[]
  extents?: Extent[]
}

/** What a serving thread's view gets from the owner (Overlay.threadLink). */
export interface OverlayLink {
  link: import('../threads/sync-call').SyncLink
  coverage: SharedArrayBuffer
  granuleShift: number
  /** The log's append point (overlay-log.ts: SharedLog), where the thread appends whole-sector records itself. */
  log: SharedArrayBuffer
  /** The overlay id, for the records' headers. */
  id: Uint8Array
  /** What the base offered the thread's instance of it (BlockSource.threadLink), if anything. */
  base?: unknown
}

export interface OverlayOpenOptions {
  /** Create the file when it does not exist (default true). */
  create?: boolean
  /**
   * Compact the log while serving once its dead bytes (overwritten records) exceed both what it holds and
   * this many bytes (docs/OVERLAY.md, "Compaction while serving"). Default: VDEV_OVERLAY_COMPACT_MIB MiB,
   * else 256 MiB; 0 never compacts.
   */
  compactMinBytes?: number
  /** Where compaction says what it did (a daemon's log). */
  log?: (line: string) => void
}

const DEFAULT_COMPACT_MIN_BYTES = 256 * 1024 * 1024
/** Records the compacted log is made of, at most: what compaction holds in memory at once. */
const COMPACT_RECORD_BYTES = 4 * 1024 * 1024
/** Left to copy while writes wait, at most (the rest is copied while they go on). */
const COMPACT_FINAL_BYTES = 8 * 1024 * 1024

function compactMinFromEnv(): number {
  const v = process.env.VDEV_OVERLAY_COMPACT_MIB
  if (v === undefined || v === '') return DEFAULT_COMPACT_MIN_BYTES
  const n = Number(v)
  if (!Number.isFinite(n) || n < 0) throw new VdevError('usage', `VDEV_OVERLAY_COMPACT_MIB=${v}: want a number of MiB (0: never compact while serving)`)
  return Math.round(n * 1024 * 1024)
}

/** An open log file and the reads still using it: a log replaced by compaction is closed after them. */
interface LogFile {
  fd: number
  users: number
  retired: boolean
}

function release(f: LogFile): void {
  if (--f.users === 0 && f.retired) fs.close(f.fd, () => {})
}

/** What one compaction while serving did. */
export interface OnlineCompaction {
  bytesBefore: number
  bytesAfter: number
  recordsAfter: number
  ms: number
}

const fdatasync = promisify(fs.fdatasync)

export class Overlay implements BlockSource {
  readonly size: number
  readonly sectorSize: number
  readonly writable = true
  /**
   * Serving threads open a view of this overlay (overlay-view.ts) from it, with the link `threadLink` gives;
   * absent when the base cannot be opened on a thread.
   */
  readonly descriptor: SourceDescriptor | undefined
  /** The granules (2^granuleShift bytes) the overlay covers: one bit each, shared with serving threads' views. */
  readonly coverage: SharedArrayBuffer
  readonly granuleShift: number
  private readonly bits: Uint8Array
  private file: LogFile
  /** The append point, shared with serving threads' views, which append whole-sector records themselves. */
  private readonly shared: SharedLog
  private readonly compactMin: number
  private readonly log: (line: string) => void
  /** The tail at which to look again whether the log is worth compacting (threads poke the owner there). */
  private checkAt = 0
  private compacting: Promise<OnlineCompaction | undefined> | undefined
  /** Compactions done while serving (tests and `overlay info` of a live file read the file itself). */
  compactions = 0
  /** Mutations run one at a time, in the order of their records. */
  private chain: Promise<unknown> = Promise.resolve()
  private closed = false

  private constructor(
    readonly base: BlockSource,
    readonly path: string,
    fd: number,
    readonly header: OverlayHeader,
    readonly map: ExtentMap,
    r: ReplayResult,
    opts: OverlayOpenOptions,
  ) {
    this.file = {fd, users: 0, retired: false}
    this.compactMin = opts.compactMinBytes ?? compactMinFromEnv()
    this.log = opts.log ?? (() => {})
    this.shared = new SharedLog()
    this.shared.set(fd, r.tail, r.lastSeq)
    this.nextCheck = r.tail
    this.size = base.size
    this.sectorSize = base.sectorSize
    // At most 2^25 granules (a 4 MiB bitmap), each at least 4 KiB.
    this.granuleShift = Math.max(12, Math.ceil(Math.log2(Math.max(1, this.size / 2 ** 25))))
    this.coverage = new SharedArrayBuffer(Math.ceil(Math.ceil(this.size / 2 ** this.granuleShift) / 8))
    this.bits = new Uint8Array(this.coverage)
    for (const e of map.entries) this.cover(e.start, e.end)
    this.descriptor = base.descriptor ? {kind: 'overlay', path, options: {base: JSON.stringify(base.descriptor)}} : undefined
  }

  /** Mark [start, end) as covered, before anything there changes. */
  private cover(start: number, end: number): void {
    for (let g = Math.floor(start / 2 ** this.granuleShift), last = Math.floor((end - 1) / 2 ** this.granuleShift); g <= last; g++) {
      Atomics.or(this.bits, g >> 3, 1 << (g & 7))
    }
  }

  /** End of the log: where the next record goes. */
  private get tail(): number {
    return this.shared.tail
  }

  private set nextCheck(at: number) {
    this.checkAt = at
    this.shared.nextCheck = at
  }

  private get nextCheck(): number {
    return this.checkAt
  }

  /** Apply the records serving threads appended since last time to the map (in sequence order). */
  private drain(): void {
    this.shared.drain((r: Published) => this.apply(r))
  }

  private apply(r: Published): void {
    if (r.type === REC_WRITE) this.map.set({start: r.offset, end: r.offset + r.length, kind: 'data', file: r.file, type: r.type})
    else this.map.set({start: r.offset, end: r.offset + r.length, kind: 'zero', file: 0, type: r.type})
  }

  /**
   * Take the log's lock (held by a thread for one pwritev), or fail with EIO after a long wait rather than
   * hang: only a thread ended while appending keeps it.
   */
  private lockLog(): void {
    if (!this.shared.lock(120_000)) throw new BlockError('EIO', `${this.path}: the overlay's log stayed locked by a serving thread`)
  }

  private turns: Promise<unknown> = Promise.resolve()

  /** BlockSource.exclusive: `f` after every exclusive section begun before it, on any thread, has ended. */
  exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.turns.then(f, f)
    this.turns = run.catch(() => undefined)
    return run
  }

  /**
   * For a serving thread's view: the coverage bitmap and a link on which this instance answers the thread's
   * writes, flushes and reads of covered ranges (src/threads/sync-call.ts).
   */
  threadLink(): ThreadLink {
    // This thread's exclusive turn while it holds it: given back by 'unlock', or when the thread is gone.
    let release: (() => void) | undefined
    const link = offerSyncLink<OverlayCall, OverlayAnswer>(async (c) => {
      try {
        // What threads appended is in the map before anything here reads it.
        this.drain()
        switch (c.op) {
          case 'poke':
            // A thread's append reached the point to look at compaction again, or filled the ring.
            if (!this.closed && this.tail >= this.nextCheck) this.maybeCompact()
            return {value: {}}
          case 'lock':
            if (release) throw new BlockError('EINVAL', 'the exclusive turn is already held by this thread')
            await new Promise<void>((granted) => {
              void this.exclusive(() => new Promise<void>((given) => ((release = given), granted())))
            })
            return {value: {}}
          case 'unlock':
            release?.()
            release = undefined
            return {value: {}}
          case 'read': {
            const r = await this.read(c.offset, c.length)
            const data = new Uint8Array(r.data).buffer as ArrayBuffer
            return {value: {data, bad: r.bad}, transfer: [data]}
          }
          case 'write':
            await this.write(c.offset, Buffer.from(c.data), {fua: c.fua})
            return {value: {}}
          case 'zero':
            await this.zero(c.offset, c.length, {fua: c.fua})
            return {value: {}}
          case 'trim':
            await this.trim(c.offset, c.length, {fua: c.fua})
            return {value: {}}
          case 'flush':
            await this.flush()
            return {value: {}}
          case 'extents':
            return {value: {extents: await this.extents(c.offset, c.length)}}
        }
      } catch (err) {
        // A BlockError's errno crosses as the code (sync-call.ts); anything else is EIO on the other side.
        throw err instanceof BlockError ? Object.assign(new Error(err.message), {code: err.errno}) : err
      }
    }, () => release?.())
    // The base may need a link of its own (a remote image reads through its owner's fetching link).
    const base = this.base.threadLink?.()
    return {
      value: {link, coverage: this.coverage, granuleShift: this.granuleShift, log: this.shared.shared, id: new Uint8Array(this.header.id), base: base?.value} satisfies OverlayLink,
      transfer: [link.port, ...(base?.transfer ?? [])],
    }
  }

  /**
   * Open `file` as the overlay of `base` (created if missing): the header must name this base; the valid
   * prefix of the log is replayed and anything after it cut off. The base is never written.
   */
  static async open(base: BlockSource, file: string, opts: OverlayOpenOptions = {}): Promise<Overlay> {
    const identity = await baseIdentity(base)
    let fd: number
    try {
      fd = fs.openSync(file, 'r+')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || opts.create === false) throw ioError(file, err, 'cannot open the overlay')
      createOverlayFile(file, {version: OVERLAY_VERSION, size: base.size, sectorSize: base.sectorSize, base: identity, id: crypto.randomBytes(16), created: Date.now()})
      try {
        fd = fs.openSync(file, 'r+')
      } catch (err2) {
        throw ioError(file, err2, 'cannot open the overlay')
      }
    }
    try {
      const st = fs.fstatSync(fd)
      if (!st.isFile()) throw new VdevError('usage', `${file}: an overlay must be a regular file`)
      // One writer at a time: two processes appending to one log would overwrite each other's records.
      const lock = lockExclusive(fd)
      if (lock === 'busy') throw new VdevError('exists', `${file}: the overlay is in use by another vdev process`)
      const header = decodeHeader(readAt(fd, HEADER_SIZE, 0), file)
      if (header.base.kind !== identity.kind || !header.base.hash.equals(identity.hash) || header.size !== base.size || header.sectorSize !== base.sectorSize)
        throw new VdevError(
          'usage',
          `${file}: this overlay belongs to another base (${describeBase(header.base)}, ${header.size} bytes, ${header.sectorSize}-byte sectors), not to this image (${describeBase(identity)}, ${base.size} bytes, ${base.sectorSize}-byte sectors)`,
        )
      const r = replay(fd, header, st.size)
      if (r.discarded > 0) {
        // Cut the torn tail before anything is appended, durably, so a later record can never follow garbage.
        fs.ftruncateSync(fd, r.tail)
        fs.fdatasyncSync(fd)
      }
      if (lock === 'locked') removeStaleCompactions(file)
      const o = new Overlay(base, path.resolve(file), fd, header, r.map, r, opts)
      o.maybeCompact()
      return o
    } catch (err) {
      fs.closeSync(fd)
      throw err instanceof VdevError ? err : ioError(file, err, 'cannot open the overlay')
    }
  }

  /** Bytes of the image the overlay holds (written, zeroed or discarded). */
  get bytesWritten(): number {
    this.drain()
    return this.map.bytes
  }

  async read(offset: number, length: number): Promise<ReadResult> {
    const end = offset + length
    this.drain()
    const mine = this.map.overlapping(offset, end)
    if (mine.length === 0) return this.base.read(offset, length)
    // The map's file offsets are this log's: compaction may swap in a new one meanwhile.
    const f = this.file
    f.users++
    try {
      return await this.readMapped(offset, length, mine, f.fd)
    } finally {
      release(f)
    }
  }

  private async readMapped(offset: number, length: number, mine: MapEntry[], fd: number): Promise<ReadResult> {
    let covered = 0
    for (const e of mine) covered += e.end - e.start
    let data: Buffer
    let bad: BadRange[] = []
    if (covered < length) {
      const r = await this.base.read(offset, length)
      data = r.data
      bad = r.bad
    } else data = Buffer.alloc(length)
    for (const e of mine) {
      const at = e.start - offset
      if (e.kind === 'zero') data.fill(0, at, at + e.end - e.start)
      else await preadAll(fd, data, at, e.end - e.start, e.file)
    }
    return {data, bad: subtract(bad, mine)}
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const end = offset + length
    const out: Extent[] = []
    const push = (x: Extent) => {
      if (x.length <= 0) return
      const last = out[out.length - 1]
      if (last && last.kind === x.kind && last.offset + last.length === x.offset) last.length += x.length
      else out.push({...x})
    }
    const fromBase = async (s: number, e: number) => {
      if (e <= s) return
      const list = this.base.extents ? await this.base.extents(s, e - s) : [{offset: s, length: e - s, kind: 'data' as const}]
      for (const x of list) {
        const xs = Math.max(x.offset, s)
        const xe = Math.min(x.offset + x.length, e)
        push({offset: xs, length: xe - xs, kind: x.kind})
      }
    }
    let at = offset
    this.drain()
    for (const m of this.map.overlapping(offset, end)) {
      await fromBase(at, m.start)
      push({offset: m.start, length: m.end - m.start, kind: m.kind})
      at = m.end
    }
    await fromBase(at, end)
    return out
  }

  cacheStats() {
    return this.base.cacheStats?.() ?? {hits: 0, misses: 0}
  }

  write(offset: number, data: Buffer, opts: WriteOptions = {}): Promise<void> {
    return this.mutate(async () => {
      const s = this.sectorSize
      const start = Math.floor(offset / s) * s
      const end = Math.min(this.size, Math.ceil((offset + data.length) / s) * s)
      let whole = data
      if (start !== offset || end !== offset + data.length) {
        // Read-modify-write of the partial sectors at either end, so every record covers whole sectors.
        whole = (await this.read(start, end - start)).data
        data.copy(whole, offset - start)
      }
      for (let at = 0; at < whole.length; at += MAX_RECORD_DATA) {
        const piece = whole.subarray(at, Math.min(whole.length, at + MAX_RECORD_DATA))
        await this.append(REC_WRITE, start + at, piece.length, piece)
      }
      if (opts.fua) await this.sync()
    }, offset, data.length)
  }

  zero(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    return this.zeroLike(REC_ZERO, offset, length, opts)
  }

  /** Discarded sectors read as zeros afterwards (docs/OVERLAY.md). */
  trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    return this.zeroLike(REC_TRIM, offset, length, opts)
  }

  flush(): Promise<void> {
    return this.mutate(() => this.sync())
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.chain.catch(() => {})
    this.closed = true
    // A compaction under way gives up (its temporary file removed) once it sees the overlay closed.
    await this.compacting
    // No thread appends from now on; one that ended while appending (the process is stopping) never gives
    // the lock back: the descriptor is then left open, never reused under it.
    const locked = this.shared.lock(5_000)
    this.shared.close()
    if (locked) this.shared.unlock()
    else this.file.users++
    try {
      fs.fdatasyncSync(this.file.fd)
    } catch {
      // Nothing acknowledged depends on this: acknowledged writes were flushed already.
    }
    this.file.retired = true
    if (this.file.users === 0) fs.closeSync(this.file.fd)
    await this.base.close()
  }

  private zeroLike(type: number, offset: number, length: number, opts: WriteOptions): Promise<void> {
    return this.mutate(async () => {
      const s = this.sectorSize
      const start = Math.floor(offset / s) * s
      const end = Math.min(this.size, Math.ceil((offset + length) / s) * s)
      if (start !== offset || end !== offset + length) {
        // Partial sectors at the ends are written as data (their other bytes kept); whole ones as a zero record.
        const inner0 = Math.ceil(offset / s) * s
        const inner1 = Math.max(inner0, offset + length === this.size ? this.size : Math.floor((offset + length) / s) * s)
        const zeros = (a: number, b: number) => (b > a ? Buffer.alloc(b - a) : undefined)
        const head = zeros(offset, Math.min(inner0, offset + length))
        const tail = inner1 < offset + length ? zeros(inner1, offset + length) : undefined
        if (inner1 > inner0) await this.append(type, inner0, inner1 - inner0)
        for (const [at, b] of [[offset, head], [inner1, tail]] as Array<[number, Buffer | undefined]>) {
          if (!b) continue
          const a0 = Math.floor(at / s) * s
          const a1 = Math.min(this.size, Math.ceil((at + b.length) / s) * s)
          const whole = (await this.read(a0, a1 - a0)).data
          b.copy(whole, at - a0)
          await this.append(REC_WRITE, a0, whole.length, whole)
        }
      } else if (length > 0) await this.append(type, offset, length)
      if (opts.fua) await this.sync()
    }, offset, length)
  }

  private mutate(f: () => Promise<void>, offset = 0, length = 0): Promise<void> {
    if (this.closed) return Promise.reject(new BlockError('ESHUTDOWN', 'the overlay is closed'))
    // The BlockServer checks this before; a caller that skips it must not get a silently shortened write.
    if (offset < 0 || offset + length > this.size) return Promise.reject(new BlockError('ENOSPC', `${length} bytes at ${offset} extend past the end (${this.size})`))
    const run = this.chain.then(f, f)
    this.chain = run.catch(() => {})
    return run
  }

  /**
   * Append one record at the tail (under the log's lock, which threads' appends take too); the map changes
   * only once it is written whole, after the records threads appended before it.
   */
  private async append(type: number, offset: number, length: number, data?: Buffer): Promise<void> {
    // Serving threads send reads of these granules here from now on (a covered granule stays covered).
    this.cover(offset, offset + length)
    this.lockLog()
    let r: ReturnType<SharedLog['appendLocked']>
    try {
      // The ring is empty once drained (no thread appends meanwhile): the append cannot be refused as full.
      this.drain()
      try {
        r = this.shared.appendLocked(this.header.id, type, offset, length, data)
      } catch (err) {
        throw writeError(this.path, err)
      }
      if (r === 'closed' || r === 'full') throw new BlockError('ESHUTDOWN', 'the overlay is closed')
      this.drain()
    } finally {
      this.shared.unlock()
    }
    if (r || this.tail >= this.nextCheck) this.maybeCompact()
  }

  /**
   * Start compacting (not awaited) when the log's dead bytes exceed both what it holds and the minimum;
   * otherwise look again once the tail has grown by that much.
   */
  private maybeCompact(): void {
    if (this.compactMin <= 0) this.nextCheck = Infinity
    if (this.compactMin <= 0 || this.compacting || this.closed) return
    // The tail first: records appended after it are then counted as live, never as dead.
    const tail = this.tail
    this.drain()
    let live = 0
    for (const e of this.map.entries) live += RECORD_HEADER_SIZE + (e.kind === 'data' ? e.end - e.start : 0)
    const dead = tail - HEADER_SIZE - live
    if (dead <= Math.max(live, this.compactMin)) {
      this.nextCheck = tail + Math.max(live, this.compactMin) - dead
      return
    }
    void this.compact()
  }

  /**
   * Compact now, whatever the log holds (maybeCompact decides when on its own), unless one is under way or the
   * overlay is closed: resolves with what it did, or undefined (failed: logged; or not started).
   */
  compact(): Promise<OnlineCompaction | undefined> {
    if (this.compacting) return this.compacting
    if (this.closed) return Promise.resolve(undefined)
    this.compacting = this.compactWhileServing().then(
      (r) => {
        this.log(`overlay ${this.path}: compacted while serving, ${r.bytesBefore} → ${r.bytesAfter} bytes (${r.recordsAfter} records) in ${r.ms} ms`)
        this.compactions++
        return r
      },
      (err) => {
        if (!this.closed) this.log(`warning: overlay ${this.path}: compaction while serving failed, the log stays as it was: ${(err as Error).message}`)
        return undefined
      },
    ).finally(() => {
      this.compacting = undefined
      // Not again before the log has grown by as much as it held (a failure, e.g. a full disk, is not retried at once).
      let held = 0
      this.drain()
      for (const e of this.map.entries) held += RECORD_HEADER_SIZE + (e.kind === 'data' ? e.end - e.start : 0)
      this.nextCheck = this.tail + Math.max(held, this.compactMin)
    })
    return this.compacting
  }

  /** Wait for a compaction under way, if any (tests; close waits for it too). */
  async compacted(): Promise<OnlineCompaction | undefined> {
    return this.compacting
  }

  /**
   * Compaction while serving (docs/OVERLAY.md, "Compaction while serving"): a new log beside the file holds one
   * record per extent the overlay held when it started, then a copy (renumbered) of every record appended
   * since; reads and writes go on meanwhile against the old log, whose records are never rewritten. Only the
   * last few MiB are copied with mutations held back; then the new log is made durable, locked, renamed over
   * the file and the directory synced, and the overlay switches to it. Until the rename the file is the old
   * log, after it the new one: each holds every write acknowledged so far.
   */
  private async compactWhileServing(): Promise<OnlineCompaction> {
    const t0 = Date.now()
    const old = this.file
    old.users++
    const bytesBefore = this.tail
    const dir = path.dirname(this.path)
    const tmp = path.join(dir, `.${path.basename(this.path)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.compact`)
    let out: number | undefined
    try {
      out = await promisify(fs.open)(tmp, 'wx+', fs.fstatSync(old.fd).mode & 0o777)
      const outFd = out
      const map = new ExtentMap()
      let at = HEADER_SIZE
      let seq = 0
      const abandon = () => {
        if (this.closed) throw new Error('the overlay was closed')
      }
      const emit = async (type: number, offset: number, length: number, data?: Buffer, dataCrc?: number) => {
        const hdr = encodeRecordHeader({type, seq: ++seq, offset, length, dataCrc: data ? (dataCrc ?? crc32c(data)) : 0}, this.header.id)
        await writeAllAsync(outFd, data ? [hdr, data] : [hdr], at)
        map.set(data ? {start: offset, end: offset + length, kind: 'data', file: at + RECORD_HEADER_SIZE, type} : {start: offset, end: offset + length, kind: 'zero', file: 0, type})
        at += RECORD_HEADER_SIZE + (data ? length : 0)
      }
      await writeAllAsync(outFd, [encodeHeader(this.header)], 0)
      // What the overlay holds now, and the point of the old log it reflects: taken together, under the
      // log's lock (no thread appends in between).
      this.lockLog()
      let snapshot: MapEntry[]
      let copied: number
      try {
        this.drain()
        snapshot = this.map.entries.slice()
        copied = this.tail
      } finally {
        this.shared.unlock()
      }
      for (const e of snapshot) {
        abandon()
        if (e.kind === 'zero') {
          await emit(e.type === REC_TRIM ? REC_TRIM : REC_ZERO, e.start, e.end - e.start)
          continue
        }
        for (let s0 = e.start; s0 < e.end; s0 += COMPACT_RECORD_BYTES) {
          const len = Math.min(COMPACT_RECORD_BYTES, e.end - s0)
          const data = Buffer.allocUnsafe(len)
          await preadAll(old.fd, data, 0, len, e.file + (s0 - e.start))
          await emit(REC_WRITE, s0, len, data)
        }
      }
      // The records appended since, renumbered; the old log's records between `from` and `to` are whole and valid.
      const copyRecords = async (from: number, to: number) => {
        for (let p = from; p < to; ) {
          abandon()
          const h = Buffer.alloc(RECORD_HEADER_SIZE)
          await preadAll(old.fd, h, 0, RECORD_HEADER_SIZE, p)
          if (h.readUInt32LE(0) !== RECORD_MAGIC || h.readUInt32LE(60) !== crc32c(h.subarray(0, 60))) throw new Error(`the record at ${p} of the log does not read back`)
          const type = h.readUInt16LE(4)
          const offset = Number(h.readBigUInt64LE(16))
          const length = Number(h.readBigUInt64LE(24))
          if (type === REC_WRITE) {
            if (length > MAX_RECORD_DATA) throw new Error(`the record at ${p} of the log does not read back`)
            const data = Buffer.allocUnsafe(length)
            await preadAll(old.fd, data, 0, length, p + RECORD_HEADER_SIZE)
            await emit(type, offset, length, data, h.readUInt32LE(48))
            p += RECORD_HEADER_SIZE + length
          } else {
            await emit(type, offset, length)
            p += RECORD_HEADER_SIZE
          }
        }
      }
      while (this.tail - copied > COMPACT_FINAL_BYTES) {
        const to = this.tail
        await copyRecords(copied, to)
        copied = to
      }
      // Most of the new log made durable now, so the step that holds writes back syncs only what it copies.
      await fdatasync(outFd)
      await this.mutate(async () => {
        // Threads' appends wait too (at the log's lock) until the overlay appends to the new log.
        this.lockLog()
        try {
          this.drain()
          await copyRecords(copied, this.tail)
          await fdatasync(outFd)
          // The new inode is locked before it takes the name: no other process can open it unlocked.
          if (lockExclusive(outFd) === 'busy') throw new Error('the new log is locked by another process')
          fs.renameSync(tmp, this.path)
          out = undefined
          syncDirectory(dir)
          this.file = {fd: outFd, users: 0, retired: false}
          old.retired = true
          this.shared.set(outFd, at, seq)
          this.map.entries.length = 0
          for (const e of map.entries) this.map.entries.push(e)
        } finally {
          this.shared.unlock()
        }
      })
      return {bytesBefore, bytesAfter: at, recordsAfter: seq, ms: Date.now() - t0}
    } finally {
      if (out !== undefined) {
        fs.closeSync(out)
        fs.rmSync(tmp, {force: true})
      }
      release(old)
    }
  }

  private async sync(): Promise<void> {
    try {
      await fdatasync(this.file.fd)
    } catch (err) {
      throw writeError(this.path, err)
    }
  }
}

/** A failed append as the write contract's error: ENOSPC for a full file system (or quota), else EIO. */
export function writeError(file: string, err: unknown): BlockError {
  const code = (err as NodeJS.ErrnoException)?.code
  return new BlockError(code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG' ? 'ENOSPC' : 'EIO', `${file}: ${ioError(file, err, 'cannot write the overlay').message.slice(file.length + 2)}`)
}

async function preadAll(fd: number, into: Buffer, at: number, len: number, pos: number): Promise<void> {
  let done = 0
  while (done < len) {
    const n = await new Promise<number>((resolve, reject) => fs.read(fd, into, at + done, len - done, pos + done, (err, got) => (err ? reject(err) : resolve(got))))
    if (n === 0) throw new Error('overlay file is shorter than its records')
    done += n
  }
}

async function writeAllAsync(fd: number, parts: Buffer[], pos: number): Promise<void> {
  for (const b of parts) {
    for (let done = 0; done < b.length; ) {
      const n = await new Promise<number>((resolve, reject) => fs.write(fd, b, done, b.length - done, pos + done, (err, w) => (err ? reject(err) : resolve(w))))
      done += n
    }
    pos += b.length
  }
}

/**
 * Temporary logs of a compaction that never finished (the process was killed): whoever holds the overlay's
 * lock is the only one that can be compacting it, so any left beside it are stale.
 */
function removeStaleCompactions(file: string): void {
  const dir = path.dirname(path.resolve(file))
  const prefix = `.${path.basename(file)}.`
  let names: string[]
  try {
    names = fs.readdirSync(dir)
  } catch {
    return
  }
  for (const n of names) if (n.startsWith(prefix) && /^\.\d+\.[0-9a-f]{8}\.compact$/.test(n.slice(prefix.length - 1))) fs.rmSync(path.join(dir, n), {force: true})
}

/** `bad` minus the ranges the overlay covers. */
function subtract(bad: BadRange[], cover: MapEntry[]): BadRange[] {
  if (bad.length === 0) return bad
  const out: BadRange[] = []
  for (const b of bad) {
    let pieces: Array<[number, number]> = [[b.offset, b.offset + b.length]]
    for (const c of cover) {
      const next: Array<[number, number]> = []
      for (const [s, e] of pieces) {
        if (c.end <= s || c.start >= e) next.push([s, e])
        else {
          if (c.start > s) next.push([s, c.start])
          if (c.end < e) next.push([c.end, e])
        }
      }
      pieces = next
    }
    for (const [s, e] of pieces) out.push({offset: s, length: e - s, status: b.status})
  }
  return out
}

/**
 * Create an empty overlay: the header is written to a temporary file beside it, made durable, and renamed
 * into place, so `file` either does not exist or holds a whole header. An existing file is never replaced.
 */
export function createOverlayFile(file: string, h: OverlayHeader): void {
  const dir = path.dirname(path.resolve(file))
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`)
  try {
    const fd = fs.openSync(tmp, 'wx', 0o644)
    try {
      fs.writeSync(fd, encodeHeader(h), 0, HEADER_SIZE, 0)
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    // link(2) fails if `file` appeared meanwhile: never replace an existing file.
    fs.linkSync(tmp, file)
    fs.rmSync(tmp, {force: true})
    syncDirectory(dir)
  } catch (err) {
    fs.rmSync(tmp, {force: true})
    throw ioError(file, err, 'cannot create the overlay')
  }
}

export interface OverlayInfo {
  path: string
  version: number
  size: number
  sectorSize: number
  base: {kind: 'media-sha256' | 'raw-identity'; sha256: string}
  /** The overlay's random id (hex), repeated in every record. */
  id: string
  created: string
  fileBytes: number
  records: number
  /** Bytes after the valid records (a torn tail; removed when next opened for writing). */
  discardedBytes: number
  bytesWritten: number
  extents: Array<{offset: number; length: number; kind: 'data' | 'zero' | 'trim'}>
}

/** Read an overlay file on its own (no base): its header and the extents its valid records hold. Never writes. */
export function inspectOverlay(file: string): OverlayInfo {
  let fd: number
  try {
    fd = fs.openSync(file, 'r')
  } catch (err) {
    throw ioError(file, err, 'cannot open the overlay')
  }
  try {
    const st = fs.fstatSync(fd)
    if (!st.isFile()) throw new VdevError('usage', `${file}: an overlay must be a regular file`)
    const h = decodeHeader(readAt(fd, HEADER_SIZE, 0), file)
    const r = replay(fd, h, st.size)
    return {
      path: path.resolve(file),
      version: h.version,
      size: h.size,
      sectorSize: h.sectorSize,
      base: {kind: h.base.kind === BASE_MEDIA_HASH ? 'media-sha256' : 'raw-identity', sha256: h.base.hash.toString('hex')},
      id: h.id.toString('hex'),
      created: Number.isFinite(new Date(h.created).getTime()) && h.created <= 8.64e15 ? new Date(h.created).toISOString() : String(h.created),
      fileBytes: st.size,
      records: r.records,
      discardedBytes: r.discarded,
      bytesWritten: r.map.bytes,
      extents: r.map.entries.map((e) => ({offset: e.start, length: e.end - e.start, kind: e.kind === 'data' ? 'data' : e.type === REC_TRIM ? 'trim' : 'zero'})),
    }
  } catch (err) {
    throw err instanceof VdevError ? err : ioError(file, err, 'cannot read the overlay')
  } finally {
    fs.closeSync(fd)
  }
}

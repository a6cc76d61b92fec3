/**
 * The VDIMG reader every backend serves from. `openImage` reads and checks the header, the section table,
 * the first-level index, the bad-area map and the metadata — a few hundred KiB even for a 16 TiB image —
 * and nothing else. Second-level index tables (index-tables.ts) and chunks are loaded on demand;
 * decompressed chunks live in a byte-bounded LRU cache (chunk-cache.ts), and concurrent reads of one chunk
 * share one decompression.
 */
import * as path from 'node:path'
import {VdevError} from '../core/errors'
import type {BlockSource, Extent, FetchStats, ReadResult, SourceDescriptor, ThreadLink} from '../core/source'
import {WorkerPool} from '../core/workerpool'
import {BadAreaMap} from './badmap'
import {ChunkCache} from './chunk-cache'
import {ChunkDecoder, ChunkDecodeError} from './codec'
import type {DecodeItem, DecodeResult, DecodeTask} from './codec-worker'
import {crc32c} from './crc'
import {IndexTables, maxStored} from './index-tables'
import {
  BAD_ENTRY_SIZE,
  ChunkKind,
  HEADER_FLAG_HASH,
  MAX_BAD_AREAS,
  HEADER_SIZE,
  L1_ENTRY_SIZE,
  LAST_KNOWN_SECTION,
  LayoutError,
  MAGIC,
  SECTION_ENTRY_SIZE,
  SECTION_FLAG_CRITICAL,
  SectionType,
  decodeHeader,
  decodeSections,
  type ChunkEntry,
  type Header,
  type Section,
} from './layout'
import {MAX_METADATA_DEPTH, metadataTooDeep} from './metadata'
import {FileRanges, type ByteRanges} from './ranges'

export {maxStored} from './index-tables'
export {preadExact, preadExactSync} from './pread'
import {SharedReadAhead, type ReadAheadStats} from './read-ahead'
export {FileRanges, type ByteRanges} from './ranges'

export interface OpenOptions {
  /** Bytes of decompressed chunks to keep (default 64 MiB). */
  cacheBytes?: number
  /**
   * Worker threads for decompression (default 0: all on the calling thread). With workers, a lone chunk
   * load still decodes on the calling thread; concurrent loads spread over idle workers.
   */
  decompressThreads?: number
  /**
   * For a dedicated serving thread that answers one request at a time: reads use pread(2) directly
   * (no trip through libuv's pool), and decode buffers evicted from the cache are reused, so steady
   * serving allocates nothing. `read` still works (it answers at once); `readSync` is the direct call.
   */
  sync?: boolean
  /**
   * Also check each chunk's decompressed-data CRC when serving reads (default false). The stored-bytes
   * CRC is always checked before decompressing — what ZFS and btrfs do for compressed blocks — and
   * decompression is deterministic; `verify` and `extract` check the data CRCs end to end.
   */
  checkDataCrc?: boolean
  /**
   * Hears, once per table, that a damaged index table was read from its copy (1.1, FORMAT.md §12) — damage
   * found on use rather than at open (open's own findings are in `warnings`). Default: added to `warnings`.
   */
  onWarning?: (line: string) => void
  /**
   * Sync mode: the decode-ahead buffer shared by a device's serving threads (read-ahead.ts; the process's
   * instance makes it, threadLink hands it over). Reads then follow sequential streams and `prefetch`
   * decodes ahead of them.
   */
  readAhead?: SharedArrayBuffer
}

const MAX_METADATA = 16 << 20
/** The most stored bytes of chunks one read covers whole that are read with one pread(2) (storedOf). */
const RUN_BYTES = 1 << 20
/** The same for decoding ahead: the stored bytes of up to this many chunks from the one claimed, ≤ 256 KiB. */
const AHEAD_RUN_BYTES = 256 << 10
const AHEAD_RUN_CHUNKS = 16
/** Chunks remembered as having nothing to decode ahead (a power of two). */
const NO_DECODE_MEMO = 256

/** Stored bytes of consecutive chunks, read with one pread(2) (VdimgImage.storedOf); one per use, reused. */
class StoredRun {
  private start = 0
  private end = 0
  private buf: Buffer | undefined
  private space: Buffer | undefined
  /** A run could not be read whole: its chunks are read one by one until cleared. */
  failed = false
  constructor(readonly max: number) {}

  /** Chunk e's stored bytes if this run holds them. */
  view(e: ChunkEntry): Buffer | undefined {
    if (!this.buf || e.offset < this.start || e.offset + e.storedLength > this.end) return undefined
    return this.buf.subarray(e.offset - this.start, e.offset - this.start + e.storedLength)
  }

  /** The buffer to read a run into (`max` bytes, allocated once). */
  scratch(): Buffer {
    return (this.space ??= Buffer.allocUnsafeSlow(this.max))
  }

  fill(start: number, buf: Buffer): void {
    this.start = start
    this.end = start + buf.length
    this.buf = buf
  }

  clear(): void {
    this.buf = undefined
    this.failed = false
  }
}

export class VdimgImage implements BlockSource {
  readonly size: number
  readonly sectorSize: number
  readonly chunkSize: number
  readonly chunkCount: number
  readonly l2Entries: number
  readonly version: string
  /** Hex SHA-256 of the logical image (bad areas as zeros), when recorded. */
  readonly sha256: string | undefined
  readonly metadata: Record<string, unknown>
  readonly badAreas: BadAreaMap
  readonly sections: Section[]
  /**
   * Damage found in non-critical sections when the image opened (one line each, naming the file and the
   * byte): the image works without them. Commands print them as warnings; verify counts them as damage.
   */
  readonly warnings: string[] = []

  private readonly index: IndexTables
  /** Groups whose damaged table was read from its copy (each reported once). */
  private readonly copiesUsed = new Set<number>()
  private readonly cache: ChunkCache
  private readonly loading = new Map<number, Promise<Buffer | null>>()
  /** For each load under way: the most bytes from the chunk's start that a read waiting on it needs. */
  private readonly loadingNeed = new Map<number, number>()
  private readonly decoder = new ChunkDecoder()
  private pool: WorkerPool | undefined
  private poolBusy = 0
  private readonly sync: boolean
  private readonly checkData: boolean
  /** True when opened with {sync: true}: readSync may be called. */
  get synchronous(): boolean {
    return this.sync
  }
  /** Sync mode over a local file: readSync waits for nothing but pread(2) and decoding. */
  get immediate(): boolean {
    return this.sync && this.ranges instanceof FileRanges
  }
  /** How a serving thread opens this image again (src/sources): a remote one pinned to the same object. */
  get descriptor(): SourceDescriptor {
    const reopen = this.ranges.reopen
    return reopen ? {kind: 'vdimg', path: this.path, options: {...reopen}} : {kind: 'vdimg', path: path.resolve(this.path)}
  }
  /** What each serving thread's instance needs from this one (a remote image's fetching link). */
  threadLink(): ThreadLink | undefined {
    const remote = this.ranges.offerLink?.()
    // The threads share one decode-ahead buffer: a local file's, and a remote image's with a cache, whose
    // threads decode ahead only what the cache holds (prefetch; the network is for the read-ahead of the
    // fetching instance, src/remote/readahead.ts). VDEV_DECODE_AHEAD=0 turns it off (for measuring it:
    // docs/performance.md, docs/remote.md).
    const ahead = process.env.VDEV_DECODE_AHEAD !== '0' && (!remote || this.ranges.hasLocal)
    if (ahead) this.readAheadBuffer ??= SharedReadAhead.create(this.chunkSize)
    if (remote) return ahead ? {value: {...(remote.value as object), readAhead: this.readAheadBuffer}, transfer: remote.transfer} : remote
    if (!ahead) return undefined
    return {value: {readAhead: this.readAheadBuffer}, transfer: []}
  }
  private readAheadBuffer: SharedArrayBuffer | undefined
  /** Sync mode with a shared decode-ahead buffer (OpenOptions.readAhead). */
  private readonly readAhead: SharedReadAhead | undefined
  /** Sync mode: the stored bytes of the chunk being decoded. */
  private storedScratch: Buffer | undefined
  /**
   * Sync mode over a local file: the stored bytes of the chunks one read covers whole, read with one
   * pread(2) (storedOf), kept for that readSync call only; and those of the chunks after one decoded ahead.
   */
  private readonly run = new StoredRun(RUN_BYTES)
  private readonly aheadRun = new StoredRun(AHEAD_RUN_BYTES)
  private closed = false

  private constructor(
    readonly path: string,
    /** The image's bytes (a local file, or an object on a server); exposed for whole-image decoding. */
    readonly ranges: ByteRanges,
    readonly fileSize: number,
    readonly header: Header,
    /** The first-level index (FORMAT.md §5). */
    readonly l1: Buffer,
    l1Offset: number,
    badAreas: BadAreaMap,
    metadata: Record<string, unknown>,
    sections: Section[],
    opts: OpenOptions,
    copies?: Float64Array,
  ) {
    this.size = header.size
    this.sectorSize = header.sectorSize
    this.chunkSize = header.chunkSize
    this.chunkCount = header.chunkCount
    this.l2Entries = header.l2Entries
    this.version = `${header.major}.${header.minor}`
    this.sha256 = header.flags & HEADER_FLAG_HASH ? header.sha256.toString('hex') : undefined
    this.badAreas = badAreas
    this.metadata = metadata
    this.sections = sections
    this.sync = opts.sync ?? false
    if (this.sync && !ranges.synchronous) throw new VdevError('internal', `${path}: opened for synchronous reads over bytes that cannot be read synchronously`)
    this.cache = new ChunkCache(opts.cacheBytes ?? 64 << 20, header.chunkSize, header.size, this.sync)
    this.index = new IndexTables({
      ranges,
      fileSize,
      size: header.size,
      chunkSize: header.chunkSize,
      chunkCount: header.chunkCount,
      l2Entries: header.l2Entries,
      l1,
      l1Offset,
      sync: this.sync,
      fail: (message, offset) => this.fail(message, offset),
      copies,
      onCopyUsed: (g, damage, copyOffset) => {
        if (this.copiesUsed.has(g)) return
        this.copiesUsed.add(g)
        const line = `${damage.message.replace(/\)$/, '')}; read from its copy at byte ${copyOffset})`
        if (opts.onWarning) opts.onWarning(line)
        else this.warnings.push(line)
      },
    })
    this.checkData = opts.checkDataCrc ?? false
    if (this.sync && opts.readAhead) this.readAhead = new SharedReadAhead(opts.readAhead, this.chunkSize)
    const threads = this.sync ? 0 : (opts.decompressThreads ?? 0)
    if (threads > 0) this.pool = new WorkerPool(path_join(__dirname, 'codec-worker.js'), threads)
  }

  /** An error about this file at a byte offset. */
  fail(message: string, offset?: number, code: 'format' | 'unsupported' = 'format'): VdevError {
    return new VdevError(code, `${this.path}: ${message}${offset !== undefined ? ` (at byte ${offset})` : ''}`)
  }

  chunkLength(i: number): number {
    return Math.min(this.chunkSize, this.size - i * this.chunkSize)
  }

  private preadExact(len: number, pos: number): Promise<Buffer> {
    return this.ranges.read(len, pos)
  }

  /** How many chunks of group `g` have each kind (index = ChunkKind), straight from its table. */
  groupKinds(g: number): Promise<number[]> {
    return this.index.groupKinds(g)
  }

  /** Why group `g`'s index table cannot be used (damaged, out of place), or undefined when it can. */
  async checkTable(g: number): Promise<VdevError | undefined> {
    try {
      await this.index.table(g)
      return undefined
    } catch (err) {
      if (err instanceof VdevError && err.code !== 'io') return err
      throw err
    }
  }

  /**
   * For verify: the damaged places of group `g`'s index table, original or copy (1.1, FORMAT.md §12), one
   * line each; the chunks are lost only when every place is damaged (then decoding reports them).
   */
  async tableDamage(g: number): Promise<{lines: string[]; lost: boolean}> {
    let places
    try {
      places = await this.index.tablePlaces(g)
    } catch (err) {
      if (err instanceof VdevError) return {lines: [], lost: true}
      throw err
    }
    const damaged = places.filter((p) => p.damage)
    const lost = damaged.length === places.length && places.length > 0
    if (lost || places.length < 2) return {lines: [], lost}
    const other = (w: string) => (w === 'copy' ? 'the original serves' : 'its copy serves')
    return {lines: damaged.map((p) => `${p.damage!.message.replace(/\)$/, '')}; ${other(p.what)})`), lost}
  }

  /** Whether the image keeps copies of its critical structures (format 1.1, FORMAT.md §12). */
  get hasCopies(): boolean {
    return this.header.copyTableOffset !== 0
  }

  /** The index entry of chunk `i`, validated. */
  entry(i: number): Promise<ChunkEntry> {
    return this.index.entry(i)
  }

  entrySync(i: number): ChunkEntry {
    return this.index.entrySync(i)
  }

  /** Describe a chunk decode failure with its image byte range and stored offset. */
  chunkError(i: number, e: ChunkEntry, why: string): VdevError {
    const from = i * this.chunkSize
    return this.fail(`chunk ${i} (image bytes ${from}-${from + this.chunkLength(i) - 1}): ${why}`, e.offset)
  }

  /**
   * Decompressed bytes of chunk `i`, or null when it is all zero (zero and unread chunks). `need` is how
   * many bytes from the chunk's start the caller wants (default: all): the result holds at least that many,
   * and may be a prefix of the chunk when a lone load needs only its start (see chunkSync). Concurrent
   * reads of a chunk share one load, which decodes as far as the furthest of them needs.
   */
  chunk(i: number, need = this.chunkLength(i)): Promise<Buffer | null> {
    const hit = this.cache.hit(i, need)
    if (hit) return Promise.resolve(hit)
    const pending = this.loading.get(i)
    if (pending) {
      this.cache.hits++
      const wanted = this.loadingNeed.get(i)
      if (wanted !== undefined && wanted < need) this.loadingNeed.set(i, need)
      // A load that had already begun decoding a shorter prefix: load again, whole, once it is done.
      return pending.then((d) => (d && d.length < need ? this.chunk(i) : d))
    }
    this.cache.drop(i) // a prefix too short for this read
    this.cache.misses++
    this.loadingNeed.set(i, need)
    const p = this.loadChunk(i).finally(() => {
      this.loading.delete(i)
      this.loadingNeed.delete(i)
    })
    this.loading.set(i, p)
    return p
  }

  private async loadChunk(i: number): Promise<Buffer | null> {
    if (this.closed) throw new VdevError('io', `${this.path}: image is closed`)
    const e = await this.entry(i)
    if (e.kind === ChunkKind.Zero || e.kind === ChunkKind.Unread) return null
    const stored = await this.preadExact(e.storedLength, e.offset)
    const len = this.chunkLength(i)
    let data: Buffer
    // Adaptive: a lone load decodes right here (a worker round trip costs more than it saves); when
    // several loads wait, they go to idle workers; when every worker is busy, this thread helps.
    const inline = !this.pool || this.loading.size <= 1 || this.poolBusy >= this.pool.size
    if (!inline && this.pool) {
      const item: DecodeItem = {kind: e.kind, start: 0, storedLength: e.storedLength, length: len, crc: e.crc, storedCrc: e.storedCrc}
      // Reads that join this load after it is posted and need more than the prefix load again (see chunk).
      const need = this.loadingNeed.get(i) ?? len
      if (this.prefixWanted(i, e, need)) item.need = need
      const task: DecodeTask = {op: 'decode', buf: toOwnArrayBuffer(stored), items: [item], skipDataCrc: !this.checkData}
      this.poolBusy++
      let r: DecodeResult
      try {
        r = await this.pool.run<DecodeResult>(task, [task.buf!])
      } finally {
        this.poolBusy--
      }
      if (r.errors[0]) throw this.chunkError(i, e, r.errors[0])
      const n = r.produced[0]
      if (n < len) this.cache.prefixes++
      data = Buffer.from(r.out, 0, n)
    } else {
      // Every read waiting on this load has registered its need by now (decoding runs without a break).
      const need = this.loadingNeed.get(i) ?? len
      data = this.decodeChunk(i, e, stored, need, () => Buffer.allocUnsafeSlow(len))
    }
    this.cache.remember(i, data)
    return data
  }

  /**
   * Sync mode's chunk load: cached, or read with pread(2) and decoded into a reused buffer. `need` is how
   * many bytes from the chunk's start the caller wants: when it is well short of the chunk, and the data
   * CRC is not being checked, only a prefix of the chunk may be decoded (see decodePrefixInto) and cached;
   * a later read past that prefix decodes the chunk whole. The result holds at least `need` bytes.
   */
  chunkSync(i: number, need = this.chunkLength(i)): Buffer | null {
    const len = this.chunkLength(i)
    const hit = this.cache.hit(i, need)
    if (hit) return hit
    if (this.closed) throw new VdevError('io', `${this.path}: image is closed`)
    this.cache.misses++
    // A prefix that fell short: this time, the whole chunk.
    const hadPrefix = this.cache.drop(i)
    const e = this.entrySync(i)
    if (e.kind === ChunkKind.Zero || e.kind === ChunkKind.Unread) return null
    this.storedScratch ??= Buffer.allocUnsafeSlow(maxStored(this.chunkSize))
    const stored = this.ranges.readSync(e.storedLength, e.offset, this.storedScratch)
    const checked = this.ranges.checkedCrc?.(stored) === e.storedCrc
    const data = this.decodeChunk(i, e, stored, hadPrefix ? len : need, () => this.cache.buffer(len), checked)
    this.cache.remember(i, data)
    return data
  }

  /**
   * Sync mode: chunk i (not cached) decoded whole into `into`, its logical length, which is all the chunk's
   * bytes or an error; not cached. False for a zero or unread chunk (`into` untouched).
   */
  private decodeWholeInto(i: number, into: Buffer, lastWhole: number): boolean {
    if (this.closed) throw new VdevError('io', `${this.path}: image is closed`)
    this.cache.misses++
    this.cache.drop(i)
    const e = this.entrySync(i)
    if (e.kind === ChunkKind.Zero || e.kind === ChunkKind.Unread) return false
    const stored = this.storedOf(i, e, lastWhole, this.run)
    const checked = this.ranges.checkedCrc?.(stored) === e.storedCrc
    try {
      this.decoder.decodeInto(e.kind, stored, e.crc, e.storedCrc, into, this.checkData, checked)
    } catch (err) {
      if (err instanceof ChunkDecodeError) throw this.chunkError(i, e, err.message)
      throw err
    }
    return true
  }

  /**
   * Chunk i's stored bytes, for a reader that wants chunks i..last next: from `run` if an earlier call
   * read them, or — over a local file — read with the stored bytes of the chunks after it that follow it in
   * the file (zero and unread chunks between them store nothing), up to the run's size, in one pread(2): a
   * pread of ~25 KiB costs this machine ~7 µs of CPU, one of 240 KiB ~12 (docs/performance.md). A run that
   * cannot be read whole (a damaged index pointing past the end) is given up for the call and each chunk
   * read by itself, so the others still decode.
   */
  private storedOf(i: number, e: ChunkEntry, last: number, run: StoredRun): Buffer {
    const held = run.view(e)
    if (held) return held
    if (this.immediate && last > i && !run.failed && e.storedLength <= run.max >> 1) {
      let end = e.offset + e.storedLength
      for (let j = i + 1; j <= last; j++) {
        let f: ChunkEntry
        try {
          f = this.entrySync(j)
        } catch {
          break // a damaged index table: the read of that chunk reports it
        }
        if (f.kind === ChunkKind.Zero || f.kind === ChunkKind.Unread) continue
        if (f.offset !== end || f.storedLength > run.max - (end - e.offset)) break
        end += f.storedLength
      }
      if (end > e.offset + e.storedLength) {
        try {
          run.fill(e.offset, this.ranges.readSync(end - e.offset, e.offset, run.scratch()))
          return run.view(e)!
        } catch {
          run.clear()
          run.failed = true
        }
      }
    }
    this.storedScratch ??= Buffer.allocUnsafeSlow(maxStored(this.chunkSize))
    return this.ranges.readSync(e.storedLength, e.offset, this.storedScratch)
  }

  /**
   * Whether to decode only a prefix of chunk i for reads needing `need` bytes from its start: when that is
   * well short of the chunk and the data CRC is not being checked (which needs every byte).
   */
  private prefixWanted(i: number, e: ChunkEntry, need: number): boolean {
    return e.kind === ChunkKind.Zstd && !this.checkData && need <= (this.chunkLength(i) * 3) >> 2
  }

  /**
   * Decode chunk i's stored bytes into a buffer from `alloc` (its logical length), only the prefix that
   * covers `need` when prefixWanted. Returns the decoded bytes, a prefix of the chunk or all of it.
   */

  private decodeChunk(i: number, e: ChunkEntry, stored: Buffer, need: number, alloc: () => Buffer, storedChecked = false): Buffer {
    const len = this.chunkLength(i)
    try {
      if (this.prefixWanted(i, e, need)) {
        const data = alloc()
        const n = this.decoder.decodePrefixInto(e.kind, stored, e.storedCrc, data, need, storedChecked)
        if (n === len) return data
        this.cache.prefixes++
        return data.subarray(0, n)
      }
      // Sync mode decodes into its reused buffers; otherwise a raw chunk's stored bytes serve as they are.
      if (!this.sync) return this.decoder.decode(e.kind, stored, len, e.crc, e.storedCrc, this.checkData)
      const data = alloc()
      this.decoder.decodeInto(e.kind, stored, e.crc, e.storedCrc, data, this.checkData, storedChecked)
      return data
    } catch (err) {
      if (err instanceof ChunkDecodeError) throw this.chunkError(i, e, err.message)
      throw err
    }
  }

  /**
   * Read [offset, offset+length) into `dst` (or a new buffer) synchronously: sync mode only. The bytes
   * of a chunk are copied out before the next chunk is loaded, so buffer reuse is safe.
   */
  readSync(offset: number, length: number, dst?: Buffer): ReadResult {
    if (!this.sync) throw new VdevError('internal', 'readSync needs an image opened with {sync: true}')
    this.checkRange(offset, length)
    const out = dst ? dst.subarray(0, length) : Buffer.allocUnsafe(length)
    if (dst && dst.length < length) throw new VdevError('internal', `readSync: destination of ${dst.length} bytes for ${length}`)
    let at = offset
    const end = offset + length
    const ahead = this.readAhead
    // Idle threads may decode this read's later chunks while this thread decodes its first ones.
    const handle = ahead && length > 0 ? ahead.begin(Math.floor(offset / this.chunkSize), Math.floor((end - 1) / this.chunkSize)) : -1
    // The last chunk this read covers whole (the image's short last chunk included).
    const lastWhole = end === this.size ? this.chunkCount - 1 : Math.floor(end / this.chunkSize) - 1
    this.run.clear()
    try {
      ahead?.note(offset, length)
      while (at < end) {
        const i = Math.floor(at / this.chunkSize)
        const cStart = i * this.chunkSize
        const e = Math.min(end, cStart + this.chunkSize)
        if (ahead) {
          ahead.reading(handle, i)
          // Decoded ahead, or for this read, by another thread.
          if (ahead.copyOut(i, out, at - offset, at - cStart, e - cStart, () => this.prefetch())) {
            at = e
            continue
          }
        }
        if (this.immediate && at === cStart && e - cStart === this.chunkLength(i)) {
          // The whole chunk of a local file: decoded straight into `out` unless cached, and not cached (a read
          // that covers a chunk is a stream's; the copy and the cache's bookkeeping cost more than decoding it
          // again would). A remote image's chunks stay cached: reading one again may cost a GET.
          const hit = this.cache.hit(i, e - cStart)
          if (hit) hit.copy(out, at - offset, 0, e - cStart)
          else if (!this.decodeWholeInto(i, out.subarray(at - offset, e - offset), lastWhole)) out.fill(0, at - offset, e - offset)
          at = e
          continue
        }
        const data = this.chunkSync(i, e - cStart)
        if (data) data.copy(out, at - offset, at - cStart, e - cStart)
        else out.fill(0, at - offset, e - offset)
        at = e
      }
    } finally {
      ahead?.end(handle)
      this.run.clear()
    }
    return {data: out, bad: this.zeroBad(out, offset, length)}
  }

  /**
   * The bad areas in [offset, offset+length), with their bytes in `out` (holding that range) set to zero:
   * FORMAT.md §6 — bytes inside bad areas read as zero whatever a chunk stores there.
   */
  private zeroBad(out: Buffer, offset: number, length: number): ReturnType<BadAreaMap['intersect']> {
    const bad = this.badAreas.intersect(offset, length)
    for (const r of bad) out.fill(0, r.offset - offset, r.offset - offset + r.length)
    return bad
  }

  /**
   * Sync mode with a shared decode-ahead buffer: decode one chunk ahead of a sequential stream into it, for
   * a serving thread with no request to serve. False when there is nothing to do (no stream, or every chunk
   * of the window there already). A chunk that fails to decode is left for the read that needs it to report.
   */
  prefetch(): boolean {
    const ahead = this.readAhead
    if (!ahead || this.closed) return false
    // A remote image decodes ahead only from its cache: never a GET nobody asked for.
    return this.ranges.localOnly ? this.ranges.localOnly(() => this.prefetchWith(ahead)) : this.prefetchWith(ahead)
  }

  private prefetchWith(ahead: SharedReadAhead): boolean {
    const claimed = ahead.claim(this.nothingToDecode)
    if (!claimed) return false
    const {chunk: i, slot} = claimed
    const len = this.chunkLength(i)
    let done: number | undefined
    try {
      const e = this.entrySync(i)
      // The chunks after it are likely this or the other threads' next ones: their stored bytes come along.
      this.aheadRun.failed = false
      const stored = this.storedOf(i, e, Math.min(this.chunkCount - 1, i + AHEAD_RUN_CHUNKS), this.aheadRun)
      const checked = this.ranges.checkedCrc?.(stored) === e.storedCrc
      this.decoder.decodeInto(e.kind, stored, e.crc, e.storedCrc, ahead.slotBuffer(slot, len), this.checkData, checked)
      done = len
    } catch {
      // damaged or unreadable: the read of this chunk decodes it again and fails as it should
    } finally {
      ahead.release(slot, done)
    }
    return true
  }

  /**
   * For decode-ahead: chunk i has nothing to decode (zero, unread, past the end, or a damaged index table
   * the read that needs it reports). Zero and unread runs are remembered (a few hundred chunks): a stream's
   * window over them is looked at again on every claim, and an index lookup costs ~1 µs.
   */
  private readonly noDecodeMemo = new Float64Array(NO_DECODE_MEMO).fill(-1)
  private readonly nothingToDecode = (i: number): boolean => {
    const memo = this.noDecodeMemo
    if (memo[i & (NO_DECODE_MEMO - 1)] === i) return true
    if (i >= this.chunkCount) return true
    let k: ChunkKind
    try {
      k = this.entrySync(i).kind
    } catch {
      return true // a damaged index table: the read that needs it reports it
    }
    if (k !== ChunkKind.Zero && k !== ChunkKind.Unread) return false
    memo[i & (NO_DECODE_MEMO - 1)] = i
    return true
  }

  /** Decode-ahead counters shared by the device's threads (sync mode with OpenOptions.readAhead). */
  readAheadStats(): ReadAheadStats | undefined {
    if (this.readAhead) return this.readAhead.stats()
    // The process's instance: the buffer it handed its serving threads.
    return this.readAheadBuffer ? new SharedReadAhead(this.readAheadBuffer, this.chunkSize).stats() : undefined
  }

  /** What a remote image's bytes cost so far (GETs, bytes, retries); undefined for a local file. */
  fetchStats(): FetchStats | undefined {
    const s = this.ranges.stats
    return s ? {...s} : undefined
  }

  /** Cache hits and misses, bytes held, and how many misses decoded only a prefix of their chunk. */
  cacheStats(): {hits: number; misses: number; bytes: number; prefixes: number} {
    return this.cache.stats()
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size)
      throw new VdevError('usage', `${this.path}: read of ${length} bytes at ${offset} is outside the image (${this.size} bytes)`)
  }

  async read(offset: number, length: number): Promise<ReadResult> {
    if (this.sync) return this.readSync(offset, length)
    this.checkRange(offset, length)
    const out = Buffer.allocUnsafe(length)
    if (length > 0) {
      const first = Math.floor(offset / this.chunkSize)
      const last = Math.floor((offset + length - 1) / this.chunkSize)
      const parts: Promise<void>[] = []
      for (let i = first; i <= last; i++) {
        const cStart = i * this.chunkSize
        const s = Math.max(offset, cStart)
        const e = Math.min(offset + length, cStart + this.chunkSize)
        parts.push(
          this.chunk(i, e - cStart).then((data) => {
            if (data) data.copy(out, s - offset, s - cStart, e - cStart)
            else out.fill(0, s - offset, e - offset)
          }),
        )
      }
      await Promise.all(parts)
    }
    return {data: out, bad: this.zeroBad(out, offset, length)}
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length)
    const runs: Extent[] = []
    const push = (off: number, len: number, kind: Extent['kind']) => {
      const last = runs[runs.length - 1]
      if (last && last.kind === kind && last.offset + last.length === off) last.length += len
      else runs.push({offset: off, length: len, kind})
    }
    const end = offset + length
    let at = offset
    while (at < end) {
      const i = Math.floor(at / this.chunkSize)
      const g = Math.floor(i / this.l2Entries)
      const t = await this.index.table(g)
      if (typeof t === 'number') {
        const groupEnd = Math.min(end, (g + 1) * this.l2Entries * this.chunkSize)
        push(at, groupEnd - at, 'zero')
        at = groupEnd
        continue
      }
      const e = await this.entry(i)
      const cEnd = Math.min(end, (i + 1) * this.chunkSize)
      push(at, cEnd - at, e.kind === ChunkKind.Zero || e.kind === ChunkKind.Unread ? 'zero' : 'data')
      at = cEnd
    }
    // Bad areas override: cut them out of the runs.
    const bad = this.badAreas.intersect(offset, length)
    if (bad.length === 0) return runs
    const out: Extent[] = []
    let bi = 0
    for (const r of runs) {
      let s = r.offset
      const rEnd = r.offset + r.length
      while (s < rEnd) {
        while (bi < bad.length && bad[bi].offset + bad[bi].length <= s) bi++
        const b = bad[bi]
        if (!b || b.offset >= rEnd) {
          out.push({offset: s, length: rEnd - s, kind: r.kind})
          break
        }
        if (b.offset > s) out.push({offset: s, length: b.offset - s, kind: r.kind})
        const bEnd = Math.min(rEnd, b.offset + b.length)
        const prev = out[out.length - 1]
        const bs = Math.max(s, b.offset)
        if (prev && prev.kind === 'bad' && prev.offset + prev.length === bs) prev.length += bEnd - bs
        else out.push({offset: bs, length: bEnd - bs, kind: 'bad'})
        s = bEnd
      }
    }
    return out
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.pool?.close()
    this.cache.clear()
    this.index.clear()
    await this.ranges.close()
  }

  /**
   * Open and check an image: a local file, or the bytes `from` gives (a remote object, src/remote). Every
   * failure is a VdevError naming the file and the byte offset. The image owns `from` and closes it.
   */
  static async open(from: string | ByteRanges, opts: OpenOptions = {}): Promise<VdimgImage> {
    const ranges = typeof from === 'string' ? FileRanges.open(from) : from
    const file = ranges.name
    const fileSize = ranges.size
    const read = (len: number, pos: number): Promise<Buffer> => ranges.read(len, pos)
    try {
      /** A failure of the image at byte `at`; `reason` is its text without the file name and offset. */
      type Damage = VdevError & {reason: string; at: number}
      const fail = (m: string, at: number, code: 'format' | 'unsupported' = 'format'): Damage =>
        Object.assign(new VdevError(code, `${file}: ${m} (at byte ${at})`), {reason: m, at})
      const isFormat = (err: unknown): err is VdevError => err instanceof VdevError && err.code === 'format'
      const isDamage = (err: unknown): err is Damage => isFormat(err) && 'reason' in err
      // Damage the image is read around (a damaged copy, or an original read from its copy): one line each.
      const warnings: string[] = []
      const head = await read(Math.min(HEADER_SIZE, fileSize), 0)
      let header: Header
      try {
        header = decodeHeader(head, fileSize)
      } catch (err) {
        if (!(err instanceof LayoutError)) throw err
        const unsupported = /not supported/.test(err.message)
        const damage = fail(err.message, err.offset, unsupported ? 'unsupported' : 'format')
        // A newer major version whose checksum holds is not damage; anything else may be (FORMAT.md §12).
        const crcHolds = head.length === HEADER_SIZE && crc32c(head.subarray(0, 252)) === head.readUInt32LE(252)
        if (unsupported && crcHolds) throw damage
        const trailer = await headerCopy(read, fileSize)
        if (!trailer) throw damage
        header = trailer
        const why = !crcHolds && head.subarray(0, 8).equals(MAGIC) ? fail('header checksum mismatch', 252) : damage
        warnings.push(`${why.message.replace(/\)$/, '')}; read from its copy at byte ${fileSize - HEADER_SIZE})`)
      }
      if (header.trailerOffset && warnings.length === 0) {
        // The header is good: is its copy? (Byte-identical, FORMAT.md §12.)
        const t = header.trailerOffset + HEADER_SIZE <= fileSize ? await read(HEADER_SIZE, header.trailerOffset) : undefined
        if (!t || !t.equals(head))
          warnings.push(`${file}: header copy ${t ? 'damaged' : 'lies outside the file: truncated?'} (at byte ${header.trailerOffset}; the original serves)`)
      }
      const tableBytes = header.sectionCount * SECTION_ENTRY_SIZE
      let table = await read(tableBytes, header.sectionTableOffset)
      const copyAt = header.copyTableOffset
      if (copyAt) {
        const copy = copyAt + tableBytes <= fileSize ? await read(tableBytes, copyAt) : undefined
        if (crc32c(table) !== header.sectionTableCrc) {
          if (!copy || crc32c(copy) !== header.sectionTableCrc) throw fail('section table checksum mismatch, and its copy too', header.sectionTableOffset)
          warnings.push(`${file}: section table checksum mismatch (at byte ${header.sectionTableOffset}; read from its copy at byte ${copyAt})`)
          table = copy
        } else if (!copy || !copy.equals(table))
          warnings.push(`${file}: section table copy ${copy ? 'damaged' : 'lies outside the file: truncated?'} (at byte ${copyAt}; the original serves)`)
      }
      if (crc32c(table) !== header.sectionTableCrc) throw fail('section table checksum mismatch', header.sectionTableOffset)
      let sections: Section[]
      try {
        sections = decodeSections(table, header.sectionTableOffset, fileSize)
      } catch (err) {
        if (err instanceof LayoutError) throw fail(err.message, err.offset)
        throw err
      }
      const byType = new Map<number, Section>()
      for (const s of sections) {
        if (byType.has(s.type) && s.type <= LAST_KNOWN_SECTION) throw fail(`duplicate section of type ${s.type}`, s.offset)
        if (!byType.has(s.type)) byType.set(s.type, s)
      }
      let l1: Buffer | undefined
      let l1Offset = 0
      let bad = BadAreaMap.EMPTY
      let metadata: Record<string, unknown> = {}
      let copies: Float64Array | undefined
      const load = async (s: Section, cap: number, what: string, crc = s.crc) => {
        if (s.length > cap) throw fail(`${what} is ${s.length} bytes, more than the ${cap} a valid image can need`, s.offset)
        if (s.offset < HEADER_SIZE || s.offset + s.length > fileSize) throw fail(`${what} lies outside the file: truncated?`, s.offset)
        const b = await read(s.length, s.offset)
        if (crc32c(b) !== crc) throw fail(`${what} checksum mismatch`, s.offset)
        return b
      }
      /**
       * A section with a byte-identical copy (1.1, FORMAT.md §12): the original when its checksum holds, else
       * the copy when its bytes match the original's checksum. A damaged copy is a warning.
       */
      const loadWithCopy = async (s: Section, copyType: SectionType, cap: number, what: string): Promise<Buffer> => {
        const c = byType.get(copyType)
        let damage: Damage | undefined
        let b: Buffer | undefined
        try {
          b = await load(s, cap, what)
        } catch (err) {
          if (!isDamage(err)) throw err
          damage = err
        }
        if (!c) {
          if (damage) throw damage
          return b!
        }
        let copyDamage: Damage | undefined
        let copy: Buffer | undefined
        if (c.length !== s.length || c.crc !== s.crc) copyDamage = fail(`${what} copy does not match the original's length and checksum`, c.offset)
        else
          try {
            copy = await load(c, cap, `${what} copy`)
          } catch (err) {
            if (!isDamage(err)) throw err
            copyDamage = err
          }
        if (b) {
          if (copyDamage) warnings.push(`${copyDamage.message.replace(/\)$/, '')}; the original serves)`)
          return b
        }
        if (!copy) {
          // The original's offset, as for a 1.0 image (FORMAT.md §9); the copy's failure is named in the text.
          throw fail(`${damage!.reason}, and its copy too: ${copyDamage!.reason} at byte ${c.offset}`, damage!.at)
        }
        warnings.push(`${damage!.message.replace(/\)$/, '')}; read from its copy at byte ${c.offset})`)
        return copy
      }
      for (const s of sections) {
        if (byType.get(s.type) !== s) continue
        if (s.type === SectionType.ChunkIndex) {
          const want = Math.ceil(header.chunkCount / header.l2Entries) * L1_ENTRY_SIZE
          if (s.length !== want) throw fail(`chunk index is ${s.length} bytes, expected ${want}`, s.offset)
          l1 = await loadWithCopy(s, SectionType.ChunkIndexCopy, want, 'chunk index')
          l1Offset = s.offset
          // Every table offset is range-checked here (its high 32 bits, one read a group), so the lazy lookups
          // on the serving path never meet one past 2^53.
          for (let at = 0; at < l1.length; at += L1_ENTRY_SIZE)
            if (l1.readUInt32LE(at + 4) > 0x1fffff) throw fail(`index table offset ${l1.readBigUInt64LE(at)} is out of range`, s.offset + at)
        } else if (s.type === SectionType.BadAreaMap) {
          const b = await loadWithCopy(s, SectionType.BadAreaMapCopy, MAX_BAD_AREAS * BAD_ENTRY_SIZE, 'bad-area map')
          try {
            bad = BadAreaMap.decode(b, s.offset, header.size)
          } catch (err) {
            if (err instanceof LayoutError) throw fail(err.message, err.offset)
            throw err
          }
        } else if (s.type === SectionType.Metadata) {
          // Non-critical (FORMAT.md §3): damaged metadata is a warning, and the image opens without it.
          try {
            metadata = parseMetadataSection(await loadWithCopy(s, SectionType.MetadataCopy, MAX_METADATA, 'metadata'), s.offset, fail)
          } catch (err) {
            if (!isFormat(err)) throw err
            warnings.push(`${err.message}; ignored`)
          }
        } else if (s.type >= SectionType.IndexTablesCopy && s.type <= LAST_KNOWN_SECTION) {
          // Copies: read with their originals (above) and, for index tables, when one is damaged. Recovery
          // data (type 8, §13) is read only by verify and repair.
        } else if (s.flags & SECTION_FLAG_CRITICAL) {
          throw fail(`unknown critical section type ${s.type}: this image needs a newer vdev`, s.offset, 'unsupported')
        } else if (s.length <= MAX_METADATA && crc32c(await read(s.length, s.offset)) !== s.crc) {
          // An unknown non-critical section is skipped; a damaged one is worth a warning all the same.
          warnings.push(`${file}: section of type ${s.type} checksum mismatch (at byte ${s.offset}); ignored`)
        }
      }
      if (!l1) {
        if (header.chunkCount > 0) throw fail('no chunk index section', header.sectionTableOffset)
        l1 = Buffer.alloc(0)
      }
      const tablesCopy = byType.get(SectionType.IndexTablesCopy)
      if (tablesCopy) {
        // Table copies lie end to end in group order (FORMAT.md §12): each one's place follows from the index.
        const groups = l1.length / L1_ENTRY_SIZE
        const places = new Float64Array(groups)
        let at = tablesCopy.offset
        for (let g = 0; g < groups; g++) {
          if (l1.readBigUInt64LE(g * L1_ENTRY_SIZE) === 0n) continue
          places[g] = at
          at += l1.readUInt32LE(g * L1_ENTRY_SIZE + 8)
        }
        if (at - tablesCopy.offset !== tablesCopy.length)
          warnings.push(`${file}: index table copies are ${tablesCopy.length} bytes, the chunk index needs ${at - tablesCopy.offset} (at byte ${tablesCopy.offset}); ignored`)
        else if (tablesCopy.length) copies = places
      }
      const img = new VdimgImage(file, ranges, fileSize, header, l1, l1Offset, bad, metadata, sections, opts, copies)
      img.warnings.push(...warnings)
      return img
    } catch (err) {
      await ranges.close()
      throw err
    }
  }
}

/**
 * The header's copy, the file's last 256 bytes (1.1, FORMAT.md §12), when it holds a valid 1.1 header that
 * says it is there; else undefined.
 */
async function headerCopy(read: (len: number, pos: number) => Promise<Buffer>, fileSize: number): Promise<Header | undefined> {
  if (fileSize < 2 * HEADER_SIZE) return undefined
  const t = await read(HEADER_SIZE, fileSize - HEADER_SIZE)
  try {
    const h = decodeHeader(t, fileSize)
    return h.minor >= 1 && h.trailerOffset === fileSize - HEADER_SIZE ? h : undefined
  } catch (err) {
    if (err instanceof LayoutError) return undefined
    throw err
  }
}

/** A metadata section's bytes as the JSON object they must be (FORMAT.md §8), or a format error. */
function parseMetadataSection(b: Buffer, offset: number, fail: (m: string, o: number) => VdevError): Record<string, unknown> {
  const deep = metadataTooDeep(b)
  if (deep !== undefined) throw fail(`metadata nests deeper than ${MAX_METADATA_DEPTH} levels`, offset + deep)
  // A zero-length section holds nothing: the same as no section (FORMAT.md §3), metadata {}.
  if (b.length === 0) return {}
  let text: string
  try {
    // Strict UTF-8: a malformed sequence is damage, not U+FFFD; a byte-order mark is kept, so JSON.parse refuses it.
    text = new TextDecoder('utf-8', {fatal: true, ignoreBOM: true}).decode(b)
  } catch {
    throw fail('metadata is not valid UTF-8', offset)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw fail(text.charCodeAt(0) === 0xfeff ? 'metadata starts with a byte-order mark' : 'metadata is not valid JSON', offset)
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw fail('metadata is not a JSON object', offset)
  return parsed as Record<string, unknown>
}

export function openImage(from: string | ByteRanges, opts?: OpenOptions): Promise<VdimgImage> {
  return VdimgImage.open(from, opts)
}

function path_join(a: string, b: string): string {
  return path.join(a, b)
}

function toOwnArrayBuffer(b: Buffer): ArrayBuffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength) return b.buffer as ArrayBuffer
  return new Uint8Array(b).buffer as ArrayBuffer
}

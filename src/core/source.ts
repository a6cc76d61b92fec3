/**
 * The layer contract, after nbdkit's plugin/filter split: a *source* (an image) has a size and answers
 * reads; *layers* (src/layers) wrap a source and present the same interface; an *exporter* (a backend or
 * a protocol server) turns reads into a block device. Offsets and lengths are JavaScript numbers: exact up
 * to 2^53 bytes (8 PiB).
 *
 * A source can be opened again on any thread from its `descriptor` (src/sources: openSource), which is
 * how serving threads (src/threads) each get an instance of their own without knowing what kind it is.
 */
import type {TransferListItem} from 'node:worker_threads'
import type {BadRange} from './errors'

export interface ReadResult {
  /** Exactly `length` bytes. Bytes inside `bad` are zero (they were never stored). */
  data: Buffer
  /** Bad areas intersecting the request, clipped to it, in ascending order. Empty when all is readable. */
  bad: BadRange[]
}

export type ExtentKind = 'data' | 'zero' | 'bad'

export interface Extent {
  offset: number
  length: number
  kind: ExtentKind
}

/**
 * What another thread needs to open the same source: a plain value that survives structured cloning
 * (postMessage, workerData). `kind` names an opener in src/sources; `path` is absolute.
 */
export interface SourceDescriptor {
  kind: string
  path: string
  options?: Record<string, string | number | boolean>
}

/** How a source is opened (src/sources: openSource). */
export interface OpenSourceOptions {
  /**
   * For a serving thread that answers one request at a time: readSync may be called (pread(2) and any
   * decoding on the calling thread, into the caller's buffer).
   */
  sync?: boolean
  /** Bytes of decoded data the source may cache (sources that decode). */
  cacheBytes?: number
  /** Worker threads for decoding (asynchronous mode only; sources that decode). */
  decompressThreads?: number
  /** What the instance on the main thread offered serving threads (BlockSource.threadLink), if anything. */
  link?: unknown
  /** Hears damage the source reads around that it finds on use (a structure read from its copy). */
  onWarning?: (line: string) => void
}

/** What a source offers each serving thread besides its descriptor, and the objects to transfer with it. */
export interface ThreadLink {
  value: unknown
  transfer: TransferListItem[]
}

/** How a write is acknowledged: with `fua`, only once it is on stable storage. */
export interface WriteOptions {
  fua?: boolean
}

/** What a source whose bytes are remote fetched: GETs sent (retries included), bytes received, retries. */
export interface FetchStats {
  requests: number
  bytes: number
  retries: number
  /** With a local cache of the remote bytes: reads it answered, and reads it did not. */
  cacheHits?: number
  cacheMisses?: number
}

export interface CacheStats {
  hits: number
  misses: number
}

export interface BlockSource {
  readonly size: number
  /** Logical sector size of the original medium: 512, 2048 or 4096. */
  readonly sectorSize: number
  /** Read [offset, offset+length). Rejects only for faults (corrupt chunk, I/O error), never for bad areas. */
  read(offset: number, length: number): Promise<ReadResult>
  /**
   * Synchronous read into `dst` (or a new buffer), for serving threads that answer one request at a time.
   * Every source implements it when opened with {sync: true} (then `synchronous` is true).
   */
  readSync?(offset: number, length: number, dst?: Buffer): ReadResult
  /** True when readSync may be called. */
  readonly synchronous?: boolean
  /**
   * True when readSync never waits on anything slower than a file's pread(2) and decoding (not a device, a
   * remote fetch or another thread): an event-loop body may call it between answering its socket.
   */
  readonly immediate?: boolean
  /**
   * For a serving thread with no request to serve: one unit of work ahead of the sequential readers (a VDIMG
   * image decodes one chunk into the device's shared decode-ahead buffer, src/format/read-ahead.ts). False
   * when there is nothing to do; never throws.
   */
  prefetch?(): boolean
  /** How to open this same source on another thread; absent when it cannot be opened again. */
  readonly descriptor?: SourceDescriptor
  /**
   * Called once per serving thread: something the thread's instance needs from this one (the overlay: the
   * coverage bitmap and a link to the owner of its writes, src/layers/overlay.ts; a remote image: a link
   * through which this instance does the thread's fetching, src/remote/link.ts). Undefined: nothing.
   */
  threadLink?(): ThreadLink | undefined
  /** Describe [offset, offset+length) as runs of data, zeros and bad areas (for NBD block status). */
  extents?(offset: number, length: number): Promise<Extent[]>
  /** Cache hits and misses of a source that caches decoded data. */
  cacheStats?(): CacheStats
  /** What a remote source fetched so far (on the instance that does the fetching); undefined for local ones. */
  fetchStats?(): FetchStats | undefined
  /**
   * True for a source that takes writes (the overlay, src/layers/overlay.ts; docs/OVERLAY.md). The overlay
   * has one owner, the instance that opened it; serving threads open a view that calls the owner
   * (src/layers/overlay-view.ts). Every other source is read-only and implements none of the methods below.
   */
  readonly writable?: boolean
  /** Write `data` at `offset` (any alignment); resolves once written (and on stable storage with fua). */
  write?(offset: number, data: Buffer, opts?: WriteOptions): Promise<void>
  /** Make [offset, offset+length) read as zeros. */
  zero?(offset: number, length: number, opts?: WriteOptions): Promise<void>
  /** Discard [offset, offset+length): it reads as zeros afterwards. */
  trim?(offset: number, length: number, opts?: WriteOptions): Promise<void>
  /** Every write resolved before this call is on stable storage when it resolves. */
  flush?(): Promise<void>
  /**
   * Run `f` (a read-then-write, such as SCSI COMPARE AND WRITE) with no other exclusive section in between,
   * whichever thread runs it: the overlay orders them on its owner (serving threads' views ask the owner
   * for the turn and give it back, src/layers/overlay-view.ts).
   */
  exclusive?<T>(f: () => Promise<T>): Promise<T>
  close(): Promise<void>
}

/**
 * The local cache of a remote image's bytes (`--cache DIR`, docs/remote.md "Cache"): every range the
 * reader fetched (index tables, chunks' stored bytes, the sections read on opening) kept as one file,
 * so that a range read again — by this process, a later one, or another vdev process on the machine — is
 * not fetched again.
 *
 * - Keyed by the object's identity: a directory per (URL without its query, ETag or Last-Modified,
 *   size); an object without either cannot be pinned and is not cached. A changed object has another
 *   identity, so its old ranges are never used for it.
 * - Each file holds a magic, the CRC-32C and length of its bytes, and the bytes; a file that fails the
 *   check is deleted and the range fetched again (a cache never serves bytes it cannot vouch for).
 * - Written to a temporary name and renamed into place: processes share the directory without locks,
 *   and a crash leaves at most a temporary file (removed by the next eviction pass).
 * - Bounded by `--cache-size`: when the files exceed it, the least recently used (mtime, touched on each
 *   hit) are deleted down to 90 % of it, across every image in DIR.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {crc32c} from '../format/crc'

const MAGIC = Buffer.from('VDEVRNG1')
/** A file hit again within this long is not touched again. */
const TOUCH_MS = 60_000
/** Most file names remembered as touched (bounded memory). */
const MAX_TOUCHED = 100_000
const HEAD = MAGIC.length + 8

/** The per-user default: $XDG_CACHE_HOME/vdev, else ~/.cache/vdev. */
export function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache')
  return path.join(base, 'vdev')
}

export const DEFAULT_CACHE_BYTES = 10 * 2 ** 30

export interface CacheStats {
  hits: number
  misses: number
  /** Files found damaged and deleted. */
  damaged: number
}

/** What a serving thread needs to use the same cache as its process's instance (link.ts). */
export interface SharedCache {
  root: string
  dir: string
  maxBytes: number
  /** BigInt64Array over it: the counters below, shared by every instance of the process. */
  shared: SharedArrayBuffer
}

/** Slots of the shared counters. */
const TOTAL = 0
const HITS = 1
const MISSES = 2
const DAMAGED = 3

export class RangeCache {
  /**
   * Bytes in the whole cache directory (as last counted plus what this process added since), hits, misses
   * and damaged files: in shared memory, so that the serving threads' instances (which read and fill the
   * cache themselves, link.ts) count into the same totals as the process's own.
   */
  private readonly counters: BigInt64Array
  /** When this instance last touched a file (its mtime orders eviction): not again within TOUCH_MS. */
  private readonly touched = new Map<string, number>()
  /** A hit's file header and the byte past its end (reused: get() runs on every hit). */
  private readonly head = Buffer.alloc(HEAD)
  private readonly tail = Buffer.alloc(1)
  /** The buffer the last hit returned, whose CRC-32C get() computed (checkedCrc). */
  private lastHit: Buffer | undefined

  private constructor(
    readonly root: string,
    readonly dir: string,
    readonly maxBytes: number,
    shared?: SharedArrayBuffer,
  ) {
    this.counters = new BigInt64Array(shared ?? new SharedArrayBuffer(4 * 8))
    if (!shared) this.counters[TOTAL] = BigInt(usage(root))
  }

  /** The cache of one object, or undefined when it has no identity to key it by or DIR cannot be used. */
  static open(root: string, id: {url: string; tag?: string; size: number}, maxBytes: number): RangeCache | undefined {
    if (!id.tag) return undefined
    const key = crypto.createHash('sha256').update(`${id.url}\0${id.tag}\0${id.size}`).digest('hex').slice(0, 32)
    const dir = path.join(root, key)
    try {
      fs.mkdirSync(dir, {recursive: true, mode: 0o700})
    } catch {
      return undefined
    }
    return new RangeCache(root, dir, maxBytes)
  }

  /** Another instance of the same cache, on a serving thread, sharing this one's counters. */
  static attach(c: SharedCache): RangeCache {
    return new RangeCache(c.root, c.dir, c.maxBytes, c.shared)
  }

  /** What attach() takes (structured-cloned to a serving thread). */
  get sharing(): SharedCache {
    return {root: this.root, dir: this.dir, maxBytes: this.maxBytes, shared: this.counters.buffer as SharedArrayBuffer}
  }

  get stats(): CacheStats {
    const c = this.counters
    return {hits: Number(Atomics.load(c, HITS)), misses: Number(Atomics.load(c, MISSES)), damaged: Number(Atomics.load(c, DAMAGED))}
  }

  private file(pos: number, len: number): string {
    // Not path.join: the directory is already normal, and this runs on every hit.
    return `${this.dir}/${pos.toString(16)}-${len.toString(16)}`
  }

  /**
   * The cached bytes of exactly [pos, pos+len), checked; undefined on a miss. They are read straight into
   * `into` when it holds len bytes (one open, one readv, one close: no allocation, no copy). `countMiss`
   * false: a probe (decoding ahead) whose miss is not one of the reads' misses.
   */
  get(pos: number, len: number, into?: Buffer, countMiss = true): Buffer | undefined {
    this.lastHit = undefined
    const f = this.file(pos, len)
    let fd: number
    try {
      fd = fs.openSync(f, 'r')
    } catch {
      if (countMiss) Atomics.add(this.counters, MISSES, 1n)
      return undefined
    }
    const out = into && into.length >= len ? into.subarray(0, len) : Buffer.allocUnsafe(len)
    let ok = false
    try {
      // One byte more than the file should hold: a longer file is as damaged as a shorter one.
      const n = fs.readvSync(fd, [this.head, out, this.tail], 0)
      const h = this.head
      ok = n === HEAD + len && h.compare(MAGIC, 0, MAGIC.length, 0, MAGIC.length) === 0 && h.readUInt32LE(MAGIC.length + 4) === len && crc32c(out) === h.readUInt32LE(MAGIC.length)
      this.lastHit = ok ? out : undefined
      if (ok) this.touch(f, fd)
    } catch {
      ok = false
    } finally {
      fs.closeSync(fd)
    }
    if (!ok) {
      Atomics.add(this.counters, DAMAGED, 1n)
      Atomics.add(this.counters, MISSES, 1n)
      try {
        fs.rmSync(f, {force: true})
      } catch {
        // another process removed it
      }
      return undefined
    }
    Atomics.add(this.counters, HITS, 1n)
    return out
  }

  /**
   * The CRC-32C of `b` if it is what the last get() returned (checked equal to its file's): the reader,
   * which checks a chunk's stored bytes against its index entry, compares that instead of computing it
   * again. Once: any later call says undefined.
   */
  checkedCrc(b: Buffer): number | undefined {
    const hit = this.lastHit
    this.lastHit = undefined
    if (hit !== b) return undefined
    return this.head.readUInt32LE(MAGIC.length)
  }

  /** Mark a hit file as recently used (its mtime orders eviction), at most once per TOUCH_MS per file. */
  private touch(f: string, fd: number): void {
    const ms = Date.now()
    if (ms - (this.touched.get(f) ?? -Infinity) < TOUCH_MS) return
    // A syscall less for every hit after the first: eviction order to within TOUCH_MS is enough.
    if (this.touched.size >= MAX_TOUCHED) this.touched.clear()
    this.touched.set(f, ms)
    try {
      fs.futimesSync(fd, ms / 1000, ms / 1000)
    } catch {
      // a read-only cache directory: the bytes read are still good
    }
  }

  /** Keep [pos, pos+len); errors (a full disk, a removed directory) only mean it is not kept. */
  put(pos: number, data: Buffer): void {
    if (data.length === 0 || data.length + HEAD > this.maxBytes / 4) return
    const f = this.file(pos, data.length)
    const tmp = `${f}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`
    const head = Buffer.alloc(HEAD)
    MAGIC.copy(head, 0)
    head.writeUInt32LE(crc32c(data), MAGIC.length)
    head.writeUInt32LE(data.length, MAGIC.length + 4)
    try {
      fs.mkdirSync(this.dir, {recursive: true, mode: 0o700})
      const fd = fs.openSync(tmp, 'wx', 0o600)
      try {
        fs.writevSync(fd, [head, data])
      } finally {
        fs.closeSync(fd)
      }
      fs.renameSync(tmp, f)
    } catch {
      fs.rmSync(tmp, {force: true})
      return
    }
    const total = Atomics.add(this.counters, TOTAL, BigInt(HEAD + data.length)) + BigInt(HEAD + data.length)
    if (total > BigInt(this.maxBytes)) {
      const left = evict(this.root, Math.floor(this.maxBytes * 0.9))
      // What the other instances added meanwhile stays counted.
      Atomics.sub(this.counters, TOTAL, total - BigInt(left))
    }
  }
}

/** Bytes of the cache files under `root`. */
function usage(root: string): number {
  return files(root).reduce((n, f) => n + f.size, 0)
}

function files(root: string): Array<{file: string; size: number; mtime: number}> {
  const out: Array<{file: string; size: number; mtime: number}> = []
  let dirs: string[]
  try {
    dirs = fs.readdirSync(root)
  } catch {
    return out
  }
  for (const d of dirs) {
    const dir = path.join(root, d)
    let names: string[]
    try {
      names = fs.readdirSync(dir)
    } catch {
      continue
    }
    for (const n of names) {
      try {
        const st = fs.statSync(path.join(dir, n))
        if (st.isFile()) out.push({file: path.join(dir, n), size: st.size, mtime: st.mtimeMs})
      } catch {
        // removed meanwhile
      }
    }
  }
  return out
}

/** Delete the least recently used files until the cache holds at most `target` bytes; returns what it holds. */
function evict(root: string, target: number): number {
  const all = files(root).sort((a, b) => a.mtime - b.mtime)
  let total = all.reduce((n, f) => n + f.size, 0)
  for (const f of all) {
    if (total <= target) break
    try {
      fs.rmSync(f.file, {force: true})
      total -= f.size
    } catch {
      // another process has it
    }
  }
  return total
}

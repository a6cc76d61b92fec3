/**
 * A VDIMG image's chunk index (FORMAT.md §5): the first-level index, held whole, says where each group's
 * second-level table is (or that all its chunks are zero or unread); tables load on first use, checked
 * against their CRC, into a small LRU; every chunk entry is validated before it is used.
 */
import {VdevError} from '../core/errors'
import type {ByteRanges} from './ranges'
import {crc32c} from './crc'
import {ChunkKind, HEADER_SIZE, L1_ENTRY_SIZE, L2_ENTRY_SIZE, LayoutError, decodeL1Entry, readL2Entry, type ChunkEntry} from './layout'

/** Largest zstd frame a chunk may occupy: ZSTD_compressBound(chunk) plus slack. Raw is used beyond that. */
export function maxStored(chunkLen: number): number {
  return chunkLen + (chunkLen >> 7) + 1024
}

export interface IndexTablesOptions {
  /** The image's bytes. */
  ranges: ByteRanges
  fileSize: number
  /** The image's logical size, chunk size and count, and entries per second-level table. */
  size: number
  chunkSize: number
  chunkCount: number
  l2Entries: number
  /** The first-level index and its offset in the file. */
  l1: Buffer
  l1Offset: number
  /** Sync mode: tables load with pread(2), and one evicted table is reused for the next load. */
  sync: boolean
  /** An error about the image file at a byte offset. */
  fail: (message: string, offset?: number) => VdevError
  /**
   * 1.1 (FORMAT.md §12): where each group's table copy is (0 for a group without a table), when the image
   * has copies; and who hears that a damaged table was read from its copy (once per group).
   */
  copies?: Float64Array
  onCopyUsed?: (g: number, damage: VdevError, copyOffset: number) => void
}

interface Where {
  offset: number
  length: number
  crc: number
}

export class IndexTables {
  private readonly o: IndexTablesOptions
  private readonly l2Cache = new Map<number, Buffer>()
  /** Index tables kept: 6 MiB of them (64 of the default 4096 entries), at least 2. */
  private readonly maxL2Tables: number
  /** Sync mode: an index table evicted by a synchronous load, reused by the next one. */
  private spareL2: Buffer | undefined

  constructor(o: IndexTablesOptions) {
    this.o = o
    this.maxL2Tables = Math.max(2, Math.floor((6 << 20) / (o.l2Entries * L2_ENTRY_SIZE)))
  }

  private chunkLength(i: number): number {
    return Math.min(this.o.chunkSize, this.o.size - i * this.o.chunkSize)
  }

  /**
   * Where group `g`'s second-level table is (checked), or the one kind of all its chunks; or the table
   * itself when it is cached.
   */
  private locate(g: number): ChunkKind | Buffer | Where {
    const e = decodeL1Entry(this.o.l1, g, this.o.l1Offset)
    const where = this.o.l1Offset + g * L1_ENTRY_SIZE
    if (e.offset === 0) {
      if (e.fillKind !== ChunkKind.Zero && e.fillKind !== ChunkKind.Unread)
        throw this.o.fail(`index group ${g} has no table and an invalid fill kind ${e.fillKind}`, where + 16)
      return e.fillKind
    }
    const cached = this.l2Cache.get(g)
    if (cached) {
      this.l2Cache.delete(g)
      this.l2Cache.set(g, cached)
      return cached
    }
    const entries = Math.min(this.o.l2Entries, this.o.chunkCount - g * this.o.l2Entries)
    if (e.length !== entries * L2_ENTRY_SIZE)
      throw this.o.fail(`index table ${g} is ${e.length} bytes, expected ${entries * L2_ENTRY_SIZE}`, where + 8)
    return {offset: e.offset, length: e.length, crc: e.crc}
  }

  /** Why the table copy of `length` bytes at `offset` cannot be read, or undefined. */
  private outside(g: number, offset: number, length: number, what: string): VdevError | undefined {
    if (offset < HEADER_SIZE || offset + length > this.o.fileSize)
      return this.o.fail(`${what} ${g} (${length} bytes at byte ${offset}) lies outside the file: truncated?`, offset)
    return undefined
  }

  private check(g: number, at: Where, offset: number, table: Buffer, what: string): Buffer {
    if (crc32c(table) !== at.crc) throw this.o.fail(`${what} ${g} checksum mismatch`, offset)
    return table
  }

  private accept(g: number, table: Buffer): Buffer {
    this.l2Cache.set(g, table)
    if (this.l2Cache.size > this.maxL2Tables) this.l2Cache.delete(this.l2Cache.keys().next().value!)
    return table
  }

  /** Where group `g`'s table copy is (1.1), or undefined. */
  copyOffset(g: number): number | undefined {
    const c = this.o.copies?.[g]
    return c ? c : undefined
  }

  /**
   * The table, read by `read` from its place or, when that is damaged (outside the file, unreadable, its
   * checksum fails), from its copy (FORMAT.md §12). Both damaged: the original's error, naming the copy's.
   */
  private load(g: number, at: Where, read: (offset: number) => Buffer | Promise<Buffer>): Buffer | Promise<Buffer> {
    const attempt = (offset: number, what: string): Buffer | Promise<Buffer> => {
      const out = this.outside(g, offset, at.length, what)
      if (out) throw out
      const r = read(offset)
      return Buffer.isBuffer(r) ? this.check(g, at, offset, r, what) : r.then((t) => this.check(g, at, offset, t, what))
    }
    const fallback = (damage: unknown): Buffer | Promise<Buffer> => {
      const copy = this.copyOffset(g)
      if (!(damage instanceof VdevError) || copy === undefined) throw damage
      const both = (err: unknown): never => {
        if (!(err instanceof VdevError)) throw err
        throw new VdevError(damage.code, `${damage.message}; its copy too: ${err.message.replace(`${this.o.ranges.name}: `, '')}`)
      }
      const used = (t: Buffer): Buffer => {
        this.o.onCopyUsed?.(g, damage, copy)
        return t
      }
      try {
        const r = attempt(copy, 'index table copy')
        return Buffer.isBuffer(r) ? used(r) : r.then(used, both)
      } catch (err) {
        return both(err)
      }
    }
    try {
      const r = attempt(at.offset, 'index table')
      return Buffer.isBuffer(r) ? r : r.catch(fallback)
    } catch (err) {
      return fallback(err)
    }
  }

  /** The second-level table of group `g`, loaded and checked on first use; or the one kind of all its chunks. */
  async table(g: number): Promise<Buffer | ChunkKind> {
    const at = this.locate(g)
    if (typeof at === 'number' || Buffer.isBuffer(at)) return at
    return this.accept(g, await this.load(g, at, (offset) => this.o.ranges.read(at.length, offset)))
  }

  /**
   * For verify: each place group `g`'s table is kept (the original, then the copy when the image has
   * copies), and what is wrong with it (undefined: it reads and its checksum holds). Nothing is cached.
   */
  async tablePlaces(g: number): Promise<Array<{what: 'original' | 'copy'; offset: number; damage?: VdevError}>> {
    const at = this.locate(g)
    if (typeof at === 'number') return []
    const e = decodeL1Entry(this.o.l1, g, this.o.l1Offset)
    const where: Where = Buffer.isBuffer(at) ? {offset: e.offset, length: e.length, crc: e.crc} : at
    const places: Array<{what: 'original' | 'copy'; offset: number}> = [{what: 'original', offset: where.offset}]
    const copy = this.copyOffset(g)
    if (copy !== undefined) places.push({what: 'copy', offset: copy})
    const out = []
    for (const p of places) {
      const what = p.what === 'copy' ? 'index table copy' : 'index table'
      let damage: VdevError | undefined = this.outside(g, p.offset, where.length, what)
      if (!damage)
        try {
          this.check(g, where, p.offset, await this.o.ranges.read(where.length, p.offset), what)
        } catch (err) {
          if (!(err instanceof VdevError)) throw err
          damage = err
        }
      out.push({...p, damage})
    }
    return out
  }

  tableSync(g: number): Buffer | ChunkKind {
    const at = this.locate(g)
    if (typeof at === 'number' || Buffer.isBuffer(at)) return at
    // Sync mode recycles the table this load evicts for the next load, as it does decode buffers: random
    // reads over more index groups than the cache holds would otherwise drop a table (96 KiB by default)
    // per load, which V8 frees only at its next collection — tens of MB per serving thread.
    const into = this.spareL2 !== undefined && this.spareL2.length >= at.length ? this.spareL2 : undefined
    this.spareL2 = undefined
    const oldest = this.o.sync && this.l2Cache.size >= this.maxL2Tables ? this.l2Cache.keys().next().value : undefined
    const evicted = oldest !== undefined ? this.l2Cache.get(oldest) : undefined
    const table = this.accept(g, this.load(g, at, (offset) => this.o.ranges.readSync(at.length, offset, into)) as Buffer)
    if (evicted && !this.l2Cache.has(oldest!)) this.spareL2 = evicted
    return table
  }

  /**
   * How many chunks of group `g` have each kind (index = ChunkKind), straight from its table; index 4 counts
   * the chunks that cannot be read by their kind alone: an unknown kind, or every chunk of a group whose
   * first-level entry or table fails its checks (FORMAT.md §5: that damages the group, not the image).
   */
  async groupKinds(g: number): Promise<number[]> {
    const counts = [0, 0, 0, 0, 0]
    const n = Math.min(this.o.l2Entries, this.o.chunkCount - g * this.o.l2Entries)
    let t: Buffer | ChunkKind
    try {
      t = await this.table(g)
    } catch (err) {
      if ((err as VdevError).code !== 'format') throw err
      counts[4] = n
      return counts
    }
    if (typeof t === 'number') counts[t] += n
    else
      for (let k = 0; k < n; k++) {
        const kind = t[k * L2_ENTRY_SIZE + 16]
        counts[kind > ChunkKind.Unread ? 4 : kind]++
      }
    return counts
  }

  /** The index entry of chunk `i`, validated. */
  async entry(i: number): Promise<ChunkEntry> {
    return this.entryIn(i, await this.table(Math.floor(i / this.o.l2Entries)))
  }

  entrySync(i: number): ChunkEntry {
    return this.entryIn(i, this.tableSync(Math.floor(i / this.o.l2Entries)))
  }

  private entryIn(i: number, t: Buffer | ChunkKind): ChunkEntry {
    const g = Math.floor(i / this.o.l2Entries)
    if (typeof t === 'number') return {offset: 0, storedLength: 0, crc: 0, kind: t, storedCrc: 0}
    const l1e = decodeL1Entry(this.o.l1, g, this.o.l1Offset)
    const k = i % this.o.l2Entries
    const where = l1e.offset + k * L2_ENTRY_SIZE
    let e: ChunkEntry
    try {
      e = readL2Entry(t, k, l1e.offset)
    } catch (err) {
      // A chunk offset past 2^53 under a valid table checksum: malformed, not an internal error.
      if (err instanceof LayoutError) throw this.o.fail(`chunk ${i}: ${err.message}`, err.offset)
      throw err
    }
    const len = this.chunkLength(i)
    switch (e.kind) {
      case ChunkKind.Zero:
      case ChunkKind.Unread:
        if (e.storedLength !== 0) throw this.o.fail(`chunk ${i}: ${e.kind === ChunkKind.Zero ? 'zero' : 'unread'} chunk with stored bytes`, where + 8)
        break
      case ChunkKind.Raw:
        if (e.storedLength !== len) throw this.o.fail(`chunk ${i}: raw chunk of ${e.storedLength} bytes, expected ${len}`, where + 8)
        break
      case ChunkKind.Zstd:
        if (e.storedLength === 0 || e.storedLength > maxStored(len))
          throw this.o.fail(`chunk ${i}: stored length ${e.storedLength} is impossible for a ${len}-byte chunk`, where + 8)
        break
      default:
        throw this.o.fail(`chunk ${i}: unknown chunk kind ${e.kind}`, where + 16)
    }
    if (e.storedLength && (e.offset < HEADER_SIZE || e.offset + e.storedLength > this.o.fileSize))
      throw this.o.fail(`chunk ${i} (${e.storedLength} bytes at byte ${e.offset}) lies outside the file: truncated?`, where)
    return e
  }

  clear(): void {
    this.l2Cache.clear()
  }
}

/**
 * The reader's cache of decoded chunks: an LRU bounded in bytes, where each entry is a whole chunk or (for
 * a small read) a decoded prefix of one, and counts as its chunk's logical length, the memory it holds.
 * In sync mode the buffers of evicted entries are kept (a few) for the next decode, so steady serving
 * allocates nothing.
 */

export class ChunkCache {
  private readonly map = new Map<number, Buffer>()
  private used = 0
  /** Sync mode: decode buffers (each chunkSize bytes) evicted from the cache, ready for reuse. */
  private readonly spare: Buffer[] = []
  hits = 0
  misses = 0
  /** Misses that decoded only a prefix of their chunk. */
  prefixes = 0

  constructor(
    private readonly limit: number,
    private readonly chunkSize: number,
    /** The image's logical size (its last chunk may be short). */
    private readonly size: number,
    /** Only sync mode recycles: nothing else can hold a reference to an evicted buffer across a call. */
    private readonly sync: boolean,
  ) {}

  private chunkLength(i: number): number {
    return Math.min(this.chunkSize, this.size - i * this.chunkSize)
  }

  /** The cached bytes of chunk `i` when they cover `need` bytes from its start: a hit, now the most recent. */
  hit(i: number, need: number): Buffer | undefined {
    const b = this.map.get(i)
    if (!b || b.length < need) return undefined
    this.hits++
    this.map.delete(i)
    this.map.set(i, b)
    return b
  }

  /** Drops chunk `i`'s entry (a prefix too short for a read); whether there was one. */
  drop(i: number): boolean {
    const b = this.map.get(i)
    if (b) this.forget(i, b)
    return b !== undefined
  }

  /** Caches a decoded chunk or prefix, evicting the least recently used beyond the limit. */
  remember(i: number, data: Buffer): void {
    const held = this.chunkLength(i)
    if (held > this.limit) return
    this.map.set(i, data)
    this.used += held
    while (this.used > this.limit) {
      const [k, v] = this.map.entries().next().value!
      this.forget(k, v)
    }
  }

  private forget(i: number, v: Buffer): void {
    this.map.delete(i)
    this.used -= this.chunkLength(i)
    if (this.sync && this.spare.length < 8 && v.buffer.byteLength === this.chunkSize) this.spare.push(Buffer.from(v.buffer, 0, this.chunkSize))
  }

  /** Sync mode: a buffer of `length` bytes to decode chunk data into, reused when one is spare. */
  buffer(length: number): Buffer {
    return (this.spare.pop() ?? Buffer.allocUnsafeSlow(this.chunkSize)).subarray(0, length)
  }

  stats(): {hits: number; misses: number; bytes: number; prefixes: number} {
    return {hits: this.hits, misses: this.misses, bytes: this.used, prefixes: this.prefixes}
  }

  clear(): void {
    this.map.clear()
  }
}

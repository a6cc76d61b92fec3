/**
 * XDR, the External Data Representation (RFC 4506): big-endian, every item padded to a multiple of four
 * bytes. The reader never trusts a length field: each variable-length item is checked against both its
 * declared maximum and the bytes actually left in the (already size-capped) record before it is sliced.
 */

/** RFC 4506 §3: the basic block size; every item occupies a multiple of it. */
export const XDR_UNIT = 4

/** Arguments that cannot be decoded: truncated, over-long or malformed. Becomes GARBAGE_ARGS. */
export class XdrError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'XdrError'
  }
}

function pad(n: number): number {
  return (XDR_UNIT - (n % XDR_UNIT)) % XDR_UNIT
}

export class XdrReader {
  private pos: number

  constructor(
    private readonly buf: Buffer,
    start = 0,
  ) {
    this.pos = start
  }

  get offset(): number {
    return this.pos
  }

  get remaining(): number {
    return this.buf.length - this.pos
  }

  private need(n: number, what: string): void {
    if (n > this.buf.length - this.pos) throw new XdrError(`truncated ${what}: need ${n} bytes, ${this.remaining} left`)
  }

  /** RFC 4506 §4.2 unsigned int. */
  uint32(what = 'unsigned int'): number {
    this.need(4, what)
    const v = this.buf.readUInt32BE(this.pos)
    this.pos += 4
    return v
  }

  /** RFC 4506 §4.1 int. */
  int32(what = 'int'): number {
    this.need(4, what)
    const v = this.buf.readInt32BE(this.pos)
    this.pos += 4
    return v
  }

  /** RFC 4506 §4.5 unsigned hyper, as a bigint (offsets and cookies may exceed 2^53). */
  uint64(what = 'unsigned hyper'): bigint {
    this.need(8, what)
    const v = this.buf.readBigUInt64BE(this.pos)
    this.pos += 8
    return v
  }

  /** RFC 4506 §4.4 bool: only 0 and 1 are valid encodings. */
  bool(what = 'bool'): boolean {
    const v = this.uint32(what)
    if (v > 1) throw new XdrError(`invalid ${what}: ${v} is not a boolean`)
    return v === 1
  }

  /** RFC 4506 §4.9 fixed-length opaque (returned as a view into the record). */
  fixedOpaque(n: number, what = 'fixed opaque'): Buffer {
    this.need(n + pad(n), what)
    const v = this.buf.subarray(this.pos, this.pos + n)
    this.pos += n + pad(n)
    return v
  }

  /** RFC 4506 §4.10 variable-length opaque<max> (a view into the record). */
  opaque(max: number, what = 'opaque'): Buffer {
    const n = this.uint32(`${what} length`)
    if (n > max) throw new XdrError(`${what} of ${n} bytes exceeds its maximum of ${max}`)
    return this.fixedOpaque(n, what)
  }

  /** RFC 4506 §4.11 string<max>, decoded as UTF-8 (NFS names are byte strings; UTF-8 is what clients send). */
  string(max: number, what = 'string'): string {
    return this.opaque(max, what).toString('utf8')
  }
}

/**
 * Builds an XDR body as a list of buffers. Small items go into a growing scratch chunk; large opaque
 * payloads (READ data) are appended by reference so a 1 MiB reply is never copied.
 */
export class XdrWriter {
  private readonly parts: Buffer[] = []
  private chunk: Buffer
  private used = 0
  private total = 0

  constructor(initial = 256) {
    this.chunk = Buffer.allocUnsafe(initial)
  }

  get length(): number {
    return this.total
  }

  private room(n: number): void {
    if (this.used + n <= this.chunk.length) return
    this.flushChunk()
    this.chunk = Buffer.allocUnsafe(Math.max(256, n, this.chunk.length * 2))
  }

  private flushChunk(): void {
    if (this.used > 0) this.parts.push(this.chunk.subarray(0, this.used))
    this.chunk = this.chunk.subarray(this.used)
    this.used = 0
  }

  uint32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`uint32 out of range: ${v}`)
    this.room(4)
    this.chunk.writeUInt32BE(v, this.used)
    this.used += 4
    this.total += 4
    return this
  }

  int32(v: number): this {
    this.room(4)
    this.chunk.writeInt32BE(v, this.used)
    this.used += 4
    this.total += 4
    return this
  }

  uint64(v: number | bigint): this {
    const b = BigInt(v)
    if (b < 0n || b > 0xffffffffffffffffn) throw new RangeError(`uint64 out of range: ${v}`)
    this.room(8)
    this.chunk.writeBigUInt64BE(b, this.used)
    this.used += 8
    this.total += 8
    return this
  }

  bool(v: boolean): this {
    return this.uint32(v ? 1 : 0)
  }

  fixedOpaque(data: Buffer): this {
    const p = pad(data.length)
    if (data.length >= 4096) {
      // Large payloads are referenced, not copied.
      this.flushChunk()
      this.parts.push(data)
      this.total += data.length
      if (p > 0) {
        this.room(p)
        this.chunk.fill(0, this.used, this.used + p)
        this.used += p
        this.total += p
      }
      return this
    }
    this.room(data.length + p)
    data.copy(this.chunk, this.used)
    this.chunk.fill(0, this.used + data.length, this.used + data.length + p)
    this.used += data.length + p
    this.total += data.length + p
    return this
  }

  opaque(data: Buffer): this {
    this.uint32(data.length)
    return this.fixedOpaque(data)
  }

  string(s: string): this {
    return this.opaque(Buffer.from(s, 'utf8'))
  }

  /** The encoded body as a list of buffers (in order). */
  buffers(): Buffer[] {
    this.flushChunk()
    return this.parts.slice()
  }

  /** The encoded body as one buffer (tests and small replies). */
  toBuffer(): Buffer {
    return Buffer.concat(this.buffers())
  }
}

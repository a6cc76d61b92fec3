/**
 * C struct layouts described once, with offsets computed by the C rules for x86_64/aarch64 Linux (each
 * field aligned to its own size, the struct padded to its largest alignment). Interface files (fuse/abi.ts,
 * loop/abi.ts …) declare the kernel's structs with it, and tests compare the computed sizes and offsets
 * with the values in the kernel headers, so a layout mistake fails a test instead of corrupting an ioctl.
 */

export type Scalar = 'u8' | 'u16' | 'u32' | 'i32' | 'u64' | 'i64'

export interface FieldSpec {
  name: string
  /** A scalar, 'bytes' (a char/u8 array; needs count), or a nested struct. */
  type: Scalar | 'bytes' | CStruct
  /** Array length; arrays of scalars other than bytes are reserved/padding space (zeroed, not decoded). */
  count?: number
}

const SCALAR_SIZE: Record<Scalar, number> = {u8: 1, u16: 2, u32: 4, i32: 4, u64: 8, i64: 8}

export interface Values {
  [field: string]: number | bigint | string | Buffer | Values | undefined
}

export class CStruct {
  readonly size: number
  readonly align: number
  readonly offsets: Readonly<Record<string, number>>
  private readonly fields: ReadonlyArray<FieldSpec & {offset: number}>

  constructor(
    readonly name: string,
    specs: FieldSpec[],
  ) {
    let at = 0
    let maxAlign = 1
    const fields: Array<FieldSpec & {offset: number}> = []
    const offsets: Record<string, number> = {}
    for (const f of specs) {
      const count = f.count ?? 1
      let align: number
      let size: number
      if (f.type instanceof CStruct) {
        align = f.type.align
        size = f.type.size * count
      } else if (f.type === 'bytes') {
        if (f.count === undefined) throw new Error(`${name}.${f.name}: bytes needs a count`)
        align = 1
        size = count
      } else {
        align = SCALAR_SIZE[f.type]
        size = SCALAR_SIZE[f.type] * count
      }
      at = Math.ceil(at / align) * align
      fields.push({...f, offset: at})
      offsets[f.name] = at
      at += size
      maxAlign = Math.max(maxAlign, align)
    }
    this.align = maxAlign
    this.size = Math.ceil(at / maxAlign) * maxAlign
    this.fields = fields
    this.offsets = offsets
  }

  /** Offset of a field, also nested ("attr.size"). */
  offsetOf(path: string): number {
    const [head, ...rest] = path.split('.')
    const f = this.fields.find((x) => x.name === head)
    if (!f) throw new Error(`${this.name} has no field ${head}`)
    if (rest.length === 0) return f.offset
    if (!(f.type instanceof CStruct)) throw new Error(`${this.name}.${head} is not a struct`)
    return f.offset + f.type.offsetOf(rest.join('.'))
  }

  /** Write `values` into `buf` at `at` (fields not given are zero). Returns buf. */
  encode(values: Values, buf: Buffer = Buffer.alloc(this.size), at = 0): Buffer {
    if (at + this.size > buf.length) throw new RangeError(`${this.name}: buffer too small`)
    buf.fill(0, at, at + this.size)
    for (const f of this.fields) {
      const v = values[f.name]
      if (v === undefined) continue
      const o = at + f.offset
      if (f.type instanceof CStruct) {
        f.type.encode(v as Values, buf, o)
      } else if (f.type === 'bytes') {
        const src = typeof v === 'string' ? Buffer.from(v) : (v as Buffer)
        src.copy(buf, o, 0, Math.min(src.length, f.count!))
      } else if ((f.count ?? 1) === 1) {
        writeScalar(buf, o, f.type, v as number | bigint)
      }
    }
    return buf
  }

  /** Read every scalar, bytes and nested field (u64 as number: exact below 2^53). */
  decode(buf: Buffer, at = 0): Record<string, any> {
    if (at + this.size > buf.length) throw new RangeError(`${this.name}: ${buf.length - at} bytes, need ${this.size}`)
    const out: Record<string, any> = {}
    for (const f of this.fields) {
      const o = at + f.offset
      if (f.type instanceof CStruct) out[f.name] = f.type.decode(buf, o)
      else if (f.type === 'bytes') out[f.name] = buf.subarray(o, o + f.count!)
      else if ((f.count ?? 1) === 1) out[f.name] = readScalar(buf, o, f.type)
    }
    return out
  }
}

export function writeScalar(buf: Buffer, o: number, type: Scalar, v: number | bigint): void {
  switch (type) {
    case 'u8':
      buf.writeUInt8(Number(v), o)
      break
    case 'u16':
      buf.writeUInt16LE(Number(v), o)
      break
    case 'u32':
      buf.writeUInt32LE(Number(v) >>> 0, o)
      break
    case 'i32':
      buf.writeInt32LE(Number(v), o)
      break
    case 'u64':
      buf.writeBigUInt64LE(BigInt(v), o)
      break
    case 'i64':
      buf.writeBigInt64LE(BigInt(v), o)
      break
  }
}

export function readScalar(buf: Buffer, o: number, type: Scalar): number {
  switch (type) {
    case 'u8':
      return buf.readUInt8(o)
    case 'u16':
      return buf.readUInt16LE(o)
    case 'u32':
      return buf.readUInt32LE(o)
    case 'i32':
      return buf.readInt32LE(o)
    case 'u64':
      return Number(buf.readBigUInt64LE(o))
    case 'i64':
      return Number(buf.readBigInt64LE(o))
  }
}

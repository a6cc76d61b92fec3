/**
 * GF(2^8) multiply-accumulate with WebAssembly SIMD: dst ^= c · src, 16 bytes a step through two 16-entry
 * tables (c·x for the low nibble, c·(x << 4) for the high one) and i8x16.swizzle — the split-table method
 * of ISA-L and of par2's SSSE3 code — about an order of magnitude faster than table lookups byte by byte in
 * JavaScript. The module is 200 bytes, written out below (no toolchain, no binary file in the repository).
 * Buffers must lie in the module's memory: `arena(bytes)` hands out views of it. Where WebAssembly SIMD is
 * missing, `simdKernel()` returns undefined and callers use gf256.ts's mulAdd.
 */
import {gfMul} from './gf256'

// The module, in the WebAssembly binary format (spec §5): one memory, one function
// mulAdd(dst, src, n, tbl): for i in 0, 16 … < n: dst[i..] ^= swizzle(tbl[0..16], src & 15) ^ swizzle(tbl[16..32], src >> 4).
// prettier-ignore
const WASM = Uint8Array.from([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x08, 0x01, 0x60, 0x04, 0x7f, 0x7f, 0x7f, 0x7f, 0x00, // type: (i32 i32 i32 i32) -> ()
  0x03, 0x02, 0x01, 0x00, // function 0 has type 0
  0x05, 0x03, 0x01, 0x00, 0x01, // memory: min 1 page
  0x07, 0x10, 0x02, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00, 0x06, 0x6d, 0x75, 0x6c, 0x41, 0x64, 0x64, 0x00, 0x00, // export "mem", "mulAdd"
  0x0a, 0x00, 0x01, 0x00, // code: sizes patched below
  0x02, 0x01, 0x7f, 0x04, 0x7b, // locals: i (i32, #4); lo, hi, mask, v (v128, #5–#8)
  0x20, 0x03, 0xfd, 0x00, 0x00, 0x00, 0x21, 0x05, // lo = load(tbl)
  0x20, 0x03, 0xfd, 0x00, 0x00, 0x10, 0x21, 0x06, // hi = load(tbl + 16)
  0x41, 0x0f, 0xfd, 0x0f, 0x21, 0x07, // mask = splat(15)
  0x02, 0x40, 0x03, 0x40, // block, loop
  0x20, 0x04, 0x20, 0x02, 0x4f, 0x0d, 0x01, // if i >= n: break
  0x20, 0x01, 0x20, 0x04, 0x6a, 0xfd, 0x00, 0x00, 0x00, 0x21, 0x08, // v = load(src + i)
  0x20, 0x00, 0x20, 0x04, 0x6a, // store address: dst + i
  0x20, 0x00, 0x20, 0x04, 0x6a, 0xfd, 0x00, 0x00, 0x00, // load(dst + i)
  0x20, 0x05, 0x20, 0x08, 0x20, 0x07, 0xfd, 0x4e, 0xfd, 0x0e, // swizzle(lo, v & mask)
  0x20, 0x06, 0x20, 0x08, 0x41, 0x04, 0xfd, 0x6d, 0xfd, 0x0e, // swizzle(hi, v >> 4)
  0xfd, 0x51, 0xfd, 0x51, // xor, xor
  0xfd, 0x0b, 0x00, 0x00, // store
  0x20, 0x04, 0x41, 0x10, 0x6a, 0x21, 0x04, // i += 16
  0x0c, 0x00, 0x0b, 0x0b, // continue; end loop, end block
  0x0b, // end function
])
{
  // Patch the code section's sizes (one-byte LEB128s: the body is under 128 bytes).
  const codeAt = WASM.indexOf(0x0a, 40)
  const bodyLen = WASM.length - (codeAt + 4)
  WASM[codeAt + 3] = bodyLen
  WASM[codeAt + 1] = bodyLen + 2
}

// Node has WebAssembly; this project's TypeScript libs (no DOM) do not declare it.
interface WasmMemory {
  buffer: ArrayBuffer
  grow(pages: number): number
}
declare const WebAssembly: {
  validate(b: Uint8Array): boolean
  Module: new (b: Uint8Array) => object
  Instance: new (m: object) => {exports: Record<string, unknown>}
}

const PAGE = 65536
/** The 256 coefficients' tables, 32 bytes each, at the start of the memory. */
const TABLES = 256 * 32

export interface SimdKernel {
  /** Views of `sizes[i]` bytes each in the module's memory, 16-byte aligned; earlier views are invalidated. */
  arena(sizes: number[]): Uint8Array[]
  /** dst ^= c · src over dst.length bytes; both must be views from `arena`. */
  mulAdd(dst: Uint8Array, src: Uint8Array, c: number): void
}

let cached: SimdKernel | null | undefined

export function simdKernel(): SimdKernel | undefined {
  if (cached !== undefined) return cached ?? undefined
  cached = null
  if (process.env.VDEV_RS_SIMD === '0') return undefined
  try {
    if (!WebAssembly.validate(WASM)) return undefined
    const inst = new WebAssembly.Instance(new WebAssembly.Module(WASM))
    const mem = inst.exports.mem as WasmMemory
    const fn = inst.exports.mulAdd as (dst: number, src: number, n: number, tbl: number) => void
    const fill = () => {
      const t = new Uint8Array(mem.buffer, 0, TABLES)
      for (let c = 0; c < 256; c++)
        for (let x = 0; x < 16; x++) {
          t[c * 32 + x] = gfMul(c, x)
          t[c * 32 + 16 + x] = gfMul(c, x << 4)
        }
    }
    fill()
    let buf = mem.buffer
    cached = {
      arena(sizes) {
        const total = TABLES + sizes.reduce((a, n) => a + Math.ceil(n / 16) * 16, 0)
        const have = mem.buffer.byteLength
        if (total > have) mem.grow(Math.ceil((total - have) / PAGE))
        buf = mem.buffer
        let at = TABLES
        return sizes.map((n) => {
          const v = new Uint8Array(buf, at, n)
          at += Math.ceil(n / 16) * 16
          return v
        })
      },
      mulAdd(dst, src, c) {
        const n = dst.length
        if (c === 0 || n === 0) return
        if (dst.buffer !== buf || src.buffer !== buf) throw new RangeError('mulAdd: buffers outside the SIMD arena')
        const n16 = n & ~15
        if (n16) fn(dst.byteOffset, src.byteOffset, n16, c * 32)
        for (let i = n16; i < n; i++) dst[i] ^= gfMul(c, src[i])
      },
    }
    // A self-check against the scalar product before trusting it.
    const [a, b] = cached.arena([64, 64])
    for (let i = 0; i < 64; i++) {
      a[i] = (i * 37) & 255
      b[i] = (i * 91 + 7) & 255
    }
    const want = Uint8Array.from(a, (x, i) => x ^ gfMul(0x8e, b[i]))
    cached.mulAdd(a, b, 0x8e)
    if (!want.every((x, i) => x === a[i])) cached = null
    a.fill(0)
    b.fill(0)
  } catch {
    cached = null
  }
  return cached ?? undefined
}

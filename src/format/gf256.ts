/**
 * Arithmetic in GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D, generator 2 — the field of
 * most Reed–Solomon codes, par2's GF(2^16) aside), and the Cauchy matrix of the recovery data (FORMAT.md
 * §13): element (r, j) = 1 / (r XOR (m + j)). Every square submatrix of a Cauchy matrix is invertible, so
 * any e ≤ m lost slices of a stripe are rebuilt from any e good parity slices.
 */

export const GF_POLY = 0x11d
const EXP = new Uint8Array(512)
const LOG = new Uint8Array(256)
{
  let x = 1
  for (let i = 0; i < 255; i++) {
    EXP[i] = x
    LOG[x] = i
    x <<= 1
    if (x & 0x100) x ^= GF_POLY
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255]
}

/** The full multiplication table: MUL[a * 256 + b] = a·b. 64 KiB, one row per coefficient. */
const MUL = new Uint8Array(65536)
for (let a = 1; a < 256; a++) for (let b = 1; b < 256; b++) MUL[a * 256 + b] = EXP[LOG[a] + LOG[b]]

export function gfMul(a: number, b: number): number {
  return MUL[(a << 8) | b]
}

export function gfInv(a: number): number {
  if (a === 0) throw new RangeError('GF(2^8): 0 has no inverse')
  return EXP[255 - LOG[a]]
}

/** The recovery code's coefficient of data position j (0 ≤ j < k) in parity row r (0 ≤ r < m); k + m ≤ 256. */
export function cauchy(r: number, j: number, m: number): number {
  return gfInv(r ^ (m + j))
}

/**
 * dst ^= c · src, byte by byte in GF(2^8) (dst.length bytes). Four bytes a step through 32-bit words when
 * both arrays are 4-byte aligned: about twice the byte loop's rate in V8.
 */
export function mulAdd(dst: Uint8Array, src: Uint8Array, c: number): void {
  const n = dst.length
  if (c === 0 || n === 0) return
  const aligned = (dst.byteOffset & 3) === 0 && (src.byteOffset & 3) === 0
  const n4 = aligned ? n >>> 2 : 0
  if (n4) {
    const d = new Uint32Array(dst.buffer, dst.byteOffset, n4)
    const s = new Uint32Array(src.buffer, src.byteOffset, n4)
    if (c === 1) for (let i = 0; i < n4; i++) d[i] ^= s[i]
    else {
      const t = MUL.subarray(c << 8, (c << 8) + 256)
      for (let i = 0; i < n4; i++) {
        const w = s[i]
        d[i] ^= t[w & 255] | (t[(w >>> 8) & 255] << 8) | (t[(w >>> 16) & 255] << 16) | (t[w >>> 24] << 24)
      }
    }
  }
  const t = MUL.subarray(c << 8, (c << 8) + 256)
  for (let i = n4 << 2; i < n; i++) dst[i] ^= t[src[i]]
}

/** The inverse of a square matrix over GF(2^8) (rows of numbers), by Gauss–Jordan; throws if singular. */
export function gfInvert(a: number[][]): number[][] {
  const n = a.length
  const m = a.map((row, i) => [...row, ...Array.from({length: n}, (_, j) => (i === j ? 1 : 0))])
  for (let col = 0; col < n; col++) {
    let p = col
    while (p < n && m[p][col] === 0) p++
    if (p === n) throw new RangeError('GF(2^8): singular matrix')
    ;[m[col], m[p]] = [m[p], m[col]]
    const inv = gfInv(m[col][col])
    for (let j = 0; j < 2 * n; j++) m[col][j] = gfMul(m[col][j], inv)
    for (let i = 0; i < n; i++) {
      if (i === col || m[i][col] === 0) continue
      const f = m[i][col]
      for (let j = 0; j < 2 * n; j++) m[i][j] ^= gfMul(f, m[col][j])
    }
  }
  return m.map((row) => row.slice(n))
}

/**
 * The fuzzer's deterministic PRNG: xoshiro128** seeded from SHA-256 of a text, as test/helpers.ts's
 * `prng` seeds from SHA-256 of its seed. Every case derives its own generator from (target, seed,
 * iteration), so a case replays alone, whatever ran before it.
 */
import * as crypto from 'node:crypto'

export class Rng {
  private a: number
  private b: number
  private c: number
  private d: number

  constructor(seedText: string) {
    const h = crypto.createHash('sha256').update(seedText).digest()
    this.a = h.readUInt32LE(0) | 1 // xoshiro's state must not be all zero
    this.b = h.readUInt32LE(4)
    this.c = h.readUInt32LE(8)
    this.d = h.readUInt32LE(12)
  }

  /** The generator of one case. */
  static forCase(target: string, seed: number, iteration: number): Rng {
    return new Rng(`vdev-fuzz:${target}:${seed}:${iteration}`)
  }

  /** 32 random bits (xoshiro128**, Blackman and Vigna). */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0
    const t = this.b << 9
    this.c ^= this.a
    this.d ^= this.b
    this.b ^= this.c
    this.a ^= this.d
    this.c ^= t
    this.d = rotl(this.d, 11)
    return result
  }

  /** A float in [0, 1) with 53 random bits. */
  float(): number {
    return ((this.u32() >>> 5) * 67108864 + (this.u32() >>> 6)) / 9007199254740992
  }

  /** An integer in [0, n), n up to 2^53. */
  int(n: number): number {
    return Math.floor(this.float() * n)
  }

  /** An integer in [lo, hi], inclusive. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1)
  }

  chance(p: number): boolean {
    return this.float() < p
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]
  }

  /** Pick by weight: [[weight, value], …]. */
  weighted<T>(items: ReadonlyArray<readonly [number, T]>): T {
    let total = 0
    for (const [w] of items) total += w
    let x = this.float() * total
    for (const [w, v] of items) {
      if (x < w) return v
      x -= w
    }
    return items[items.length - 1][1]
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n)
    let i = 0
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i)
    for (; i < n; i++) b[i] = this.u32() & 0xff
    return b
  }

  /** A random 64-bit value. */
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32())
  }

  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1)
      ;[items[i], items[j]] = [items[j], items[i]]
    }
    return items
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0
}

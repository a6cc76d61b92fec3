/**
 * What a BlockServer counts, laid out in a Float64Array so that serving threads can count into shared
 * memory (a SharedArrayBuffer slot each) that the main thread sums while they sit in a blocking call and
 * cannot take messages. One layout for every backend and protocol server.
 */
export const COUNTER = {
  reads: 0,
  bytes: 1,
  errors: 2,
  /** Reads that touched a bad area (answered with EIO, or zeros under the `zero` policy). */
  badReads: 3,
  /** Requests being served right now. */
  inFlight: 4,
  /** Requests a serving thread took while polling, before it would have slept. */
  polled: 5,
  cacheHits: 6,
  cacheMisses: 7,
  /** A writable server's (an overlay's): writes, their bytes, write-zeroes, discards, flushes, failures. */
  writes: 8,
  writeBytes: 9,
  zeroes: 10,
  trims: 11,
  flushes: 12,
  writeErrors: 13,
} as const

/** Float64 values per slot. */
export const SLOT_SIZE = 14

export interface ServedCounts {
  reads: number
  bytes: number
  errors: number
  badReads: number
  inFlight: number
  polled: number
  cacheHits: number
  cacheMisses: number
  writes: number
  writeBytes: number
  zeroes: number
  trims: number
  flushes: number
  writeErrors: number
}

export function zeroCounts(): ServedCounts {
  return {reads: 0, bytes: 0, errors: 0, badReads: 0, inFlight: 0, polled: 0, cacheHits: 0, cacheMisses: 0, writes: 0, writeBytes: 0, zeroes: 0, trims: 0, flushes: 0, writeErrors: 0}
}

const NAMES = Object.keys(COUNTER) as Array<keyof typeof COUNTER>

/** Add slot `a` (a SLOT_SIZE view) into `into`. */
export function addSlot(into: ServedCounts, a: Float64Array): ServedCounts {
  for (const k of NAMES) into[k] += a[COUNTER[k]]
  return into
}

/** `count` slots in one (shared) buffer: one per serving thread. */
export class CounterSlots {
  readonly buffer: SharedArrayBuffer
  private readonly all: Float64Array

  constructor(
    readonly count: number,
    buffer?: SharedArrayBuffer,
  ) {
    this.buffer = buffer ?? new SharedArrayBuffer(8 * SLOT_SIZE * count)
    this.all = new Float64Array(this.buffer)
  }

  /** The view of slot `i` (a thread builds it again from the buffer and its index). */
  slot(i: number): Float64Array {
    return slotOf(this.buffer, i)
  }

  sum(into: ServedCounts = zeroCounts()): ServedCounts {
    for (let i = 0; i < this.count; i++) addSlot(into, this.all.subarray(i * SLOT_SIZE, (i + 1) * SLOT_SIZE))
    return into
  }
}

export function slotOf(buffer: SharedArrayBuffer, i: number): Float64Array {
  return new Float64Array(buffer, 8 * SLOT_SIZE * i, SLOT_SIZE)
}

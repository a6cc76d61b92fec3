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
} as const

/** Float64 values per slot. */
export const SLOT_SIZE = 8

export interface ServedCounts {
  reads: number
  bytes: number
  errors: number
  badReads: number
  inFlight: number
  polled: number
  cacheHits: number
  cacheMisses: number
}

export function zeroCounts(): ServedCounts {
  return {reads: 0, bytes: 0, errors: 0, badReads: 0, inFlight: 0, polled: 0, cacheHits: 0, cacheMisses: 0}
}

/** Add slot `a` (a SLOT_SIZE view) into `into`. */
export function addSlot(into: ServedCounts, a: Float64Array): ServedCounts {
  into.reads += a[COUNTER.reads]
  into.bytes += a[COUNTER.bytes]
  into.errors += a[COUNTER.errors]
  into.badReads += a[COUNTER.badReads]
  into.inFlight += a[COUNTER.inFlight]
  into.polled += a[COUNTER.polled]
  into.cacheHits += a[COUNTER.cacheHits]
  into.cacheMisses += a[COUNTER.cacheMisses]
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

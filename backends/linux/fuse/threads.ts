/**
 * Shared layout between the main thread and the serving threads (serve-worker.ts): their configuration,
 * and a Float64Array over a SharedArrayBuffer holding a "closing" flag and per-thread counters, readable
 * while the threads sit in read(2) and cannot take messages.
 */
export interface ServeThreadConfig {
  fd: number
  index: number
  /** Absolute path of the VDIMG image; each thread opens its own instance. */
  image: string
  cacheBytes: number
  badPolicy: string
  fileName: string
  mtime: number
  maxPages: number
  maxBackground: number
  /** How long a thread polls for the next request before sleeping in read(2) (0: never; see requests.ts). */
  pollMicroseconds: number
  shared: SharedArrayBuffer
}

/**
 * Per thread: reads, bytes, errors, badReads, busy (1 while serving a request), polled (requests taken
 * while polling, before the thread would have slept).
 */
export const COUNTERS = 6
export const SLOT = {closing: 0, first: 1} as const

export function sharedState(threads: number): SharedArrayBuffer {
  return new SharedArrayBuffer(8 * (SLOT.first + threads * COUNTERS))
}

export function sumCounters(shared: SharedArrayBuffer, threads: number): {reads: number; bytes: number; errors: number; badReads: number; inFlight: number; polled: number} {
  const a = new Float64Array(shared)
  const out = {reads: 0, bytes: 0, errors: 0, badReads: 0, inFlight: 0, polled: 0}
  for (let i = 0; i < threads; i++) {
    const b = SLOT.first + i * COUNTERS
    out.reads += a[b]
    out.bytes += a[b + 1]
    out.errors += a[b + 2]
    out.badReads += a[b + 3]
    out.inFlight += a[b + 4]
    out.polled += a[b + 5]
  }
  return out
}

/**
 * How a backend or protocol server serves, declared as nbdkit plugins declare their thread model, and the
 * settings every serving thread shares. The attach daemon reads a backend's model (src/lifecycle/daemon.ts):
 * a source served by serving threads needs no decompression workers on the main thread.
 */

export type ThreadModel =
  /**
   * Requests are served on serving threads (src/threads), each with its own instance of the source and
   * answering one request at a time; `defaultThreads` unless VDEV_<NAME>_THREADS or VDEV_THREADS says
   * otherwise (0: the main thread serves).
   */
  | {kind: 'serving-threads'; defaultThreads: number; maxThreads?: number; pollMicroseconds: number}
  /** Requests are served on the main thread's event loop (asynchronous reads, decompression workers). */
  | {kind: 'event-loop'}

/** Decoded-chunk cache of a whole device, shared out among its serving threads (each has its own part). */
export const DEVICE_CACHE_BYTES = 4 << 20

/** Most serving threads one device or connection may have. */
export const MAX_THREADS = 64

/**
 * Heap limits of a serving thread. Its objects are few and short-lived (per-request views, cache entries
 * that live outside the heap), but under a fast request stream V8 otherwise grows each isolate's young
 * generation to tens of MB and lets old-generation garbage pile up before collecting (docs/fuse-loop.md,
 * "Memory", has the measurements).
 */
export const THREAD_LIMITS = {maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 128}

function envInteger(name: string, max: number): number | undefined {
  const v = process.env[name]
  if (v === undefined || !/^\d+$/.test(v)) return undefined
  return Math.min(Number(v), max)
}

/** Serving threads for a backend: VDEV_<NAME>_THREADS, else VDEV_THREADS, else the model's default; 0 for event-loop models. */
export function threadCount(name: string, model: ThreadModel): number {
  if (model.kind !== 'serving-threads') return 0
  const key = `VDEV_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_THREADS`
  const max = model.maxThreads ?? MAX_THREADS
  return envInteger(key, max) ?? envInteger('VDEV_THREADS', max) ?? model.defaultThreads
}

/** Microseconds a serving thread polls for its next request: VDEV_<NAME>_POLL_US, else the model's default. */
export function pollMicroseconds(name: string, model: ThreadModel): number {
  if (model.kind !== 'serving-threads') return 0
  const key = `VDEV_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_POLL_US`
  return envInteger(key, 10_000) ?? model.pollMicroseconds
}

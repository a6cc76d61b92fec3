/**
 * Adaptive polling for a serving thread's next request, as QEMU's: before sleeping in a blocking read, a
 * thread looks for the next request for a short while with non-blocking reads. A client with one request
 * at a time (fio at queue depth 1, a file system walking its metadata) sends the next request some tens of
 * microseconds after our reply, and a thread that never slept answers it without paying a wake-up (in a
 * VM, an idle vCPU's). Polling stops after a few polls in a row find nothing, so an idle device costs no
 * CPU, and starts again when a request wakes the thread soon after it went to sleep.
 *
 * Several threads sleeping in a blocking read of one descriptor take turns: the kernel wakes the one that
 * has slept longest (an exclusive wait queue is FIFO), so with two threads at queue depth 1 each request
 * woke the thread that slept through the one before, never "soon after it went to sleep", and once polling
 * had stopped on both (four misses in a row: a few slow reads of a cold image are enough) it never started
 * again: every request paid a wake-up. So the threads of a pool also share when any of them last went to
 * sleep (`SharedSleep`), and a thread woken soon after *that* starts polling again: it then catches the
 * next request itself while the other sleeps on (docs/performance.md, "Polling after a cold start").
 */
import {performance} from 'node:perf_hooks'

/**
 * A word in shared memory saying when a thread of the pool last went to sleep in a blocking read: the
 * low 32 bits of CLOCK_MONOTONIC in microseconds (one clock for every thread, unlike performance.now()).
 */
export interface SharedSleep {
  words: Int32Array
  index: number
}

/** CLOCK_MONOTONIC in µs, low 32 bits (differences taken modulo 2^32: fine for spans under 35 minutes). */
function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n) | 0
}

/** Polling stops after this many polls in a row found no request... */
export const MAX_POLL_MISSES = 4
/** ...and starts again when a request wakes the thread within this many poll periods of its going to sleep. */
export const REARM_POLLS = 4

export class AdaptivePoll {
  private polling: boolean
  private misses = 0
  private slept = 0
  private broken = false

  constructor(
    /** How long one poll looks for a request (0: never poll). */
    readonly periodUs: number,
    /** Shared with the pool's other threads that sleep on the same descriptors (undefined: this thread alone). */
    private readonly shared?: SharedSleep,
  ) {
    this.polling = periodUs > 0
  }

  get active(): boolean {
    return this.polling
  }

  /** Stop polling for good (the non-blocking path broke). */
  disable(): void {
    this.polling = false
    this.broken = true
  }

  /**
   * Call `attempt` until it returns a positive count or the period ends. `attempt` returns > 0 (got that
   * many bytes), 0 (nothing yet: try again) or < 0 (give up this poll: let the blocking read report it).
   */
  poll(attempt: () => number): number {
    if (!this.polling) return 0
    const deadline = performance.now() + this.periodUs / 1000
    do {
      const n = attempt()
      if (n > 0) {
        this.misses = 0
        return n
      }
      if (n < 0) return 0
    } while (performance.now() < deadline)
    if (++this.misses >= MAX_POLL_MISSES) this.polling = false
    return 0
  }

  /** The thread is about to sleep in a blocking read. */
  sleeping(): void {
    if (this.periodUs <= 0) return
    this.slept = performance.now()
    if (this.shared) Atomics.store(this.shared.words, this.shared.index, monotonicUs())
  }

  /** The blocking read returned: a request soon after the thread went to sleep means the client is busy again. */
  woke(): void {
    if (this.polling || this.broken || this.periodUs <= 0) return
    const window = REARM_POLLS * this.periodUs
    const soon =
      (performance.now() - this.slept) * 1000 < window ||
      (this.shared !== undefined && ((monotonicUs() - Atomics.load(this.shared.words, this.shared.index)) | 0) < window)
    if (soon) {
      this.polling = true
      this.misses = 0
    }
  }
}

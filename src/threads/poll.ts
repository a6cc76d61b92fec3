/**
 * Adaptive polling for a serving thread's next request, as QEMU's: before sleeping in a blocking read, a
 * thread looks for the next request for a short while with non-blocking reads. A client with one request
 * at a time (fio at queue depth 1, a file system walking its metadata) sends the next request some tens of
 * microseconds after our reply, and a thread that never slept answers it without paying a wake-up (in a
 * VM, an idle vCPU's). Polling stops after a few polls in a row find nothing, so an idle device costs no
 * CPU, and starts again when a request wakes the thread soon after it went to sleep.
 */
import {performance} from 'node:perf_hooks'

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
    if (this.periodUs > 0) this.slept = performance.now()
  }

  /** The blocking read returned: a request soon after the thread went to sleep means the client is busy again. */
  woke(): void {
    if (!this.polling && !this.broken && this.periodUs > 0 && performance.now() - this.slept < (REARM_POLLS * this.periodUs) / 1000) {
      this.polling = true
      this.misses = 0
    }
  }
}

/**
 * Decode-ahead for serving-thread bodies that serve from their thread's event loop (iSCSI and NFS: a
 * net.Socket per connection). The other bodies block in read(2) or io_uring_enter and call
 * ctx.workAhead() right before they would; an event-loop body has no such point, so this gives it one
 * (docs/performance.md, "Decode-ahead"):
 *
 * - **its own idle turns**: every read started on the thread starts a chain of `setImmediate` turns, one
 *   unit of work ahead (`workAhead`) per turn, until there is none left. libuv polls without waiting while
 *   an immediate is pending, so a request that arrives meanwhile is read and served after at most one unit
 *   (one chunk's decoding), and the chain goes on once the loop is idle again.
 * - **the other threads'**: one iSCSI session or NFS connection is served by one thread, so the pool's other
 *   threads sit idle in their event loops. A thread whose chain finds nothing to do marks its word in the
 *   pool's shared memory asleep and waits on it with `Atomics.waitAsync` (its event loop still serves); a
 *   read of WAKE_BYTES or more, or a smaller one that continues a sequential run (a client reading ahead in
 *   32 or 64 KiB READs), flips every sleeping thread's word and notifies it, and that thread starts a
 *   chain: it helps decode the large read under way on the other thread and the stream's next chunks
 *   (src/format/read-ahead.ts), as the NBD threads' nudge and ublk's MSG_RING do. Threads already awake
 *   are not notified: one wake-up per sleep. (A pending `waitAsync` alone does not keep a thread's event
 *   loop alive; a serving thread's is kept by its message port, which serving-worker.ts listens on.)
 */
import {HELP_BYTES, HelpWanted} from './help-wanted'

/** Reads of this size or more wake the pool's other threads (help-wanted.ts, the rule NBD's nudge follows too). */
export const WAKE_BYTES = HELP_BYTES

const AWAKE = 0
const ASLEEP = 1

type WaitAsync = (a: Int32Array, index: number, value: number) => {async: false; value: string} | {async: true; value: Promise<string>}

export class IdleAhead {
  /** A chain of idle turns is scheduled or running. */
  private running = false
  /** A waitAsync on this thread's word is pending (at most one at a time). */
  private waiting = false
  private readonly waitAsync = (Atomics as unknown as {waitAsync: WaitAsync}).waitAsync
  /** Whether this thread's reads want help (a large one, a sequential run of small ones). */
  private readonly help = new HelpWanted()

  /**
   * @param workAhead one unit of work ahead of the readers (ServingThreadContext.workAhead); false when none
   * @param words the pool's shared words: from `first`, one per thread (`count`), AWAKE or ASLEEP
   * @param me this thread's index
   */
  constructor(
    private readonly workAhead: () => boolean,
    private readonly words: Int32Array,
    private readonly first: number,
    private readonly count: number,
    private readonly me: number,
  ) {
    this.sleep()
  }

  /**
   * A read of `length` bytes at `offset` starts on this thread: work ahead once the loop is idle, and wake
   * the sleeping others for a large one or a sequential run of small ones.
   */
  reading(offset: number, length: number): void {
    this.start()
    if (!this.help.read(offset, length)) return
    for (let j = 0; j < this.count; j++) {
      const w = this.first + j
      // Only a thread that sleeps is woken, and only once: the one that flips its word notifies it.
      if (j !== this.me && Atomics.load(this.words, w) === ASLEEP && Atomics.compareExchange(this.words, w, ASLEEP, AWAKE) === ASLEEP) Atomics.notify(this.words, w)
    }
  }

  private start(): void {
    if (this.running) return
    this.running = true
    Atomics.store(this.words, this.first + this.me, AWAKE)
    setImmediate(this.step)
  }

  private readonly step = (): void => {
    if (this.workAhead()) setImmediate(this.step)
    else {
      this.running = false
      this.sleep()
    }
  }

  /** Nothing to do: say so, and wait (asynchronously: the event loop still serves) to be woken by a large read elsewhere. */
  private sleep(): void {
    Atomics.store(this.words, this.first + this.me, ASLEEP)
    if (this.waiting) return
    const r = this.waitAsync(this.words, this.first + this.me, ASLEEP)
    if (!r.async) {
      // Woken between the store and the wait.
      this.start()
      return
    }
    this.waiting = true
    void r.value.then(() => {
      this.waiting = false
      this.start()
    })
  }
}

/**
 * Adaptive polling (src/threads/poll.ts): polling stops after MAX_POLL_MISSES empty polls in a row and
 * starts again when a request wakes the thread soon after it went to sleep — or soon after *another* thread
 * of the pool went to sleep (the shared word): with two threads in a blocking read of one descriptor the
 * kernel wakes the one that slept longest, so a thread's own sleep is never "soon" and polling, once
 * stopped, never started again (docs/performance.md, "Polling after a cold start"). The shared word is
 * checked between real threads, whose performance.now() clocks differ.
 */
import * as assert from 'node:assert/strict'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {AdaptivePoll, MAX_POLL_MISSES, REARM_POLLS} from '../../src/threads/poll'

const MODULE = path.resolve(__dirname, '../../src/threads/poll.js')
/** Long periods, so that a preempted test thread does not turn "soon" into "late". */
const PERIOD_US = 2000
/** Between threads a message's round trip comes in between: longer still. */
const THREAD_PERIOD_US = 25_000

/** Busy-wait `us` microseconds (the spans here are a few hundred µs: a timer is too coarse). */
function spin(us: number): void {
  const end = process.hrtime.bigint() + BigInt(Math.round(us * 1000))
  while (process.hrtime.bigint() < end) {
    /* wait */
  }
}

/** Poll with nothing to find until polling stops. */
function exhaust(p: AdaptivePoll): void {
  for (let i = 0; i < MAX_POLL_MISSES; i++) assert.equal(p.poll(() => 0), 0)
  assert.equal(p.active, false, 'polling stops after the misses')
}

describe('threads: AdaptivePoll (polling for the next request, and starting again)', () => {
  const window = REARM_POLLS * PERIOD_US

  it('alone: starts again only when woken soon after its own sleep', () => {
    const p = new AdaptivePoll(PERIOD_US)
    assert.equal(p.poll(() => 7), 7)
    exhaust(p)
    p.sleeping()
    spin(window * 5)
    p.woke()
    assert.equal(p.active, false, 'woken long after it slept: stays off')
    p.sleeping()
    p.woke()
    assert.equal(p.active, true, 'woken at once: polls again')
  })

  it('in a pool: a thread woken soon after another thread went to sleep polls again; long after, it does not', () => {
    const words = new Int32Array(new SharedArrayBuffer(8))
    const a = new AdaptivePoll(PERIOD_US, {words, index: 1})
    const b = new AdaptivePoll(PERIOD_US, {words, index: 1})
    const alone = new AdaptivePoll(PERIOD_US)
    exhaust(a)
    exhaust(alone)
    // a sleeps through b's request (as the kernel's FIFO hands requests out), then b goes to sleep and the
    // next request wakes a.
    a.sleeping()
    alone.sleeping()
    spin(window * 5)
    b.sleeping()
    a.woke()
    alone.woke()
    assert.equal(a.active, true, 'a polls again: b went to sleep just now')
    assert.equal(alone.active, false, 'without the shared word it would not')
    // Nobody slept lately: a request after a quiet spell does not start polling.
    exhaust(a)
    a.sleeping()
    b.sleeping()
    spin(window * 5)
    a.woke()
    assert.equal(a.active, false, 'the pool was idle: stays off')
  })

  it('the shared word holds between real threads (one monotonic clock, not each thread’s performance.now())', async function () {
    this.timeout(10_000)
    const words = new Int32Array(new SharedArrayBuffer(8))
    const worker = new Worker(
      `const {parentPort, workerData} = require('node:worker_threads')
       const {AdaptivePoll} = require(workerData.module)
       const p = new AdaptivePoll(${THREAD_PERIOD_US}, {words: new Int32Array(workerData.words), index: 0})
       parentPort.on('message', () => { p.sleeping(); parentPort.postMessage('slept') })
       parentPort.postMessage('ready')`,
      {eval: true, workerData: {module: MODULE, words: words.buffer}},
    )
    try {
      const next = () => new Promise<unknown>((resolve) => worker.once('message', resolve))
      assert.equal(await next(), 'ready')
      const p = new AdaptivePoll(THREAD_PERIOD_US, {words, index: 0})
      const window = REARM_POLLS * THREAD_PERIOD_US
      exhaust(p)
      p.sleeping()
      spin(window * 3)
      const slept = next()
      worker.postMessage('sleep')
      await slept
      p.woke()
      assert.equal(p.active, true, 'the other thread slept just now')
      exhaust(p)
      spin(window * 3)
      p.woke()
      assert.equal(p.active, false, 'and long ago now')
    } finally {
      await worker.terminate()
    }
  })
})

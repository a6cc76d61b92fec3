/**
 * The idle work of event-loop serving threads (src/threads/idle-ahead.ts), between real threads sharing the
 * pool's words: a thread with nothing to do sleeps (Atomics.waitAsync, its event loop free) and another
 * thread's reads wake it only when they are worth it — a read of 128 KiB or more, or the third small read
 * in a row that starts where the last one ended; random small reads never do, and a thread already awake
 * is not woken again.
 */
import * as assert from 'node:assert/strict'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {IdleAhead, WAKE_BYTES} from '../../src/threads/idle-ahead'

const MODULE = path.resolve(__dirname, '../../src/threads/idle-ahead.js')

/** A thread whose IdleAhead (thread 1 of 2) has nothing to work on: every wake-up shows as one call of workAhead, told to the parent. */
const SLEEPER = `
const {parentPort, workerData} = require('node:worker_threads')
const {IdleAhead} = require(workerData.module)
new IdleAhead(() => (parentPort.postMessage('woken'), false), new Int32Array(workerData.words), 0, 2, 1)
// As a serving thread does (serving-worker.ts): a pending waitAsync alone does not keep a thread alive.
parentPort.on('message', () => undefined)
parentPort.postMessage('ready')
`

describe('threads: IdleAhead (idle turns and wake-ups of event-loop serving threads)', function () {
  this.timeout(20_000)
  let worker: Worker | undefined
  after(() => worker?.terminate())

  it('wakes a sleeping thread for a large read and for a run of small sequential ones; never for random small reads', async () => {
    const words = new SharedArrayBuffer(4 * 2)
    let wakes = 0
    worker = new Worker(SLEEPER, {eval: true, workerData: {module: MODULE, words}})
    const ready = new Promise<void>((resolve) =>
      worker!.on('message', (m) => {
        if (m === 'ready') resolve()
        else if (m === 'woken') wakes++
      }),
    )
    await ready
    // It starts asleep: only a wake-up calls its workAhead.
    let mine = 0
    const me = new IdleAhead(() => (mine++, false), new Int32Array(words), 0, 2, 0)
    const settle = () => new Promise((r) => setTimeout(r, 100))
    const sleeping = async () => {
      for (let i = 0; i < 50 && Atomics.load(new Int32Array(words), 1) !== 1; i++) await settle()
      assert.equal(Atomics.load(new Int32Array(words), 1), 1, 'the other thread sleeps')
    }
    await sleeping()
    assert.equal(wakes, 0, 'asleep from the start, nothing woke it')

    // Small reads at random places: the reading thread works in its own idle turns, the other sleeps on.
    for (const off of [7 << 20, 1 << 20, 13 << 20, 3 << 20, 9 << 20]) me.reading(off, 4096)
    await settle()
    assert.equal(wakes, 0, 'random 4 KiB reads woke the other thread')
    assert.ok(mine > 0, 'the reading thread worked ahead in its own idle turns')

    // Two small reads in a row do not; the third does, once.
    me.reading(64 << 20, 32768)
    me.reading((64 << 20) + 32768, 32768)
    await settle()
    assert.equal(wakes, 0, 'two sequential reads woke it')
    me.reading((64 << 20) + 65536, 32768)
    await settle()
    assert.equal(wakes, 1, 'the third sequential read wakes it')
    await sleeping()

    // A large read wakes it, wherever it is.
    me.reading(500 << 20, WAKE_BYTES)
    await settle()
    assert.equal(wakes, 2, 'a read of WAKE_BYTES wakes it')
    await sleeping()

    // Reads that come while it is awake do not notify it again: one wake-up per sleep.
    const w = new Int32Array(words)
    Atomics.store(w, 1, 0) // as if its chain were running
    me.reading(900 << 20, 1 << 20)
    me.reading(901 << 20, 1 << 20)
    await settle()
    assert.equal(wakes, 2, 'an awake thread was notified')
  })
})

/**
 * Read-ahead windows' memory (src/remote/window-pool.ts): a buffer goes back to the pool only when the
 * read-ahead dropped it, its GET settled, and no serving thread holds a view of it — a real worker thread
 * holds one here and lets go through the shared counts.
 */
import * as assert from 'node:assert/strict'
import {Worker} from 'node:worker_threads'
import {WindowPool, SLOTS} from '../../src/remote/window-pool'

const MiB = 1 << 20

describe('remote: read-ahead window memory (WindowPool)', () => {
  it('a buffer dropped and settled, held by nobody, is handed out again (rounded up to 1, 2, 4 or 8 MiB)', () => {
    const pool = new WindowPool()
    const a = pool.take(3 * MiB)
    assert.equal(a.buf.length, 3 * MiB)
    assert.equal(a.buf.buffer.byteLength, 4 * MiB)
    assert.ok(a.buf.buffer instanceof SharedArrayBuffer)
    a.buf.fill(7)
    pool.drop(a)
    assert.equal(pool.freeNow, 0, 'dropped but its GET still lands: not free')
    pool.settled(a)
    assert.equal(pool.freeNow, 4 * MiB)
    // Another size class does not take it; the same class does.
    const b = pool.take(MiB)
    assert.notEqual(b.buf.buffer, a.buf.buffer)
    const c = pool.take(4 * MiB - 5)
    assert.equal(c.buf.buffer, a.buf.buffer)
    assert.deepEqual([pool.allocated, pool.reused], [2, 1])
    // Settled first, then dropped: the same.
    pool.settled(c)
    pool.drop(c)
    pool.drop(c)
    assert.equal(pool.freeNow, 4 * MiB)
  })

  it('a buffer a thread holds a view of stays out of the pool until the thread lets go', async () => {
    const pool = new WindowPool()
    const w = pool.take(2 * MiB)
    w.buf.fill(0x5a)
    const slot = pool.hold(w.buf.subarray(MiB, MiB + 4096))
    assert.ok(slot >= 0 && slot < SLOTS)
    assert.equal(pool.hold(Buffer.alloc(16)), -1, 'not a window: nothing to count')
    const worker = new Worker(
      `const {parentPort, workerData} = require('node:worker_threads')
       const view = Buffer.from(workerData.shared, workerData.offset, workerData.length)
       parentPort.on('message', (m) => {
         if (m === 'read') parentPort.postMessage(view.every((x) => x === 0x5a))
         if (m === 'let go') { Atomics.sub(new Int32Array(workerData.holders), workerData.slot, 1); parentPort.postMessage('done') }
       })`,
      {eval: true, workerData: {shared: w.buf.buffer, offset: MiB, length: 4096, slot, holders: pool.holders.buffer}},
    )
    const ask = (m: string) => new Promise((r) => (worker.once('message', r), worker.postMessage(m)))
    try {
      pool.drop(w)
      pool.settled(w)
      assert.equal(pool.freeNow, 0, 'held by the thread')
      // Whatever is taken meanwhile is other memory: the thread's view keeps its bytes.
      const other = pool.take(2 * MiB)
      other.buf.fill(1)
      assert.notEqual(other.buf.buffer, w.buf.buffer)
      assert.equal(await ask('read'), true)
      assert.equal(await ask('let go'), 'done')
      assert.equal(pool.freeNow, 2 * MiB)
      assert.equal(pool.take(2 * MiB).buf.buffer, w.buf.buffer)
    } finally {
      await worker.terminate()
    }
  })

  it("the read-ahead budget counts a window's memory (its length rounded up), and dropped windows until their GET settles", () => {
    const pool = new WindowPool()
    assert.equal(WindowPool.capacity(MiB + 4096), 2 * MiB)
    assert.equal(WindowPool.capacity(4096), MiB)
    const w = pool.take(MiB + 4096)
    pool.drop(w)
    assert.equal(pool.landingBytes, 2 * MiB, 'dropped while landing: still counted')
    pool.settled(w)
    assert.equal(pool.landingBytes, 0)
  })

  it('no slot left (every one held by threads that never let go): a buffer of its own, not pooled, even with free buffers', () => {
    const pool = new WindowPool()
    const spare = pool.take(MiB)
    pool.drop(spare)
    pool.settled(spare)
    assert.equal(pool.freeNow, MiB)
    const held = Array.from({length: SLOTS}, () => pool.take(MiB))
    for (const w of held) pool.hold(w.buf)
    const extra = pool.take(MiB)
    assert.equal(extra.slot, -1)
    assert.notEqual(extra.buf.buffer, spare.buf.buffer)
    assert.equal(pool.hold(extra.buf), -1)
  })

  it('a holder that never lets go (a dead thread) is forgotten past 64 such buffers: memory stays bounded, slots are not reused while held', () => {
    const pool = new WindowPool()
    const held: number[] = []
    for (let i = 0; i < 70; i++) {
      const w = pool.take(MiB)
      held.push(pool.hold(w.buf))
      pool.drop(w)
      pool.settled(w)
    }
    assert.equal(new Set(held).size, 70, 'each held buffer keeps its own slot')
    // 70 buffers and 70 slots in use; forgotten buffers' slots come back once their count is 0.
    for (const slot of held) Atomics.sub(pool.holders, slot, 1)
    assert.equal(pool.freeNow, 32 * MiB, 'the ones remembered went back (up to the 32 MiB kept free)')
    const again = new Set(Array.from({length: SLOTS}, () => pool.take(8 * MiB).slot))
    assert.equal(again.size, SLOTS, 'every slot can be given out again')
    assert.equal(pool.take(8 * MiB).slot, -1, 'past SLOTS buffers: not pooled, still a buffer')
  })
})

/**
 * The synchronous call from a serving thread to its owner (src/threads/sync-call.ts), between real
 * threads: a call that gives up waiting (ETIMEDOUT) leaves its answer to come late, and the next call
 * skips it — telling `skipped`, so a caller can release what that answer held (link.ts lets go of a
 * read-ahead window's memory); answers still in the port at close are told too.
 */
import * as assert from 'node:assert/strict'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {offerSyncLink} from '../../src/threads/sync-call'

const MODULE = path.resolve(__dirname, '../../src/threads/sync-call.js')

describe('threads: SyncCaller', () => {
  it('a late answer is skipped by the next call and told to `skipped`; one left in the port at close too', async () => {
    // The owner answers call n after delays[n] ms.
    const delays = [300, 0, 0]
    let n = 0
    const link = offerSyncLink<{tag: string}, string>(async (call) => {
      await new Promise((r) => setTimeout(r, delays[n++] ?? 0))
      return {value: `answer to ${call.tag}`}
    })
    const worker = new Worker(
      `const {parentPort, workerData} = require('node:worker_threads')
       const {SyncCaller} = require(workerData.module)
       const skipped = []
       const c = new SyncCaller(workerData.link, (v) => skipped.push(v))
       const out = {}
       const spin = (ms) => { const t0 = Date.now(); while (Date.now() - t0 < ms) {} }
       try { c.call({tag: 'a'}, [], 100) } catch (e) { out.first = e.code }
       // The answer to 'a' lands meanwhile: the next call finds it first.
       spin(700)
       out.second = c.call({tag: 'b'}, [], 5000)
       out.skippedBeforeClose = [...skipped]
       c.post({tag: 'c'})
       // Wait until the owner has answered 'c', then close with it still in the port.
       spin(500)
       c.close()
       out.skipped = skipped
       parentPort.postMessage(out)`,
      {eval: true, workerData: {module: MODULE, link}, transferList: [link.port]},
    )
    try {
      const out = await new Promise((resolve, reject) => (worker.once('message', resolve), worker.once('error', reject)))
      assert.deepEqual(out, {
        first: 'ETIMEDOUT',
        second: 'answer to b',
        skippedBeforeClose: ['answer to a'],
        skipped: ['answer to a', 'answer to c'],
      })
    } finally {
      await worker.terminate()
    }
  })
})

/**
 * The AWS keys in shared memory (src/remote/credential-slot.ts): what the owner publishes is what a thread
 * reads — keys, their expiration, a session token, "none" (unsigned) — the newest set after each publish;
 * keys too long for the slot are not published and empty it. A real worker thread reads while this thread
 * publishes thousands of sets: every read it makes is one whole set, never a mix of two.
 */
import * as assert from 'node:assert/strict'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {CredentialSlot} from '../../src/remote/credential-slot'

describe('remote: the credential slot the serving threads sign with', () => {
  it('a thread reads what was published last: keys with token and expiration, then new keys, then none', () => {
    const owner = CredentialSlot.create()
    const thread = CredentialSlot.attach(owner.buffer)
    assert.equal(thread.read(), undefined, 'nothing published yet')
    const exp = new Date('2026-12-03T18:00:00Z')
    assert.ok(owner.publish({accessKeyId: 'AKIDONE', secretAccessKey: 's/é+=', sessionToken: 'tok'.repeat(300), expiration: exp}))
    assert.deepEqual(thread.read(), {keys: {accessKeyId: 'AKIDONE', secretAccessKey: 's/é+=', sessionToken: 'tok'.repeat(300)}, expiresAt: exp.getTime()})
    // Unchanged: the same object (not decoded again).
    assert.equal(thread.read(), thread.read())
    assert.ok(owner.publish({accessKeyId: 'AKIDTWO', secretAccessKey: 'two'}))
    assert.deepEqual(thread.read(), {keys: {accessKeyId: 'AKIDTWO', secretAccessKey: 'two', sessionToken: undefined}, expiresAt: undefined})
    assert.ok(owner.publish(undefined))
    assert.deepEqual(thread.read(), {keys: undefined})
  })

  it('keys too long for the slot: not published, and the slot emptied (threads leave their GETs to the owner)', () => {
    const owner = CredentialSlot.create()
    const thread = CredentialSlot.attach(owner.buffer)
    assert.ok(owner.publish({accessKeyId: 'AKID', secretAccessKey: 'x'}))
    assert.ok(thread.read()?.keys)
    assert.equal(owner.publish({accessKeyId: 'AKID', secretAccessKey: 'x', sessionToken: 't'.repeat(20000)}), false)
    assert.equal(thread.read(), undefined)
    assert.throws(() => CredentialSlot.attach(new SharedArrayBuffer(64)), /not a credential slot/)
  })

  it('a worker thread reading while the owner publishes 20000 sets: every read is one whole set', async function () {
    this.timeout(60_000)
    const owner = CredentialSlot.create()
    owner.publish({accessKeyId: 'K0', secretAccessKey: 'S0-'.repeat(10)})
    const stop = new Int32Array(new SharedArrayBuffer(4))
    const code = `
      const {workerData, parentPort} = require('node:worker_threads')
      const {CredentialSlot} = require(${JSON.stringify(path.join(__dirname, '..', '..', 'src', 'remote', 'credential-slot.js'))})
      const slot = CredentialSlot.attach(workerData.buffer)
      let reads = 0, torn = 0, missing = 0, seen = new Set()
      parentPort.postMessage('ready')
      while (Atomics.load(workerData.stop, 0) === 0) {
        const c = slot.read()
        reads++
        if (!c || !c.keys) { missing++; continue }
        const n = c.keys.accessKeyId.slice(1)
        // Set n: secret "S<n>-" repeated, a token of n % 700 + 1 copies of "t<n>".
        if (c.keys.secretAccessKey !== ('S' + n + '-').repeat(10) || (n !== '0' && c.keys.sessionToken !== ('t' + n).repeat((+n % 700) + 1))) torn++
        seen.add(n)
      }
      parentPort.postMessage({reads, torn, missing, distinct: seen.size, parseFailures: slot.parseFailures})`
    const w = new Worker(code, {eval: true, workerData: {buffer: owner.buffer, stop}})
    type Result = {reads: number; torn: number; missing: number; distinct: number; parseFailures: number}
    const messages: Array<'ready' | Result> = []
    const waiters: Array<() => void> = []
    w.on('message', (m: 'ready' | Result) => {
      messages.push(m)
      waiters.splice(0).forEach((f) => f())
    })
    const next = async (): Promise<'ready' | Result> => {
      while (!messages.length) await new Promise<void>((resolve, reject) => (waiters.push(resolve), w.once('error', reject)))
      return messages.shift()!
    }
    // Once the worker reads, publish sets of varying length as fast as possible.
    assert.equal(await next(), 'ready')
    for (let n = 1; n <= 20000; n++) {
      assert.ok(owner.publish({accessKeyId: `K${n}`, secretAccessKey: `S${n}-`.repeat(10), sessionToken: `t${n}`.repeat((n % 700) + 1)}))
      if (n % 1000 === 0) await new Promise((r) => setImmediate(r))
    }
    Atomics.store(stop, 0, 1)
    const r = (await next()) as Result
    await w.terminate()
    // A copy taken while the owner wrote is almost always cut-off JSON: none may get past the generation check.
    assert.equal(r.parseFailures, 0, `torn copies taken for whole: ${JSON.stringify(r)}`)
    assert.equal(r.torn, 0, `torn reads: ${JSON.stringify(r)}`)
    assert.ok(r.distinct > 10, `the worker saw few sets (${JSON.stringify(r)}): it did not read while they were published`)
  })
})

/**
 * Decode tasks that name a slot (shared buffers sent to every worker once, WorkerPool.broadcast) decode
 * from and into those buffers, which the caller sees at once, with nothing transferred; a slot the workers
 * were never sent fails the task with a message instead of crashing the worker. The real pool, the real
 * codec worker and real zstd frames.
 */
import {strict as assert} from 'node:assert'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {WorkerPool} from '../../src/core/workerpool'
import {ChunkEncoder} from '../../src/format/codec'
import type {DecodeItem, DecodeResult, DecodeTask, SlotMessage} from '../../src/format/codec-worker'
import {ChunkKind} from '../../src/format/layout'

const WORKER = path.resolve(__dirname, '..', '..', 'src', 'format', 'codec-worker.js')
const CHUNK = 128 << 10

describe('codec worker: decoding in shared slots', function () {
  this.timeout(60_000)
  let pool: WorkerPool
  before(() => {
    pool = new WorkerPool(WORKER, 2)
  })
  after(async () => {
    await pool.close()
  })

  it('every worker decodes each slot\'s stored bytes into its output, seen by this thread; the buffers stay here', async () => {
    // Compressible, not zero: text with random words; one chunk raw (random bytes), one zero.
    const words = Array.from({length: 64}, () => crypto.randomBytes(4).toString('hex'))
    const text = Buffer.alloc(CHUNK)
    for (let at = 0; at < CHUNK; ) at += text.write(words[(at * 7) % words.length] + ' ', at)
    const chunks = [text, crypto.randomBytes(CHUNK), Buffer.alloc(CHUNK), Buffer.from(text).reverse()]
    const enc = new ChunkEncoder(3)
    const slots = [0, 1, 2].map((id) => ({id, in: new SharedArrayBuffer(4 * CHUNK + 4096), out: new SharedArrayBuffer(4 * CHUNK)}))
    for (const s of slots) pool.broadcast({op: 'slot', slot: s.id, in: s.in, out: s.out} satisfies SlotMessage)
    // Six tasks over three slots and two workers: each worker decodes from slots it was sent once.
    for (let round = 0; round < 2; round++) {
      const runs = slots.map(async (s) => {
        const input = new Uint8Array(s.in)
        const items: DecodeItem[] = []
        let at = 0
        for (const c of chunks) {
          const e = enc.encodeInto(c, input.subarray(at))
          items.push({kind: e.kind, start: at, storedLength: e.length, length: CHUNK, crc: e.crc, storedCrc: e.storedCrc})
          at += e.length
        }
        assert.deepEqual(items.map((i) => i.kind), [ChunkKind.Zstd, ChunkKind.Raw, ChunkKind.Zero, ChunkKind.Zstd])
        new Uint8Array(s.out).fill(0xee) // the zero chunk must come back as zeros
        const task: DecodeTask = {op: 'decode', slot: s.id, items}
        const r = await pool.run<DecodeResult>(task)
        assert.deepEqual(r.errors, [undefined, undefined, undefined, undefined])
        assert.equal(r.out.byteLength, 0, 'a slot task hands no buffer back')
        assert.ok(Buffer.from(s.out).equals(Buffer.concat(chunks)), `slot ${s.id}: decoded bytes differ`)
        assert.equal(s.in.byteLength, 4 * CHUNK + 4096, 'the input was not transferred away')
      })
      await Promise.all(runs)
    }
  })

  it('a damaged chunk in a slot is reported per item, the others decoded', async () => {
    const s = {in: new SharedArrayBuffer(2 * CHUNK), out: new SharedArrayBuffer(2 * CHUNK)}
    pool.broadcast({op: 'slot', slot: 7, in: s.in, out: s.out} satisfies SlotMessage)
    const data = Buffer.alloc(CHUNK, 'vdev slot test ')
    const e = new ChunkEncoder(3).encodeInto(data, new Uint8Array(s.in))
    new Uint8Array(s.in).copyWithin(e.length, 0, e.length)
    new Uint8Array(s.in)[e.length + 20] ^= 0x40 // the second copy's stored bytes no longer match stored_crc
    const item = (start: number): DecodeItem => ({kind: ChunkKind.Zstd, start, storedLength: e.length, length: CHUNK, crc: e.crc, storedCrc: e.storedCrc})
    const r = await pool.run<DecodeResult>({op: 'decode', slot: 7, items: [item(0), item(e.length)]} satisfies DecodeTask)
    assert.equal(r.errors[0], undefined)
    assert.equal(r.errors[1], 'stored bytes checksum mismatch')
    assert.ok(Buffer.from(s.out, 0, CHUNK).equals(data))
    assert.ok(Buffer.from(s.out, CHUNK, CHUNK).equals(Buffer.alloc(CHUNK)), 'a damaged chunk reads as zeros')
  })

  it('a task naming a slot the workers were never sent fails with a message; the pool goes on', async () => {
    await assert.rejects(pool.run({op: 'decode', slot: 99, items: []} satisfies DecodeTask), /no shared buffers registered as slot 99/)
    const r = await pool.run<DecodeResult>({op: 'decode', buf: new ArrayBuffer(0), items: []} satisfies DecodeTask)
    assert.deepEqual(r.errors, [])
  })
})

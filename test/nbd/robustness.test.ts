/**
 * What real clients never send: malformed handshakes and requests, oversize lengths, abrupt disconnects,
 * garbage. The server must answer errors where the spec gives it a way to, close the connection where it
 * does not, never crash, and keep serving everyone else. Also: replies out of order, several requests in
 * flight, refused writes whose payload is consumed, and a graceful close that finishes requests in flight.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import type {BlockSource, ReadResult} from '../../src/core/source'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {startNbdServer, MAX_OPTION_LENGTH, type RunningNbdServer} from '../../src/serve/nbd'
import * as P from '../../src/serve/nbd/protocol'
import {makeFixture, run, SECTOR, type Fixture} from './fixture'
import {RawClient, u32} from './rawclient'

/** A layer that holds reads at one offset for a while (like nbdkit's delay filter), to force reordering. */
class DelayAt implements BlockSource {
  constructor(
    private readonly inner: BlockSource,
    private readonly at: number,
    private readonly ms: number,
  ) {}
  get size() {
    return this.inner.size
  }
  get sectorSize() {
    return this.inner.sectorSize
  }
  async read(offset: number, length: number): Promise<ReadResult> {
    if (offset === this.at) await new Promise((r) => setTimeout(r, this.ms))
    return this.inner.read(offset, length)
  }
  extents(offset: number, length: number) {
    return this.inner.extents!(offset, length)
  }
  close() {
    return this.inner.close()
  }
}

describe('nbd server robustness (raw protocol client)', function () {
  this.timeout(60_000)
  let fx: Fixture
  let image: VdimgImage
  let srv: RunningNbdServer
  /** The same export served by threads (threads.ts): the transmission tests run against both. */
  let threaded: RunningNbdServer
  let port: number
  let raw: Buffer
  const clients: RawClient[] = []
  const connect = async () => {
    const c = await RawClient.connect({port})
    clients.push(c)
    return c
  }
  /** The server still answers a whole new session correctly. */
  const stillServes = async () => {
    const c = await connect()
    await c.go({structured: true})
    c.request(P.NBD_CMD_READ, 4096, 4096, 77n)
    const r = await c.reply()
    assert.equal(r.error, 0)
    assert.ok(r.payload.subarray(8).equals(raw.subarray(4096, 8192)))
    c.destroy()
  }

  before(async () => {
    fx = await makeFixture()
    raw = fs.readFileSync(fx.raw)
    image = await openImage(fx.image)
    srv = await startNbdServer(new BlockServer(new DelayAt(image, 65536, 300)), {
      listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
      exportName: 'disk.vdimg',
    })
    threaded = await startNbdServer(new BlockServer(image), {
      listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
      exportName: 'disk.vdimg',
      threads: {perConnection: 2},
    })
    assert.equal(threaded.threadsPerConnection, 2)
    port = (srv.address as {port: number}).port
  })

  afterEach(() => {
    for (const c of clients.splice(0)) c.destroy()
  })

  after(async () => {
    await srv?.close()
    await threaded?.close()
    await image?.close()
    fx?.cleanup()
  })

  describe('handshake', () => {
    it('greets with NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', async () => {
      const c = await connect()
      const g = await c.greet()
      assert.equal(g.magic, P.NBDMAGIC)
      assert.equal(g.opt, P.IHAVEOPT)
      assert.equal(g.flags, P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES)
    })

    it('closes on unknown client flags', async () => {
      const c = await connect()
      await c.greet(0x80)
      await c.closed
      await stillServes()
    })

    it('closes on a bad option magic', async () => {
      const c = await connect()
      await c.greet()
      c.send(Buffer.concat([Buffer.from('NOTMAGIC'), u32(P.NBD_OPT_GO), u32(0)]))
      await c.closed
      await stillServes()
    })

    it('closes on a huge option length without allocating it', async () => {
      const before = process.memoryUsage().rss
      const c = await connect()
      await c.greet()
      c.send(P.encodeOptionHeader(P.NBD_OPT_GO, 0xffffffff))
      await c.closed
      const c2 = await connect()
      await c2.greet()
      c2.send(P.encodeOptionHeader(0x1234, MAX_OPTION_LENGTH + 1))
      await c2.closed
      assert.ok(process.memoryUsage().rss - before < 64 * 1024 * 1024)
      await stillServes()
    })

    it('closes on garbage instead of a handshake', async () => {
      const c = await connect()
      await c.reader.read(18)
      c.send(crypto.randomBytes(4096))
      await c.closed
      await stillServes()
    })

    it('answers an unknown option with NBD_REP_ERR_UNSUP and goes on', async () => {
      const c = await connect()
      await c.greet()
      const r = await c.option(0x4242, Buffer.from('data'))
      assert.deepEqual(r.map((x) => [x.option, x.type]), [[0x4242, P.NBD_REP_ERR_UNSUP]])
      const tls = await c.option(P.NBD_OPT_STARTTLS)
      assert.equal(tls[0].type, P.NBD_REP_ERR_UNSUP)
      const go = await c.option(P.NBD_OPT_GO, P.encodeInfoRequest('disk.vdimg', []))
      assert.equal(go[go.length - 1].type, P.NBD_REP_ACK)
    })

    it('NBD_OPT_INFO/GO: malformed data is NBD_REP_ERR_INVALID, an unknown export NBD_REP_ERR_UNKNOWN', async () => {
      const c = await connect()
      await c.greet()
      const overrun = Buffer.concat([u32(0x7fffffff), Buffer.from([0, 0])])
      assert.equal((await c.option(P.NBD_OPT_INFO, overrun))[0].type, P.NBD_REP_ERR_INVALID)
      assert.equal((await c.option(P.NBD_OPT_GO, Buffer.from([1, 2, 3])))[0].type, P.NBD_REP_ERR_INVALID)
      assert.equal((await c.option(P.NBD_OPT_GO, P.encodeInfoRequest('other', [])))[0].type, P.NBD_REP_ERR_UNKNOWN)
      const info = await c.option(P.NBD_OPT_INFO, P.encodeInfoRequest('', [P.NBD_INFO_NAME, P.NBD_INFO_BLOCK_SIZE]))
      const types = info.filter((x) => x.type === P.NBD_REP_INFO).map((x) => x.data.readUInt16BE(0))
      assert.deepEqual(types.sort(), [P.NBD_INFO_EXPORT, P.NBD_INFO_NAME, P.NBD_INFO_BLOCK_SIZE])
      const name = info.find((x) => x.type === P.NBD_REP_INFO && x.data.readUInt16BE(0) === P.NBD_INFO_NAME)!
      assert.equal(name.data.subarray(2).toString(), 'disk.vdimg')
      assert.equal(info[info.length - 1].type, P.NBD_REP_ACK)
    })

    it('meta contexts need structured replies; malformed queries are NBD_REP_ERR_INVALID; LIST lists base:allocation', async () => {
      const c = await connect()
      await c.greet()
      const q = P.encodeMetaContextRequest('', [P.BASE_ALLOCATION])
      assert.equal((await c.option(P.NBD_OPT_SET_META_CONTEXT, q))[0].type, P.NBD_REP_ERR_INVALID)
      await c.option(P.NBD_OPT_STRUCTURED_REPLY)
      const bogus = Buffer.concat([u32(0), u32(1), u32(0xffffff00)])
      assert.equal((await c.option(P.NBD_OPT_SET_META_CONTEXT, bogus))[0].type, P.NBD_REP_ERR_INVALID)
      const list = await c.option(P.NBD_OPT_LIST_META_CONTEXT, P.encodeMetaContextRequest('', []))
      assert.deepEqual(list.map((x) => x.type), [P.NBD_REP_META_CONTEXT, P.NBD_REP_ACK])
      assert.equal(list[0].data.subarray(4).toString(), P.BASE_ALLOCATION)
      const other = await c.option(P.NBD_OPT_SET_META_CONTEXT, P.encodeMetaContextRequest('', ['qemu:dirty-bitmap:x']))
      assert.deepEqual(other.map((x) => x.type), [P.NBD_REP_ACK])
    })

    it('NBD_OPT_LIST with data is invalid; NBD_OPT_ABORT is acknowledged and the connection closed', async () => {
      const c = await connect()
      await c.greet()
      assert.equal((await c.option(P.NBD_OPT_LIST, Buffer.from('x')))[0].type, P.NBD_REP_ERR_INVALID)
      const abort = await c.option(P.NBD_OPT_ABORT)
      assert.equal(abort[0].type, P.NBD_REP_ACK)
      await c.closed
    })

    it('NBD_OPT_EXPORT_NAME: size and flags, 124 zeroes unless NO_ZEROES; an unknown name closes', async () => {
      for (const noZeroes of [true, false]) {
        const c = await connect()
        await c.greet(P.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.NBD_FLAG_C_NO_ZEROES : 0))
        c.send(Buffer.concat([P.encodeOptionHeader(P.NBD_OPT_EXPORT_NAME, 10), Buffer.from('disk.vdimg')]))
        const r = await c.reader.read(noZeroes ? 10 : 134)
        assert.equal(Number(r.readBigUInt64BE(0)), fx.size)
        assert.ok(r.readUInt16BE(8) & P.NBD_FLAG_READ_ONLY)
        // Simple replies (no structured replies negotiated), and the stream is exactly in step.
        c.request(P.NBD_CMD_READ, 0, 1024, 5n)
        const rep = await c.reply(new Map([[5n, 1024]]))
        assert.equal(rep.kind, 'simple')
        assert.ok(rep.payload.equals(raw.subarray(0, 1024)))
      }
      const c = await connect()
      await c.greet()
      c.send(Buffer.concat([P.encodeOptionHeader(P.NBD_OPT_EXPORT_NAME, 3), Buffer.from('bad')]))
      await c.closed
    })

    it('a client that sends too many options is cut off', async () => {
      const c = await connect()
      await c.greet()
      const many = Buffer.concat(Array.from({length: 300}, () => P.encodeOptionHeader(0x4242, 0)))
      c.send(many)
      await c.closed
      await stillServes()
    })
  })

  for (const mode of ['main thread', 'serving threads'] as const) {
    describe(`transmission (${mode})`, () => {
      before(() => {
        port = ((mode === 'main thread' ? srv : threaded).address as {port: number}).port
      })


      // The delay layer exists only in the main thread's source; threads.test.ts has the threads' versions.
      if (mode === 'main thread') {
        it('answers out of order: a slow read does not hold back a fast one', async () => {
          const c = await connect()
          await c.go({structured: true})
          c.request(P.NBD_CMD_READ, 65536, 4096, 1n) // held 300 ms by the delay layer
          c.request(P.NBD_CMD_READ, 0, 4096, 2n)
          const first = await c.reply()
          const second = await c.reply()
          assert.deepEqual([first.cookie, second.cookie], [2n, 1n])
          assert.ok(second.payload.subarray(8).equals(raw.subarray(65536, 65536 + 4096)))
        })
      }

      it('serves 200 pipelined reads with every reply matched to its cookie', async () => {
        const c = await connect()
        await c.go()
        const lengths = new Map<bigint, number>()
        const want = new Map<bigint, number>()
        for (let i = 0; i < 200; i++) {
          const off = ((i * 7919) % 2000) * SECTOR
          const cookie = BigInt(i) * 0x100000001n
          lengths.set(cookie, 8 * SECTOR)
          want.set(cookie, off)
          c.request(P.NBD_CMD_READ, off, 8 * SECTOR, cookie)
        }
        for (let i = 0; i < 200; i++) {
          const r = await c.reply(lengths)
          assert.equal(r.error, 0)
          const off = want.get(r.cookie)!
          assert.ok(r.payload.equals(raw.subarray(off, off + 8 * SECTOR)))
          want.delete(r.cookie)
        }
        assert.equal(want.size, 0)
      })

      it('out-of-range and oversize reads are EINVAL and the session goes on', async () => {
        const c = await connect()
        await c.go({structured: true})
        c.request(P.NBD_CMD_READ, fx.size - SECTOR, 2 * SECTOR, 1n)
        c.request(P.NBD_CMD_READ, 0, 64 * 1024 * 1024, 2n)
        c.send(Buffer.concat([u32(P.NBD_REQUEST_MAGIC), Buffer.from([0, 0, 0, 0]), Buffer.alloc(8, 3), Buffer.alloc(8, 0xff), u32(512)]))
        const errs = [await c.reply(), await c.reply(), await c.reply()]
        assert.deepEqual(errs.map((e) => e.error), [P.NBD_EINVAL, P.NBD_EINVAL, P.NBD_EINVAL])
        assert.ok(errs.every((e) => e.type === P.NBD_REPLY_TYPE_ERROR && (e.flags! & P.NBD_REPLY_FLAG_DONE)))
        c.request(P.NBD_CMD_READ, 0, 512, 4n)
        assert.equal((await c.reply()).error, 0)
      })

      it('a read of an unreadable area is EIO (simple reply: no payload, the stream stays in step)', async () => {
        const c = await connect()
        await c.go()
        const b = fx.bad[0]
        c.request(P.NBD_CMD_READ, b.offset - SECTOR, 4 * SECTOR, 1n)
        c.request(P.NBD_CMD_READ, b.offset + SECTOR, SECTOR, 2n)
        const lengths = new Map([[2n, SECTOR]])
        const replies = [await c.reply(lengths), await c.reply(lengths)].sort((x, y) => Number(x.cookie - y.cookie))
        assert.equal(replies[0].error, P.NBD_EIO)
        assert.equal(replies[0].payload.length, 0)
        assert.equal(replies[1].error, 0)
        assert.ok(replies[1].payload.equals(raw.subarray(b.offset + SECTOR, b.offset + 2 * SECTOR)))
      })

      it('writes are EPERM with their payload consumed; trim and write-zeroes EPERM; flush and cache succeed', async () => {
        const c = await connect()
        await c.go({structured: true})
        c.send(Buffer.concat([P.encodeRequest(P.NBD_CMD_WRITE, 0, 1n, 0, 8192), crypto.randomBytes(8192)]))
        c.request(P.NBD_CMD_TRIM, 0, 4096, 2n)
        c.request(P.NBD_CMD_WRITE_ZEROES, 0, 4096, 3n)
        c.request(P.NBD_CMD_FLUSH, 0, 0, 4n)
        c.request(P.NBD_CMD_CACHE, 0, 65536, 5n)
        c.request(P.NBD_CMD_CACHE, fx.size, 512, 6n)
        c.request(99, 0, 0, 7n)
        const got = new Map<bigint, number>()
        for (let i = 0; i < 7; i++) {
          const r = await c.reply()
          got.set(r.cookie, r.error)
        }
        assert.deepEqual([...got.entries()].sort((a, b) => Number(a[0] - b[0])), [
          [1n, P.NBD_EPERM],
          [2n, P.NBD_EPERM],
          [3n, P.NBD_EPERM],
          [4n, 0],
          [5n, 0],
          [6n, P.NBD_EINVAL],
          [7n, P.NBD_EINVAL],
        ])
        const data = await readOk(c, 0, 4096, 8n)
        assert.ok(data.equals(raw.subarray(0, 4096)))
      })

      it('an oversize write closes the connection (its payload cannot be skipped safely)', async () => {
        const c = await connect()
        await c.go()
        c.request(P.NBD_CMD_WRITE, 0, 0xffffffff, 1n)
        await c.closed
        await stillServes()
      })

      it('block status: needs a negotiated context; REQ_ONE gives one descriptor; zero length and past-the-end are EINVAL', async () => {
        const plain = await connect()
        await plain.go({structured: true})
        plain.request(P.NBD_CMD_BLOCK_STATUS, 0, 4096, 1n)
        assert.equal((await plain.reply()).error, P.NBD_EINVAL)

        const c = await connect()
        await c.go({structured: true, meta: true})
        const zr = 2 * 1024 * 1024
        c.request(P.NBD_CMD_BLOCK_STATUS, zr - 65536, 3 * 65536, 2n)
        const r = await c.reply()
        assert.equal(r.type, P.NBD_REPLY_TYPE_BLOCK_STATUS)
        assert.equal(r.payload.readUInt32BE(0), 1)
        const descs = []
        for (let at = 4; at < r.payload.length; at += 8) descs.push([r.payload.readUInt32BE(at), r.payload.readUInt32BE(at + 4)])
        assert.deepEqual(descs, [
          [65536, 0],
          [2 * 65536, P.NBD_STATE_HOLE | P.NBD_STATE_ZERO],
        ])
        c.request(P.NBD_CMD_BLOCK_STATUS, zr - 65536, 3 * 65536, 3n, P.NBD_CMD_FLAG_REQ_ONE)
        const one = await c.reply()
        assert.equal(one.payload.length, 12)
        c.request(P.NBD_CMD_BLOCK_STATUS, 0, 0, 4n)
        c.request(P.NBD_CMD_BLOCK_STATUS, fx.size - 512, 1024, 5n)
        assert.deepEqual([(await c.reply()).error, (await c.reply()).error], [P.NBD_EINVAL, P.NBD_EINVAL])
      })

      it('a bad request magic closes the connection', async () => {
        const c = await connect()
        await c.go()
        const bad = P.encodeRequest(P.NBD_CMD_READ, 0, 1n, 0, 512)
        bad.writeUInt32BE(0xdeadbeef, 0)
        c.send(bad)
        await c.closed
        await stillServes()
      })

      it('abrupt disconnects mid-request and mid-header never take the server down', async () => {
        for (let i = 0; i < 20; i++) {
          const c = await connect()
          await c.go({structured: i % 2 === 0})
          for (let k = 0; k < 16; k++) c.request(P.NBD_CMD_READ, k * 1024 * 1024, 1024 * 1024, BigInt(k))
          c.send(P.encodeRequest(P.NBD_CMD_READ, 0, 99n, 0, 512).subarray(0, 11))
          c.destroy()
        }
        const half = await connect()
        await half.go()
        half.send(Buffer.concat([P.encodeRequest(P.NBD_CMD_WRITE, 0, 1n, 0, 65536), Buffer.alloc(1000)]))
        half.destroy()
        await new Promise((r) => setTimeout(r, 200))
        await stillServes()
      })

      if (mode === 'main thread') {
        it('NBD_CMD_DISC: replies in flight are sent, then the server closes', async () => {
          const c = await connect()
          await c.go({structured: true})
          c.request(P.NBD_CMD_READ, 65536, 4096, 1n) // slow
          c.request(P.NBD_CMD_DISC, 0, 0, 2n)
          const r = await c.reply()
          assert.equal(r.cookie, 1n)
          assert.equal(r.error, 0)
          await c.closed
        })
      }

      it('nbdinfo still works after all of the above', async () => {
        const r = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/disk.vdimg`])
        assert.equal(Number(r.stdout.trim()), fx.size)
      })

      if (mode === 'serving threads') {
        it('the connections above were served by the threads (a burst beyond the pool falls back to the main thread)', () => {
          const st = threaded.nbd.threads!.stats
          assert.ok(st.connections >= 20, `only ${st.connections} connections were handed to the threads`)
          assert.ok(st.threads <= 8)
        })
      }
    })
  }

  it('close() finishes reads in flight, then closes every connection and the listener', async () => {
    const sock = path.join(fx.dir, 'closing.sock')
    const img = await openImage(fx.image)
    const s = await startNbdServer(new BlockServer(new DelayAt(img, 65536, 300)), {listen: {kind: 'unix', path: sock}, exportName: 'x'})
    const c = await RawClient.connect(sock)
    clients.push(c)
    await c.go({structured: true})
    const idle = await RawClient.connect(sock)
    clients.push(idle)
    c.request(P.NBD_CMD_READ, 65536, 4096, 1n)
    await new Promise((r) => setTimeout(r, 50))
    const closing = s.close()
    const r = await c.reply()
    assert.equal(r.error, 0)
    assert.ok(r.payload.subarray(8).equals(raw.subarray(65536, 65536 + 4096)))
    await closing
    await c.closed
    await idle.closed
    assert.equal(fs.existsSync(sock), false)
    await img.close()
  })
})

async function readOk(c: RawClient, offset: number, length: number, cookie: bigint): Promise<Buffer> {
  c.request(P.NBD_CMD_READ, offset, length, cookie)
  const r = await c.reply()
  assert.equal(r.error, 0)
  return r.payload.subarray(8)
}

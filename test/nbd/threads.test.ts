/**
 * The serving threads (src/serve/nbd/threads.ts): after the handshake a connection is read, served and
 * answered by threads with their own image instances. What only they can get wrong: replies from several
 * threads interleaving, requests sent before the hand-off, out-of-order answers, a graceful close while a
 * thread sleeps in read(2) or is stuck writing to a client that does not read, more connections than
 * threads, descriptors left open. Real sockets, real VDIMG images from the real writer.
 */
import * as assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {startNbdServer, type NbdThreadOptions, type RunningNbdServer} from '../../src/serve/nbd'
import * as P from '../../src/serve/nbd/protocol'
import {makeFixture, run, SECTOR, type Fixture} from './fixture'
import {RawClient} from './rawclient'

describe('nbd serving threads', function () {
  this.timeout(60_000)
  let fx: Fixture
  let image: VdimgImage
  let raw: Buffer
  const clients: RawClient[] = []
  const servers: RunningNbdServer[] = []

  const start = async (threads: Partial<NbdThreadOptions> = {}, log?: (l: string) => void) => {
    const s = await startNbdServer(new BlockServer(image), {
      listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
      exportName: 'good.vdimg',
      threads: {image: fx.goodImage, perConnection: 2, ...threads},
      log,
    })
    servers.push(s)
    return s
  }
  const connect = async (s: RunningNbdServer) => {
    const c = await RawClient.connect({port: (s.address as {port: number}).port})
    clients.push(c)
    return c
  }
  const readOk = async (c: RawClient, offset: number, length: number, cookie: bigint) => {
    c.request(P.NBD_CMD_READ, offset, length, cookie)
    const r = await c.reply(new Map([[cookie, length]]))
    assert.equal(r.error, 0)
    assert.equal(r.cookie, cookie)
    const data = r.kind === 'structured' ? r.payload.subarray(8) : r.payload
    assert.ok(data.equals(raw.subarray(offset, offset + length)))
  }

  before(async () => {
    fx = await makeFixture()
    raw = fs.readFileSync(fx.goodRaw)
    image = await openImage(fx.goodImage)
  })

  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy()
    for (const s of servers.splice(0)) await s.close()
  })

  after(async () => {
    await image?.close()
    fx?.cleanup()
  })

  it('answers out of order: a 4 KiB read is not held behind a whole-image read', async () => {
    const s = await start()
    const c = await connect(s)
    await c.go({structured: true})
    // Both requests in one write, so one thread reads both and leaves the second to the other thread.
    // Scheduling decides each attempt; one overtaking in ten shows the replies are not serialised.
    let overtaken = 0
    for (let i = 0; i < 10 && overtaken === 0; i++) {
      const big = BigInt(2 * i + 1)
      c.send(Buffer.concat([P.encodeRequest(P.NBD_CMD_READ, 0, big, 0, fx.size), P.encodeRequest(P.NBD_CMD_READ, 0, big + 1n, 4096, 4096)]))
      const first = await c.reply()
      const second = await c.reply()
      if (first.cookie === big + 1n) overtaken++
      const whole = first.cookie === big ? first : second
      assert.ok(whole.payload.subarray(8).equals(raw))
    }
    assert.equal(overtaken, 1)
  })

  it('replies never interleave: 2 connections × 600 pipelined reads of 512 B to 1 MiB, each checked', async () => {
    const s = await start()
    const one = async (seed: number) => {
      const c = await connect(s)
      await c.go({structured: seed % 2 === 0})
      const want = new Map<bigint, [number, number]>()
      const lengths = new Map<bigint, number>()
      let x = seed
      const reqs: Buffer[] = []
      for (let i = 0; i < 600; i++) {
        x = (x * 1103515245 + 12345) >>> 0
        const len = (1 + (x % 2048)) * SECTOR
        const off = Math.floor(((x >>> 8) % (fx.size - len)) / SECTOR) * SECTOR
        const cookie = BigInt(i + 1) * 0x10001n
        want.set(cookie, [off, len])
        lengths.set(cookie, len)
        reqs.push(P.encodeRequest(P.NBD_CMD_READ, 0, cookie, off, len))
      }
      c.send(Buffer.concat(reqs))
      for (let i = 0; i < 600; i++) {
        const r = await c.reply(lengths)
        assert.equal(r.error, 0)
        const [off, len] = want.get(r.cookie)!
        const data = r.kind === 'structured' ? r.payload.subarray(8) : r.payload
        assert.ok(data.equals(raw.subarray(off, off + len)), `cookie ${r.cookie}: ${len} bytes at ${off}`)
        want.delete(r.cookie)
      }
      assert.equal(want.size, 0)
    }
    await Promise.all([one(1), one(2)])
    assert.equal(s.nbd.threads!.stats.connections, 2)
  })

  it('requests sent with NBD_OPT_GO, before its reply, are served (the bytes read before the hand-off go with it)', async () => {
    const s = await start()
    const c = await connect(s)
    await c.greet()
    c.send(
      Buffer.concat([
        P.encodeOptionHeader(P.NBD_OPT_GO, 6),
        P.encodeInfoRequest('', []),
        P.encodeRequest(P.NBD_CMD_READ, 0, 1n, 8192, 512),
        P.encodeRequest(P.NBD_CMD_READ, 0, 2n, 0, 1024).subarray(0, 10), // and half of another
      ]),
    )
    for (;;) if ((await c.optionReply()).type === P.NBD_REP_ACK) break
    const lengths = new Map([
      [1n, 512],
      [2n, 1024],
    ])
    const r1 = await c.reply(lengths)
    assert.equal(r1.cookie, 1n)
    assert.ok(r1.payload.equals(raw.subarray(8192, 8192 + 512)))
    c.send(P.encodeRequest(P.NBD_CMD_READ, 0, 2n, 0, 1024).subarray(10))
    const r2 = await c.reply(lengths)
    assert.equal(r2.cookie, 2n)
    assert.ok(r2.payload.equals(raw.subarray(0, 1024)))
    assert.equal(s.nbd.threads!.stats.connections, 1)
  })

  it('NBD_CMD_DISC: the read before it is answered, then the connection closes', async () => {
    const s = await start()
    const c = await connect(s)
    await c.go({structured: true})
    c.send(Buffer.concat([P.encodeRequest(P.NBD_CMD_READ, 0, 1n, 0, fx.size), P.encodeRequest(P.NBD_CMD_DISC, 0, 2n, 0, 0)]))
    const r = await c.reply()
    assert.equal(r.cookie, 1n)
    assert.ok(r.payload.subarray(8).equals(raw))
    await c.closed
  })

  it('close(): an idle connection (its thread asleep in read) closes at once, a read in flight is answered first; the threads exit', async () => {
    const s = await start()
    const idle = await connect(s)
    await idle.go()
    const busy = await connect(s)
    await busy.go({structured: true})
    await readOk(busy, 0, 4096, 1n)
    // A whole-image reply does not fit in the socket buffers: while this client does not read, the
    // thread answering it is in the middle of writing when close() begins.
    busy.socket.pause()
    busy.request(P.NBD_CMD_READ, 0, fx.size, 2n)
    await new Promise((r) => setTimeout(r, 300))
    const t0 = Date.now()
    const closing = s.close()
    await idle.closed
    assert.ok(Date.now() - t0 < 1000, `the idle connection took ${Date.now() - t0} ms to close`)
    busy.socket.resume()
    const r = await busy.reply()
    assert.equal(r.cookie, 2n)
    assert.equal(r.error, 0)
    assert.ok(r.payload.subarray(8).equals(raw))
    await busy.closed
    await closing
    assert.equal(s.nbd.threads!.stats.threads, 0)
  })

  it('close() does not wait forever for a client that stops reading its replies', async () => {
    const s = await start()
    const c = await connect(s)
    await c.go()
    c.socket.pause()
    for (let i = 0; i < 8; i++) c.request(P.NBD_CMD_READ, 0, fx.size, BigInt(i))
    await new Promise((r) => setTimeout(r, 200))
    const t0 = Date.now()
    await s.close()
    const took = Date.now() - t0
    assert.ok(took >= 1500 && took < 5000, `close() took ${took} ms (grace period 2 s)`)
  })

  it('more connections than threads: the ones beyond are served on the main thread, just as correctly', async () => {
    const s = await start({perConnection: 1, maxThreads: 1})
    const a = await connect(s)
    await a.go()
    const b = await connect(s)
    await b.go({structured: true})
    assert.deepEqual(s.nbd.threads!.stats, {threads: 1, connections: 1, refused: 1})
    const lengths = new Map([[7n, 65536]])
    a.request(P.NBD_CMD_READ, 65536, 65536, 7n)
    await readOk(b, 3 * 65536, 65536, 8n)
    assert.ok((await a.reply(lengths)).payload.equals(raw.subarray(65536, 2 * 65536)))
  })

  it('leaves no connection descriptor open: 30 sessions ended by DISC or by the client going away', async () => {
    const s = await start()
    const sockets = () =>
      fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:')
        } catch {
          return false // the directory's own descriptor, already closed
        }
      }).length
    const before = sockets()
    for (let i = 0; i < 30; i++) {
      const c = await connect(s)
      await c.go({structured: i % 2 === 0})
      await readOk(c, i * 4096, 4096, BigInt(i))
      if (i % 3 === 0) c.request(P.NBD_CMD_DISC, 0, 0, 0n)
      else c.destroy()
      await c.closed
    }
    let after = sockets()
    for (let i = 0; i < 40 && after !== before; i++) {
      await new Promise((r) => setTimeout(r, 50))
      after = sockets()
    }
    assert.equal(after, before)
    const st = s.nbd.threads!.stats
    // Each session went to the threads, or to the main thread while all 8 were still busy with earlier ones.
    assert.equal(st.connections + st.refused, 30)
    assert.ok(st.connections >= 15 && st.threads <= 8, JSON.stringify(st))
  })

  it('process.exit() with a client connected does not hang (a thread asleep in read(2) is woken)', async () => {
    // A separate process: Node joins its threads at exit, so a hang here would be a hung test process.
    const script = `
      const {BlockServer} = require(${JSON.stringify(path.resolve(__dirname, '../../src/core/blockserver.js'))})
      const {openImage} = require(${JSON.stringify(path.resolve(__dirname, '../../src/format/reader.js'))})
      const {startNbdServer} = require(${JSON.stringify(path.resolve(__dirname, '../../src/serve/nbd/index.js'))})
      const {RawClient} = require(${JSON.stringify(path.resolve(__dirname, 'rawclient.js'))})
      ;(async () => {
        const image = await openImage(process.argv[1])
        const s = await startNbdServer(new BlockServer(image), {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, exportName: '', threads: {image: process.argv[1], perConnection: 2}})
        const c = await RawClient.connect({port: s.address.port})
        await c.go()
        c.request(0, 0, 512, 1n, 0)
        await c.reply(new Map([[1n, 512]]))
        if (s.nbd.threads.stats.connections !== 1) throw new Error('not served by the threads')
        setTimeout(() => process.exit(0), 100) // the connection's threads are idle in read(2) by now
      })().catch((e) => { console.error(e); process.exit(3) })`
    const child = spawn(process.execPath, ['-e', script, fx.goodImage], {stdio: ['ignore', 'ignore', 'pipe']})
    let err = ''
    child.stderr!.on('data', (d) => (err += d))
    const code = await new Promise<number | string>((resolve) => {
      const t = setTimeout(() => (child.kill('SIGKILL'), resolve('hung')), 10_000)
      child.on('exit', (c) => (clearTimeout(t), resolve(c ?? -1)))
    })
    assert.equal(code, 0, err)
  })

  it('when no thread can open the image, the main thread serves and says so', async () => {
    const lines: string[] = []
    const s = await start({image: path.join(fx.dir, 'missing.vdimg')}, (l) => lines.push(l))
    assert.equal(s.threadsPerConnection, 0)
    assert.equal(s.nbd.threads, undefined)
    assert.ok(lines.some((l) => /serving threads unavailable.*missing\.vdimg/.test(l)), lines.join('\n'))
    const r = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${(s.address as {port: number}).port}`])
    assert.equal(Number(r.stdout.trim()), fx.size)
    const c = await connect(s)
    await c.go({structured: true})
    await readOk(c, 4096, 4096, 1n)
  })
})

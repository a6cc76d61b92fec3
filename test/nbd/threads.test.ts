/**
 * The serving threads (src/serve/nbd/threads.ts on src/threads): after the handshake a connection is read,
 * served and answered by threads, each with its own instance of the source opened from its descriptor. What
 * only they can get wrong: replies from several threads interleaving, requests sent before the hand-off,
 * out-of-order answers, a graceful close while a thread sleeps in read(2) or is stuck writing to a client
 * that does not read, more connections than threads, descriptors left open, what they served missing from
 * the server's stats. Real sockets, real VDIMG images from the real writer, and a raw file with a ddrescue
 * mapfile.
 */
import * as assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {COUNTER} from '../../src/core/counters'
import type {BlockSource} from '../../src/core/source'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {startNbdServer, type NbdThreadOptions, type RunningNbdServer} from '../../src/serve/nbd'
import * as P from '../../src/serve/nbd/protocol'
import {RawImage} from '../../src/sources/raw'
import {BAD, isBadSector, makeFixture, run, SECTOR, type Fixture} from './fixture'
import {RawClient} from './rawclient'

describe('nbd serving threads', function () {
  this.timeout(60_000)
  let fx: Fixture
  let image: VdimgImage
  let raw: Buffer
  const clients: RawClient[] = []
  const servers: RunningNbdServer[] = []

  const start = async (threads: NbdThreadOptions = {}, log?: (l: string) => void, source: BlockSource = image) => {
    const s = await startNbdServer(new BlockServer(source), {
      listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
      exportName: 'good.vdimg',
      threads: {perConnection: 2, ...threads},
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
        const s = await startNbdServer(new BlockServer(image), {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, exportName: '', threads: {perConnection: 2}})
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

  /** `image` seen through a plain source: one that cannot be opened again on a thread (no descriptor). */
  const plain = (): BlockSource => ({size: image.size, sectorSize: image.sectorSize, read: (o, l) => image.read(o, l), close: async () => undefined})
  /** `image` as a source whose descriptor names another file (the threads open that one). */
  const elsewhere = (file: string): BlockSource => ({...plain(), descriptor: {kind: 'vdimg', path: file}})

  it('when no thread can open the source, the main thread serves and says so', async () => {
    const lines: string[] = []
    const s = await start({}, (l) => lines.push(l), elsewhere(path.join(fx.dir, 'missing.vdimg')))
    assert.equal(s.threadsPerConnection, 0)
    assert.equal(s.nbd.threads, undefined)
    assert.ok(lines.some((l) => /serving threads unavailable.*missing\.vdimg/.test(l)), lines.join('\n'))
    const r = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${(s.address as {port: number}).port}`])
    assert.equal(Number(r.stdout.trim()), fx.size)
    const c = await connect(s)
    await c.go({structured: true})
    await readOk(c, 4096, 4096, 1n)
  })

  it('a source that cannot be opened again (no descriptor) is served on the main thread', async () => {
    const lines: string[] = []
    const s = await start({}, (l) => lines.push(l), plain())
    assert.equal(s.nbd.threads, undefined)
    assert.ok(lines.some((l) => /serving threads unavailable.*cannot be opened on a serving thread/.test(l)), lines.join('\n'))
    const c = await connect(s)
    await c.go()
    await readOk(c, 8192, 4096, 1n)
  })

  it('perConnection 0 serves on the main thread', async () => {
    const s = await start({perConnection: 0})
    assert.equal(s.threadsPerConnection, 0)
    assert.equal(s.nbd.threads, undefined)
  })

  it('server.stats counts what the threads served: every read, and exactly the ones touching bad areas', async () => {
    const bad = await openImage(fx.image)
    try {
      const server = new BlockServer(bad)
      const s = await startNbdServer(server, {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, exportName: '', threads: {perConnection: 2}})
      servers.push(s)
      const c = await connect(s)
      await c.go({structured: true})
      // 400 pipelined reads of 1-64 sectors, a quarter of them starting in a bad area.
      const N = 400
      let x = 7
      let touching = 0
      const reqs: Buffer[] = []
      for (let i = 0; i < N; i++) {
        x = (x * 1103515245 + 12345) >>> 0
        const len = (1 + (x % 64)) * SECTOR
        const b = BAD[x % BAD.length]
        const off = i % 4 === 0 ? Math.min(b.offset, fx.size - len) : Math.floor(((x >>> 8) % (fx.size - len)) / SECTOR) * SECTOR
        if (BAD.some((r) => off < r.offset + r.length && r.offset < off + len)) touching++
        reqs.push(P.encodeRequest(P.NBD_CMD_READ, 0, BigInt(i + 1), off, len))
      }
      c.send(Buffer.concat(reqs))
      let eio = 0
      for (let i = 0; i < N; i++) {
        const r = await c.reply()
        if (r.error === P.NBD_EIO) eio++
        else assert.equal(r.error, 0)
      }
      assert.equal(eio, touching)
      assert.equal(s.nbd.threads!.stats.connections, 1)
      const live = server.stats
      assert.ok(live.reads >= N, JSON.stringify(live))
      assert.equal(live.badReads, touching)
      assert.equal(live.errors, touching)
      // All of it came from the threads' shared slots: the main thread's own slot served nothing.
      assert.equal(server.counters[COUNTER.reads], 0)
      await s.close()
      // Still there once the threads have exited.
      const after = server.stats
      assert.equal(after.reads, live.reads)
      assert.equal(after.badReads, touching)
      assert.equal(after.inFlight, 0)
    } finally {
      await bad.close()
    }
  })

  it('a raw file with a ddrescue mapfile on serving threads: exact bytes where finished, NBD_EIO at exactly the other sectors', async () => {
    // The map as GNU ddrescue writes it (header comments, status line, then pos/size/status in hex).
    const hex = (n: number) => `0x${n.toString(16).toUpperCase().padStart(8, '0')}`
    const STATUS = {'non-tried': '?', 'non-trimmed': '*', 'non-scraped': '/', 'bad-sector': '-'} as Record<string, string>
    const lines = [
      '# Mapfile. Created by GNU ddrescue version 1.27',
      '# Command line: ddrescue -d /dev/sdb disk.raw disk.map',
      '# Start time:   2026-11-20 10:00:00',
      '# Current time: 2026-11-20 10:04:31',
      '# Finished',
      '# current_pos  current_status  current_pass',
      `${hex(BAD[0].offset)}     +               5`,
      '#      pos        size  status',
    ]
    let at = 0
    for (const b of BAD) {
      if (b.offset > at) lines.push(`${hex(at)}  ${hex(b.offset - at)}  +`)
      lines.push(`${hex(b.offset)}  ${hex(b.length)}  ${STATUS[b.status]}`)
      at = b.offset + b.length
    }
    if (at < fx.size) lines.push(`${hex(at)}  ${hex(fx.size - at)}  +`)
    const map = path.join(fx.dir, 'ddrescue.map')
    fs.writeFileSync(map, lines.join('\n') + '\n')
    const data = fs.readFileSync(fx.raw)
    const source = RawImage.open(fx.raw, {mapfile: map})
    try {
      const server = new BlockServer(source)
      const s = await startNbdServer(server, {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, exportName: '', threads: {perConnection: 2}})
      servers.push(s)
      assert.equal(s.threadsPerConnection, 2)
      const uri = `nbd://127.0.0.1:${(s.address as {port: number}).port}`
      assert.equal(Number((await run('nbdinfo', ['--size', uri])).stdout.trim()), fx.size)
      const c = await connect(s)
      await c.go({structured: true})
      // Every sector, pipelined 1024 at a time.
      const sectors = fx.size / SECTOR
      let eio = 0
      for (let first = 0; first < sectors; first += 1024) {
        const reqs: Buffer[] = []
        for (let k = first; k < first + 1024; k++) reqs.push(P.encodeRequest(P.NBD_CMD_READ, 0, BigInt(k), k * SECTOR, SECTOR))
        c.send(Buffer.concat(reqs))
        for (let k = first; k < first + 1024; k++) {
          const r = await c.reply()
          const sector = Number(r.cookie)
          if (isBadSector(sector * SECTOR)) {
            assert.equal(r.error, P.NBD_EIO, `sector ${sector} read`)
            eio++
          } else {
            assert.equal(r.error, 0, `sector ${sector}`)
            assert.ok(r.payload.subarray(8).equals(data.subarray(sector * SECTOR, (sector + 1) * SECTOR)), `sector ${sector}`)
          }
        }
      }
      assert.equal(eio, BAD.reduce((n, b) => n + b.length / SECTOR, 0))
      // A read across a bad area fails, naming its first bad sector (NBD_REPLY_TYPE_ERROR_OFFSET).
      const b = BAD[2]
      c.request(P.NBD_CMD_READ, b.offset - 4096, 8192, 1n << 40n)
      const across = await c.reply()
      assert.equal(across.error, P.NBD_EIO)
      assert.equal(across.type, P.NBD_REPLY_TYPE_ERROR_OFFSET)
      assert.equal(across.payload.readBigUInt64BE(6 + across.payload.readUInt16BE(4)), BigInt(b.offset))
      // Served by the threads, each with its own RawImage opened from the descriptor, and counted here.
      assert.equal(s.nbd.threads!.stats.connections, 2)
      const st = server.stats
      assert.equal(st.reads, sectors + 1)
      assert.equal(st.badReads, eio + 1)
      assert.equal(server.counters[COUNTER.reads], 0)
    } finally {
      await source.close()
    }
  })
})

/**
 * The NFS server on serving threads (src/serve/nfs/threads.ts): each connection handed to a thread is served
 * there with the thread's own instance of the source, or its view of the overlay when writable. Shown by the
 * per-thread counter slots (the main thread's own slot stays at zero), with real clients: libnfs's nfs-cat
 * (Debian libnfs-utils 4.0) and raw RPC calls. Protocol numbers are written out from RFC 1813 here.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {COUNTER} from '../../src/core/counters'
import {spawn, spawnSync} from 'node:child_process'
import {BIN, sha256} from '../helpers'
import {IMAGE_SIZE, makeImages, nfsUrl, run, serve, type Images, type Served} from './fixture'
import {Body, RpcClient, opaque, str, u32, u64, type Reply} from './rpcclient'

const NFS = 100003
const MOUNT = 100005
const GETATTR = 1
const LOOKUP = 3
const READ = 6
const WRITE = 7
const COMMIT = 21
const UNSTABLE = 0

function ok(r: Reply): Body {
  assert.equal(r.replyStat, 0, 'reply denied')
  assert.equal(r.acceptStat, 0, `accept_stat ${r.acceptStat}`)
  return new Body(r.body)
}

async function fileHandle(c: RpcClient, name = 'disk.img'): Promise<Buffer> {
  const m = ok(await c.call(MOUNT, 3, 1, str('/')))
  assert.equal(m.u32(), 0)
  const root = Buffer.from(m.opaque())
  const l = ok(await c.call(NFS, 3, LOOKUP, Buffer.concat([opaque(root), str(name)])))
  assert.equal(l.u32(), 0)
  return Buffer.from(l.opaque())
}

/** READ3 of `count` bytes at `offset`: the data. */
async function read(c: RpcClient, fh: Buffer, offset: number, count: number): Promise<Buffer> {
  const b = ok(await c.call(NFS, 3, READ, Buffer.concat([opaque(fh), u64(offset), u32(count)])))
  assert.equal(b.u32(), 0, 'READ status')
  if (b.u32()) b.fattr3()
  b.u32() // count
  b.u32() // eof
  return Buffer.from(b.opaque())
}

async function mtimeOf(c: RpcClient, fh: Buffer): Promise<bigint> {
  const g = ok(await c.call(NFS, 3, GETATTR, opaque(fh)))
  assert.equal(g.u32(), 0)
  const a = g.fattr3()
  return BigInt(a.mtime) * 1_000_000_000n + BigInt(a.mtimeNs)
}

const slotSum = (s: Served, i: number): number => s.nfs.threadStats!.slots.reduce((n, slot) => n + slot[i], 0)

describe('nfs server on serving threads', function () {
  this.timeout(120000)
  let img: Images
  let dir: string
  const running: Served[] = []
  const clients: RpcClient[] = []

  before(async () => {
    img = await makeImages('vdev-nfst-')
  })
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-nfst-ovl-'))
  })
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close()
    for (const s of running.splice(0)) await s.stop()
    fs.rmSync(dir, {recursive: true, force: true})
  })
  after(() => img?.cleanup())

  async function start(opts: Parameters<typeof serve>[1] = {}): Promise<Served> {
    const s = await serve(img.goodImage, opts)
    running.push(s)
    return s
  }
  async function connect(s: Served): Promise<RpcClient> {
    const c = await RpcClient.connect(s.nfs.port)
    clients.push(c)
    return c
  }

  it('nfs-cat is served on a serving thread: its READs are counted in a thread slot, none on the main thread', async () => {
    const s = await start({threads: 2})
    assert.equal(s.nfs.threads, 2)
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.equals(img.data), 'bytes differ from the source')
    const st = s.nfs.threadStats!
    assert.ok(st.connections >= 1, 'a connection was handed to a thread')
    assert.equal(st.refused, 0)
    assert.equal(s.block.counters[COUNTER.reads], 0, 'the main thread served no READ')
    assert.equal(s.block.counters[COUNTER.bytes], 0)
    assert.ok(slotSum(s, COUNTER.bytes) >= IMAGE_SIZE, `threads read ${slotSum(s, COUNTER.bytes)} bytes`)
    // What `vdev list` and the shutdown line show: the sum over the slots.
    assert.equal(s.block.stats.reads, slotSum(s, COUNTER.reads))
    assert.equal(s.logs.filter((l) => /failed|error/i.test(l)).length, 0, s.logs.join('\n'))
  })

  it('a serving thread decodes ahead of nfs-cat\'s sequential READs in its idle turns: chunks decoded ahead and read from there', async () => {
    const s = await start({threads: 2})
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.equals(img.data), 'bytes differ from the source')
    const ra = s.image.readAheadStats()
    assert.ok(ra && ra.prefetched > 0 && ra.used > 0, `decode-ahead: ${JSON.stringify(ra)}`)
  })

  it('READs pipelined in batches while the client reads none of the replies: every reply holds its own bytes (READ data shares a reused buffer)', async () => {
    const s = await start({threads: 2})
    const c = await connect(s)
    const fh = await fileHandle(c)
    // 2400 READs of 8 KiB (19 MiB of replies, more than both sockets' buffers hold) in batches, the client
    // reading none: the thread reads each batch's data into its connection's READ buffer while replies of
    // the batch before wait in its socket's queue (the server stops reading while its writes are blocked,
    // and takes a new buffer while any reply is queued: src/serve/nfs/index.ts).
    c.socket.pause()
    const SIZE = 8192
    const offsets: number[] = []
    const replies: Array<Promise<Buffer>> = []
    for (let batch = 0; batch < 12; batch++) {
      for (let k = 0; k < 200; k++) {
        const o = (((batch * 200 + k) * 7919) % Math.floor((IMAGE_SIZE - SIZE) / 512)) * 512
        offsets.push(o)
        replies.push(read(c, fh, o, SIZE))
      }
      await new Promise((r) => setTimeout(r, 25))
    }
    c.socket.resume()
    const got = await Promise.all(replies)
    got.forEach((b, k) => assert.ok(b.equals(img.data.subarray(offsets[k], offsets[k] + SIZE)), `READ ${k} at ${offsets[k]}: bytes of another read`))
    assert.ok(slotSum(s, COUNTER.reads) >= offsets.length, 'served on a thread')
  })

  it('threads: 0 serves every connection on the main thread', async () => {
    const s = await start({threads: 0})
    assert.equal(s.nfs.threads, 0)
    assert.equal(s.nfs.threadStats, undefined)
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.equals(img.data))
    assert.ok(s.block.counters[COUNTER.bytes] >= IMAGE_SIZE)
  })

  it('a connection that finds no free thread is served on the main thread; each reads correct bytes', async () => {
    const s = await start({threads: 1})
    const a = await connect(s)
    const fa = await fileHandle(a) // a holds the one thread from here on
    const b = await connect(s)
    const fb = await fileHandle(b)
    const at = 1024 * 1024 + 4096
    assert.ok((await read(a, fa, at, 65536)).equals(img.data.subarray(at, at + 65536)))
    assert.ok((await read(b, fb, 0, 65536)).equals(img.data.subarray(0, 65536)))
    const st = s.nfs.threadStats!
    assert.equal(st.connections, 1)
    assert.equal(st.refused, 1)
    assert.equal(st.slots[0][COUNTER.bytes], 65536, 'the thread served connection a')
    assert.equal(s.block.counters[COUNTER.bytes], 65536, 'the main thread served connection b')
    // a ends: its thread goes back to the pool and takes the next connection.
    a.close()
    await a.closed
    let handed = false
    for (let i = 0; i < 50 && !handed; i++) {
      const c = await connect(s)
      await fileHandle(c)
      handed = s.nfs.threadStats!.connections === 2
      if (!handed) {
        c.close()
        await new Promise((r) => setTimeout(r, 20))
      }
    }
    assert.ok(handed, 'the freed thread served a later connection')
  })

  it('writable on threads: WRITE UNSTABLE + COMMIT through the thread view, read back by nfs-cat, the image untouched', async () => {
    const before = sha256(fs.readFileSync(img.goodImage))
    const overlay = path.join(dir, 'disk.vdovl')
    const s = await start({threads: 2, overlay})
    const a = await connect(s)
    const fa = await fileHandle(a)
    const b = await connect(s)
    const fb = await fileHandle(b)
    assert.equal(s.nfs.threadStats!.connections, 2, 'both connections on threads')
    const t0 = await mtimeOf(b, fb)
    const data = Buffer.alloc(3 * 4096 + 512, 0xa5)
    const at = 2 * 1024 * 1024 + 512 // inside the zero run and across chunks
    const w = ok(await a.call(NFS, 3, WRITE, Buffer.concat([opaque(fa), u64(at), u32(data.length, UNSTABLE), opaque(data)])))
    assert.equal(w.u32(), 0, 'WRITE status')
    if (w.u32()) w.at += 24 // pre_op_attr: wcc_attr
    if (w.u32()) w.fattr3()
    assert.equal(w.u32(), data.length)
    w.u32() // committed
    const verf = Buffer.from(w.b.subarray(w.at, w.at + 8))
    const c = ok(await a.call(NFS, 3, COMMIT, Buffer.concat([opaque(fa), u64(0), u32(0)])))
    assert.equal(c.u32(), 0, 'COMMIT status')
    if (c.u32()) c.at += 24
    if (c.u32()) c.fattr3()
    assert.ok(Buffer.from(c.b.subarray(c.at, c.at + 8)).equals(verf), 'one write verifier across WRITE and COMMIT')
    // The other connection, on the other thread: the new bytes (through its view) and the new mtime (shared).
    assert.ok((await read(b, fb, at, data.length)).equals(data))
    assert.ok((await mtimeOf(b, fb)) > t0, "a WRITE on one thread moves the file's mtime seen on another")
    assert.ok(slotSum(s, COUNTER.writes) >= 1 && slotSum(s, COUNTER.flushes) >= 1, 'the threads counted the WRITE and the COMMIT')
    assert.equal(s.block.counters[COUNTER.writes], 0)
    const expected = Buffer.from(img.data)
    data.copy(expected, at)
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.equals(expected), 'nfs-cat reads the image with the write merged')
    for (const x of clients.splice(0)) x.close()
    await running.splice(0)[0].stop()
    assert.equal(sha256(fs.readFileSync(img.goodImage)), before, 'the image file is unchanged')
    // Served again over the same overlay (on threads): the committed write is there.
    const s2 = await start({threads: 2, overlay})
    const r2 = await run('nfs-cat', [nfsUrl(s2.nfs.port)])
    assert.equal(r2.code, 0, r2.stderr)
    assert.ok(r2.stdout.equals(expected))
  })

  it('vdev serve --protocol nfs: SIGTERM while a client streams WRITEs on a serving thread exits 0, every answered write in the overlay', async () => {
    const overlay = path.join(dir, 'w.vdovl')
    const child = spawn(process.execPath, [BIN, 'serve', img.goodImage, '--protocol', 'nfs', '--overlay', overlay, '--threads', '2', '--json'], {stdio: ['ignore', 'pipe', 'pipe']})
    let err = ''
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()))
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let out = ''
        child.stdout!.on('data', (d: Buffer) => {
          out += d.toString()
          if (out.includes('\n')) resolve(out.split('\n')[0])
        })
        void exited.then((code) => reject(new Error(`vdev serve exited ${code}: ${err}`)))
      })
      const port = Number((JSON.parse(line) as {listen: string}).listen.split(':').pop())
      const c = await connect({nfs: {port}} as Served)
      const fh = await fileHandle(c, 'good.img')
      // Eight WRITEs in flight at all times, each 64 KiB of its own pattern at its own offset, until the server goes.
      const answered: number[] = []
      let next = 0
      let stopped = false
      const one = async (): Promise<void> => {
        while (!stopped) {
          const i = next++ % 64
          const data = Buffer.alloc(65536, i + 1)
          try {
            const r = await c.call(NFS, 3, WRITE, Buffer.concat([opaque(fh), u64(i * 65536), u32(data.length, 2), opaque(data)]))
            if (r.acceptStat === 0 && r.body.readUInt32BE(0) === 0) answered.push(i)
          } catch {
            return // the connection closed
          }
        }
      }
      const writers = Array.from({length: 8}, () => one())
      while (answered.length < 40) await new Promise((r) => setTimeout(r, 5))
      child.kill('SIGTERM')
      assert.equal(await exited, 0, err)
      stopped = true
      await Promise.all(writers)
      assert.match(err, /stopped; .* 0 failed; connections: 1 on serving threads, 0 on the main thread/)
      assert.doesNotMatch(err, /internal error|failed \(|is closed/)
      // The overlay is whole and holds every FILE_SYNC write that was answered.
      const info = spawnSync(process.execPath, [BIN, 'overlay', 'info', overlay, '--json'], {encoding: 'utf8'})
      assert.equal(info.status, 0, info.stderr)
      const s = await start({overlay, threads: 2})
      const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(answered.length >= 40)
      for (const i of new Set(answered)) assert.ok(r.stdout.subarray(i * 65536, (i + 1) * 65536).every((b) => b === i + 1), `write ${i} is missing`)
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL')
    }
  })
})

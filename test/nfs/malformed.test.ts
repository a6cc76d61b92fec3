/**
 * Malformed RPC against the real server: each gets a proper RPC error or a closed connection, never a
 * crash, and a real client (nfs-cat) keeps being served — during and after the abuse.
 */
import * as assert from 'node:assert/strict'
import * as net from 'node:net'
import {makeImages, nfsUrl, run, serve, type Images, type Served} from './fixture'
import {RpcClient, callMessage, frame, opaque, str, u32, u64} from './rpcclient'

const NFS = 100003
const MOUNT = 100005
// RFC 5531 §9 accept_stat / reject_stat / auth_stat
const PROG_UNAVAIL = 1
const PROG_MISMATCH = 2
const PROC_UNAVAIL = 3
const GARBAGE_ARGS = 4
const RPC_MISMATCH = 0
const AUTH_ERROR = 1
const AUTH_BADCRED = 1

describe('nfs server under malformed RPC', function () {
  this.timeout(30000)
  let img: Images
  let s: Served
  let rootFh: Buffer
  const clients: RpcClient[] = []

  async function connect(): Promise<RpcClient> {
    const c = await RpcClient.connect(s.nfs.port)
    clients.push(c)
    return c
  }

  /** Resolves true if the server closes the connection within `ms`. */
  function closesWithin(c: RpcClient, ms = 3000): Promise<boolean> {
    return Promise.race([c.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))])
  }

  before(async () => {
    img = await makeImages()
    s = await serve(img.goodImage)
    const c = await connect()
    const b = (await c.call(MOUNT, 3, 1, str('/'))).body
    rootFh = Buffer.from(b.subarray(8, 8 + b.readUInt32BE(4)))
  })
  afterEach(() => {
    for (const c of clients.splice(0)) c.close()
  })
  after(async () => {
    await s?.stop()
    img?.cleanup()
  })

  it('unknown program → PROG_UNAVAIL; unknown version → PROG_MISMATCH 3..3; unknown procedure → PROC_UNAVAIL', async () => {
    const c = await connect()
    assert.equal((await c.call(100227, 3, 0)).acceptStat, PROG_UNAVAIL) // NFS_ACL: not served
    assert.equal((await c.call(100021, 4, 0)).acceptStat, PROG_UNAVAIL) // NLM: not served
    for (const [prog, vers] of [
      [NFS, 2],
      [NFS, 4],
      [MOUNT, 1],
    ]) {
      const r = await c.call(prog, vers, 0)
      assert.equal(r.acceptStat, PROG_MISMATCH, `${prog} v${vers}`)
      assert.deepEqual([r.body.readUInt32BE(0), r.body.readUInt32BE(4)], [3, 3])
    }
    const pm = await c.call(100000, 4, 0)
    assert.equal(pm.acceptStat, PROG_MISMATCH)
    assert.deepEqual([pm.body.readUInt32BE(0), pm.body.readUInt32BE(4)], [2, 2])
    assert.equal((await c.call(NFS, 3, 22)).acceptStat, PROC_UNAVAIL)
    assert.equal((await c.call(NFS, 3, 0xffffffff)).acceptStat, PROC_UNAVAIL)
    assert.equal((await c.call(MOUNT, 3, 6)).acceptStat, PROC_UNAVAIL)
  })

  it('truncated or over-long arguments → GARBAGE_ARGS', async () => {
    const c = await connect()
    const cases: Array<[number, number, Buffer]> = [
      [NFS, 1, Buffer.from([0, 0])], // GETATTR: half a length word
      [NFS, 1, u32(24)], // handle length without the handle
      [NFS, 1, u32(0x7fffffff)], // a handle "length" far past the record
      [NFS, 6, opaque(rootFh)], // READ without offset and count
      [NFS, 6, Buffer.concat([opaque(rootFh), u64(0)])], // READ without count
      [NFS, 3, opaque(rootFh)], // LOOKUP without a name
      [NFS, 16, Buffer.concat([opaque(rootFh), u64(0), Buffer.alloc(4)])], // READDIR: half a verifier
      [MOUNT, 1, str('/'.repeat(1025))], // dirpath longer than MNTPATHLEN (1024)
      [MOUNT, 1, u32(5)], // dirpath length, no bytes
      [100000, 3, u32(NFS, 3)], // portmap GETPORT with half a mapping
    ]
    for (const [prog, proc, args] of cases) {
      const r = await c.call(prog, prog === 100000 ? 2 : 3, proc, args)
      assert.equal(r.replyStat, 0)
      assert.equal(r.acceptStat, GARBAGE_ARGS, `program ${prog} procedure ${proc}`)
    }
    assert.equal((await c.call(NFS, 3, 1, Buffer.alloc(0))).acceptStat, GARBAGE_ARGS) // no arguments at all
    assert.ok(s.logs.some((l) => l.includes('truncated')))
  })

  it('wrong RPC version → MSG_DENIED RPC_MISMATCH 2..2', async () => {
    const c = await connect()
    for (const v of [1, 3, 0xffffffff]) {
      const r = await c.call(NFS, 3, 0, undefined, {rpcvers: v})
      assert.equal(r.replyStat, 1)
      assert.equal(r.rejectStat, RPC_MISMATCH)
      assert.deepEqual(r.rejectWords, [2, 2])
    }
  })

  it('credentials over 400 bytes or an undecodable AUTH_SYS body → AUTH_ERROR AUTH_BADCRED', async () => {
    const c = await connect()
    for (const cred of [Buffer.alloc(401), Buffer.alloc(6), Buffer.concat([u32(1), str('m'), u32(0, 0, 17)])]) {
      const r = await c.call(NFS, 3, 0, undefined, {flavor: 1, cred})
      assert.equal(r.replyStat, 1, `cred of ${cred.length} bytes`)
      assert.equal(r.rejectStat, AUTH_ERROR)
      assert.equal(r.rejectWords![0], AUTH_BADCRED)
    }
  })

  it('a record split into many fragments (one empty), delivered byte by byte, is one call', async () => {
    const c = await connect()
    const msg = callMessage(4242, NFS, 3, 1, opaque(rootFh))
    const parts = [msg.subarray(0, 10), Buffer.alloc(0), msg.subarray(10, 37), msg.subarray(37)]
    const bytes = Buffer.concat(
      parts.map((p, i) => Buffer.concat([u32(((i === parts.length - 1 ? 0x80000000 : 0) | p.length) >>> 0), p])),
    )
    const reply = c.expect(4242)
    for (const byte of bytes) c.write(Buffer.from([byte]))
    const r = await reply
    assert.equal(r.acceptStat, 0)
    assert.equal(r.body.readUInt32BE(0), 0) // NFS3_OK
  })

  it('pipelined calls in one write are all answered, matched by xid', async () => {
    const c = await connect()
    const xids = Array.from({length: 64}, (_, i) => 9000 + i)
    const replies = Promise.all(xids.map((x) => c.expect(x)))
    c.write(Buffer.concat(xids.map((x) => frame(callMessage(x, NFS, 3, 0)))))
    const rs = await replies
    assert.deepEqual(
      rs.map((r) => r.xid),
      xids,
    )
  })

  it('a record mark claiming a huge record closes the connection at once (nothing is allocated)', async () => {
    for (const mark of [0xffffffff, 0x7fffffff, 0x80000000 | ((1 << 20) + 8193)]) {
      const c = await connect()
      c.write(u32(mark >>> 0))
      assert.equal(await closesWithin(c), true, `mark 0x${mark.toString(16)}`)
    }
    // The cap applies to a record's total, across fragments.
    const c = await connect()
    const frag = Buffer.concat([u32(600 * 1024), Buffer.alloc(600 * 1024)])
    c.write(Buffer.concat([frag, frag]))
    assert.equal(await closesWithin(c), true)
  })

  it('a reply-type message, or a record too short for a call header, closes the connection', async () => {
    for (const msg of [u32(77, 1, 0, 0, 0, 0), u32(77), Buffer.alloc(0), u32(78, 0, 2, NFS)]) {
      const c = await connect()
      c.write(frame(msg))
      assert.equal(await closesWithin(c), true, `message of ${msg.length} bytes`)
    }
  })

  it('abrupt disconnects mid-record and mid-call leave the server serving', async () => {
    for (let i = 0; i < 10; i++) {
      const c = await connect()
      const m = frame(callMessage(1, NFS, 3, 6, Buffer.concat([opaque(rootFh), u64(0), u32(1 << 20)])))
      c.write(i % 2 ? m.subarray(0, 13) : m)
      c.close()
    }
    const sock = net.connect(s.nfs.port, '127.0.0.1')
    await new Promise((r) => sock.on('connect', r))
    sock.resetAndDestroy()
  })

  it('while another connection sends garbage, nfs-cat still reads the whole file; the server is still up', async () => {
    const noisy = await connect()
    const stop = {v: false}
    const spam = (async () => {
      let x = 1
      while (!stop.v && !noisy.socket.destroyed) {
        noisy.write(frame(callMessage(x++, NFS, 3, 1, Buffer.from([1, 2, 3]))))
        await new Promise((r) => setTimeout(r, 1))
      }
    })()
    const r = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    stop.v = true
    await spam
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.equals(img.data))
    const after = await connect()
    assert.equal((await after.call(NFS, 3, 0)).acceptStat, 0)
  })
})

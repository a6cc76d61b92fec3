/**
 * The NFS server read-write over a copy-on-write overlay (`vdev serve IMG --protocol nfs --overlay FILE`):
 * WRITE with each stability level, COMMIT and its verifier across a restart, SETATTR, ACCESS/GETATTR/FSINFO,
 * writes past the end, a full file system under the overlay, malformed WRITE counts; what was written read
 * back by libnfs's nfs-cat (Debian libnfs-utils 4.0) and the image file's hash unchanged. Protocol numbers
 * are written out from RFC 1813 here, not imported from the server.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {spawn, type ChildProcess} from 'node:child_process'
import {BIN, prng, sha256} from '../helpers'
import {IMAGE_SIZE, makeImages, nfsUrl, run, serve, type Images, type Served} from './fixture'
import {Body, RpcClient, opaque, str, u32, u64, type Reply} from './rpcclient'

const NFS = 100003
const MOUNT = 100005
// RFC 1813 §3 procedures
const GETATTR = 1
const SETATTR = 2
const ACCESS = 4
const READ = 6
const WRITE = 7
const CREATE = 8
const REMOVE = 12
const FSSTAT = 18
const FSINFO = 19
const COMMIT = 21
// RFC 1813 §2.6 nfsstat3
const OK = 0
const PERM = 1
const ACCES = 13
const INVAL = 22
const FBIG = 27
const NOSPC = 28
const ROFS = 30
const NOT_SYNC = 10002
// RFC 1813 §3.3.7 stable_how
const UNSTABLE = 0
const DATA_SYNC = 1
const FILE_SYNC = 2
// RFC 1813 §3.3.4 ACCESS bits
const A_READ = 0x01
const A_MODIFY = 0x04
const A_EXTEND = 0x08
const A_DELETE = 0x10
// RFC 5531 §9
const GARBAGE_ARGS = 4

const fileHash = (f: string): string => sha256(fs.readFileSync(f))

function ok(r: Reply): Body {
  assert.equal(r.replyStat, 0, 'reply denied')
  assert.equal(r.acceptStat, 0, `accept_stat ${r.acceptStat}`)
  return new Body(r.body)
}

/** RFC 1813 §2.6 sattr3. */
function sattr(s: {mode?: number; size?: bigint | number; mtime?: {s: number; ns: number}} = {}): Buffer {
  const parts = [
    s.mode === undefined ? u32(0) : u32(1, s.mode),
    u32(0), // uid
    u32(0), // gid
    s.size === undefined ? u32(0) : Buffer.concat([u32(1), u64(s.size)]),
    u32(0), // atime: DONT_CHANGE
    s.mtime === undefined ? u32(0) : u32(2, s.mtime.s, s.mtime.ns), // SET_TO_CLIENT_TIME
  ]
  return Buffer.concat(parts)
}

function writeArgs(fh: Buffer, offset: number | bigint, data: Buffer, stable: number, count = data.length): Buffer {
  return Buffer.concat([opaque(fh), u64(offset), u32(count, stable), opaque(data)])
}

async function handles(c: RpcClient): Promise<{root: Buffer; file: Buffer}> {
  const m = ok(await c.call(MOUNT, 3, 1, str('/')))
  assert.equal(m.u32(), 0)
  const root = Buffer.from(m.opaque())
  const l = ok(await c.call(NFS, 3, 3, Buffer.concat([opaque(root), str('disk.img')])))
  assert.equal(l.u32(), OK)
  return {root, file: Buffer.from(l.opaque())}
}

describe('nfs server read-write over an overlay', function () {
  this.timeout(120000)
  let img: Images
  let dir: string
  const running: Served[] = []
  const clients: RpcClient[] = []

  before(async () => {
    img = await makeImages('vdev-nfsw-')
  })
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-nfsw-ovl-'))
  })
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close()
    for (const s of running.splice(0)) await s.stop()
    fs.rmSync(dir, {recursive: true, force: true})
  })
  after(() => img?.cleanup())

  async function start(opts: Parameters<typeof serve>[1] = {}, image = img.goodImage): Promise<{s: Served; c: RpcClient; fh: {root: Buffer; file: Buffer}}> {
    const s = await serve(image, {overlay: path.join(dir, 'disk.vdovl'), ...opts})
    running.push(s)
    const c = await RpcClient.connect(s.nfs.port)
    clients.push(c)
    return {s, c, fh: await handles(c)}
  }

  async function stop(s: Served): Promise<void> {
    running.splice(running.indexOf(s), 1)
    await s.stop()
  }

  it('GETATTR says mode 0644, ACCESS grants modify and extend (not delete), FSINFO gives wtmax/wtpref/wtmult and the size as maxfilesize', async () => {
    const {c, fh} = await start({wtmax: 65536})
    const g = ok(await c.call(NFS, 3, GETATTR, opaque(fh.file)))
    assert.equal(g.u32(), OK)
    const a = g.fattr3()
    assert.equal(a.mode & 0o7777, 0o644)
    assert.equal(a.size, BigInt(IMAGE_SIZE))
    const acc = ok(await c.call(NFS, 3, ACCESS, Buffer.concat([opaque(fh.file), u32(0x3f)])))
    assert.equal(acc.u32(), OK)
    acc.postOpAttr()
    assert.equal(acc.u32(), A_READ | A_MODIFY | A_EXTEND)
    const dirAcc = ok(await c.call(NFS, 3, ACCESS, Buffer.concat([opaque(fh.root), u32(A_MODIFY | A_EXTEND | A_DELETE)])))
    assert.equal(dirAcc.u32(), OK)
    dirAcc.postOpAttr()
    assert.equal(dirAcc.u32(), 0, 'the directory itself stays read-only')
    const fi = ok(await c.call(NFS, 3, FSINFO, opaque(fh.root)))
    assert.equal(fi.u32(), OK)
    fi.postOpAttr()
    fi.u32() // rtmax
    fi.u32() // rtpref
    fi.u32() // rtmult
    assert.equal(fi.u32(), 65536, 'wtmax')
    assert.equal(fi.u32(), 65536, 'wtpref')
    assert.equal(fi.u32(), 4096, 'wtmult')
    fi.u32() // dtpref
    assert.equal(fi.u64(), BigInt(IMAGE_SIZE), 'maxfilesize: the file cannot grow')
    fi.u64() // time_delta
    assert.equal(fi.u32() & 0x10, 0x10, 'FSF3_CANSETTIME')
    const st = ok(await c.call(NFS, 3, FSSTAT, opaque(fh.root)))
    assert.equal(st.u32(), OK)
    st.postOpAttr()
    assert.equal(st.u64(), BigInt(IMAGE_SIZE), 'tbytes')
  })

  it('WRITE at each stability level: committed is honest, one verifier; nfs-cat reads back the new bytes; the image file is untouched', async () => {
    const before = fileHash(img.goodImage)
    const {s, c, fh} = await start()
    const expected = Buffer.from(img.data)
    const writes: Array<{at: number; len: number; stable: number}> = [
      {at: 0, len: 4096, stable: UNSTABLE},
      {at: 1_000_003, len: 70_001, stable: DATA_SYNC}, // not sector-aligned at either end
      {at: IMAGE_SIZE - 1000, len: 1000, stable: FILE_SYNC}, // up to the very end
      {at: 3 << 20, len: 1 << 20, stable: UNSTABLE},
    ]
    let verf: Buffer | undefined
    for (const [i, w] of writes.entries()) {
      const data = prng(100 + i, w.len)
      data.copy(expected, w.at)
      const flushesBefore = s.block.writeStats.flushes
      const b = ok(await c.call(NFS, 3, WRITE, writeArgs(fh.file, w.at, data, w.stable)))
      assert.equal(b.u32(), OK, `write ${i}`)
      const wcc = b.wcc()
      assert.equal(wcc.before?.size, BigInt(IMAGE_SIZE))
      assert.equal(wcc.after?.size, BigInt(IMAGE_SIZE))
      assert.ok(wcc.after!.mtime * 1e9 + wcc.after!.mtimeNs > wcc.before!.mtime * 1e9 + wcc.before!.mtimeNs, 'mtime moves on with a write')
      assert.equal(b.u32(), w.len, 'count')
      assert.equal(b.u32(), w.stable, 'committed is what was asked')
      const v = Buffer.from(b.b.subarray(b.at, b.at + 8))
      if (verf) assert.ok(v.equals(verf), 'the verifier stays the same for the life of the server')
      verf = v
      assert.equal(s.block.writeStats.flushes, flushesBefore, 'a WRITE never counts as a flush')
    }
    const flushes = s.block.writeStats.flushes
    const cm = ok(await c.call(NFS, 3, COMMIT, Buffer.concat([opaque(fh.file), u64(0), u32(0)])))
    assert.equal(cm.u32(), OK)
    cm.wcc()
    assert.ok(Buffer.from(cm.b.subarray(cm.at, cm.at + 8)).equals(verf!), 'COMMIT returns the WRITE verifier')
    assert.equal(s.block.writeStats.flushes, flushes + 1, 'COMMIT flushed the overlay')
    // Read back over the protocol and with a real client.
    const r = ok(await c.call(NFS, 3, READ, Buffer.concat([opaque(fh.file), u64(1_000_003), u32(70_001)])))
    assert.equal(r.u32(), OK)
    r.postOpAttr()
    r.u32()
    r.u32()
    assert.ok(r.opaque().equals(expected.subarray(1_000_003, 1_070_004)))
    const cat = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.equal(cat.code, 0, cat.stderr)
    assert.ok(cat.stdout.equals(expected), 'nfs-cat reads the image with the writes in it')
    assert.equal(fileHash(img.goodImage), before, 'the image file changed')
  })

  it('COMMIT after a restart on the same overlay gives a new verifier; the committed data is still there', async () => {
    const first = await start()
    const data = prng(7, 65536)
    const w = ok(await first.c.call(NFS, 3, WRITE, writeArgs(first.fh.file, 65536, data, UNSTABLE)))
    assert.equal(w.u32(), OK)
    w.wcc()
    w.u32()
    w.u32()
    const verf1 = Buffer.from(w.b.subarray(w.at, w.at + 8))
    const cm = ok(await first.c.call(NFS, 3, COMMIT, Buffer.concat([opaque(first.fh.file), u64(0), u32(0)])))
    assert.equal(cm.u32(), OK)
    await stop(first.s)
    const second = await start()
    assert.ok(second.fh.file.equals(first.fh.file), 'file handles survive the restart')
    const cm2 = ok(await second.c.call(NFS, 3, COMMIT, Buffer.concat([opaque(second.fh.file), u64(0), u32(0)])))
    assert.equal(cm2.u32(), OK)
    cm2.wcc()
    const verf2 = Buffer.from(cm2.b.subarray(cm2.at, cm2.at + 8))
    assert.ok(!verf2.equals(verf1), 'a restarted server must change its write verifier (RFC 1813 §3.3.7)')
    const cat = await run('nfs-cat', [nfsUrl(second.s.nfs.port)])
    assert.equal(cat.code, 0, cat.stderr)
    assert.ok(cat.stdout.subarray(65536, 131072).equals(data), 'the written block is there after the restart')
    assert.ok(cat.stdout.subarray(0, 65536).equals(img.data.subarray(0, 65536)), 'the rest is the image')
  })

  it('writes past the end are NFS3ERR_FBIG and write nothing; a zero-byte write anywhere succeeds', async () => {
    const {s, c, fh} = await start()
    for (const [at, len] of [
      [IMAGE_SIZE, 1],
      [IMAGE_SIZE - 512, 1024],
      [2 ** 53, 512],
      [0xffffffffffffffffn, 4096],
    ] as Array<[number | bigint, number]>) {
      const b = ok(await c.call(NFS, 3, WRITE, writeArgs(fh.file, at, Buffer.alloc(len, 0xee), FILE_SYNC)))
      assert.equal(b.u32(), FBIG, `WRITE ${len} at ${at}`)
      const wcc = b.wcc()
      assert.equal(wcc.after?.size, BigInt(IMAGE_SIZE))
      assert.ok(b.done, 'WRITE3resfail is wcc_data only')
    }
    const z = ok(await c.call(NFS, 3, WRITE, writeArgs(fh.file, IMAGE_SIZE + 10, Buffer.alloc(0), UNSTABLE)))
    assert.equal(z.u32(), OK)
    assert.equal(s.block.writeStats.writes, 0, 'nothing reached the overlay')
    const cat = await run('nfs-cat', [nfsUrl(s.nfs.port)])
    assert.ok(cat.stdout.equals(img.data))
  })

  it('SETATTR: the same size is a no-op, another size NFS3ERR_INVAL, mode NFS3ERR_PERM, mtime kept, a stale guard NFS3ERR_NOT_SYNC', async () => {
    const {c, fh} = await start()
    const call = async (attrs: Buffer, guard?: {s: number; ns: number}): Promise<{status: number; body: Body}> => {
      const b = ok(await c.call(NFS, 3, SETATTR, Buffer.concat([opaque(fh.file), attrs, guard ? u32(1, guard.s, guard.ns) : u32(0)])))
      return {status: b.u32(), body: b}
    }
    assert.equal((await call(sattr({size: IMAGE_SIZE}))).status, OK)
    assert.equal((await call(sattr({size: 0}))).status, INVAL, 'truncate to 0')
    assert.equal((await call(sattr({size: IMAGE_SIZE + 1}))).status, INVAL, 'grow by one byte')
    assert.equal((await call(sattr({size: 0xffffffffffffffffn}))).status, INVAL)
    assert.equal((await call(sattr({mode: 0o600}))).status, PERM)
    assert.equal((await call(sattr({mode: 0o644}))).status, OK, 'mode unchanged')
    const set = await call(sattr({mtime: {s: 1_000_000_000, ns: 5}}))
    assert.equal(set.status, OK)
    const wcc = set.body.wcc()
    assert.equal(wcc.after?.mtime, 1_000_000_000)
    assert.equal(wcc.after?.mtimeNs, 5)
    const g = ok(await c.call(NFS, 3, GETATTR, opaque(fh.file)))
    g.u32()
    const a = g.fattr3()
    assert.equal(a.mtime, 1_000_000_000)
    assert.equal((await call(sattr({size: IMAGE_SIZE}), {s: a.ctime, ns: a.ctimeNs + 1})).status, NOT_SYNC)
    assert.equal((await call(sattr({size: IMAGE_SIZE}), {s: a.ctime, ns: a.ctimeNs})).status, OK)
  })

  it('the tree stays fixed: CREATE and REMOVE are NFS3ERR_ACCES (not ROFS: the file is writable)', async () => {
    const {c, fh} = await start()
    const cr = ok(await c.call(NFS, 3, CREATE, Buffer.concat([opaque(fh.root), str('new.img'), u32(0), sattr({mode: 0o644})])))
    assert.equal(cr.u32(), ACCES)
    const rm = ok(await c.call(NFS, 3, REMOVE, Buffer.concat([opaque(fh.root), str('disk.img')])))
    assert.equal(rm.u32(), ACCES)
    // libnfs's nfs-cp creates its destination and truncates it (O_TRUNC): neither can be done here.
    const cp = await run('nfs-cp', [img.raw, nfsUrl(running[0].nfs.port)])
    assert.notEqual(cp.code, 0)
    assert.match(cp.stderr, /NFS3ERR_ACCES/)
  })

  it('malformed WRITEs: count not the data length, count 2^32-1, a bad stable_how → GARBAGE_ARGS, nothing written, the server keeps serving', async () => {
    const {s, c, fh} = await start()
    const data = Buffer.alloc(4096, 0x55)
    for (const args of [
      writeArgs(fh.file, 0, data, UNSTABLE, 4095),
      writeArgs(fh.file, 0, data, UNSTABLE, 4097),
      writeArgs(fh.file, 0, data, 3),
      // The data's own length field claims 2^32-1 bytes: checked against what the record holds.
      Buffer.concat([opaque(fh.file), u64(0), u32(0xffffffff, UNSTABLE, 0xffffffff), data]),
      Buffer.concat([opaque(fh.file), u64(0), u32(4096, UNSTABLE)]),
    ]) {
      const r = await c.call(NFS, 3, WRITE, args)
      assert.equal(r.replyStat, 0)
      assert.equal(r.acceptStat, GARBAGE_ARGS)
    }
    assert.equal(s.block.writeStats.writes, 0)
    const good = ok(await c.call(NFS, 3, WRITE, writeArgs(fh.file, 0, data, UNSTABLE)))
    assert.equal(good.u32(), OK)
  })

  it('an overlay on a full file system: WRITE answers NFS3ERR_NOSPC, the overlay stays valid', async function () {
    if (process.getuid?.() !== 0) this.skip() // mounting a small tmpfs needs root
    const mnt = path.join(dir, 'small')
    fs.mkdirSync(mnt)
    const m = await run('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mnt])
    assert.equal(m.code, 0, m.stderr)
    try {
      const {s, c, fh} = await start({overlay: path.join(mnt, 'full.vdovl')})
      let status = OK
      let at = 0
      for (; at < 4 << 20 && status === OK; at += 65536) {
        const b = ok(await c.call(NFS, 3, WRITE, writeArgs(fh.file, at, prng(at, 65536), FILE_SYNC)))
        status = b.u32()
      }
      assert.equal(status, NOSPC, 'the write that did not fit')
      assert.ok(s.logs.some((l) => /WRITE of 65536 bytes at \d+ failed/.test(l)), s.logs.join('\n'))
      // What was acknowledged reads back; the failed range still reads as the image.
      const failedAt = at - 65536
      const cat = await run('nfs-cat', [nfsUrl(s.nfs.port)])
      assert.equal(cat.code, 0, cat.stderr)
      assert.ok(cat.stdout.subarray(0, 65536).equals(prng(0, 65536)))
      assert.ok(cat.stdout.subarray(failedAt, failedAt + 65536).equals(img.data.subarray(failedAt, failedAt + 65536)))
      await stop(s)
      const again = await start({overlay: path.join(mnt, 'full.vdovl')})
      const r = ok(await again.c.call(NFS, 3, READ, Buffer.concat([opaque(again.fh.file), u64(0), u32(65536)])))
      assert.equal(r.u32(), OK)
      r.postOpAttr()
      r.u32()
      r.u32()
      assert.ok(r.opaque().equals(prng(0, 65536)), 'the overlay reopens with the acknowledged writes')
      await stop(again.s)
    } finally {
      await run('umount', [mnt])
    }
  })

  it('without an overlay the export stays read-only: mode 0444, NFS3ERR_ROFS for WRITE, COMMIT and SETATTR', async () => {
    const s = await serve(img.goodImage)
    running.push(s)
    const c = await RpcClient.connect(s.nfs.port)
    clients.push(c)
    const fh = await handles(c)
    const g = ok(await c.call(NFS, 3, GETATTR, opaque(fh.file)))
    g.u32()
    assert.equal(g.fattr3().mode & 0o7777, 0o444)
    for (const [proc, args] of [
      [WRITE, writeArgs(fh.file, 0, Buffer.alloc(512), FILE_SYNC)],
      [COMMIT, Buffer.concat([opaque(fh.file), u64(0), u32(0)])],
      [SETATTR, Buffer.concat([opaque(fh.file), sattr({size: IMAGE_SIZE}), u32(0)])],
    ] as Array<[number, Buffer]>) {
      const b = ok(await c.call(NFS, 3, proc, args))
      assert.equal(b.u32(), ROFS, `procedure ${proc}`)
    }
  })

  describe('vdev serve --protocol nfs --overlay / --scratch', () => {
    const children: ChildProcess[] = []
    afterEach(() => {
      for (const ch of children.splice(0)) if (ch.exitCode === null && ch.signalCode === null) ch.kill('SIGKILL')
    })

    async function serveCli(args: string[]): Promise<{child: ChildProcess; ready: Record<string, unknown>; port: number; exited: Promise<number | null>; stderr: () => string}> {
      const child = spawn(process.execPath, [BIN, 'serve', '--protocol', 'nfs', '--json', ...args], {stdio: ['ignore', 'pipe', 'pipe']})
      children.push(child)
      let err = ''
      child.stderr.on('data', (d: Buffer) => (err += d.toString()))
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
      const line = await new Promise<string>((resolve, reject) => {
        let out = ''
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString()
          if (out.includes('\n')) resolve(out.split('\n')[0])
        })
        void exited.then((code) => reject(new Error(`vdev serve exited ${code} before its ready line: ${err}`)))
      })
      const ready = JSON.parse(line) as Record<string, unknown>
      return {child, ready, port: Number(String(ready.listen).split(':').pop()), exited, stderr: () => err}
    }

    it('--overlay FILE: the ready line names it, writes land in it and survive a restart, the image is untouched', async () => {
      const before = fileHash(img.goodImage)
      const overlay = path.join(dir, 'cli.vdovl')
      const a = await serveCli([img.goodImage, '--overlay', overlay])
      assert.equal(a.ready.overlay, overlay)
      assert.equal(a.ready.file, 'good.img')
      const c = await RpcClient.connect(a.port)
      clients.push(c)
      const m = ok(await c.call(MOUNT, 3, 1, str('/')))
      m.u32()
      const root = Buffer.from(m.opaque())
      const l = ok(await c.call(NFS, 3, 3, Buffer.concat([opaque(root), str('good.img')])))
      assert.equal(l.u32(), OK)
      const file = Buffer.from(l.opaque())
      const data = prng(9, 8192)
      const w = ok(await c.call(NFS, 3, WRITE, writeArgs(file, 8192, data, FILE_SYNC)))
      assert.equal(w.u32(), OK)
      a.child.kill('SIGTERM')
      assert.equal(await a.exited, 0)
      assert.match(a.stderr(), /1 writes \(8192 bytes\)/)
      const b = await serveCli([img.goodImage, '--overlay', overlay])
      const cat = await run('nfs-cat', [nfsUrl(b.port, 'good.img')])
      assert.equal(cat.code, 0, cat.stderr)
      assert.ok(cat.stdout.subarray(8192, 16384).equals(data))
      assert.ok(cat.stdout.subarray(0, 8192).equals(img.data.subarray(0, 8192)))
      b.child.kill('SIGTERM')
      assert.equal(await b.exited, 0)
      assert.equal(fileHash(img.goodImage), before)
    })

    it('--scratch serves read-write and deletes its overlay at exit', async () => {
      const a = await serveCli([img.goodImage, '--scratch'])
      const overlay = String(a.ready.overlay)
      assert.equal(a.ready.scratch, true)
      assert.ok(fs.existsSync(overlay))
      a.child.kill('SIGTERM')
      assert.equal(await a.exited, 0)
      assert.ok(!fs.existsSync(overlay), 'the scratch overlay is removed at exit')
    })
  })
})

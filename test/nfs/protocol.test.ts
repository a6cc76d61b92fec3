/**
 * Every procedure of the three programs, called over a real TCP connection to the real server serving a
 * real .vdimg. Protocol numbers are written out here from the RFCs (not imported from the server), so a
 * wrong constant in the server cannot agree with itself.
 */
import * as assert from 'node:assert/strict'
import * as os from 'node:os'
import {BAD, IMAGE_SIZE, makeImages, run, serve, type Images, type Served} from './fixture'
import {AUTH_NONE, Body, RpcClient, opaque, str, u32, u64, type Reply} from './rpcclient'

// RFC 1833 §3, RFC 1813 §3 and §5.
const PMAP = 100000
const NFS = 100003
const MOUNT = 100005
const IPPROTO_TCP = 6
const IPPROTO_UDP = 17
// RFC 1813 §2.6 nfsstat3
const OK = 0
const NOENT = 2
const IO = 5
const NOTDIR = 20
const ISDIR = 21
const INVAL = 22
const ROFS = 30
const NAMETOOLONG = 63
const STALE = 70
const BADHANDLE = 10001
const BAD_COOKIE = 10003
const TOOSMALL = 10005
// RFC 5531 §9
const GARBAGE_ARGS = 4
const PROC_UNAVAIL = 3
const AUTH_ERROR = 1
const AUTH_BADCRED = 1
const AUTH_TOOWEAK = 5

function ok(r: Reply): Body {
  assert.equal(r.replyStat, 0, 'reply denied')
  assert.equal(r.acceptStat, 0, `accept_stat ${r.acceptStat}`)
  return new Body(r.body)
}

describe('nfs server protocol (all procedures, over TCP)', function () {
  this.timeout(30000)
  let img: Images
  let s: Served
  let c: RpcClient
  let rootFh: Buffer
  let fileFh: Buffer

  async function mnt(client: RpcClient, path = '/'): Promise<{status: number; fh?: Buffer; flavors?: number[]}> {
    const b = ok(await client.call(MOUNT, 3, 1, str(path)))
    const status = b.u32()
    if (status !== 0) return {status}
    const fh = Buffer.from(b.opaque())
    const n = b.u32()
    const flavors: number[] = []
    for (let i = 0; i < n; i++) flavors.push(b.u32())
    return {status, fh, flavors}
  }

  async function lookup(client: RpcClient, dir: Buffer, name: string): Promise<Body> {
    return ok(await client.call(NFS, 3, 3, Buffer.concat([opaque(dir), str(name)])))
  }

  async function read(offset: number, count: number, fh = fileFh) {
    const b = ok(await c.call(NFS, 3, 6, Buffer.concat([opaque(fh), u64(offset), u32(count)])))
    const status = b.u32()
    const attrs = b.postOpAttr()
    if (status !== OK) return {status, attrs}
    const n = b.u32()
    const eof = b.u32() === 1
    const data = Buffer.from(b.opaque())
    assert.equal(data.length, n)
    assert.ok(b.done)
    return {status, attrs, eof, data}
  }

  before(async () => {
    img = await makeImages()
    s = await serve(img.badImage)
    c = await RpcClient.connect(s.nfs.port)
    const m = await mnt(c)
    assert.equal(m.status, 0)
    rootFh = m.fh!
    const b = await lookup(c, rootFh, 'disk.img')
    assert.equal(b.u32(), OK)
    fileFh = Buffer.from(b.opaque())
  })
  after(async () => {
    c?.close()
    await s?.stop()
    img?.cleanup()
  })

  describe('portmapper (program 100000 v2)', () => {
    it('NULL answers', async () => {
      assert.equal(ok(await c.call(PMAP, 2, 0)).b.length, 0)
    })
    it('GETPORT points MOUNT and NFS over TCP at this port, anything else at 0', async () => {
      const getport = async (prog: number, vers: number, prot: number) =>
        ok(await c.call(PMAP, 2, 3, u32(prog, vers, prot, 0))).u32()
      assert.equal(await getport(NFS, 3, IPPROTO_TCP), s.nfs.port)
      assert.equal(await getport(MOUNT, 3, IPPROTO_TCP), s.nfs.port)
      assert.equal(await getport(NFS, 3, IPPROTO_UDP), 0)
      assert.equal(await getport(NFS, 4, IPPROTO_TCP), 0)
      assert.equal(await getport(100021, 4, IPPROTO_TCP), 0) // NLM: not offered (clients mount with nolock)
    })
    it('DUMP lists the three TCP mappings; SET is refused; CALLIT is not offered', async () => {
      const b = ok(await c.call(PMAP, 2, 4))
      const maps: number[][] = []
      while (b.u32() === 1) maps.push([b.u32(), b.u32(), b.u32(), b.u32()])
      assert.deepEqual(
        maps.sort((x, y) => x[0] - y[0]),
        [
          [PMAP, 2, IPPROTO_TCP, s.nfs.port],
          [NFS, 3, IPPROTO_TCP, s.nfs.port],
          [MOUNT, 3, IPPROTO_TCP, s.nfs.port],
        ],
      )
      assert.equal(ok(await c.call(PMAP, 2, 1, u32(NFS, 3, IPPROTO_TCP, 2049))).u32(), 0)
      assert.equal((await c.call(PMAP, 2, 5, u32(NFS, 3, 0, 0))).acceptStat, PROC_UNAVAIL)
    })
  })

  describe('MOUNT (program 100005 v3)', () => {
    it('MNT of the export gives a 24-byte root handle and AUTH_SYS', async () => {
      const m = await mnt(c, '/')
      assert.equal(m.status, 0)
      assert.ok(m.fh!.equals(rootFh))
      assert.equal(m.fh!.length, 24)
      assert.deepEqual(m.flavors, [1])
      assert.ok((await mnt(c, '//')).fh!.equals(rootFh), 'an equivalent spelling of the export')
    })
    it('MNT of anything else is MNT3ERR_NOENT', async () => {
      for (const p of ['/disk.img', '/other', '', 'relative']) assert.equal((await mnt(c, p)).status, NOENT, p)
    })
    it('EXPORT lists "/" for 127.0.0.1; DUMP/UMNT/UMNTALL track this client', async () => {
      const e = ok(await c.call(MOUNT, 3, 5))
      assert.equal(e.u32(), 1)
      assert.equal(e.str(), '/')
      assert.equal(e.u32(), 1)
      assert.equal(e.str(), '127.0.0.1')
      assert.equal(e.u32(), 0)
      assert.equal(e.u32(), 0)
      assert.ok(e.done)
      const dump = async () => {
        const b = ok(await c.call(MOUNT, 3, 2))
        const out: string[] = []
        while (b.u32() === 1) out.push(`${b.str()}:${b.str()}`)
        return out
      }
      await mnt(c, '/')
      assert.deepEqual(await dump(), ['127.0.0.1:/'])
      assert.equal(ok(await c.call(MOUNT, 3, 3, str('/'))).b.length, 0)
      assert.deepEqual(await dump(), [])
      await mnt(c, '/')
      assert.equal(ok(await c.call(MOUNT, 3, 4)).b.length, 0)
      assert.deepEqual(await dump(), [])
    })
  })

  describe('NFS (program 100003 v3)', () => {
    it('NULL answers', async () => {
      assert.equal(ok(await c.call(NFS, 3, 0)).b.length, 0)
    })
    it('GETATTR: the root is a 0555 directory, the file a 0444 regular file of the image size', async () => {
      let b = ok(await c.call(NFS, 3, 1, opaque(rootFh)))
      assert.equal(b.u32(), OK)
      const dir = b.fattr3()
      assert.equal(dir.type, 2)
      assert.equal(dir.mode, 0o555)
      assert.ok(b.done)
      b = ok(await c.call(NFS, 3, 1, opaque(fileFh)))
      assert.equal(b.u32(), OK)
      const f = b.fattr3()
      assert.equal(f.type, 1)
      assert.equal(f.mode, 0o444)
      assert.equal(f.nlink, 1)
      assert.equal(f.size, BigInt(IMAGE_SIZE))
      assert.equal(f.fsid, dir.fsid)
      assert.notEqual(f.fileid, dir.fileid)
      assert.ok(b.done)
    })
    it('LOOKUP: the file, ".", NOENT, NOTDIR and NAMETOOLONG', async () => {
      let b = await lookup(c, rootFh, 'disk.img')
      assert.equal(b.u32(), OK)
      assert.ok(b.opaque().equals(fileFh))
      assert.equal(b.postOpAttr()!.size, BigInt(IMAGE_SIZE))
      assert.equal(b.postOpAttr()!.type, 2)
      assert.ok(b.done)
      b = await lookup(c, rootFh, '.')
      assert.equal(b.u32(), OK)
      assert.ok(b.opaque().equals(rootFh))
      b = await lookup(c, rootFh, 'DISK.IMG')
      assert.equal(b.u32(), NOENT)
      assert.equal(b.postOpAttr()!.type, 2, 'dir_attributes on failure')
      assert.ok(b.done)
      assert.equal((await lookup(c, fileFh, 'x')).u32(), NOTDIR)
      assert.equal((await lookup(c, rootFh, 'a'.repeat(300))).u32(), NAMETOOLONG)
    })
    it('ACCESS grants read (and lookup on the directory), never modify/extend/delete', async () => {
      const access = async (fh: Buffer) => {
        const b = ok(await c.call(NFS, 3, 4, Buffer.concat([opaque(fh), u32(0x3f)])))
        assert.equal(b.u32(), OK)
        assert.ok(b.postOpAttr())
        return b.u32()
      }
      assert.equal(await access(fileFh), 0x01)
      assert.equal(await access(rootFh), 0x01 | 0x02 | 0x20)
    })
    it('READ returns the source bytes, clips at the end with eof, and caps a request at rtmax', async () => {
      let r = await read(0, 65536)
      assert.equal(r.status, OK)
      assert.ok(r.data!.equals(img.data.subarray(0, 65536)))
      assert.equal(r.eof, false)
      assert.equal(r.attrs!.size, BigInt(IMAGE_SIZE))
      r = await read(0, 4 << 20)
      assert.equal(r.data!.length, 1 << 20, 'rtmax is 1 MiB')
      assert.ok(r.data!.equals(img.data.subarray(0, 1 << 20)))
      const lastGood = BAD[BAD.length - 1].offset // the final sector is bad; read up to it
      r = await read(lastGood - 4096, 4096)
      assert.ok(r.data!.equals(img.data.subarray(lastGood - 4096, lastGood)))
      r = await read(IMAGE_SIZE, 4096)
      assert.equal(r.status, OK)
      assert.equal(r.data!.length, 0)
      assert.equal(r.eof, true)
      r = await read(2 ** 62, 10)
      assert.equal(r.eof, true)
      assert.equal(r.data!.length, 0)
    })
    it('READ running into a bad area is answered short, up to the first bad byte; at it, NFS3ERR_IO', async () => {
      const bad = BAD[0]
      let r = await read(bad.offset - 3584, 65536)
      assert.equal(r.status, OK)
      assert.equal(r.data!.length, 3584)
      assert.equal(r.eof, false)
      assert.ok(r.data!.equals(img.data.subarray(bad.offset - 3584, bad.offset)))
      r = await read(bad.offset, 512)
      assert.equal(r.status, IO)
      assert.equal(r.attrs!.type, 1, 'file_attributes on failure')
      r = await read(bad.offset + 256, 4096)
      assert.equal(r.status, IO)
      r = await read(bad.offset + bad.length, 4096)
      assert.equal(r.status, OK)
      assert.ok(r.data!.equals(img.data.subarray(bad.offset + bad.length, bad.offset + bad.length + 4096)))
      for (const b of BAD) assert.equal((await read(b.offset, 1)).status, IO, `bad area at ${b.offset}`)
    })
    it('READ of the directory is NFS3ERR_ISDIR', async () => {
      assert.equal((await read(0, 10, rootFh)).status, ISDIR)
    })
    it('READDIR: ".", ".." and the file with cookies 1-3; resume by cookie; bad cookies; TOOSMALL', async () => {
      const readdir = async (cookie: number, verf: Buffer, count: number) => {
        const b = ok(await c.call(NFS, 3, 16, Buffer.concat([opaque(rootFh), u64(cookie), verf, u32(count)])))
        const status = b.u32()
        const attrs = b.postOpAttr()
        if (status !== OK) return {status, attrs}
        const cookieverf = Buffer.from(b.b.subarray(b.at, b.at + 8))
        b.at += 8
        const entries: Array<{fileid: bigint; name: string; cookie: bigint}> = []
        while (b.u32() === 1) entries.push({fileid: b.u64(), name: b.str(), cookie: b.u64()})
        const eof = b.u32() === 1
        assert.ok(b.done)
        return {status, attrs, cookieverf, entries, eof}
      }
      const zero = Buffer.alloc(8)
      const all = await readdir(0, zero, 4096)
      assert.equal(all.status, OK)
      assert.deepEqual(
        all.entries!.map((e) => [e.name, Number(e.cookie)]),
        [
          ['.', 1],
          ['..', 2],
          ['disk.img', 3],
        ],
      )
      assert.equal(all.eof, true)
      const rest = await readdir(2, all.cookieverf!, 4096)
      assert.deepEqual(
        rest.entries!.map((e) => e.name),
        ['disk.img'],
      )
      assert.equal(rest.eof, true)
      assert.equal((await readdir(7, all.cookieverf!, 4096)).status, BAD_COOKIE)
      assert.equal((await readdir(1, Buffer.from('12345678'), 4096)).status, BAD_COOKIE)
      assert.equal((await readdir(0, zero, 100)).status, TOOSMALL)
      // Room for exactly one entry: status+attrs+verf+2 words = 108 bytes, the "." entry 28.
      const one = await readdir(0, zero, 108 + 28)
      assert.equal(one.entries!.length, 1)
      assert.equal(one.eof, false)
      assert.equal((await readdir(0, zero, 108 + 27)).status, TOOSMALL)
    })
    it('READDIRPLUS gives attributes and the same handles LOOKUP gives', async () => {
      const b = ok(
        await c.call(NFS, 3, 17, Buffer.concat([opaque(rootFh), u64(0), Buffer.alloc(8), u32(4096), u32(65536)])),
      )
      assert.equal(b.u32(), OK)
      b.postOpAttr()
      b.at += 8
      const entries: Array<{name: string; size: bigint; fh: Buffer}> = []
      while (b.u32() === 1) {
        b.u64()
        const name = b.str()
        b.u64()
        const attrs = b.postOpAttr()!
        assert.equal(b.u32(), 1)
        entries.push({name, size: attrs.size, fh: Buffer.from(b.opaque())})
      }
      assert.equal(b.u32(), 1)
      assert.ok(b.done)
      const file = entries.find((e) => e.name === 'disk.img')!
      assert.ok(file.fh.equals(fileFh))
      assert.equal(file.size, BigInt(IMAGE_SIZE))
      assert.ok(entries.find((e) => e.name === '.')!.fh.equals(rootFh))
    })
    it('FSSTAT, FSINFO and PATHCONF describe a full, read-only, 1 MiB-transfer file system', async () => {
      let b = ok(await c.call(NFS, 3, 18, opaque(rootFh)))
      assert.equal(b.u32(), OK)
      b.postOpAttr()
      assert.equal(b.u64(), BigInt(IMAGE_SIZE)) // tbytes
      assert.equal(b.u64(), 0n) // fbytes
      assert.equal(b.u64(), 0n) // abytes
      b.u64()
      b.u64()
      b.u64()
      assert.equal(b.u32(), 0xffffffff) // invarsec
      assert.ok(b.done)
      b = ok(await c.call(NFS, 3, 19, opaque(rootFh)))
      assert.equal(b.u32(), OK)
      b.postOpAttr()
      assert.deepEqual([b.u32(), b.u32(), b.u32()], [1 << 20, 1 << 20, 4096])
      assert.deepEqual([b.u32(), b.u32(), b.u32()], [1 << 20, 1 << 20, 4096])
      b.u32() // dtpref
      assert.ok(b.u64() >= BigInt(IMAGE_SIZE))
      b.u64() // time_delta
      assert.equal(b.u32(), 0x0008) // FSF3_HOMOGENEOUS only: no links, no symlinks, no settable times
      assert.ok(b.done)
      b = ok(await c.call(NFS, 3, 20, opaque(fileFh)))
      assert.equal(b.u32(), OK)
      b.postOpAttr()
      b.u32()
      assert.equal(b.u32(), 255)
      assert.deepEqual([b.u32(), b.u32(), b.u32(), b.u32()], [1, 1, 0, 1])
      assert.ok(b.done)
    })
    it('every write-type procedure is NFS3ERR_ROFS in its own failure shape', async () => {
      const dirop = (name: string) => Buffer.concat([opaque(rootFh), str(name)])
      const sattrNone = u32(0, 0, 0, 0, 0, 0) // no mode/uid/gid/size, don't change atime/mtime
      const cases: Array<[string, number, Buffer, number]> = [
        // name, proc, args, expected body length: status + wcc_data (2 words) [+ extra]
        ['SETATTR', 2, Buffer.concat([opaque(fileFh), sattrNone, u32(0)]), 12],
        ['WRITE', 7, Buffer.concat([opaque(fileFh), u64(0), u32(4), u32(2), opaque(Buffer.from('evil'))]), 12],
        ['CREATE', 8, Buffer.concat([dirop('new'), u32(0), sattrNone]), 12],
        ['MKDIR', 9, Buffer.concat([dirop('d'), sattrNone]), 12],
        ['SYMLINK', 10, Buffer.concat([dirop('l'), sattrNone, str('/etc/passwd')]), 12],
        ['MKNOD', 11, Buffer.concat([dirop('n'), u32(7)]), 12],
        ['REMOVE', 12, dirop('disk.img'), 12],
        ['RMDIR', 13, dirop('.'), 12],
        ['RENAME', 14, Buffer.concat([dirop('disk.img'), dirop('x')]), 20],
        ['LINK', 15, Buffer.concat([opaque(fileFh), dirop('hard')]), 16],
        ['COMMIT', 21, Buffer.concat([opaque(fileFh), u64(0), u32(0)]), 12],
      ]
      for (const [name, proc, args, len] of cases) {
        const b = ok(await c.call(NFS, 3, proc, args))
        assert.equal(b.u32(), ROFS, name)
        assert.equal(b.b.length, len, `${name} reply shape`)
        for (let at = 4; at < len; at += 4) assert.equal(b.u32(), 0, `${name}: attributes absent`)
      }
      const r = await read(0, 4)
      assert.ok(r.data!.equals(img.data.subarray(0, 4)), 'the image changed')
    })
    it('READLINK is NFS3ERR_INVAL: there are no symbolic links', async () => {
      const b = ok(await c.call(NFS, 3, 5, opaque(fileFh)))
      assert.equal(b.u32(), INVAL)
      assert.equal(b.postOpAttr()!.type, 1)
      assert.ok(b.done)
    })
    it('handles: a foreign digest is STALE, a malformed handle BADHANDLE, an over-long one GARBAGE_ARGS', async () => {
      const stale = Buffer.from(fileFh)
      stale[8] ^= 0xff
      assert.equal(ok(await c.call(NFS, 3, 1, opaque(stale))).u32(), STALE)
      const unknownId = Buffer.from(fileFh)
      unknownId.writeUInt32BE(99, 20)
      assert.equal(ok(await c.call(NFS, 3, 1, opaque(unknownId))).u32(), STALE)
      assert.equal(ok(await c.call(NFS, 3, 1, opaque(Buffer.from('short')))).u32(), BADHANDLE)
      assert.equal((await c.call(NFS, 3, 1, opaque(Buffer.alloc(65)))).acceptStat, GARBAGE_ARGS)
    })
    it('AUTH_NONE is accepted from loopback; AUTH_DH and RPCSEC_GSS are AUTH_BADCRED', async () => {
      const b = ok(await c.call(NFS, 3, 1, opaque(fileFh), {flavor: AUTH_NONE}))
      assert.equal(b.u32(), OK)
      for (const flavor of [3, 6]) {
        const r = await c.call(NFS, 3, 1, opaque(fileFh), {flavor, cred: Buffer.alloc(8)})
        assert.equal(r.replyStat, 1)
        assert.equal(r.rejectStat, AUTH_ERROR)
        assert.equal(r.rejectWords![0], AUTH_BADCRED)
      }
    })
  })

  describe('stable file handles', () => {
    it('survive a server restart for the same image and go STALE for another image', async () => {
      const again = await serve(img.badImage)
      let other: Served | undefined
      let c2: RpcClient | undefined
      try {
        c2 = await RpcClient.connect(again.nfs.port)
        const m = await mnt(c2)
        assert.ok(m.fh!.equals(rootFh), 'root handle changed across restart')
        const b = ok(await c2.call(NFS, 3, 1, opaque(fileFh)))
        assert.equal(b.u32(), OK, 'an old file handle works on the new server')
        assert.equal(b.fattr3().size, BigInt(IMAGE_SIZE))
        c2.close()
        other = await serve(img.goodImage)
        c2 = await RpcClient.connect(other.nfs.port)
        assert.equal(ok(await c2.call(NFS, 3, 1, opaque(fileFh))).u32(), STALE)
        assert.ok(!(await mnt(c2)).fh!.equals(rootFh))
      } finally {
        c2?.close()
        await again.stop()
        await other?.stop()
      }
    })
  })

  describe('non-loopback peers', () => {
    const external = Object.values(os.networkInterfaces())
      .flat()
      .find((a) => a && a.family === 'IPv4' && !a.internal)?.address

    it('are refused: MNT3ERR_ACCES from MOUNT, AUTH_ERROR from everything else, and libnfs cannot mount', async function () {
      if (!external) this.skip() // no non-loopback IPv4 address on this machine to connect from
      const open = await serve(img.goodImage, {host: '0.0.0.0'})
      let ext: RpcClient | undefined
      let lo: RpcClient | undefined
      try {
        ext = await RpcClient.connect(open.nfs.port, external!, external!)
        assert.equal((await mnt(ext)).status, 13)
        for (const [prog, proc, args] of [
          [NFS, 1, opaque(fileFh)],
          [NFS, 0, Buffer.alloc(0)],
          [MOUNT, 2, Buffer.alloc(0)],
          [MOUNT, 5, Buffer.alloc(0)],
          [PMAP, 3, u32(NFS, 3, 6, 0)],
        ] as Array<[number, number, Buffer]>) {
          const r = await ext.call(prog, prog === PMAP ? 2 : 3, proc, args)
          assert.equal(r.replyStat, 1, `program ${prog} proc ${proc}`)
          assert.equal(r.rejectStat, AUTH_ERROR)
          assert.equal(r.rejectWords![0], AUTH_TOOWEAK)
        }
        const libnfs = await run('nfs-ls', [`nfs://${external}/?nfsport=${open.nfs.port}&mountport=${open.nfs.port}&version=3`])
        assert.notEqual(libnfs.code, 0)
        assert.match(libnfs.stderr, /MNT3ERR_ACCES/)
        lo = await RpcClient.connect(open.nfs.port, '127.0.0.1')
        assert.equal((await mnt(lo)).status, 0, 'the same server still serves loopback')
        assert.ok(open.logs.some((l) => l.includes('non-loopback')))
      } finally {
        ext?.close()
        lo?.close()
        await open.stop()
      }
    })
  })
})

/**
 * NFS version 3, program 100003 (RFC 1813 §3): one directory holding one regular file, read-only or (over a
 * writable BlockServer: a copy-on-write overlay) read-write. Reads
 * go through the BlockServer, so the bad-area policy applies: a READ that starts in an unreadable area is
 * answered NFS3ERR_IO; one that runs into it is answered short, up to the first unreadable byte (RFC 1813
 * §3.3.6 lets a server return fewer bytes than asked; clients then ask again from there), which keeps the
 * error exact instead of failing a whole rsize-sized request. READLINK is NFS3ERR_INVAL (there are no
 * symbolic links).
 *
 * Read-only, every write-type procedure is refused with NFS3ERR_ROFS. Writable, WRITE and COMMIT go to the
 * BlockServer (docs/nfs.md, "Writable export"): UNSTABLE is answered once the overlay took the write,
 * DATA_SYNC and FILE_SYNC once it is on stable storage, COMMIT after a flush; the write verifier is random
 * per server start, so a client that sees it change after a restart sends its uncommitted writes again.
 * The file's size is the image's: a WRITE past its end is NFS3ERR_FBIG and a SETATTR to another size
 * NFS3ERR_INVAL; the tree is fixed, so CREATE, REMOVE, RENAME … are NFS3ERR_ACCES.
 */
import {randomBytes} from 'node:crypto'
import {BlockError, type BlockServer} from '../../core/blockserver'
import {PROC_UNAVAIL, type CallContext, type ProcOutcome, type RpcCall, type RpcProgram} from './rpc'
import {XdrError, XdrReader, XdrWriter} from './xdr'
import {NFS3_FHSIZE, type ExportNode, type ExportTree, type NfsTime} from './export'

/** RFC 1813 §3: NFS_PROGRAM 100003, NFS_V3 3. */
export const NFS_PROG = 100003
export const NFS_V3 = 3

/** RFC 1813 §3 procedure numbers. */
export const Nfs3Proc = {
  NULL: 0,
  GETATTR: 1,
  SETATTR: 2,
  LOOKUP: 3,
  ACCESS: 4,
  READLINK: 5,
  READ: 6,
  WRITE: 7,
  CREATE: 8,
  MKDIR: 9,
  SYMLINK: 10,
  MKNOD: 11,
  REMOVE: 12,
  RMDIR: 13,
  RENAME: 14,
  LINK: 15,
  READDIR: 16,
  READDIRPLUS: 17,
  FSSTAT: 18,
  FSINFO: 19,
  PATHCONF: 20,
  COMMIT: 21,
} as const

/** RFC 1813 §2.6 nfsstat3 (the values this server can return, plus the common ones). */
export const Nfs3Stat = {
  NFS3_OK: 0,
  NFS3ERR_PERM: 1,
  NFS3ERR_NOENT: 2,
  NFS3ERR_IO: 5,
  NFS3ERR_ACCES: 13,
  NFS3ERR_EXIST: 17,
  NFS3ERR_NOTDIR: 20,
  NFS3ERR_ISDIR: 21,
  NFS3ERR_INVAL: 22,
  NFS3ERR_FBIG: 27,
  NFS3ERR_NOSPC: 28,
  NFS3ERR_ROFS: 30,
  NFS3ERR_NAMETOOLONG: 63,
  NFS3ERR_STALE: 70,
  NFS3ERR_BADHANDLE: 10001,
  NFS3ERR_NOT_SYNC: 10002,
  NFS3ERR_BAD_COOKIE: 10003,
  NFS3ERR_NOTSUPP: 10004,
  NFS3ERR_TOOSMALL: 10005,
  NFS3ERR_SERVERFAULT: 10006,
} as const

/** RFC 1813 §3.3.4 ACCESS bits. */
export const Access3 = {READ: 0x01, LOOKUP: 0x02, MODIFY: 0x04, EXTEND: 0x08, DELETE: 0x10, EXECUTE: 0x20} as const

/** RFC 1813 §3.3.7 stable_how. */
export const StableHow = {UNSTABLE: 0, DATA_SYNC: 1, FILE_SYNC: 2} as const

/** RFC 1813 §3.3.7: writeverf3 is NFS3_WRITEVERFSIZE (8) bytes. */
export const NFS3_WRITEVERFSIZE = 8

/** RFC 1813 §3.3.2 time_how (sattr3's atime and mtime). */
const TimeHow = {DONT_CHANGE: 0, SET_TO_SERVER_TIME: 1, SET_TO_CLIENT_TIME: 2} as const

/** Write failures logged per server (a full disk under the overlay fails every write; the count says the rest). */
const MAX_WRITE_FAULT_LOGS = 100

/** RFC 1813 §3.3.19 FSINFO properties. */
export const FSF3_LINK = 0x0001
export const FSF3_SYMLINK = 0x0002
export const FSF3_HOMOGENEOUS = 0x0008
export const FSF3_CANSETTIME = 0x0010

/** RFC 1813 §2.5: cookieverf3 is NFS3_COOKIEVERFSIZE (8) bytes. */
export const NFS3_COOKIEVERFSIZE = 8

/** Names longer than this are refused NFS3ERR_NAMETOOLONG (PATHCONF name_max). */
export const NAME_MAX = 255
/** filename3 is an unbounded string<>; anything this long is garbage rather than a name. */
const FILENAME_DECODE_MAX = 8192

/** Encoded sizes used for READDIR/READDIRPLUS budgeting (RFC 1813 §3.3.16-17 count "includes all XDR overhead"). */
const FATTR3_BYTES = 84
const POST_OP_ATTR_BYTES = 4 + FATTR3_BYTES

export interface Nfs3Options {
  /** FSINFO rtmax: the largest READ answered (larger requests are answered short). */
  rtmax: number
  /** FSINFO wtmax: advertised; the record cap is sized so a WRITE of this size can still be refused. */
  wtmax: number
  /** The write verifier of this server (shared by its serving threads); default: random. */
  writeVerf?: Buffer
}

function xdrStringBytes(s: string): number {
  const n = Buffer.byteLength(s, 'utf8')
  return 4 + n + ((4 - (n % 4)) % 4)
}

/** RFC 1813 §2.6 sattr3, decoded. */
interface Sattr3 {
  mode?: number
  uid?: number
  gid?: number
  size?: bigint
  atime?: NfsTime | 'server'
  mtime?: NfsTime | 'server'
}

function decodeTimeHow(a: XdrReader, what: string): NfsTime | 'server' | undefined {
  const how = a.uint32(`${what} time_how`)
  if (how === TimeHow.DONT_CHANGE) return undefined
  if (how === TimeHow.SET_TO_SERVER_TIME) return 'server'
  if (how === TimeHow.SET_TO_CLIENT_TIME) return {seconds: a.uint32(`${what} seconds`), nseconds: a.uint32(`${what} nseconds`)}
  throw new XdrError(`invalid ${what} time_how ${how}`)
}

function decodeSattr3(a: XdrReader): Sattr3 {
  const s: Sattr3 = {}
  if (a.bool('set_mode')) s.mode = a.uint32('mode')
  if (a.bool('set_uid')) s.uid = a.uint32('uid')
  if (a.bool('set_gid')) s.gid = a.uint32('gid')
  if (a.bool('set_size')) s.size = a.uint64('size')
  s.atime = decodeTimeHow(a, 'atime')
  s.mtime = decodeTimeHow(a, 'mtime')
  return s
}

export class Nfs3Program implements RpcProgram {
  readonly prog = NFS_PROG
  readonly name = 'nfs'
  readonly low = NFS_V3
  readonly high = NFS_V3
  /**
   * RFC 1813 §3.3.7 writeverf3: the same for the whole life of this server, new at every start (random),
   * so a client holding UNSTABLE writes notices a restart at its COMMIT and writes them again.
   */
  readonly writeVerf: Buffer
  private writeFaults = 0

  constructor(
    private readonly tree: ExportTree,
    private readonly server: BlockServer,
    private readonly opts: Nfs3Options,
  ) {
    this.writeVerf = opts.writeVerf ?? randomBytes(NFS3_WRITEVERFSIZE)
    if (tree.writable && !server.writable) throw new Error('a writable export needs a writable BlockServer')
  }

  dispatch(call: RpcCall, ctx: CallContext): ProcOutcome | Promise<ProcOutcome> {
    const a = call.args
    switch (call.proc) {
      case Nfs3Proc.NULL:
        return new XdrWriter()
      case Nfs3Proc.GETATTR:
        return this.getattr(a)
      case Nfs3Proc.LOOKUP:
        return this.lookup(a)
      case Nfs3Proc.ACCESS:
        return this.access(a)
      case Nfs3Proc.READLINK:
        return this.readlink(a)
      case Nfs3Proc.READ:
        return this.read(a, ctx)
      case Nfs3Proc.READDIR:
        return this.readdir(a, false)
      case Nfs3Proc.READDIRPLUS:
        return this.readdir(a, true)
      case Nfs3Proc.FSSTAT:
        return this.fsstat(a)
      case Nfs3Proc.FSINFO:
        return this.fsinfo(a)
      case Nfs3Proc.PATHCONF:
        return this.pathconf(a)
      case Nfs3Proc.SETATTR:
        return this.tree.writable ? this.setattr(a) : this.readOnly(call.proc, a)
      case Nfs3Proc.WRITE:
        return this.tree.writable ? this.write(a, ctx) : this.readOnly(call.proc, a)
      case Nfs3Proc.COMMIT:
        return this.tree.writable ? this.commit(a, ctx) : this.readOnly(call.proc, a)
      case Nfs3Proc.CREATE:
      case Nfs3Proc.MKDIR:
      case Nfs3Proc.SYMLINK:
      case Nfs3Proc.MKNOD:
      case Nfs3Proc.REMOVE:
      case Nfs3Proc.RMDIR:
      case Nfs3Proc.RENAME:
      case Nfs3Proc.LINK:
        return this.readOnly(call.proc, a)
      default:
        return PROC_UNAVAIL
    }
  }

  /** Decode nfs_fh3 (RFC 1813 §2.5) and resolve it; a failure carries the status to answer. */
  private handle(a: XdrReader, what = 'file handle'): {node: ExportNode} | {status: number} {
    const fh = a.opaque(NFS3_FHSIZE, what)
    const r = this.tree.lookupHandle(fh)
    if (r.ok) return {node: r.node}
    return {status: r.why === 'stale' ? Nfs3Stat.NFS3ERR_STALE : Nfs3Stat.NFS3ERR_BADHANDLE}
  }

  private fail(status: number, attrsOf?: ExportNode): XdrWriter {
    const w = new XdrWriter().uint32(status)
    this.tree.writePostOpAttr(w, attrsOf)
    return w
  }

  /** §3.3.1 GETATTR: status, fattr3 on success, nothing on failure. */
  private getattr(a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    if ('status' in h) return new XdrWriter().uint32(h.status)
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK)
    this.tree.writeFattr3(w, h.node)
    return w
  }

  /** §3.3.3 LOOKUP. */
  private lookup(a: XdrReader): ProcOutcome {
    const h = this.handle(a, 'directory handle')
    const name = a.string(FILENAME_DECODE_MAX, 'filename')
    if ('status' in h) return this.fail(h.status)
    if (h.node.kind !== 'dir') return this.fail(Nfs3Stat.NFS3ERR_NOTDIR, h.node)
    if (Buffer.byteLength(name, 'utf8') > NAME_MAX) return this.fail(Nfs3Stat.NFS3ERR_NAMETOOLONG, h.node)
    const child = this.tree.child(name)
    if (!child) return this.fail(Nfs3Stat.NFS3ERR_NOENT, h.node)
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK).opaque(child.handle)
    this.tree.writePostOpAttr(w, child)
    this.tree.writePostOpAttr(w, h.node)
    return w
  }

  /** §3.3.4 ACCESS: read (and directory search); the file's data may be changed only over an overlay. */
  private access(a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    const asked = a.uint32('access')
    if ('status' in h) return this.fail(h.status)
    const allowed =
      h.node.kind === 'dir'
        ? Access3.READ | Access3.LOOKUP | Access3.EXECUTE
        : this.tree.writable
          ? Access3.READ | Access3.MODIFY | Access3.EXTEND
          : Access3.READ
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK)
    this.tree.writePostOpAttr(w, h.node)
    return w.uint32(asked & allowed)
  }

  /** §3.3.5 READLINK: nothing here is a symbolic link. */
  private readlink(a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    if ('status' in h) return this.fail(h.status)
    return this.fail(Nfs3Stat.NFS3ERR_INVAL, h.node)
  }

  /** §3.3.6 READ. */
  private async read(a: XdrReader, ctx: CallContext): Promise<ProcOutcome> {
    const h = this.handle(a)
    const offset64 = a.uint64('offset')
    const count = a.uint32('count')
    if ('status' in h) return this.fail(h.status)
    const node = h.node
    if (node.kind === 'dir') return this.fail(Nfs3Stat.NFS3ERR_ISDIR, node)
    const size = this.tree.size
    if (offset64 >= BigInt(size)) return this.readOk(node, Buffer.alloc(0), true)
    const offset = Number(offset64)
    const length = Math.min(count, this.opts.rtmax, size - offset)
    if (length === 0) return this.readOk(node, Buffer.alloc(0), offset >= size)
    let data: Buffer
    try {
      // A serving thread's image answers at once: read into the connection's reused buffer (no fresh 1 MiB,
      // and its page faults, per READ).
      const into = this.server.immediate ? ctx.readBuffer?.(length) : undefined
      data = into ? this.server.readSync(offset, length, into) : await this.server.read(offset, length)
    } catch (err) {
      const firstBad = err instanceof BlockError && err.errno === 'EIO' && err.bad.length > 0 ? err.bad[0].offset : -1
      if (firstBad > offset) {
        // Answer the readable prefix; the client asks again at firstBad and gets NFS3ERR_IO there.
        try {
          data = await this.server.read(offset, firstBad - offset)
          return this.readOk(node, data, false)
        } catch (again) {
          err = again
        }
      }
      if (!(err instanceof BlockError) || err.errno !== 'EIO' || err.bad.length === 0)
        ctx.log(`nfs: READ ${length} bytes at ${offset} failed: ${(err as Error).message}`)
      return this.fail(Nfs3Stat.NFS3ERR_IO, node)
    }
    return this.readOk(node, data, offset + length >= size)
  }

  private readOk(node: ExportNode, data: Buffer, eof: boolean): XdrWriter {
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK)
    this.tree.writePostOpAttr(w, node)
    return w.uint32(data.length).bool(eof).opaque(data)
  }

  /** §3.3.16 READDIR and §3.3.17 READDIRPLUS. */
  private readdir(a: XdrReader, plus: boolean): ProcOutcome {
    const h = this.handle(a, 'directory handle')
    const cookie = a.uint64('cookie')
    const verf = a.fixedOpaque(NFS3_COOKIEVERFSIZE, 'cookieverf')
    const dircount = plus ? a.uint32('dircount') : 0
    const maxcount = a.uint32(plus ? 'maxcount' : 'count')
    if ('status' in h) return this.fail(h.status)
    const dir = h.node
    if (dir.kind !== 'dir') return this.fail(Nfs3Stat.NFS3ERR_NOTDIR, dir)
    const entries = this.tree.entries()
    if (cookie > BigInt(entries.length)) return this.fail(Nfs3Stat.NFS3ERR_BAD_COOKIE, dir)
    // A zero verifier is what a client sends before it has one; any other must be ours.
    if (cookie !== 0n && !verf.equals(Buffer.alloc(NFS3_COOKIEVERFSIZE)) && !verf.equals(this.tree.cookieVerf))
      return this.fail(Nfs3Stat.NFS3ERR_BAD_COOKIE, dir)

    // status + dir_attributes + cookieverf + "no more entries" + eof
    let used = 4 + POST_OP_ATTR_BYTES + NFS3_COOKIEVERFSIZE + 4 + 4
    let dirUsed = 0
    const body = new XdrWriter()
    let i = Number(cookie)
    let sent = 0
    for (; i < entries.length; i++) {
      const e = entries[i]
      const nameBytes = 4 + 8 + xdrStringBytes(e.name) + 8 // value_follows, fileid, name, cookie
      const entryBytes = nameBytes + (plus ? POST_OP_ATTR_BYTES + 4 + 4 + e.node.handle.length : 0)
      if (used + entryBytes > maxcount || (plus && sent > 0 && dirUsed + nameBytes > dircount)) break
      used += entryBytes
      dirUsed += nameBytes
      body.bool(true).uint64(e.node.fileid).string(e.name).uint64(i + 1)
      if (plus) {
        this.tree.writePostOpAttr(body, e.node)
        body.bool(true).opaque(e.node.handle)
      }
      sent++
    }
    if (sent === 0 && i < entries.length) return this.fail(Nfs3Stat.NFS3ERR_TOOSMALL, dir)
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK)
    this.tree.writePostOpAttr(w, dir)
    w.fixedOpaque(this.tree.cookieVerf)
    for (const b of body.buffers()) w.fixedOpaque(b)
    return w.bool(false).bool(i >= entries.length)
  }

  /** §3.3.18 FSSTAT: a full, immutable file system. */
  private fsstat(a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    if ('status' in h) return this.fail(h.status)
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK)
    this.tree.writePostOpAttr(w, h.node)
    w.uint64(this.tree.size).uint64(0).uint64(0) // tbytes, fbytes, abytes
    w.uint64(2).uint64(0).uint64(0) // tfiles, ffiles, afiles
    return w.uint32(0xffffffff) // invarsec: never changes (RFC 1813 §3.3.18)
  }

  /** §3.3.19 FSINFO. */
  private fsinfo(a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    if ('status' in h) return this.fail(h.status)
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK)
    this.tree.writePostOpAttr(w, h.node)
    w.uint32(this.opts.rtmax).uint32(this.opts.rtmax).uint32(4096) // rtmax, rtpref, rtmult
    w.uint32(this.opts.wtmax).uint32(this.opts.wtmax).uint32(4096) // wtmax, wtpref, wtmult
    w.uint32(65536) // dtpref
    // Writable, the file can never grow: a client that knows the largest size refuses to extend it itself.
    w.uint64(this.tree.writable ? this.tree.size : 0x7fffffffffffffffn) // maxfilesize
    w.uint32(0).uint32(1000000) // time_delta: 1 ms
    return w.uint32(FSF3_HOMOGENEOUS | (this.tree.writable ? FSF3_CANSETTIME : 0))
  }

  /** §3.3.20 PATHCONF. */
  private pathconf(a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    if ('status' in h) return this.fail(h.status)
    const w = new XdrWriter().uint32(Nfs3Stat.NFS3_OK)
    this.tree.writePostOpAttr(w, h.node)
    w.uint32(1).uint32(NAME_MAX) // linkmax, name_max
    return w.bool(true).bool(true).bool(false).bool(true) // no_trunc, chown_restricted, case_insensitive, case_preserving
  }

  /** wcc_data (RFC 1813 §2.6) of the file: its attributes before (captured by the caller) and now. */
  private wcc(w: XdrWriter, node: ExportNode, before: {mtime: NfsTime; ctime: NfsTime} | undefined): XdrWriter {
    if (before && node.kind === 'file') this.tree.writePreOpAttr(w, before)
    else w.bool(false)
    this.tree.writePostOpAttr(w, node)
    return w
  }

  private fileTimes(): {mtime: NfsTime; ctime: NfsTime} {
    const t = this.tree.fileTimes
    return {mtime: t.mtime, ctime: t.ctime}
  }

  /** A failed write or flush: NFS3ERR_NOSPC when the disk under the overlay is full, else NFS3ERR_IO; logged. */
  private writeFailure(what: string, err: unknown, ctx: CallContext): number {
    const nospc = err instanceof BlockError && err.errno === 'ENOSPC'
    if (++this.writeFaults <= MAX_WRITE_FAULT_LOGS)
      ctx.log(`nfs: ${what} failed: ${(err as Error)?.message ?? err}${this.writeFaults === MAX_WRITE_FAULT_LOGS ? ' (further failures are not logged)' : ''}`)
    return nospc ? Nfs3Stat.NFS3ERR_NOSPC : Nfs3Stat.NFS3ERR_IO
  }

  /**
   * §3.3.2 SETATTR on a writable export. The size is the image's: setting it to any other value is
   * NFS3ERR_INVAL (RFC 1813 lists no NFS3ERR_FBIG for SETATTR, and shrinking is not a lack of space: the
   * argument is one this file does not support); the same size is a no-op. mode, uid and gid cannot change
   * (NFS3ERR_PERM unless the value is the current one); atime and mtime are kept in memory (reported until
   * the server stops). A guard whose ctime differs is NFS3ERR_NOT_SYNC. Nothing is changed unless all of it
   * can be.
   */
  private setattr(a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    const s = decodeSattr3(a)
    const guard = a.bool('guard check') ? {seconds: a.uint32('guard seconds'), nseconds: a.uint32('guard nseconds')} : undefined
    if ('status' in h) return new XdrWriter().uint32(h.status).bool(false).bool(false)
    const node = h.node
    const before = node.kind === 'file' ? this.fileTimes() : undefined
    const failWith = (status: number) => this.wcc(new XdrWriter().uint32(status), node, before)
    // The directory never changes, so a guard can only fail on the file.
    if (guard && before && (before.ctime.seconds !== guard.seconds || before.ctime.nseconds !== guard.nseconds))
      return failWith(Nfs3Stat.NFS3ERR_NOT_SYNC)
    const mode = node.kind === 'dir' ? 0o555 : 0o644
    if ((s.mode !== undefined && (s.mode & 0o7777) !== mode) || (s.uid !== undefined && s.uid !== 0) || (s.gid !== undefined && s.gid !== 0))
      return failWith(Nfs3Stat.NFS3ERR_PERM)
    if (s.size !== undefined) {
      if (node.kind === 'dir') return failWith(Nfs3Stat.NFS3ERR_INVAL)
      if (s.size !== BigInt(this.tree.size)) return failWith(Nfs3Stat.NFS3ERR_INVAL)
    }
    if (s.atime !== undefined || s.mtime !== undefined) {
      if (node.kind === 'dir') return failWith(Nfs3Stat.NFS3ERR_PERM)
      const ms = Date.now()
      const now = {seconds: Math.floor(ms / 1000), nseconds: (ms % 1000) * 1e6}
      this.tree.setTimes(s.atime === 'server' ? now : s.atime, s.mtime === 'server' ? now : s.mtime)
    }
    return this.wcc(new XdrWriter().uint32(Nfs3Stat.NFS3_OK), node, before)
  }

  /**
   * §3.3.7 WRITE on a writable export. `count` must equal the data's length (GARBAGE_ARGS otherwise, as
   * Linux's nfsd decides); the data is a view into the record, whose size the connection capped before it
   * was buffered, so nothing is allocated from `count`. More than wtmax bytes are written short (wtmax,
   * which RFC 1813 allows). A write that would reach past the end of the file is NFS3ERR_FBIG and nothing
   * is written (the file's size is the image's; FSINFO's maxfilesize says so). UNSTABLE is answered once
   * the overlay took the write (it survives the server being killed, not a power cut, until COMMIT);
   * DATA_SYNC and FILE_SYNC once it is on stable storage, and `committed` says which was done.
   */
  private async write(a: XdrReader, ctx: CallContext): Promise<ProcOutcome> {
    const h = this.handle(a)
    const offset64 = a.uint64('offset')
    const count = a.uint32('count')
    const stable = a.uint32('stable')
    if (stable > StableHow.FILE_SYNC) throw new XdrError(`invalid stable_how ${stable}`)
    const data = a.opaque(a.remaining, 'data')
    if (data.length !== count) throw new XdrError(`WRITE count ${count} but ${data.length} bytes of data`)
    if ('status' in h) return new XdrWriter().uint32(h.status).bool(false).bool(false)
    const node = h.node
    if (node.kind === 'dir') return this.wcc(new XdrWriter().uint32(Nfs3Stat.NFS3ERR_ISDIR), node, undefined)
    const before = this.fileTimes()
    const n = Math.min(count, this.opts.wtmax)
    if (n > 0 && offset64 + BigInt(n) > BigInt(this.tree.size)) return this.wcc(new XdrWriter().uint32(Nfs3Stat.NFS3ERR_FBIG), node, before)
    const offset = Number(offset64)
    if (n > 0) {
      try {
        await this.server.write(offset, data.subarray(0, n), {fua: stable !== StableHow.UNSTABLE})
      } catch (err) {
        return this.wcc(new XdrWriter().uint32(this.writeFailure(`WRITE of ${n} bytes at ${offset}`, err, ctx)), node, before)
      }
      this.tree.touchData()
    }
    const w = this.wcc(new XdrWriter().uint32(Nfs3Stat.NFS3_OK), node, before)
    return w.uint32(n).uint32(stable).fixedOpaque(this.writeVerf)
  }

  /** §3.3.21 COMMIT: a flush of the overlay (the whole file, whatever the range), then the write verifier. */
  private async commit(a: XdrReader, ctx: CallContext): Promise<ProcOutcome> {
    const h = this.handle(a)
    a.uint64('offset')
    a.uint32('count')
    if ('status' in h) return new XdrWriter().uint32(h.status).bool(false).bool(false)
    const node = h.node
    if (node.kind === 'dir') return this.wcc(new XdrWriter().uint32(Nfs3Stat.NFS3ERR_ISDIR), node, undefined)
    const before = this.fileTimes()
    try {
      await this.server.flush()
    } catch (err) {
      return this.wcc(new XdrWriter().uint32(this.writeFailure('COMMIT', err, ctx)), node, before)
    }
    return this.wcc(new XdrWriter().uint32(Nfs3Stat.NFS3_OK), node, before).fixedOpaque(this.writeVerf)
  }

  /**
   * §3.3.2, 3.3.7-3.3.15, 3.3.21: on a read-only export every write-type procedure fails NFS3ERR_ROFS; on a
   * writable one the procedures that would change the tree (CREATE … LINK) fail NFS3ERR_ACCES (the
   * directory is mode 0555 and holds one fixed file). Either (or the handle's own error) comes in that
   * procedure's resfail shape: wcc_data (empty pre/post attributes, RFC 1813 §2.6), two of them for RENAME,
   * post_op_attr + wcc_data for LINK. Only the leading handle is decoded: nothing after it can change the
   * answer.
   */
  private readOnly(proc: number, a: XdrReader): ProcOutcome {
    const h = this.handle(a)
    const status = 'status' in h ? h.status : this.tree.writable ? Nfs3Stat.NFS3ERR_ACCES : Nfs3Stat.NFS3ERR_ROFS
    const w = new XdrWriter().uint32(status)
    if (proc === Nfs3Proc.LINK) w.bool(false) // file_attributes
    w.bool(false).bool(false) // wcc_data: before, after
    if (proc === Nfs3Proc.RENAME) w.bool(false).bool(false) // todir_wcc
    return w
  }
}

/**
 * Target "nfs": malformed ONC RPC against the real NFS v3 server (startNfsServer on 127.0.0.1): records
 * split into fragments (some empty) or claiming more than the record limit, call headers with a wrong
 * message type, RPC version or credentials (unknown flavors, bodies over 400 bytes, AUTH_SYS with too many
 * groups), unknown programs, versions and procedures, and arguments cut short, padded, or with XDR lengths
 * of 2^32−1; mixed with well-formed calls to every procedure of portmap, MOUNT and NFS; half of the
 * read-only sessions go to a server on the main thread, half to one on serving threads. Two in five sessions
 * go to a second server, read-write over a copy-on-write overlay (one in four of them on serving threads), with WRITEs (every stability level, past
 * the end, up to wtmax + 1 bytes, and malformed: a count that is not the data's length, 2^32−1, a data
 * length of 2^32−1, a bad stable_how), COMMITs and SETATTRs of the size. A session ends with
 * the client closing after its replies, a record that must close the connection, a record cut short and a
 * half-close, or a disconnect at a random byte. One case in five flips random bytes ("chaos").
 *
 * The contract checked:
 *  - every reply is one well-formed record for a call that was sent and not yet answered; an accepted
 *    reply is never SYSTEM_ERR (that means an exception inside a procedure); a refusal is the one the RFCs
 *    give (RPC_MISMATCH 2..2, AUTH_ERROR/BADCRED, PROG_UNAVAIL, PROG_MISMATCH 3..3, PROC_UNAVAIL, GARBAGE_ARGS);
 *  - well-formed calls get their results: READ returns the image's bytes, short up to the first unreadable
 *    byte, NFS3ERR_IO at it, eof exactly at the end; write-type procedures NFS3ERR_ROFS (read-only server);
 *  - writable server: a WRITE is NFS3_OK with its count (at most wtmax), `committed` = the stability asked
 *    and the server's one verifier, NFS3ERR_FBIG past the end, GARBAGE_ARGS when malformed; COMMIT returns
 *    the same verifier; SETATTR of another size is NFS3ERR_INVAL; CREATE … LINK NFS3ERR_ACCES. After a
 *    session whose every reply was seen, the overlay holds exactly the model (the image plus the
 *    acknowledged writes, the bad sectors they covered now readable), byte for byte and bad sector for bad
 *    sector; after any other session the model is re-read from the overlay;
 *  - every call of a session that ends well is answered; a record that breaks the framing or the header
 *    closes the connection; a half-close is answered by a close;
 *  - the server never crashes, logs no internal error, and a witness connection open all along keeps
 *    reading correct bytes.
 */
import * as net from 'node:net'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {Overlay} from '../../src/layers/overlay'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {startNfsServer, type NfsServerHandle} from '../../src/serve/nfs'
import {Body, RpcClient, authSysCred, callMessage, opaque, parseReply, str, u32, u64, type Reply} from '../../test/nfs/rpcclient'
import {normalize, type CaseContext, type CaseResult, type Target, type TargetInstance} from '../harness'
import {INTERNAL_LOG, SECTOR, applyWrite, compareOverlay, reopenOverlay, contentOf, firstBad, makeServedImage, type Content, type ServedImage} from '../net/fixture'
import type {Rng} from '../rng'

const PMAP = 100000
const MOUNT = 100005
const NFS = 100003
const RTMAX = 1 << 20
/** The server's record limit: wtmax (1 MiB) + 8 KiB. */
const MAX_RECORD = (1 << 20) + 8192

const NFS3_OK = 0
const NFS3ERR_IO = 5
const NFS3ERR_ACCES = 13
const NFS3ERR_INVAL = 22
const NFS3ERR_FBIG = 27
const NFS3ERR_ROFS = 30
const GARBAGE_ARGS = 4
const WTMAX = 1 << 20

/** The writable server's state the generator needs. */
interface WritableCtx {
  verf: Buffer
}

/** Sector-expanded byte range [start, end) of a READ or WRITE in a writable session, for the overlap rule. */
type Span = [number, number]

interface Handles {
  root: Buffer
  file: Buffer
}

/** What one call must get back. */
interface Expect {
  xid: number
  what: string
  /** reply_stat 0 with this accept_stat, or a denial. undefined: any reply but SYSTEM_ERR. */
  accept?: number
  denied?: 'rpc-mismatch' | 'auth-badcred'
  body?: (b: Body) => string | undefined
  /** A WRITE's bytes, to apply to the model once its reply was checked (acked) or when unknown. */
  write?: PendingWrite
}

interface PendingWrite {
  offset: number
  data: Buffer
  acked: boolean
}

type Ending = 'graceful' | 'close' | 'eof' | 'destroy'

interface Session {
  records: Buffer[]
  steps: string[]
  expects: Expect[]
  ending: Ending
  /** A WRITE may have been carried out without its reply telling (its arguments cut to a length that still decodes). */
  unknownWrites: boolean
}

/** One well-formed call and what it must return. */
interface Call {
  prog: number
  vers: number
  proc: number
  args: Buffer
  what: string
  body?: Expect['body']
  /** accept_stat due (default SUCCESS). */
  accept?: number
  /** READ and WRITE on the writable server: the sectors they touch. */
  span?: Span
  kind?: 'read' | 'write'
  write?: PendingWrite
}

function frame(msg: Buffer, rng: Rng): {bytes: Buffer; how: string} {
  const k = rng.weighted([
    [8, 1],
    [2, 2],
    [1, 5],
  ] as const)
  if (k === 1 && !rng.chance(0.1)) return {bytes: Buffer.concat([u32((0x80000000 | msg.length) >>> 0), msg]), how: ''}
  // Several fragments, some of them empty; only the last is flagged.
  const cuts = [...Array.from({length: k - 1}, () => rng.int(msg.length + 1)).sort((a, b) => a - b), msg.length]
  const parts: Buffer[] = []
  let at = 0
  cuts.forEach((c, i) => {
    const piece = msg.subarray(at, c)
    parts.push(u32(((i === cuts.length - 1 ? 0x80000000 : 0) | piece.length) >>> 0), piece)
    at = c
  })
  if (rng.chance(0.3)) parts.splice(0, 0, u32(0), Buffer.alloc(0)) // an empty first fragment
  return {bytes: Buffer.concat(parts), how: ` in ${parts.length / 2} fragments`}
}

function expectRead(fx: Content, offset: bigint, count: number): (b: Body) => string | undefined {
  // The model may change after this call was generated (a later session's writes): decide from a copy.
  const off0 = Number(offset < BigInt(fx.size) ? offset : 0n)
  const len0 = Math.max(0, Math.min(count, RTMAX, fx.size - off0))
  const bytes = Buffer.from(fx.data.subarray(off0, off0 + len0))
  const bad = firstBad(fx, off0, off0 + len0)
  return (b) => {
    const status = b.u32()
    b.postOpAttr()
    const size = BigInt(fx.size)
    let want: {data: Buffer; eof: boolean} | 'io'
    if (offset >= size) want = {data: Buffer.alloc(0), eof: true}
    else {
      const off = Number(offset)
      const length = Math.min(count, RTMAX, fx.size - off)
      if (length === 0) want = {data: Buffer.alloc(0), eof: false}
      else {
        if (bad === undefined) want = {data: bytes, eof: off + length >= fx.size}
        else if (bad > off) want = {data: bytes.subarray(0, bad - off), eof: false}
        else want = 'io'
      }
    }
    if (want === 'io') return status === NFS3ERR_IO ? undefined : `READ ${count} at ${offset}: status ${status}, NFS3ERR_IO due (a bad area starts there)`
    if (status !== NFS3_OK) return `READ ${count} at ${offset}: status ${status}`
    const n = b.u32()
    const eof = b.u32()
    const data = b.opaque()
    if (n !== data.length) return `READ ${count} at ${offset}: count ${n} but ${data.length} bytes of data`
    if (!data.equals(want.data)) return `READ ${count} at ${offset}: ${data.length} bytes that are not the image's ${want.data.length} bytes there`
    if ((eof === 1) !== want.eof) return `READ ${count} at ${offset}: eof ${eof}`
    return undefined
  }
}

function status(want: number, what: string): (b: Body) => string | undefined {
  return (b) => {
    const s = b.u32()
    return s === want ? undefined : `${what}: status ${s}, ${want} due`
  }
}

function sectorSpan(offset: number, length: number): Span {
  return [Math.floor(offset / SECTOR) * SECTOR, Math.ceil((offset + length) / SECTOR) * SECTOR]
}

function overlaps(a: Span, b: Span): boolean {
  return a[0] < b[1] && b[0] < a[1]
}

/** Write data: random, or for large writes a random 4 KiB block repeated with its index in each copy. */
function writeData(rng: Rng, n: number): Buffer {
  if (n <= 65536) return rng.bytes(n)
  const blk = rng.bytes(4096)
  const b = Buffer.alloc(n)
  for (let at = 0, i = 0; at < n; at += 4096, i++) {
    blk.copy(b, at)
    if (at + 4 <= n) b.writeUInt32BE(i, at)
  }
  return b
}

/** WRITE, COMMIT and SETATTR against the writable server (malformed WRITE counts included), each with its due answer. */
function writeCall(rng: Rng, h: Handles, fx: Content, w: WritableCtx): Call {
  const kind = rng.weighted([
    [10, 'write'],
    [3, 'write-bad'],
    [3, 'commit'],
    [2, 'setattr'],
  ] as const)
  const size = fx.size
  if (kind === 'commit') {
    const onDir = rng.chance(0.1)
    const args = Buffer.concat([opaque(onDir ? h.root : h.file), u64(rng.pick([0n, BigInt(rng.int(size)), 0xffffffffffffffffn])), u32(rng.pick([0, 4096, 0xffffffff]))])
    return {
      prog: NFS, vers: 3, proc: 21, args, what: `COMMIT${onDir ? ' of the directory' : ''}`,
      body: (b) => {
        const st = b.u32()
        if (onDir) return st === 21 ? undefined : `COMMIT of the directory: status ${st}, NFS3ERR_ISDIR due`
        if (st !== NFS3_OK) return `COMMIT: status ${st}`
        b.wcc()
        const v = b.b.subarray(b.at, b.at + 8)
        return v.equals(w.verf) ? undefined : 'COMMIT: a verifier that is not the server\'s'
      },
    }
  }
  if (kind === 'setattr') {
    const want = rng.pick([size, 0, size + 1, size - 1, 2 ** 53])
    const args = Buffer.concat([opaque(h.file), u32(0, 0, 0, 1), u64(want), u32(0, 0, 0)])
    return {prog: NFS, vers: 3, proc: 2, args, what: `SETATTR size ${want}`, body: status(want === size ? NFS3_OK : NFS3ERR_INVAL, `SETATTR size ${want}`)}
  }
  const offset: bigint = rng.weighted([
    [8, BigInt(rng.int(size / SECTOR) * SECTOR)],
    [6, BigInt(rng.int(size))],
    [2, BigInt(size - rng.pick([1, 512, 4096, 65536]))],
    [1, BigInt(size)],
    [1, BigInt(size + rng.int(4096))],
    [1, 2n ** 53n],
    [1, 0xffffffffffffffffn],
  ] as const)
  const len = rng.weighted([
    [3, 0],
    [3, rng.range(1, 16)],
    [6, 512],
    [8, 4096],
    [4, 65536],
    [6, rng.int(200000)],
    [1, WTMAX],
    [1, WTMAX + 1],
  ] as const)
  const data = writeData(rng, len)
  const stable = rng.int(3)
  if (kind === 'write-bad') {
    // count ≠ the data's length, or 2^32−1; the data's length field 2^32−1 or more than the record holds; a bad stable_how.
    const how = rng.pick(['count+1', 'count-1', 'count-huge', 'data-huge', 'data-over', 'stable'])
    const count = how === 'count+1' ? len + 1 : how === 'count-1' ? (len === 0 ? 1 : len - 1) : how === 'count-huge' ? 0xffffffff : len
    const st = how === 'stable' ? rng.pick([3, 0xffffffff]) : stable
    const dataLen = how === 'data-huge' ? 0xffffffff : how === 'data-over' ? len + rng.pick([4, 8192, 1 << 20]) : len
    const args = Buffer.concat([opaque(h.file), u64(offset), u32(count, st, dataLen), data, Buffer.alloc((4 - (len % 4)) % 4)])
    return {prog: NFS, vers: 3, proc: 7, args, what: `WRITE ${len} at ${offset}, malformed: ${how}`, accept: GARBAGE_ARGS}
  }
  const n = Math.min(len, WTMAX)
  const past = n > 0 && offset + BigInt(n) > BigInt(size)
  const args = Buffer.concat([opaque(h.file), u64(offset), u32(len, stable), opaque(data)])
  const what = `WRITE ${len} at ${offset} stable ${stable}`
  const write: PendingWrite | undefined = past || n === 0 ? undefined : {offset: Number(offset), data: data.subarray(0, n), acked: false}
  return {
    prog: NFS, vers: 3, proc: 7, args, what, kind: 'write', write,
    span: write ? sectorSpan(write.offset, n) : undefined,
    body: (b) => {
      const st = b.u32()
      const wcc = b.wcc()
      if (wcc.after?.size !== BigInt(size)) return `${what}: post-op size ${wcc.after?.size}`
      if (past) return st === NFS3ERR_FBIG ? undefined : `${what}: status ${st}, NFS3ERR_FBIG due (past the end)`
      if (st !== NFS3_OK) return `${what}: status ${st}`
      const count = b.u32()
      const committed = b.u32()
      const v = b.b.subarray(b.at, b.at + 8)
      if (count !== n) return `${what}: count ${count}, ${n} due`
      if (committed !== stable) return `${what}: committed ${committed} for stable ${stable}`
      if (!v.equals(w.verf)) return `${what}: a verifier that is not the server's`
      if (write) write.acked = true
      return undefined
    },
  }
}

/** Well-formed calls, each with what it must return. */
function wellFormed(rng: Rng, h: Handles, fx: Content, w?: WritableCtx): Call {
  if (w && rng.chance(0.45)) return writeCall(rng, h, fx, w)
  const badHandle = () => rng.pick([Buffer.alloc(0), Buffer.alloc(24), Buffer.from(h.file).fill(0x41, 4, 8), Buffer.concat([h.file, Buffer.from([0])])])
  const kind = rng.weighted([
    [2, 'null'],
    [2, 'mnt'],
    [1, 'mount-misc'],
    [1, 'pmap'],
    [2, 'getattr'],
    [2, 'lookup'],
    [1, 'access'],
    [12, 'read'],
    [2, 'readdir'],
    [2, 'fs'],
    [2, 'write-type'],
    [1, 'readlink'],
    [2, 'bad-handle'],
  ] as const)
  switch (kind) {
    case 'null': {
      const [prog, vers] = rng.pick([
        [PMAP, 2],
        [MOUNT, 3],
        [NFS, 3],
      ])
      return {prog, vers, proc: 0, args: Buffer.alloc(0), what: `NULL of ${prog}`, body: (b) => (b.done ? undefined : 'NULL returned a body')}
    }
    case 'mnt': {
      const path = rng.pick(['/', '//', '/x', '', 'relative', '/'.repeat(1024)])
      const ok = path === '/' || path === '//' || /^\/+$/.test(path)
      return {prog: MOUNT, vers: 3, proc: 1, args: str(path), what: `MNT ${JSON.stringify(path.slice(0, 20))}`, body: ok ? status(0, 'MNT') : (b) => (b.u32() === 0 ? 'MNT of a path that is not the export succeeded' : undefined)}
    }
    case 'mount-misc': {
      const proc = rng.pick([2, 3, 4, 5])
      return {prog: MOUNT, vers: 3, proc, args: proc === 3 ? str('/') : Buffer.alloc(0), what: `MOUNT procedure ${proc}`}
    }
    case 'pmap': {
      const proc = rng.pick([1, 2, 3, 4])
      return {prog: PMAP, vers: 2, proc, args: proc === 4 ? Buffer.alloc(0) : u32(rng.pick([NFS, MOUNT, 7]), 3, rng.pick([6, 17]), 0), what: `portmap procedure ${proc}`}
    }
    case 'getattr': {
      const fh = rng.chance(0.5) ? h.file : h.root
      return {prog: NFS, vers: 3, proc: 1, args: opaque(fh), what: 'GETATTR', body: status(NFS3_OK, 'GETATTR')}
    }
    case 'lookup': {
      const name = rng.pick(['disk.img', '.', '..', 'nope', 'x'.repeat(256), 'disk.img\u0000'])
      const found = ['disk.img', '.', '..'].includes(name)
      return {prog: NFS, vers: 3, proc: 3, args: Buffer.concat([opaque(h.root), str(name)]), what: `LOOKUP ${JSON.stringify(name.slice(0, 20))}`, body: found ? status(NFS3_OK, 'LOOKUP') : undefined}
    }
    case 'access':
      return {prog: NFS, vers: 3, proc: 4, args: Buffer.concat([opaque(h.file), u32(rng.u32())]), what: 'ACCESS', body: status(NFS3_OK, 'ACCESS')}
    case 'read': {
      const size = BigInt(fx.size)
      const offset = rng.weighted([
        [10, BigInt(rng.int(fx.size))],
        [3, BigInt(rng.int(fx.size / 512) * 512)],
        [1, size],
        [1, size - 1n],
        [1, (1n << 53n) + 1n],
        [1, 0xffffffffffffffffn],
      ] as const)
      const count = rng.pick([0, 1, 512, 4096, 65536, 1 << 20, (1 << 20) + 1, 0xffffffff, rng.int(300000)])
      const spanAt = offset < size ? Number(offset) : 0
      return {
        prog: NFS, vers: 3, proc: 6, args: Buffer.concat([opaque(h.file), u64(offset), u32(count)]), what: `READ ${count} at ${offset}`, body: expectRead(fx, offset, count),
        kind: 'read', span: sectorSpan(spanAt, Math.min(count, RTMAX, fx.size - spanAt)),
      }
    }
    case 'readdir': {
      const plus = rng.chance(0.5)
      const cookie = rng.pick([0n, 1n, 2n, 3n, 4n, 0xffffffffffffffffn])
      const verf = rng.chance(0.7) ? Buffer.alloc(8) : rng.bytes(8)
      const count = rng.pick([0, 100, 200, 4096, 0xffffffff])
      const args = Buffer.concat([opaque(h.root), u64(cookie), verf, ...(plus ? [u32(rng.pick([0, 50, 4096]))] : []), u32(count)])
      return {prog: NFS, vers: 3, proc: plus ? 17 : 16, args, what: `READDIR${plus ? 'PLUS' : ''} cookie ${cookie} count ${count}`}
    }
    case 'fs': {
      const proc = rng.pick([18, 19, 20])
      return {prog: NFS, vers: 3, proc, args: opaque(rng.chance(0.5) ? h.root : h.file), what: `FS procedure ${proc}`, body: status(NFS3_OK, `procedure ${proc}`)}
    }
    case 'write-type': {
      // Writable, only the procedures that would change the tree are refused (NFS3ERR_ACCES); they decode the handle only.
      const proc = w ? rng.pick([8, 9, 10, 11, 12, 13, 14, 15]) : rng.pick([2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 21])
      return {prog: NFS, vers: 3, proc, args: Buffer.concat([opaque(h.file), rng.bytes(rng.pick([0, 8, 64]))]), what: `write-type procedure ${proc}`, body: status(w ? NFS3ERR_ACCES : NFS3ERR_ROFS, `procedure ${proc}`)}
    }
    case 'readlink':
      return {prog: NFS, vers: 3, proc: 5, args: opaque(h.file), what: 'READLINK', body: status(22, 'READLINK')}
    case 'bad-handle': {
      const proc = rng.pick([1, 4, 6, 16, 18, 19, 20, 7])
      // 32 zero bytes after the handle: for WRITE an offset, count 0, UNSTABLE, no data, which decodes.
      const args = Buffer.concat([opaque(badHandle()), Buffer.alloc(32)])
      return {prog: NFS, vers: 3, proc, args, what: `procedure ${proc} with a bad handle`, body: (b) => (b.u32() === NFS3_OK ? 'a bad handle was accepted' : undefined)}
    }
  }
}

/** A session: well-formed and malformed records, and how it ends. */
function generate(rng: Rng, h: Handles, fx: Content, w?: WritableCtx): Session {
  const s: Session = {records: [], steps: [], expects: [], ending: 'graceful', unknownWrites: false}
  let xid = rng.u32()
  const n = rng.pick([1, 1, 2, 4, 8, 16])
  // Writable: the calls of one session run concurrently, so no two WRITEs may touch one sector, and a READ
  // that shares a sector with a WRITE of its session has no single due answer (its body is not checked).
  const writeSpans: Span[] = []
  const reads: Array<{span: Span; e: Expect}> = []
  for (let i = 0; i < n; i++) {
    xid = (xid + 1) >>> 0
    let call = wellFormed(rng, h, fx, w)
    for (let k = 0; k < 5 && call.span && call.kind === 'write' && writeSpans.some((sp) => overlaps(sp, call.span!)); k++) call = wellFormed(rng, h, fx, w)
    if (call.span && call.kind === 'write' && writeSpans.some((sp) => overlaps(sp, call.span!)))
      call = {prog: NFS, vers: 3, proc: 0, args: Buffer.alloc(0), what: 'NULL of NFS (instead of an overlapping WRITE)'}
    const e: Expect = {xid, what: call.what, accept: call.accept ?? 0, body: call.body, write: call.write}
    if (call.kind === 'write' && call.span) writeSpans.push(call.span)
    if (call.kind === 'read' && call.span) reads.push({span: call.span, e})
    let msg: Buffer
    const m = rng.weighted([
      [12, 'none'],
      [2, 'proc'],
      [1, 'prog'],
      [1, 'vers'],
      [1, 'rpcvers'],
      [1, 'flavor'],
      [1, 'cred-long'],
      [1, 'authsys-bad'],
      [1, 'verf-long'],
      [3, 'args-cut'],
      [2, 'args-extra'],
      [2, 'args-length'],
      [1, 'args-random'],
    ] as const)
    let step = call.what
    switch (m) {
      case 'none':
        msg = callMessage(xid, call.prog, call.vers, call.proc, call.args, {flavor: rng.chance(0.8) ? 1 : 0})
        break
      case 'proc': {
        const max = call.prog === NFS ? 21 : call.prog === MOUNT ? 5 : 5
        const proc = rng.pick([max + 1, 100, 0x7fffffff, 0xffffffff])
        msg = callMessage(xid, call.prog, call.vers, proc, call.args)
        e.accept = 3 // PROC_UNAVAIL
        e.body = undefined
        step = `unknown procedure ${proc} of ${call.prog}`
        break
      }
      case 'prog': {
        const prog = rng.pick([0, 100227, 100021, 0xffffffff])
        msg = callMessage(xid, prog, 3, call.proc, call.args)
        e.accept = 1 // PROG_UNAVAIL
        e.body = (b) => (b.done ? undefined : 'PROG_UNAVAIL with a body')
        step = `unknown program ${prog}`
        break
      }
      case 'vers': {
        const vers = rng.pick([0, 1, 4, 0xffffffff].filter((v) => v !== call.vers))
        msg = callMessage(xid, call.prog, vers, call.proc, call.args)
        e.accept = 2 // PROG_MISMATCH
        const v = call.prog === PMAP ? 2 : 3
        e.body = (b) => {
          const lo = b.u32()
          const hi = b.u32()
          return lo === v && hi === v ? undefined : `PROG_MISMATCH ${lo}..${hi}`
        }
        step = `${call.what}, version ${vers}`
        break
      }
      case 'rpcvers':
        msg = callMessage(xid, call.prog, call.vers, call.proc, call.args, {rpcvers: rng.pick([0, 1, 3, 0xffffffff])})
        e.accept = undefined
        e.denied = 'rpc-mismatch'
        step = `${call.what}, RPC version not 2`
        break
      case 'flavor':
        msg = callMessage(xid, call.prog, call.vers, call.proc, call.args, {flavor: rng.pick([2, 3, 6, 0xffffffff]), cred: rng.bytes(rng.pick([0, 8, 100]))})
        e.accept = undefined
        e.denied = 'auth-badcred'
        step = `${call.what}, an unknown credential flavor`
        break
      case 'cred-long':
        msg = callMessage(xid, call.prog, call.vers, call.proc, call.args, {flavor: rng.pick([0, 1]), cred: rng.bytes(rng.pick([401, 1000, 4096]))})
        e.accept = undefined
        e.denied = 'auth-badcred'
        step = `${call.what}, a credential over 400 bytes`
        break
      case 'authsys-bad': {
        const which = rng.pick(['gids', 'machine', 'cut'])
        let cred: Buffer
        if (which === 'gids') cred = Buffer.concat([u32(1), str('m'), u32(0, 0), u32(17), Buffer.alloc(17 * 4)])
        else if (which === 'machine') cred = Buffer.concat([u32(1), str('m'.repeat(256)), u32(0, 0, 0)])
        else cred = authSysCred().subarray(0, rng.range(0, 15))
        msg = callMessage(xid, call.prog, call.vers, call.proc, call.args, {flavor: 1, cred})
        e.accept = undefined
        e.denied = 'auth-badcred'
        step = `${call.what}, AUTH_SYS with ${which === 'cut' ? 'a truncated body' : which === 'gids' ? '17 groups' : 'a 256-byte machine name'}`
        break
      }
      case 'verf-long': {
        const head = callMessage(xid, call.prog, call.vers, call.proc, Buffer.alloc(0), {flavor: 0})
        // Replace the AUTH_NONE verifier (its last 8 bytes) by one of 0xffffffff or 401 bytes.
        const len = rng.pick([401, 0xffffffff])
        msg = Buffer.concat([head.subarray(0, head.length - 8), u32(0, len), len === 401 ? Buffer.alloc(404) : Buffer.alloc(0), call.args])
        e.accept = undefined
        e.denied = 'auth-badcred'
        step = `${call.what}, a verifier claiming ${len} bytes`
        break
      }
      case 'args-cut':
        msg = callMessage(xid, call.prog, call.vers, call.proc, call.args.subarray(0, rng.int(call.args.length + 1)))
        e.accept = call.args.length ? undefined : 0
        e.body = undefined
        if (e.write) s.unknownWrites = true
        step = `${call.what}, arguments cut short`
        break
      case 'args-extra':
        msg = callMessage(xid, call.prog, call.vers, call.proc, Buffer.concat([call.args, rng.bytes(rng.pick([1, 4, 100]))]))
        step = `${call.what}, extra bytes after the arguments`
        break
      case 'args-length': {
        // An XDR length field set to a huge value: the first word of the arguments (the handle's or the string's length).
        const args = Buffer.from(call.args)
        if (args.length >= 4) args.writeUInt32BE(rng.pick([0xffffffff, 0x7fffffff, 65, 0x10000]), 0)
        msg = callMessage(xid, call.prog, call.vers, call.proc, args)
        e.accept = undefined
        e.body = undefined
        step = `${call.what}, first argument length 2^32-1`
        break
      }
      default:
        msg = callMessage(xid, call.prog, call.vers, call.proc, rng.bytes(rng.pick([0, 4, 28, 200])))
        e.accept = undefined
        e.body = undefined
        step = `${call.what}, random arguments`
    }
    if (m !== 'none' && m !== 'args-extra' && m !== 'args-cut') e.write = undefined // never carried out
    const f = frame(msg, rng)
    s.records.push(f.bytes)
    s.steps.push(`xid ${xid}: ${step}${f.how}`)
    s.expects.push(e)
  }
  for (const r of reads) if (writeSpans.some((sp) => overlaps(sp, r.span))) r.e.body = undefined
  s.ending = rng.weighted([
    [8, 'graceful'],
    [3, 'close'],
    [2, 'eof'],
    [2, 'destroy'],
  ] as const)
  if (s.ending === 'close') {
    const which = rng.pick(['reply', 'short', 'header', 'huge', 'huge-total'])
    let bytes: Buffer
    if (which === 'reply') bytes = Buffer.concat([u32(0x80000018), u32(xid + 1, rng.pick([1, 2, 0xffffffff]), 2, NFS, 3, 0)])
    else if (which === 'short') bytes = Buffer.concat([u32((0x80000000 | 4) >>> 0), u32(xid + 1)])
    else if (which === 'header') bytes = Buffer.concat([u32((0x80000000 | 16) >>> 0), u32(xid + 1, 0, 2, NFS)])
    else if (which === 'huge') bytes = u32(rng.pick([MAX_RECORD + 1, 0x7fffffff, 0xffffffff]))
    else bytes = Buffer.concat([u32(MAX_RECORD - 100), Buffer.alloc(MAX_RECORD - 100), u32(0x80000000 | 200)])
    s.records.push(bytes)
    s.steps.push(`a record that must close the connection: ${which}`)
  } else if (s.ending === 'eof') {
    const m = callMessage(xid + 1, NFS, 3, 0)
    const claimed = m.length + rng.range(0, 100)
    s.records.push(Buffer.concat([u32((0x80000000 | claimed) >>> 0), m.subarray(0, rng.int(m.length))]))
    s.steps.push('a record cut short, then end of stream')
  }
  return s
}

interface Parsed {
  replies: Reply[]
  problems: string[]
}

/** Split the server's output into records (it sends each reply as one last fragment). */
function records(out: Buffer): Parsed {
  const replies: Reply[] = []
  const problems: string[] = []
  let at = 0
  while (at < out.length) {
    if (out.length - at < 4) {
      problems.push(`${out.length - at} stray bytes at the end of the output`)
      break
    }
    const mark = out.readUInt32BE(at)
    const len = mark & 0x7fffffff
    if (!(mark & 0x80000000)) problems.push('a reply sent in several fragments')
    if (out.length - at - 4 < len) {
      problems.push(`a reply record of ${len} bytes cut short`)
      break
    }
    const rec = out.subarray(at + 4, at + 4 + len)
    at += 4 + len
    try {
      replies.push(parseReply(rec))
    } catch (err) {
      problems.push(`a reply that does not parse: ${(err as Error).message}`)
    }
  }
  return {replies, problems}
}

function checkReply(r: Reply, e: Expect): string | undefined {
  if (r.replyStat === 0) {
    if (r.acceptStat === 5) return `${e.what}: SYSTEM_ERR (an exception inside the procedure)`
    if (r.acceptStat! > 5) return `${e.what}: accept_stat ${r.acceptStat}`
    if (e.denied) return `${e.what}: accepted (${r.acceptStat}) where ${e.denied} was due`
    if (e.accept !== undefined && r.acceptStat !== e.accept) return `${e.what}: accept_stat ${r.acceptStat}, ${e.accept} due`
    if (r.acceptStat === 0 && e.body) {
      try {
        return e.body(new Body(r.body))
      } catch (err) {
        return `${e.what}: the results do not parse (${(err as Error).message})`
      }
    }
    return undefined
  }
  if (r.replyStat !== 1) return `${e.what}: reply_stat ${r.replyStat}`
  const w = r.rejectWords ?? []
  if (r.rejectStat === 0) {
    if (w[0] !== 2 || w[1] !== 2) return `${e.what}: RPC_MISMATCH ${w[0]}..${w[1]}`
    return e.denied === 'rpc-mismatch' || e.accept === undefined ? undefined : `${e.what}: RPC_MISMATCH where a call was due`
  }
  if (r.rejectStat === 1) {
    if (e.denied === 'auth-badcred' && w[0] !== 1) return `${e.what}: auth_stat ${w[0]}, AUTH_BADCRED due`
    return e.denied === 'auth-badcred' || e.accept === undefined ? undefined : `${e.what}: AUTH_ERROR ${w[0]} where a call was due`
  }
  return `${e.what}: reject_stat ${r.rejectStat}`
}

interface SessionResult {
  failures: string[]
  steps: string[]
  input: Buffer
  outcome: string
  /** Every reply seen and checked, so the acknowledged writes are exactly the ones carried out. */
  clean: boolean
  writes: PendingWrite[]
}

async function runSession(port: number, h: Handles, fx: Content, ctx: CaseContext, wctx?: WritableCtx): Promise<SessionResult> {
  const rng = ctx.rng
  const s = generate(rng, h, fx, wctx)
  const steps = [...s.steps, `ending: ${s.ending}`]
  let bytes: Buffer = Buffer.concat(s.records)
  const isChaos = rng.chance(0.2)
  if (isChaos) {
    const n = rng.pick([1, 2, 4, 8])
    for (let i = 0; i < n && bytes.length; i++) {
      const at = rng.int(bytes.length)
      bytes[at] ^= 1 << rng.int(8)
      steps.push(`chaos: bit flipped at byte ${at}`)
    }
  }
  const ending = s.ending
  if (ending === 'destroy') {
    bytes = bytes.subarray(0, rng.int(bytes.length + 1))
    steps.push(`cut at byte ${bytes.length}, then the socket destroyed`)
  }
  const failures: string[] = []
  const sock = net.connect({port, host: '127.0.0.1'})
  const out: Buffer[] = []
  let outLength = 0
  let closed = false
  sock.on('data', (d: Buffer) => {
    out.push(d)
    outLength += d.length
  })
  sock.on('error', () => undefined)
  const closedP = new Promise<void>((resolve) => sock.once('close', () => ((closed = true), resolve())))
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve)
    sock.once('error', reject)
  })
  // Pieces split anywhere, but the last record in one write (a server that closes after it must not make
  // our write fail and take the unread replies with it).
  const last = isChaos || ending === 'destroy' ? bytes.length : bytes.length - s.records[s.records.length - 1].length
  const pieces = rng.chance(0.6) ? 1 : rng.range(2, 8)
  let at = 0
  for (let i = 0; i < pieces && !closed; i++) {
    const end = i === pieces - 1 ? last : Math.min(last, at + rng.int(last - at + 1))
    if (end > at) sock.write(bytes.subarray(at, end))
    at = end
    if (pieces > 1) await new Promise((r) => setImmediate(r))
  }
  if (at < bytes.length && !closed) sock.write(bytes.subarray(at))
  const wait = (ms: number) => new Promise<boolean>((r) => setTimeout(() => r(false), ms))
  if (ending === 'destroy') sock.destroy()
  else if (ending === 'graceful' && !isChaos) {
    // Every call is answered; then we close.
    const want = s.expects.length
    const t0 = Date.now()
    while (Date.now() - t0 < 5000 && !closed && records(Buffer.concat(out)).replies.length < want) await new Promise((r) => setTimeout(r, 2))
    sock.end()
    if (!(await Promise.race([closedP.then(() => true), wait(5000)]))) failures.push('the server did not close after the client\'s end of stream')
  } else if (ending === 'close' && !isChaos) {
    if (!(await Promise.race([closedP.then(() => true), wait(5000)]))) failures.push('the server kept the connection open after a record that breaks the protocol')
  } else {
    sock.end()
    if (!(await Promise.race([closedP.then(() => true), wait(5000)]))) failures.push('the server did not close after the client\'s end of stream')
  }
  sock.destroy()
  await closedP
  const output = Buffer.concat(out, outLength)
  const parsed = records(output)
  const expects = new Map(s.expects.map((e) => [e.xid, e]))
  const seen = new Set<string>()
  let clean = false
  if (!isChaos) {
    // A connection we destroyed, or one the server closed for a protocol error, may stop mid-reply.
    const abrupt = ending === 'destroy' || ending === 'close'
    failures.push(...parsed.problems.filter((p) => !(abrupt && /cut short|stray bytes/.test(p))))
    for (const r of parsed.replies) {
      const e = expects.get(r.xid)
      if (!e) {
        failures.push(`a reply for xid ${r.xid}, which is not outstanding`)
        continue
      }
      expects.delete(r.xid)
      seen.add(r.replyStat === 0 ? `accept${r.acceptStat}` : `deny${r.rejectStat}.${r.rejectWords?.[0]}`)
      const p = checkReply(r, e)
      if (p) failures.push(p)
    }
    if (ending === 'graceful' && expects.size) failures.push(`${expects.size} calls never answered (the first: ${expects.values().next().value!.what})`)
    clean = ending === 'graceful' && expects.size === 0 && !s.unknownWrites
  } else {
    // Whatever the bytes were: replies are records of well-formed replies, never SYSTEM_ERR.
    for (const r of parsed.replies) if (r.replyStat === 0 && r.acceptStat === 5) failures.push(`SYSTEM_ERR for xid ${r.xid} (an exception inside a procedure)`)
  }
  const writes = s.expects.flatMap((e) => (e.write ? [e.write] : []))
  const outcome = `${wctx ? 'rw:' : ''}${isChaos ? 'chaos' : 'model'}:${ending}:${parsed.replies.length ? [...seen].sort().join(',') : 'silent'}`
  return {failures, steps, input: bytes, outcome, clean, writes}
}

/** The witness reads a range with no bad area in it (or, with `near`, one around a write) and checks the bytes. */
async function witnessRead(w: RpcClient, h: Handles, fx: Content, rng: Rng, near?: PendingWrite): Promise<string | undefined> {
  let offset = 0
  let count = 4096
  if (near) {
    offset = Math.max(0, near.offset - rng.int(4096))
    count = Math.min(near.data.length + 8192, RTMAX)
  } else
    for (let k = 0; k < 20; k++) {
      offset = rng.int(fx.size - 65536)
      count = rng.pick([1, 512, 4096, 65536])
      if (firstBad(fx, offset, offset + count) === undefined) break
    }
  try {
    const r = await w.call(NFS, 3, 6, Buffer.concat([opaque(h.file), u64(offset), u32(count)]))
    if (r.acceptStat !== 0) return `the witness READ got accept_stat ${r.acceptStat}`
    return expectRead(fx, BigInt(offset), count)(new Body(r.body))
  } catch (err) {
    return `the witness connection failed: ${(err as Error).message}`
  }
}

async function handles(port: number): Promise<{client: RpcClient; h: Handles}> {
  const client = await RpcClient.connect(port)
  const mnt = new Body((await client.call(MOUNT, 3, 1, str('/'))).body)
  if (mnt.u32() !== 0) throw new Error('MNT / failed')
  const root = Buffer.from(mnt.opaque())
  const look = new Body((await client.call(NFS, 3, 3, Buffer.concat([opaque(root), str('disk.img')]))).body)
  if (look.u32() !== 0) throw new Error('LOOKUP disk.img failed')
  return {client, h: {root, file: Buffer.from(look.opaque())}}
}

/** A writable server over a fresh overlay for one case, so that every case replays alone. */
interface WritableServer {
  ovl: Overlay
  nfs: NfsServerHandle
  witness: RpcClient
  h: Handles
  verf: Buffer
  file: string
  close(): Promise<void>
}

async function startWritable(fx: ServedImage, file: string, log: (l: string) => void, threads: number): Promise<WritableServer> {
  fs.rmSync(file, {force: true})
  const ovl = await Overlay.open(await openImage(fx.image), file)
  let nfs: NfsServerHandle | undefined
  let witness: RpcClient | undefined
  try {
    nfs = await startNfsServer(new BlockServer(ovl), {host: '127.0.0.1', port: 0, exportName: '/', fileName: 'disk.img', log, wtmax: WTMAX, threads})
    if (threads && nfs.threads === 0) throw new Error('serving threads did not start')
    const hs = await handles(nfs.port)
    witness = hs.client
    const c = new Body((await witness.call(NFS, 3, 21, Buffer.concat([opaque(hs.h.file), u64(0), u32(0)]))).body)
    if (c.u32() !== NFS3_OK) throw new Error('the first COMMIT failed')
    c.wcc()
    const verf = Buffer.from(c.b.subarray(c.at, c.at + 8))
    const n = nfs
    const w = witness
    return {
      ovl, nfs, witness, h: hs.h, verf, file,
      async close() {
        w.close()
        await n.close()
        await ovl.close()
      },
    }
  } catch (err) {
    witness?.close()
    await nfs?.close()
    await ovl.close()
    throw err
  }
}

/** A writable case: one session against a server over a fresh overlay, then the overlay checked against the model. */
async function runWritableCase(fx: ServedImage, ctx: CaseContext, logs: string[], threads: number): Promise<SessionResult> {
  const file = path.join(fx.dir, 'rw.vdovl')
  const ws = await startWritable(fx, file, (l) => logs.push(l), threads)
  const model = contentOf(fx)
  let r: SessionResult
  try {
    r = await runSession(ws.nfs.port, ws.h, model, ctx, {verf: ws.verf})
    if (threads) r.outcome = `threads:${r.outcome}`
    // A COMMIT is a flush, queued behind every write of the session: once it is answered they are all done.
    const c = await ws.witness.call(NFS, 3, 21, Buffer.concat([opaque(ws.h.file), u64(0), u32(0)]))
    const cb = new Body(c.body)
    if (c.acceptStat !== 0 || cb.u32() !== NFS3_OK) r.failures.push('the witness COMMIT after the session failed')
    else {
      cb.wcc()
      if (!cb.b.subarray(cb.at, cb.at + 8).equals(ws.verf)) r.failures.push('the write verifier changed while the server ran')
    }
    if (r.clean) {
      for (const w of r.writes) if (w.acked) applyWrite(model, w.offset, w.data)
      const diff = await compareOverlay(ws.ovl, model)
      if (diff) r.failures.push(`after the session: ${diff}`)
      const acked = r.writes.filter((w) => w.acked)
      const wr = await witnessRead(ws.witness, ws.h, model, ctx.rng, acked.length ? ctx.rng.pick(acked) : undefined)
      if (wr) r.failures.push(`writable server: ${wr}`)
    }
  } finally {
    await ws.close()
  }
  const reopened = await reopenOverlay(fx, file)
  if (reopened) r.failures.push(reopened)
  fs.rmSync(file, {force: true})
  return r
}

/** A long-lived read-only server: on the main thread, or on serving threads (the witness holds one of them). */
interface ReadServer {
  nfs: NfsServerHandle
  witness?: RpcClient
  h: Handles
}

export const nfsTarget: Target = {
  name: 'nfs',
  caseTimeoutMs: 30_000,
  async setup(): Promise<TargetInstance> {
    const fx = await makeServedImage('vdev-fuzz-nfs-', {tailBad: false})
    const content = contentOf(fx)
    const images: VdimgImage[] = []
    const servers: ReadServer[] = []
    const logs: string[] = []
    const mk = async (threads: number): Promise<ReadServer> => {
      const img = await openImage(fx.image)
      images.push(img)
      const nfs = await startNfsServer(new BlockServer(img), {host: '127.0.0.1', port: 0, exportName: '/', fileName: 'disk.img', log: (l) => logs.push(l), threads})
      if (threads && nfs.threads === 0) {
        await nfs.close()
        throw new Error(`serving threads did not start: ${logs.join('; ')}`)
      }
      const srv: ReadServer = {nfs, h: undefined as unknown as Handles}
      servers.push(srv)
      ;({client: srv.witness, h: srv.h} = await handles(nfs.port))
      return srv
    }
    const closeAll = async (): Promise<void> => {
      for (const s of servers) {
        s.witness?.close()
        await s.nfs.close()
      }
      for (const i of images) await i.close()
      fx.cleanup()
    }
    try {
      await mk(0)
      // Three threads: the witness's, the session's, and one for a session whose thread is still finishing.
      await mk(3)
    } catch (err) {
      await closeAll()
      throw err
    }
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const logStart = logs.length
        let r: SessionResult
        // Writable cases start a server each (serving threads take a few hundred ms to start).
        if (ctx.rng.chance(0.4)) r = await runWritableCase(fx, ctx, logs, ctx.rng.chance(0.25) ? 2 : 0)
        else {
          const srv = ctx.rng.pick(servers)
          r = await runSession(srv.nfs.port, srv.h, content, ctx)
          const w = srv.witness ? await witnessRead(srv.witness, srv.h, content, ctx.rng) : 'no witness connection'
          if (w) {
            r.failures.push(w)
            srv.witness?.close()
            srv.witness = undefined
            try {
              srv.witness = (await handles(srv.nfs.port)).client
            } catch (err) {
              r.failures.push(`a fresh client could not mount: ${(err as Error).message}`)
            }
          }
          if (srv.nfs.threads) r.outcome = `threads:${r.outcome}`
        }
        for (const l of logs.slice(logStart)) if (INTERNAL_LOG.test(l)) r.failures.push(`the server logged an internal error: ${l.slice(0, 300)}`)
        if (logs.length > 10000) logs.splice(0, logs.length)
        return {outcome: r.outcome + (r.failures.length ? `:fail:${normalize(r.failures[0], 60)}` : ''), failures: r.failures, input: {ext: 'bin', data: r.input}, steps: r.steps}
      },
      close: closeAll,
    }
  },
}

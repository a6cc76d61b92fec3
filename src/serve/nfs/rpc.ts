/**
 * ONC RPC version 2 (RFC 5531) over TCP: record marking (§11), the call header (§9), authentication
 * flavors (§8.1, Appendix A) and the reply shapes (§9). Programs (portmap, MOUNT, NFS) sit on top and
 * only ever see a decoded call and return a result body or an accept_stat.
 */
import {XdrError, XdrReader, XdrWriter} from './xdr'

/** RFC 5531 §9: the only RPC protocol version. */
export const RPC_VERSION = 2

/** RFC 5531 §9 msg_type. */
export const MsgType = {CALL: 0, REPLY: 1} as const

/** RFC 5531 §9 reply_stat. */
export const ReplyStat = {MSG_ACCEPTED: 0, MSG_DENIED: 1} as const

/** RFC 5531 §9 accept_stat. */
export const AcceptStat = {
  SUCCESS: 0,
  PROG_UNAVAIL: 1,
  PROG_MISMATCH: 2,
  PROC_UNAVAIL: 3,
  GARBAGE_ARGS: 4,
  SYSTEM_ERR: 5,
} as const
export type AcceptStatCode = (typeof AcceptStat)[keyof typeof AcceptStat]

/** RFC 5531 §9 reject_stat. */
export const RejectStat = {RPC_MISMATCH: 0, AUTH_ERROR: 1} as const

/** RFC 5531 §9 auth_stat. */
export const AuthStat = {
  AUTH_OK: 0,
  AUTH_BADCRED: 1,
  AUTH_REJECTEDCRED: 2,
  AUTH_BADVERF: 3,
  AUTH_REJECTEDVERF: 4,
  AUTH_TOOWEAK: 5,
} as const

/** RFC 5531 §8.1 / Appendix A: authentication flavors. */
export const AuthFlavor = {AUTH_NONE: 0, AUTH_SYS: 1, AUTH_SHORT: 2, AUTH_DH: 3, RPCSEC_GSS: 6} as const

/** RFC 5531 §8.2: opaque_auth body<400>. */
export const MAX_AUTH_BYTES = 400

/** RFC 5531 §11: the high bit of a record mark says "last fragment"; the low 31 bits are its length. */
export const LAST_FRAGMENT = 0x80000000
export const FRAGMENT_LENGTH_MASK = 0x7fffffff

/** Appendix A authsys_parms limits: machinename<255>, gids<16>. */
const AUTHSYS_MACHINENAME_MAX = 255
const AUTHSYS_GIDS_MAX = 16

export interface AuthSys {
  stamp: number
  machineName: string
  uid: number
  gid: number
  gids: number[]
}

export interface RpcCall {
  xid: number
  prog: number
  vers: number
  proc: number
  credFlavor: number
  /** Decoded when credFlavor is AUTH_SYS. */
  authSys?: AuthSys
  /** Procedure arguments, positioned just past the call header. */
  args: XdrReader
}

/** A message that is not a well-formed call: the connection cannot be trusted and is closed. */
export class RpcProtocolError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RpcProtocolError'
  }
}

/** The header decoded, but the call must be refused before any program sees it. */
export type HeaderResult =
  | {ok: true; call: RpcCall}
  | {ok: false; xid: number; reply: 'rpc-mismatch' | 'auth-badcred'; detail: string}

function decodeAuthSys(body: Buffer): AuthSys {
  const r = new XdrReader(body)
  const stamp = r.uint32('authsys stamp')
  const machineName = r.string(AUTHSYS_MACHINENAME_MAX, 'authsys machinename')
  const uid = r.uint32('authsys uid')
  const gid = r.uint32('authsys gid')
  const n = r.uint32('authsys gids count')
  if (n > AUTHSYS_GIDS_MAX) throw new XdrError(`authsys carries ${n} gids (at most ${AUTHSYS_GIDS_MAX})`)
  const gids: number[] = []
  for (let i = 0; i < n; i++) gids.push(r.uint32('authsys gid'))
  return {stamp, machineName, uid, gid, gids}
}

/**
 * Decode the RFC 5531 §9 call header of one record. Throws RpcProtocolError when not even the xid and
 * message type can be trusted (the caller closes the connection); returns a refusal when the call is
 * well framed but must be denied (wrong RPC version, undecodable credentials).
 */
export function decodeCallHeader(record: Buffer): HeaderResult {
  const r = new XdrReader(record)
  let xid: number
  let mtype: number
  try {
    xid = r.uint32('xid')
    mtype = r.uint32('msg_type')
  } catch {
    throw new RpcProtocolError(`record of ${record.length} bytes is too short for an RPC header`)
  }
  if (mtype !== MsgType.CALL) throw new RpcProtocolError(`message type ${mtype} where a CALL (0) was expected`)
  let rpcvers: number, prog: number, vers: number, proc: number
  try {
    rpcvers = r.uint32('rpcvers')
    prog = r.uint32('prog')
    vers = r.uint32('vers')
    proc = r.uint32('proc')
  } catch {
    throw new RpcProtocolError(`call ${xid} is truncated in its header`)
  }
  if (rpcvers !== RPC_VERSION) return {ok: false, xid, reply: 'rpc-mismatch', detail: `RPC version ${rpcvers}`}
  let credFlavor: number
  let credBody: Buffer
  try {
    credFlavor = r.uint32('credential flavor')
    credBody = r.opaque(MAX_AUTH_BYTES, 'credential')
    r.uint32('verifier flavor')
    r.opaque(MAX_AUTH_BYTES, 'verifier')
  } catch (err) {
    return {ok: false, xid, reply: 'auth-badcred', detail: (err as Error).message}
  }
  let authSys: AuthSys | undefined
  if (credFlavor === AuthFlavor.AUTH_SYS) {
    try {
      authSys = decodeAuthSys(credBody)
    } catch (err) {
      return {ok: false, xid, reply: 'auth-badcred', detail: (err as Error).message}
    }
  }
  return {ok: true, call: {xid, prog, vers, proc, credFlavor, authSys, args: r}}
}

/** The AUTH_NONE verifier every reply carries (RFC 5531 §9 accepted_reply.verf). */
function writeNullVerifier(w: XdrWriter): void {
  w.uint32(AuthFlavor.AUTH_NONE).uint32(0)
}

function replyHeader(xid: number, stat: number): XdrWriter {
  return new XdrWriter().uint32(xid).uint32(MsgType.REPLY).uint32(stat)
}

/** MSG_ACCEPTED / SUCCESS followed by the procedure's results (already encoded). */
export function acceptedReply(xid: number, results?: XdrWriter): Buffer[] {
  const w = replyHeader(xid, ReplyStat.MSG_ACCEPTED)
  writeNullVerifier(w)
  w.uint32(AcceptStat.SUCCESS)
  const head = w.buffers()
  return results ? [...head, ...results.buffers()] : head
}

/** MSG_ACCEPTED with an error accept_stat; PROG_MISMATCH carries the supported version range. */
export function acceptErrorReply(xid: number, stat: AcceptStatCode, mismatch?: {low: number; high: number}): Buffer[] {
  const w = replyHeader(xid, ReplyStat.MSG_ACCEPTED)
  writeNullVerifier(w)
  w.uint32(stat)
  if (stat === AcceptStat.PROG_MISMATCH) w.uint32(mismatch?.low ?? 0).uint32(mismatch?.high ?? 0)
  return w.buffers()
}

/** MSG_DENIED / RPC_MISMATCH: we speak RPC version 2 only. */
export function rpcMismatchReply(xid: number): Buffer[] {
  return replyHeader(xid, ReplyStat.MSG_DENIED)
    .uint32(RejectStat.RPC_MISMATCH)
    .uint32(RPC_VERSION)
    .uint32(RPC_VERSION)
    .buffers()
}

/** MSG_DENIED / AUTH_ERROR with the given auth_stat. */
export function authErrorReply(xid: number, stat: number): Buffer[] {
  return replyHeader(xid, ReplyStat.MSG_DENIED).uint32(RejectStat.AUTH_ERROR).uint32(stat).buffers()
}

/** Prefix a reply with its record mark: one last fragment (RFC 5531 §11). */
export function frameRecord(parts: Buffer[]): Buffer[] {
  let n = 0
  for (const p of parts) n += p.length
  if (n > FRAGMENT_LENGTH_MASK) throw new RangeError(`reply of ${n} bytes exceeds one fragment`)
  const mark = Buffer.allocUnsafe(4)
  mark.writeUInt32BE((LAST_FRAGMENT | n) >>> 0)
  return [mark, ...parts]
}

/** The incoming stream broke the record-marking rules (a record longer than the cap). */
export class RecordTooLargeError extends Error {
  constructor(
    readonly size: number,
    readonly cap: number,
  ) {
    super(`RPC record of at least ${size} bytes exceeds the ${cap}-byte limit`)
    this.name = 'RecordTooLargeError'
  }
}

/**
 * Reassembles RFC 5531 §11 records from a TCP byte stream. A record may span many fragments; its total
 * size is checked against `maxRecord` as each fragment header arrives, before any byte of it is kept,
 * so a hostile length can never make the server allocate.
 */
export class RecordDecoder {
  private header = Buffer.alloc(4)
  private headerHave = 0
  /** Bytes still to come in the current fragment; -1 while reading a fragment header. */
  private fragmentLeft = -1
  private lastFragment = false
  private pieces: Buffer[] = []
  private recordSize = 0

  constructor(private readonly maxRecord: number) {}

  /** Feed bytes; returns the records completed by them. Throws RecordTooLargeError. */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = []
    let at = 0
    while (at < chunk.length) {
      if (this.fragmentLeft < 0) {
        const take = Math.min(4 - this.headerHave, chunk.length - at)
        chunk.copy(this.header, this.headerHave, at, at + take)
        this.headerHave += take
        at += take
        if (this.headerHave < 4) break
        this.headerHave = 0
        const mark = this.header.readUInt32BE(0)
        this.lastFragment = (mark & LAST_FRAGMENT) !== 0
        const len = mark & FRAGMENT_LENGTH_MASK
        if (this.recordSize + len > this.maxRecord) throw new RecordTooLargeError(this.recordSize + len, this.maxRecord)
        this.fragmentLeft = len
      }
      const take = Math.min(this.fragmentLeft, chunk.length - at)
      if (take > 0) {
        this.pieces.push(chunk.subarray(at, at + take))
        this.recordSize += take
        this.fragmentLeft -= take
        at += take
      }
      if (this.fragmentLeft === 0) {
        this.fragmentLeft = -1
        if (this.lastFragment) {
          out.push(this.pieces.length === 1 ? this.pieces[0] : Buffer.concat(this.pieces, this.recordSize))
          this.pieces = []
          this.recordSize = 0
        }
      }
    }
    return out
  }
}

/** What a program learns about the caller. */
export interface CallContext {
  /** The peer is on the loopback interface (the only peers whose AUTH_SYS/AUTH_NONE we believe). */
  trusted: boolean
  /** The peer address, for MOUNT's DUMP list and logs. */
  peer: string
  log: (line: string) => void
  /**
   * `length` bytes the connection lends a READ to read its data into (reused once the reply has reached the
   * kernel), or undefined: a buffer of its own.
   */
  readBuffer?: (length: number) => Buffer | undefined
}

/** A procedure's outcome: its encoded results (SUCCESS), or an accept_stat error. */
export type ProcOutcome = XdrWriter | {accept: AcceptStatCode}

/** One RPC program (portmap, MOUNT, NFS) served on the shared port. */
export interface RpcProgram {
  readonly prog: number
  readonly name: string
  /** Supported versions, inclusive (PROG_MISMATCH reports them). */
  readonly low: number
  readonly high: number
  /** Decode arguments from call.args (throwing XdrError for GARBAGE_ARGS) and produce the results. */
  dispatch(call: RpcCall, ctx: CallContext): ProcOutcome | Promise<ProcOutcome>
}

export const PROC_UNAVAIL: ProcOutcome = {accept: AcceptStat.PROC_UNAVAIL}

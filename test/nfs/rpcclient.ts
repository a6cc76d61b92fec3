/**
 * A minimal ONC RPC client for protocol tests: it builds calls byte by byte (so malformed ones are easy)
 * and splits replies with its own record-mark parser (independent of the server's). Real clients — libnfs
 * and the kernel — are exercised elsewhere; this one reaches the corners they never send.
 */
import * as net from 'node:net'

export const AUTH_NONE = 0
export const AUTH_SYS = 1

export interface Reply {
  xid: number
  /** The whole reply record. */
  raw: Buffer
  /** reply_stat: 0 accepted, 1 denied. */
  replyStat: number
  /** accept_stat when accepted. */
  acceptStat?: number
  /** reject_stat when denied, and the auth_stat / mismatch words after it. */
  rejectStat?: number
  rejectWords?: number[]
  /** The results (accepted replies), positioned after accept_stat. */
  body: Buffer
}

/** XDR helpers for building argument bodies. */
export function u32(...vals: number[]): Buffer {
  const b = Buffer.alloc(4 * vals.length)
  vals.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 * i))
  return b
}
export function u64(v: number | bigint): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(v))
  return b
}
export function opaque(data: Buffer): Buffer {
  const pad = (4 - (data.length % 4)) % 4
  return Buffer.concat([u32(data.length), data, Buffer.alloc(pad)])
}
export function str(s: string): Buffer {
  return opaque(Buffer.from(s, 'utf8'))
}

export function authSysCred(uid = 0, gid = 0, machine = 'test'): Buffer {
  return Buffer.concat([u32(1234), str(machine), u32(uid, gid), u32(1, gid)])
}

/** An RPC call message (no record mark): RFC 5531 §9. */
export function callMessage(
  xid: number,
  prog: number,
  vers: number,
  proc: number,
  args: Buffer = Buffer.alloc(0),
  opts: {rpcvers?: number; flavor?: number; cred?: Buffer} = {},
): Buffer {
  const flavor = opts.flavor ?? AUTH_SYS
  const cred = opts.cred ?? (flavor === AUTH_SYS ? authSysCred() : Buffer.alloc(0))
  return Buffer.concat([
    u32(xid, 0, opts.rpcvers ?? 2, prog, vers, proc, flavor),
    opaque(cred),
    u32(AUTH_NONE, 0),
    args,
  ])
}

/** One last-fragment record mark + message. */
export function frame(msg: Buffer): Buffer {
  return Buffer.concat([u32((0x80000000 | msg.length) >>> 0), msg])
}

export function parseReply(raw: Buffer): Reply {
  const xid = raw.readUInt32BE(0)
  if (raw.readUInt32BE(4) !== 1) throw new Error('not a REPLY')
  const replyStat = raw.readUInt32BE(8)
  if (replyStat === 0) {
    const verfLen = raw.readUInt32BE(16)
    const at = 20 + verfLen + ((4 - (verfLen % 4)) % 4)
    return {xid, raw, replyStat, acceptStat: raw.readUInt32BE(at), body: raw.subarray(at + 4)}
  }
  const rejectStat = raw.readUInt32BE(12)
  const words: number[] = []
  for (let at = 16; at + 4 <= raw.length; at += 4) words.push(raw.readUInt32BE(at))
  return {xid, raw, replyStat, rejectStat, rejectWords: words, body: Buffer.alloc(0)}
}

export class RpcClient {
  private buf = Buffer.alloc(0)
  private pieces: Buffer[] = []
  private waiters = new Map<number, (r: Reply) => void>()
  private nextXid = 1000
  readonly closed: Promise<void>

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => this.onData(d))
    socket.on('error', () => {})
    this.closed = new Promise((resolve) => socket.on('close', () => resolve()))
  }

  static connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<RpcClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({port, host, localAddress}, () => resolve(new RpcClient(s)))
      s.once('error', reject)
    })
  }

  private onData(d: Buffer): void {
    this.buf = Buffer.concat([this.buf, d])
    for (;;) {
      if (this.buf.length < 4) return
      const mark = this.buf.readUInt32BE(0)
      const len = mark & 0x7fffffff
      if (this.buf.length < 4 + len) return
      this.pieces.push(this.buf.subarray(4, 4 + len))
      this.buf = this.buf.subarray(4 + len)
      if (mark & 0x80000000) {
        const rec = Buffer.concat(this.pieces)
        this.pieces = []
        const reply = parseReply(rec)
        const w = this.waiters.get(reply.xid)
        this.waiters.delete(reply.xid)
        w?.(reply)
      }
    }
  }

  /** Resolves with the reply to `xid`, or rejects if the server closes the connection first. */
  expect(xid: number, timeoutMs = 10000): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no reply to xid ${xid}`)), timeoutMs)
      this.waiters.set(xid, (r) => {
        clearTimeout(t)
        resolve(r)
      })
      void this.closed.then(() => {
        clearTimeout(t)
        if (this.waiters.delete(xid)) reject(new Error('connection closed'))
      })
    })
  }

  /** Send a well-formed call and wait for its reply. */
  call(
    prog: number,
    vers: number,
    proc: number,
    args?: Buffer,
    opts?: {rpcvers?: number; flavor?: number; cred?: Buffer},
  ): Promise<Reply> {
    const xid = this.nextXid++
    const p = this.expect(xid)
    this.socket.write(frame(callMessage(xid, prog, vers, proc, args, opts)))
    return p
  }

  /** Write raw bytes (malformed input). */
  write(bytes: Buffer): void {
    this.socket.write(bytes)
  }

  close(): void {
    this.socket.destroy()
  }
}

/** Sequential XDR decoding of reply bodies. */
export class Body {
  at = 0
  constructor(readonly b: Buffer) {}
  u32(): number {
    const v = this.b.readUInt32BE(this.at)
    this.at += 4
    return v
  }
  u64(): bigint {
    const v = this.b.readBigUInt64BE(this.at)
    this.at += 8
    return v
  }
  opaque(): Buffer {
    const n = this.u32()
    const v = this.b.subarray(this.at, this.at + n)
    this.at += n + ((4 - (n % 4)) % 4)
    return v
  }
  str(): string {
    return this.opaque().toString('utf8')
  }
  /** fattr3 (RFC 1813 §2.6). */
  fattr3(): {type: number; mode: number; nlink: number; size: bigint; fsid: bigint; fileid: bigint; mtime: number; mtimeNs: number; ctime: number; ctimeNs: number} {
    const type = this.u32()
    const mode = this.u32()
    const nlink = this.u32()
    this.u32() // uid
    this.u32() // gid
    const size = this.u64()
    this.u64() // used
    this.u64() // rdev
    const fsid = this.u64()
    const fileid = this.u64()
    this.u64() // atime
    const mtime = this.u32()
    const mtimeNs = this.u32()
    const ctime = this.u32()
    const ctimeNs = this.u32()
    return {type, mode, nlink, size, fsid, fileid, mtime, mtimeNs, ctime, ctimeNs}
  }
  /** pre_op_attr (RFC 1813 §2.6 wcc_attr: size, mtime, ctime). */
  preOpAttr(): {size: bigint; mtime: number; mtimeNs: number; ctime: number; ctimeNs: number} | undefined {
    if (!this.u32()) return undefined
    return {size: this.u64(), mtime: this.u32(), mtimeNs: this.u32(), ctime: this.u32(), ctimeNs: this.u32()}
  }
  /** wcc_data: pre_op_attr and post_op_attr. */
  wcc(): {before: ReturnType<Body['preOpAttr']>; after: ReturnType<Body['postOpAttr']>} {
    const before = this.preOpAttr()
    return {before, after: this.postOpAttr()}
  }
  postOpAttr(): ReturnType<Body['fattr3']> | undefined {
    return this.u32() ? this.fattr3() : undefined
  }
  get done(): boolean {
    return this.at === this.b.length
  }
}

/**
 * A deliberately small NBD client speaking raw bytes, for what real clients never send: malformed
 * handshakes and requests, pipelined requests, abrupt disconnects. It reuses the protocol encoders under
 * test only for well-formed messages; the malformed ones are built by hand.
 */
import * as net from 'node:net'
import * as P from '../../src/serve/nbd/protocol'
import {SocketReader} from '../../src/serve/nbd/reader'

export interface OptionReply {
  option: number
  type: number
  data: Buffer
}

export interface Reply {
  kind: 'simple' | 'structured'
  cookie: bigint
  error: number
  flags?: number
  type?: number
  payload: Buffer
}

export class RawClient {
  readonly reader: SocketReader
  closed: Promise<void>

  private constructor(readonly socket: net.Socket) {
    this.reader = new SocketReader(socket)
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
    socket.on('error', () => {})
  }

  static connect(target: {port: number; host?: string} | string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = typeof target === 'string' ? net.connect(target) : net.connect(target.port, target.host ?? '127.0.0.1')
      s.once('connect', () => resolve(new RawClient(s)))
      s.once('error', reject)
    })
  }

  send(b: Buffer): void {
    this.socket.write(b)
  }

  /** Read the 18-byte greeting and answer with client flags. */
  async greet(clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): Promise<{magic: bigint; opt: bigint; flags: number}> {
    const g = await this.reader.read(18)
    this.send(u32(clientFlags))
    return {magic: g.readBigUInt64BE(0), opt: g.readBigUInt64BE(8), flags: g.readUInt16BE(16)}
  }

  async option(option: number, data: Buffer = Buffer.alloc(0)): Promise<OptionReply[]> {
    this.send(Buffer.concat([P.encodeOptionHeader(option, data.length), data]))
    const replies: OptionReply[] = []
    for (;;) {
      const r = await this.optionReply()
      replies.push(r)
      if (r.type === P.NBD_REP_ACK || r.type >= 0x80000000) return replies
    }
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.reader.read(20)
    if (h.readBigUInt64BE(0) !== P.NBD_REP_MAGIC) throw new Error('bad option reply magic')
    const len = h.readUInt32BE(16)
    if (len > 1 << 20) throw new Error(`option reply of ${len} bytes`)
    return {option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await this.reader.read(len) : Buffer.alloc(0)}
  }

  /** Handshake through NBD_OPT_GO, optionally with structured replies and base:allocation. */
  async go(opts: {structured?: boolean; meta?: boolean; name?: string} = {}): Promise<{size: number; flags: number}> {
    await this.greet()
    if (opts.structured) await this.option(P.NBD_OPT_STRUCTURED_REPLY)
    if (opts.meta) await this.option(P.NBD_OPT_SET_META_CONTEXT, P.encodeMetaContextRequest(opts.name ?? '', [P.BASE_ALLOCATION]))
    const replies = await this.option(P.NBD_OPT_GO, P.encodeInfoRequest(opts.name ?? '', [P.NBD_INFO_BLOCK_SIZE]))
    const last = replies[replies.length - 1]
    if (last.type !== P.NBD_REP_ACK) throw new Error(`NBD_OPT_GO failed: 0x${last.type.toString(16)}`)
    const info = replies.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === P.NBD_INFO_EXPORT)!
    return {size: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10)}
  }

  request(type: number, offset: number, length: number, cookie: bigint, flags = 0): void {
    this.send(P.encodeRequest(type, flags, cookie, offset, length))
  }

  /** One reply; `readLengths` maps a cookie to the data length of a simple READ reply. */
  async reply(readLengths: Map<bigint, number> = new Map()): Promise<Reply> {
    const m = (await this.reader.read(4)).readUInt32BE(0)
    if (m === P.NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.reader.read(12)
      const cookie = rest.readBigUInt64BE(4)
      const error = rest.readUInt32BE(0)
      const n = error === 0 ? (readLengths.get(cookie) ?? 0) : 0
      return {kind: 'simple', cookie, error, payload: n ? await this.reader.read(n) : Buffer.alloc(0)}
    }
    if (m === P.NBD_STRUCTURED_REPLY_MAGIC) {
      const rest = await this.reader.read(16)
      const len = rest.readUInt32BE(12)
      if (len > 64 << 20) throw new Error(`structured chunk of ${len} bytes`)
      const payload = len ? await this.reader.read(len) : Buffer.alloc(0)
      const type = rest.readUInt16BE(2)
      const error = type & 0x8000 ? payload.readUInt32BE(0) : 0
      return {kind: 'structured', cookie: rest.readBigUInt64BE(4), flags: rest.readUInt16BE(0), type, error, payload}
    }
    throw new Error(`bad reply magic 0x${m.toString(16)}`)
  }

  destroy(): void {
    this.socket.destroy()
  }
}

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0, 0)
  return b
}

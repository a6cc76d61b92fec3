/**
 * The NBD wire protocol, defined once: constants with their place in the spec, and the encoders and decoders
 * of every message vdev sends or receives. Spec: NetworkBlockDevice/nbd doc/proto.md ("The NBD protocol");
 * section names are quoted beside each group. All integers are big-endian (network byte order).
 * The kernel client's view of the same transmission messages is include/uapi/linux/nbd.h.
 */

// "Newstyle negotiation": the server's greeting and the client's option header.
export const NBDMAGIC = 0x4e42444d41474943n // 'NBDMAGIC' (INIT_PASSWD)
export const IHAVEOPT = 0x49484156454f5054n // 'IHAVEOPT'
// "Fixed newstyle negotiation": magic of every option reply.
export const NBD_REP_MAGIC = 0x3e889045565a9n

// "Handshake flags" (16 bits, server → client).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_NO_ZEROES = 1 << 1
// "Client flags" (32 bits, client → server); any other bit → the server MUST drop the connection.
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_C_NO_ZEROES = 1 << 1

// "Transmission flags" (16 bits).
export const NBD_FLAG_HAS_FLAGS = 1 << 0
export const NBD_FLAG_READ_ONLY = 1 << 1
export const NBD_FLAG_SEND_FLUSH = 1 << 2
export const NBD_FLAG_SEND_FUA = 1 << 3
export const NBD_FLAG_ROTATIONAL = 1 << 4
export const NBD_FLAG_SEND_TRIM = 1 << 5
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
export const NBD_FLAG_SEND_DF = 1 << 7
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8
export const NBD_FLAG_SEND_CACHE = 1 << 10

// "Option types".
export const NBD_OPT_EXPORT_NAME = 1
export const NBD_OPT_ABORT = 2
export const NBD_OPT_LIST = 3
export const NBD_OPT_STARTTLS = 5
export const NBD_OPT_INFO = 6
export const NBD_OPT_GO = 7
export const NBD_OPT_STRUCTURED_REPLY = 8
export const NBD_OPT_LIST_META_CONTEXT = 9
export const NBD_OPT_SET_META_CONTEXT = 10
export const NBD_OPT_EXTENDED_HEADERS = 11

// "Option reply types"; errors have bit 31 set.
export const NBD_REP_ACK = 1
export const NBD_REP_SERVER = 2
export const NBD_REP_INFO = 3
export const NBD_REP_META_CONTEXT = 4
const REP_ERR = 0x80000000
export const NBD_REP_ERR_UNSUP = REP_ERR + 1
export const NBD_REP_ERR_POLICY = REP_ERR + 2
export const NBD_REP_ERR_INVALID = REP_ERR + 3
export const NBD_REP_ERR_PLATFORM = REP_ERR + 4
export const NBD_REP_ERR_TLS_REQD = REP_ERR + 5
export const NBD_REP_ERR_UNKNOWN = REP_ERR + 6
export const NBD_REP_ERR_SHUTDOWN = REP_ERR + 7
export const NBD_REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8
export const NBD_REP_ERR_TOO_BIG = REP_ERR + 9

// "NBD_REP_INFO" information types.
export const NBD_INFO_EXPORT = 0
export const NBD_INFO_NAME = 1
export const NBD_INFO_DESCRIPTION = 2
export const NBD_INFO_BLOCK_SIZE = 3

// "Request message", "Simple reply message", "Structured reply chunk message".
export const NBD_REQUEST_MAGIC = 0x25609513
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef
export const REQUEST_SIZE = 28
export const SIMPLE_REPLY_SIZE = 16
export const STRUCTURED_HEADER_SIZE = 20

// "Request types".
export const NBD_CMD_READ = 0
export const NBD_CMD_WRITE = 1
export const NBD_CMD_DISC = 2
export const NBD_CMD_FLUSH = 3
export const NBD_CMD_TRIM = 4
export const NBD_CMD_CACHE = 5
export const NBD_CMD_WRITE_ZEROES = 6
export const NBD_CMD_BLOCK_STATUS = 7

// "Command flags".
export const NBD_CMD_FLAG_FUA = 1 << 0
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1
export const NBD_CMD_FLAG_DF = 1 << 2
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4

// "Structured reply flags" and "Structured reply types"; error types have bit 15 set.
export const NBD_REPLY_FLAG_DONE = 1 << 0
export const NBD_REPLY_TYPE_NONE = 0
export const NBD_REPLY_TYPE_OFFSET_DATA = 1
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

// "The base: metadata namespace": base:allocation flags.
export const BASE_ALLOCATION = 'base:allocation'
export const NBD_STATE_HOLE = 1 << 0
export const NBD_STATE_ZERO = 1 << 1

// "Error values".
export const NBD_EPERM = 1
export const NBD_EIO = 5
export const NBD_ENOMEM = 12
export const NBD_EINVAL = 22
export const NBD_ENOSPC = 28
export const NBD_EOVERFLOW = 75
export const NBD_ENOTSUP = 95
export const NBD_ESHUTDOWN = 108

/** "Size constraints": payloads up to 2^25 bytes SHOULD NOT be taken for a denial of service. */
export const MAX_PAYLOAD = 32 * 1024 * 1024
/** "Strings ... MUST be no longer than 4096 bytes." */
export const MAX_STRING = 4096

export const ERRNO_TO_NBD: Record<string, number> = {
  EPERM: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
}

// ---- handshake ----

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags (18 bytes). */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(18)
  b.writeBigUInt64BE(NBDMAGIC, 0)
  b.writeBigUInt64BE(IHAVEOPT, 8)
  b.writeUInt16BE(handshakeFlags, 16)
  return b
}

export const OPTION_HEADER_SIZE = 16

export interface OptionHeader {
  magic: bigint
  option: number
  length: number
}

/** C: IHAVEOPT, 32-bit option, 32-bit data length. */
export function decodeOptionHeader(b: Buffer): OptionHeader {
  return {magic: b.readBigUInt64BE(0), option: b.readUInt32BE(8), length: b.readUInt32BE(12)}
}

export function encodeOptionHeader(option: number, length: number): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE)
  b.writeBigUInt64BE(IHAVEOPT, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(length, 12)
  return b
}

/** S: reply magic, option, reply type, length, data ("Fixed newstyle negotiation"). */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length)
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(type >>> 0, 12)
  b.writeUInt32BE(data.length, 16)
  data.copy(b, 20)
  return b
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134)
  b.writeBigUInt64BE(BigInt(size), 0)
  b.writeUInt16BE(transmissionFlags, 8)
  return b
}

/** NBD_REP_SERVER data: 32-bit name length, name, optional description. */
export function encodeRepServer(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8')
  const d = Buffer.from(description, 'utf8')
  const b = Buffer.alloc(4 + n.length + d.length)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  d.copy(b, 4 + n.length)
  return b
}

/** NBD_INFO_EXPORT: type, 64-bit size, 16-bit transmission flags (12 bytes). */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12)
  b.writeUInt16BE(NBD_INFO_EXPORT, 0)
  b.writeBigUInt64BE(BigInt(size), 2)
  b.writeUInt16BE(transmissionFlags, 10)
  return b
}

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION: type and a string. */
export function encodeInfoString(type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, s: string): Buffer {
  const t = Buffer.from(s, 'utf8')
  const b = Buffer.alloc(2 + t.length)
  b.writeUInt16BE(type, 0)
  t.copy(b, 2)
  return b
}

/** NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum payload (14 bytes). */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.alloc(14)
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0)
  b.writeUInt32BE(minimum, 2)
  b.writeUInt32BE(preferred, 6)
  b.writeUInt32BE(maximum, 10)
  return b
}

/** NBD_REP_META_CONTEXT data: 32-bit context id, name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8')
  const b = Buffer.alloc(4 + n.length)
  b.writeUInt32BE(id, 0)
  n.copy(b, 4)
  return b
}

export class MalformedOption extends Error {}

/** NBD_OPT_INFO / NBD_OPT_GO data: 32-bit name length, name, 16-bit count, count × 16-bit info requests. */
export function decodeInfoRequest(data: Buffer): {name: string; requests: number[]} {
  if (data.length < 6) throw new MalformedOption('option data shorter than 6 bytes')
  const nameLen = data.readUInt32BE(0)
  if (nameLen > data.length - 6) throw new MalformedOption(`export name length ${nameLen} exceeds the option data`)
  const name = data.toString('utf8', 4, 4 + nameLen)
  const count = data.readUInt16BE(4 + nameLen)
  if (6 + nameLen + count * 2 !== data.length)
    throw new MalformedOption(`${count} information requests do not fill the option data`)
  const requests: number[] = []
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(6 + nameLen + i * 2))
  return {name, requests}
}

export function encodeInfoRequest(name: string, requests: number[]): Buffer {
  const n = Buffer.from(name, 'utf8')
  const b = Buffer.alloc(6 + n.length + requests.length * 2)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  b.writeUInt16BE(requests.length, 4 + n.length)
  requests.forEach((r, i) => b.writeUInt16BE(r, 6 + n.length + i * 2))
  return b
}

/**
 * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data: 32-bit name length, name, 32-bit query count,
 * then each query as a 32-bit length and a string. Every length is checked against what is left.
 */
export function decodeMetaContextRequest(data: Buffer): {name: string; queries: string[]} {
  let at = 0
  const need = (n: number, what: string) => {
    if (n > data.length - at) throw new MalformedOption(`${what} runs past the option data`)
  }
  need(4, 'export name length')
  const nameLen = data.readUInt32BE(at)
  at += 4
  need(nameLen, 'export name')
  const name = data.toString('utf8', at, at + nameLen)
  at += nameLen
  need(4, 'query count')
  const count = data.readUInt32BE(at)
  at += 4
  // Each query takes at least 4 bytes, so a count larger than that cannot be honest.
  if (count > (data.length - at) / 4) throw new MalformedOption(`query count ${count} exceeds the option data`)
  const queries: string[] = []
  for (let i = 0; i < count; i++) {
    need(4, 'query length')
    const len = data.readUInt32BE(at)
    at += 4
    need(len, 'query')
    queries.push(data.toString('utf8', at, at + len))
    at += len
  }
  if (at !== data.length) throw new MalformedOption('trailing bytes after the last query')
  return {name, queries}
}

export function encodeMetaContextRequest(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = []
  const u32 = (v: number) => {
    const b = Buffer.alloc(4)
    b.writeUInt32BE(v, 0)
    return b
  }
  const n = Buffer.from(name, 'utf8')
  parts.push(u32(n.length), n, u32(queries.length))
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8')
    parts.push(u32(qb.length), qb)
  }
  return Buffer.concat(parts)
}

// ---- transmission ----

export interface Request {
  magic: number
  flags: number
  type: number
  /** The client's 64-bit cookie ("handle"), kept as raw bytes: it is only echoed back. */
  cookie: Buffer
  offset: number
  length: number
}

/** C: magic, 16-bit command flags, 16-bit type, 64-bit cookie, 64-bit offset, 32-bit length (28 bytes). */
export function decodeRequest(b: Buffer, at = 0): Request {
  const hi = b.readUInt32BE(at + 16)
  const lo = b.readUInt32BE(at + 20)
  // Offsets past 2^53 cannot be exact numbers; they are past any export anyway, so saturate.
  const offset = hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * 0x100000000 + lo
  return {
    magic: b.readUInt32BE(at),
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookie: Buffer.from(b.subarray(at + 8, at + 16)),
    offset,
    length: b.readUInt32BE(at + 24),
  }
}

export function encodeRequest(type: number, flags: number, cookie: bigint, offset: number, length: number): Buffer {
  const b = Buffer.alloc(REQUEST_SIZE)
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0)
  b.writeUInt16BE(flags, 4)
  b.writeUInt16BE(type, 6)
  b.writeBigUInt64BE(cookie, 8)
  b.writeBigUInt64BE(BigInt(offset), 16)
  b.writeUInt32BE(length, 24)
  return b
}

/** S: magic, 32-bit error, 64-bit cookie (16 bytes); READ data follows a zero error. */
export function encodeSimpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE)
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0)
  b.writeUInt32BE(error, 4)
  cookie.copy(b, 8)
  return b
}

/** S: magic, 16-bit flags, 16-bit type, 64-bit cookie, 32-bit payload length (20 bytes), then the payload. */
export function encodeStructuredHeader(cookie: Buffer, flags: number, type: number, payloadLength: number, extra = 0): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + extra)
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0)
  b.writeUInt16BE(flags, 4)
  b.writeUInt16BE(type, 6)
  cookie.copy(b, 8)
  b.writeUInt32BE(payloadLength, 16)
  return b
}

/** Header and 64-bit offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk; the data follows (28 bytes + data). */
export function encodeOffsetDataHeader(cookie: Buffer, flags: number, offset: number, dataLength: number): Buffer {
  const b = encodeStructuredHeader(cookie, flags, NBD_REPLY_TYPE_OFFSET_DATA, 8 + dataLength, 8)
  b.writeBigUInt64BE(BigInt(offset), 20)
  return b
}

/** An NBD_REPLY_TYPE_ERROR chunk (error, message) or, with an offset, NBD_REPLY_TYPE_ERROR_OFFSET. */
export function encodeErrorChunk(cookie: Buffer, flags: number, error: number, message: string, offset?: number): Buffer {
  // The message length field is 16 bits; spec strings are at most 4096 bytes.
  let msg = Buffer.from(message, 'utf8')
  if (msg.length > MAX_STRING) msg = msg.subarray(0, MAX_STRING)
  const tail = offset === undefined ? 0 : 8
  const payload = 6 + msg.length + tail
  const type = offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET
  const b = encodeStructuredHeader(cookie, flags, type, payload, payload)
  b.writeUInt32BE(error, 20)
  b.writeUInt16BE(msg.length, 24)
  msg.copy(b, 26)
  if (offset !== undefined) b.writeBigUInt64BE(BigInt(offset), 26 + msg.length)
  return b
}

/** An NBD_REPLY_TYPE_BLOCK_STATUS chunk: context id, then (length, flags) descriptors. */
export function encodeBlockStatusChunk(
  cookie: Buffer,
  flags: number,
  contextId: number,
  descriptors: Array<{length: number; status: number}>,
): Buffer {
  const payload = 4 + descriptors.length * 8
  const b = encodeStructuredHeader(cookie, flags, NBD_REPLY_TYPE_BLOCK_STATUS, payload, payload)
  b.writeUInt32BE(contextId, 20)
  descriptors.forEach((d, i) => {
    b.writeUInt32BE(d.length, 24 + i * 8)
    b.writeUInt32BE(d.status, 28 + i * 8)
  })
  return b
}

export function encodeNoneChunk(cookie: Buffer): Buffer {
  return encodeStructuredHeader(cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 0)
}

/**
 * iSCSI PDUs as RFC 7143 defines them: the 48-byte Basic Header Segment (§11.2.1), opcodes, flags, the
 * login status classes, text key=value data (§6.1) and the digests (CRC32C, §12.1). Only layout lives
 * here; what the target does with a PDU is server.ts's, and what it says in a login is login.ts's.
 * Spec: RFC 7143 "Internet Small Computer System Interface (iSCSI) Protocol (Consolidated)".
 */
import {crc32c} from '@node-rs/crc32'
import {printable} from '../printable'

export const BHS_SIZE = 48

// Initiator opcodes (§11.2.1.2)
export const OP_NOP_OUT = 0x00
export const OP_SCSI_CMD = 0x01
export const OP_TMF_REQ = 0x02
export const OP_LOGIN_REQ = 0x03
export const OP_TEXT_REQ = 0x04
export const OP_DATA_OUT = 0x05
export const OP_LOGOUT_REQ = 0x06
export const OP_SNACK = 0x10
// Target opcodes
export const OP_NOP_IN = 0x20
export const OP_SCSI_RSP = 0x21
export const OP_TMF_RSP = 0x22
export const OP_LOGIN_RSP = 0x23
export const OP_TEXT_RSP = 0x24
export const OP_DATA_IN = 0x25
export const OP_LOGOUT_RSP = 0x26
export const OP_R2T = 0x31
export const OP_ASYNC = 0x32
export const OP_REJECT = 0x3f

/** Byte 0: the immediate-delivery bit (§11.2.1.1). */
export const IMMEDIATE = 0x40
/** Byte 1: the final bit of most PDUs. */
export const F_FINAL = 0x80

// SCSI Command, byte 1 (§11.3)
export const CMD_READ = 0x40
export const CMD_WRITE = 0x20

// SCSI Response / Data-In flags, byte 1 (§11.4, §11.7)
export const RSP_OVERFLOW = 0x04
export const RSP_UNDERFLOW = 0x02
export const DATAIN_STATUS = 0x01

// Login (§11.12): byte 1 is T C . . CSG CSG NSG NSG
export const LOGIN_TRANSIT = 0x80
export const LOGIN_CONTINUE = 0x40
export const STAGE_SECURITY = 0
export const STAGE_OPERATIONAL = 1
export const STAGE_FULL_FEATURE = 3

/** Login response Status-Class/Status-Detail (§11.13.5), as one 16-bit value. */
export const LOGIN_STATUS = {
  success: 0x0000,
  initiatorError: 0x0200,
  authFailure: 0x0201,
  forbidden: 0x0202,
  notFound: 0x0203,
  unsupportedVersion: 0x0205,
  tooManyConnections: 0x0206,
  missingParameter: 0x0207,
  cannotInclude: 0x0208,
  sessionTypeUnsupported: 0x0209,
  sessionDoesNotExist: 0x020a,
  invalidDuringLogin: 0x020b,
  targetError: 0x0300,
  outOfResources: 0x0302,
} as const

/** Reject reasons (§11.17.1). */
export const REJECT = {
  dataDigest: 0x02,
  snack: 0x03,
  protocolError: 0x04,
  notSupported: 0x05,
  immediateReject: 0x06,
  taskInProgress: 0x07,
  invalidDataAck: 0x08,
  invalidField: 0x09,
  longOp: 0x0a,
  waitingForLogout: 0x0c,
} as const

/** Task management functions (§11.5.1) and responses (§11.6.1). */
export const TMF = {abortTask: 1, abortTaskSet: 2, clearAca: 3, clearTaskSet: 4, lunReset: 5, targetWarmReset: 6, targetColdReset: 7, taskReassign: 8} as const
export const TMF_RESPONSE = {complete: 0, noTask: 1, noLun: 2, stillAllegiant: 3, reassignUnsupported: 4, unsupported: 5, authFailed: 6, rejected: 255} as const

/** The reserved tag: "no task" (a NOP-Out answering a NOP-In, an unsolicited NOP-In, a Reject). */
export const NO_TAG = 0xffffffff

/** The fields every BHS has, and the raw header for the opcode-specific ones. */
export interface Bhs {
  raw: Buffer
  opcode: number
  immediate: boolean
  flags: number
  ahsLength: number
  dataLength: number
  itt: number
}

export function decodeBhs(b: Buffer): Bhs {
  return {
    raw: b,
    opcode: b[0] & 0x3f,
    immediate: (b[0] & IMMEDIATE) !== 0,
    flags: b[1],
    ahsLength: b[4] * 4,
    dataLength: b.readUIntBE(5, 3),
    itt: b.readUInt32BE(16),
  }
}

/** A fresh target BHS with opcode, flags, data length and initiator task tag set. */
export function newBhs(opcode: number, flags: number, dataLength: number, itt: number): Buffer {
  const b = Buffer.alloc(BHS_SIZE)
  b[0] = opcode
  b[1] = flags
  b.writeUIntBE(dataLength, 5, 3)
  b.writeUInt32BE(itt >>> 0, 16)
  return b
}

/** The data segment is padded to a multiple of 4 bytes (§11.1). */
export function pad4(n: number): number {
  return (4 - (n & 3)) & 3
}

/** iSCSI's CRC32C is sent little-endian ("the least significant byte first", §12.1). */
export function digest(parts: Buffer[]): Buffer {
  let c = 0
  for (const p of parts) c = crc32c(p, c)
  const out = Buffer.alloc(4)
  out.writeUInt32LE(c >>> 0, 0)
  return out
}

/** Serial number arithmetic (RFC 1982, 32 bits), as CmdSN/StatSN comparisons need (§4.2.2.1). */
export function snLess(a: number, b: number): boolean {
  return a !== b && ((b - a) >>> 0) < 0x80000000
}

// ---- text data: "key=value\0" pairs (§6.1) ----

export const MAX_KEY_NAME = 63
export const MAX_VALUE = 8192

/** Parse key=value pairs; throws on a malformed pair (the caller rejects the PDU or fails the login). */
export function parseText(data: Buffer): Array<[string, string]> {
  const out: Array<[string, string]> = []
  let s = data.toString('utf8')
  // The terminating null may be missing on the last pair; trailing padding nulls are ignored.
  s = s.replace(/\0+$/, '')
  if (s === '') return out
  for (const pair of s.split('\0')) {
    const eq = pair.indexOf('=')
    if (eq <= 0) throw new Error(`malformed text pair ${printable(pair, 40)}`)
    const key = pair.slice(0, eq)
    if (key.length > MAX_KEY_NAME || !/^[A-Za-z0-9.\-+@_]+$/.test(key)) throw new Error(`malformed key name ${printable(key, 40)}`)
    const value = pair.slice(eq + 1)
    if (value.length > MAX_VALUE) throw new Error(`value of ${key} is longer than ${MAX_VALUE} bytes`)
    out.push([key, value])
  }
  return out
}

export function encodeText(pairs: Array<[string, string]>): Buffer {
  return Buffer.from(pairs.map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8')
}

/**
 * Target "nbd": malformed NBD sessions against the real server (startNbdServer on Unix sockets), served
 * on the main thread (with the default bad-area policy, and with --bad-policy zero) and by serving threads;
 * and, in one case of five, a writable server over a fresh overlay (main thread, or one time in four serving threads).
 *
 * A session is generated from a model of the protocol (doc/proto.md): client flags (some with unknown
 * bits), options well formed or not (bad magic, lengths past the 64 KiB limit or past the data sent,
 * malformed INFO/GO/meta-context data, unknown options and export names), then requests (reads in and out
 * of range, past 2^53 and 2^64−1, over 32 MiB, writes with and without their payload, block status with
 * and without a context, unknown types, bad magic, truncated headers), ended by NBD_CMD_DISC, NBD_OPT_ABORT,
 * a protocol violation, a half-close, or a disconnect at a random byte. One case in five flips random
 * bytes of such a session ("chaos") and checks only what holds for any input.
 *
 * The contract checked:
 *  - every byte the server sends parses: the greeting, one reply sequence per option (echoing it, ending
 *    in ACK or an error, the one the model expects), replies whose cookies were sent and not yet answered;
 *  - reads return the image's bytes, or EIO exactly when they touch a bad area under the error policy;
 *    out-of-range, oversized and read-only requests get the errno the spec gives; block status never calls
 *    a range zero that is not zero (or is unreadable);
 *  - after NBD_CMD_DISC or a protocol violation every earlier request is answered and the server closes the
 *    connection by itself; after a half-close it closes too; it forgets the connection in every case;
 *  - writable server: WRITE, TRIM and WRITE_ZEROES in range succeed and past the end are ENOSPC; the
 *    export is not read-only; after a session whose every reply arrived, the overlay holds exactly the
 *    image with the acknowledged writes applied (their sectors readable), and it opens again after any session;
 *  - the server never crashes (no uncaught exception or rejection), logs no internal error, keeps serving
 *    a witness connection that was open all along, and a well-formed client afterwards reads correct bytes.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {BlockServer, type BadPolicy} from '../../src/core/blockserver'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {Overlay} from '../../src/layers/overlay'
import {startNbdServer, type RunningNbdServer} from '../../src/serve/nbd'
import * as P from '../../src/serve/nbd/protocol'
import {RawClient} from '../../test/nbd/rawclient'
import {normalize, type CaseContext, type CaseResult, type Target, type TargetInstance} from '../harness'
import {INTERNAL_LOG, applyWrite, reopenOverlay, compareOverlay, contentOf, makeServedImage, touchesBad, until, type ServedImage} from '../net/fixture'
import type {Rng} from '../rng'

const EXPORT = 'disk.vdimg'
const MAX_OPTION_LENGTH = 64 * 1024

type OptionExpect =
  | {kind: 'option'; option: number; final: 'ack' | 'error' | 'any'; error?: number; go?: boolean; setMeta?: boolean}
  | {kind: 'export-name'}
  | {kind: 'abort'}

/**
 * What one request must get. On a writable server: `data` is a WRITE's payload (zeros for TRIM and
 * WRITE_ZEROES), applied to the model once acknowledged; a READ or BLOCK_STATUS whose sectors a write of the
 * same session touches may see either side of it ('read-any', 'status-any': only the reply's shape is checked).
 */
type RequestExpect = {
  cookie: bigint
  type: number
  flags: number
  offset: bigint
  length: number
  want: 'read' | 'read-any' | 'ok' | 'status' | 'status-any' | 'errno'
  errno?: number
  data?: Buffer
}

type Ending = 'disc' | 'abort' | 'violation' | 'eof' | 'destroy'

interface Session {
  bytes: Buffer[]
  steps: string[]
  flags: number
  options: OptionExpect[]
  requests: RequestExpect[]
  /** Reached the transmission phase (as the model sees it). */
  transmission: boolean
  structured: boolean
  meta: boolean
  ending: Ending
  /** Past this, the model cannot predict the server's output (a lie about a length swallowed our bytes). */
  lenient: boolean
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0)
  return b
}

function option(o: number, data: Buffer, length = data.length): Buffer {
  return Buffer.concat([P.encodeOptionHeader(o, length), data])
}

function request(type: number, flags: number, cookie: bigint, offset: bigint, length: number): Buffer {
  const b = Buffer.alloc(P.REQUEST_SIZE)
  b.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0)
  b.writeUInt16BE(flags, 4)
  b.writeUInt16BE(type, 6)
  b.writeBigUInt64BE(cookie, 8)
  b.writeBigUInt64BE(offset, 16)
  b.writeUInt32BE(length >>> 0, 24)
  return b
}

function exportName(rng: Rng, ours: boolean): string {
  if (ours) return rng.chance(0.5) ? '' : EXPORT
  return rng.pick(['other', 'disk.vdimg ', '/disk.vdimg', 'DISK.VDIMG', 'x'.repeat(5000), 'disk\n.vdimg', '\u0000', 'é'])
}

/** The session generator: a model of what the server must do with each message. */
function generate(rng: Rng, size: number, rw = false): Session {
  const s: Session = {bytes: [], steps: [], flags: 0, options: [], requests: [], transmission: false, structured: false, meta: false, ending: 'eof', lenient: false}
  const send = (b: Buffer, step: string) => {
    s.bytes.push(b)
    s.steps.push(step)
  }
  s.flags = rng.weighted([
    [10, P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES],
    [3, P.NBD_FLAG_C_FIXED_NEWSTYLE],
    [1, 0],
    [1, (rng.u32() | 4) >>> 0],
  ] as const)
  send(u32(s.flags), `client flags 0x${s.flags.toString(16)}`)
  if (s.flags & ~3) {
    s.ending = 'violation'
    return s
  }
  const nOptions = rng.pick([0, 0, 1, 2, 3, 5, 8])
  for (let i = 0; i <= nOptions; i++) {
    const last = i === nOptions
    const kind = last
      ? rng.weighted([
          [10, 'go'],
          [4, 'export-name'],
          [1, 'export-name-unknown'],
          [1, 'abort'],
          [1, 'none'],
        ] as const)
      : rng.weighted([
          [3, 'structured'],
          [3, 'set-meta'],
          [2, 'list-meta'],
          [2, 'list'],
          [3, 'info'],
          [3, 'unknown'],
          [1, 'go-bad'],
          [1, 'bad-magic'],
          [1, 'huge-length'],
          [1, 'short-data'],
        ] as const)
    switch (kind) {
      case 'structured': {
        const data = rng.chance(0.8) ? Buffer.alloc(0) : rng.bytes(rng.range(1, 8))
        send(option(P.NBD_OPT_STRUCTURED_REPLY, data), `NBD_OPT_STRUCTURED_REPLY (${data.length} bytes)`)
        s.options.push({kind: 'option', option: P.NBD_OPT_STRUCTURED_REPLY, final: data.length ? 'error' : 'ack', error: data.length ? P.NBD_REP_ERR_INVALID : undefined})
        if (!data.length) s.structured = true
        break
      }
      case 'set-meta':
      case 'list-meta': {
        const set = kind === 'set-meta'
        const o = set ? P.NBD_OPT_SET_META_CONTEXT : P.NBD_OPT_LIST_META_CONTEXT
        const ours = rng.chance(0.85)
        const queries = rng.pick([[P.BASE_ALLOCATION], [], ['base:'], ['qemu:dirty-bitmap:x'], [P.BASE_ALLOCATION, 'x:y'], ['base:allocation\u0000']])
        let data = P.encodeMetaContextRequest(exportName(rng, ours), queries)
        let malformed = false
        if (rng.chance(0.25)) {
          malformed = true
          const m = rng.pick(['count', 'name-length', 'truncate', 'trailing'])
          if (m === 'count') data.writeUInt32BE(rng.pick([0xffffffff, queries.length + 1, 0x40000000]), data.readUInt32BE(0) + 4)
          else if (m === 'name-length') data.writeUInt32BE(rng.pick([data.length, 0xffffffff, 0x7fffffff]), 0)
          else if (m === 'truncate') data = data.subarray(0, rng.int(Math.max(1, data.length)))
          else data = Buffer.concat([data, Buffer.from([rng.u32() & 0xff])])
          // A truncation that happens to leave a valid request (e.g. at a query boundary) is not malformed.
          try {
            P.decodeMetaContextRequest(data)
            malformed = false
          } catch {
            /* malformed indeed */
          }
        }
        send(option(o, data), `${set ? 'SET' : 'LIST'}_META_CONTEXT ${ours ? 'our export' : 'another export'} ${JSON.stringify(queries)}${malformed ? ' (malformed)' : ''}`)
        let final: 'ack' | 'error' | 'any' = 'any'
        let error: number | undefined
        if (!s.structured || malformed) {
          final = 'error'
          error = P.NBD_REP_ERR_INVALID
        } else if (!ours && !malformed) {
          final = 'error'
          error = P.NBD_REP_ERR_UNKNOWN
        } else final = 'ack'
        // A meta context is selected only by a SET for our export that asks for base:allocation (the final
        // reply tells; any SET first clears it).
        s.options.push({kind: 'option', option: o, final, error, setMeta: set})
        if (set) s.meta = final === 'ack' && decodeQueries(data).includes(P.BASE_ALLOCATION)
        break
      }
      case 'list': {
        const data = rng.chance(0.8) ? Buffer.alloc(0) : rng.bytes(rng.range(1, 16))
        send(option(P.NBD_OPT_LIST, data), `NBD_OPT_LIST (${data.length} bytes)`)
        s.options.push({kind: 'option', option: P.NBD_OPT_LIST, final: data.length ? 'error' : 'ack', error: data.length ? P.NBD_REP_ERR_INVALID : undefined})
        break
      }
      case 'info':
      case 'go-bad': {
        const ours = kind === 'info' && rng.chance(0.8)
        const o = kind === 'info' ? P.NBD_OPT_INFO : P.NBD_OPT_GO
        let data = P.encodeInfoRequest(exportName(rng, ours), rng.pick([[], [P.NBD_INFO_NAME], [P.NBD_INFO_DESCRIPTION, P.NBD_INFO_BLOCK_SIZE], [0xffff, 7]]))
        let error: number | undefined = ours ? undefined : P.NBD_REP_ERR_UNKNOWN
        if (rng.chance(kind === 'go-bad' ? 0.5 : 0.2)) {
          const m = rng.pick(['short', 'name-length', 'count'])
          if (m === 'short') data = data.subarray(0, rng.int(6))
          else if (m === 'name-length') data.writeUInt32BE(rng.pick([data.length, 0xffffffff, 0x7ffffffa]), 0)
          else data = Buffer.concat([data, Buffer.from([0])])
          error = P.NBD_REP_ERR_INVALID
        }
        send(option(o, data), `${kind === 'info' ? 'NBD_OPT_INFO' : 'NBD_OPT_GO'} (${error === undefined ? 'valid' : error === P.NBD_REP_ERR_UNKNOWN ? 'unknown export' : 'malformed'})`)
        s.options.push({kind: 'option', option: o, final: error === undefined ? 'ack' : 'error', error})
        break
      }
      case 'unknown': {
        const o = rng.pick([0, 4, P.NBD_OPT_STARTTLS, P.NBD_OPT_EXTENDED_HEADERS, 12, 0x7fffffff, 0x80000000, 0xffffffff, rng.u32()])
        const data = rng.bytes(rng.pick([0, 1, 4, 100, 4096]))
        send(option(o, data), `unknown option ${o} (${data.length} bytes)`)
        const known = [1, 2, 3, 6, 7, 8, 9, 10]
        if (known.includes(o)) s.options.push({kind: 'option', option: o, final: 'any'})
        else s.options.push({kind: 'option', option: o, final: 'error', error: P.NBD_REP_ERR_UNSUP})
        if (known.includes(o)) s.lenient = true
        break
      }
      case 'bad-magic': {
        const b = option(P.NBD_OPT_GO, P.encodeInfoRequest('', []))
        b.writeUInt32BE(rng.u32(), rng.pick([0, 4]))
        send(b, 'option with a bad magic')
        s.ending = 'violation'
        return s
      }
      case 'huge-length': {
        const len = rng.pick([MAX_OPTION_LENGTH + 1, 0x80000000, 0xffffffff, 1 << 20])
        send(P.encodeOptionHeader(rng.pick([P.NBD_OPT_GO, P.NBD_OPT_INFO, 0x1234]), len), `option claiming ${len} bytes of data`)
        s.ending = 'violation'
        return s
      }
      case 'short-data': {
        const data = rng.bytes(rng.range(0, 100))
        const claimed = data.length + rng.range(1, 1000)
        send(option(P.NBD_OPT_INFO, data, claimed), `NBD_OPT_INFO claiming ${claimed} bytes, sending ${data.length}`)
        // The server waits for the rest: whatever follows is taken for option data.
        s.lenient = true
        s.ending = 'eof'
        return s
      }
      case 'go': {
        send(option(P.NBD_OPT_GO, P.encodeInfoRequest(exportName(rng, true), rng.pick([[], [P.NBD_INFO_BLOCK_SIZE]]))), 'NBD_OPT_GO')
        s.options.push({kind: 'option', option: P.NBD_OPT_GO, final: 'ack', go: true})
        s.transmission = true
        break
      }
      case 'export-name': {
        send(option(P.NBD_OPT_EXPORT_NAME, Buffer.from(exportName(rng, true))), 'NBD_OPT_EXPORT_NAME')
        s.options.push({kind: 'export-name'})
        s.transmission = true
        break
      }
      case 'export-name-unknown':
        send(option(P.NBD_OPT_EXPORT_NAME, Buffer.from(exportName(rng, false))), 'NBD_OPT_EXPORT_NAME of an unknown export')
        s.ending = 'violation'
        return s
      case 'abort':
        send(option(P.NBD_OPT_ABORT, Buffer.alloc(0)), 'NBD_OPT_ABORT')
        s.options.push({kind: 'abort'})
        s.ending = 'abort'
        return s
      case 'none':
        s.ending = rng.chance(0.5) ? 'eof' : 'destroy'
        return s
    }
  }
  if (!s.transmission) return s
  // Transmission.
  let cookie = rng.u64()
  const nRequests = rng.pick([0, 1, 2, 4, 8, 16, 32])
  const big = BigInt(size)
  // Writable server: the sectors (as [start, end) bytes) reads and writes of this session touch. Replies come
  // in any order, so a write never overlaps another request of the session (it is dropped instead), and a
  // read or block status over a written sector may see either side of the write.
  const readSpans: Array<[number, number]> = []
  const writeSpans: Array<[number, number]> = []
  const span = (offset: bigint, length: number): [number, number] => {
    const o = Number(offset < big ? offset : big)
    return [Math.floor(o / 512) * 512, Math.ceil(Math.min(size, o + length) / 512) * 512]
  }
  const overlaps = (a: [number, number], list: Array<[number, number]>) => list.some((b) => a[0] < b[1] && b[0] < a[1])
  for (let i = 0; i < nRequests; i++) {
    cookie = (cookie + 1n) & 0xffffffffffffffffn
    const flags = rng.chance(0.85) ? 0 : rng.pick([P.NBD_CMD_FLAG_FUA, P.NBD_CMD_FLAG_DF, P.NBD_CMD_FLAG_REQ_ONE, P.NBD_CMD_FLAG_NO_HOLE, 0xffff, rng.u32() & 0xffff])
    const kind = rng.weighted([
      [20, 'read'],
      [4, 'read-out'],
      [2, 'read-huge'],
      [3, 'write'],
      [2, 'trim'],
      [2, 'flush'],
      [2, 'cache'],
      [5, 'status'],
      [2, 'unknown'],
      [1, 'bad-magic'],
      [1, 'write-huge'],
      [1, 'truncated'],
      [1, 'write-short'],
    ] as const)
    const add = (type: number, offset: bigint, length: number, want: RequestExpect['want'], errno: number | undefined, step: string) => {
      send(request(type, flags, cookie, offset, length), `${step} [cookie ${cookie}${flags ? `, flags 0x${flags.toString(16)}` : ''}]`)
      s.requests.push({cookie, type, flags, offset, length, want, errno})
    }
    /** The errno for a request whose range is outside the export (the decoder saturates offsets ≥ 2^53). */
    const outside = (offset: bigint, length: number) => offset + BigInt(length) > big
    switch (kind) {
      case 'read': {
        const offset = rng.chance(0.5) ? BigInt(rng.int(size / 512) * 512) : BigInt(rng.int(size))
        const max = size - Number(offset)
        const length = Math.min(max, rng.pick([0, 1, 512, 4096, 65536, 65536 + 512, 1 << 20, rng.int(200000)]))
        const sp = span(offset, length)
        add(P.NBD_CMD_READ, offset, length, rw && overlaps(sp, writeSpans) ? 'read-any' : 'read', undefined, `READ ${length} at ${offset}`)
        if (rw) readSpans.push(sp)
        break
      }
      case 'read-out': {
        const offset = rng.pick([big, big - 1n, big + 512n, 1n << 53n, (1n << 53n) + 1n, 1n << 63n, 0xffffffffffffffffn, 0xfffffffffffffe00n])
        const length = rng.pick([0, 1, 2, 512, 0xffffffff])
        const errno = outside(offset, length) ? P.NBD_EINVAL : undefined
        add(P.NBD_CMD_READ, offset, length, errno ? 'errno' : 'read', errno, `READ ${length} at ${offset} (out of range)`)
        break
      }
      case 'read-huge': {
        const length = rng.pick([P.MAX_PAYLOAD + 1, 0x80000000, 0xffffffff])
        add(P.NBD_CMD_READ, BigInt(rng.int(size)), length, 'errno', P.NBD_EINVAL, `READ of ${length} bytes`)
        break
      }
      case 'write': {
        const length = rng.pick([0, 1, 512, 4096, 70000])
        if (!rw) {
          add(P.NBD_CMD_WRITE, BigInt(rng.int(size)), length, 'errno', P.NBD_EPERM, `WRITE ${length} bytes (with its payload)`)
          send(rng.bytes(length), `  payload of ${length} bytes`)
          break
        }
        // Past the end (by a byte or by 2^53 and more): ENOSPC, as a disk that is full.
        if (length > 0 && rng.chance(0.1)) {
          const offset = rng.pick([big - BigInt(rng.range(0, length - 1)), big, big + 512n, 1n << 53n, 0xfffffffffffffe00n])
          add(P.NBD_CMD_WRITE, offset, length, 'errno', P.NBD_ENOSPC, `WRITE ${length} bytes at ${offset} (past the end)`)
          send(rng.bytes(length), `  payload of ${length} bytes`)
          break
        }
        const offset = BigInt(rng.chance(0.5) ? rng.int(size / 512) * 512 : rng.int(size))
        const n = Math.min(length, size - Number(offset))
        const sp = span(offset, n)
        if (overlaps(sp, writeSpans) || overlaps(sp, readSpans)) {
          add(P.NBD_CMD_FLUSH, 0n, 0, 'ok', undefined, 'FLUSH (in place of a WRITE over a sector this session already uses)')
          break
        }
        const data = rng.bytes(n)
        send(request(P.NBD_CMD_WRITE, flags, cookie, offset, n), `WRITE ${n} bytes at ${offset} [cookie ${cookie}${flags ? `, flags 0x${flags.toString(16)}` : ''}]`)
        s.requests.push({cookie, type: P.NBD_CMD_WRITE, flags, offset, length: n, want: 'ok', data})
        send(data, `  payload of ${n} bytes`)
        writeSpans.push(sp)
        break
      }
      case 'write-huge': {
        const length = rng.pick([P.MAX_PAYLOAD + 1, 0xffffffff])
        send(request(P.NBD_CMD_WRITE, flags, cookie, 0n, length), `WRITE claiming ${length} bytes of payload`)
        s.ending = 'violation'
        return s
      }
      case 'write-short': {
        const length = rng.range(2, 100000)
        send(Buffer.concat([request(P.NBD_CMD_WRITE, flags, cookie, 0n, length), rng.bytes(rng.int(length))]), `WRITE of ${length} bytes, payload cut short`)
        s.ending = 'eof'
        return s
      }
      case 'trim': {
        const type = rng.pick([P.NBD_CMD_TRIM, P.NBD_CMD_WRITE_ZEROES])
        if (!rw) {
          add(type, BigInt(rng.int(size)), rng.int(65536), 'errno', P.NBD_EPERM, 'TRIM / WRITE_ZEROES')
          break
        }
        const length = rng.int(129) * 512
        if (length > 0 && rng.chance(0.1)) {
          add(type, big - 512n, length + 512, 'errno', P.NBD_ENOSPC, `${type === P.NBD_CMD_TRIM ? 'TRIM' : 'WRITE_ZEROES'} ${length + 512} past the end`)
          break
        }
        // Whole sectors: they read as zeros afterwards, unreadable ones included.
        const offset = BigInt(rng.int(size / 512) * 512)
        const n = Math.min(length, size - Number(offset))
        const sp = span(offset, n)
        if (overlaps(sp, writeSpans) || overlaps(sp, readSpans)) {
          add(P.NBD_CMD_FLUSH, 0n, 0, 'ok', undefined, 'FLUSH (in place of a TRIM over a sector this session already uses)')
          break
        }
        add(type, offset, n, 'ok', undefined, `${type === P.NBD_CMD_TRIM ? 'TRIM' : 'WRITE_ZEROES'} ${n} at ${offset}`)
        s.requests[s.requests.length - 1].data = Buffer.alloc(n)
        writeSpans.push(sp)
        break
      }
      case 'flush':
        add(P.NBD_CMD_FLUSH, 0n, 0, 'ok', undefined, 'FLUSH')
        break
      case 'cache': {
        const offset = rng.chance(0.7) ? BigInt(rng.int(size)) : rng.pick([big, 0xffffffffffffffffn])
        const length = rng.pick([0, 4096, 1 << 20, 0xffffffff])
        const errno = outside(offset, length) ? P.NBD_EINVAL : undefined
        add(P.NBD_CMD_CACHE, offset, length, errno ? 'errno' : 'ok', errno, `CACHE ${length} at ${offset}`)
        break
      }
      case 'status': {
        const offset = rng.chance(0.9) ? BigInt(rng.int(size)) : rng.pick([big, 0xffffffffffffffffn])
        const length = rng.pick([0, 1, 512, 65536, 1 << 20, size, 0xffffffff])
        let errno: number | undefined
        if (!s.meta || length === 0 || outside(offset, length)) errno = P.NBD_EINVAL
        const any = rw && !errno && overlaps(span(offset, length), writeSpans)
        add(P.NBD_CMD_BLOCK_STATUS, offset, length, errno ? 'errno' : any ? 'status-any' : 'status', errno, `BLOCK_STATUS ${length} at ${offset}`)
        if (rw && !errno) readSpans.push(span(offset, length))
        break
      }
      case 'unknown':
        add(rng.pick([8, 9, 0x100, 0xffff]), 0n, rng.int(4096), 'errno', P.NBD_EINVAL, 'unknown command')
        break
      case 'bad-magic': {
        const b = request(P.NBD_CMD_READ, 0, cookie, 0n, 512)
        b.writeUInt32BE(rng.pick([0, P.NBD_SIMPLE_REPLY_MAGIC, rng.u32()]), 0)
        send(b, 'request with a bad magic')
        s.ending = 'violation'
        return s
      }
      case 'truncated': {
        send(request(P.NBD_CMD_READ, 0, cookie, 0n, 512).subarray(0, rng.range(1, P.REQUEST_SIZE - 1)), 'a request header cut short')
        s.ending = 'eof'
        return s
      }
    }
  }
  s.ending = rng.weighted([
    [6, 'disc'],
    [3, 'eof'],
    [2, 'destroy'],
  ] as const)
  if (s.ending === 'disc') send(request(P.NBD_CMD_DISC, 0, 0xd15cn, 0n, 0), 'NBD_CMD_DISC')
  return s
}

function decodeQueries(data: Buffer): string[] {
  try {
    return P.decodeMetaContextRequest(data).queries
  } catch {
    return []
  }
}

/** A byte stream read from the front. */
class Stream {
  at = 0
  constructor(readonly b: Buffer) {}
  get left(): number {
    return this.b.length - this.at
  }
  take(n: number): Buffer | undefined {
    if (this.left < n) return undefined
    const v = this.b.subarray(this.at, this.at + n)
    this.at += n
    return v
  }
}

interface Server {
  name: string
  policy: BadPolicy
  running: RunningNbdServer
  socket: string
  logs: string[]
  witness?: RawClient
  witnessStructured: boolean
  /** Served read-write over a fresh overlay (one per case). */
  rw?: boolean
}

/** Check what the server sent against the model; returns the problems found. */
/** `seen` collects what the server answered (reply kinds, errnos), for the case's outcome. */
function checkOutput(out: Buffer, s: Session, srv: Server, fx: ServedImage, closedByServer: boolean, seen: Set<string>, answers = new Map<bigint, number>()): string[] {
  const problems: string[] = []
  const st = new Stream(out)
  const g = st.take(18)
  if (!g) return out.length ? [`the greeting is cut short (${out.length} bytes)`] : closedByServer ? [] : ['no greeting']
  if (g.readBigUInt64BE(0) !== P.NBDMAGIC || g.readBigUInt64BE(8) !== P.IHAVEOPT) problems.push('bad greeting magic')
  if (g.readUInt16BE(16) !== (P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES)) problems.push(`greeting flags 0x${g.readUInt16BE(16).toString(16)}`)
  const complete = s.ending === 'disc' || s.ending === 'violation' || s.ending === 'abort'
  let structured = false
  let transmission = false
  for (const o of s.options) {
    if (o.kind === 'export-name') {
      const n = s.flags & P.NBD_FLAG_C_NO_ZEROES ? 10 : 134
      const r = st.take(n)
      if (!r) {
        if (complete) problems.push('no reply to NBD_OPT_EXPORT_NAME')
        return problems
      }
      if (Number(r.readBigUInt64BE(0)) !== fx.size) problems.push(`NBD_OPT_EXPORT_NAME: size ${r.readBigUInt64BE(0)}`)
      if (!(r.readUInt16BE(8) & P.NBD_FLAG_READ_ONLY) !== !!srv.rw) problems.push(`NBD_OPT_EXPORT_NAME: ${srv.rw ? 'read-only' : 'not read-only'}`)
      if (n === 134 && r.subarray(10).some((x) => x !== 0)) problems.push('NBD_OPT_EXPORT_NAME: the 124 reserved bytes are not zero')
      transmission = true
      seen.add('export-name')
      break
    }
    // One option's replies: zero or more informational, then ACK or an error.
    let final: number | undefined
    let metaSelected = false
    for (;;) {
      const h = st.take(20)
      if (!h) {
        if (complete || st.left) problems.push(`option ${o.kind === "option" ? o.option : "ABORT"}: its replies stop short (${out.length} bytes of output, ${st.left} unparsed)`)
        return problems
      }
      if (h.readBigUInt64BE(0) !== P.NBD_REP_MAGIC) {
        problems.push(`option reply with a bad magic 0x${h.readBigUInt64BE(0).toString(16)}`)
        return problems
      }
      const echo = h.readUInt32BE(8)
      const type = h.readUInt32BE(12)
      const len = h.readUInt32BE(16)
      const want = o.kind === 'option' ? o.option : P.NBD_OPT_ABORT
      if (echo !== want) problems.push(`an option reply names option ${echo}, not ${want}`)
      const data = st.take(len)
      if (!data) {
        if (complete) problems.push(`option ${want}: a reply of ${len} bytes is cut short`)
        return problems
      }
      if (type === P.NBD_REP_INFO && data.length >= 2 && data.readUInt16BE(0) === P.NBD_INFO_EXPORT) {
        if (data.length !== 12 || Number(data.readBigUInt64BE(2)) !== fx.size) problems.push('NBD_INFO_EXPORT: wrong size')
        else if (!(data.readUInt16BE(10) & P.NBD_FLAG_READ_ONLY) !== !!srv.rw) problems.push(`NBD_INFO_EXPORT: ${srv.rw ? 'read-only' : 'not read-only'}`)
      }
      if (type === P.NBD_REP_META_CONTEXT) {
        if (data.length < 4 || data.subarray(4).toString() !== P.BASE_ALLOCATION) problems.push(`NBD_REP_META_CONTEXT for ${JSON.stringify(data.subarray(4).toString())}`)
        if (o.kind === 'option' && o.setMeta) metaSelected = true
      }
      if (type === P.NBD_REP_ACK || type >= 0x80000000) {
        final = type
        seen.add(type === P.NBD_REP_ACK ? 'opt-ack' : `opt-err${type & 0xff}`)
        break
      }
      if (![P.NBD_REP_SERVER, P.NBD_REP_INFO, P.NBD_REP_META_CONTEXT].includes(type)) problems.push(`option ${want}: reply type 0x${type.toString(16)}`)
    }
    if (o.kind === 'abort') {
      if (final !== P.NBD_REP_ACK) problems.push('NBD_OPT_ABORT was not acknowledged')
      break
    }
    if (!s.lenient) {
      if (o.final === 'ack' && final !== P.NBD_REP_ACK) problems.push(`option ${o.option}: 0x${final!.toString(16)} where ACK was due`)
      if (o.final === 'error' && final !== o.error) problems.push(`option ${o.option}: 0x${final!.toString(16)} where error 0x${o.error?.toString(16)} was due`)
    }
    if (o.option === P.NBD_OPT_STRUCTURED_REPLY && final === P.NBD_REP_ACK) structured = true
    if (o.setMeta && metaSelected && final !== P.NBD_REP_ACK) problems.push('a meta context was selected by a SET that failed')
    if (o.go && final === P.NBD_REP_ACK) {
      transmission = true
      break
    }
  }
  if (!transmission) {
    if (st.left && !s.lenient) problems.push(`${st.left} bytes after the handshake replies`)
    return problems
  }
  if (structured !== s.structured && !s.lenient) problems.push('structured replies negotiated differently from the model')
  // Transmission replies, in any order.
  const pending = new Map(s.requests.map((r) => [r.cookie, r]))
  const done = new Set<bigint>()
  while (st.left) {
    const m = st.take(4)!.readUInt32BE(0)
    if (m === P.NBD_SIMPLE_REPLY_MAGIC) {
      const rest = st.take(12)
      if (!rest) {
        problems.push('a simple reply cut short')
        break
      }
      const errno = rest.readUInt32BE(0)
      const cookie = rest.readBigUInt64BE(4)
      const r = pending.get(cookie)
      if (!r) {
        problems.push(`a reply for cookie ${cookie}, which is not outstanding`)
        break
      }
      pending.delete(cookie)
      done.add(cookie)
      answers.set(cookie, errno)
      seen.add(errno ? `errno${errno}` : r.type === P.NBD_CMD_READ ? 'read' : 'ok')
      if (r.type === P.NBD_CMD_READ && errno === 0 && !structured) {
        const data = st.take(r.length)
        if (!data) {
          problems.push(`READ ${r.length} at ${r.offset}: data cut short`)
          break
        }
        problems.push(...checkRead(r, data, srv, fx))
      } else problems.push(...checkStatus(r, errno, structured, srv, fx, 'simple'))
    } else if (m === P.NBD_STRUCTURED_REPLY_MAGIC) {
      const rest = st.take(16)
      if (!rest) {
        problems.push('a structured reply header cut short')
        break
      }
      const flags = rest.readUInt16BE(0)
      const type = rest.readUInt16BE(2)
      const cookie = rest.readBigUInt64BE(4)
      const len = rest.readUInt32BE(12)
      const payload = st.take(len)
      if (!payload) {
        problems.push(`a structured reply of ${len} bytes cut short`)
        break
      }
      if (!structured) problems.push('a structured reply without structured replies negotiated')
      const r = pending.get(cookie)
      if (!r) {
        problems.push(`a structured reply for cookie ${cookie}, which is not outstanding`)
        break
      }
      if (!(flags & P.NBD_REPLY_FLAG_DONE)) problems.push('a multi-chunk reply (every reply here should be one chunk)')
      pending.delete(cookie)
      done.add(cookie)
      answers.set(cookie, type & 0x8000 ? (payload.length >= 4 ? payload.readUInt32BE(0) : -1) : 0)
      seen.add(type & 0x8000 && payload.length >= 4 ? `errno${payload.readUInt32BE(0)}` : `chunk${type}`)
      if (type === P.NBD_REPLY_TYPE_OFFSET_DATA) {
        if (r.type !== P.NBD_CMD_READ || payload.length < 8 || payload.readBigUInt64BE(0) !== r.offset) problems.push(`OFFSET_DATA for a ${r.type} request at ${r.offset}`)
        else problems.push(...checkRead(r, payload.subarray(8), srv, fx))
      } else if (type === P.NBD_REPLY_TYPE_NONE) {
        if (!(r.type === P.NBD_CMD_READ && r.length === 0) && r.want !== 'ok') problems.push(`NBD_REPLY_TYPE_NONE for request type ${r.type} of ${r.length} bytes`)
      } else if (type === P.NBD_REPLY_TYPE_ERROR || type === P.NBD_REPLY_TYPE_ERROR_OFFSET) {
        if (payload.length < 6) problems.push('an error chunk shorter than 6 bytes')
        else {
          const mlen = payload.readUInt16BE(4)
          if (6 + mlen + (type === P.NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0) !== payload.length) problems.push('an error chunk whose message length does not fit')
          if (type === P.NBD_REPLY_TYPE_ERROR_OFFSET) {
            const at = payload.readBigUInt64BE(6 + mlen)
            if (at < r.offset || at >= r.offset + BigInt(r.length)) problems.push(`ERROR_OFFSET ${at} outside the request [${r.offset}, +${r.length})`)
          }
          problems.push(...checkStatus(r, payload.readUInt32BE(0), structured, srv, fx, 'structured'))
        }
      } else if (type === P.NBD_REPLY_TYPE_BLOCK_STATUS) {
        problems.push(...checkBlockStatus(r, payload, srv, fx))
      } else problems.push(`structured reply type ${type}`)
    } else {
      problems.push(`a reply with a bad magic 0x${m.toString(16)}`)
      break
    }
  }
  if (complete && pending.size && !s.lenient) problems.push(`${pending.size} requests never answered (the first: ${describe(pending.values().next().value!)})`)
  return problems
}

function describe(r: RequestExpect): string {
  return `type ${r.type}, ${r.length} bytes at ${r.offset}`
}

function checkRead(r: RequestExpect, data: Buffer, srv: Server, fx: ServedImage): string[] {
  if (r.want === 'read-any') return data.length === r.length ? [] : [`READ ${r.length} at ${r.offset} returned ${data.length} bytes`]
  if (r.want !== 'read') return [`data for ${describe(r)}, which should have failed with ${r.errno}`]
  const off = Number(r.offset)
  if (srv.policy === 'error' && touchesBad(off, r.length)) return [`READ ${r.length} at ${off} touches a bad area but returned data`]
  if (data.length !== r.length) return [`READ ${r.length} at ${off} returned ${data.length} bytes`]
  if (!data.equals(fx.data.subarray(off, off + r.length))) return [`READ ${r.length} at ${off} returned wrong bytes`]
  return []
}

function checkStatus(r: RequestExpect, errno: number, structured: boolean, srv: Server, fx: ServedImage, how: string): string[] {
  const off = Number(r.offset)
  if (r.want === 'ok') return errno === 0 ? [] : [`${describe(r)}: errno ${errno} where success was due`]
  if (r.want === 'errno') return errno === r.errno ? [] : [`${describe(r)}: errno ${errno} where ${r.errno} was due (${how} reply)`]
  if (r.want === 'read-any') return errno === 0 || errno === P.NBD_EIO ? [] : [`READ ${r.length} at ${off}: errno ${errno}`]
  if (r.want === 'status-any') return [`BLOCK_STATUS ${r.length} at ${off}: errno ${errno} where a status was due`]
  if (r.want === 'read') {
    if (errno === 0 && structured) return [`${describe(r)}: a success reply without data`]
    if (errno === 0) return []
    if (errno === P.NBD_EIO && srv.policy === 'error' && touchesBad(off, r.length)) return []
    return [`READ ${r.length} at ${off}: errno ${errno}${touchesBad(off, r.length) ? '' : ' (no bad area there)'}`]
  }
  if (r.want === 'status') return [`BLOCK_STATUS ${r.length} at ${off}: errno ${errno} where a status was due`]
  return []
}

function checkBlockStatus(r: RequestExpect, payload: Buffer, srv: Server, fx: ServedImage): string[] {
  if (r.want !== 'status' && r.want !== 'status-any') return [`a block status for ${describe(r)}`]
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0) return [`a block status payload of ${payload.length} bytes`]
  if (payload.readUInt32BE(0) !== 1) return [`block status for context ${payload.readUInt32BE(0)}`]
  const problems: string[] = []
  const n = (payload.length - 4) / 8
  if (r.flags & P.NBD_CMD_FLAG_REQ_ONE && n !== 1) problems.push(`NBD_CMD_FLAG_REQ_ONE but ${n} descriptors`)
  let at = Number(r.offset)
  for (let i = 0; i < n; i++) {
    const len = payload.readUInt32BE(4 + i * 8)
    const flags = payload.readUInt32BE(8 + i * 8)
    if (len === 0) problems.push('a block status descriptor of length 0')
    if (at + len > Number(r.offset) + r.length) {
      problems.push('block status descriptors run past the request')
      break
    }
    if (flags & P.NBD_STATE_ZERO && r.want === 'status') {
      if (fx.data.subarray(at, at + len).some((x) => x !== 0)) problems.push(`block status calls [${at}, +${len}) zero, but it holds data`)
      if (srv.policy === 'error' && touchesBad(at, len)) problems.push(`block status calls [${at}, +${len}) zero, but it is unreadable`)
    }
    at += len
  }
  return problems
}

/** Flip, insert and delete random bytes of a session's stream. */
function chaos(rng: Rng, bytes: Buffer): {bytes: Buffer; steps: string[]} {
  const b = Buffer.from(bytes)
  const steps: string[] = []
  const n = rng.pick([1, 2, 4, 8])
  let out: Buffer = b
  for (let i = 0; i < n && out.length; i++) {
    const at = rng.int(out.length)
    const op = rng.pick(['flip', 'flip', 'set', 'insert', 'delete'])
    if (op === 'flip') out[at] ^= 1 << rng.int(8)
    else if (op === 'set') out[at] = rng.pick([0, 0xff, 0x7f, 0x80])
    else if (op === 'insert') out = Buffer.concat([out.subarray(0, at), rng.bytes(rng.range(1, 8)), out.subarray(at)])
    else out = Buffer.concat([out.subarray(0, at), out.subarray(Math.min(out.length, at + rng.range(1, 8)))])
    steps.push(`chaos: ${op} at byte ${at}`)
  }
  return {bytes: out, steps}
}

async function witnessRead(srv: Server, fx: ServedImage, rng: Rng): Promise<string | undefined> {
  const c = srv.witness
  if (!c || c.socket.destroyed) return 'the witness connection is gone'
  // A range with no bad area in it, so every policy answers data.
  let offset = 0
  let length = 4096
  for (let k = 0; k < 20; k++) {
    offset = rng.int((fx.size - 65536) / 512) * 512
    length = rng.pick([512, 4096, 65536])
    if (!touchesBad(offset, length)) break
  }
  const cookie = BigInt(rng.u32())
  c.request(P.NBD_CMD_READ, offset, length, cookie)
  let r: Awaited<ReturnType<RawClient['reply']>>
  try {
    r = await Promise.race([
      c.reply(new Map([[cookie, length]])),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no reply within 5 s')), 5000)),
    ])
  } catch (err) {
    return `the witness connection got no reply: ${(err as Error).message}`
  }
  const data = r.kind === 'structured' ? r.payload.subarray(8) : r.payload
  if (r.error !== 0 || r.cookie !== cookie || !data.equals(fx.data.subarray(offset, offset + length)))
    return `the witness connection read wrong bytes at ${offset} (error ${r.error})`
  return undefined
}

/** A fresh well-formed client reads correct bytes. */
async function freshRead(srv: Server, fx: ServedImage, rng: Rng): Promise<string | undefined> {
  let c: RawClient | undefined
  try {
    c = await RawClient.connect(srv.socket)
    const structured = rng.chance(0.5)
    await c.go({structured})
    const saved = srv.witness
    srv.witness = c
    try {
      return await witnessRead(srv, fx, rng)
    } finally {
      srv.witness = saved
    }
  } catch (err) {
    return `a fresh client could not read: ${(err as Error).message}`
  } finally {
    c?.destroy()
  }
}

interface SessionResult {
  failures: string[]
  steps: string[]
  input: Buffer
  outcome: string
  /** The writes (with their bytes) the server acknowledged; `clean`: every request's fate is known. */
  acked: Array<{offset: number; data: Buffer}>
  clean: boolean
}

async function runSession(srv: Server, fx: ServedImage, ctx: CaseContext): Promise<SessionResult> {
  const rng = ctx.rng
  const s = generate(rng, fx.size, srv.rw)
  let bytes: Buffer = Buffer.concat(s.bytes)
  const steps = [`server: ${srv.name}`, ...s.steps, `ending: ${s.ending}`]
  const isChaos = rng.chance(0.2)
  if (isChaos) {
    const c = chaos(rng, bytes)
    bytes = c.bytes
    steps.push(...c.steps)
  }
  let ending: Ending = s.ending
  // A disconnect at a random byte.
  if (ending === 'destroy' || (isChaos && rng.chance(0.3))) {
    ending = 'destroy'
    bytes = bytes.subarray(0, rng.int(bytes.length + 1))
    steps.push(`cut at byte ${bytes.length}, then the socket destroyed`)
  }
  const failures: string[] = []
  const baseline = srv.running.nbd.connectionCount
  const sock = net.connect(srv.socket)
  const out: Buffer[] = []
  let closed = false
  sock.on('data', (d: Buffer) => out.push(d))
  sock.on('error', () => undefined)
  const closedP = new Promise<void>((resolve) => sock.once('close', () => ((closed = true), resolve())))
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve)
    sock.once('error', reject)
  })
  // Write in pieces, so the server's readers see requests split anywhere — except the last message, which
  // goes in one write: a server that closes after it (DISC, ABORT, a violation) must not make our write fail
  // (EPIPE destroys a Node socket, and with it the replies not read yet).
  const last = isChaos || ending === 'destroy' ? bytes.length : bytes.length - s.bytes[s.bytes.length - 1].length
  const pieces = rng.chance(0.5) ? 1 : rng.range(2, 12)
  let at = 0
  for (let i = 0; i < pieces && !closed; i++) {
    const end = i === pieces - 1 ? last : Math.min(last, at + rng.int(last - at + 1))
    if (end > at) sock.write(bytes.subarray(at, end))
    at = end
    if (pieces > 1) await new Promise((r) => setImmediate(r))
  }
  if (at < bytes.length && !closed) sock.write(bytes.subarray(at))
  let closedByServer = false
  if (ending === 'destroy') sock.destroy()
  else {
    // After DISC, ABORT or a violation the server closes by itself; after anything else we half-close first.
    const waitsForServer = ending === 'disc' || ending === 'abort' || ending === 'violation'
    if (!waitsForServer || isChaos || s.lenient) sock.end()
    const ok = await Promise.race([closedP.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5000))])
    if (!ok) {
      failures.push(waitsForServer && !isChaos && !s.lenient ? `the server did not close the connection after ${ending}` : 'the server did not close the connection after the client\'s end of stream')
      sock.destroy()
    } else closedByServer = true
  }
  await closedP
  if (!(await until(() => srv.running.nbd.connectionCount <= baseline, 5000)))
    failures.push(`the server still tracks the connection 5 s after it closed (${srv.running.nbd.connectionCount} connections, ${baseline} before)`)
  const output = Buffer.concat(out)
  const seen = new Set<string>()
  const answers = new Map<bigint, number>()
  if (!isChaos && ending !== 'destroy') failures.push(...checkOutput(output, s, srv, fx, closedByServer, seen, answers))
  else if (output.length >= 18 && output.readBigUInt64BE(0) !== P.NBDMAGIC) failures.push('bad greeting')
  const outcome = `${srv.name}:${isChaos ? 'chaos' : s.lenient ? 'lenient' : 'model'}:${ending}:${s.transmission ? 'tx' : 'hs'}:${[...seen].sort().join(',')}`
  const writes = s.requests.filter((r) => r.data)
  const acked = writes.filter((r) => answers.get(r.cookie) === 0).map((r) => ({offset: Number(r.offset), data: r.data!}))
  // A write whose reply was lost (a destroyed socket, chaos, a lie about a length) may or may not be in the overlay.
  const clean = !isChaos && ending !== 'destroy' && !s.lenient && writes.every((r) => answers.has(r.cookie))
  return {failures, steps, input: bytes, outcome, acked, clean}
}

/**
 * A writable case: one session against a server over a fresh overlay (on the main thread, or on serving
 * threads through the overlay's views), then the overlay compared with the model — the image's bytes and
 * bad sectors with every acknowledged write applied — and opened again.
 */
async function runWritableCase(fx: ServedImage, ctx: CaseContext, threads: boolean): Promise<SessionResult> {
  const file = path.join(fx.dir, 'rw.vdovl')
  const socket = path.join(fx.dir, 'rw.sock')
  fs.rmSync(file, {force: true})
  fs.rmSync(socket, {force: true})
  const logs: string[] = []
  const ovl = await Overlay.open(await openImage(fx.image), file, {log: (l) => logs.push(l)})
  // Compaction while serving, over and over: the session's reads and writes run across compactions.
  const compacting = setInterval(() => void ovl.compact(), 5)
  let r: SessionResult
  try {
    const running = await startNbdServer(new BlockServer(ovl), {
      listen: {kind: 'unix', path: socket},
      exportName: EXPORT,
      log: (l) => logs.push(l),
      threads: threads ? {perConnection: 2, maxThreads: 2, pollMicroseconds: 0} : undefined,
    })
    const srv: Server = {name: threads ? 'rw-threads' : 'rw', policy: 'error', running, socket, logs, witnessStructured: true, rw: true}
    try {
      r = await runSession(srv, fx, ctx)
    } finally {
      await running.close()
    }
    if (r.clean) {
      const model = contentOf(fx)
      for (const w of r.acked) applyWrite(model, w.offset, w.data)
      const diff = await compareOverlay(ovl, model)
      if (diff) r.failures.push(`after the session: ${diff}`)
    }
    // Past the end and read-only refusals are logged as failed commands by design; anything else is not.
    for (const l of logs) if (INTERNAL_LOG.test(l) && !/failed: .*(past the end|ENOSPC|no space)/i.test(l)) r.failures.push(`the server logged an internal error: ${l.slice(0, 300)}`)
    for (const l of logs) if (/compaction while serving failed/.test(l)) r.failures.push(l.slice(0, 300))
  } finally {
    clearInterval(compacting)
    await ovl.close()
  }
  const reopened = await reopenOverlay(fx, file)
  if (reopened) r.failures.push(reopened)
  fs.rmSync(file, {force: true})
  return r
}

export const nbdTarget: Target = {
  name: 'nbd',
  caseTimeoutMs: 30_000,
  async setup(): Promise<TargetInstance> {
    const fx = await makeServedImage('vdev-fuzz-nbd-')
    const images: VdimgImage[] = []
    const servers: Server[] = []
    const mk = async (name: string, policy: BadPolicy, threads: boolean): Promise<Server> => {
      const img = await openImage(fx.image)
      images.push(img)
      const logs: string[] = []
      const socket = path.join(fx.dir, `${name}.sock`)
      const running = await startNbdServer(new BlockServer(img, {badPolicy: policy}), {
        listen: {kind: 'unix', path: socket},
        exportName: EXPORT,
        log: (l) => logs.push(l),
        threads: threads ? {perConnection: 2, maxThreads: 4, pollMicroseconds: 0} : undefined,
      })
      if (threads && running.threadsPerConnection === 0) throw new Error(`serving threads did not start: ${logs.join('; ')}`)
      const srv: Server = {name, policy, running, socket, logs, witnessStructured: name !== 'main'}
      srv.witness = await RawClient.connect(socket)
      await srv.witness.go({structured: srv.witnessStructured})
      return srv
    }
    try {
      servers.push(await mk('main', 'error', false))
      servers.push(await mk('threads', 'error', true))
      servers.push(await mk('main-zero', 'zero', false))
    } catch (err) {
      for (const s of servers) {
        s.witness?.destroy()
        await s.running.close()
      }
      for (const i of images) await i.close()
      fx.cleanup()
      throw err
    }
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        // Serving threads take a few hundred ms to start, and each writable case starts its own server.
        if (ctx.rng.chance(0.2)) {
          const r = await runWritableCase(fx, ctx, ctx.rng.chance(0.25))
          return {outcome: `rw:${r.outcome}` + (r.failures.length ? `:fail:${normalize(r.failures[0], 60)}` : ''), failures: r.failures, input: {ext: 'bin', data: r.input}, steps: r.steps}
        }
        const srv = ctx.rng.pick(servers)
        const logStart = srv.logs.length
        const r = await runSession(srv, fx, ctx)
        const w = await witnessRead(srv, fx, ctx.rng)
        if (w) {
          r.failures.push(w)
          // Keep going with a new witness, so one failure does not fail every later case.
          srv.witness?.destroy()
          try {
            srv.witness = await RawClient.connect(srv.socket)
            await srv.witness.go({structured: srv.witnessStructured})
          } catch {
            srv.witness = undefined
          }
        }
        if (ctx.rng.chance(0.1) || r.failures.length) {
          const before = srv.running.nbd.connectionCount
          const fresh = await freshRead(srv, fx, ctx.rng)
          if (fresh) r.failures.push(fresh)
          await until(() => srv.running.nbd.connectionCount <= before, 5000)
        }
        for (const l of srv.logs.slice(logStart)) if (INTERNAL_LOG.test(l)) r.failures.push(`the server logged an internal error: ${l.slice(0, 300)}`)
        if (srv.logs.length > 10000) srv.logs.splice(0, srv.logs.length)
        return {outcome: r.outcome + (r.failures.length ? `:fail:${normalize(r.failures[0], 60)}` : ''), failures: r.failures, input: {ext: 'bin', data: r.input}, steps: r.steps}
      },
      async close() {
        for (const s of servers) {
          s.witness?.destroy()
          await s.running.close()
        }
        for (const i of images) await i.close()
        fx.cleanup()
      },
    }
  },
}

/**
 * The FUSE wire protocol for one server: parse a request read from /dev/fuse, negotiate INIT, hand the
 * operation to a handler, write the reply (one writev(2)). The same object serves on the main thread
 * (requests forwarded by reader threads) or inside a serving thread (which reads /dev/fuse itself).
 * Protocol: include/uapi/linux/fuse.h and Documentation/filesystems/fuse.rst.
 */
import * as fs from 'node:fs'
import {ERRNO} from '../../../src/sys/errno'
import {
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FuseInitFlag,
  FuseInitFlag2,
  FuseOpcode,
  fuse_in_header,
  fuse_init_in,
  fuse_init_out,
  fuse_out_header,
} from './abi'

export interface FuseRequest {
  opcode: number
  unique: bigint
  nodeid: number
  uid: number
  gid: number
  pid: number
  /**
   * The operation's arguments (after struct fuse_in_header). Only valid until the handler first awaits:
   * a serving thread reuses its read buffer for the next request.
   */
  body: Buffer
}

/** A reply: the payload buffers (concatenated after fuse_out_header), or a positive errno. */
export type FuseReply = Buffer[] | number

export type FuseHandler = (req: FuseRequest) => FuseReply | Promise<FuseReply>

/**
 * A synchronous READ handler for serving threads: write the bytes of a READ (its fuse_read_in is `body`)
 * for file `nodeid` into `dst` and return how many, or return a negative errno. `dst` is the reply buffer
 * just after fuse_out_header, so the data is read in place and sent with the header in one write(2).
 */
export type FuseReadInto = (nodeid: number, body: Buffer, dst: Buffer) => number

/**
 * Where a reply goes: the /dev/fuse descriptor its request was read from (one write(2)), or — for a request
 * taken from an io_uring ring entry (uring.ts) — a function given the reply's bytes (fuse_out_header first).
 */
export type ReplyTo = number | ((parts: Buffer[]) => void)

export interface InitResult {
  /** Negotiated protocol, e.g. "7.45". */
  protocol: string
  /** Largest READ the kernel will send, in bytes. */
  maxRead: number
  flags: number
  /** FUSE over io_uring was agreed (the server registers ring entries next: uring.ts). */
  uring: boolean
}

export const PAGE = 4096
/** A read-only session refuses writes; the kernel still sizes its read-buffer check with max_write (fuse_dev_do_read). */
export const MAX_WRITE = 4096
/** Room for the largest request of a read-only session (WRITE: headers + max_write), with slack. */
export const READ_BUFFER_SIZE = 64 * 1024

/**
 * Room for the largest request the kernel may send when WRITEs are taken: fuse_in_header, fuse_write_in and
 * max_write bytes of data (fuse_dev_do_read refuses a smaller buffer with EINVAL), with a page of slack.
 */
export function requestBufferSize(maxWrite: number): number {
  return Math.max(READ_BUFFER_SIZE, maxWrite + PAGE)
}

export interface ProtocolOptions {
  fd: number
  handler: FuseHandler
  /** READs of up to this many 4 KiB pages (FUSE_MAX_PAGES; the kernel caps it at fs.fuse.max_pages_limit). */
  maxPages: number
  /** Async requests the kernel may have outstanding (fuse_init_out.max_background). */
  maxBackground: number
  /** Largest WRITE to accept (fuse_init_out.max_write), for a writable file system; default MAX_WRITE. */
  maxWrite?: number
  log: (line: string) => void
  /** Called once INIT is answered, or with the reason it could not be. */
  onInit: (r: InitResult | Error) => void
  /**
   * Serve READs synchronously into one reused reply buffer (header + up to maxPages pages) instead of
   * through `handler`: no allocation and no copy per READ. Only for a thread that serves one request at a time.
   */
  readInto?: FuseReadInto
  /**
   * Asked at INIT: offer FUSE over io_uring (FUSE_OVER_IO_URING) when the kernel does — true only if ring
   * entries will be registered (the kernel then holds every request until they are).
   */
  uring?: () => boolean
}

const IN_LEN = fuse_in_header.offsets.len
const IN_OPCODE = fuse_in_header.offsets.opcode
const IN_UNIQUE = fuse_in_header.offsets.unique
const IN_NODEID = fuse_in_header.offsets.nodeid
const IN_EXTLEN = fuse_in_header.offsets.total_extlen
const OUT_LEN = fuse_out_header.offsets.len
const OUT_ERROR = fuse_out_header.offsets.error
const OUT_UNIQUE = fuse_out_header.offsets.unique

export class FuseProtocol {
  readonly counters = {requests: 0, errors: 0, interrupts: 0}
  inFlight = 0
  private idle: Array<() => void> = []
  /** With readInto: fuse_out_header followed by room for the largest READ. */
  private readonly replyBuf: Buffer | undefined
  /** The part of replyBuf after the header, where READ data goes. */
  private readonly replyData: Buffer | undefined

  constructor(private readonly o: ProtocolOptions) {
    if (o.readInto) {
      this.replyBuf = Buffer.allocUnsafeSlow(fuse_out_header.size + o.maxPages * PAGE)
      this.replyData = this.replyBuf.subarray(fuse_out_header.size)
    }
  }

  /**
   * Handle one request; resolves once its reply (if any) is written. `fd` is the descriptor the request
   * was read from (a serving thread's own clone, or the session's): the kernel takes its reply only there.
   */
  handle(msg: Buffer, fd: ReplyTo = this.o.fd): Promise<void> | void {
    if (msg.length < fuse_in_header.size) {
      this.o.log(`fuse: short request of ${msg.length} bytes ignored`)
      return
    }
    if (this.replyBuf && msg.readUInt32LE(IN_OPCODE) === FuseOpcode.READ && msg.readUInt32LE(IN_LEN) === msg.length) return this.readInPlace(msg, this.replyBuf, fd)
    const h = fuse_in_header.decode(msg)
    const unique = msg.readBigUInt64LE(IN_UNIQUE)
    if (h.len !== msg.length) {
      this.o.log(`fuse: request length ${h.len} != ${msg.length} read; answering EIO`)
      return this.reply(unique, ERRNO.EIO, fd)
    }
    // The extension area (security context, supplementary groups) follows the arguments; we use neither.
    const extLen = h.total_extlen * 8
    const body = msg.subarray(fuse_in_header.size, Math.max(fuse_in_header.size, msg.length - extLen))
    this.counters.requests++
    switch (h.opcode) {
      case FuseOpcode.INIT:
        return this.init(unique, body, fd)
      case FuseOpcode.FORGET:
      case FuseOpcode.BATCH_FORGET:
        return // one inode, never forgotten: no reply (fuse.h: "no reply")
      case FuseOpcode.INTERRUPT:
        // Reads finish on their own within the source's latency; nothing to cancel, no reply expected.
        this.counters.interrupts++
        return
      case FuseOpcode.DESTROY:
        return this.reply(unique, [], fd)
    }
    const req: FuseRequest = {opcode: h.opcode, unique, nodeid: h.nodeid, uid: h.uid, gid: h.gid, pid: h.pid, body}
    this.inFlight++
    let result: FuseReply | Promise<FuseReply>
    try {
      result = this.o.handler(req)
    } catch (err) {
      result = this.failed(req, err)
    }
    if (result instanceof Promise) {
      return result.then(
        (r) => this.finish(unique, r, fd),
        (err) => this.finish(unique, this.failed(req, err), fd),
      )
    }
    this.finish(unique, result, fd)
  }

  private failed(req: FuseRequest, err: unknown): number {
    this.o.log(`fuse: opcode ${req.opcode} failed: ${(err as Error)?.message ?? err}`)
    return ERRNO.EIO
  }

  private finish(unique: bigint, r: FuseReply, fd: ReplyTo): void {
    this.inFlight--
    this.reply(unique, r, fd)
    if (this.inFlight === 0) for (const f of this.idle.splice(0)) f()
  }

  /** Wait until every request being served has been answered. */
  async drain(): Promise<void> {
    while (this.inFlight > 0) await new Promise<void>((resolve) => this.idle.push(resolve))
  }

  private init(unique: bigint, body: Buffer, fd: ReplyTo): void {
    if (body.length < 16) {
      this.reply(unique, ERRNO.EIO, fd)
      this.o.onInit(new Error(`FUSE INIT of ${body.length} bytes is too short`))
      return
    }
    // fuse_init_in grew in 7.36 (flags2 …); older kernels send the first 16 bytes only.
    const padded = Buffer.alloc(fuse_init_in.size)
    body.copy(padded, 0, 0, Math.min(body.length, padded.length))
    const inp = fuse_init_in.decode(padded)
    if (inp.major !== FUSE_KERNEL_VERSION) {
      // fuse.h "Version negotiation": we only speak major 7, as does every Linux kernel since 2.6.
      this.reply(unique, ERRNO.EPROTO, fd)
      this.o.onInit(new Error(`the kernel speaks FUSE ${inp.major}.${inp.minor}; vdev speaks ${FUSE_KERNEL_VERSION}.x`))
      return
    }
    const minor = Math.min(inp.minor, FUSE_KERNEL_MINOR_VERSION)
    const want =
      FuseInitFlag.ASYNC_READ | // several READs of one file in flight at once
      FuseInitFlag.ASYNC_DIO | // direct I/O (the loop device's) split into concurrent READs
      FuseInitFlag.MAX_PAGES | // READs up to max_pages, not the 32-page default
      FuseInitFlag.PARALLEL_DIROPS |
      FuseInitFlag.ABORT_ERROR | // readers of an aborted connection get ECONNABORTED, not ENODEV
      (this.o.maxWrite ? FuseInitFlag.BIG_WRITES : 0) | // WRITEs larger than a page (older kernels ask for it)
      (this.o.uring ? FuseInitFlag.INIT_EXT : 0) // flags2 below
    const flags = (want & inp.flags) >>> 0
    // FUSE over io_uring (7.42): offered by the kernel only while the fuse module's enable_uring is set.
    const uring = Boolean(flags & FuseInitFlag.INIT_EXT) && Boolean(inp.flags2 & FuseInitFlag2.OVER_IO_URING) && this.o.uring!()
    const flags2 = uring ? FuseInitFlag2.OVER_IO_URING : 0
    const maxPages = flags & FuseInitFlag.MAX_PAGES ? this.o.maxPages : 32
    const maxRead = maxPages * PAGE
    const out = fuse_init_out.encode({
      major: FUSE_KERNEL_VERSION,
      minor: FUSE_KERNEL_MINOR_VERSION,
      max_readahead: Math.min(inp.max_readahead, maxRead),
      flags,
      max_background: this.o.maxBackground,
      congestion_threshold: Math.floor((this.o.maxBackground * 3) / 4),
      max_write: this.o.maxWrite ?? MAX_WRITE,
      time_gran: 1,
      max_pages: maxPages,
      flags2,
    })
    // Reply sizes by negotiated minor (fuse.h FUSE_COMPAT_INIT_OUT_SIZE, FUSE_COMPAT_22_INIT_OUT_SIZE).
    const size = minor < 5 ? 8 : minor < 23 ? 24 : fuse_init_out.size
    this.reply(unique, [out.subarray(0, size)], fd)
    const protocol = `${FUSE_KERNEL_VERSION}.${minor}`
    this.o.log(`fuse: protocol ${protocol} (kernel ${inp.major}.${inp.minor}), reads up to ${maxRead} bytes, flags 0x${flags.toString(16)}${uring ? ', over io_uring' : ''}`)
    this.o.onInit({protocol, maxRead, flags, uring})
  }

  /**
   * READ on the fast path: the handler reads the bytes into the reply buffer after the header, and one
   * write(2) sends both. Nothing is allocated: the header fields are read and written in place.
   */
  private readInPlace(msg: Buffer, out: Buffer, fd: ReplyTo): void {
    this.counters.requests++
    const extLen = msg.readUInt16LE(IN_EXTLEN) * 8
    const body = msg.subarray(fuse_in_header.size, Math.max(fuse_in_header.size, msg.length - extLen))
    const nodeid = msg.readUInt32LE(IN_NODEID) + msg.readUInt32LE(IN_NODEID + 4) * 2 ** 32
    this.inFlight++
    let n: number
    try {
      n = this.o.readInto!(nodeid, body, this.replyData!)
    } catch (err) {
      this.o.log(`fuse: READ failed: ${(err as Error)?.message ?? err}`)
      n = -ERRNO.EIO
    }
    const len = fuse_out_header.size + Math.max(n, 0)
    out.writeUInt32LE(len, OUT_LEN)
    out.writeInt32LE(Math.min(n, 0), OUT_ERROR)
    msg.copy(out, OUT_UNIQUE, IN_UNIQUE, IN_UNIQUE + 8)
    if (n < 0) this.counters.errors++
    this.inFlight--
    try {
      if (typeof fd === 'number') fs.writeSync(fd, out, 0, len)
      else fd([out.subarray(0, len)])
    } catch (err) {
      this.replyFailed(err, msg)
    }
    if (this.inFlight === 0) for (const f of this.idle.splice(0)) f()
  }

  /** A failed reply write: one to a request the kernel already dropped (interrupted, aborted) is ignored. */
  private replyFailed(err: unknown, msg: Buffer | bigint): void {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENODEV' || code === 'ECONNABORTED' || code === 'EBADF') return
    const unique = typeof msg === 'bigint' ? msg : msg.readBigUInt64LE(IN_UNIQUE)
    this.o.log(`fuse: reply to request ${unique} failed: ${code ?? err}`)
  }

  /** Write one reply. A reply to a request the kernel already dropped (interrupted, aborted) is ignored. */
  reply(unique: bigint, r: FuseReply, fd: ReplyTo = this.o.fd): void {
    const error = typeof r === 'number' ? -r : 0
    const payload = typeof r === 'number' ? [] : r
    let len = fuse_out_header.size
    for (const b of payload) len += b.length
    const hdr = Buffer.allocUnsafe(fuse_out_header.size)
    hdr.writeUInt32LE(len, 0)
    hdr.writeInt32LE(error, 4)
    hdr.writeBigUInt64LE(unique, 8)
    if (error) this.counters.errors++
    try {
      if (typeof fd === 'number') fs.writevSync(fd, [hdr, ...payload])
      else fd([hdr, ...payload])
    } catch (err) {
      this.replyFailed(err, unique)
    }
  }
}

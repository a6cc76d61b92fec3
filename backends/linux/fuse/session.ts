/**
 * A FUSE session spoken directly over /dev/fuse (no libfuse): open the device, mount(2) it, negotiate
 * INIT, then read requests on worker threads and answer them from the main thread. The protocol is
 * documented in include/uapi/linux/fuse.h and Documentation/filesystems/fuse.rst.
 *
 * Threads: reader threads block in read(2) and post raw requests here; the handler (which owns the
 * BlockServer) runs on the main thread and every reply is one writev(2). Anything that may block on our
 * own file system (umount, opening the served file) runs off the main thread.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {VdevError} from '../../../src/core/errors'
import * as libc from '../../../src/sys/libc'
import {runOffThread} from '../../../src/sys/offthread'
import {
  Errno,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FuseInitFlag,
  FuseOpcode,
  fuse_in_header,
  fuse_init_in,
  fuse_init_out,
  fuse_out_header,
} from './abi'
import {abortConnection, connectionOfMount} from './fusectl'
import {readMountinfo} from '../../../src/sys/mountinfo'

export interface FuseRequest {
  opcode: number
  unique: bigint
  nodeid: number
  uid: number
  gid: number
  pid: number
  /** The operation's arguments (after struct fuse_in_header). */
  body: Buffer
}

/** A reply: the payload buffers (concatenated after fuse_out_header), or a positive errno. */
export type FuseReply = Buffer[] | number

export type FuseHandler = (req: FuseRequest) => FuseReply | Promise<FuseReply>

export interface FuseMountOptions {
  mountpoint: string
  handler: FuseHandler
  /** Shown as the mount source and subtype ("fuse.<subtype>"). */
  fsname?: string
  /** Largest READ in pages of 4 KiB (FUSE_MAX_PAGES; the kernel caps it at fs.fuse.max_pages_limit). */
  maxPages?: number
  /** Threads blocking in read(2) on /dev/fuse. */
  readers?: number
  /** Async background requests the kernel may have outstanding (fuse_init_out.max_background). */
  maxBackground?: number
  log?: (line: string) => void
  /** How long to wait for the kernel's INIT after mount(2). */
  initTimeoutMs?: number
}

const PAGE = 4096
/** The kernel requires the read buffer to hold any request; WRITE is the largest (max_write + headers). */
const MAX_WRITE = 4096

export class FuseSession {
  readonly mountpoint: string
  /** Negotiated protocol, e.g. "7.45". */
  protocol = ''
  /** Largest READ the kernel will send, in bytes. */
  maxRead = 0
  /** The connection id under /sys/fs/fuse/connections (the mount's device number). */
  connection = 0
  /** Resolves with the reason when the kernel side is gone (unmounted or aborted). */
  readonly closed: Promise<string>
  private resolveClosed!: (reason: string) => void
  private readonly fd: number
  private readonly handler: FuseHandler
  private readonly log: (line: string) => void
  private readonly readers: Worker[] = []
  private readersLeft = 0
  private readonly inFlight = new Set<bigint>()
  private idleWaiters: Array<() => void> = []
  private initDone?: (err?: Error) => void
  private kernelFlags = 0
  private fdClosed = false
  private readonly wantPages: number
  private readonly maxBackground: number
  private dead = false
  private counters = {requests: 0, errors: 0, interrupts: 0}

  private constructor(fd: number, opts: FuseMountOptions) {
    this.fd = fd
    this.mountpoint = opts.mountpoint
    this.handler = opts.handler
    this.log = opts.log ?? (() => {})
    this.wantPages = Math.max(1, Math.min(opts.maxPages ?? 256, 256))
    this.maxBackground = opts.maxBackground ?? 64
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve))
  }

  get stats(): {requests: number; errors: number; interrupts: number; inFlight: number} {
    return {...this.counters, inFlight: this.inFlight.size}
  }

  /** Open /dev/fuse, mount it read-only at `mountpoint`, and complete INIT. */
  static async mount(opts: FuseMountOptions): Promise<FuseSession> {
    let fd: number
    try {
      fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT') throw new VdevError('unavailable', '/dev/fuse does not exist (FUSE is not available in this kernel or container)')
      throw new VdevError('unavailable', `/dev/fuse: cannot open: ${code}`)
    }
    const s = new FuseSession(fd, opts)
    const name = opts.fsname ?? 'vdev'
    const data = [
      `fd=${fd}`,
      'rootmode=40000',
      `user_id=${process.getuid?.() ?? 0}`,
      `group_id=${process.getgid?.() ?? 0}`,
      'default_permissions',
      `max_read=${s.wantPages * PAGE}`,
    ].join(',')
    try {
      libc.mount(name, opts.mountpoint, `fuse.${name}`, libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV, data)
    } catch (err) {
      fs.closeSync(fd)
      const e = err as libc.SysError
      if (e.errno === libc.ERRNO.EPERM) throw new VdevError('unavailable', `mount of a FUSE file system at ${opts.mountpoint} was refused (EPERM): vdev attach needs root`)
      throw new VdevError('io', `mount of a FUSE file system at ${opts.mountpoint} failed: ${e.message}`)
    }
    // mount(2) returns before INIT is answered: the kernel queues INIT for us to read now.
    const init = new Promise<void>((resolve, reject) => {
      s.initDone = (err) => (err ? reject(err) : resolve())
    })
    s.connection = connectionOfMount(opts.mountpoint) ?? 0
    s.startReaders(opts.readers ?? 2)
    const timeoutMs = opts.initTimeoutMs ?? 10000
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        init,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new VdevError('timeout', `the kernel sent no FUSE INIT within ${timeoutMs} ms`)), timeoutMs)
        }),
      ])
    } catch (err) {
      await s.unmount({lazy: true}).catch(() => {})
      throw err
    } finally {
      clearTimeout(timer)
    }
    return s
  }

  private startReaders(count: number): void {
    // Room for the largest request the kernel may send (WRITE: headers + max_write), with slack.
    const bufferSize = Math.max(64 * 1024, 2 * (MAX_WRITE + 4096))
    this.readersLeft = count
    for (let i = 0; i < count; i++) {
      const w = new Worker(path.join(__dirname, 'reader-worker.js'), {workerData: {fd: this.fd, bufferSize}})
      w.on('message', (m: Uint8Array | {end: string}) => {
        if (m instanceof Uint8Array) this.dispatch(Buffer.from(m.buffer, m.byteOffset, m.byteLength))
        else this.readerEnded(m.end)
      })
      w.on('error', (err) => this.readerEnded(`reader thread failed: ${err.message}`))
      this.readers.push(w)
    }
  }

  private readerEnded(reason: string): void {
    if (--this.readersLeft > 0) return
    this.dead = true
    for (const w of this.readers) w.unref()
    this.initDone?.(new VdevError('io', `FUSE connection ended before INIT (${reason})`))
    this.initDone = undefined
    this.resolveClosed(reason)
    this.notifyIdle()
  }

  private dispatch(msg: Buffer): void {
    if (msg.length < fuse_in_header.size) {
      this.log(`fuse: short request of ${msg.length} bytes ignored`)
      return
    }
    const h = fuse_in_header.decode(msg)
    const unique = msg.readBigUInt64LE(fuse_in_header.offsets.unique)
    if (h.len !== msg.length) {
      this.log(`fuse: request length ${h.len} != ${msg.length} read; answering EIO`)
      this.reply(unique, Errno.EIO)
      return
    }
    // The extension area (security context, supplementary groups) follows the arguments; we use neither.
    const extLen = h.total_extlen * 8
    const body = msg.subarray(fuse_in_header.size, Math.max(fuse_in_header.size, msg.length - extLen))
    this.counters.requests++
    switch (h.opcode) {
      case FuseOpcode.INIT:
        return this.handleInit(unique, body)
      case FuseOpcode.FORGET:
      case FuseOpcode.BATCH_FORGET:
        return // one inode, never forgotten: no reply (fuse.h: "no reply")
      case FuseOpcode.INTERRUPT: {
        // Reads finish on their own within the source's latency; nothing to cancel. No reply is expected.
        this.counters.interrupts++
        return
      }
      case FuseOpcode.DESTROY:
        return this.reply(unique, [])
    }
    const req: FuseRequest = {opcode: h.opcode, unique, nodeid: h.nodeid, uid: h.uid, gid: h.gid, pid: h.pid, body}
    this.inFlight.add(unique)
    let result: FuseReply | Promise<FuseReply>
    try {
      result = this.handler(req)
    } catch (err) {
      result = this.failed(req, err)
    }
    if (result instanceof Promise) {
      result.then(
        (r) => this.finish(unique, r),
        (err) => this.finish(unique, this.failed(req, err)),
      )
    } else {
      this.finish(unique, result)
    }
  }

  private failed(req: FuseRequest, err: unknown): number {
    this.log(`fuse: opcode ${req.opcode} failed: ${(err as Error)?.message ?? err}`)
    return Errno.EIO
  }

  private finish(unique: bigint, r: FuseReply): void {
    this.inFlight.delete(unique)
    this.reply(unique, r)
    if (this.inFlight.size === 0) this.notifyIdle()
  }

  private notifyIdle(): void {
    for (const f of this.idleWaiters.splice(0)) f()
  }

  private handleInit(unique: bigint, body: Buffer): void {
    if (body.length < 16) {
      this.reply(unique, Errno.EIO)
      this.initDone?.(new VdevError('io', `FUSE INIT of ${body.length} bytes is too short`))
      return
    }
    // fuse_init_in grew in 7.36 (flags2 …); older kernels send the first 16 bytes only.
    const padded = Buffer.alloc(fuse_init_in.size)
    body.copy(padded, 0, 0, Math.min(body.length, padded.length))
    const inp = fuse_init_in.decode(padded)
    if (inp.major !== FUSE_KERNEL_VERSION) {
      // fuse.h "Version negotiation": we only speak major 7, as does every Linux kernel since 2.6.
      this.reply(unique, 71 /* EPROTO */)
      this.initDone?.(new VdevError('unsupported', `the kernel speaks FUSE ${inp.major}.${inp.minor}; vdev speaks ${FUSE_KERNEL_VERSION}.x`))
      return
    }
    const minor = Math.min(inp.minor, FUSE_KERNEL_MINOR_VERSION)
    this.kernelFlags = inp.flags
    const want =
      FuseInitFlag.ASYNC_READ | // several READs of one file in flight at once
      FuseInitFlag.ASYNC_DIO | // direct I/O (the loop device's) split into concurrent READs
      FuseInitFlag.MAX_PAGES | // READs up to max_pages, not the 32-page default
      FuseInitFlag.PARALLEL_DIROPS |
      FuseInitFlag.ABORT_ERROR // readers of an aborted connection get ECONNABORTED, not ENODEV
    const flags = (want & inp.flags) >>> 0
    const maxPages = flags & FuseInitFlag.MAX_PAGES ? this.wantPages : 32
    this.maxRead = maxPages * PAGE
    const out = fuse_init_out.encode({
      major: FUSE_KERNEL_VERSION,
      minor: FUSE_KERNEL_MINOR_VERSION,
      max_readahead: Math.min(inp.max_readahead, this.maxRead),
      flags,
      max_background: this.maxBackground,
      congestion_threshold: Math.floor((this.maxBackground * 3) / 4),
      max_write: MAX_WRITE,
      time_gran: 1,
      max_pages: maxPages,
    })
    // Reply sizes by negotiated minor (fuse.h FUSE_COMPAT_INIT_OUT_SIZE, FUSE_COMPAT_22_INIT_OUT_SIZE).
    const size = minor < 5 ? 8 : minor < 23 ? 24 : fuse_init_out.size
    this.protocol = `${FUSE_KERNEL_VERSION}.${minor}`
    this.reply(unique, [out.subarray(0, size)])
    this.log(`fuse: protocol ${this.protocol} (kernel ${inp.major}.${inp.minor}), reads up to ${this.maxRead} bytes, flags 0x${flags.toString(16)}`)
    this.initDone?.()
    this.initDone = undefined
  }

  /** Write one reply. A reply to a request the kernel already dropped (interrupted, aborted) is ignored. */
  private reply(unique: bigint, r: FuseReply): void {
    if (this.fdClosed) return
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
      fs.writevSync(this.fd, [hdr, ...payload])
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT' || code === 'ENODEV' || code === 'ECONNABORTED') return
      this.log(`fuse: reply to request ${unique} failed: ${code ?? err}`)
    }
  }

  /** Wait until every request being served has been answered. */
  async drain(): Promise<void> {
    while (this.inFlight.size > 0 && !this.dead) await new Promise<void>((resolve) => this.idleWaiters.push(resolve))
  }

  /** Whether the kernel negotiated a flag (FuseInitFlag). */
  kernelHas(flag: number): boolean {
    return (this.kernelFlags & flag) !== 0
  }

  /**
   * Unmount and wait for the reader threads to see the end, then close /dev/fuse. `lazy` detaches the
   * mount even while something still holds the file (MNT_DETACH); `abort` first fails every request.
   */
  async unmount(opts: {lazy?: boolean; abort?: boolean; timeoutMs?: number} = {}): Promise<void> {
    if (opts.abort && this.connection) abortConnection(this.connection, this.log)
    if (isMountpoint(this.mountpoint)) {
      try {
        await runOffThread(path.join(__dirname, 'fusectl.js'), 'unmount', [this.mountpoint, opts.lazy ?? false])
      } catch (err) {
        if (opts.lazy) throw err
        this.log(`fuse: umount ${this.mountpoint}: ${(err as Error).message}; detaching lazily`)
        await runOffThread(path.join(__dirname, 'fusectl.js'), 'unmount', [this.mountpoint, true])
      }
    }
    // For a plain (non-fuseblk) FUSE mount the connection ends when the superblock goes; with a lazy
    // unmount that may be later, so abort it to release the readers now.
    const ended = await Promise.race([this.closed.then(() => true), delay(opts.timeoutMs ?? 3000).then(() => false)])
    if (!ended && this.connection) {
      abortConnection(this.connection, this.log)
      await Promise.race([this.closed, delay(2000)])
    }
    for (const w of this.readers) w.unref()
    if (!this.fdClosed) {
      this.fdClosed = true
      fs.closeSync(this.fd)
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref())
}

/** Whether `dir` is a mount point, from /proc/self/mountinfo (no stat of a possibly dead FUSE mount). */
export function isMountpoint(dir: string): boolean {
  return readMountinfo().some((m) => m.mountpoint === dir)
}

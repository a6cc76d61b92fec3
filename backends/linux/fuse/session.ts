/**
 * A FUSE session spoken directly over /dev/fuse (no libfuse): open the device, mount(2) it (read-only
 * unless a writable forwarding handler serves it),
 * then serve requests on threads — never on libuv's thread pool, which the image reader needs — in one
 * of two ways:
 *   - serving threads (src/threads, when the source can be opened again on a thread): each thread runs
 *     thread.ts, reading /dev/fuse, serving the request from its own instance of the source and writing
 *     the reply, so every core decodes;
 *   - forwarding: reader threads block in read(2) and post requests to a handler on the main thread (any
 *     BlockSource), which writes the replies.
 * Anything that may block on our own file system (umount, opening the served file) runs off the main thread.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import type {BlockServer} from '../../../src/core/blockserver'
import {VdevError} from '../../../src/core/errors'
import * as libc from '../../../src/sys/libc'
import {readMountinfo} from '../../../src/sys/mountinfo'
import {runOffThread} from '../../../src/sys/offthread'
import {DEVICE_CACHE_BYTES} from '../../../src/threads/config'
import {ServingThreads} from '../../../src/threads/pool'
import {abortConnection, connectionOfMount} from './fusectl'
import {FuseProtocol, PAGE, READ_BUFFER_SIZE, requestBufferSize, type FuseHandler, type InitResult} from './protocol'
import type {FuseThreadConfig, FuseThreadMessage} from './thread'
import {DEFAULT_URING_DEPTH, possibleCpus, uringOffered} from './uring'

export type {FuseHandler, FuseReply, FuseRequest} from './protocol'

export interface FuseMountOptions {
  mountpoint: string
  /** Shown as the mount source and subtype ("fuse.<subtype>"). */
  fsname?: string
  /** Largest READ in pages of 4 KiB (FUSE_MAX_PAGES; the kernel caps it at fs.fuse.max_pages_limit). */
  maxPages?: number
  /** Async background requests the kernel may have outstanding (fuse_init_out.max_background). */
  maxBackground?: number
  log?: (line: string) => void
  /** How long to wait for the kernel's INIT after mount(2). */
  initTimeoutMs?: number
  /** Forwarding: serve on the main thread with this handler, `readers` threads reading /dev/fuse. */
  forward?: {handler: FuseHandler; readers?: number}
  /**
   * Serving threads: `count` threads (thread.ts), each opening the server's source again. What they
   * serve is counted in `server.stats`.
   */
  threads?: {server: BlockServer; count: number; pollMicroseconds: number; fileName: string; mtime: number}
  /** Mount read-write and take WRITEs of up to maxPages pages (a writable server: an overlay). */
  writable?: boolean
}

export class FuseSession {
  readonly mountpoint: string
  /** Negotiated protocol, e.g. "7.45". */
  protocol = ''
  /** Requests come over io_uring (uring.ts), not read(2) of /dev/fuse. */
  overUring = false
  /** Largest READ the kernel will send, in bytes. */
  maxRead = 0
  /** The connection id under /sys/fs/fuse/connections (the mount's device number). */
  connection = 0
  /** Resolves with the reason when the kernel side is gone (unmounted or aborted). */
  readonly closed: Promise<string>
  readonly mode: 'threads' | 'forward'
  private resolveClosed!: (reason: string) => void
  private readonly fd: number
  private readonly log: (line: string) => void
  /** Forwarding: the reader threads. */
  private readonly workers: Worker[] = []
  private fdClosed = false
  private forwardProtocol?: FuseProtocol
  private pool?: ServingThreads
  private readonly wantPages: number
  private readonly maxBackground: number
  /** Largest WRITE taken (a writable mount), else undefined: writes are refused. */
  private readonly maxWrite: number | undefined

  private constructor(fd: number, opts: FuseMountOptions) {
    this.fd = fd
    this.mountpoint = opts.mountpoint
    this.log = opts.log ?? (() => {})
    this.wantPages = Math.max(1, Math.min(opts.maxPages ?? 256, 256))
    this.maxBackground = opts.maxBackground ?? 64
    this.mode = opts.threads ? 'threads' : 'forward'
    this.maxWrite = opts.writable ? this.wantPages * PAGE : undefined
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve))
  }

  /** Open /dev/fuse, mount it read-only at `mountpoint`, start serving and complete INIT. */
  static async mount(opts: FuseMountOptions): Promise<FuseSession> {
    if (!opts.forward === !opts.threads) throw new VdevError('internal', 'FuseSession.mount: give exactly one of forward, threads')
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
      const ro = opts.writable ? 0 : libc.MS_RDONLY
      libc.mount(name, opts.mountpoint, `fuse.${name}`, ro | libc.MS_NOSUID | libc.MS_NODEV, data)
    } catch (err) {
      fs.closeSync(fd)
      const e = err as libc.SysError
      if (e.errno === libc.ERRNO.EPERM) throw new VdevError('unavailable', `mount of a FUSE file system at ${opts.mountpoint} was refused (EPERM): vdev attach needs root`)
      throw new VdevError('io', `mount of a FUSE file system at ${opts.mountpoint} failed: ${e.message}`)
    }
    s.connection = connectionOfMount(opts.mountpoint) ?? 0
    // mount(2) returns before INIT is answered: the kernel queues INIT for a thread to read now.
    let initDone!: (r: InitResult | Error) => void
    const init = new Promise<InitResult>((resolve, reject) => {
      initDone = (r) => (r instanceof Error ? reject(r) : resolve(r))
    })
    const timeoutMs = opts.initTimeoutMs ?? 15000
    let timer: NodeJS.Timeout | undefined
    let started: Promise<unknown> = Promise.resolve()
    try {
      if (opts.threads) started = s.startThreads(opts.threads, initDone)
      else s.startForwarding(opts.forward!.handler, opts.forward!.readers ?? 2, initDone)
      // Serving threads that fail to start reject `started`; one thread (ready) reads INIT meanwhile.
      const [r] = await Promise.race([
        Promise.all([init, started]),
        s.closed.then((why) => {
          throw new VdevError('io', `the FUSE session ended before INIT (${why})`)
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new VdevError('timeout', `the kernel sent no FUSE INIT within ${timeoutMs} ms`)), timeoutMs)
        }),
      ])
      s.protocol = r.protocol
      s.maxRead = r.maxRead
      s.overUring = r.uring
    } catch (err) {
      await s.unmount({lazy: true, abort: true}).catch(() => {})
      await started.catch(() => {})
      throw err instanceof VdevError ? err : new VdevError('io', (err as Error).message)
    } finally {
      clearTimeout(timer)
    }
    return s
  }

  private startForwarding(handler: FuseHandler, readers: number, onInit: (r: InitResult | Error) => void): void {
    const maxWrite = this.maxWrite
    const protocol = new FuseProtocol({fd: this.fd, handler, maxPages: this.wantPages, maxBackground: this.maxBackground, maxWrite, log: this.log, onInit})
    this.forwardProtocol = protocol
    let left = readers
    for (let i = 0; i < readers; i++) {
      const w = new Worker(path.join(__dirname, 'reader-worker.js'), {workerData: {fd: this.fd, bufferSize: maxWrite ? requestBufferSize(maxWrite) : READ_BUFFER_SIZE}})
      let ended = false
      const end = (reason: string): void => {
        if (ended) return
        ended = true
        if (--left > 0) return
        for (const x of this.workers) x.unref()
        this.resolveClosed(reason)
      }
      w.on('message', (m: {end: string} | Uint8Array) => {
        if (m instanceof Uint8Array) void protocol.handle(Buffer.from(m.buffer, m.byteOffset, m.byteLength))
        else end(m.end)
      })
      w.on('error', (err) => end(`thread failed: ${err.message}`))
      w.on('exit', () => end('thread exited'))
      this.workers.push(w)
    }
  }

  private async startThreads(t: NonNullable<FuseMountOptions['threads']>, onInit: (r: InitResult | Error) => void): Promise<void> {
    const config: FuseThreadConfig = {fd: this.fd, fileName: t.fileName, mtime: t.mtime, maxPages: this.wantPages, maxBackground: this.maxBackground, maxWrite: this.maxWrite, connection: this.connection}
    // FUSE over io_uring where the kernel offers it (uring.ts); else read(2) of /dev/fuse.
    const uring = uringOffered()
    const queues = possibleCpus()
    if (uring.offered && queues === 0) this.log('fuse: requests through read(2) of /dev/fuse, not io_uring: /sys/devices/system/cpu/possible unreadable')
    else if (uring.offered) {
      const depth = Number(process.env.VDEV_FUSE_URING_DEPTH)
      config.uring = {state: new SharedArrayBuffer(12), queues, threads: t.count, depth: Number.isInteger(depth) && depth >= 1 && depth <= 64 ? depth : DEFAULT_URING_DEPTH}
    } else this.log(`fuse: requests through read(2) of /dev/fuse, not io_uring: ${uring.reason}`)
    let pool: ServingThreads
    try {
      pool = await ServingThreads.start({
        name: 'fuse',
        server: t.server,
        body: path.join(__dirname, 'thread.js'),
        count: t.count,
        cacheBytes: Math.floor(DEVICE_CACHE_BYTES / t.count),
        pollMicroseconds: t.pollMicroseconds,
        config,
        log: this.log,
        onMessage: (_thread, msg) => {
          const m = msg as FuseThreadMessage
          if ('init' in m) onInit(m.init)
          else if ('initError' in m) onInit(new Error(m.initError))
        },
      })
    } catch (err) {
      // Every thread has stopped: the session has ended.
      this.resolveClosed(`serving threads could not start: ${(err as Error).message}`)
      throw err
    }
    this.pool = pool
    void pool.allEnded.then((why) => {
      pool.unref()
      this.resolveClosed(why[why.length - 1] ?? 'no threads')
    })
  }

  /**
   * Wait until every request being served has been answered. With serving threads, first tell them to
   * refuse new reads (their servers drain); `server.stats.inFlight` counts what they are serving.
   */
  async drain(server: BlockServer, timeoutMs = 10000): Promise<void> {
    if (this.forwardProtocol) return this.forwardProtocol.drain()
    this.pool?.setClosing()
    const end = Date.now() + timeoutMs
    while (server.stats.inFlight > 0 && Date.now() < end) await delay(5)
  }

  /**
   * Unmount and wait for the threads to see the end, then close /dev/fuse. `lazy` detaches the mount even
   * while something still holds the file (MNT_DETACH); `abort` first fails every request.
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
    // unmount that may be later, so abort it to release the threads now.
    const ended = (ms: number): Promise<boolean> => Promise.race([this.closed.then(() => true), delay(ms).then(() => false)])
    let over = await ended(opts.timeoutMs ?? 3000)
    if (!over && this.connection) {
      abortConnection(this.connection, this.log)
      over = await ended(2000)
    }
    for (const w of this.workers) w.unref()
    // Threads whose bodies ended wait for their exit; one still blocked is left to the kernel's abort.
    if (this.pool) {
      if (over) await this.pool.close()
      else this.pool.unref()
    }
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

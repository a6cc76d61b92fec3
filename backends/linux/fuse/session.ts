/**
 * A FUSE session spoken directly over /dev/fuse (no libfuse): open the device, mount(2) it read-only,
 * then serve requests on threads — never on libuv's thread pool, which the image reader needs — in one
 * of two ways:
 *   - serving threads (default for VDIMG images): each thread reads /dev/fuse, serves the request from
 *     its own instance of the image and writes the reply, so every core decodes;
 *   - forwarding: reader threads block in read(2) and post requests to a handler on the main thread (any
 *     BlockSource, e.g. a RawFileSource in tests), which writes the replies.
 * Anything that may block on our own file system (umount, opening the served file) runs off the main thread.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {VdevError} from '../../../src/core/errors'
import * as libc from '../../../src/sys/libc'
import {readMountinfo} from '../../../src/sys/mountinfo'
import {runOffThread} from '../../../src/sys/offthread'
import {abortConnection, connectionOfMount} from './fusectl'
import {FuseProtocol, PAGE, READ_BUFFER_SIZE, type FuseHandler, type InitResult} from './protocol'
import {SLOT, sharedState, sumCounters, type ServeThreadConfig} from './threads'

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
  /** Serving threads: `count` threads, each opening the image itself (see serve-worker.ts). */
  threads?: {count: number; config: Omit<ServeThreadConfig, 'fd' | 'index' | 'shared' | 'maxPages' | 'maxBackground'>}
}

export interface SessionStats {
  requests?: number
  reads: number
  bytes: number
  errors: number
  inFlight: number
  /** Serving threads: requests taken while polling (see requests.ts). */
  polled?: number
}

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
  readonly mode: 'threads' | 'forward'
  private resolveClosed!: (reason: string) => void
  private readonly fd: number
  private readonly log: (line: string) => void
  private readonly workers: Worker[] = []
  private workersLeft = 0
  private fdClosed = false
  private forwardProtocol?: FuseProtocol
  private shared?: SharedArrayBuffer
  private readonly wantPages: number
  private readonly maxBackground: number

  private constructor(fd: number, opts: FuseMountOptions) {
    this.fd = fd
    this.mountpoint = opts.mountpoint
    this.log = opts.log ?? (() => {})
    this.wantPages = Math.max(1, Math.min(opts.maxPages ?? 256, 256))
    this.maxBackground = opts.maxBackground ?? 64
    this.mode = opts.threads ? 'threads' : 'forward'
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve))
  }

  /** Requests served so far (summed over serving threads). */
  get stats(): SessionStats {
    if (this.shared) return sumCounters(this.shared, this.workers.length)
    const p = this.forwardProtocol!
    return {requests: p.counters.requests, reads: 0, bytes: 0, errors: p.counters.errors, inFlight: p.inFlight}
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
      libc.mount(name, opts.mountpoint, `fuse.${name}`, libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV, data)
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
    try {
      if (opts.threads) s.startThreads(opts.threads.count, opts.threads.config, initDone)
      else s.startForwarding(opts.forward!.handler, opts.forward!.readers ?? 2, initDone)
      const r = await Promise.race([
        init,
        s.closed.then((why) => {
          throw new VdevError('io', `the FUSE session ended before INIT (${why})`)
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new VdevError('timeout', `the kernel sent no FUSE INIT within ${timeoutMs} ms`)), timeoutMs)
        }),
      ])
      s.protocol = r.protocol
      s.maxRead = r.maxRead
    } catch (err) {
      await s.unmount({lazy: true, abort: true}).catch(() => {})
      throw err instanceof VdevError ? err : new VdevError('io', (err as Error).message)
    } finally {
      clearTimeout(timer)
    }
    return s
  }

  private startForwarding(handler: FuseHandler, readers: number, onInit: (r: InitResult | Error) => void): void {
    const protocol = new FuseProtocol({fd: this.fd, handler, maxPages: this.wantPages, maxBackground: this.maxBackground, log: this.log, onInit})
    this.forwardProtocol = protocol
    this.spawn(readers, () => new Worker(path.join(__dirname, 'reader-worker.js'), {workerData: {fd: this.fd, bufferSize: READ_BUFFER_SIZE}}), (m) => {
      if (m instanceof Uint8Array) void protocol.handle(Buffer.from(m.buffer, m.byteOffset, m.byteLength))
    })
  }

  private startThreads(count: number, config: NonNullable<FuseMountOptions['threads']>['config'], onInit: (r: InitResult | Error) => void): void {
    this.shared = sharedState(count)
    this.spawn(
      count,
      (index) => {
        const wd: ServeThreadConfig = {...config, fd: this.fd, index, shared: this.shared!, maxPages: this.wantPages, maxBackground: this.maxBackground}
        return new Worker(path.join(__dirname, 'serve-worker.js'), {workerData: wd, resourceLimits: SERVE_THREAD_LIMITS})
      },
      (msg) => {
        if (msg instanceof Uint8Array) return
        const m = msg as {init?: InitResult; initError?: string; log?: string; fatal?: string}
        if (m.init) onInit(m.init)
        else if (m.initError) onInit(new Error(m.initError))
        else if (m.log) this.log(m.log)
        else if (m.fatal) {
          this.log(`fuse: serving thread failed: ${m.fatal}`)
          onInit(new VdevError('io', `a serving thread could not start: ${m.fatal}`))
          if (this.connection) abortConnection(this.connection, this.log)
        }
      },
    )
  }

  private spawn(n: number, make: (i: number) => Worker, onMessage: (m: Record<string, unknown> | Uint8Array) => void): void {
    this.workersLeft = n
    for (let i = 0; i < n; i++) {
      const w = make(i)
      let ended = false
      const end = (reason: string): void => {
        if (ended) return
        ended = true
        if (--this.workersLeft === 0) {
          for (const x of this.workers) x.unref()
          this.resolveClosed(reason)
        }
      }
      w.on('message', (m: Record<string, unknown> | Uint8Array) => {
        if (!(m instanceof Uint8Array) && typeof m.end === 'string') end(m.end)
        else onMessage(m)
      })
      w.on('error', (err) => end(`thread failed: ${err.message}`))
      w.on('exit', () => end('thread exited'))
      this.workers.push(w)
    }
  }

  /** Refuse new reads (they fail with EIO) and wait until every request being served has been answered. */
  async drain(timeoutMs = 10000): Promise<void> {
    if (this.forwardProtocol) return this.forwardProtocol.drain()
    new Float64Array(this.shared!)[SLOT.closing] = 1
    const end = Date.now() + timeoutMs
    while (this.stats.inFlight > 0 && Date.now() < end) await delay(5)
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
    const ended = await Promise.race([this.closed.then(() => true), delay(opts.timeoutMs ?? 3000).then(() => false)])
    if (!ended && this.connection) {
      abortConnection(this.connection, this.log)
      await Promise.race([this.closed, delay(2000)])
    }
    for (const w of this.workers) w.unref()
    if (!this.fdClosed) {
      this.fdClosed = true
      fs.closeSync(this.fd)
    }
  }
}

/**
 * Heap limits of a serving thread. Its objects are few and short-lived (per-request views and records,
 * cache entries), but under a fast request stream V8 otherwise grows each isolate's young generation to
 * tens of MB and lets old-generation garbage pile up towards the main isolate's (GB-sized) limit before
 * collecting. Measured with 2 threads (bench:read corpus, fio random QD32): server peak RSS 143 MB with
 * the defaults, 117 MB with a 4 MB young generation, 112 MB with 1 MB; throughput the same within noise
 * (a scavenge of a few live objects every few hundred requests). 128 MB of old generation is far above
 * what a thread keeps alive (~5 MB: code and state; the image's metadata JSON is capped at 16 MiB; cached
 * chunks live outside the heap).
 */
const SERVE_THREAD_LIMITS = {maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 128}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref())
}

/** Whether `dir` is a mount point, from /proc/self/mountinfo (no stat of a possibly dead FUSE mount). */
export function isMountpoint(dir: string): boolean {
  return readMountinfo().some((m) => m.mountpoint === dir)
}

/**
 * Serving threads for the NBD transmission phase, in the manner of nbdkit's "parallel" thread model: after
 * the handshake (on the main thread), a connection's socket is handed to a few threads that each, in turn,
 * take the read lock, read one request (and a write's payload) with blocking read(2), release the lock,
 * serve the request from their own image instance opened in sync mode (pread(2) and decompression on that
 * thread), and write the whole reply under the write lock with one writev(2). A connection with one request
 * in flight costs no hop between threads; with many, they are decoded on as many cores as there are threads.
 *
 * Threads live in a pool shared by all connections: a thread serves one connection at a time and goes back
 * to the pool when it ends. Locks, the closing flag and bytes read before the hand-off (normally none) live
 * in shared memory (one SharedArrayBuffer per connection); the socket is a duplicate descriptor owned by the
 * pool from the hand-off on, made blocking, and closed by the main thread once every thread has left it.
 */
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import type {BadPolicy} from '../../core/blockserver'
import type {Session} from './respond'

/** Slots of a connection's Int32Array state. */
export const STATE = {
  /** Futex-style locks: 0 free, 1 held, 2 held with waiters. */
  readLock: 0,
  writeLock: 1,
  /** 1 once the connection is ending: no thread reads another request. */
  closing: 2,
  /** The unconsumed bytes of the input buffer: [inputStart, inputEnd). */
  inputStart: 3,
  inputEnd: 4,
  slots: 5,
} as const

/** What a serving thread is started with. */
export interface ServeThreadConfig {
  /** Absolute path of the VDIMG image; each thread opens its own instance (sync mode). */
  image: string
  badPolicy: BadPolicy
  /** Decompressed-chunk cache of each thread's image instance. */
  cacheBytes: number
  /** How long a thread waiting for a connection's next request polls before it sleeps in read(2); 0: never. */
  pollMicroseconds: number
}

/** main → thread: serve this connection until it ends. */
export interface Assignment {
  connection: number
  fd: number
  state: SharedArrayBuffer
  /** The input buffer (see serve-thread.ts), holding at first the bytes the main thread had read past the handshake. */
  input: SharedArrayBuffer
  session: Session
  peer: string
}

/** thread → main */
/** What a thread served for one connection (its BlockServer's counters). */
export interface Served {
  reads: number
  bytes: number
  errors: number
  badReads: number
}

export type ThreadMessage = {ready: true} | {done: number; reason: string; served: Served} | {log: string} | {fatal: string}

export function lock(a: Int32Array, i: number): void {
  let c = Atomics.compareExchange(a, i, 0, 1)
  if (c === 0) return
  if (c !== 2) c = Atomics.exchange(a, i, 2)
  while (c !== 0) {
    Atomics.wait(a, i, 2)
    c = Atomics.exchange(a, i, 2)
  }
}

export function unlock(a: Int32Array, i: number): void {
  if (Atomics.exchange(a, i, 0) === 2) Atomics.notify(a, i, 1)
}

export interface ServeThreadsOptions extends ServeThreadConfig {
  /** Threads serving one connection (its requests in flight at most). */
  perConnection: number
  /** Threads in the pool at most; a connection that finds none free is served on the main thread. */
  maxThreads: number
  log: (line: string) => void
}

/** Request bytes read at once by a connection's threads (requests are 28 bytes; payloads are skipped apart). */
const INPUT_BUFFER = 64 * 1024

/** The JavaScript heap a serving thread needs is small: requests and replies live in reused buffers. */
const THREAD_LIMITS = {maxYoungGenerationSizeMb: 4}

interface ServeThread {
  worker: Worker
  connection: ThreadedConnection | undefined
}

/** Low-level descriptor operations, loaded lazily (koffi; Linux). */
type Libc = typeof import('../../sys/libc')

export class ServeThreads {
  private readonly idle: ServeThread[] = []
  private readonly all = new Set<ServeThread>()
  private starting = 0
  /** Threads being started for the pool rather than for a connection. */
  private spare = 0
  private nextConnection = 1
  private handed = 0
  private refused = 0
  private readonly served: Served = {reads: 0, bytes: 0, errors: 0, badReads: 0}
  private readonly live = new Set<ThreadedConnection>()
  private closed = false
  /**
   * At exit Node joins its worker threads, and one asleep in read(2) on a connection would never return:
   * shutting the connections down wakes them (they end as V8 stops them).
   */
  private readonly exitHook = () => {
    for (const c of this.live) this.libc.shutdown(c.fd, this.libc.SHUT_RDWR)
  }

  private constructor(
    private readonly opts: ServeThreadsOptions,
    /** Descriptor calls (fcntl, shutdown, close) for the connections handed over. */
    readonly libc: Libc,
  ) {
    process.on('exit', this.exitHook)
  }

  /** Start `perConnection` threads; rejects when they cannot serve (no koffi/libc, or the image fails to open). */
  static async start(opts: ServeThreadsOptions): Promise<ServeThreads> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../../sys/libc') as Libc
    const pool = new ServeThreads(opts, libc)
    try {
      const threads = await Promise.all(Array.from({length: Math.max(1, opts.perConnection)}, () => pool.spawn()))
      for (const t of threads) pool.release(t)
    } catch (err) {
      await pool.close()
      throw err
    }
    return pool
  }

  /** Threads started and serving or idle; connections handed to them; connections refused for want of one. */
  get stats(): {threads: number; connections: number; refused: number} {
    return {threads: this.all.size, connections: this.handed, refused: this.refused}
  }

  /** What the threads served, counted when each thread leaves a connection. */
  get servedTotals(): Served {
    return {...this.served}
  }

  private spawn(): Promise<ServeThread> {
    const {image, badPolicy, cacheBytes, pollMicroseconds} = this.opts
    const cfg: ServeThreadConfig = {image, badPolicy, cacheBytes, pollMicroseconds}
    const worker = new Worker(path.join(__dirname, 'serve-thread.js'), {workerData: cfg, resourceLimits: THREAD_LIMITS})
    const t: ServeThread = {worker, connection: undefined}
    this.starting++
    return new Promise<ServeThread>((resolve, reject) => {
      let state: 'starting' | 'ready' | 'failed' = 'starting'
      const failed = (why: string) => {
        if (state !== 'starting') return
        state = 'failed'
        this.starting--
        reject(new Error(why))
      }
      worker.on('message', (m: ThreadMessage) => {
        if ('ready' in m) {
          if (state !== 'starting') return
          if (this.closed) {
            worker.postMessage({exit: true})
            return failed('the server is closing')
          }
          state = 'ready'
          this.starting--
          this.all.add(t)
          // Started, it no longer keeps the process alive (a server's listener does); unref() after the
          // listeners were added, which ref the worker's port again.
          worker.unref()
          resolve(t)
        } else if ('log' in m) this.opts.log(m.log)
        else if ('fatal' in m) {
          if (state === 'starting') failed(m.fatal)
          else this.opts.log(`nbd: serving thread failed: ${m.fatal}`)
        } else if ('done' in m) {
          for (const k of ['reads', 'bytes', 'errors', 'badReads'] as const) this.served[k] += m.served[k]
          this.left(t, m.reason)
        }
      })
      const gone = (why: string) => {
        if (state !== 'ready') return failed(why)
        if (!this.all.delete(t)) return
        const i = this.idle.indexOf(t)
        if (i >= 0) this.idle.splice(i, 1)
        // A thread that dies while serving takes its connection down (its request may be lost).
        if (t.connection) this.left(t, why, true)
      }
      worker.on('error', (err) => gone(`serving thread failed: ${err.message}`))
      worker.on('exit', (code) => gone(`serving thread exited (${code})`))
    })
  }

  /**
   * Serve a connection's transmission phase on `fd` (a descriptor now owned by the pool, closed when the
   * connection ends). Returns undefined, leaving `fd` to the caller, when no thread is free and no more
   * may be started.
   */
  serve(fd: number, session: Session, leftover: Buffer, peer: string): ThreadedConnection | undefined {
    if (this.closed) return undefined
    const want = Math.max(1, this.opts.perConnection)
    const room = () => this.opts.maxThreads - this.all.size - this.starting
    if (this.idle.length === 0 && room() <= 0) {
      this.refused++
      return undefined
    }
    this.handed++
    // Blocking descriptor: the threads sleep in read(2)/writev(2). O_NONBLOCK belongs to the open file,
    // so this is seen through every duplicate; nothing else uses it from now on.
    const fl = this.libc.fcntl(fd, this.libc.F_GETFL, 0)
    if (fl >= 0) this.libc.fcntl(fd, this.libc.F_SETFL, fl & ~this.libc.O_NONBLOCK)
    const c = new ThreadedConnection(this.nextConnection++, fd, session, leftover, peer, this.libc, this.opts.log)
    this.live.add(c)
    void c.done.then(() => this.live.delete(c))
    const first = this.idle.splice(0, want)
    for (const t of first) this.assign(t, c)
    // Threads still missing are started now and join the connection when ready (a thread can join a
    // connection at any time: it just takes its turn at the read lock).
    for (let i = first.length; i < want && room() > 0; i++) {
      this.spawn().then(
        (t) => (c.joinable ? this.assign(t, c) : this.release(t)),
        (err: Error) => {
          if (!this.closed) this.opts.log(`nbd: could not start a serving thread: ${err.message}`)
          if (c.threads === 0) c.abandon()
        },
      )
    }
    // Keep threads warm for the next connection.
    for (let i = this.idle.length + this.spare; i < want && room() > 0; i++) {
      this.spare++
      this.spawn().then(
        (t) => {
          this.spare--
          this.release(t)
        },
        () => this.spare--,
      )
    }
    return c
  }

  private assign(t: ServeThread, c: ThreadedConnection): void {
    t.connection = c
    c.threads++
    const m: Assignment = {connection: c.id, fd: c.fd, state: c.stateBuffer, input: c.input, session: c.session, peer: c.peer}
    t.worker.postMessage(m)
  }

  private release(t: ServeThread): void {
    t.connection = undefined
    if (this.closed || !this.all.has(t)) return
    this.idle.push(t)
  }

  private left(t: ServeThread, reason: string, died = false): void {
    const c = t.connection
    if (!c) return
    if (died) t.connection = undefined
    else this.release(t)
    c.threadLeft(reason, died)
  }

  /** Stop every thread (connections must have ended). */
  async close(): Promise<void> {
    this.closed = true
    process.off('exit', this.exitHook)
    const threads = [...this.all]
    this.all.clear()
    this.idle.length = 0
    await Promise.all(
      threads.map(
        (t) =>
          new Promise<void>((resolve) => {
            t.worker.once('exit', () => resolve())
            t.worker.ref() // the process waits for the thread to close its image
            // An idle thread closes its image and exits; terminate() is for one that does not.
            t.worker.postMessage({exit: true})
            setTimeout(() => void t.worker.terminate(), 2000).unref()
          }),
      ),
    )
  }
}

/** One connection being served by threads, seen from the main thread. */
export class ThreadedConnection {
  readonly stateBuffer = new SharedArrayBuffer(4 * STATE.slots)
  private readonly state = new Int32Array(this.stateBuffer)
  /** The threads' input buffer: at least 64 KiB, and large enough for what was read before the hand-off. */
  readonly input: SharedArrayBuffer
  threads = 0
  private ended = false
  private resolveEnded!: () => void
  /** Resolves once every thread has left the connection and its descriptor is closed. */
  readonly done = new Promise<void>((resolve) => (this.resolveEnded = resolve))
  private forceTimer: NodeJS.Timeout | undefined

  constructor(
    readonly id: number,
    readonly fd: number,
    readonly session: Session,
    leftover: Buffer,
    readonly peer: string,
    private readonly libc: Libc,
    private readonly log: (line: string) => void,
  ) {
    this.input = new SharedArrayBuffer(Math.max(INPUT_BUFFER, leftover.length))
    leftover.copy(Buffer.from(this.input))
    Atomics.store(this.state, STATE.inputEnd, leftover.length)
  }

  /** A thread started for this connection may still join it. */
  get joinable(): boolean {
    return !this.ended && Atomics.load(this.state, STATE.closing) === 0
  }

  /** No thread could be started for a connection that had none: it ends. */
  abandon(): void {
    Atomics.store(this.state, STATE.closing, 1)
    this.finish()
  }

  /**
   * Graceful stop: no thread reads another request (a thread waiting in read(2) is woken by shutting down
   * the reading side), requests in flight are answered; after `graceMs` writes blocked on a peer that
   * does not read are cut off too.
   */
  stop(graceMs = 2000): Promise<void> {
    if (!this.ended) {
      Atomics.store(this.state, STATE.closing, 1)
      this.libc.shutdown(this.fd, this.libc.SHUT_RD)
      if (this.threads === 0) this.finish()
      else if (!this.forceTimer) {
        this.forceTimer = setTimeout(() => this.libc.shutdown(this.fd, this.libc.SHUT_RDWR), graceMs)
        this.forceTimer.unref()
      }
    }
    return this.done
  }

  threadLeft(reason: string, died: boolean): void {
    this.threads--
    if (died) {
      this.log(`nbd ${this.peer}: ${reason}`)
      // The others must not wait for a request that thread was reading or a reply it was writing.
      Atomics.store(this.state, STATE.closing, 1)
      this.libc.shutdown(this.fd, this.libc.SHUT_RDWR)
    } else if (reason !== 'closing' && reason !== 'peer closed' && reason !== 'disconnect') this.log(`nbd ${this.peer}: ${reason}`)
    if (this.threads === 0 && Atomics.load(this.state, STATE.closing) === 1) this.finish()
  }

  private finish(): void {
    if (this.ended) return
    this.ended = true
    clearTimeout(this.forceTimer)
    // Replies were written whole by blocking writes; say we are done sending, then let the descriptor go.
    this.libc.shutdown(this.fd, this.libc.SHUT_WR)
    this.libc.close(this.fd)
    this.resolveEnded()
  }
}

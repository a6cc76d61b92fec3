/**
 * NBD connections on serving threads (src/threads), in the manner of nbdkit's "parallel" thread model: after
 * the handshake (on the main thread), a connection's socket is handed to a few threads that each, in turn,
 * take the read lock, read one request (and a write's payload) with blocking read(2), release the lock,
 * serve the request from their own instance of the source (pread(2) and decoding on that thread), and write
 * the whole reply under the write lock with one writev(2) (thread.ts is the thread's side). A connection
 * with one request in flight costs no hop between threads; with many, they are decoded on as many cores as
 * there are threads.
 *
 * The threads are a ServingThreads pool shared by all connections: a thread serves one connection at a time
 * and goes back to the pool when it ends. What is NBD's own lives here: the connection's locks, closing flag
 * and the bytes read before the hand-off (normally none), in shared memory (one SharedArrayBuffer per
 * connection); the socket, a duplicate descriptor owned by this pool from the hand-off on, made blocking,
 * and closed by the main thread once every thread has left it; and which thread serves which connection.
 */
import * as path from 'node:path'
import type {BlockServer} from '../../core/blockserver'
import {ServingThreads, type ServingThread} from '../../threads/pool'
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

/** main → thread (a body message): serve this connection until it ends. */
export interface Assignment {
  connection: number
  fd: number
  state: SharedArrayBuffer
  /** The input buffer (see thread.ts), holding at first the bytes the main thread had read past the handshake. */
  input: SharedArrayBuffer
  session: Session
  peer: string
}

/** thread → main (a body message): the thread has left the connection, for this reason. */
export interface AssignmentDone {
  done: number
  reason: string
}

export function lock(a: Int32Array, i: number): void {
  let c = Atomics.compareExchange(a, i, 0, 1)
  if (c === 0) return
  if (c !== 2) c = Atomics.exchange(a, i, 2)
  while (c !== 0) {
    Atomics.wait(a, i, 2)
    c = Atomics.exchange(a, i, 2)
  }
}

/**
 * lock(), doing `work` (one unit at a time, while it has some) instead of sleeping while the lock is held;
 * when there is none it sleeps as lock() does, until the lock is released or its holder nudges it (nudge():
 * a large read began, with work for it). Once it has slept it takes the lock as held-with-waiters (2), so
 * that a waiter still asleep is never forgotten.
 */
export function lockWorking(a: Int32Array, i: number, work: () => boolean): void {
  if (Atomics.compareExchange(a, i, 0, 1) === 0) return
  for (;;) {
    if (work()) {
      if (Atomics.compareExchange(a, i, 0, 2) === 0) return
      continue
    }
    if (Atomics.exchange(a, i, 2) === 0) return
    Atomics.wait(a, i, 2)
  }
}

/** Wake one thread asleep in lockWorking() while the lock stays held, to work ahead (the lock's holder calls it). */
export function nudge(a: Int32Array, i: number): void {
  if (Atomics.load(a, i) === 2) Atomics.notify(a, i, 1)
}

export function unlock(a: Int32Array, i: number): void {
  if (Atomics.exchange(a, i, 0) === 2) Atomics.notify(a, i, 1)
}

export interface ConnectionThreadsOptions {
  /** Threads serving one connection (its requests in flight at most). */
  perConnection: number
  /** Threads in the pool at most; a connection that finds none free is served on the main thread. */
  maxThreads: number
  /** Decoded-chunk cache of each thread's instance of the source. */
  cacheBytes: number
  /** How long a thread waiting for a connection's next request polls before it sleeps in read(2); 0: never. */
  pollMicroseconds: number
  log: (line: string) => void
}

/** Request bytes read at once by a connection's threads (requests are 28 bytes; payloads are skipped apart). */
const INPUT_BUFFER = 64 * 1024

/** Low-level descriptor operations, loaded lazily (koffi; Linux). */
type Libc = typeof import('../../sys/libc')

export class ConnectionThreads {
  /** Started threads not serving a connection. */
  private readonly idle: ServingThread[] = []
  /** Started threads that have not ended. */
  private readonly alive = new Set<ServingThread>()
  /** The connection each thread serves. */
  private readonly serving = new Map<ServingThread, ThreadedConnection>()
  /** Threads being started for the pool rather than for a connection. */
  private spare = 0
  private nextConnection = 1
  private handed = 0
  private refused = 0
  private readonly live = new Set<ThreadedConnection>()
  private closed = false
  /**
   * At exit Node joins its worker threads, and one asleep in read(2) on a connection would never return:
   * shutting the connections down wakes them (they end as V8 stops them).
   */
  private readonly exitHook = () => {
    for (const c of this.live) this.libc.shutdown(c.fd, this.libc.SHUT_RDWR)
  }
  private pool!: ServingThreads

  private constructor(
    private readonly opts: ConnectionThreadsOptions,
    /** Descriptor calls (fcntl, shutdown, close) for the connections handed over. */
    readonly libc: Libc,
  ) {
    process.on('exit', this.exitHook)
  }

  /**
   * Start `2 × perConnection` threads (the first connection's and the spares; at most maxThreads) over
   * `server`'s source (opened again on each from its descriptor); what they serve is counted in
   * `server.stats`. Rejects when they cannot serve (no koffi/libc, a source that cannot be opened again, or
   * one that fails to open on a thread).
   */
  static async start(server: BlockServer, opts: ConnectionThreadsOptions): Promise<ConnectionThreads> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../../sys/libc') as Libc
    const c = new ConnectionThreads(opts, libc)
    try {
      c.pool = await ServingThreads.start({
        name: 'nbd',
        server,
        body: path.join(__dirname, 'thread.js'),
        // The first connection's threads and the spares that keep the next one waiting for none, all
        // started before the server says it is ready: a thread's start (a V8 isolate, its modules, its
        // instance of the source: ~0.1 s of CPU, more for a remote image) must not compete on two cores
        // with the first client's reads (a fresh server's QD1 rate over HTTP: 2.5k → 2.8–3.2k IOPS; docs/nbd.md, "Pool").
        count: Math.min(Math.max(1, opts.perConnection, opts.maxThreads), 2 * Math.max(1, opts.perConnection)),
        capacity: Math.max(1, opts.perConnection, opts.maxThreads),
        cacheBytes: opts.cacheBytes,
        pollMicroseconds: opts.pollMicroseconds,
        // A connection's threads answer many requests in flight (structured replies, payload views): a
        // 1 MB young generation (THREAD_LIMITS) scavenges too often at queue depth 32 (docs/nbd.md).
        heap: {maxYoungGenerationSizeMb: 4},
        log: opts.log,
        onMessage: (t, m) => c.left(t, (m as AssignmentDone).reason),
      })
    } catch (err) {
      process.off('exit', c.exitHook)
      throw err
    }
    for (const t of c.pool.threads) c.release(c.track(t))
    return c
  }

  /** Threads alive (serving or idle); connections handed to them; connections refused for want of one. */
  get stats(): {threads: number; connections: number; refused: number} {
    return {threads: this.alive.size, connections: this.handed, refused: this.refused}
  }

  /** Threads that may still be started. */
  private get room(): number {
    return this.closed ? 0 : this.pool.counters.count - this.pool.size
  }

  /** A thread is serving: from now on its end is watched (and it no longer keeps the process alive). */
  private track(t: ServingThread): ServingThread {
    this.alive.add(t)
    t.worker.unref()
    void t.ended.then((why) => this.gone(t, why))
    return t
  }

  /** Start one more thread; resolves once it serves (undefined when the pool is full or closed). */
  private spawn(): Promise<ServingThread> | undefined {
    const t = this.pool.spawn()
    if (!t) return undefined
    return t.ready.then(() => {
      if (this.closed) throw new Error('the server is closing')
      return this.track(t)
    })
  }

  private gone(t: ServingThread, why: string): void {
    if (!this.alive.delete(t)) return
    const i = this.idle.indexOf(t)
    if (i >= 0) this.idle.splice(i, 1)
    // A thread that dies while serving takes its connection down (its request may be lost).
    const c = this.serving.get(t)
    if (c) {
      this.serving.delete(t)
      c.threadLeft(why, true)
    }
  }

  /**
   * Serve a connection's transmission phase on `fd` (a descriptor now owned by the pool, closed when the
   * connection ends). Returns undefined, leaving `fd` to the caller, when no thread is free and no more
   * may be started.
   */
  serve(fd: number, session: Session, leftover: Buffer, peer: string): ThreadedConnection | undefined {
    if (this.closed) return undefined
    const want = Math.max(1, this.opts.perConnection)
    if (this.idle.length === 0 && this.room <= 0) {
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
    for (let i = first.length; i < want; i++) {
      const t = this.spawn()
      if (!t) break
      t.then(
        (t) => (c.joinable ? this.assign(t, c) : this.release(t)),
        (err: Error) => {
          if (!this.closed) this.opts.log(`nbd: could not start a serving thread: ${err.message}`)
          if (c.threads === 0) c.abandon()
        },
      )
    }
    // Keep threads warm for the next connection.
    for (let i = this.idle.length + this.spare; i < want; i++) {
      const t = this.spawn()
      if (!t) break
      this.spare++
      t.then(
        (t) => {
          this.spare--
          this.release(t)
        },
        () => this.spare--,
      )
    }
    return c
  }

  private assign(t: ServingThread, c: ThreadedConnection): void {
    this.serving.set(t, c)
    c.threads++
    t.post({connection: c.id, fd: c.fd, state: c.stateBuffer, input: c.input, session: c.session, peer: c.peer} satisfies Assignment)
  }

  private release(t: ServingThread): void {
    this.serving.delete(t)
    if (this.closed || !this.alive.has(t)) return
    this.idle.push(t)
  }

  private left(t: ServingThread, reason: string): void {
    const c = this.serving.get(t)
    if (!c) return
    this.release(t)
    c.threadLeft(reason, false)
  }

  /** Stop every thread (connections must have ended). */
  async close(): Promise<void> {
    this.closed = true
    process.off('exit', this.exitHook)
    this.idle.length = 0
    // The process waits for each thread to close its source.
    for (const t of this.pool.threads) t.worker.ref()
    await this.pool.close()
    this.alive.clear()
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

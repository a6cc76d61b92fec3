/**
 * Whole connections handed to serving threads, for the socket servers whose threads serve a connection from
 * start to end (the iSCSI target's full-feature phase, NFS): the main thread accepts (and, for iSCSI, logs
 * in), then gives a free thread a duplicate of the connection's descriptor with what it needs to go on; the
 * thread serves it until it ends and says so. One thread serves one connection at a time; a connection that
 * finds no free thread stays on the main thread (the caller serves it there). NBD's threads share their
 * connections instead (src/serve/nbd/threads.ts).
 *
 * main → thread: the protocol's assign message (built by the caller, with the id and descriptor given here),
 * {stop: id} finish it (answer what is in flight, close), {kill: id} drop it now.
 * thread → main: {done: id, reason}.
 */
import type {BlockServer} from '../core/blockserver'
import {ServingThreads, type ServingThread, type ServingThreadsOptions} from './pool'

type Libc = typeof import('../sys/libc')

/** A thread's message that it stopped serving connection `done`. */
export interface ConnectionDone {
  done: number
  reason: string
}

/** A connection being served by a thread, seen from the main thread. */
export interface HandedConnection {
  /** Resolves with why the thread stopped serving it. */
  done: Promise<string>
  /** Graceful: answer what is in flight, then close. */
  stop(): Promise<string>
  /** At once (an iSCSI session reinstated elsewhere). */
  kill(): void
}

export class ConnectionThreads {
  private readonly idle: ServingThread[] = []
  private readonly serving = new Map<number, {thread: ServingThread; resolve: (why: string) => void}>()
  private nextId = 1
  private closed = false
  /** Connections handed to threads. */
  protected handed = 0
  /** Connections left on the main thread because no thread was free. */
  protected refused = 0

  protected constructor(
    protected readonly pool: ServingThreads,
    private readonly libc: Libc,
  ) {
    for (const th of pool.threads) {
      // Idle threads must not keep a process alive whose listener is closed (hold() while shutting down).
      th.worker.unref()
      this.idle.push(th)
      void th.ended.then((why) => this.gone(th, why))
    }
  }

  /** Start the pool of `opts.count` threads; rejects when they cannot serve (no koffi, no descriptor). */
  protected static async startPool(server: BlockServer, opts: Omit<ServingThreadsOptions, 'server' | 'onMessage'>, onDone: (m: ConnectionDone) => void): Promise<{pool: ServingThreads; libc: Libc}> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../sys/libc') as Libc
    const pool = await ServingThreads.start({...opts, server, onMessage: (_thread, m) => onDone(m as ConnectionDone)})
    return {pool, libc}
  }

  get threads(): number {
    return this.pool.threads.length
  }

  /**
   * Hand the connection on `fd` (duplicated here; the caller keeps and closes its own) to a free thread with
   * the message `assign(id, dup)`. Undefined when no thread is free or the descriptor cannot be duplicated.
   */
  protected handOff(fd: number, assign: (id: number, fd: number) => unknown): HandedConnection | undefined {
    if (this.closed) return undefined
    const thread = this.idle.shift()
    if (!thread) {
      this.refused++
      return undefined
    }
    const dup = this.libc.fcntl(fd, this.libc.F_DUPFD_CLOEXEC, 0)
    if (dup < 0) {
      this.idle.unshift(thread)
      return undefined
    }
    const id = this.nextId++
    this.handed++
    let resolve!: (why: string) => void
    const done = new Promise<string>((r) => (resolve = r))
    this.serving.set(id, {thread, resolve})
    thread.post(assign(id, dup))
    return {
      done,
      stop: () => {
        if (this.serving.has(id)) thread.post({stop: id})
        return done
      },
      kill: () => {
        if (this.serving.has(id)) thread.post({kill: id})
      },
    }
  }

  /** A thread's {done} message: the thread is free again. */
  protected finished(m: ConnectionDone): void {
    const s = this.serving.get(m.done)
    if (!s) return
    this.serving.delete(m.done)
    if (!this.closed) this.idle.push(s.thread)
    s.resolve(m.reason)
  }

  private gone(thread: ServingThread, why: string): void {
    const i = this.idle.indexOf(thread)
    if (i >= 0) this.idle.splice(i, 1)
    for (const [id, s] of this.serving)
      if (s.thread === thread) {
        this.serving.delete(id)
        s.resolve(`serving thread ended: ${why}`)
      }
  }

  /**
   * Keep the process alive for the threads while shutting down (their workers are unref'd while serving):
   * the connections they serve are stopped by message, and with the listener and the sockets closed
   * nothing else keeps the event loop going.
   */
  hold(): void {
    for (const t of this.pool.threads) t.worker.ref()
  }

  /** Stop every thread (their connections must have been stopped). */
  async close(): Promise<void> {
    this.closed = true
    this.idle.length = 0
    this.hold()
    await this.pool.close()
  }
}

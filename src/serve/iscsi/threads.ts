/**
 * iSCSI connections on serving threads (src/threads): the login runs on the main thread; then the
 * connection's socket (a duplicate descriptor) and its session state are handed to a serving thread that
 * serves the whole full-feature phase (thread.ts) with its own instance of the source, so decoding never
 * runs on the main thread's event loop and a NOP-Out is never queued behind another connection's reads.
 * One thread serves one connection at a time; a connection that finds no free thread is served on the main
 * thread. What the threads serve is counted in the BlockServer's stats (their counter slots).
 *
 * main → thread: {assign: Assignment} serve this connection; {stop: id} finish it (answer what is in flight,
 * close); {kill: id} drop it now (session reinstatement). thread → main: {done: id, reason}.
 */
import * as path from 'node:path'
import type {BlockServer} from '../../core/blockserver'
import {ServingThreads, type ServingThread} from '../../threads/pool'
import type {Negotiated} from './login'
import type {LunIdentity, Nexus} from './scsi'

/** What a thread needs to serve a connection past its login. */
export interface HandoffState {
  params: Negotiated
  isid: string
  tsih: number
  expCmdSN: number
  statSN: number
  unitAttention: Nexus['unitAttention']
  peer: string
}

export interface Assignment {
  id: number
  fd: number
  state: HandoffState
  /** Bytes the main thread read past the login (normally none). */
  leftover: Uint8Array
}

/** The body's settings, the same for every thread. */
export interface IscsiThreadConfig {
  iqn: string
  identity: LunIdentity
}

export type ToIscsiThread = {assign: Assignment} | {stop: number} | {kill: number}
export interface FromIscsiThread {
  done: number
  reason: string
}

type Libc = typeof import('../../sys/libc')

/** A connection being served by a thread, seen from the main thread. */
export interface HandedConnection {
  /** Resolves with why the thread stopped serving it. */
  done: Promise<string>
  /** Graceful: answer what is in flight, then close. */
  stop(): Promise<string>
  /** At once (the session is being reinstated elsewhere). */
  kill(): void
}

export class IscsiThreads {
  private readonly idle: ServingThread[] = []
  private readonly serving = new Map<number, {thread: ServingThread; resolve: (why: string) => void}>()
  private nextId = 1
  private handed = 0
  private refused = 0
  private closed = false
  private pool!: ServingThreads

  private constructor(readonly libc: Libc) {}

  /** Start `count` threads over `server`'s source; rejects when they cannot serve (no koffi, no descriptor). */
  static async start(server: BlockServer, opts: {count: number; cacheBytes: number; config: IscsiThreadConfig; log: (line: string) => void}): Promise<IscsiThreads> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../../sys/libc') as Libc
    const t = new IscsiThreads(libc)
    t.pool = await ServingThreads.start({
      name: 'iscsi',
      server,
      body: path.join(__dirname, 'thread.js'),
      count: opts.count,
      cacheBytes: opts.cacheBytes,
      config: opts.config,
      log: opts.log,
      onMessage: (_thread, m) => t.finished(m as FromIscsiThread),
    })
    for (const th of t.pool.threads) {
      th.worker.unref()
      t.idle.push(th)
      void th.ended.then((why) => t.gone(th, why))
    }
    return t
  }

  get threads(): number {
    return this.pool.threads.length
  }

  /** Threads; connections handed to them; connections served on the main thread for want of a free one. */
  get stats(): {threads: number; connections: number; refused: number} {
    return {threads: this.pool.threads.length, connections: this.handed, refused: this.refused}
  }

  /**
   * Serve a connection on a free thread from `fd` (duplicated here; the caller keeps and closes its own).
   * Undefined when no thread is free.
   */
  serve(fd: number, state: HandoffState, leftover: Buffer): HandedConnection | undefined {
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
    thread.post({assign: {id, fd: dup, state, leftover: new Uint8Array(leftover)}} satisfies ToIscsiThread)
    return {
      done,
      stop: () => {
        if (this.serving.has(id)) thread.post({stop: id} satisfies ToIscsiThread)
        return done
      },
      kill: () => {
        if (this.serving.has(id)) thread.post({kill: id} satisfies ToIscsiThread)
      },
    }
  }

  private finished(m: FromIscsiThread): void {
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

  /** Stop every thread (connections must have been stopped). */
  /**
   * Keep the process alive for the threads (their workers are unref'd while serving): shutting down waits for
   * their answers, and with the listener and the sockets closed nothing else would keep the event loop going.
   */
  hold(): void {
    for (const t of this.pool.threads) t.worker.ref()
  }

  async close(): Promise<void> {
    this.closed = true
    this.idle.length = 0
    for (const t of this.pool.threads) t.worker.ref()
    await this.pool.close()
  }
}

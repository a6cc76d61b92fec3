/**
 * NFS connections on serving threads (src/threads), as the iSCSI target's: a connection accepted on the main
 * thread (not yet read: the listener pauses on connect) is handed to a free serving thread as a duplicate
 * descriptor, and that thread serves it whole (thread.ts) with the same Connection and programs as the main
 * thread, over its own BlockServer — its own instance of the source (pread(2) and decoding there), or its
 * view of the overlay for a writable export (docs/OVERLAY.md, "Serving"). A thread serves one connection at a
 * time (a kernel client keeps one connection for everything, libnfs tools one each); a connection that finds
 * no free thread is served on the main thread. What the threads serve is counted in the BlockServer's stats
 * (their counter slots).
 *
 * main → thread: {assign: {id, fd, peer}} serve this connection; {stop: id} close it and answer once the
 * calls in flight are done. thread → main: {done: id, reason}.
 */
import type * as net from 'node:net'
import * as path from 'node:path'
import type {BlockServer} from '../../core/blockserver'
import {ServingThreads, type ServingThread} from '../../threads/pool'
import type {NfsExportConfig} from './index'

export type ToNfsThread = {assign: {id: number; fd: number; peer: string}} | {stop: number}
export interface FromNfsThread {
  done: number
  reason: string
}

type Libc = typeof import('../../sys/libc')

/** A connection being served by a thread, seen from the main thread. */
export interface HandedConnection {
  /** Resolves with why the thread stopped serving it ("closed" normally). */
  done: Promise<string>
  /** Close it; resolves once the thread's calls in flight are done. */
  stop(): Promise<string>
}

export interface NfsThreadStats {
  threads: number
  /** Connections handed to threads. */
  connections: number
  /** Connections served on the main thread because no thread was free. */
  refused: number
  /** The counter slot of each thread (src/core/counters.ts). */
  slots: Float64Array[]
}

export class NfsThreads {
  private readonly idle: ServingThread[] = []
  private readonly serving = new Map<number, {thread: ServingThread; resolve: (why: string) => void}>()
  private nextId = 1
  private handed = 0
  private refused = 0
  private closed = false
  private pool!: ServingThreads

  private constructor(private readonly libc: Libc) {}

  /** Start `count` threads over `server`'s source; rejects when they cannot serve (no koffi, no descriptor). */
  static async start(server: BlockServer, opts: {count: number; cacheBytes: number; config: NfsExportConfig; log: (line: string) => void}): Promise<NfsThreads> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../../sys/libc') as Libc
    const t = new NfsThreads(libc)
    t.pool = await ServingThreads.start({
      name: 'nfs',
      server,
      body: path.join(__dirname, 'thread.js'),
      count: opts.count,
      cacheBytes: opts.cacheBytes,
      config: opts.config,
      log: opts.log,
      onMessage: (_thread, m) => t.finished(m as FromNfsThread),
    })
    for (const th of t.pool.threads) {
      // Idle threads must not keep a process alive whose listener is closed (hold() while shutting down).
      th.worker.unref()
      t.idle.push(th)
      void th.ended.then((why) => t.gone(th, why))
    }
    return t
  }

  get threads(): number {
    return this.pool.threads.length
  }

  get stats(): NfsThreadStats {
    return {
      threads: this.pool.threads.length,
      connections: this.handed,
      refused: this.refused,
      slots: this.pool.threads.map((_, i) => this.pool.counters.slot(i)),
    }
  }

  /**
   * Serve `socket` (paused, never read) on a free thread: its descriptor is duplicated for the thread and the
   * socket destroyed here. Undefined (the socket untouched) when no thread is free.
   */
  serve(socket: net.Socket): HandedConnection | undefined {
    if (this.closed) return undefined
    const fd = (socket as unknown as {_handle?: {fd?: unknown}})._handle?.fd
    if (typeof fd !== 'number' || fd < 0) return undefined
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
    thread.post({assign: {id, fd: dup, peer: socket.remoteAddress ?? 'unknown'}} satisfies ToNfsThread)
    socket.destroy()
    return {
      done,
      stop: () => {
        if (this.serving.has(id)) thread.post({stop: id} satisfies ToNfsThread)
        return done
      },
    }
  }

  private finished(m: FromNfsThread): void {
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
   * Keep the process alive for the threads while shutting down: the connections they serve are stopped by
   * message, and with the listener and this thread's sockets closed nothing else keeps the event loop going.
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

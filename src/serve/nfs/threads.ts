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
import {ConnectionThreads, type ConnectionDone, type HandedConnection as Handed} from '../../threads/handoff'
import type {NfsExportConfig} from './index'

export type ToNfsThread = {assign: {id: number; fd: number; peer: string}} | {stop: number}
export type FromNfsThread = ConnectionDone

/** A connection being served by a thread, seen from the main thread ("closed" when it ends normally). */
export type HandedConnection = Omit<Handed, 'kill'>

export interface NfsThreadStats {
  threads: number
  /** Connections handed to threads. */
  connections: number
  /** Connections served on the main thread because no thread was free. */
  refused: number
  /** The counter slot of each thread (src/core/counters.ts). */
  slots: Float64Array[]
}

export class NfsThreads extends ConnectionThreads {
  /** Start `count` threads over `server`'s source; rejects when they cannot serve (no koffi, no descriptor). */
  static async start(server: BlockServer, opts: {count: number; cacheBytes: number; config: NfsExportConfig; log: (line: string) => void}): Promise<NfsThreads> {
    let t: NfsThreads | undefined
    const {pool, libc} = await ConnectionThreads.startPool(server, {name: 'nfs', body: path.join(__dirname, 'thread.js'), ...opts}, (m) => t?.finished(m))
    t = new NfsThreads(pool, libc)
    return t
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
    const fd = (socket as unknown as {_handle?: {fd?: unknown}})._handle?.fd
    if (typeof fd !== 'number' || fd < 0) return undefined
    const handed = this.handOff(fd, (id, dup) => ({assign: {id, fd: dup, peer: socket.remoteAddress ?? 'unknown'}}) satisfies ToNfsThread)
    if (handed) socket.destroy()
    return handed
  }
}

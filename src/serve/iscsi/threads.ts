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
import {ConnectionThreads, type ConnectionDone, type HandedConnection} from '../../threads/handoff'
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
export type FromIscsiThread = ConnectionDone
export type {HandedConnection}

export class IscsiThreads extends ConnectionThreads {
  /** Start `count` threads over `server`'s source; rejects when they cannot serve (no koffi, no descriptor). */
  static async start(server: BlockServer, opts: {count: number; cacheBytes: number; config: IscsiThreadConfig; log: (line: string) => void}): Promise<IscsiThreads> {
    let t: IscsiThreads | undefined
    const {pool, libc} = await ConnectionThreads.startPool(
      server,
      {
        name: 'iscsi',
        body: path.join(__dirname, 'thread.js'),
        // As NBD's threads: a connection's thread holds 32 commands in flight (PDUs, tasks, promises), and a
        // 1 MB young generation (THREAD_LIMITS) scavenges too often and promotes what is still in flight
        // (docs/iscsi.md, "Benchmark": GC 7.9 → 3.3 µs per random 4 KiB read).
        heap: {maxYoungGenerationSizeMb: 4},
        ...opts,
      },
      (m) => t?.finished(m),
    )
    t = new IscsiThreads(pool, libc)
    return t
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
    return this.handOff(fd, (id, dup) => ({assign: {id, fd: dup, state, leftover: new Uint8Array(leftover)}}) satisfies ToIscsiThread)
  }
}

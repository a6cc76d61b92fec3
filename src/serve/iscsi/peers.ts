/**
 * Reads of one iSCSI session spread over the serving threads. A session's full-feature phase runs on one
 * thread (thread.ts): that thread alone reads the socket, keeps the session's state (CmdSN window, StatSN,
 * the task table that ABORT TASK and Logout consult) and writes every PDU, so the ordering rules stay where
 * they were. Only the work of a read — pread(2) and decoding, most of a random 4 KiB read of a VDIMG image —
 * goes to the other serving threads, each reading from its own instance of the source, through a
 * MessageChannel between every two threads (threads.ts makes them). The thread keeps the peers busy with at
 * most PEER_QUEUE reads each and reads the rest itself, so a session uses as many cores as there are
 * threads, and a lone command costs no hop.
 *
 * A peer answers {id, data} (the bytes, transferred) or {id, error: {errno, message, bad}} (a BlockError,
 * rebuilt here so that MEDIUM ERROR still names the first bad LBA). A peer that goes away (its thread ended)
 * fails nothing: its reads are done again here.
 */
import type {MessagePort} from 'node:worker_threads'
import type {BlockServer} from '../../core/blockserver'
import {BlockError} from '../../core/block-error'
import type {BadRange} from '../../core/errors'

/** Reads one peer may hold at once: enough to keep it busy between two looks at the socket. */
export const PEER_QUEUE = 4

interface ReadRequest {
  read: number
  offset: number
  length: number
}
interface ReadReply {
  id: number
  data?: Uint8Array
  error?: {errno: BlockError['errno']; message: string; bad: BadRange[]}
}

interface Pending {
  offset: number
  length: number
  resolve: (b: Buffer) => void
  reject: (e: unknown) => void
}

class Peer {
  readonly pending = new Map<number, Pending>()
  closed = false
  constructor(readonly port: MessagePort) {}
}

export class PeerReads {
  private readonly peers: Peer[] = []
  /** Reads waiting for a peer with room or for this thread's next turn (FIFO). */
  private readonly queue: Pending[] = []
  private localTurn = false
  private readThisTurn = false
  private nextId = 1
  private turn = 0
  /** Reads sent to peers for this thread's sessions, and reads done here for other threads' (tests, stats). */
  sent = 0
  served = 0

  constructor(private readonly server: BlockServer) {}

  /** A channel to another serving thread: its reads are answered here, ours may go there. */
  add(port: MessagePort): void {
    const peer = new Peer(port)
    this.peers.push(peer)
    port.on('message', (m: ReadRequest | ReadReply) => {
      if ('read' in m) void this.answer(port, m)
      else this.settle(peer, m)
    })
    port.on('close', () => this.lost(peer))
    // A channel keeps no thread alive: the pool ends threads with {exit}.
    port.unref()
  }

  /**
   * Read `length` bytes at `offset`. Alone (nothing in flight, nothing read yet in this turn) it is read here
   * at once; else it joins the queue, whose head goes to a peer with room, or is read here in this thread's
   * next turn of its event loop — one read per turn, so the socket and the peers' answers are served in
   * between and the peers never wait for this thread to finish a batch.
   */
  read(offset: number, length: number): Promise<Buffer> {
    // The first read of this turn of the event loop, nothing else in flight (or no peer): read here at once,
    // no hop. (A read here is synchronous: the commands parsed after it in the same turn find it done, so
    // it is the turn that tells a lone command from a batch.)
    if (!this.readThisTurn && this.queue.length === 0 && this.peers.every((p) => p.closed || p.pending.size === 0)) {
      this.readThisTurn = true
      setImmediate(() => (this.readThisTurn = false))
      return this.server.read(offset, length)
    }
    return new Promise<Buffer>((resolve, reject) => {
      this.queue.push({offset, length, resolve, reject})
      this.pump()
    })
  }

  /** Hand the queue's head to peers with room; leave the rest for this thread's next turn. */
  private pump(): void {
    const n = this.peers.length
    while (this.queue.length > 0) {
      let peer: Peer | undefined
      for (let i = 0; i < n; i++) {
        const p = this.peers[(this.turn + i) % n]
        if (p.closed || p.pending.size >= PEER_QUEUE) continue
        this.turn = (this.turn + i + 1) % n
        peer = p
        break
      }
      if (!peer) break
      const r = this.queue.shift()!
      const id = this.nextId++
      this.sent++
      peer.pending.set(id, r)
      peer.port.postMessage({read: id, offset: r.offset, length: r.length} satisfies ReadRequest)
    }
    if (this.queue.length > 0 && !this.localTurn) {
      this.localTurn = true
      setImmediate(() => this.local())
    }
  }

  /** This thread's turn: one read from the queue. */
  private local(): void {
    this.localTurn = false
    const r = this.queue.shift()
    if (r) this.server.read(r.offset, r.length).then(r.resolve, r.reject)
    this.pump()
  }

  private async answer(port: MessagePort, m: ReadRequest): Promise<void> {
    this.served++
    try {
      const data = await this.server.read(m.offset, m.length)
      // A copy the channel can take over: the server's buffer may be a view of its chunk cache.
      const out = new Uint8Array(data.length)
      out.set(data)
      port.postMessage({id: m.read, data: out} satisfies ReadReply, [out.buffer])
    } catch (err) {
      const e = err instanceof BlockError ? err : new BlockError('EIO', (err as Error)?.message ?? String(err))
      port.postMessage({id: m.read, error: {errno: e.errno, message: e.message, bad: e.bad}} satisfies ReadReply)
    }
  }

  private settle(peer: Peer, m: ReadReply): void {
    const p = peer.pending.get(m.id)
    if (!p) return
    peer.pending.delete(m.id)
    if (m.data) p.resolve(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength))
    else p.reject(new BlockError(m.error?.errno ?? 'EIO', m.error?.message ?? 'read failed on a peer thread', m.error?.bad ?? []))
    this.pump()
  }

  /** The peer's thread ended: what it held goes back to the head of the queue. */
  private lost(peer: Peer): void {
    peer.closed = true
    this.queue.unshift(...peer.pending.values())
    peer.pending.clear()
    this.pump()
  }
}

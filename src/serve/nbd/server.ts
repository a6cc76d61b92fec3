/**
 * A read-only NBD server over a BlockServer: the fixed newstyle handshake, then the transmission phase with
 * simple or structured replies. Requests are served concurrently and answered as they finish (out of order);
 * each reply is written whole in one synchronous step, so replies never interleave. The same connection code
 * serves the Linux kernel client on one end of a socketpair, which speaks the transmission phase only.
 * With serving threads (threads.ts), a connection's transmission phase is handed to them after the
 * handshake; what each request gets as its answer is decided in respond.ts for both.
 * Spec: NetworkBlockDevice/nbd doc/proto.md; constants and encoders in protocol.ts.
 */
import type {Server, Socket} from 'node:net'
import type {BlockServer} from '../../core/blockserver'
import * as P from './protocol'
import {printable} from '../printable'
import {EndOfStream, SocketReader} from './reader'
import {BASE_ALLOCATION_ID, Responder, type Reply, type Session} from './respond'
import type {ConnectionThreads, ThreadedConnection} from './threads'
import {drained} from '../drained'

export interface NbdServerOptions {
  /** The export's canonical name (vdev uses the image file name); "" always selects it too. */
  exportName: string
  description?: string
  log?: (line: string) => void
  /**
   * Serving threads: after the handshake a connection's requests are read, served and answered by these
   * (threads.ts); the main thread serves only when none is free. Closed with the server.
   */
  threads?: ConnectionThreads
}

/** Option data is small (strings are at most 4096 bytes); anything larger is taken for abuse. */
export const MAX_OPTION_LENGTH = 64 * 1024
/** Options one client may send before it must choose an export (nbdkit allows 32). */
export const MAX_OPTIONS = 256
/** Requests one connection may have in flight before the server stops reading more. */
const MAX_IN_FLIGHT = 64
/**
 * Stop taking requests while a connection holds this many bytes: the requests in flight (a read's reply to
 * come, a write's payload) plus replies waiting in the socket. Counting requests alone let 64 pipelined
 * 32 MiB reads hold 2 GiB.
 */
const OUTPUT_HIGH_WATER = 64 * 1024 * 1024

class ProtocolViolation extends Error {}

export class NbdServer {
  readonly exportName: string
  private readonly connections = new Set<NbdConnection>()
  private closing = false

  constructor(
    readonly server: BlockServer,
    private readonly opts: NbdServerOptions,
  ) {
    this.exportName = opts.exportName
  }

  get threads(): ConnectionThreads | undefined {
    return this.opts.threads
  }

  get description(): string {
    return this.opts.description ?? ''
  }

  log(line: string): void {
    this.opts.log?.(line)
  }

  /** Transmission flags of this export. */
  transmissionFlags(structured: boolean): number {
    let f = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_READ_ONLY | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_CACHE
    // Writable (an overlay, docs/OVERLAY.md): one overlay serves every connection on this thread.
    if (this.server.writable) f = (f & ~P.NBD_FLAG_READ_ONLY) | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES
    // No cache between connections, and a flush syncs the one overlay: every connection sees the same bytes.
    f |= P.NBD_FLAG_CAN_MULTI_CONN
    // Reads are always answered with one content chunk, so "don't fragment" is honoured as is.
    if (structured) f |= P.NBD_FLAG_SEND_DF
    return f
  }

  /** Accept connections from a listening (or about to listen) net.Server. */
  attach(listener: Server): void {
    listener.on('connection', (socket: Socket) => this.handle(socket))
  }

  /** Serve one client from the start of the handshake. */
  handle(socket: Socket): NbdConnection {
    const c = new NbdConnection(this, socket, false)
    this.track(c)
    return c
  }

  /** Serve the kernel's NBD client: no handshake, simple replies only. */
  handleTransmission(socket: Socket): NbdConnection {
    const c = new NbdConnection(this, socket, true)
    this.track(c)
    return c
  }

  private track(c: NbdConnection): void {
    if (this.closing) {
      c.destroy()
      return
    }
    this.connections.add(c)
    void c.run().finally(() => this.connections.delete(c))
  }

  get connectionCount(): number {
    return this.connections.size
  }

  /** Stop reading new requests on every connection, finish those in flight, then close the sockets (and the threads). */
  async close(): Promise<void> {
    this.closing = true
    await Promise.all([...this.connections].map((c) => c.shutdown()))
    await this.opts.threads?.close()
  }
}

export class NbdConnection {
  private readonly reader: SocketReader
  private readonly session: Session = {structured: false, metaContext: false}
  private inFlight = 0
  /** Bytes the requests in flight hold or will produce: a read's reply, a write's payload. */
  private inFlightBytes = 0
  private slotWaiters: Array<() => void> = []
  private stopping = false
  private stopped: Promise<void>
  private resolveStopped!: () => void
  private readonly peer: string
  private responder!: Responder
  /** Set once the transmission phase was handed to serving threads. */
  private threaded: ThreadedConnection | undefined

  constructor(
    private readonly nbd: NbdServer,
    private readonly socket: Socket,
    private readonly transmissionOnly: boolean,
  ) {
    this.reader = new SocketReader(socket)
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'local'
    socket.setNoDelay?.(true)
    socket.on('error', (err) => this.nbd.log(`nbd ${this.peer}: ${err.message}`))
    this.stopped = new Promise((r) => (this.resolveStopped = r))
  }

  destroy(): void {
    this.socket.destroy()
  }

  /** Graceful stop: no new requests, in-flight ones answered, then the socket closed. */
  async shutdown(): Promise<void> {
    this.stopping = true
    await this.threaded?.stop()
    await this.idle()
    this.close()
    await this.stopped
  }

  /** Flush what was written, then close; a peer that keeps its end open does not hold the socket. */
  private close(): void {
    if (this.socket.destroyed) return
    this.socket.end(() => this.socket.destroy())
    setTimeout(() => this.socket.destroy(), 2000).unref()
  }

  async run(): Promise<void> {
    try {
      if (this.transmissionOnly || (await this.handshake())) {
        this.responder = new Responder(this.nbd.server, this.session, {sync: false, log: (l) => this.nbd.log(l), peer: this.peer})
        if (!(await this.handOff())) await this.transmission()
      }
    } catch (err) {
      if (!(err instanceof EndOfStream)) this.nbd.log(`nbd ${this.peer}: ${(err as Error).message}`)
    } finally {
      await this.idle()
      this.close()
      this.resolveStopped()
    }
  }

  private write(...parts: Buffer[]): void {
    if (this.socket.destroyed || this.socket.writableEnded) return
    if (parts.length === 1) {
      this.socket.write(parts[0])
      return
    }
    this.socket.cork()
    for (const p of parts) this.socket.write(p)
    this.socket.uncork()
  }

  // ---- handshake ("Fixed newstyle negotiation") ----

  /** Returns true when the client chose the export and transmission begins. */
  private async handshake(): Promise<boolean> {
    const nbd = this.nbd
    this.write(P.encodeGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES))
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0)
    if (clientFlags & ~(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES))
      throw new ProtocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`)
    const noZeroes = (clientFlags & P.NBD_FLAG_C_NO_ZEROES) !== 0

    for (let count = 0; ; count++) {
      if (this.stopping) return false
      const h = P.decodeOptionHeader(await this.reader.read(P.OPTION_HEADER_SIZE))
      if (h.magic !== P.IHAVEOPT) throw new ProtocolViolation('bad option magic')
      if (count >= MAX_OPTIONS) throw new ProtocolViolation(`more than ${MAX_OPTIONS} options`)
      if (h.length > MAX_OPTION_LENGTH) throw new ProtocolViolation(`option ${h.option} data of ${h.length} bytes`)
      const data = h.length > 0 ? await this.reader.read(h.length) : Buffer.alloc(0)
      const reply = (type: number, payload?: Buffer) => this.write(P.encodeOptionReply(h.option, type, payload))
      const error = (type: number, message: string) => reply(type, Buffer.from(message, 'utf8'))

      switch (h.option) {
        case P.NBD_OPT_EXPORT_NAME: {
          const name = data.toString('utf8')
          // This option cannot answer an error: an unknown export ends the session.
          if (!this.isOurExport(name)) throw new ProtocolViolation(`unknown export ${printable(name)}`)
          this.write(P.encodeExportNameReply(nbd.server.size, nbd.transmissionFlags(this.session.structured), noZeroes))
          return true
        }
        case P.NBD_OPT_ABORT:
          reply(P.NBD_REP_ACK)
          return false
        case P.NBD_OPT_LIST:
          if (data.length !== 0) {
            error(P.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data')
            break
          }
          reply(P.NBD_REP_SERVER, P.encodeRepServer(nbd.exportName, nbd.description))
          reply(P.NBD_REP_ACK)
          break
        case P.NBD_OPT_INFO:
        case P.NBD_OPT_GO: {
          let req: {name: string; requests: number[]}
          try {
            req = P.decodeInfoRequest(data)
          } catch (err) {
            error(P.NBD_REP_ERR_INVALID, (err as Error).message)
            break
          }
          if (!this.isOurExport(req.name)) {
            error(P.NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`)
            break
          }
          const flags = nbd.transmissionFlags(this.session.structured)
          reply(P.NBD_REP_INFO, P.encodeInfoExport(nbd.server.size, flags))
          if (req.requests.includes(P.NBD_INFO_NAME)) reply(P.NBD_REP_INFO, P.encodeInfoString(P.NBD_INFO_NAME, nbd.exportName))
          if (req.requests.includes(P.NBD_INFO_DESCRIPTION) && nbd.description)
            reply(P.NBD_REP_INFO, P.encodeInfoString(P.NBD_INFO_DESCRIPTION, nbd.description))
          const sector = nbd.server.sectorSize
          // The export size SHOULD be a multiple of the minimum block size, "since otherwise, the client would
          // be unable to access the final few bytes" (proto.md, block size constraints; qemu 7.2 aborts on
          // the last extent). An image of any other size advertises 1: every byte is addressable (and
          // writable over an overlay, which takes writes at any alignment).
          const minimum = nbd.server.size % sector === 0 ? sector : 1
          reply(P.NBD_REP_INFO, P.encodeInfoBlockSize(minimum, Math.max(sector, 4096), P.MAX_PAYLOAD))
          reply(P.NBD_REP_ACK)
          if (h.option === P.NBD_OPT_GO) return true
          break
        }
        case P.NBD_OPT_STRUCTURED_REPLY:
          if (data.length !== 0) {
            error(P.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data')
            break
          }
          this.session.structured = true
          reply(P.NBD_REP_ACK)
          break
        case P.NBD_OPT_LIST_META_CONTEXT:
        case P.NBD_OPT_SET_META_CONTEXT: {
          const setting = h.option === P.NBD_OPT_SET_META_CONTEXT
          // "Issuing this command replaces all previously-set metadata contexts (including when this command fails)".
          if (setting) this.session.metaContext = false
          if (!this.session.structured) {
            error(P.NBD_REP_ERR_INVALID, 'negotiate structured replies first')
            break
          }
          let req: {name: string; queries: string[]}
          try {
            req = P.decodeMetaContextRequest(data)
          } catch (err) {
            error(P.NBD_REP_ERR_INVALID, (err as Error).message)
            break
          }
          if (!this.isOurExport(req.name)) {
            error(P.NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`)
            break
          }
          const selected = setting
            ? req.queries.includes(P.BASE_ALLOCATION)
            : req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === P.BASE_ALLOCATION)
          if (selected) reply(P.NBD_REP_META_CONTEXT, P.encodeMetaContext(setting ? BASE_ALLOCATION_ID : 0, P.BASE_ALLOCATION))
          if (setting) this.session.metaContext = selected
          reply(P.NBD_REP_ACK)
          break
        }
        default:
          // STARTTLS (no TLS here), EXTENDED_HEADERS and anything unknown.
          error(P.NBD_REP_ERR_UNSUP, `option ${h.option} is not supported`)
      }
    }
  }

  private isOurExport(name: string): boolean {
    return name === '' || name === this.nbd.exportName
  }

  // ---- transmission ----

  private async transmission(): Promise<void> {
    const reader = this.reader
    for (;;) {
      if (this.stopping) return
      await this.room()
      if (this.stopping) return
      const hdr = reader.tryRead(P.REQUEST_SIZE) ?? (await reader.read(P.REQUEST_SIZE))
      const req = P.decodeRequest(hdr)
      let payload: Buffer | undefined
      if (req.magic !== P.NBD_REQUEST_MAGIC) throw new ProtocolViolation(`bad request magic 0x${req.magic.toString(16)}`)
      if (this.stopping) {
        // "...any subsequently received requests SHOULD be ESHUTDOWN" (Terminating the transmission phase).
        this.replyError(req, P.NBD_ESHUTDOWN, 'the server is shutting down')
        return
      }
      if (req.type === P.NBD_CMD_WRITE) {
        // The payload follows the header; it must be consumed (or the connection closed) to stay in sync.
        if (req.length > P.MAX_PAYLOAD) throw new ProtocolViolation(`write payload of ${req.length} bytes`)
        if (this.nbd.server.writable) payload = await reader.read(req.length)
        else await reader.skip(req.length)
      }
      // "The server MUST handle all outstanding requests" before closing (run() waits for them).
      if (req.type === P.NBD_CMD_DISC) return
      const reply = this.responder.answer(req, payload)
      if (!(reply instanceof Promise)) {
        this.send(reply)
        continue
      }
      const bytes = req.type === P.NBD_CMD_READ || payload ? req.length : 0
      this.begin(bytes)
      void reply.then((r) => {
        this.send(r)
        this.finish(bytes)
      })
    }
  }

  /**
   * Hand the transmission phase to serving threads, if the server has them and one is free: the socket's
   * descriptor is duplicated for them and Node's handle closed, together with any request bytes already
   * read. Returns once the threads have finished with the connection; false when it stays on this thread.
   */
  private async handOff(): Promise<boolean> {
    const pool = this.nbd.threads
    if (!pool || this.stopping || this.socket.destroyed) return false
    const fd = (this.socket as unknown as {_handle?: {fd?: unknown}})._handle?.fd
    if (typeof fd !== 'number' || fd < 0) return false
    // The handshake's last reply must be on its way before the socket changes hands.
    if (this.socket.writableLength > 0) await this.drained()
    if (this.stopping || this.socket.destroyed) return false
    const libc = pool.libc
    const dup = libc.fcntl(fd, libc.F_DUPFD_CLOEXEC, 0)
    if (dup < 0) return false
    // From here to destroy() all is synchronous: no more data can reach the reader in between.
    const leftover = this.reader.takeBuffered()
    const threaded = pool.serve(dup, this.session, leftover, this.peer)
    if (!threaded) {
      libc.close(dup)
      this.reader.putBack(leftover)
      return false
    }
    this.threaded = threaded
    this.socket.destroy()
    await threaded.done
    return true
  }

  /**
   * Wait until the connection may take another request: fewer than MAX_IN_FLIGHT in flight, and the bytes
   * it holds (requests in flight, replies the socket has not taken) at most OUTPUT_HIGH_WATER. A client that
   * pipelines large reads and never reads the replies then costs the server that much, not more.
   */
  private async room(): Promise<void> {
    while (!this.stopping && !this.socket.destroyed) {
      const held = this.inFlightBytes + this.socket.writableLength
      if (this.inFlight >= MAX_IN_FLIGHT || (this.inFlight > 0 && held > OUTPUT_HIGH_WATER)) await this.slot()
      else if (held > OUTPUT_HIGH_WATER) await this.drained()
      else return
    }
  }

  private slot(): Promise<void> {
    return new Promise((resolve) => this.slotWaiters.push(resolve))
  }

  /** Resolves when the socket's output buffer drains (or the socket closes). */
  private drained(): Promise<void> {
    return drained(this.socket)
  }

  private begin(bytes: number): void {
    this.inFlight++
    this.inFlightBytes += bytes
  }

  private finish(bytes: number): void {
    this.inFlight--
    this.inFlightBytes -= bytes
    for (const f of this.slotWaiters.splice(0)) f()
    if (this.inFlight === 0) for (const f of this.idleWaiters.splice(0)) f()
  }

  private idleWaiters: Array<() => void> = []
  private idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  private send(reply: Reply): void {
    this.write(...reply)
  }

  private replyError(req: P.Request, errno: number, message: string): void {
    this.send(this.responder.error(req, errno, message))
  }
}

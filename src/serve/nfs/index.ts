/**
 * A loopback NFSv3 server exporting one decoded image as one regular file, read-only, or read-write when
 * the BlockServer is writable (a copy-on-write overlay: WRITE and COMMIT, docs/nfs.md). The portmapper (100000 v2),
 * MOUNT v3 (100005) and NFS v3 (100003) all answer on one TCP port, so a client needs no rpcbind:
 *   mount -t nfs -o vers=3,proto=tcp,port=P,mountport=P,nolock,ro 127.0.0.1:/ DIR      (Linux)
 *   mount_nfs -o ro,nolocks,vers=3,tcp,port=P,mountport=P 127.0.0.1:/ DIR               (macOS)
 * Only loopback peers are served; any other peer gets AUTH_ERROR (and MNT3ERR_ACCES from MOUNT).
 */
import {randomBytes} from 'node:crypto'
import * as net from 'node:net'
import type {BlockServer} from '../../core/blockserver'
import {ExportTree, FileTimes} from './export'
import {MOUNT_PROG, MOUNT_V3, MountProc, MountProgram} from './mount'
import {NFS3_WRITEVERFSIZE, NFS_PROG, NFS_V3, Nfs3Program} from './nfs3'
import {NfsThreads, type HandedConnection, type NfsThreadStats} from './threads'
import {IPPROTO_TCP, PMAP_PROG, PMAP_VERS, PortmapProgram} from './portmap'
import {
  AcceptStat,
  AuthFlavor,
  AuthStat,
  RecordDecoder,
  RpcProtocolError,
  acceptErrorReply,
  acceptedReply,
  authErrorReply,
  decodeCallHeader,
  frameRecord,
  rpcMismatchReply,
  type CallContext,
  type ProcOutcome,
  type RpcProgram,
} from './rpc'
import {XdrError} from './xdr'
import {ReadArena} from '../read-arena'

export interface NfsServerOptions {
  /** Address to listen on; "127.0.0.1" in normal use. Non-loopback peers are refused whatever this is. */
  host: string
  /** 0 picks a free port. */
  port: number
  /** The MOUNT path clients ask for, e.g. "/". */
  exportName: string
  /** The name of the one file in the export, e.g. "disk.img". */
  fileName: string
  log: (line: string) => void
  /** What identifies the image (e.g. its absolute path); handles derive from it. Default: names, size, media hash. */
  identity?: string
  /** Timestamps reported for the file and directory. Default: when the server starts. */
  mtime?: Date
  /** FSINFO rtmax: the largest READ answered. Default 1 MiB. */
  rtmax?: number
  /** FSINFO wtmax, which also sizes the record cap (a WRITE of wtmax bytes must fit in one record). Default 1 MiB. */
  wtmax?: number
  /** Serving threads, each serving one connection at a time (0 or absent: the main thread serves). */
  threads?: number
}

export interface NfsServerHandle {
  host: string
  port: number
  /** Serving threads started (0: every connection is served on the main thread). */
  threads: number
  /** Connections handed to serving threads, and those served here for want of a free one. */
  readonly threadStats?: NfsThreadStats
  /** Connections served on the main thread so far (strangers, none free, or no threads). */
  readonly mainConnections: number
  close(): Promise<void>
}

export const DEFAULT_RTMAX = 1 << 20
export const DEFAULT_WTMAX = 1 << 20
/** Room for the RPC header, credentials (2 x 400 bytes), a file handle and WRITE's fixed fields. */
const RECORD_OVERHEAD = 8192
/** Decoded-chunk cache of each serving thread's instance of the source. */
export const THREAD_CACHE_BYTES = 8 << 20
/** Calls one connection may have in progress before we stop reading from it. */
const MAX_CALLS_PER_CONNECTION = 128
/**
 * READ data is read into one reused arena of this size per connection (on a serving thread, where a read is
 * answered at once, as the iSCSI target does): a few of the clients' usual 1 MiB READs in flight. Reads
 * larger than a quarter of it get their own buffer.
 */
const READ_ARENA_BYTES = 4 << 20

/** 127.0.0.0/8, ::1 and their IPv4-mapped IPv6 forms. */
export function isLoopbackAddress(addr: string | undefined): boolean {
  if (!addr) return false
  const a = addr.toLowerCase()
  if (a === '::1') return true
  const v4 = a.startsWith('::ffff:') ? a.slice(7) : a
  return net.isIPv4(v4) && v4.startsWith('127.')
}

/** Everything a connection needs: the programs and the rules applied before any of them runs. */
export class Dispatcher {
  private readonly programs = new Map<number, RpcProgram>()

  constructor(
    programs: RpcProgram[],
    readonly maxRecord: number,
    readonly log: (line: string) => void,
  ) {
    for (const p of programs) this.programs.set(p.prog, p)
  }

  /** Procedures being served (in the source, or waiting for it). */
  private inFlight = 0
  private readonly idle: (() => void)[] = []

  /** Resolves once no procedure is being served: what close waits for before the source may be closed. */
  async drain(): Promise<void> {
    while (this.inFlight > 0) await new Promise<void>((resolve) => this.idle.push(resolve))
  }

  /** One record in, the reply parts out (null: close the connection). */
  async handle(record: Buffer, ctx: CallContext): Promise<Buffer[] | null> {
    let header
    try {
      header = decodeCallHeader(record)
    } catch (err) {
      if (err instanceof RpcProtocolError) {
        this.log(`nfs: closing connection from ${ctx.peer}: ${err.message}`)
        return null
      }
      throw err
    }
    if (!header.ok) {
      this.log(`nfs: refused call ${header.xid} from ${ctx.peer}: ${header.detail}`)
      return header.reply === 'rpc-mismatch'
        ? rpcMismatchReply(header.xid)
        : authErrorReply(header.xid, AuthStat.AUTH_BADCRED)
    }
    const call = header.call
    if (call.credFlavor !== AuthFlavor.AUTH_NONE && call.credFlavor !== AuthFlavor.AUTH_SYS)
      return authErrorReply(call.xid, AuthStat.AUTH_BADCRED)
    // A stranger may ping MOUNT and ask MNT, which answers MNT3ERR_ACCES itself (so its client reports
    // "access denied" rather than a bare RPC failure); every other call from one is an AUTH_ERROR.
    const mountCall =
      call.prog === MOUNT_PROG && call.vers === MOUNT_V3 && (call.proc === MountProc.MNT || call.proc === MountProc.NULL)
    if (!ctx.trusted && !mountCall) {
      this.log(`nfs: refused program ${call.prog} call from non-loopback peer ${ctx.peer}`)
      return authErrorReply(call.xid, AuthStat.AUTH_TOOWEAK)
    }
    const program = this.programs.get(call.prog)
    if (!program) return acceptErrorReply(call.xid, AcceptStat.PROG_UNAVAIL)
    if (call.vers < program.low || call.vers > program.high)
      return acceptErrorReply(call.xid, AcceptStat.PROG_MISMATCH, {low: program.low, high: program.high})
    let outcome: ProcOutcome
    this.inFlight++
    try {
      outcome = await program.dispatch(call, ctx)
    } catch (err) {
      if (err instanceof XdrError) {
        this.log(`nfs: ${program.name} procedure ${call.proc} from ${ctx.peer}: ${err.message}`)
        return acceptErrorReply(call.xid, AcceptStat.GARBAGE_ARGS)
      }
      this.log(`nfs: ${program.name} procedure ${call.proc} failed: ${(err as Error)?.message ?? err}`)
      return acceptErrorReply(call.xid, AcceptStat.SYSTEM_ERR)
    } finally {
      if (--this.inFlight === 0) for (const f of this.idle.splice(0)) f()
    }
    if ('accept' in outcome) return acceptErrorReply(call.xid, outcome.accept)
    return acceptedReply(call.xid, outcome)
  }
}

/** One TCP connection: record reassembly, calls in parallel, replies in completion order (matched by xid). */
export class Connection {
  private readonly decoder: RecordDecoder
  private readonly ctx: CallContext
  private calls = 0
  private writeBlocked = false
  private closed = false
  /** READ data's reused buffer (on a serving thread). */
  private readonly arena = new ReadArena(READ_ARENA_BYTES)

  constructor(
    private readonly socket: net.Socket,
    private readonly dispatcher: Dispatcher,
    /** The peer's address when the socket was handed over (a serving thread's side). */
    peerAddress?: string,
  ) {
    this.decoder = new RecordDecoder(dispatcher.maxRecord)
    const address = peerAddress ?? socket.remoteAddress
    const peer = address ?? 'unknown'
    this.ctx = {trusted: isLoopbackAddress(address), peer, log: dispatcher.log, readBuffer: (length) => this.arena.take(length)}
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('drain', () => {
      this.writeBlocked = false
      this.updateFlow()
    })
    socket.on('error', () => this.close())
    socket.on('close', () => (this.closed = true))
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.socket.destroy()
  }

  /** Resolves once the socket is closed (by the peer, an error or close()). */
  get finished(): Promise<void> {
    return new Promise((resolve) => (this.socket.destroyed ? resolve() : this.socket.once('close', () => resolve())))
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return
    let records: Buffer[]
    try {
      records = this.decoder.push(chunk)
    } catch (err) {
      this.dispatcher.log(`nfs: closing connection from ${this.ctx.peer}: ${(err as Error).message}`)
      this.close()
      return
    }
    for (const record of records) {
      if (this.closed) return
      this.calls++
      this.updateFlow()
      this.dispatcher
        .handle(record, this.ctx)
        .then(
          (reply) => (reply ? this.send(reply) : this.close()),
          (err) => {
            this.dispatcher.log(`nfs: internal error: ${(err as Error)?.message ?? err}`)
            this.close()
          },
        )
        .finally(() => {
          this.calls--
          // Every reply handed to the kernel (none queued in the socket) and no call in progress: reuse it all.
          if (this.calls === 0 && this.socket.writableLength === 0) this.arena.reset()
          this.updateFlow()
        })
    }
  }

  private send(parts: Buffer[]): void {
    if (this.closed) return
    const framed = frameRecord(parts)
    this.socket.cork()
    let ok = true
    for (const p of framed) ok = this.socket.write(p)
    this.socket.uncork()
    // A reply waiting in the socket's queue may hold part of the arena: leave it to them, take a new one.
    if (this.socket.writableLength > 0) this.arena.abandon()
    if (!ok) {
      this.writeBlocked = true
      this.updateFlow()
    }
  }

  /** Stop reading while too many calls are in progress or the peer is not reading its replies. */
  private updateFlow(): void {
    if (this.closed) return
    if (this.writeBlocked || this.calls >= MAX_CALLS_PER_CONNECTION) this.socket.pause()
    else this.socket.resume()
  }
}

/** Without an explicit identity: the names, the geometry and, when the source records one, its media hash. */
function defaultIdentity(server: BlockServer, opts: NfsServerOptions): string {
  const hash = (server.source as {sha256?: unknown}).sha256
  return [opts.exportName, opts.fileName, server.size, server.sectorSize, typeof hash === 'string' ? hash : ''].join('\0')
}

/**
 * What makes one server's programs, the same on the main thread and on every serving thread (thread.ts):
 * the export (its file's times in shared memory), the write verifier, the sizes and the port.
 */
export interface NfsExportConfig {
  exportName: string
  fileName: string
  size: number
  identity: string
  mtimeMs: number
  writable: boolean
  times: SharedArrayBuffer
  writeVerf: Uint8Array
  rtmax: number
  wtmax: number
  port: number
}

/** The dispatcher of the portmapper, MOUNT and NFS programs over `server` (the main thread's or a serving thread's). */
export function nfsDispatcher(server: BlockServer, cfg: NfsExportConfig, log: (line: string) => void): Dispatcher {
  const tree = new ExportTree({
    exportName: cfg.exportName,
    fileName: cfg.fileName,
    size: cfg.size,
    identity: cfg.identity,
    mtime: new Date(cfg.mtimeMs),
    writable: cfg.writable,
    times: cfg.times,
  })
  const portmap = new PortmapProgram(() => [
    {prog: PMAP_PROG, vers: PMAP_VERS, prot: IPPROTO_TCP, port: cfg.port},
    {prog: MOUNT_PROG, vers: MOUNT_V3, prot: IPPROTO_TCP, port: cfg.port},
    {prog: NFS_PROG, vers: NFS_V3, prot: IPPROTO_TCP, port: cfg.port},
  ])
  const nfs = new Nfs3Program(tree, server, {rtmax: cfg.rtmax, wtmax: cfg.wtmax, writeVerf: Buffer.from(cfg.writeVerf)})
  return new Dispatcher([portmap, new MountProgram(tree), nfs], cfg.wtmax + RECORD_OVERHEAD, log)
}

/**
 * Start serving `server`'s bytes as `opts.fileName` in export `opts.exportName`. With `opts.threads`, each
 * loopback connection is handed to a free serving thread (threads.ts), which serves it with its own instance
 * of the source; a connection that finds none free, or the threads could not start, is served here.
 */
export async function startNfsServer(server: BlockServer, opts: NfsServerOptions): Promise<NfsServerHandle> {
  const mtime = opts.mtime ?? new Date()
  const cfg: NfsExportConfig = {
    exportName: opts.exportName,
    fileName: opts.fileName,
    size: server.size,
    identity: opts.identity ?? defaultIdentity(server, opts),
    mtimeMs: mtime.getTime(),
    writable: server.writable,
    times: FileTimes.create({seconds: Math.max(0, Math.floor(mtime.getTime() / 1000)), nseconds: Math.max(0, Math.floor((mtime.getTime() % 1000) * 1e6))}),
    writeVerf: new Uint8Array(randomBytes(NFS3_WRITEVERFSIZE)),
    rtmax: opts.rtmax ?? DEFAULT_RTMAX,
    wtmax: opts.wtmax ?? DEFAULT_WTMAX,
    port: 0,
  }
  // The listener comes first: the programs answer the portmapper with its port. Connections are not read
  // until they are given to a thread or to this thread's dispatcher (pauseOnConnect).
  const pending: net.Socket[] = []
  let accept = (socket: net.Socket): void => void pending.push(socket)
  const tcp = net.createServer({pauseOnConnect: true}, (socket) => accept(socket))
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', reject)
    tcp.listen({host: opts.host, port: opts.port}, () => {
      tcp.off('error', reject)
      resolve()
    })
  })
  tcp.on('error', (err) => opts.log(`nfs: listener error: ${err.message}`))
  const addr = tcp.address() as net.AddressInfo
  cfg.port = addr.port
  let threads: NfsThreads | undefined
  if (opts.threads && opts.threads > 0) {
    try {
      threads = await NfsThreads.start(server, {count: opts.threads, cacheBytes: THREAD_CACHE_BYTES, config: cfg, log: opts.log})
    } catch (err) {
      opts.log(`nfs: serving threads unavailable, serving on the main thread: ${(err as Error).message.split('\n')[0]}`)
    }
  }
  const dispatcher = nfsDispatcher(server, cfg, opts.log)
  const connections = new Set<Connection>()
  const handed = new Set<HandedConnection>()
  let closing: Promise<void> | undefined
  let mainConnections = 0
  accept = (socket) => {
    if (closing) {
      socket.destroy()
      return
    }
    // A stranger is answered here (AUTH_ERROR / MNT3ERR_ACCES), never given a thread.
    const h = isLoopbackAddress(socket.remoteAddress) ? threads?.serve(socket) : undefined
    if (h) {
      handed.add(h)
      void h.done.then((why) => {
        handed.delete(h)
        if (why !== 'closed') opts.log(`nfs: ${why}`)
      })
      return
    }
    const c = new Connection(socket, dispatcher)
    mainConnections++
    connections.add(c)
    socket.on('close', () => connections.delete(c))
    socket.resume()
  }
  for (const socket of pending.splice(0)) accept(socket)
  return {
    host: addr.address,
    port: addr.port,
    threads: threads?.threads ?? 0,
    get threadStats() {
      return threads?.stats
    },
    get mainConnections() {
      return mainConnections
    },
    close(): Promise<void> {
      // Calls already dispatched finish (their replies go nowhere) before the caller closes the source
      // under them: otherwise a READ in flight fails with "image is closed" and logs it. A thread's
      // connection is stopped by message and its thread drains its own calls before it answers.
      closing ??= (async () => {
        threads?.hold()
        const stopped = new Promise<void>((resolve) => tcp.close(() => resolve()))
        for (const c of connections) c.close()
        await Promise.all([...handed].map((h) => h.stop()))
        await stopped
        await dispatcher.drain()
        await threads?.close()
      })()
      return closing
    },
  }
}

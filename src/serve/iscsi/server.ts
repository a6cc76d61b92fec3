/**
 * An iSCSI target over one logical unit (scsi.ts; read-write when the BlockServer is writable), RFC 7143 at
 * ErrorRecoveryLevel 0, one connection per session: the login phase (login.ts), then the full-feature
 * phase — SCSI commands answered with Data-In PDUs cut to the initiator's MaxRecvDataSegmentLength and
 * MaxBurstLength, status in the last one when the command succeeded (else a SCSI Response with sense),
 * residuals; R2T and Data-Out for the commands that need data (writes, UNMAP's parameter list, VERIFY with
 * BYTCHK: one R2T outstanding per task, each for at most MaxBurstLength); NOP-Out/NOP-In; Text (SendTargets);
 * Task Management; Logout; Reject for what it does not take. Commands run concurrently on the main
 * thread's event loop (BlockServer.read) and are answered as they finish (on a serving thread a READ of a
 * file or local image is read at once); each PDU sequence is queued in one synchronous step, so sequences
 * never interleave, and the answers of one event-loop turn go out in one writev.
 *
 * Bad bytes from a client end that connection only: a header that cannot be trusted (bad length, bad
 * digest, a login out of order) closes it; a well-framed PDU the target does not take gets a Reject.
 */
import type {Server, Socket} from 'node:net'
import type {BlockServer} from '../../core/blockserver'
import {EndOfStream, SocketReader} from '../nbd/reader'
import {LoginFailure, LoginNegotiation, TARGET_MAX_RECV_DATA_SEGMENT, PORTAL_GROUP_TAG, type Negotiated, type TargetConfig} from './login'
import * as P from './pdu'
import {LogicalUnit, newNexus, type LunIdentity, type Nexus, type ScsiResult} from './scsi'
import {ASC, SENSE_KEY, STATUS, buildSense, type SenseSpec} from './sense'
import type {HandedConnection, HandoffState, IscsiThreads} from './threads'
import {drained} from '../drained'
import {printable} from '../printable'
import {ReadArena} from '../read-arena'

/** Commands one session may have outstanding (the CmdSN window, MaxCmdSN − ExpCmdSN + 1). */
export const QUEUE_DEPTH = 32
/** Login and text data larger than this per PDU is taken for abuse (the login default is 8192, §13.12). */
const MAX_LOGIN_DATA = 64 * 1024
/** Text requests spanning PDUs (C bit): at most this much in all. */
const MAX_TEXT_TOTAL = 256 * 1024
/** Stop reading while this much reply data waits in the socket. */
const OUTPUT_HIGH_WATER = 64 * 1024 * 1024
/**
 * Data-Out buffers of one connection (collecting or being written) are at most this large together: a
 * command whose data would pass it waits for its first R2T until others finish. One command alone may
 * always go (its own length is bounded by the LU: MAX_TRANSFER_BYTES, 64 KiB for UNMAP).
 */
export const MAX_DATA_OUT_BYTES = 32 * 1024 * 1024
/**
 * READ data is read into one reused buffer of this size per connection (while it is answered at once, on a
 * serving thread); reads larger than a quarter of it get their own.
 */
const READ_ARENA_BYTES = 1024 * 1024
/** Tasks ended while waiting for Data-Out (aborted, failed) whose late Data-Out is dropped without a Reject. */
const ENDED_TASKS_REMEMBERED = 64

class ProtocolViolation extends Error {}

export interface IscsiTargetOptions extends TargetConfig {
  identity: LunIdentity
  log?: (line: string) => void
  /** Serving threads: a normal session's full-feature phase is served on one after its login (threads.ts). */
  threads?: IscsiThreads
}

/** A session's identity and state; with MaxConnections=1 it has exactly one connection. */
class Session {
  expCmdSN = 0
  /**
   * CmdSNs in the window not yet received that an ABORT TASK ended beforehand (§11.5.1 b: "considered
   * received"): ExpCmdSN steps over them, so the command, should it still come, is ignored (at most
   * QUEUE_DEPTH of them: only CmdSNs inside the window are taken).
   */
  readonly abortedAhead = new Set<number>()
  readonly nexus: Nexus = newNexus()
  connection: IscsiConnection | undefined
  constructor(
    readonly tsih: number,
    readonly isid: string,
    readonly initiatorName: string,
    readonly params: Negotiated,
  ) {}
  get maxCmdSN(): number {
    return (this.expCmdSN + QUEUE_DEPTH - 1) >>> 0
  }
  /** ExpCmdSN ≤ sn ≤ MaxCmdSN (serial arithmetic): a CmdSN the target may still receive. */
  inWindow(sn: number): boolean {
    return !P.snLess(sn, this.expCmdSN) && !P.snLess(this.maxCmdSN, sn)
  }
  /** One more CmdSN received (and any aborted ahead that follow it). */
  advance(): void {
    this.expCmdSN = (this.expCmdSN + 1) >>> 0
    while (this.abortedAhead.delete(this.expCmdSN)) this.expCmdSN = (this.expCmdSN + 1) >>> 0
  }
  get key(): string {
    return `${this.initiatorName}\0${this.isid}`
  }
}

export class IscsiTarget {
  readonly lu: LogicalUnit
  private readonly connections = new Set<IscsiConnection>()
  /** Normal and discovery sessions by initiator name + ISID (for reinstatement) and by TSIH. */
  private readonly sessions = new Map<string, Session>()
  private nextTsih = 1
  private closing = false

  constructor(
    readonly server: BlockServer,
    readonly opts: IscsiTargetOptions,
  ) {
    this.lu = new LogicalUnit(server, opts.identity)
  }

  get iqn(): string {
    return this.opts.iqn
  }

  log(line: string): void {
    this.opts.log?.(line)
  }

  attach(listener: Server): void {
    listener.on('connection', (socket: Socket) => this.handle(socket))
  }

  handle(socket: Socket): IscsiConnection {
    const c = new IscsiConnection(this, socket)
    if (this.closing) {
      c.destroy()
      return c
    }
    this.connections.add(c)
    void c.run().finally(() => this.connections.delete(c))
    return c
  }

  /** Serve a connection handed over past its login (a serving thread's side, thread.ts). */
  resume(socket: Socket, state: HandoffState, leftover: Buffer): IscsiConnection {
    const c = new IscsiConnection(this, socket)
    this.connections.add(c)
    void c.resumeRun(state, leftover).finally(() => this.connections.delete(c))
    return c
  }

  get threads(): IscsiThreads | undefined {
    return this.opts.threads
  }

  get connectionCount(): number {
    return this.connections.size
  }

  get sessionCount(): number {
    return this.sessions.size
  }

  /** A login completed: a new session, reinstating one with the same initiator and ISID (RFC 7143 §6.3.5). */
  openSession(isid: string, params: Negotiated, c: IscsiConnection): Session {
    const key = `${params.initiatorName}\0${isid}`
    const old = this.sessions.get(key)
    if (old) {
      this.log(`iscsi ${c.peer}: reinstating the session of ${printable(params.initiatorName)} (ISID ${isid})`)
      this.sessions.delete(key)
      old.connection?.destroy()
    }
    let tsih = this.nextTsih
    this.nextTsih = this.nextTsih >= 0xffff ? 1 : this.nextTsih + 1
    const s = new Session(tsih, isid, params.initiatorName, params)
    s.connection = c
    this.sessions.set(key, s)
    return s
  }

  hasSession(tsih: number): boolean {
    for (const s of this.sessions.values()) if (s.tsih === tsih) return true
    return false
  }

  closeSession(s: Session): void {
    if (this.sessions.get(s.key) === s) this.sessions.delete(s.key)
  }

  /** Stop reading new commands on every connection, answer those in flight, close the sockets. */
  async close(): Promise<void> {
    this.closing = true
    // A connection on a serving thread is stopped by message, answered by an unref'd worker: hold the threads
    // meanwhile, or the process could end (exit 0, no closing line) while it waits for the answer.
    this.opts.threads?.hold()
    await Promise.all([...this.connections].map((c) => c.shutdown()))
    await this.opts.threads?.close()
  }
}

/** A SCSI command being served. */
interface Task {
  itt: number
  lun: Buffer
  cmdSN: number
  read: boolean
  write: boolean
  edtl: number
  cdb: Buffer
  aborted: boolean
  /** Handed to the logical unit (until then it waits for Data-Out). */
  executing?: boolean
  /** Settles when the logical unit is done with it (it is answered unless aborted): what a task management function waits for. */
  ended?: Promise<void>
  /** Bytes of Data-Out the command needs (the CDB's, checked against the EDTL before anything is allocated). */
  need?: number
  /** Immediate data sent with the command (ImmediateData=No, so only from a non-conforming initiator). */
  immediate?: Buffer
  /**
   * Data-Out being gathered (R2T): the buffer, bytes received, the current R2T's target transfer tag, the
   * next R2TSN, the end of the current burst and the DataSN expected next in it.
   */
  out?: {data: Buffer; received: number; ttt: number; r2tsn: number; burstEnd: number; dataSN: number}
  /** Its Data-Out buffer was given back (MAX_DATA_OUT_BYTES accounting). */
  released?: boolean
  /** A residual the transport decided (a command refused or cut for its EDTL), instead of the one computed from the data moved. */
  residual?: {flags: number; count: number}
  /** Only the EDTL's whole blocks of a longer WRITE are asked for and written. */
  truncated?: boolean
  /** Its data may be in the connection's read arena (until it is answered). */
  arena?: boolean
}

export class IscsiConnection {
  readonly peer: string
  private readonly reader: SocketReader
  private statSN = 0
  private params: Negotiated | undefined
  private session: Session | undefined
  private readonly tasks = new Map<number, Task>()
  private inFlight = 0
  private idleWaiters: Array<() => void> = []
  private stopping = false
  private loggedOut = false
  private nextTtt = 1
  /** Bytes of Data-Out buffers allocated for this connection's tasks, and the tasks waiting for room. */
  private outBytes = 0
  private outWaiting: Task[] = []
  private readonly ended = new Set<number>()
  /**
   * Tasks a task management function ended while an R2T of theirs was outstanding, by ITT: settled when the
   * initiator has answered it (the Data-Out with the F bit), or when the connection ends or logs out.
   */
  private readonly abortedBursts = new Map<number, () => void>()
  private textBuffer: Buffer[] = []
  private textBytes = 0
  private readonly stopped: Promise<void>
  private resolveStopped!: () => void
  /**
   * In the full-feature phase command completions are queued and written together at the end of the
   * event-loop turn: the commands read from one socket read are answered with one writev.
   */
  private batching = false
  private queued: Buffer[] = []
  private flushing: NodeJS.Immediate | undefined
  /**
   * The read arena: READ data is carved from it, and it is reused from the start once every answer carved
   * from it went to the kernel whole (nothing left in Node's write queue) and no task holding a piece is
   * still to be answered; else a fresh one is taken and the old one left to the writes that hold it.
   */
  private readonly arena = new ReadArena(READ_ARENA_BYTES)
  private arenaTasks = 0
  /** Set once the full-feature phase was handed to a serving thread. */
  private handed: HandedConnection | undefined

  constructor(
    private readonly target: IscsiTarget,
    private readonly socket: Socket,
  ) {
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'local'
    this.reader = new SocketReader(socket)
    socket.setNoDelay?.(true)
    socket.on('error', (err) => this.target.log(`iscsi ${this.peer}: ${err.message}`))
    this.stopped = new Promise((r) => (this.resolveStopped = r))
  }

  /** Resolves once the connection is closed and forgotten. */
  get finished(): Promise<void> {
    return this.stopped
  }

  destroy(): void {
    this.stopping = true
    this.handed?.kill()
    this.socket.destroy()
  }

  async shutdown(): Promise<void> {
    this.stopping = true
    if (this.handed) await this.handed.stop()
    // Commands in flight are answered, then the socket is closed (which ends a read waiting for the next PDU).
    this.dropWaiting()
    await this.idle()
    this.close()
    await this.stopped
  }

  private close(): void {
    if (this.socket.destroyed) return
    this.flush()
    this.socket.end(() => this.socket.destroy())
    setTimeout(() => this.socket.destroy(), 2000).unref()
  }

  async run(): Promise<void> {
    try {
      await this.login()
      if (this.session && !this.stopping && !(await this.handOff())) await this.fullFeature()
    } catch (err) {
      if (!(err instanceof EndOfStream) && !this.stopping) this.target.log(`iscsi ${this.peer}: ${(err as Error).message}`)
    } finally {
      this.stopping = true
      this.dropWaiting()
      await this.idle()
      if (this.session) this.target.closeSession(this.session)
      this.close()
      this.resolveStopped()
    }
  }

  /** The serving thread's side: the full-feature phase of a connection whose login ran on the main thread. */
  async resumeRun(state: HandoffState, leftover: Buffer): Promise<void> {
    this.params = state.params
    const s = new Session(state.tsih, state.isid, state.params.initiatorName, state.params)
    s.expCmdSN = state.expCmdSN
    s.nexus.unitAttention = state.unitAttention
    s.connection = this
    this.session = s
    this.statSN = state.statSN
    this.reader.putBack(leftover)
    try {
      await this.fullFeature()
    } catch (err) {
      if (!(err instanceof EndOfStream) && !this.stopping) this.target.log(`iscsi ${state.peer}: ${(err as Error).message}`)
    } finally {
      this.stopping = true
      this.dropWaiting()
      await this.idle()
      this.close()
      this.resolveStopped()
    }
  }

  /**
   * Hand the full-feature phase of a normal session to a serving thread, if the target has them and one is
   * free: the socket's descriptor is duplicated for it and Node's handle closed, with any bytes already read.
   * Returns once the thread has finished with the connection; false when it stays on this thread.
   */
  private async handOff(): Promise<boolean> {
    const pool = this.target.threads
    const session = this.session!
    if (!pool || session.params.sessionType !== 'Normal' || this.stopping || this.socket.destroyed) return false
    const fd = (this.socket as unknown as {_handle?: {fd?: unknown}})._handle?.fd
    if (typeof fd !== 'number' || fd < 0) return false
    // The final login response must be on its way before the socket changes hands.
    // ('drain' would not come for a few bytes below the high-water mark: a zero-length write's callback does.)
    if (this.socket.writableLength > 0) await new Promise((resolve) => this.socket.write(Buffer.alloc(0), resolve))
    if (this.stopping || this.socket.destroyed) return false
    // From here to destroy() all is synchronous: no more data can reach the reader in between.
    const leftover = this.reader.takeBuffered()
    const state: HandoffState = {
      params: session.params,
      isid: session.isid,
      tsih: session.tsih,
      expCmdSN: session.expCmdSN,
      statSN: this.statSN,
      unitAttention: session.nexus.unitAttention,
      peer: this.peer,
    }
    const handed = pool.serve(fd, state, leftover)
    if (!handed) {
      this.reader.putBack(leftover)
      return false
    }
    this.handed = handed
    this.socket.destroy()
    const why = await handed.done
    if (why !== 'closed') this.target.log(`iscsi ${this.peer}: ${why}`)
    return true
  }

  // ---- reading PDUs ----

  private async readPdu(maxData: number): Promise<{bhs: P.Bhs; data: Buffer}> {
    const raw = this.reader.tryRead(P.BHS_SIZE) ?? (await this.reader.read(P.BHS_SIZE))
    const bhs = P.decodeBhs(Buffer.from(raw))
    const ahs = bhs.ahsLength > 0 ? await this.reader.read(bhs.ahsLength) : Buffer.alloc(0)
    if (this.params?.headerDigest) {
      const got = await this.reader.read(4)
      if (!got.equals(P.digest([bhs.raw, ahs]))) throw new ProtocolViolation('header digest mismatch')
    }
    if (bhs.dataLength > maxData) {
      this.reject(bhs, P.REJECT.protocolError)
      throw new ProtocolViolation(`data segment of ${bhs.dataLength} bytes (at most ${maxData})`)
    }
    let data: Buffer = Buffer.alloc(0)
    if (bhs.dataLength > 0) {
      const padded = await this.reader.read(bhs.dataLength + P.pad4(bhs.dataLength))
      if (this.params?.dataDigest) {
        const got = await this.reader.read(4)
        if (!got.equals(P.digest([padded]))) {
          this.reject(bhs, P.REJECT.dataDigest)
          return this.readPdu(maxData)
        }
      }
      data = padded.subarray(0, bhs.dataLength)
    }
    ;(bhs as P.Bhs & {ahs?: Buffer}).ahs = ahs
    return {bhs, data}
  }

  // ---- writing PDUs ----

  /** Encode one PDU: BHS, header digest, data padded, data digest. */
  private pdu(bhs: Buffer, data?: Buffer): Buffer[] {
    const parts = [bhs]
    const p = this.params
    if (p?.headerDigest && this.session) parts.push(P.digest([bhs]))
    if (data && data.length > 0) {
      const pad = P.pad4(data.length)
      parts.push(data)
      if (pad) parts.push(Buffer.alloc(pad))
      if (p?.dataDigest && this.session) parts.push(P.digest(pad ? [data, Buffer.alloc(pad)] : [data]))
    }
    return parts
  }

  /**
   * Write PDUs. A command's completion (`batch`) in the full-feature phase is queued and written at the end of
   * the event-loop turn with the others; anything else goes at once, after what is queued.
   */
  private write(parts: Buffer[], batch = false): void {
    if (this.socket.destroyed || this.socket.writableEnded) return
    if (batch && this.batching) {
      for (const p of parts) this.queued.push(p)
      this.flushing ??= setImmediate(() => this.flush())
      return
    }
    if (this.queued.length > 0) {
      this.queued.push(...parts)
      this.flush()
    } else this.send(parts)
  }

  /** What the full-feature phase wrote this event-loop turn, in one writev. */
  private flush(): void {
    if (this.flushing) clearImmediate(this.flushing)
    this.flushing = undefined
    if (this.queued.length === 0) return
    const q = this.queued
    this.queued = []
    if (!this.socket.destroyed && !this.socket.writableEnded) this.send(q)
    if (this.socket.writableLength > 0) this.arena.abandon()
    else if (this.arenaTasks === 0) this.arena.reset()
  }

  /** `length` bytes of the read arena for a task's READ data, or undefined (too large: a buffer of its own). */
  private arenaBuffer(task: Task, length: number): Buffer | undefined {
    const b = this.arena.take(length)
    if (!b) return undefined
    if (!task.arena) {
      task.arena = true
      this.arenaTasks++
    }
    return b
  }

  private send(parts: Buffer[]): void {
    this.socket.cork()
    for (const p of parts) this.socket.write(p)
    this.socket.uncork()
  }

  /** ExpCmdSN and MaxCmdSN at bytes 28 and 32 of a target PDU. */
  private numbers(b: Buffer): void {
    const s = this.session
    if (!s) return
    b.writeUInt32BE(s.expCmdSN >>> 0, 28)
    b.writeUInt32BE(s.maxCmdSN, 32)
  }

  /** The next StatSN, advanced (every response but R2T, Data-In without status and unsolicited NOP-In). */
  private nextStatSN(): number {
    const n = this.statSN
    this.statSN = (this.statSN + 1) >>> 0
    return n
  }

  private reject(bhs: P.Bhs, reason: number): void {
    const b = P.newBhs(P.OP_REJECT, P.F_FINAL, P.BHS_SIZE, P.NO_TAG)
    b[2] = reason
    b.writeUInt32BE(this.nextStatSN(), 24)
    this.numbers(b)
    this.write(this.pdu(b, bhs.raw))
  }

  // ---- login ----

  private async login(): Promise<void> {
    const neg = new LoginNegotiation(this.target.opts)
    let first = true
    let isid = ''
    let tsih = 0
    let cid = 0
    let pending: Array<[string, string]> = []
    for (;;) {
      if (this.stopping) return
      const {bhs, data} = await this.readPdu(MAX_LOGIN_DATA)
      if (bhs.opcode !== P.OP_LOGIN_REQ) throw new ProtocolViolation(`opcode 0x${bhs.opcode.toString(16)} before the login completed`)
      const b = bhs.raw
      const transit = (b[1] & P.LOGIN_TRANSIT) !== 0
      const cont = (b[1] & P.LOGIN_CONTINUE) !== 0
      const csg = (b[1] >> 2) & 3
      const nsg = b[1] & 3
      const thisIsid = b.subarray(8, 14).toString('hex')
      const cmdSN = b.readUInt32BE(24)
      if (first) {
        isid = thisIsid
        tsih = b.readUInt16BE(14)
        cid = b.readUInt16BE(20)
        this.statSN = b.readUInt32BE(28) // start where the initiator expects (ExpStatSN), as targets commonly do
      }
      const respond = (status: number, keys: Array<[string, string]>, answer?: {transit: boolean; csg: number; nsg: number}, final = false, newTsih = 0) => {
        const text = P.encodeText(keys)
        const r = P.newBhs(P.OP_LOGIN_RSP, 0, text.length, bhs.itt)
        if (answer) r[1] = (answer.transit ? P.LOGIN_TRANSIT : 0) | (answer.csg << 2) | (answer.transit ? answer.nsg : 0)
        r[2] = 0x00 // Version-max
        r[3] = 0x00 // Version-active
        b.copy(r, 8, 8, 14)
        r.writeUInt16BE(final ? newTsih : tsih, 14)
        r.writeUInt32BE(this.nextStatSN(), 24)
        r.writeUInt32BE(cmdSN >>> 0, 28)
        r.writeUInt32BE((cmdSN + QUEUE_DEPTH - 1) >>> 0, 32)
        r[36] = status >> 8
        r[37] = status & 0xff
        this.write(this.pdu(r, text))
      }
      const fail = (status: number, why: string) => {
        respond(status, [], {transit: false, csg, nsg: 0})
        this.target.log(`iscsi ${this.peer}: login refused: ${why}`)
        this.stopping = true
      }
      if (!first && (thisIsid !== isid || b.readUInt16BE(14) !== tsih)) return fail(P.LOGIN_STATUS.initiatorError, 'ISID or TSIH changed during the login')
      if (first && (b[3] > 0 || b[2] < b[3])) return fail(P.LOGIN_STATUS.unsupportedVersion, `version ${b[3]}..${b[2]} (this target speaks 0)`)
      if (transit && cont) return fail(P.LOGIN_STATUS.initiatorError, 'T and C set together')
      let keys: Array<[string, string]>
      try {
        keys = P.parseText(data)
      } catch (err) {
        return fail(P.LOGIN_STATUS.initiatorError, (err as Error).message)
      }
      pending.push(...keys)
      if (cont) {
        // More text follows in the next request: acknowledge with an empty response (§6.4).
        if (pending.length > 1024) return fail(P.LOGIN_STATUS.initiatorError, 'too many keys')
        respond(P.LOGIN_STATUS.success, [], {transit: false, csg, nsg: 0})
        continue
      }
      let answer
      try {
        answer = neg.step({csg, nsg, transit, keys: pending, first})
      } catch (err) {
        if (err instanceof LoginFailure) return fail(err.status, err.message)
        throw err
      }
      pending = []
      if (first && tsih !== 0) {
        // Adding a connection to a session: MaxConnections is 1 (and ERL 0 has no connection recovery).
        return fail(this.target.hasSession(tsih) ? P.LOGIN_STATUS.tooManyConnections : P.LOGIN_STATUS.sessionDoesNotExist, `login for TSIH ${tsih}`)
      }
      first = false
      if (answer.transit && answer.nsg === P.STAGE_FULL_FEATURE) {
        const params = neg.result
        this.params = params
        const session = this.target.openSession(isid, params, this)
        session.expCmdSN = cmdSN >>> 0
        respond(P.LOGIN_STATUS.success, answer.keys, answer, true, session.tsih)
        // Digests apply from the first PDU after the final login response.
        this.session = session
        this.target.log(
          `iscsi ${this.peer}: ${params.sessionType === 'Discovery' ? 'discovery session' : 'session'} ${session.tsih} of ${printable(params.initiatorName)} (CID ${cid}${params.headerDigest ? ', header digest' : ''}${params.dataDigest ? ', data digest' : ''})`,
        )
        return
      }
      respond(P.LOGIN_STATUS.success, answer.keys, answer)
    }
  }

  // ---- full feature phase ----

  private async fullFeature(): Promise<void> {
    const session = this.session!
    this.batching = true
    for (;;) {
      if (this.stopping || this.loggedOut) return
      if (this.socket.writableLength > OUTPUT_HIGH_WATER && !this.socket.destroyed) await this.drained()
      const {bhs, data} = await this.readPdu(TARGET_MAX_RECV_DATA_SEGMENT)
      if (this.stopping) return
      switch (bhs.opcode) {
        case P.OP_NOP_OUT:
          this.nopOut(bhs, data)
          break
        case P.OP_SCSI_CMD:
          if (session.params.sessionType === 'Discovery') {
            this.reject(bhs, P.REJECT.protocolError)
            break
          }
          this.scsiCommand(bhs, data)
          break
        case P.OP_DATA_OUT:
          this.dataOut(bhs, data)
          break
        case P.OP_TEXT_REQ:
          this.text(bhs, data)
          break
        case P.OP_TMF_REQ:
          this.taskManagement(bhs)
          break
        case P.OP_LOGOUT_REQ:
          await this.logout(bhs)
          return
        case P.OP_LOGIN_REQ:
          // A login on a connection in full feature phase is a protocol error (§6.3).
          this.reject(bhs, P.REJECT.protocolError)
          throw new ProtocolViolation('login request in full feature phase')
        case P.OP_SNACK:
          // ErrorRecoveryLevel 0: no SNACK (§11.16).
          this.reject(bhs, P.REJECT.snack)
          break
        default:
          this.reject(bhs, P.REJECT.notSupported)
      }
    }
  }

  /**
   * CmdSN ordering (§4.2.2.1): a non-immediate command must carry ExpCmdSN, which then advances; one
   * outside the window is ignored. Returns false for a command to ignore.
   */
  private acceptCmdSN(bhs: P.Bhs): boolean {
    const s = this.session!
    const cmdSN = bhs.raw.readUInt32BE(24)
    if (bhs.immediate) return true
    if (cmdSN !== s.expCmdSN) {
      this.target.log(`iscsi ${this.peer}: ignoring opcode 0x${bhs.opcode.toString(16)} with CmdSN ${cmdSN} (expected ${s.expCmdSN})`)
      return false
    }
    s.advance()
    return true
  }

  private nopOut(bhs: P.Bhs, data: Buffer): void {
    if (bhs.itt === P.NO_TAG) {
      // A reply to a NOP-In of ours (we send none) or a ping that wants no answer; it carries no CmdSN of its own.
      if (!bhs.immediate) this.target.log(`iscsi ${this.peer}: NOP-Out without a task tag must be immediate`)
      return
    }
    if (!this.acceptCmdSN(bhs)) return
    const ping = data.subarray(0, Math.min(data.length, this.params!.initiatorMaxRecv))
    const b = P.newBhs(P.OP_NOP_IN, P.F_FINAL, ping.length, bhs.itt)
    bhs.raw.copy(b, 8, 8, 16)
    b.writeUInt32BE(P.NO_TAG, 20)
    b.writeUInt32BE(this.nextStatSN(), 24)
    this.numbers(b)
    this.write(this.pdu(b, ping))
  }

  private scsiCommand(bhs: P.Bhs, data: Buffer): void {
    const b = bhs.raw
    if (!this.acceptCmdSN(bhs)) return
    const ahs = (bhs as P.Bhs & {ahs?: Buffer}).ahs ?? Buffer.alloc(0)
    let cdb = b.subarray(32, 48)
    // An extended CDB (AHS type 1, §11.2.1.3) continues the 16 bytes of the header.
    if (ahs.length >= 4 && ahs[2] === 0x01) {
      const len = ahs.readUInt16BE(0)
      cdb = Buffer.concat([cdb, ahs.subarray(4, 4 + Math.max(0, len - 1))])
    }
    const task: Task = {
      itt: bhs.itt,
      lun: Buffer.from(b.subarray(8, 16)),
      cmdSN: b.readUInt32BE(24),
      read: (b[1] & P.CMD_READ) !== 0,
      write: (b[1] & P.CMD_WRITE) !== 0,
      edtl: b.readUInt32BE(20),
      cdb: Buffer.from(cdb),
      aborted: false,
    }
    if (this.tasks.has(task.itt)) {
      this.reject(bhs, P.REJECT.taskInProgress)
      return
    }
    this.ended.delete(task.itt)
    const lu = this.target.lu
    // What the CDB says it will send (its transfer length × block size, already bounded by the LU), never
    // what the header says: EDTL only limits it.
    let need = lu.dataOutLength(task.cdb)
    const edtl = task.write ? task.edtl : 0
    this.tasks.set(task.itt, task)
    this.inFlight++
    if (need > 0 && edtl < need && lu.truncatable(task.cdb) && edtl % lu.blockSize === 0) {
      // A WRITE whose EDTL is short of the CDB's length by whole blocks: only EDTL is asked for and written,
      // GOOD with the overflow residual (FCP-4 choice (a), what libiscsi 1.19's residual tests expect).
      task.residual = {flags: P.RSP_OVERFLOW, count: need - edtl}
      task.truncated = true
      need = edtl
    }
    if (need === 0) {
      void this.execute(task)
      return
    }
    if (edtl < need || (edtl !== need && lu.exactDataOut(task.cdb))) {
      // EDTL short of the CDB's length by a part of a block (or, for WRITE SAME, COMPARE AND WRITE, any other
      // length): no data is asked for and nothing written (FCP-4 choice (b)): CHECK CONDITION, INVALID FIELD IN
      // COMMAND INFORMATION UNIT, and the residual of the difference.
      task.residual = edtl < need ? {flags: P.RSP_OVERFLOW, count: need - edtl} : {flags: P.RSP_UNDERFLOW, count: edtl - need}
      this.complete(task, failure({key: SENSE_KEY.illegalRequest, asc: ASC.invalidFieldInIu}))
      return
    }
    task.need = need
    if (data.length > 0) task.immediate = Buffer.from(data.subarray(0, need))
    this.outWaiting.push(task)
    this.pumpDataOut()
  }

  /** Start collecting Data-Out for waiting tasks while their buffers fit in MAX_DATA_OUT_BYTES (one always may). */
  private pumpDataOut(): void {
    while (this.outWaiting.length > 0) {
      const task = this.outWaiting[0]
      if (this.tasks.get(task.itt) !== task || task.aborted) {
        this.outWaiting.shift()
        continue
      }
      const need = task.need!
      if (this.outBytes > 0 && this.outBytes + need > MAX_DATA_OUT_BYTES) return
      this.outWaiting.shift()
      this.outBytes += need
      const out = {data: Buffer.alloc(need), received: 0, ttt: 0, r2tsn: 0, burstEnd: 0, dataSN: 0}
      task.out = out
      if (task.immediate) {
        task.immediate.copy(out.data, 0)
        out.received = task.immediate.length
        task.immediate = undefined
      }
      if (out.received >= need) void this.execute(task)
      else this.r2t(task)
    }
  }

  /** Give a task's Data-Out buffer back (once) and let waiting tasks start. */
  private releaseDataOut(task: Task): void {
    if (!task.out || task.released) return
    task.released = true
    this.outBytes -= task.out.data.length
    task.out = {...task.out, data: Buffer.alloc(0)}
    this.pumpDataOut()
  }

  /** Remember a task that ended while Data-Out may still be on its way (bounded). */
  private forget(itt: number): void {
    this.ended.add(itt)
    if (this.ended.size > ENDED_TASKS_REMEMBERED) this.ended.delete(this.ended.values().next().value!)
  }

  /** One R2T for the next burst (MaxOutstandingR2T=1: the next one only when this burst is complete). */
  private r2t(task: Task): void {
    const out = task.out!
    const len = Math.min(out.data.length - out.received, this.params!.maxBurstLength)
    out.ttt = this.nextTtt
    this.nextTtt = this.nextTtt >= 0xfffffffe ? 1 : this.nextTtt + 1
    out.burstEnd = out.received + len
    out.dataSN = 0 // DataSN counts the Data-Out PDUs of each R2T's sequence from 0 (§11.7.5)
    const b = P.newBhs(P.OP_R2T, P.F_FINAL, 0, task.itt)
    task.lun.copy(b, 8)
    b.writeUInt32BE(out.ttt, 20)
    b.writeUInt32BE(this.statSN, 24) // not advanced
    this.numbers(b)
    b.writeUInt32BE(out.r2tsn++, 36)
    b.writeUInt32BE(out.received, 40)
    b.writeUInt32BE(len, 44)
    this.write(this.pdu(b))
  }

  /**
   * A Data-Out PDU. For a task waiting for it, under the current R2T's TTT, in order (DataSN from 0 in each
   * R2T's sequence, offset = the bytes received, within the burst; DataPDUInOrder=Yes): copied into the
   * task's buffer; the F bit ends the burst, then the next R2T or the command runs. A Data-Out for no task
   * (an unknown ITT) or another TTT, or unsolicited (InitialR2T=Yes), gets a Reject (invalid PDU field) and
   * changes nothing; one for a task that just ended (aborted or failed) is dropped. One out of sequence (a
   * wrong DataSN — an implied digest error, §7.9 —, offset or amount) gets a Reject and ends its task with
   * CHECK CONDITION, ABORTED COMMAND (§7.3: a Reject never ends a task by itself). The connection goes on.
   */
  private dataOut(bhs: P.Bhs, data: Buffer): void {
    const task = this.tasks.get(bhs.itt)
    const out = task?.out
    const ttt = bhs.raw.readUInt32BE(20)
    if (!task && (this.ended.has(bhs.itt) || this.abortedBursts.has(bhs.itt))) {
      if (bhs.flags & P.F_FINAL) this.abortedBursts.get(bhs.itt)?.()
      return
    }
    if (!task || !out || task.executing || out.received >= out.data.length || ttt !== out.ttt) {
      this.target.log(`iscsi ${this.peer}: Data-Out for ${task ? `task ${bhs.itt}, which is not waiting for it under TTT ${ttt}` : `no task (ITT ${bhs.itt})`}: rejected`)
      this.reject(bhs, P.REJECT.invalidField)
      return
    }
    const dataSN = bhs.raw.readUInt32BE(36)
    const offset = bhs.raw.readUInt32BE(40)
    if (dataSN !== out.dataSN) return this.dataOutFailed(task, bhs, ASC.protocolServiceCrcError, `DataSN ${dataSN}, expected ${out.dataSN}`)
    if (offset !== out.received) return this.dataOutFailed(task, bhs, ASC.dataOffsetError, `buffer offset ${offset}, expected ${out.received}`)
    if (offset + data.length > out.burstEnd) return this.dataOutFailed(task, bhs, ASC.incorrectAmountOfData, `${data.length} bytes at ${offset}: past the burst's end (${out.burstEnd})`)
    data.copy(out.data, offset)
    out.received += data.length
    out.dataSN++
    if ((bhs.flags & P.F_FINAL) === 0) return
    if (out.received < out.burstEnd) return this.dataOutFailed(task, bhs, ASC.incorrectAmountOfData, `the burst ended at ${out.received} of ${out.burstEnd} bytes`)
    if (out.received >= out.data.length) void this.execute(task)
    else this.r2t(task)
  }

  private dataOutFailed(task: Task, bhs: P.Bhs, asc: number, why: string): void {
    this.target.log(`iscsi ${this.peer}: Data-Out of task ${task.itt} out of sequence (${why}): rejected, the command ends with ABORTED COMMAND`)
    this.reject(bhs, P.REJECT.invalidField)
    this.forget(task.itt)
    this.complete(task, failure({key: SENSE_KEY.abortedCommand, asc}))
  }

  /** Answer a task that does not run (or ran) and forget it. */
  private complete(task: Task, result: ScsiResult): void {
    if (!task.aborted && this.tasks.get(task.itt) === task) this.respond(task, result)
    if (task.arena) {
      task.arena = false
      this.arenaTasks--
    }
    if (this.tasks.get(task.itt) === task) this.tasks.delete(task.itt)
    this.releaseDataOut(task)
    this.finish()
  }

  /** Commands still waiting for Data-Out will not get it: they end unanswered. */
  private dropWaiting(): void {
    for (const settle of [...this.abortedBursts.values()]) settle()
    this.outWaiting = []
    for (const t of [...this.tasks.values()]) {
      if (t.executing) continue
      this.tasks.delete(t.itt)
      this.releaseDataOut(t)
      this.finish()
    }
  }

  private execute(task: Task): Promise<void> {
    task.executing = true
    task.ended = this.runTask(task)
    return task.ended
  }

  private async runTask(task: Task): Promise<void> {
    let result: ScsiResult
    try {
      const buffer = (n: number) => this.arenaBuffer(task, n)
      result = await this.target.lu.execute({cdb: task.cdb, lun: flatLun(task.lun), expectedLength: task.edtl, dataOut: task.out?.data, truncated: task.truncated, buffer}, this.session!.nexus)
    } catch (err) {
      this.target.log(`iscsi ${this.peer}: command 0x${task.cdb[0].toString(16)} failed: ${(err as Error).message}`)
      result = failure({key: SENSE_KEY.hardwareError, asc: ASC.internalTargetFailure})
    }
    this.complete(task, result)
  }

  /** Data-In PDUs within the initiator's segment and burst sizes, then status (in the last Data-In or a SCSI Response). */
  private respond(task: Task, r: ScsiResult): void {
    const p = this.params!
    const full = r.data.length
    const send = task.read ? Math.min(full, task.edtl) : 0
    const transferred = task.write ? (task.out?.received ?? 0) : send
    let residualFlags = 0
    let residual = 0
    if (task.residual) {
      residualFlags = task.residual.flags
      residual = task.residual.count
    } else if (task.read && full > task.edtl) {
      residualFlags = P.RSP_OVERFLOW
      residual = full - task.edtl
    } else if (transferred < task.edtl) {
      residualFlags = P.RSP_UNDERFLOW
      residual = task.edtl - transferred
    }
    const collapse = r.status === 0 && !r.sense && send > 0
    const parts: Buffer[] = []
    let dataSN = 0
    for (let burst = 0; burst < send; burst += p.maxBurstLength) {
      const burstEnd = Math.min(send, burst + p.maxBurstLength)
      for (let off = burst; off < burstEnd; off += p.initiatorMaxRecv) {
        const len = Math.min(p.initiatorMaxRecv, burstEnd - off)
        const lastInBurst = off + len >= burstEnd
        const last = off + len >= send
        const b = P.newBhs(P.OP_DATA_IN, lastInBurst ? P.F_FINAL : 0, len, task.itt)
        task.lun.copy(b, 8)
        b.writeUInt32BE(P.NO_TAG, 20)
        if (last && collapse) {
          b[1] |= P.DATAIN_STATUS | residualFlags
          b[3] = r.status
          b.writeUInt32BE(this.nextStatSN(), 24)
          b.writeUInt32BE(residual, 44)
        }
        this.numbers(b)
        b.writeUInt32BE(dataSN++, 36)
        b.writeUInt32BE(off, 40)
        parts.push(...this.pdu(b, r.data.subarray(off, off + len)))
      }
    }
    if (!collapse) {
      const senseData = r.sense ? Buffer.concat([u16(r.sense.length), r.sense]) : undefined
      const b = P.newBhs(P.OP_SCSI_RSP, P.F_FINAL | residualFlags, senseData?.length ?? 0, task.itt)
      b[2] = 0x00 // command completed at target
      b[3] = r.status
      b.writeUInt32BE(this.nextStatSN(), 24)
      this.numbers(b)
      b.writeUInt32BE(dataSN + (task.out?.r2tsn ?? 0), 36) // ExpDataSN: the R2T and Data-In PDUs sent (§11.4.6)
      b.writeUInt32BE(residual, 44)
      parts.push(...this.pdu(b, senseData))
    }
    this.write(parts, true)
  }

  private text(bhs: P.Bhs, data: Buffer): void {
    if (!this.acceptCmdSN(bhs)) return
    this.textBuffer.push(data)
    this.textBytes += data.length
    if (this.textBytes > MAX_TEXT_TOTAL) {
      this.textBuffer = []
      this.textBytes = 0
      this.reject(bhs, P.REJECT.protocolError)
      return
    }
    const cont = (bhs.flags & 0x40) !== 0
    let reply: Array<[string, string]> = []
    if (!cont) {
      const all = Buffer.concat(this.textBuffer)
      this.textBuffer = []
      this.textBytes = 0
      let keys: Array<[string, string]>
      try {
        keys = P.parseText(all)
      } catch {
        this.reject(bhs, P.REJECT.protocolError)
        return
      }
      for (const [k, v] of keys) {
        if (k === 'SendTargets') reply.push(...this.sendTargets(v))
        else reply.push([k, 'NotUnderstood'])
      }
    }
    const text = P.encodeText(reply)
    const cut = text.subarray(0, Math.min(text.length, this.params!.initiatorMaxRecv))
    if (cut.length < text.length) reply = [] // too long for one PDU: this target has one name and one address, so never
    const b = P.newBhs(P.OP_TEXT_RSP, cont ? 0 : P.F_FINAL, cut.length, bhs.itt)
    bhs.raw.copy(b, 8, 8, 16)
    // A continued request is answered with a target transfer tag the initiator echoes (§11.10.4).
    b.writeUInt32BE(cont ? 0x1 : P.NO_TAG, 20)
    b.writeUInt32BE(this.nextStatSN(), 24)
    this.numbers(b)
    this.write(this.pdu(b, cut))
  }

  /** SendTargets=All (or our name): our name, and the address this connection reached (never one the initiator may not reach). */
  private sendTargets(v: string): Array<[string, string]> {
    const iqn = this.target.iqn
    const isDiscovery = this.params!.sessionType === 'Discovery'
    if (v === 'All' ? !isDiscovery : v !== '' && v !== iqn) return []
    const out: Array<[string, string]> = [['TargetName', iqn]]
    let host = this.socket.localAddress
    const port = this.socket.localPort
    if (host && port) {
      host = host.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1')
      out.push(['TargetAddress', `${host.includes(':') ? `[${host}]` : host}:${port},${PORTAL_GROUP_TAG}`])
    }
    return out
  }

  /**
   * Task management (§11.5). The tasks a function ends are over before it is answered, and none of them is
   * answered: one waiting for Data-Out ends at once, but an R2T of its that is outstanding must be answered
   * by the initiator first (RFC 3720 §10.6.2: the target "waits for all target transfer tags to be responded
   * to"; an initiator may still be sending that Data-Out — libiscsi 1.19 crashes if the answer comes before it
   * has); one running when its read or write returns (nothing it does reaches the medium after FUNCTION
   * COMPLETE, SAM-5). Reading goes on meanwhile (the Data-Out has to be read).
   * ABORT TASK of a tag no task has (§11.5.1): if its RefCmdSN is in the window and before the request's own
   * CmdSN the command has not arrived yet — FUNCTION COMPLETE, and that CmdSN is taken as received (the
   * command is ignored should it still come); otherwise it was answered already — TASK DOES NOT EXIST.
   */
  private taskManagement(bhs: P.Bhs): void {
    const b = bhs.raw
    const fn = b[1] & 0x7f
    const ref = b.readUInt32BE(20)
    const refCmdSN = b.readUInt32BE(32)
    const lun = flatLun(b.subarray(8, 16))
    const cmdSN = b.readUInt32BE(24)
    if (!this.acceptCmdSN(bhs)) return
    const session = this.session!
    let response: number = P.TMF_RESPONSE.complete
    const waits: Array<Promise<void>> = []
    const abort = (t: Task) => {
      t.aborted = true
      this.tasks.delete(t.itt)
      if (t.executing) {
        if (t.ended) waits.push(t.ended)
        return
      }
      const out = t.out
      if (out && !t.released && out.received < out.burstEnd) {
        waits.push(
          new Promise<void>((resolve) =>
            this.abortedBursts.set(t.itt, () => {
              this.abortedBursts.delete(t.itt)
              resolve()
            }),
          ),
        )
      }
      // Its buffer given back; Data-Out still on its way for it is dropped.
      this.forget(t.itt)
      this.releaseDataOut(t)
      this.finish()
    }
    switch (fn) {
      case P.TMF.abortTask: {
        const t = this.tasks.get(ref)
        if (t) abort(t)
        else if (session.inWindow(refCmdSN) && P.snLess(refCmdSN, cmdSN)) {
          if (refCmdSN === session.expCmdSN) session.advance()
          else session.abortedAhead.add(refCmdSN)
        } else response = P.TMF_RESPONSE.noTask
        break
      }
      case P.TMF.abortTaskSet:
      case P.TMF.clearTaskSet:
      case P.TMF.lunReset:
        if (lun !== 0) response = P.TMF_RESPONSE.noLun
        else for (const t of [...this.tasks.values()]) abort(t)
        break
      case P.TMF.targetWarmReset:
        for (const t of [...this.tasks.values()]) abort(t)
        break
      case P.TMF.clearAca:
        break
      case P.TMF.taskReassign:
        response = P.TMF_RESPONSE.reassignUnsupported
        break
      case P.TMF.targetColdReset:
        response = P.TMF_RESPONSE.unsupported
        break
      default:
        response = P.TMF_RESPONSE.rejected
    }
    const answer = () => {
      const r = P.newBhs(P.OP_TMF_RSP, P.F_FINAL, 0, bhs.itt)
      r[2] = response
      r.writeUInt32BE(this.nextStatSN(), 24)
      this.numbers(r)
      this.write(this.pdu(r))
    }
    if (waits.length === 0) return answer()
    // Counted in flight, so a logout or a shutdown answers it before its own answer.
    this.inFlight++
    void Promise.all(waits)
      .then(answer, (err) => {
        this.target.log(`iscsi ${this.peer}: task management: ${(err as Error).message}`)
        this.socket.destroy()
      })
      .finally(() => this.finish())
  }

  private async logout(bhs: P.Bhs): Promise<void> {
    const b = bhs.raw
    const reason = b[1] & 0x7f
    this.acceptCmdSN(bhs)
    // Commands in flight are answered first (§11.14: the response follows all outstanding ones); one still
    // waiting for Data-Out will not get it.
    this.dropWaiting()
    await this.idle()
    const r = P.newBhs(P.OP_LOGOUT_RSP, P.F_FINAL, 0, bhs.itt)
    r[2] = reason === 2 ? 2 : 0 // closing for recovery is not supported (ERL 0)
    r.writeUInt32BE(this.nextStatSN(), 24)
    this.numbers(r)
    r.writeUInt16BE(2, 40) // Time2Wait
    r.writeUInt16BE(0, 42) // Time2Retain
    this.write(this.pdu(r))
    this.loggedOut = true
    if (this.session) this.target.closeSession(this.session)
  }

  private finish(): void {
    this.inFlight--
    if (this.inFlight === 0) for (const f of this.idleWaiters.splice(0)) f()
  }

  private idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /** Resolves when the socket's output buffer drains (or the socket closes). */
  private drained(): Promise<void> {
    return drained(this.socket)
  }
}

/** CHECK CONDITION with this sense, no data. */
function failure(s: SenseSpec): ScsiResult {
  return {status: STATUS.checkCondition, data: Buffer.alloc(0), sense: buildSense(s), senseSpec: s}
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(n, 0)
  return b
}

/** The LUN of SAM-5's single-level peripheral or flat addressing (§4.6.7): what initiators send for LUN 0..16383. */
export function flatLun(l: Buffer): number {
  const method = l[0] >> 6
  if (l.subarray(2).some((x) => x !== 0)) return -1
  if (method === 0 || method === 1) return ((l[0] & 0x3f) << 8) | l[1]
  return -1
}

/**
 * One ublk hardware queue: its io_uring, the mmapped descriptor array, and the FETCH_REQ /
 * COMMIT_AND_FETCH_REQ loop (include/uapi/linux/ublk_cmd.h).
 *
 * The driver requires every command of a queue to come from the task that issued its FETCH_REQs. A queue runs
 * in one of two ways. On an event loop (the main thread, which owns the BlockServer): it never blocks — the
 * ring fd is watched by the event loop (koffi's uv_poll), a completion for one tag is turned into a
 * BlockServer read, and the COMMIT_AND_FETCH_REQs of everything answered in one turn of the loop go to the
 * kernel in one io_uring_enter. Blocking (`blocking: true`, on a serving thread of its own, thread.ts):
 * runBlocking() waits in io_uring_enter, answers each request synchronously from a sync-mode source, and sends
 * the answers with its next wait, as ublksrv's queue loop does.
 *
 * Either way the BlockServer counts what is served and logs faults (its onFault); the queue only maps a
 * failure to its errno.
 *
 * Data moves with UBLK_F_USER_COPY when the kernel has it: the read's bytes are pwrite()n to /dev/ublkcN at the
 * request's position, from the queue's thread (the driver does not care which thread copies), and a write's
 * bytes pread() from there. Without it, each tag owns a buffer whose address goes in the FETCH/COMMIT command:
 * the driver copies a read's data from it on commit, and a write's data into it before the fetch completes.
 *
 * A writable server (an overlay, `attach --overlay`): writes, flushes, discards and write-zeroes become the
 * BlockServer's write/flush/trim/zero, answered when they settle. On a serving thread the source is a view of
 * the overlay (src/layers/overlay-view.ts) whose calls to the owner complete before they return, so their
 * promises are already settled: runBlocking() lets them run out (one microtask checkpoint) before it sends
 * the turn's answers.
 */
import * as fs from 'node:fs'
import {errnoOf, type BlockServer} from '../../../src/core/blockserver'
import {ERRNO} from '../../../src/sys/errno'
import {koffi, SysError} from '../../../src/sys/libc'
import * as abi from './abi'
import {bufferAddress, IORING_OP_URING_CMD, IoUring, io_uring_sqe, mapShared, prepMsgRing, unmap, setUserData, SQE_CMD, SQE_CMD_OP, type Cqe, type Mapping} from '../../../src/sys/io_uring'

// Results are negative errnos; the block layer maps any it does not know to BLK_STS_IOERR.
const {EIO, EINTR, EOPNOTSUPP} = ERRNO

export interface UblkQueueOptions {
  devId: number
  qid: number
  depth: number
  maxIoBytes: number
  /** /dev/ublkcN, opened once for the device (the driver allows a single opener). */
  cdevFd: number
  userCopy: boolean
  server: BlockServer
  log: (line: string) => void
  /**
   * Serve on a thread of its own (thread.ts): no event loop — runBlocking() waits in io_uring_enter
   * and answers each request synchronously through BlockServer.readSync (a sync-mode source).
   */
  blocking?: boolean
  /**
   * Blocking mode: one unit of work ahead of the readers for a queue with no request (ServingThreadContext.
   * workAhead): true when it did one. Called until no request waits, before the queue sleeps in io_uring_enter.
   */
  workAhead?: () => boolean
  /**
   * Blocking mode with workAhead, several queues: per queue [ring fd, asleep] (Int32, QUEUE_LINK_SLOTS each),
   * shared by the device's queue threads. A queue that takes a large read wakes the others asleep with a
   * message to their ring (IORING_OP_MSG_RING), so that they decode ahead: a reader on one CPU sends every
   * request to one queue, and the other threads would otherwise sleep through it.
   */
  links?: SharedArrayBuffer
}

/** Int32 slots per queue in UblkQueueOptions.links: ring fd (-1: none), asleep in io_uring_enter (1). */
export const QUEUE_LINK_SLOTS = 2
/** user_data of the CQE a sibling queue posts to wake this one (above every tag: onCompletion ignores it). */
const WAKE_USER_DATA = 0xffff_fff0
/** A read this large wakes the sibling queues to decode some of it and what follows; a 4 KiB one does not. */
const WAKE_BYTES = 128 * 1024

type TagState = 'idle' | 'fetching' | 'serving' | 'aborted'

export class UblkQueue {
  private readonly ring: IoUring
  private readonly desc: Mapping
  private readonly poll: ReturnType<typeof koffi.node.poll> | undefined
  /** Blocking mode with USER_COPY: the buffer each read is decoded into before its pwrite(2). */
  private readonly scratch: Buffer | undefined
  private readonly state: TagState[]
  /** Per-tag buffers (only without USER_COPY) and their addresses. */
  private readonly buffers: Buffer[] = []
  private readonly addresses: bigint[] = []
  private readonly commitOp: number
  private readonly fetchOp: number
  private readonly commits: Array<[tag: number, result: number]> = []
  /** Blocking mode: answers to writes, flushes, discards and write-zeroes of this turn, not yet committed. */
  private readonly settling: Promise<void>[] = []
  private flushScheduled = false
  private abortedCount = 0
  private closed = false
  private readonly links: Int32Array | undefined
  private resolveDone!: () => void
  /** Resolves once every tag's fetch came back aborted (device stopped, or the driver gave up on us). */
  readonly done: Promise<void>

  constructor(
    private readonly o: UblkQueueOptions,
    legacyOpcodes = false,
  ) {
    this.done = new Promise((r) => (this.resolveDone = r))
    this.state = new Array<TagState>(o.depth).fill('idle')
    this.fetchOp = legacyOpcodes ? abi.UBLK_IO_FETCH_REQ : abi.UBLK_U_IO_FETCH_REQ
    this.commitOp = legacyOpcodes ? abi.UBLK_IO_COMMIT_AND_FETCH_REQ : abi.UBLK_U_IO_COMMIT_AND_FETCH_REQ
    // Room for one command per tag at once; the CQ (twice the SQ) never overflows.
    this.ring = new IoUring({entries: o.depth})
    try {
      const m = abi.descArrayMapping(o.qid, o.depth)
      this.desc = mapShared(o.cdevFd, m.length, m.offset, false, `ublkc${o.devId} queue ${o.qid} descriptors`)
    } catch (err) {
      this.ring.close()
      throw err
    }
    if (!o.userCopy)
      for (let tag = 0; tag < o.depth; tag++) {
        const b = Buffer.alloc(o.maxIoBytes)
        this.buffers.push(b)
        this.addresses.push(bufferAddress(b))
      }
    if (o.blocking && o.workAhead && o.links) {
      this.links = new Int32Array(o.links)
      Atomics.store(this.links, o.qid * QUEUE_LINK_SLOTS, this.ring.fd)
    }
    if (o.blocking) this.scratch = o.userCopy ? Buffer.allocUnsafeSlow(o.maxIoBytes) : undefined
    else this.poll = koffi.node.poll(this.ring.fd, {readable: true}, () => this.onReadable())
  }

  /** Issue FETCH_REQ for every tag; the device can start once all queues have done this. */
  fetchAll(): void {
    for (let tag = 0; tag < this.o.depth; tag++) {
      this.prepCommand(this.fetchOp, tag, 0)
      this.state[tag] = 'fetching'
    }
    this.ring.submit(0)
  }

  private prepCommand(op: number, tag: number, result: number): void {
    const sqe = this.ring.getSqe()
    // Each tag has at most one command in flight and the SQ holds `depth`: this cannot run out.
    if (!sqe) throw new Error(`ublk queue ${this.o.qid}: submission queue full`)
    sqe.writeUInt8(IORING_OP_URING_CMD, io_uring_sqe.offsets.opcode)
    sqe.writeInt32LE(this.o.cdevFd, io_uring_sqe.offsets.fd)
    sqe.writeUInt32LE(op >>> 0, SQE_CMD_OP)
    const c = abi.ublksrv_io_cmd.offsets
    sqe.writeUInt16LE(this.o.qid, SQE_CMD + c.q_id)
    sqe.writeUInt16LE(tag, SQE_CMD + c.tag)
    sqe.writeInt32LE(result, SQE_CMD + c.result)
    if (!this.o.userCopy) sqe.writeBigUInt64LE(this.addresses[tag], SQE_CMD + c.addr)
    setUserData(sqe, tag)
  }

  private onReadable(): void {
    if (this.closed) return
    this.ring.reap((cqe) => this.onCompletion(cqe))
  }

  private onCompletion(cqe: Cqe): void {
    const tag = cqe.userData
    if (tag >= this.o.depth) return
    if (cqe.res === abi.UBLK_IO_RES_OK) {
      this.state[tag] = 'serving'
      this.serve(tag)
      return
    }
    // ABORT (-ENODEV): the device is going away; any other error: the driver refused the command.
    if (cqe.res !== abi.UBLK_IO_RES_ABORT) this.o.log(`ublk queue ${this.o.qid} tag ${tag}: command failed (${cqe.res})`)
    if (this.state[tag] !== 'aborted') {
      this.state[tag] = 'aborted'
      if (++this.abortedCount === this.o.depth) this.resolveDone()
    }
  }

  private serve(tag: number): void {
    const d = this.desc.bytes
    const at = tag * abi.ublksrv_io_desc.size
    const opFlags = d.readUInt32LE(at + abi.ublksrv_io_desc.offsets.op_flags)
    const nrSectors = d.readUInt32LE(at + abi.ublksrv_io_desc.offsets.nr_sectors)
    // start_sector is a u64; a device of 2^53 bytes is far beyond any image, so a Number is exact.
    const startSector = Number(d.readBigUInt64LE(at + abi.ublksrv_io_desc.offsets.start_sector))
    const op = opFlags & 0xff
    // ublk sectors are 512 bytes whatever the logical block size (blk_rq_pos/blk_rq_sectors).
    const offset = startSector * 512
    const length = nrSectors * 512
    switch (op) {
      case abi.UBLK_IO_OP_READ:
        if (length > this.o.maxIoBytes) return this.commit(tag, -EIO)
        if (this.links && length >= WAKE_BYTES) this.wakeSiblings()
        if (this.o.blocking) {
          let data: Buffer
          try {
            data = this.o.server.readSync(offset, length, this.scratch ?? this.buffers[tag])
          } catch (err) {
            return this.commit(tag, -errnoOf(err))
          }
          return this.completeRead(tag, data, length)
        }
        this.o.server.read(offset, length).then(
          (data) => this.completeRead(tag, data, length),
          (err: unknown) => this.commit(tag, -errnoOf(err)),
        )
        return
      case abi.UBLK_IO_OP_FLUSH:
        // A read-only server has nothing to flush; a writable one makes every answered write durable.
        if (!this.o.server.writable) return this.commit(tag, 0)
        return this.settle(tag, this.o.server.flush(), 0)
      case abi.UBLK_IO_OP_WRITE:
      case abi.UBLK_IO_OP_DISCARD:
      case abi.UBLK_IO_OP_WRITE_ZEROES:
        // A read-only disk (UBLK_ATTR_READ_ONLY): the block layer does not send these.
        if (!this.o.server.writable) return this.commit(tag, -EIO)
        return this.mutate(tag, op, opFlags, offset, length)
      default:
        // WRITE_SAME (no block layer operation maps to it since Linux 5.18), zone operations, anything newer.
        return this.commit(tag, -EOPNOTSUPP)
    }
  }

  /**
   * A write, discard or write-zeroes on a writable server (an overlay). The write's data is the request's:
   * pread(2) from /dev/ublkcN with USER_COPY, else the tag's buffer, which the driver filled before the
   * fetch completed. UBLK_IO_F_FUA (UBLK_ATTR_FUA is set) makes it durable before the answer.
   */
  private mutate(tag: number, op: number, opFlags: number, offset: number, length: number): void {
    const server = this.o.server
    const fua = (opFlags & abi.UBLK_IO_F_FUA) !== 0
    if (op !== abi.UBLK_IO_OP_WRITE)
      // The result of a discard or write-zeroes is not a byte count (the driver ends them as they are);
      // 0, since theirs can exceed the s32 result field (up to 4 GiB each).
      return this.settle(tag, op === abi.UBLK_IO_OP_DISCARD ? server.trim(offset, length, {fua}) : server.zero(offset, length, {fua}), 0)
    if (length > this.o.maxIoBytes) return this.commit(tag, -EIO)
    let data: Buffer
    try {
      data = this.o.userCopy ? this.copyFromRequest(tag, length) : this.buffers[tag].subarray(0, length)
    } catch (err) {
      this.o.log(`ublk queue ${this.o.qid} tag ${tag}: copy from the request failed: ${(err as Error).message}`)
      return this.commit(tag, -EIO)
    }
    // A write's result is the bytes written: a shorter one would make the driver requeue the rest.
    this.settle(tag, server.write(offset, data, {fua}), length)
  }

  /** USER_COPY: the write's data, read from the request's position in /dev/ublkcN. */
  private copyFromRequest(tag: number, length: number): Buffer {
    const data = Buffer.allocUnsafe(length)
    let done = 0
    while (done < length) {
      const n = fs.readSync(this.o.cdevFd, data, done, length - done, abi.userCopyOffset(this.o.qid, tag) + done)
      if (n === 0) throw new Error(`the request ended after ${done} of ${length} bytes`)
      done += n
    }
    return data
  }

  /** Answer `tag` with `result` once `p` resolves, or with its errno. */
  private settle(tag: number, p: Promise<void>, result: number): void {
    const answered = p.then(
      () => this.commit(tag, result),
      (err: unknown) => this.commit(tag, -errnoOf(err)),
    )
    if (this.o.blocking) this.settling.push(answered)
  }

  private completeRead(tag: number, data: Buffer, length: number): void {
    if (this.closed) return
    try {
      if (this.o.userCopy) {
        let done = 0
        while (done < length)
          done += fs.writeSync(this.o.cdevFd, data, done, length - done, abi.userCopyOffset(this.o.qid, tag) + done)
      } else if (data.buffer !== this.buffers[tag].buffer) {
        data.copy(this.buffers[tag], 0, 0, length)
      }
    } catch (err) {
      this.o.log(`ublk queue ${this.o.qid} tag ${tag}: copy to the request failed: ${(err as Error).message}`)
      return this.commit(tag, -EIO)
    }
    this.commit(tag, length)
  }

  /** Queue COMMIT_AND_FETCH_REQ for a tag; everything committed in this turn of the loop goes in one enter. */
  private commit(tag: number, result: number): void {
    if (this.closed || this.state[tag] !== 'serving') return
    this.commits.push([tag, result])
    if (this.o.blocking) return // runBlocking() sends them with its next wait
    if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(() => this.flushCommits())
    }
  }

  private flushCommits(): void {
    this.flushScheduled = false
    if (this.closed) return
    this.prepCommits()
    this.ring.submit(0)
  }

  private prepCommits(): void {
    for (const [tag, result] of this.commits.splice(0)) {
      this.prepCommand(this.commitOp, tag, result)
      this.state[tag] = 'fetching'
    }
  }

  /** Wake the sibling queues asleep in io_uring_enter (each once per sleep) with a CQE they ignore. */
  private wakeSiblings(): void {
    const l = this.links!
    let sent = 0
    for (let q = 0; (q + 1) * QUEUE_LINK_SLOTS <= l.length; q++) {
      if (q === this.o.qid || Atomics.compareExchange(l, q * QUEUE_LINK_SLOTS + 1, 1, 0) !== 1) continue
      const fd = Atomics.load(l, q * QUEUE_LINK_SLOTS)
      const sqe = fd >= 0 ? this.ring.getSqe() : null
      if (!sqe) continue
      prepMsgRing(sqe, fd, WAKE_USER_DATA)
      sent++
    }
    if (sent === 0) return
    try {
      this.ring.submit(0)
    } catch {
      // A wake-up is only worth something now; if it cannot go now, it goes with the turn's answers.
    }
  }

  /**
   * Blocking mode: fetch every tag, then serve until the driver aborts them all (STOP_DEV, or the device
   * going away) or close() is called. Each turn is one io_uring_enter that sends the previous turn's
   * COMMIT_AND_FETCH_REQs and waits for at least one request — as ublksrv's queue loop does. Returns why
   * it ended.
   */
  async runBlocking(): Promise<string> {
    if (!this.o.blocking) throw new Error('ublk queue: runBlocking needs blocking mode')
    this.fetchAll()
    while (!this.closed && this.abortedCount < this.o.depth) {
      try {
        if (this.o.workAhead) {
          // Send this turn's answers, then decode ahead while no request has come (each flush runs the
          // ring's task_work, which is where the driver's completions are posted).
          this.ring.flush()
          while (!this.ring.completionsReady && this.o.workAhead()) this.ring.flush()
        }
        if (this.links) Atomics.store(this.links, this.o.qid * QUEUE_LINK_SLOTS + 1, 1)
        try {
          this.ring.submit(1)
        } finally {
          if (this.links) Atomics.store(this.links, this.o.qid * QUEUE_LINK_SLOTS + 1, 0)
        }
      } catch (err) {
        if (err instanceof SysError && err.errno === EINTR) continue
        throw err
      }
      this.ring.reap((cqe) => this.onCompletion(cqe))
      // Reads answered above; writes (a writable server) once their settled promises have run.
      if (this.settling.length > 0) await Promise.all(this.settling.splice(0))
      this.prepCommits()
    }
    return this.closed ? `queue ${this.o.qid} closed` : `queue ${this.o.qid}: the driver aborted every fetch (device stopped or gone)`
  }

  /** Tags not yet aborted by the driver. */
  get liveTags(): number {
    return this.o.depth - this.abortedCount
  }

  /** Release the ring, the mapping and the poll handle (the device must be stopped, or its server is leaving). */
  close(): void {
    if (this.closed) return
    this.closed = true
    if (this.links) Atomics.store(this.links, this.o.qid * QUEUE_LINK_SLOTS, -1)
    this.poll?.close()
    unmap(this.desc)
    this.ring.close()
    this.resolveDone()
  }
}

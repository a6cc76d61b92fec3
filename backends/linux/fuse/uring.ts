/**
 * FUSE over io_uring (Linux 6.14+, fs/fuse/dev_uring.c; Documentation/filesystems/fuse-io-uring.rst): a
 * serving thread takes requests from ring entries it registered on the connection instead of read(2) of
 * /dev/fuse, and answers each with the command that fetches its next one. Per request that is one
 * io_uring_enter(2) (commit + fetch) where /dev/fuse takes a write(2) and a read(2); while the thread polls,
 * looking for the next request is a load from the mapped completion ring, not a system call; and a READ's
 * bytes are decoded straight into the entry's payload buffer, which the kernel copies to the reader.
 *
 * The kernel keeps one queue per possible CPU and puts a request on the queue of the CPU its reader runs
 * on; it takes the connection over only once every queue has an entry. So every thread registers `depth`
 * entries on every queue: a request goes to whichever entry is free (the last one answered first, so at
 * queue depth 1 the thread that is polling gets the next request, and the other sleeps on).
 *
 * An entry's buffers: a 288-byte header (fuse_uring_req_header: fuse_in_header in `in_out`, the
 * operation's first argument in `op_in`, commit id and payload size in `ring_ent_in_out`) and a payload as
 * large as the largest READ or WRITE. FORGET and INTERRUPT still come through read(2) of /dev/fuse
 * (the kernel does not send them over the ring yet): the first thread keeps one read of the session's
 * descriptor queued on its ring for them (io_uring runs it on a kernel worker thread).
 */
import * as fs from 'node:fs'
import {ERRNO} from '../../../src/sys/errno'
import {
  bufferAddress,
  IORING_OP_READ,
  IORING_OP_URING_CMD,
  IORING_SETUP_DEFER_TASKRUN,
  IORING_SETUP_SINGLE_ISSUER,
  IORING_SETUP_SQE128,
  IORING_SETUP_TASKRUN_FLAG,
  IoUring,
  io_uring_sqe,
  prepRw,
  setUserData,
  SQE_CMD,
  SQE_CMD_OP,
  type Cqe,
} from '../../../src/sys/io_uring'
import {SysError} from '../../../src/sys/libc'
import {
  FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
  FUSE_IO_URING_CMD_REGISTER,
  FUSE_MIN_READ_BUFFER,
  FUSE_URING_OP_IN_OUT_SZ,
  FuseOpcode,
  fuse_in_header,
  fuse_out_header,
  fuse_read_in,
  fuse_uring_cmd_req,
  fuse_uring_req_header,
} from './abi'
import {PAGE, type FuseProtocol, type FuseReadInto, type ReplyTo} from './protocol'

/** The fuse module's switch: the kernel offers FUSE over io_uring at INIT only while it reads Y. */
export const ENABLE_URING_PARAMETER = '/sys/module/fuse/parameters/enable_uring'

/** Entries each thread registers on each queue, unless VDEV_FUSE_URING_DEPTH says otherwise. */
export const DEFAULT_URING_DEPTH = 1

/**
 * Whether this kernel offers FUSE over io_uring now (the module parameter exists and reads Y), and why not.
 * `VDEV_FUSE_URING=0` turns it off for vdev whatever the kernel offers.
 */
export function uringOffered(env: NodeJS.ProcessEnv = process.env): {offered: boolean; reason: string} {
  if (env.VDEV_FUSE_URING === '0') return {offered: false, reason: 'VDEV_FUSE_URING=0'}
  let value: string
  try {
    value = fs.readFileSync(ENABLE_URING_PARAMETER, 'utf8').trim()
  } catch {
    return {offered: false, reason: 'this kernel has no FUSE over io_uring (Linux 6.14+)'}
  }
  if (value !== 'Y') return {offered: false, reason: `${ENABLE_URING_PARAMETER} is ${value} (write Y to use it)`}
  return {offered: true, reason: 'enabled'}
}

/**
 * The kernel's queue count: one per possible CPU (num_possible_cpus(), from /sys/devices/system/cpu/possible);
 * 0 when it cannot be read (then io_uring is not used: too few queues would never make the ring ready).
 */
export function possibleCpus(text?: string): number {
  let s = text
  if (s === undefined) {
    try {
      s = fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8')
    } catch {
      return 0
    }
  }
  let n = 0
  for (const part of s.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim())
    if (!m) continue
    n += m[2] === undefined ? 1 : Number(m[2]) - Number(m[1]) + 1
  }
  return n
}

/** Up to this many queues every thread registers on each; beyond, each queue is one thread's (queuesFor). */
export const SHARED_QUEUES_MAX = 8

/**
 * The queues thread `index` of `threads` registers entries on. On a small machine every thread is on every
 * queue, so requests that all come from one CPU (one reader) still spread over the threads; with more
 * queues each is one thread's, round robin, so the entries (each with a payload as large as the largest
 * READ) stay `queues × depth` in all.
 */
export function queuesFor(index: number, threads: number, queues: number): number[] {
  const all = Array.from({length: queues}, (_, q) => q)
  if (queues <= SHARED_QUEUES_MAX) return all
  const mine = all.filter((q) => q % threads === index % threads)
  // More threads than queues: a thread with none would wait on an empty ring for ever; it shares one.
  return mine.length > 0 ? mine : [index % queues]
}

export interface FuseRingOptions {
  /** The session's /dev/fuse descriptor (commands name the connection through it). */
  fd: number
  /** The queues to register on (queuesFor). */
  qids: number[]
  /** Entries on each queue. */
  depth: number
  /** Room for the largest READ or WRITE (the kernel refuses less than max(8 KiB, max_write, max_pages pages)). */
  payloadSize: number
  /** Also keep a read(2) of `fd` queued (FORGET, INTERRUPT): a buffer this large. 0: none. */
  legacyBufferSize: number
  log: (line: string) => void
}

const HDR = fuse_uring_req_header.size
const OP_IN = fuse_uring_req_header.offsets.op_in
const ENT_COMMIT_ID = fuse_uring_req_header.offsetOf('ring_ent_in_out.commit_id')
const ENT_PAYLOAD_SZ = fuse_uring_req_header.offsetOf('ring_ent_in_out.payload_sz')
const IN_LEN = fuse_in_header.offsets.len
const IN_OPCODE = fuse_in_header.offsets.opcode
const IN_NODEID = fuse_in_header.offsets.nodeid
const OUT = fuse_out_header.size
/** user_data of the queued read(2) of /dev/fuse; entries are numbered from 0. */
const LEGACY = 0xffff_fff0

/** Errors that mean the connection is gone (unmounted, aborted): every entry gets one. */
const CONNECTION_ENDED = new Set(['ENOTCONN', 'ECANCELED', 'ECONNABORTED', 'ENODEV'])

/**
 * Why the thread stops taking requests from its ring: the connection ended (`ended`), or none of its entries
 * is left (the kernel refused them: the thread then reads /dev/fuse, where the kernel sends requests if it
 * gave up on the ring).
 */
export class RingEnded extends Error {
  constructor(
    readonly code: string,
    readonly ended: boolean,
  ) {
    super(code)
  }
}

export class FuseRing {
  readonly entries: number
  private readonly ring: IoUring
  /** Every entry's header, one after another (kept referenced: the kernel holds their addresses). */
  private readonly headers: Buffer
  private readonly payloads: Buffer[] = []
  private readonly qids: number[] = []
  /** struct iovec[2] per entry (header, payload) for REGISTER. */
  private readonly iovecs: Buffer
  private readonly legacy: Buffer | undefined
  /** Completions taken from the ring and not yet served. */
  private readonly ready: Cqe[] = []
  /** Entries the kernel holds (registered, or answered and fetching): the ring must stay open while any is. */
  private live: number
  /** Requests served from the ring. */
  served = 0
  private closed = false

  constructor(private readonly o: FuseRingOptions) {
    if (o.payloadSize < FUSE_MIN_READ_BUFFER) throw new Error(`fuse ring: payload of ${o.payloadSize} bytes is under ${FUSE_MIN_READ_BUFFER}`)
    this.entries = o.qids.length * o.depth
    this.live = this.entries
    let size = 8
    while (size < this.entries + 2) size *= 2
    // The kernel hands a request to its entry as task_work of this thread. By default that interrupts the
    // thread (an IPI) even while it polls — on this paravirtualised machine that made QD1 reads slower than
    // read(2) of /dev/fuse. Deferred, it runs when the thread enters io_uring_enter(GETEVENTS), and the
    // ring's IORING_SQ_TASKRUN flag tells a polling thread when to (docs/fuse-loop.md, "FUSE over io_uring").
    this.ring = new IoUring({entries: size, flags: IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG})
    this.headers = Buffer.alloc(this.entries * HDR)
    this.iovecs = Buffer.alloc(this.entries * 32)
    for (let e = 0; e < this.entries; e++) {
      // Not zeroed: pages the kernel never writes (queues of CPUs no reader runs on) take no memory.
      const payload = Buffer.allocUnsafeSlow(o.payloadSize)
      this.payloads.push(payload)
      this.qids.push(o.qids[e % o.qids.length])
      this.iovecs.writeBigUInt64LE(bufferAddress(this.headers) + BigInt(e * HDR), e * 32)
      this.iovecs.writeBigUInt64LE(BigInt(HDR), e * 32 + 8)
      this.iovecs.writeBigUInt64LE(bufferAddress(payload), e * 32 + 16)
      this.iovecs.writeBigUInt64LE(BigInt(payload.length), e * 32 + 24)
    }
    this.legacy = o.legacyBufferSize > 0 ? Buffer.alloc(o.legacyBufferSize) : undefined
  }

  /**
   * Register every entry (after INIT is answered: the kernel sizes payloads from it). A registration the
   * kernel refuses completes at once with its error, which serve() throws as RingEnded.
   */
  register(): void {
    for (let e = 0; e < this.entries; e++) {
      const sqe = this.cmdSqe(FUSE_IO_URING_CMD_REGISTER, e, 0n)
      sqe.writeBigUInt64LE(bufferAddress(this.iovecs) + BigInt(e * 32), io_uring_sqe.offsets.addr)
      sqe.writeUInt32LE(2, io_uring_sqe.offsets.len)
    }
    if (this.legacy) this.queueLegacyRead()
    this.ring.submit(0)
  }

  /** The next free SQE, handing the queued ones to the kernel first when the ring is full. */
  private nextSqe(): Buffer {
    let sqe = this.ring.getSqe()
    if (!sqe) {
      this.ring.submit(0)
      sqe = this.ring.getSqe()
      if (!sqe) throw new Error('fuse ring: the submission queue stays full')
    }
    return sqe
  }

  private cmdSqe(op: number, entry: number, commitId: bigint): Buffer {
    const sqe = this.nextSqe()
    sqe.writeUInt8(IORING_OP_URING_CMD, io_uring_sqe.offsets.opcode)
    sqe.writeInt32LE(this.o.fd, io_uring_sqe.offsets.fd)
    sqe.writeUInt32LE(op, SQE_CMD_OP)
    sqe.writeBigUInt64LE(commitId, SQE_CMD + fuse_uring_cmd_req.offsets.commit_id)
    sqe.writeUInt16LE(this.qids[entry], SQE_CMD + fuse_uring_cmd_req.offsets.qid)
    setUserData(sqe, entry)
    return sqe
  }

  private queueLegacyRead(): void {
    const sqe = this.nextSqe()
    prepRw(sqe, IORING_OP_READ, this.o.fd, bufferAddress(this.legacy!), this.legacy!.length, 0)
    setUserData(sqe, LEGACY)
  }

  /** True when a request (or an end) waits: a load from the mapped completion ring, no system call. */
  get pending(): boolean {
    if (this.ready.length > 0 || this.ring.completionsReady) return true
    if (this.ring.taskWorkPending) {
      this.ring.flush()
      return this.ring.completionsReady
    }
    return false
  }

  /** Hand queued commands to the kernel; with `wait`, block until a completion is posted. EINTR returns. */
  submit(wait: boolean): void {
    try {
      this.ring.submit(wait ? 1 : 0)
    } catch (err) {
      if ((err as SysError).errno === ERRNO.EINTR) return
      throw err
    }
  }

  /**
   * Serve every waiting request: READs through `readInto` into the entry's payload, others through
   * `protocol`; each entry's answer is queued with the command that fetches its next request and handed
   * to the kernel at once. `count` is called once per request served. Throws RingEnded when the
   * connection is gone (unmounted, aborted).
   */
  async serve(protocol: FuseProtocol, readInto: FuseReadInto, count: (entry: number) => void): Promise<void> {
    this.ring.reap((c) => this.ready.push(c))
    while (this.ready.length > 0) {
      const c = this.ready.shift()!
      if (c.userData === LEGACY) {
        await this.serveLegacy(protocol, c.res)
        continue
      }
      const e = c.userData
      if (e >= this.entries) throw new Error(`fuse ring: completion for entry ${e} of ${this.entries}`)
      if (c.res < 0) {
        const code = ERRNO_NAME[-c.res] ?? `errno ${-c.res}`
        // The connection ended: the kernel tears every entry down.
        if (CONNECTION_ENDED.has(code)) throw new RingEnded(code, true)
        // This entry was refused (its registration, or a commit whose request the kernel no longer had):
        // the kernel holds no command of it any more; the others serve on.
        this.live--
        this.o.log(`fuse: io_uring: entry ${e} (queue ${this.qids[e]}): ${code}; ${this.live} of ${this.entries} left on this thread`)
        if (this.live === 0) throw new RingEnded(code, false)
        continue
      }
      count(e)
      this.served++
      const pending = this.serveEntry(e, protocol, readInto)
      if (pending) await pending
      this.ring.submit(0)
    }
  }

  private serveEntry(e: number, protocol: FuseProtocol, readInto: FuseReadInto): Promise<void> | void {
    const h = this.headers.subarray(e * HDR, (e + 1) * HDR)
    const payload = this.payloads[e]
    const commitId = h.readBigUInt64LE(ENT_COMMIT_ID)
    const r = entryRequest(h, payload)
    if (r && r.opcode === FuseOpcode.READ && r.opIn.length >= fuse_read_in.size && r.rest.length === 0) {
      // The fast path: decode into the payload, which the kernel copies to the reader.
      let n: number
      try {
        n = readInto(r.nodeid, r.opIn, payload)
      } catch {
        n = -ERRNO.EIO
      }
      this.answer(e, h, Math.max(n, 0), Math.min(n, 0), commitId)
      return
    }
    let reply: Buffer[] | undefined
    const to: ReplyTo = (parts) => (reply = parts)
    const done = (): void => {
      let size = 0
      for (const p of reply?.slice(1) ?? []) size += p.length
      // Every ring request expects a reply, and it must fit the payload.
      if (!reply || size > payload.length) return this.answer(e, h, 0, -ERRNO.EIO, commitId)
      size = 0
      for (const p of reply.slice(1)) {
        p.copy(payload, size)
        size += p.length
      }
      this.answer(e, h, size, reply[0].readInt32LE(4), commitId)
    }
    if (!r) return done()
    const pending = protocol.handle(entryMessage(h, r), to)
    if (pending) return pending.then(done)
    done()
  }

  /** Write fuse_out_header and the payload size into entry `e` and queue COMMIT_AND_FETCH. */
  private answer(e: number, h: Buffer, size: number, error: number, commitId: bigint): void {
    h.writeUInt32LE(OUT + size, 0)
    h.writeInt32LE(error, 4)
    h.writeBigUInt64LE(commitId, 8)
    h.writeUInt32LE(size, ENT_PAYLOAD_SZ)
    this.cmdSqe(FUSE_IO_URING_CMD_COMMIT_AND_FETCH, e, commitId)
  }

  private async serveLegacy(protocol: FuseProtocol, res: number): Promise<void> {
    if (res === -ERRNO.EINTR || res === -ERRNO.EAGAIN || res === -ERRNO.ENOENT) {
      this.queueLegacyRead()
      this.ring.submit(0)
      return
    }
    if (res <= 0) throw new RingEnded(res === 0 ? 'EOF' : (ERRNO_NAME[-res] ?? `errno ${-res}`), true)
    const msg = Buffer.from(this.legacy!.subarray(0, res))
    const pending = protocol.handle(msg, this.o.fd)
    if (pending) await pending
    this.queueLegacyRead()
    this.ring.submit(0)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    // Closing the ring cancels the registered commands (the kernel answers any request it had given them
    // with ENOTCONN once the connection ends) and the queued read.
    this.ring.close()
  }
}

/** A ring entry's request: its opcode and node, its first argument (from `op_in`) and the rest (from the payload). */
export interface EntryRequest {
  opcode: number
  nodeid: number
  opIn: Buffer
  rest: Buffer
}

/**
 * Read a ring entry (its 288-byte header and its payload): fuse_in_header.len is the whole request, of
 * which `ring_ent_in_out.payload_sz` bytes are in the payload and the rest of the arguments in `op_in`.
 * Undefined when those do not add up (the first argument larger than `op_in`, more payload than the
 * buffer): never from a kernel that keeps to fuse.h, answered EIO.
 */
export function entryRequest(h: Buffer, payload: Buffer): EntryRequest | undefined {
  if (h.length < HDR) return undefined
  const len = h.readUInt32LE(IN_LEN)
  const payloadIn = h.readUInt32LE(ENT_PAYLOAD_SZ)
  const opSize = len - fuse_in_header.size - payloadIn
  if (opSize < 0 || opSize > FUSE_URING_OP_IN_OUT_SZ || payloadIn > payload.length) return undefined
  return {
    opcode: h.readUInt32LE(IN_OPCODE),
    nodeid: h.readUInt32LE(IN_NODEID) + h.readUInt32LE(IN_NODEID + 4) * 2 ** 32,
    opIn: h.subarray(OP_IN, OP_IN + opSize),
    rest: payload.subarray(0, payloadIn),
  }
}

/** The entry's request as read(2) of /dev/fuse gives one (header, first argument, the rest): what FuseProtocol takes. */
export function entryMessage(h: Buffer, r: EntryRequest): Buffer {
  return Buffer.concat([h.subarray(0, fuse_in_header.size), r.opIn, r.rest])
}

/** The payload room a session needs: the kernel's max(FUSE_MIN_READ_BUFFER, max_write, max_pages × PAGE_SIZE). */
export function payloadSizeFor(maxPages: number, maxWrite = 0, pageSize = PAGE): number {
  return Math.max(FUSE_MIN_READ_BUFFER, maxWrite, maxPages * pageSize)
}

const ERRNO_NAME: Record<number, string> = Object.fromEntries(Object.entries(ERRNO).map(([k, v]) => [v, k]))
ERRNO_NAME[ERRNO.EOPNOTSUPP] = 'EOPNOTSUPP'

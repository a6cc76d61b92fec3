/**
 * io_uring through koffi: the structs and constants of include/uapi/linux/io_uring.h, the two syscalls
 * (io_uring_setup, io_uring_enter — called through libc's variadic syscall(), glibc has no wrappers), and a
 * small ring class over the mmapped SQ/CQ rings. Sizes and offsets are checked in test/ublk/abi.test.ts.
 *
 * The ring never blocks its caller: `submit()` hands SQEs to the kernel, completions are read from the mmapped
 * CQ ring, and `wait()` lets the event loop watch the ring fd (poll(2) reports it readable when CQEs are
 * posted; a completion queued as task_work interrupts the loop's epoll_wait, which runs it).
 */
import {CStruct} from './cstruct'
import {koffi, libc, SysError} from './libc'

// ---- include/uapi/linux/io_uring.h ----

/** struct io_sqring_offsets (user_addr was resv2 before 6.5; same layout). */
export const io_sqring_offsets = new CStruct('io_sqring_offsets', [
  {name: 'head', type: 'u32'},
  {name: 'tail', type: 'u32'},
  {name: 'ring_mask', type: 'u32'},
  {name: 'ring_entries', type: 'u32'},
  {name: 'flags', type: 'u32'},
  {name: 'dropped', type: 'u32'},
  {name: 'array', type: 'u32'},
  {name: 'resv1', type: 'u32'},
  {name: 'user_addr', type: 'u64'},
])

/** struct io_cqring_offsets */
export const io_cqring_offsets = new CStruct('io_cqring_offsets', [
  {name: 'head', type: 'u32'},
  {name: 'tail', type: 'u32'},
  {name: 'ring_mask', type: 'u32'},
  {name: 'ring_entries', type: 'u32'},
  {name: 'overflow', type: 'u32'},
  {name: 'cqes', type: 'u32'},
  {name: 'flags', type: 'u32'},
  {name: 'resv1', type: 'u32'},
  {name: 'user_addr', type: 'u64'},
])

/** struct io_uring_params */
export const io_uring_params = new CStruct('io_uring_params', [
  {name: 'sq_entries', type: 'u32'},
  {name: 'cq_entries', type: 'u32'},
  {name: 'flags', type: 'u32'},
  {name: 'sq_thread_cpu', type: 'u32'},
  {name: 'sq_thread_idle', type: 'u32'},
  {name: 'features', type: 'u32'},
  {name: 'wq_fd', type: 'u32'},
  {name: 'resv', type: 'u32', count: 3},
  {name: 'sq_off', type: io_sqring_offsets},
  {name: 'cq_off', type: io_cqring_offsets},
])

/**
 * struct io_uring_sqe (64 bytes; 128 with IORING_SETUP_SQE128, the extra 64 extending `cmd`). The unions are
 * named by the member this code uses: `off` doubles as `cmd_op` (u32) + `__pad1` for IORING_OP_URING_CMD,
 * `rw_flags` as `uring_cmd_flags`, and `addr3` starts the 16-byte `cmd[]` area of a 64-byte SQE.
 */
export const io_uring_sqe = new CStruct('io_uring_sqe', [
  {name: 'opcode', type: 'u8'},
  {name: 'flags', type: 'u8'},
  {name: 'ioprio', type: 'u16'},
  {name: 'fd', type: 'i32'},
  {name: 'off', type: 'u64'},
  {name: 'addr', type: 'u64'},
  {name: 'len', type: 'u32'},
  {name: 'rw_flags', type: 'u32'},
  {name: 'user_data', type: 'u64'},
  {name: 'buf_index', type: 'u16'},
  {name: 'personality', type: 'u16'},
  {name: 'file_index', type: 'i32'},
  {name: 'addr3', type: 'u64'},
  {name: '__pad2', type: 'u64'},
])
/** offsetof(struct io_uring_sqe, cmd_op) — the low half of the `off` union. */
export const SQE_CMD_OP = 8
/** offsetof(struct io_uring_sqe, cmd) — the uring_cmd payload (16 bytes, or 80 with SQE128). */
export const SQE_CMD = 48

/** struct io_uring_cqe (16 bytes; 32 with IORING_SETUP_CQE32) */
export const io_uring_cqe = new CStruct('io_uring_cqe', [
  {name: 'user_data', type: 'u64'},
  {name: 'res', type: 'i32'},
  {name: 'flags', type: 'u32'},
])

/** enum io_uring_op (the ones vdev uses). */
export const IORING_OP_NOP = 0
export const IORING_OP_READ = 22
export const IORING_OP_WRITE = 23
/** Post a CQE to another ring (Linux 5.18): `fd` the target ring, `off` the user_data, `len` the res it gets. */
export const IORING_OP_MSG_RING = 40
export const IORING_OP_URING_CMD = 46

/** io_uring_setup flags */
export const IORING_SETUP_CLAMP = 1 << 4
/** No interrupt (IPI) to run completion task_work: it runs when the task next enters the kernel (5.19). */
export const IORING_SETUP_COOP_TASKRUN = 1 << 8
/** With COOP_TASKRUN/DEFER_TASKRUN: IORING_SQ_TASKRUN set in the SQ ring's flags while task_work waits. */
export const IORING_SETUP_TASKRUN_FLAG = 1 << 9
export const IORING_SETUP_SQE128 = 1 << 10
export const IORING_SETUP_CQE32 = 1 << 11
/** Only one task submits (6.0); needed by DEFER_TASKRUN. */
export const IORING_SETUP_SINGLE_ISSUER = 1 << 12
/** Completion task_work runs only inside io_uring_enter(GETEVENTS) (6.1). */
export const IORING_SETUP_DEFER_TASKRUN = 1 << 13

/** io_sqring flags (the SQ ring's `flags` word) */
export const IORING_SQ_TASKRUN = 1 << 2

/** io_uring_params.features */
export const IORING_FEAT_SINGLE_MMAP = 1 << 0
export const IORING_FEAT_NODROP = 1 << 1

/** io_uring_enter flags */
export const IORING_ENTER_GETEVENTS = 1 << 0

/** sqe.flags */
export const IOSQE_IO_LINK = 1 << 2
/** No CQE when the operation succeeds (Linux 5.17). */
export const IOSQE_CQE_SKIP_SUCCESS = 1 << 6

/** mmap offsets of the rings and the SQE array */
export const IORING_OFF_SQ_RING = 0
export const IORING_OFF_CQ_RING = 0x8000000
export const IORING_OFF_SQES = 0x10000000

/** arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h (arm64) agree on these. */
export const NR_io_uring_setup = 425
export const NR_io_uring_enter = 426

// ---- libc ----

const PROT_READ = 1
const PROT_WRITE = 2
const MAP_SHARED = 1
const MAP_POPULATE = 0x8000
const MAP_FAILED = 0xffffffffffffffffn

const syscallFn = libc.func('long syscall(long number, ...)')
const mmapFn = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)')
const munmapFn = libc.func('int munmap(void *addr, size_t length)')
const closeFn = libc.func('int close(int fd)')

/** A shared mapping of a kernel object: the pointer (for munmap) and a Buffer over the bytes. */
export interface Mapping {
  ptr: unknown
  length: number
  bytes: Buffer
}

/** mmap(2) a file descriptor MAP_SHARED; `unmap` releases it. */
export function mapShared(fd: number, length: number, offset: number, writable: boolean, what: string): Mapping {
  const ptr = mmapFn(null, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED | MAP_POPULATE, fd, offset)
  if (ptr === null || koffi.address(ptr) === MAP_FAILED) throw new SysError(`mmap ${what}`, koffi.errno())
  return {ptr, length, bytes: Buffer.from(koffi.view(ptr, length))}
}

export function unmap(m: Mapping): void {
  munmapFn(m.ptr, m.length)
}

function ioUringSetup(entries: number, params: Buffer): number {
  const fd = Number(syscallFn(NR_io_uring_setup, 'uint32_t', entries, 'void *', params))
  if (fd < 0) throw new SysError('io_uring_setup', koffi.errno())
  return fd
}

/** io_uring_enter(2); returns the number of SQEs consumed, or -errno. */
export function ioUringEnter(fd: number, toSubmit: number, minComplete: number, flags: number): number {
  const rc = Number(
    syscallFn(NR_io_uring_enter, 'int', fd, 'uint32_t', toSubmit, 'uint32_t', minComplete, 'uint32_t', flags, 'void *', null, 'size_t', 0),
  )
  return rc < 0 ? -koffi.errno() : rc
}

/** One completion, as read from the CQ ring. user_data is split into two u32 halves to stay off BigInt. */
export interface Cqe {
  userData: number
  userDataHigh: number
  res: number
  flags: number
}

export interface IoUringOptions {
  /** SQ size (the CQ is twice that). */
  entries: number
  flags?: number
}

export class IoUring {
  readonly fd: number
  readonly sqEntries: number
  readonly cqEntries: number
  readonly sqeSize: number
  readonly cqeSize: number
  readonly features: number
  private readonly maps: Mapping[] = []
  private readonly sqHead: Uint32Array
  private readonly sqTail: Uint32Array
  private readonly sqMask: number
  private readonly sqArray: Uint32Array
  private readonly sqFlags: Uint32Array
  private readonly sqes: Buffer
  private readonly cqHead: Uint32Array
  private readonly cqTail: Uint32Array
  private readonly cqMask: number
  private readonly cqes: Buffer
  private readonly cqOff: number
  /** SQEs filled but not yet published to the kernel / published but not yet consumed by io_uring_enter. */
  private localTail: number
  private unsubmitted = 0
  private closed = false

  constructor(opts: IoUringOptions) {
    const params = io_uring_params.encode({flags: opts.flags ?? 0})
    this.fd = ioUringSetup(opts.entries, params)
    try {
      const p = io_uring_params.decode(params)
      this.sqEntries = p.sq_entries
      this.cqEntries = p.cq_entries
      this.features = p.features
      this.sqeSize = (opts.flags ?? 0) & IORING_SETUP_SQE128 ? 128 : 64
      this.cqeSize = (opts.flags ?? 0) & IORING_SETUP_CQE32 ? 32 : 16
      const sqOff = p.sq_off
      const cqOff = p.cq_off
      const sqRingSize = sqOff.array + this.sqEntries * 4
      const cqRingSize = cqOff.cqes + this.cqEntries * this.cqeSize
      let sqRing: Buffer
      let cqRing: Buffer
      if (this.features & IORING_FEAT_SINGLE_MMAP) {
        const m = mapShared(this.fd, Math.max(sqRingSize, cqRingSize), IORING_OFF_SQ_RING, true, 'io_uring rings')
        this.maps.push(m)
        sqRing = cqRing = m.bytes
      } else {
        const sq = mapShared(this.fd, sqRingSize, IORING_OFF_SQ_RING, true, 'io_uring SQ ring')
        this.maps.push(sq)
        const cq = mapShared(this.fd, cqRingSize, IORING_OFF_CQ_RING, true, 'io_uring CQ ring')
        this.maps.push(cq)
        sqRing = sq.bytes
        cqRing = cq.bytes
      }
      const sqesMap = mapShared(this.fd, this.sqEntries * this.sqeSize, IORING_OFF_SQES, true, 'io_uring SQEs')
      this.maps.push(sqesMap)
      this.sqes = sqesMap.bytes
      const u32 = (ring: Buffer, off: number, n = 1): Uint32Array => new Uint32Array(ring.buffer, ring.byteOffset + off, n)
      this.sqHead = u32(sqRing, sqOff.head)
      this.sqTail = u32(sqRing, sqOff.tail)
      this.sqMask = u32(sqRing, sqOff.ring_mask)[0]
      this.sqArray = u32(sqRing, sqOff.array, this.sqEntries)
      this.sqFlags = u32(sqRing, sqOff.flags)
      this.cqHead = u32(cqRing, cqOff.head)
      this.cqTail = u32(cqRing, cqOff.tail)
      this.cqMask = u32(cqRing, cqOff.ring_mask)[0]
      this.cqes = cqRing
      this.cqOff = cqOff.cqes
      this.localTail = Atomics.load(this.sqTail, 0)
    } catch (err) {
      this.close()
      throw err
    }
  }

  /** Free SQ slots (filled-but-unsubmitted SQEs count as used). */
  get sqSpace(): number {
    return this.sqEntries - ((this.localTail - Atomics.load(this.sqHead, 0)) >>> 0)
  }

  /**
   * The next SQE, zeroed, as a Buffer of sqeSize bytes; null when the SQ ring is full (submit first).
   * Fill it, then call submit().
   */
  getSqe(): Buffer | null {
    if (this.closed) throw new Error('io_uring: ring is closed')
    if (this.sqSpace <= 0) return null
    const index = this.localTail & this.sqMask
    const sqe = this.sqes.subarray(index * this.sqeSize, (index + 1) * this.sqeSize)
    sqe.fill(0)
    this.sqArray[index] = index
    this.localTail = (this.localTail + 1) >>> 0
    this.unsubmitted++
    return sqe
  }

  /** Publish the filled SQEs and hand them to the kernel; waits for `minComplete` completions (0: never blocks). */
  submit(minComplete = 0): number {
    Atomics.store(this.sqTail, 0, this.localTail)
    const n = this.unsubmitted
    if (n === 0 && minComplete === 0) return 0
    const rc = ioUringEnter(this.fd, n, minComplete, minComplete > 0 ? IORING_ENTER_GETEVENTS : 0)
    if (rc < 0) throw new SysError('io_uring_enter', -rc)
    this.unsubmitted -= rc
    return rc
  }

  /** Run pending task_work and reap without blocking (io_uring_enter with GETEVENTS and min_complete 0). */
  flush(): void {
    Atomics.store(this.sqTail, 0, this.localTail)
    const rc = ioUringEnter(this.fd, this.unsubmitted, 0, IORING_ENTER_GETEVENTS)
    if (rc > 0) this.unsubmitted -= rc
  }

  /** True when task_work waits to run (IORING_SQ_TASKRUN; rings set up with TASKRUN_FLAG): call flush(). */
  get taskWorkPending(): boolean {
    return (Atomics.load(this.sqFlags, 0) & IORING_SQ_TASKRUN) !== 0
  }

  /** True when completions are posted and not yet reaped. */
  get completionsReady(): boolean {
    return Atomics.load(this.cqHead, 0) !== Atomics.load(this.cqTail, 0)
  }

  /** Read and consume every posted completion. */
  reap(onCqe: (cqe: Cqe) => void): number {
    let head = Atomics.load(this.cqHead, 0)
    const tail = Atomics.load(this.cqTail, 0)
    let n = 0
    while (head !== tail) {
      const o = this.cqOff + (head & this.cqMask) * this.cqeSize
      const cqe: Cqe = {
        userData: this.cqes.readUInt32LE(o),
        userDataHigh: this.cqes.readUInt32LE(o + 4),
        res: this.cqes.readInt32LE(o + 8),
        flags: this.cqes.readUInt32LE(o + 12),
      }
      head = (head + 1) >>> 0
      Atomics.store(this.cqHead, 0, head)
      n++
      onCqe(cqe)
    }
    return n
  }

  /** Block (synchronously) until at least one completion is posted. For tests and teardown only. */
  waitSync(): void {
    this.submit(1)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    for (const m of this.maps.splice(0)) unmap(m)
    if (this.fd >= 0) closeFn(this.fd)
  }
}

/**
 * Prepare an IORING_OP_MSG_RING SQE (IORING_MSG_DATA): a CQE with `userData` (low half) and res 0 is posted to
 * the ring `targetFd`, waking a thread waiting on it; this ring gets no CQE unless it fails.
 */
export function prepMsgRing(sqe: Buffer, targetFd: number, userData: number): void {
  const o = io_uring_sqe.offsets
  sqe.writeUInt8(IORING_OP_MSG_RING, o.opcode)
  sqe.writeUInt8(IOSQE_CQE_SKIP_SUCCESS, o.flags)
  sqe.writeInt32LE(targetFd, o.fd)
  sqe.writeBigUInt64LE(BigInt(userData >>> 0), o.off)
  setUserData(sqe, userData)
}

/** Write user_data as two u32 halves (the low half carries the tag/kind, the high half stays 0). */
export function setUserData(sqe: Buffer, low: number, high = 0): void {
  const o = io_uring_sqe.offsets.user_data
  sqe.writeUInt32LE(low >>> 0, o)
  sqe.writeUInt32LE(high >>> 0, o + 4)
}

/** Prepare a plain read/write SQE (IORING_OP_READ/WRITE: fd, buffer address, length, file offset). */
export function prepRw(sqe: Buffer, opcode: number, fd: number, addr: bigint, len: number, offset: number): void {
  const o = io_uring_sqe.offsets
  sqe.writeUInt8(opcode, o.opcode)
  sqe.writeInt32LE(fd, o.fd)
  sqe.writeBigUInt64LE(BigInt(offset), o.off)
  sqe.writeBigUInt64LE(addr, o.addr)
  sqe.writeUInt32LE(len, o.len)
}

/** Address of a Buffer's bytes (stable while the Buffer is referenced: V8 backing stores do not move). */
export function bufferAddress(buf: Buffer): bigint {
  return koffi.address(buf)
}

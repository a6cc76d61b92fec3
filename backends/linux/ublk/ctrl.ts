/**
 * The ublk control device (/dev/ublk-control): control commands are IORING_OP_URING_CMD SQEs on an SQE128
 * ring (the 32-byte struct ublksrv_ctrl_cmd lives in sqe->cmd). The driver runs each command on an io_uring
 * worker and posts its completion; we watch the ring fd from the event loop, so a command that blocks in the
 * kernel (START_DEV adds the disk and scans its partitions, which needs our queues to serve reads) never
 * blocks the JavaScript thread.
 *
 * Opcodes: the ioctl-encoded UBLK_U_CMD_* first; if the kernel rejects that encoding (kernels before the
 * encoding existed), the legacy UBLK_CMD_* numbers.
 */
import * as fs from 'node:fs'
import type {Values} from '../../../src/sys/cstruct'
import {koffi, SysError} from '../../../src/sys/libc'
import * as abi from './abi'
import {bufferAddress, IORING_OP_URING_CMD, IORING_SETUP_SQE128, IoUring, io_uring_sqe, setUserData, SQE_CMD, SQE_CMD_OP} from '../../../src/sys/io_uring'

export const UBLK_CONTROL = '/dev/ublk-control'
const NO_QUEUE = 0xffff
const NO_DEV = 0xffffffff
/** errnos that mean "this opcode encoding is unknown here" (ENOTSUPP is the kernel-internal 524). */
const UNKNOWN_OPCODE = new Set([22, 95, 524])

interface Pending {
  resolve: (res: number) => void
  /** Buffers the kernel reads or writes until completion: kept referenced so they are not collected. */
  keep: Buffer[]
}

export interface DevInfo {
  devId: number
  nrHwQueues: number
  queueDepth: number
  state: number
  maxIoBufBytes: number
  ublksrvPid: number
  flags: bigint
}

export class UblkControl {
  private readonly ring: IoUring
  private readonly poll: ReturnType<typeof koffi.node.poll>
  private readonly pending = new Map<number, Pending>()
  private seq = 1
  /** null until the first command tells which encoding this kernel takes. */
  private ioctlEncoding: boolean | null = null
  private closed = false

  private constructor(private readonly fd: number) {
    this.ring = new IoUring({entries: 16, flags: IORING_SETUP_SQE128})
    this.poll = koffi.node.poll(this.ring.fd, {readable: true}, () => this.onReadable())
    this.poll.unref()
  }

  /** Whether the ioctl-encoded opcodes are in use (null: not known yet). */
  get usesIoctlEncoding(): boolean | null {
    return this.ioctlEncoding
  }

  /** `legacyOpcodes`: use the plain UBLK_CMD_* numbers from the start (what the fallback ends up doing). */
  static open(opts: {legacyOpcodes?: boolean} = {}): UblkControl {
    let fd: number
    try {
      fd = fs.openSync(UBLK_CONTROL, fs.constants.O_RDWR)
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      throw new SysError(`open ${UBLK_CONTROL}`, -(e.errno ?? -2))
    }
    try {
      const ctrl = new UblkControl(fd)
      if (opts.legacyOpcodes) ctrl.ioctlEncoding = false
      return ctrl
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
  }

  private onReadable(): void {
    this.ring.reap((cqe) => {
      const p = this.pending.get(cqe.userData)
      if (!p) return
      this.pending.delete(cqe.userData)
      if (this.pending.size === 0) this.poll.unref()
      p.resolve(cqe.res)
    })
  }

  private issue(cmdOp: number, cmd: Values, keep: Buffer[]): Promise<number> {
    if (this.closed) return Promise.reject(new Error('ublk control: closed'))
    const sqe = this.ring.getSqe()
    if (!sqe) return Promise.reject(new Error('ublk control: too many commands in flight'))
    const id = this.seq++ & 0x7fffffff
    sqe.writeUInt8(IORING_OP_URING_CMD, io_uring_sqe.offsets.opcode)
    sqe.writeInt32LE(this.fd, io_uring_sqe.offsets.fd)
    sqe.writeUInt32LE(cmdOp >>> 0, SQE_CMD_OP)
    abi.ublksrv_ctrl_cmd.encode(cmd, sqe, SQE_CMD)
    setUserData(sqe, id)
    const done = new Promise<number>((resolve) => this.pending.set(id, {resolve, keep}))
    this.poll.ref()
    this.ring.submit(0)
    // A command the driver completes inline is already in the CQ ring; the poll callback would see it too,
    // but reaping now keeps quick commands quick.
    this.onReadable()
    return done
  }

  /**
   * Run one control command; resolves with its result (>= 0) or rejects with a SysError.
   * `encoded` is the UBLK_U_CMD_* opcode; its low byte is the legacy opcode.
   */
  async command(name: string, encoded: number, cmd: Values, keep: Buffer[] = []): Promise<number> {
    const full: Values = {queue_id: NO_QUEUE, ...cmd}
    if (this.ioctlEncoding !== false) {
      const res = await this.issue(encoded, full, keep)
      if (res >= 0 || this.ioctlEncoding === true || !UNKNOWN_OPCODE.has(-res)) {
        if (res >= 0) this.ioctlEncoding = true
        if (res < 0) throw new SysError(`ublk ${name}`, -res)
        return res
      }
      this.ioctlEncoding = false
    }
    const res = await this.issue(abi.legacyOpcode(encoded), full, keep)
    if (res < 0) throw new SysError(`ublk ${name}`, -res)
    return res
  }

  /** UBLK_U_CMD_GET_FEATURES (6.5+): the UBLK_F_* flags this driver supports; 0n when it predates the command. */
  async getFeatures(): Promise<bigint> {
    const out = Buffer.alloc(8)
    try {
      await this.command('GET_FEATURES', abi.UBLK_U_CMD_GET_FEATURES, {dev_id: NO_DEV, addr: bufferAddress(out), len: 8}, [out])
    } catch {
      return 0n
    }
    return out.readBigUInt64LE(0)
  }

  /** UBLK_U_CMD_ADD_DEV: create /dev/ublkcN (devId -1: the driver picks N). */
  async addDev(info: {devId?: number; nrHwQueues: number; queueDepth: number; maxIoBufBytes: number; flags: bigint}): Promise<DevInfo> {
    const buf = abi.ublksrv_ctrl_dev_info.encode({
      nr_hw_queues: info.nrHwQueues,
      queue_depth: info.queueDepth,
      max_io_buf_bytes: info.maxIoBufBytes,
      dev_id: info.devId ?? NO_DEV,
      ublksrv_pid: process.pid,
      flags: info.flags,
    })
    await this.command(
      'ADD_DEV',
      abi.UBLK_U_CMD_ADD_DEV,
      {dev_id: info.devId ?? NO_DEV, addr: bufferAddress(buf), len: buf.length},
      [buf],
    )
    return decodeDevInfo(buf)
  }

  async getDevInfo(devId: number): Promise<DevInfo> {
    const buf = Buffer.alloc(abi.ublksrv_ctrl_dev_info.size)
    await this.command('GET_DEV_INFO', abi.UBLK_U_CMD_GET_DEV_INFO, {dev_id: devId, addr: bufferAddress(buf), len: buf.length}, [buf])
    return decodeDevInfo(buf)
  }

  async setParams(devId: number, params: Values): Promise<void> {
    const buf = abi.ublk_params.encode({len: abi.ublk_params.size, ...params})
    await this.command('SET_PARAMS', abi.UBLK_U_CMD_SET_PARAMS, {dev_id: devId, addr: bufferAddress(buf), len: buf.length}, [buf])
  }

  async getParams(devId: number): Promise<Record<string, any>> {
    const buf = abi.ublk_params.encode({len: abi.ublk_params.size})
    await this.command('GET_PARAMS', abi.UBLK_U_CMD_GET_PARAMS, {dev_id: devId, addr: bufferAddress(buf), len: buf.length}, [buf])
    return abi.ublk_params.decode(buf)
  }

  /** UBLK_U_CMD_START_DEV: adds /dev/ublkbN; resolves after the partition scan (our queues must be serving). */
  async startDev(devId: number): Promise<void> {
    await this.command('START_DEV', abi.UBLK_U_CMD_START_DEV, {dev_id: devId, data: BigInt(process.pid)})
  }

  async stopDev(devId: number): Promise<void> {
    await this.command('STOP_DEV', abi.UBLK_U_CMD_STOP_DEV, {dev_id: devId})
  }

  /** UBLK_U_CMD_DEL_DEV: removes /dev/ublkcN once its server has closed it. */
  async delDev(devId: number): Promise<void> {
    await this.command('DEL_DEV', abi.UBLK_U_CMD_DEL_DEV, {dev_id: devId})
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.poll.close()
    this.ring.close()
    fs.closeSync(this.fd)
    for (const p of this.pending.values()) p.resolve(-108) // ESHUTDOWN
    this.pending.clear()
  }
}

function decodeDevInfo(buf: Buffer): DevInfo {
  const d = abi.ublksrv_ctrl_dev_info.decode(buf)
  return {
    devId: d.dev_id,
    nrHwQueues: d.nr_hw_queues,
    queueDepth: d.queue_depth,
    state: d.state,
    maxIoBufBytes: d.max_io_buf_bytes,
    ublksrvPid: d.ublksrv_pid,
    flags: buf.readBigUInt64LE(abi.ublksrv_ctrl_dev_info.offsets.flags),
  }
}

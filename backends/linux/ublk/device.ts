/**
 * A ublk block device served from a BlockServer: ADD_DEV → SET_PARAMS → FETCH_REQ on every queue →
 * START_DEV, then the queues serve until STOP_DEV; DEL_DEV once /dev/ublkcN is closed.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {BlockServer} from '../../../src/core/blockserver'
import {DEVICE_CACHE_BYTES} from '../../../src/threads/config'
import {ServingThreads} from '../../../src/threads/pool'
import * as abi from './abi'
import {UblkControl} from './ctrl'
import {deviceParams} from './params'
import {QUEUE_LINK_SLOTS, UblkQueue} from './queue'
import type {UblkThreadConfig} from './thread'

export interface UblkDeviceOptions {
  /** Hardware queues (each its own ring); default 1 — the data comes from one JavaScript thread anyway. */
  queues?: number
  /** Requests in flight per queue (tags); default 64. */
  depth?: number
  /** Largest request in bytes; default 1 MiB. */
  maxIoBytes?: number
  /** Use UBLK_F_USER_COPY if the kernel offers it (default true); false forces the per-tag buffers. */
  userCopy?: boolean
  /** Use the legacy plain-number opcodes (as on kernels without the ioctl encoding); for tests. */
  legacyOpcodes?: boolean
  /**
   * Serving threads, one queue each (thread.ts; then `queues` is ignored). 0 (default), a source that
   * cannot be opened again on a thread (no descriptor), or a writable server: the queues are served on the
   * main thread.
   */
  threads?: number
  log?: (line: string) => void
}

export interface UblkDeviceInfo {
  devId: number
  blockDevice: string
  charDevice: string
  partitions: string[]
  features: bigint
  flags: bigint
  userCopy: boolean
  legacyOpcodes: boolean
  queues: number
  /** Serving threads, one per queue; 0 when the main thread serves the queues. */
  threads: number
  depth: number
  maxIoBytes: number
}

const START_TIMEOUT_MS = 60_000

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** True if `p` settles within `ms` (the timer does not outlive it). */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)))
  try {
    return await Promise.race([p.then(() => true as const), late])
  } finally {
    clearTimeout(timer)
  }
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms
  while (!cond()) {
    if (Date.now() > until) return false
    await sleep(10)
  }
  return true
}

/** /dev/ublkbNpK nodes of the partitions the kernel found (from sysfs). */
export function listPartitions(devId: number): string[] {
  const name = `ublkb${devId}`
  let entries: string[]
  try {
    entries = fs.readdirSync(`/sys/block/${name}`)
  } catch {
    return []
  }
  return entries
    .filter((e) => e.startsWith(`${name}p`) && /^\d+$/.test(e.slice(name.length + 1)))
    .sort((a, b) => Number(a.slice(name.length + 1)) - Number(b.slice(name.length + 1)))
    .map((e) => `/dev/${e}`)
}

export class UblkDevice {
  /** Queues served on the main thread. */
  private queues: UblkQueue[] = []
  /** Or the serving threads, a queue each. */
  private pool: ServingThreads | undefined
  private cdevFd = -1
  private stopping: Promise<void> | null = null
  private resolveClosed!: () => void
  /** Resolves when the device is gone (stopped by us, or by the kernel when it gave up on the queues). */
  readonly closed: Promise<void>
  info!: UblkDeviceInfo

  private constructor(
    private readonly ctrl: UblkControl,
    private readonly server: BlockServer,
    private readonly log: (line: string) => void,
  ) {
    this.closed = new Promise((r) => (this.resolveClosed = r))
  }

  static async create(server: BlockServer, opts: UblkDeviceOptions = {}): Promise<UblkDevice> {
    const log = opts.log ?? (() => {})
    const sectorSize = server.sectorSize
    const bsShift = Math.log2(sectorSize)
    if (!Number.isInteger(bsShift) || bsShift < 9 || bsShift > 12)
      throw new Error(`ublk: sector size ${sectorSize} is not a power of two between 512 and 4096`)
    const tail = server.size % sectorSize
    if (tail !== 0) log(`ublk: the image ends in a partial sector: the device has ${Math.floor(server.size / sectorSize)} whole sectors; its last ${tail} bytes are not on it`)
    // A writable server (an overlay) is served on threads too, through views that call its owner.
    const threads = opts.threads && ServingThreads.canServe(server) ? opts.threads : 0
    const nrQueues = threads > 0 ? threads : (opts.queues ?? 1)
    const depth = opts.depth ?? 64
    const maxIoBytes = opts.maxIoBytes ?? 1 << 20
    if (depth < 1 || depth > abi.UBLK_MAX_QUEUE_DEPTH) throw new Error(`ublk: queue depth ${depth} out of range`)
    if (maxIoBytes % 4096 !== 0 || maxIoBytes > abi.UBLK_MAX_IO_BUF_BYTES) throw new Error(`ublk: max I/O size ${maxIoBytes} invalid`)

    const ctrl = UblkControl.open({legacyOpcodes: opts.legacyOpcodes})
    const dev = new UblkDevice(ctrl, server, log)
    let devId = -1
    try {
      const features = await ctrl.getFeatures()
      const userCopy = (opts.userCopy ?? true) && (features & abi.UBLK_F_USER_COPY) !== 0n
      const added = await ctrl.addDev({
        nrHwQueues: nrQueues,
        queueDepth: depth,
        maxIoBufBytes: maxIoBytes,
        flags: (opts.legacyOpcodes ? 0n : abi.UBLK_F_CMD_IOCTL_ENCODE) | (userCopy ? abi.UBLK_F_USER_COPY : 0n),
      })
      // The I/O commands use the encoding the control commands turned out to need.
      const legacyIo = ctrl.usesIoctlEncoding === false
      devId = added.devId
      const maxIo = Math.min(maxIoBytes, added.maxIoBufBytes)
      log(
        `ublk: added device ${devId} (features 0x${features.toString(16)}, flags 0x${added.flags.toString(16)}, ` +
          `${added.nrHwQueues} queue(s) x ${added.queueDepth}, max I/O ${maxIo}, ${userCopy ? 'user copy' : 'tag buffers'}, ` +
          `${server.writable ? 'read-write (volatile cache, FUA, discard, write-zeroes)' : 'read-only'}, ` +
          `${ctrl.usesIoctlEncoding === false ? 'legacy' : 'ioctl-encoded'} opcodes)`,
      )
      await ctrl.setParams(devId, deviceParams(server, maxIo))
      const charDevice = `/dev/ublkc${devId}`
      // devtmpfs creates the node as the driver registers it; udev may still be adjusting it.
      if (!(await waitFor(() => fs.existsSync(charDevice), 5000))) throw new Error(`ublk: ${charDevice} did not appear`)
      dev.cdevFd = fs.openSync(charDevice, fs.constants.O_RDWR)
      if (threads > 0) {
        const cdevFd = dev.cdevFd
        // The queues' ring fds and sleep flags, shared so that a busy queue can wake the others (queue.ts).
        const links = new SharedArrayBuffer(added.nrHwQueues * QUEUE_LINK_SLOTS * 4)
        new Int32Array(links).fill(-1)
        const configFor = (qid: number): UblkThreadConfig => ({devId, qid, depth: added.queueDepth, maxIoBytes: maxIo, cdevFd, userCopy, legacyOpcodes: legacyIo, links})
        dev.pool = await ServingThreads.start({
          name: 'ublk',
          server,
          body: path.join(__dirname, 'thread.js'),
          count: added.nrHwQueues,
          cacheBytes: Math.floor(DEVICE_CACHE_BYTES / added.nrHwQueues),
          configFor,
          log,
        })
      } else {
        for (let qid = 0; qid < added.nrHwQueues; qid++) {
          const q = new UblkQueue({devId, qid, depth: added.queueDepth, maxIoBytes: maxIo, cdevFd: dev.cdevFd, userCopy, server, log}, legacyIo)
          dev.queues.push(q)
          q.fetchAll()
        }
      }
      // If every queue ends without our STOP_DEV, the kernel took the device down.
      void dev.queuesEnded().then(() => dev.resolveClosed())
      // START_DEV returns once the disk is added and its partitions scanned (served by our queues). If the
      // driver never gets there, fail instead of hanging the attach.
      let startTimer: NodeJS.Timeout | undefined
      await Promise.race([
        ctrl.startDev(devId),
        new Promise<never>((_, reject) => {
          startTimer = setTimeout(() => reject(new Error(`ublk: START_DEV of device ${devId} did not finish in ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS)
        }),
      ]).finally(() => clearTimeout(startTimer))
      const blockDevice = `/dev/ublkb${devId}`
      if (!(await waitFor(() => fs.existsSync(blockDevice), 5000))) throw new Error(`ublk: ${blockDevice} did not appear`)
      dev.info = {
        devId,
        blockDevice,
        charDevice,
        partitions: listPartitions(devId),
        features,
        flags: added.flags,
        userCopy,
        legacyOpcodes: legacyIo,
        queues: added.nrHwQueues,
        threads: dev.pool?.size ?? 0,
        depth: added.queueDepth,
        maxIoBytes: maxIo,
      }
      log(`ublk: ${blockDevice} started${dev.info.partitions.length ? ` (${dev.info.partitions.join(' ')})` : ''}`)
      return dev
    } catch (err) {
      await dev.teardown(devId).catch((e: unknown) => log(`ublk: cleanup after failed start: ${(e as Error).message}`))
      throw err
    }
  }

  /** Resolves once every queue has ended (each thread's body returned, or every main-thread queue was aborted). */
  private queuesEnded(): Promise<unknown> {
    return this.pool ? this.pool.allEnded : Promise.all(this.queues.map((q) => q.done))
  }

  /** STOP_DEV (the queues keep serving until the disk is gone), close the queues and /dev/ublkcN, DEL_DEV. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.teardown(this.info.devId)
    return this.stopping
  }

  private async teardown(devId: number): Promise<void> {
    const errors: string[] = []
    if (devId >= 0) {
      try {
        await this.ctrl.stopDev(devId)
      } catch (err) {
        errors.push((err as Error).message)
      }
      // STOP_DEV cancels the idle fetches; give the completions a moment to arrive before closing the rings.
      await within(this.queuesEnded(), 2000)
    }
    for (const q of this.queues) q.close()
    this.queues = []
    if (this.pool) {
      // A thread still in io_uring_enter stops only when the call returns: do not wait on it forever.
      if (!(await within(this.pool.close(2000), 5000))) this.log('ublk: a serving thread did not stop (still in io_uring_enter?)')
      this.pool = undefined
    }
    if (this.cdevFd >= 0) {
      fs.closeSync(this.cdevFd)
      this.cdevFd = -1
    }
    if (devId >= 0) {
      try {
        await this.ctrl.delDev(devId)
      } catch (err) {
        errors.push((err as Error).message)
      }
    }
    this.ctrl.close()
    this.resolveClosed()
    if (errors.length) throw new Error(errors.join('; '))
  }
}

/** True if a process with this pid exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * Remove a device whose server died (STOP_DEV, then DEL_DEV); a device that is already gone is fine. With
 * `ownerPid`, a device now served by another live process (the id was reused) is left alone.
 */
export async function removeDevice(devId: number, log: (line: string) => void = () => {}, ownerPid?: number): Promise<void> {
  if (!fs.existsSync('/dev/ublk-control')) return
  const ctrl = UblkControl.open()
  try {
    let info
    try {
      info = await ctrl.getDevInfo(devId)
    } catch (err) {
      if ((err as {errno?: number}).errno === 19) return // ENODEV: nothing left
      throw err
    }
    if (ownerPid !== undefined && info.ublksrvPid > 0 && info.ublksrvPid !== ownerPid && alive(info.ublksrvPid)) {
      log(`ublk: device ${devId} now belongs to live process ${info.ublksrvPid}; left alone`)
      return
    }
    log(`ublk: removing device ${devId} (state ${info.state}, server pid ${info.ublksrvPid})`)
    await ctrl.stopDev(devId).catch(() => undefined)
    await ctrl.delDev(devId).catch((err: {errno?: number}) => {
      if (err.errno !== 19) throw err
    })
  } finally {
    ctrl.close()
  }
}

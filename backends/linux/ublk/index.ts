/**
 * The ublk backend: the image as /dev/ublkbN, served by this process through io_uring (ublk_drv, Linux 6.0+;
 * USER_COPY and GET_FEATURES from 6.5). One hop: the kernel hands block requests straight to us.
 * Read-only (UBLK_ATTR_READ_ONLY); over a writable server (`attach --overlay`) read-write with a volatile
 * write cache, FUA, discard and write-zeroes, served on the main thread (docs/ublk.md, "Writable").
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import type {AttachContext, AttachedDevice, Backend, Probe} from '../../../src/core/backend'
import type {BlockServer} from '../../../src/core/blockserver'

/* eslint-disable @typescript-eslint/no-require-imports */
/** device.ts loads libc through koffi: required on first use, so `vdev backends` works on any OS. */
const device = (): typeof import('./device') => require('./device') as typeof import('./device')
/* eslint-enable @typescript-eslint/no-require-imports */

export interface UblkState extends Record<string, unknown> {
  /** N of /dev/ublkcN and /dev/ublkbN. */
  devId: number
  /** The serving process (the driver records it as ublksrv_pid). */
  pid: number
}

export function kernelVersion(release = os.release()): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release)
  return m ? [Number(m[1]), Number(m[2])] : [0, 0]
}

export function probeUblk(): Probe {
  if (process.platform !== 'linux') return {available: false, reason: 'needs Linux'}
  const [major, minor] = kernelVersion()
  if (major < 6) return {available: false, reason: `kernel ${os.release()} is older than 6.0 (ublk_drv appeared in 6.0)`}
  if (process.getuid?.() !== 0) return {available: false, reason: 'needs root (/dev/ublk-control and ADD_DEV need CAP_SYS_ADMIN)'}
  if (!fs.existsSync('/dev/ublk-control'))
    return {
      available: false,
      reason: fs.existsSync('/sys/module/ublk_drv')
        ? 'ublk_drv is loaded but /dev/ublk-control is missing'
        : 'the ublk_drv module is not loaded (modprobe ublk_drv)',
    }
  try {
    const disabled = Number(fs.readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8'))
    if (disabled === 2) return {available: false, reason: 'io_uring is disabled (kernel.io_uring_disabled=2)'}
  } catch {
    // Kernels before 6.6 have no such sysctl: io_uring is on.
  }
  try {
    fs.closeSync(fs.openSync('/dev/ublk-control', fs.constants.O_RDWR))
  } catch (err) {
    return {available: false, reason: `/dev/ublk-control: cannot open: ${(err as NodeJS.ErrnoException).code}`}
  }
  return {available: true, detail: `ublk_drv on ${major}.${minor}${major === 6 && minor < 5 ? ' (no USER_COPY before 6.5)' : ''}`}
}

export const backend: Backend = {
  name: 'ublk',
  platform: 'linux',
  description: 'ublk (io_uring userspace block device, Linux 6.0+): the kernel hands requests straight to vdev',
  preference: 0,
  // A queue per serving thread (thread.ts), as ublksrv does; 0 threads: one queue on the main thread.
  threadModel: {kind: 'serving-threads', defaultThreads: 2, maxThreads: 16, pollMicroseconds: 0},
  writable: true,
  // Over an overlay each queue's thread serves through a view of it (reads of unwritten ranges from its own
  // base; writes, flushes and written ranges through the overlay's owner on the main thread).
  writableThreads: true,
  // The kernel's 128 KiB reads ahead one request at a time; 8 MiB keeps several requests in flight under a
  // buffered sequential reader, as for fuse (docs/performance.md, "The device's read-ahead").
  readAheadKiB: 8192,

  async probe(): Promise<Probe> {
    return probeUblk()
  },

  async attach(server: BlockServer, ctx: AttachContext): Promise<AttachedDevice> {
    const dev = await device().UblkDevice.create(server, {log: ctx.log, threads: ctx.threads})
    ctx.log(`ublk: ${dev.info.queues} queue(s), ${dev.info.threads ? 'each served on a thread of its own' : 'served on the main thread'}${server.writable ? ', read-write' : ''}`)
    const state: UblkState = {devId: dev.info.devId, pid: process.pid}
    let detached: Promise<void> | undefined
    return {
      device: dev.info.blockDevice,
      aliases: [dev.info.charDevice],
      partitions: dev.info.partitions,
      state,
      detach: () =>
        (detached ??= (async () => {
          await dev.stop()
          ctx.log(`ublk: ${dev.info.blockDevice} removed`)
        })()),
      closed: dev.closed,
    }
  },

  async cleanup(state: Record<string, unknown>, log: (line: string) => void): Promise<void> {
    const devId = state.devId
    if (typeof devId !== 'number' || !Number.isInteger(devId) || devId < 0) return
    await device().removeDevice(devId, log, typeof state.pid === 'number' ? state.pid : undefined)
  },
}

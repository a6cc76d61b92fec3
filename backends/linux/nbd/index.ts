/**
 * The kernel NBD backend: /dev/nbdN served by vdev's own NBD server on one end of a socketpair, handed to
 * the kernel through the nbd ioctl interface (include/uapi/linux/nbd.h) — no nbd-client, no network.
 * Read-only (NBD_FLAG_READ_ONLY, so `blockdev --getro` is 1); over a writable server (`attach --overlay`)
 * read-write with flush, FUA, trim and write-zeroes, on the serving threads through overlay views
 * (docs/nbd.md, "Writable").
 * Partitions appear as /dev/nbdNpK.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import type {AttachContext, AttachedDevice, Backend, Probe} from '../../../src/core/backend'
import type {BlockServer} from '../../../src/core/blockserver'
import {DEFAULT_POLL_MICROSECONDS, startNbdThreads} from '../../../src/serve/nbd'
import {freeNbd, listNbd, nbdState, threadGroupOf} from './sysfs'

export interface NbdBackendState extends Record<string, unknown> {
  device: string
  index: number
  /** The serving process (the thread in NBD_DO_IT belongs to it). */
  serverPid: number
}

function probeSync(): Probe {
  if (process.platform !== 'linux') return {available: false, reason: 'needs Linux'}
  const loaded = fs.existsSync('/sys/module/nbd') || fs.existsSync('/dev/nbd0')
  if (!loaded) return {available: false, reason: 'the nbd kernel module is not loaded (modprobe nbd)'}
  if (process.getuid?.() !== 0) return {available: false, reason: 'needs root (the nbd ioctls need CAP_SYS_ADMIN)'}
  const all = listNbd()
  if (all.length === 0) return {available: false, reason: 'the nbd module has no devices (nbds_max=0?)'}
  const free = freeNbd().length
  if (free === 0) return {available: false, reason: `all ${all.length} /dev/nbdN devices are in use`}
  return {available: true, detail: `${free} of ${all.length} /dev/nbdN devices free`}
}

export const backend: Backend = {
  name: 'nbd',
  platform: 'linux',
  description: 'kernel NBD client (/dev/nbdN) over a socketpair to the in-process NBD server (needs the nbd module)',
  preference: 1,
  /**
   * One thread per core, at least 2 and at most 3 (as the FUSE backend: each thread has a memory cost — docs/fuse-loop.md,
   * "Memory" — and a core is left for the kernel and the reader of the device).
   */
  threadModel: {kind: 'serving-threads', defaultThreads: Math.max(2, Math.min(3, os.availableParallelism())), pollMicroseconds: DEFAULT_POLL_MICROSECONDS},
  writable: true,
  // A writable device is served on the same threads, through views of the overlay that call its owner (the
  // daemon's main thread) for writes and covered reads (src/layers/overlay-view.ts; src/serve/nbd/thread.ts
  // takes the write payloads).
  writableThreads: true,
  // The kernel's 128 KiB reads ahead one request at a time; 8 MiB keeps several requests in flight under a
  // buffered sequential reader, as for fuse (docs/performance.md, "The device's read-ahead").
  readAheadKiB: 8192,

  async probe(): Promise<Probe> {
    return probeSync()
  },

  async attach(server: BlockServer, ctx: AttachContext): Promise<AttachedDevice> {
    // Loaded on first use: it loads libc through koffi.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const {NbdKernelDevice} = require('./device') as typeof import('./device')
    // The kernel makes one connection: its threads, and none kept warm for another.
    const threads =
      ctx.threads > 0 ? await startNbdThreads(server, {perConnection: ctx.threads, maxThreads: ctx.threads, pollMicroseconds: ctx.pollMicroseconds}, ctx.log) : undefined
    let dev: import('./device').NbdKernelDevice
    try {
      dev = await NbdKernelDevice.attach(server, {exportName: path.basename(ctx.image), log: ctx.log, threads})
    } catch (err) {
      await threads?.close()
      throw err
    }
    ctx.log(`nbd: ${dev.device}: ${threads ? `${threads.stats.threads} serving threads` : 'served on the main thread'}`)
    let partitions: string[] = []
    try {
      partitions = await dev.scanPartitions()
    } catch (err) {
      ctx.log(`nbd: ${dev.device}: partition scan failed: ${(err as Error).message}`)
    }
    const state: NbdBackendState = {device: dev.device, index: dev.index, serverPid: process.pid}
    return {device: dev.device, partitions, state, detach: () => dev.detach(), closed: dev.closed}
  },

  async cleanup(state: Record<string, unknown>, log: (line: string) => void): Promise<void> {
    const index = Number(state.index)
    if (!Number.isInteger(index) || index < 0) return
    const s = nbdState(index)
    if (s.pid === undefined) return // already released by the kernel
    const owner = threadGroupOf(s.pid)
    if (owner !== undefined && owner !== state.serverPid) {
      log(`nbd: ${s.device} is now served by process ${owner}; leaving it alone`)
      return
    }
    if (owner !== undefined && owner === state.serverPid) {
      log(`nbd: ${s.device}: its server (pid ${owner}) is still running; not touching it`)
      return
    }
    // The task in NBD_DO_IT is gone but the device still looks connected: disconnect and clear it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../../../src/sys/libc') as typeof import('../../../src/sys/libc')
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const U = require('./abi') as typeof import('./abi')
    const fh = await fs.promises.open(s.device, 'r')
    try {
      libc.tryIoctl(fh.fd, U.NBD_DISCONNECT, 0)
      libc.tryIoctl(fh.fd, U.NBD_CLEAR_SOCK, 0)
    } finally {
      await fh.close()
    }
    log(`nbd: ${s.device} disconnected (its server had died)`)
  },
}


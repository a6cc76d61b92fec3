/**
 * The FUSE + loop backend: the decoded image as one read-only file on a FUSE mount served by this
 * process, and a read-only loop device over that file (direct I/O, partition scan, logical block size =
 * the image's sector size). Works on any Linux with FUSE and loop, no special modules; costs two hops.
 * Over a writable server (an overlay) the file and the loop device are read-write: the loop driver's
 * writes, flushes (fsync), discards (PUNCH_HOLE) and write-zeroes (ZERO_RANGE) reach the overlay.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {AttachContext, AttachedDevice, Backend, Probe} from '../../../src/core/backend'
import type {BlockServer} from '../../../src/core/blockserver'
import {VdevError} from '../../../src/core/errors'
import {ServingThreads} from '../../../src/threads/pool'
import {readMountinfo} from '../../../src/sys/mountinfo'
import type {LoopDevice} from '../loop/device'

/* eslint-disable @typescript-eslint/no-require-imports */
/** Modules that load libc through koffi: required on first use, so `vdev backends` works on any OS. */
function linuxOnly() {
  return {
    session: require('./session') as typeof import('./session'),
    imagefs: require('./imagefs') as typeof import('./imagefs'),
    fusectl: require('./fusectl') as typeof import('./fusectl'),
    loop: require('../loop/device') as typeof import('../loop/device'),
  }
}
/* eslint-enable @typescript-eslint/no-require-imports */

export interface FuseLoopState extends Record<string, unknown> {
  /** The loop device, once configured. */
  loop?: string
  /** Where the FUSE file system is mounted (inside the device's run directory). */
  mountpoint: string
  /** The served file: the loop device's backing file. */
  file: string
  /** FUSE connection id (/sys/fs/fuse/connections/<id>). */
  connection?: number
  /** How the serving threads take requests: FUSE over io_uring, or read(2) of /dev/fuse (`vdev list --json`'s `requests`). */
  requests?: 'io_uring' | '/dev/fuse'
}

function probeSync(): Probe {
  if (process.platform !== 'linux') return {available: false, reason: 'needs Linux'}
  if (process.getuid?.() !== 0) return {available: false, reason: 'needs root (mount(2) of FUSE and loop ioctls need CAP_SYS_ADMIN)'}
  if (!fs.existsSync('/dev/fuse')) return {available: false, reason: '/dev/fuse does not exist (FUSE not built or loaded)'}
  try {
    fs.closeSync(fs.openSync('/dev/fuse', fs.constants.O_RDWR))
  } catch (err) {
    return {available: false, reason: `/dev/fuse: cannot open: ${(err as NodeJS.ErrnoException).code}`}
  }
  if (!fs.existsSync('/dev/loop-control')) return {available: false, reason: '/dev/loop-control does not exist (the loop driver is not loaded)'}
  let maxPages = ''
  try {
    maxPages = `, reads up to ${Number(fs.readFileSync('/proc/sys/fs/fuse/max_pages_limit', 'utf8')) * 4} KiB`
  } catch {
    // Kernels before 6.13 have no such sysctl; the limit is 256 pages.
  }
  return {available: true, detail: `/dev/fuse and /dev/loop-control present${maxPages}`}
}

export const backend: Backend = {
  name: 'fuse',
  platform: 'linux',
  description: 'FUSE file over /dev/fuse + read-only loop device (works on any Linux, no extra modules)',
  preference: 30,
  // Two threads keep both halves of the loop device's 1 MiB requests (two 512 KiB READs) decoding at once;
  // polling catches the next request of a reader at queue depth 1 (docs/fuse-loop.md, "Threads", "Memory").
  threadModel: {kind: 'serving-threads', defaultThreads: 2, maxThreads: 16, pollMicroseconds: 50},
  writable: true,
  // A writable device is served on the same threads, through views of the overlay (src/layers/overlay-view.ts).
  writableThreads: true,
  // The loop device's own default (2560 KiB here) leaves the two serving threads waiting between the
  // kernel's read-ahead batches under `cat DEV`; 8 MiB keeps both decoding (docs/performance.md).
  readAheadKiB: 8192,

  async probe(): Promise<Probe> {
    return probeSync()
  },

  async attach(server: BlockServer, ctx: AttachContext): Promise<AttachedDevice> {
    const {FuseSession} = linuxOnly().session
    const {ImageFs} = linuxOnly().imagefs
    const loop = linuxOnly().loop
    fs.mkdirSync(path.join(ctx.runDir, 'mnt'), {recursive: true, mode: 0o700})
    // The path the kernel reports (mountinfo, the loop device's backing_file) has no symlinks in it: a
    // run directory reached through one (/var/run → /run) must be matched by that path, or the mount and
    // the loop device are not found again at detach.
    const mountpoint = realDirectory(path.join(ctx.runDir, 'mnt'))
    let mtime = Date.now() / 1000
    try {
      mtime = fs.statSync(ctx.image).mtimeMs / 1000
    } catch {
      // keep now
    }
    const maxPages = 256
    const fileName = 'disk'
    // Serving threads each open the source again (its descriptor) and use every core; a source that
    // cannot be opened again is served on this thread.
    const threads = ServingThreads.canServe(server) ? ctx.threads : 0
    const session = await FuseSession.mount({
      mountpoint,
      maxPages,
      log: ctx.log,
      writable: server.writable,
      ...(threads > 0
        ? {threads: {server, count: threads, pollMicroseconds: ctx.pollMicroseconds, fileName, mtime}}
        : {forward: {handler: new ImageFs(server, {fileName, mtime, maxRead: maxPages * 4096}).handle}}),
    })
    ctx.log(`fuse: mounted at ${mountpoint} (connection ${session.connection}), ${session.mode === 'threads' ? `${threads} serving threads${session.overUring ? ' over io_uring' : ''}` : 'served on the main thread'}`)
    const file = path.join(mountpoint, fileName)
    const state: FuseLoopState = {mountpoint, file, connection: session.connection, requests: session.overUring ? 'io_uring' : '/dev/fuse'}

    let dev: LoopDevice
    try {
      dev = await loop.attachLoopOffThread(file, {
        readOnly: !server.writable,
        partscan: true,
        directIo: true,
        blockSize: server.sectorSize,
        label: ctx.image,
      })
    } catch (err) {
      await session.unmount({lazy: true, abort: true}).catch(() => {})
      throw err
    }
    state.loop = dev.device
    ctx.log(`loop: ${dev.device} over ${file}${server.writable ? ' (read-write)' : ''}, block size ${server.sectorSize}, direct I/O ${dev.directIo ? 'on' : `off: ${dev.directIoNote ?? 'not supported'}`}`)
    const partitions = await waitForPartitions(dev.device, loop.loopPartitions)

    let detached: Promise<void> | undefined
    const detach = (): Promise<void> =>
      (detached ??= (async () => {
        const r = await loop.detachLoopOffThread(dev.device)
        ctx.log(`loop: ${dev.device} ${r === 'deferred' ? 'still open: released by the kernel on its last close' : r}`)
        await server.drain()
        await session.drain(server)
        if (session.mode === 'threads') {
          const st = server.stats
          ctx.log(`fuse: serving threads served ${st.reads} reads, ${st.bytes} bytes, ${st.errors} errors; ${st.polled} requests taken while polling`)
        }
        // A loop device still held open keeps the file busy: fail its I/O and detach the mount lazily.
        await session.unmount({lazy: r === 'deferred', abort: r === 'deferred'})
        ctx.log(`fuse: unmounted ${mountpoint}`)
      })())

    return {
      device: dev.device,
      partitions,
      state,
      detach,
      closed: session.closed.then(() => undefined),
    }
  },

  async cleanup(state: Record<string, unknown>, log: (line: string) => void): Promise<void> {
    await cleanupFuseLoop(state as FuseLoopState, log)
  },
}

/** Partition nodes appear after the scan in LOOP_CONFIGURE; devtmpfs/udev may need a moment for /dev. */
async function waitForPartitions(device: string, list: (d: string) => string[]): Promise<string[]> {
  const parts = list(device)
  const deadline = Date.now() + 3000
  while (parts.some((p) => !fs.existsSync(p)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  return parts.filter((p) => fs.existsSync(p))
}

/**
 * Release what a dead (or stuck) server left: abort its FUSE connection so nothing waits on it, detach
 * the loop device if it is still ours (its backing file is our FUSE file), unmount. Idempotent. With only
 * `runDir` known (the server died before recording more), the mount point and file are derived from it.
 */
export async function cleanupFuseLoop(state: Partial<FuseLoopState> & {runDir?: string}, log: (line: string) => void): Promise<void> {
  const {abortConnection, connectionOfMount, unmount} = linuxOnly().fusectl
  const loop = linuxOnly().loop
  const recorded = typeof state.mountpoint === 'string' ? state.mountpoint : typeof state.runDir === 'string' ? path.join(state.runDir, 'mnt') : undefined
  if (!recorded) throw new VdevError('internal', 'fuse cleanup: no mount point or run directory recorded')
  const mountpoint = realDirectory(recorded)
  const file = typeof state.file === 'string' ? state.file : path.join(mountpoint, 'disk')
  const conn = connectionOfMount(mountpoint)
  if (conn !== undefined) abortConnection(conn, log)
  const loops = new Set(loop.loopsWithBackingFile(file))
  if (typeof state.loop === 'string') {
    const st = loop.loopStatus(state.loop)
    if (st.bound && st.backingFile !== file) log(`loop: ${state.loop} now serves ${st.backingFile}; not ours, left alone`)
  }
  for (const dev of loops) {
    const r = loop.detachLoop(dev)
    log(`loop: ${dev} ${r === 'deferred' ? 'still open: released by the kernel on its last close' : r}`)
  }
  if (readMountinfo().some((m) => m.mountpoint === mountpoint)) {
    try {
      unmount(mountpoint, false)
    } catch {
      unmount(mountpoint, true)
    }
    log(`fuse: unmounted ${mountpoint}`)
  }
}

/**
 * `dir` without symlinks, as the kernel reports mount points, resolved without touching a possibly dead
 * FUSE mount: the parent is resolved (a plain directory), the last component kept.
 */
function realDirectory(dir: string): string {
  try {
    return path.join(fs.realpathSync(path.dirname(dir)), path.basename(dir))
  } catch {
    return dir
  }
}

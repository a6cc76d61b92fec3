/**
 * Loop devices through their ioctls (loop(4)): LOOP_CTL_GET_FREE on /dev/loop-control, LOOP_CONFIGURE with
 * a struct loop_config (read-only, partition scan, direct I/O, logical block size) in one call, and
 * LOOP_CLR_FD. State is read back from sysfs (/sys/block/loopN/loop/*), as losetup does.
 *
 * These functions are synchronous. LOOP_CONFIGURE scans partitions by reading the device, and LOOP_CLR_FD
 * waits for I/O in flight: when the backing file is served by this very process (FUSE), call them through
 * runOffThread (see attachLoopOffThread) so the main thread stays free to answer.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {VdevError} from '../../../src/core/errors'
import * as libc from '../../../src/sys/libc'
import {runOffThread} from '../../../src/sys/offthread'
import {
  LOOP_CLR_FD,
  LOOP_CONFIGURE,
  LOOP_CTL_GET_FREE,
  LO_FLAGS_DIRECT_IO,
  LO_FLAGS_PARTSCAN,
  LO_FLAGS_READ_ONLY,
  LO_NAME_SIZE,
  loop_config,
} from './abi'

export interface LoopOptions {
  /** Read-only device (default true): the kernel refuses writes and `blockdev --getro` says 1. */
  readOnly?: boolean
  /** Scan the partition table: /dev/loopNp1 … appear (default true). */
  partscan?: boolean
  /** Direct I/O to the backing file, so its pages are not cached twice (default true; falls back). */
  directIo?: boolean
  /** Logical block size of the device: 512, 1024, 2048 or 4096 (default 512). */
  blockSize?: number
  /** Shown in loop_info64.lo_file_name (at most 63 bytes kept). */
  label?: string
}

export interface LoopDevice {
  device: string
  number: number
  directIo: boolean
  /** Why direct I/O is off, when it was asked for. */
  directIoNote?: string
}

export interface LoopStatus {
  bound: boolean
  backingFile?: string
  directIo?: boolean
  readOnly?: boolean
  autoclear?: boolean
  partscan?: boolean
}

const LOOP_CONTROL = '/dev/loop-control'
const MAX_ATTEMPTS = 16

export function loopNumber(device: string): number {
  const m = /^\/dev\/loop(\d+)$/.exec(device)
  if (!m) throw new VdevError('usage', `${device} is not a loop device path`)
  return Number(m[1])
}

function readSys(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** What sysfs says about /dev/loopN. */
export function loopStatus(device: string): LoopStatus {
  const n = loopNumber(device)
  const dir = `/sys/block/loop${n}`
  const backingFile = readSys(`${dir}/loop/backing_file`)
  if (backingFile === undefined) return {bound: false}
  return {
    bound: true,
    backingFile,
    directIo: readSys(`${dir}/loop/dio`) === '1',
    readOnly: readSys(`${dir}/ro`) === '1',
    autoclear: readSys(`${dir}/loop/autoclear`) === '1',
    partscan: readSys(`${dir}/loop/partscan`) === '1',
  }
}

/** Loop devices whose backing file is `file` (as /sys/block/loopN/loop/backing_file prints it). */
export function loopsWithBackingFile(file: string): string[] {
  let names: string[]
  try {
    names = fs.readdirSync('/sys/block')
  } catch {
    return []
  }
  return names.filter((n) => /^loop\d+$/.test(n) && readSys(`/sys/block/${n}/loop/backing_file`) === file).map((n) => `/dev/${n}`)
}

/** Partition device nodes of /dev/loopN, from sysfs (loopNp1, loopNp2 …), in order. */
export function loopPartitions(device: string): string[] {
  const n = loopNumber(device)
  let names: string[]
  try {
    names = fs.readdirSync(`/sys/block/loop${n}`)
  } catch {
    return []
  }
  return names
    .filter((x) => new RegExp(`^loop${n}p\\d+$`).test(x))
    .sort((a, b) => Number(a.slice(a.indexOf('p') + 1)) - Number(b.slice(b.indexOf('p') + 1)))
    .map((x) => `/dev/${x}`)
}

/** Configure a free loop device over the open file `backingFd`. Throws VdevError. */
export function configureLoop(backingFd: number, opts: LoopOptions = {}): LoopDevice {
  const readOnly = opts.readOnly ?? true
  const partscan = opts.partscan ?? true
  let directIo = opts.directIo ?? true
  const blockSize = opts.blockSize ?? 512
  if (![512, 1024, 2048, 4096].includes(blockSize)) throw new VdevError('usage', `loop block size ${blockSize} is not 512, 1024, 2048 or 4096`)
  let directIoNote: string | undefined

  let ctl: number
  try {
    ctl = fs.openSync(LOOP_CONTROL, fs.constants.O_RDWR)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new VdevError('unavailable', `${LOOP_CONTROL} does not exist (the loop driver is not loaded)`)
    if (code === 'EACCES' || code === 'EPERM') throw new VdevError('unavailable', `${LOOP_CONTROL}: permission denied (loop devices need root)`)
    throw new VdevError('unavailable', `${LOOP_CONTROL}: ${code}`)
  }
  try {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const n = libc.tryIoctl(ctl, LOOP_CTL_GET_FREE, 0)
      if (n < 0) throw new VdevError('unavailable', `no free loop device (LOOP_CTL_GET_FREE: errno ${-n})`)
      const device = `/dev/loop${n}`
      let fd: number
      try {
        // loop_configure makes the device read-only unless it was opened for writing (BLK_OPEN_WRITE).
        fd = fs.openSync(device, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR)
      } catch (err) {
        // The node may appear a moment after LOOP_CTL_GET_FREE created the device.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' && attempt < MAX_ATTEMPTS - 1) {
          sleepSync(20)
          continue
        }
        throw new VdevError('unavailable', `${device}: cannot open: ${(err as NodeJS.ErrnoException).code}`)
      }
      try {
        for (;;) {
          const flags = (readOnly ? LO_FLAGS_READ_ONLY : 0) | (partscan ? LO_FLAGS_PARTSCAN : 0) | (directIo ? LO_FLAGS_DIRECT_IO : 0)
          const cfg = loop_config.encode({
            fd: backingFd,
            block_size: blockSize,
            info: {lo_flags: flags, lo_file_name: Buffer.from((opts.label ?? '').slice(-(LO_NAME_SIZE - 1)))},
          })
          const rc = libc.tryIoctl(fd, LOOP_CONFIGURE, cfg)
          if (rc === 0) break
          // Another process took this device between GET_FREE and CONFIGURE: ask for the next free one.
          if (rc === -libc.ERRNO.EBUSY) throw new RetryDevice()
          if (rc === -libc.ERRNO.EINVAL && directIo) {
            // Some kernels refuse LO_FLAGS_DIRECT_IO when the backing file cannot do O_DIRECT at this block size.
            directIo = false
            directIoNote = 'the kernel refused direct I/O on the backing file (EINVAL); using buffered I/O'
            continue
          }
          throw new VdevError('io', `${device}: LOOP_CONFIGURE failed: ${errnoName(-rc)}`)
        }
      } catch (err) {
        fs.closeSync(fd)
        if (err instanceof RetryDevice) continue
        throw err
      }
      fs.closeSync(fd)
      const st = loopStatus(device)
      if (directIo && st.directIo === false) {
        directIo = false
        directIoNote = 'the kernel accepted LO_FLAGS_DIRECT_IO but runs the device with buffered I/O (sysfs loop/dio = 0)'
      }
      return {device, number: n, directIo: st.directIo ?? directIo, directIoNote}
    }
    throw new VdevError('busy', `no free loop device after ${MAX_ATTEMPTS} attempts (other processes keep taking them)`)
  } finally {
    fs.closeSync(ctl)
  }
}

class RetryDevice extends Error {}

/**
 * Open `file` (read-only, or read-write for a device that is not readOnly) and put a loop device over it.
 * The loop device keeps its own reference.
 */
export function attachFileToLoop(file: string, opts: LoopOptions = {}): LoopDevice {
  let fd: number
  try {
    fd = fs.openSync(file, opts.readOnly === false ? fs.constants.O_RDWR : fs.constants.O_RDONLY)
  } catch (err) {
    throw new VdevError('io', `${file}: cannot open: ${(err as NodeJS.ErrnoException).code}`)
  }
  try {
    return configureLoop(fd, opts)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * LOOP_CLR_FD. Returns 'released' when the device is free again, 'deferred' when something still has it
 * open (the kernel then releases it on the last close, like autoclear), 'unbound' if it was not bound.
 */
export function detachLoop(device: string, waitMs = 2000): 'released' | 'deferred' | 'unbound' {
  let fd: number
  try {
    fd = fs.openSync(device, fs.constants.O_RDONLY)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENXIO') return 'unbound'
    throw new VdevError('io', `${device}: cannot open: ${code}`)
  }
  let rc: number
  try {
    rc = libc.tryIoctl(fd, LOOP_CLR_FD, 0)
  } finally {
    // On current kernels the device is torn down when this, the last, opener closes.
    fs.closeSync(fd)
  }
  if (rc === -libc.ERRNO.ENXIO) return 'unbound'
  if (rc < 0 && rc !== -libc.ERRNO.EBUSY) throw new VdevError('io', `${device}: LOOP_CLR_FD failed: ${errnoName(-rc)}`)
  const deadline = Date.now() + waitMs
  for (;;) {
    if (!loopStatus(device).bound) return 'released'
    if (Date.now() >= deadline) return 'deferred'
    sleepSync(10)
  }
}

/** Put a loop device over `file` on a worker thread (see the module comment). */
export function attachLoopOffThread(file: string, opts: LoopOptions = {}): Promise<LoopDevice> {
  return runOffThread<LoopDevice>(path.join(__dirname, 'device.js'), 'attachFileToLoop', [file, opts])
}

/** detachLoop on a worker thread. */
export function detachLoopOffThread(device: string, waitMs = 2000): Promise<'released' | 'deferred' | 'unbound'> {
  return runOffThread(path.join(__dirname, 'device.js'), 'detachLoop', [device, waitMs])
}

const sleeper = new Int32Array(new SharedArrayBuffer(4))
function sleepSync(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms)
}

function errnoName(errno: number): string {
  const name = Object.entries(libc.ERRNO).find(([, v]) => v === errno)?.[0]
  return name ? `${name} (errno ${errno})` : `errno ${errno}`
}

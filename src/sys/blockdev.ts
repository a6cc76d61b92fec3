/**
 * Size and logical sector size of a block device (include/uapi/linux/fs.h). libc (koffi) is loaded on
 * first use, so modules that import this still load on any OS.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {IO, IOR} from './ioctl'

/** fs.h: BLKGETSIZE64 = _IOR(0x12, 114, size_t), BLKSSZGET = _IO(0x12, 104) */
export const BLKGETSIZE64 = IOR(0x12, 114, 8)
export const BLKSSZGET = IO(0x12, 104)

function libc(): typeof import('./libc') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('./libc') as typeof import('./libc')
}

export function blockDeviceSize(fd: number): number {
  const b = Buffer.alloc(8)
  libc().ioctl(fd, BLKGETSIZE64, b, 'BLKGETSIZE64')
  return Number(b.readBigUInt64LE(0))
}

export function blockDeviceSectorSize(fd: number): number {
  const s = Buffer.alloc(4)
  libc().ioctl(fd, BLKSSZGET, s, 'BLKSSZGET')
  return s.readInt32LE(0)
}

/**
 * The sysfs directory of a whole-disk block device node (/dev/loop3 → /sys/block/loop3), or undefined
 * when the node is not a whole disk this kernel lists there (a partition, a non-Linux system).
 */
function sysBlockDir(device: string): string | undefined {
  const name = path.basename(device)
  const dir = path.join('/sys/block', name)
  return /^[A-Za-z0-9_.-]+$/.test(name) && fs.existsSync(path.join(dir, 'queue')) ? dir : undefined
}

/** The device's read-ahead in KiB (/sys/block/X/queue/read_ahead_kb), or undefined when there is none. */
export function readAheadKiB(device: string): number | undefined {
  const dir = sysBlockDir(device)
  if (!dir) return undefined
  return Number(fs.readFileSync(path.join(dir, 'queue', 'read_ahead_kb'), 'utf8').trim())
}

/**
 * Set the device's read-ahead (what the kernel reads ahead of buffered sequential reads of the device and
 * of file systems on it) and return what the kernel kept: writing read_ahead_kb is BLKRASET's sysfs face,
 * and partitions share their disk's queue.
 */
export function setReadAheadKiB(device: string, kib: number): number {
  const dir = sysBlockDir(device)
  if (!dir) throw new Error(`${device}: no /sys/block entry to set its read-ahead in`)
  fs.writeFileSync(path.join(dir, 'queue', 'read_ahead_kb'), `${kib}\n`)
  return readAheadKiB(device)!
}

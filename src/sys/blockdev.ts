/**
 * Size and logical sector size of a block device (include/uapi/linux/fs.h). libc (koffi) is loaded on
 * first use, so modules that import this still load on any OS.
 */
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

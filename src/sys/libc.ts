/**
 * The few libc entry points vdev calls through koffi (FFI), declared once. Structs are passed as Buffers
 * whose layout the caller builds from its own interface file (loop.ts, fuse/abi.ts, ublk/abi.ts …).
 * Linux only; loading this module on another OS throws, so import it lazily from backends.
 */
import type * as Koffi from 'koffi' with {'resolution-mode': 'import'}

// koffi ships ESM type declarations; its CommonJS entry is the same API.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const koffi: typeof Koffi = require('koffi')

const lib = koffi.load('libc.so.6')

const ioctlPtr = lib.func('int ioctl(int fd, unsigned long request, void *arg)')
const ioctlInt = lib.func('int ioctl(int fd, unsigned long request, unsigned long arg)')
const mountFn = lib.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)')
const umount2Fn = lib.func('int umount2(const char *target, int flags)')
const socketpairFn = lib.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)')
const closeFn = lib.func('int close(int fd)')
const strerrorFn = lib.func('const char *strerror(int errnum)')
const getpidFn = lib.func('int getpid()')
const fcntlInt = lib.func('int fcntl(int fd, int cmd, int arg)')
const shutdownFn = lib.func('int shutdown(int sockfd, int how)')
const recvFn = lib.func('long recv(int sockfd, void *buf, size_t len, int flags)')
const readFn = lib.func('long read(int fd, void *buf, size_t count)')
const flockFn = lib.func('int flock(int fd, int operation)')
const fadviseFn = lib.func('int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)')
const setsockoptIntFn = lib.func('int setsockopt(int fd, int level, int name, _In_ int *val, uint32_t len)')
const syncFileRangeFn = lib.func('int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)')
const mmapFn = lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)')
const munmapFn = lib.func('int munmap(void *addr, size_t length)')
const mincoreFn = lib.func('int mincore(void *addr, size_t length, _Out_ uint8_t *vec)')
const sysconfFn = lib.func('long sysconf(int name)')

export class SysError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call}: ${strerrorFn(errno) as string} (errno ${errno})`)
    this.name = 'SysError'
  }
}

function check(call: string, rc: number): number {
  if (rc < 0) throw new SysError(call, koffi.errno())
  return rc
}

/** Linux errno values (src/sys/errno.ts). */
export {ERRNO} from './errno'

/** ioctl with a pointer argument (a Buffer holding the struct, read and written in place). */
export function ioctl(fd: number, request: number | bigint, arg: Buffer | null, name = 'ioctl'): number {
  return check(name, ioctlPtr(fd, request, arg))
}

/** ioctl with an integer argument. */
export function ioctlValue(fd: number, request: number | bigint, arg: number | bigint, name = 'ioctl'): number {
  return check(name, ioctlInt(fd, request, arg))
}

/** ioctl that returns -errno instead of throwing, for callers that branch on it. */
export function tryIoctl(fd: number, request: number | bigint, arg: Buffer | number | bigint | null): number {
  const rc = typeof arg === 'number' || typeof arg === 'bigint' ? ioctlInt(fd, request, arg) : ioctlPtr(fd, request, arg)
  return rc < 0 ? -koffi.errno() : rc
}

export const MS_RDONLY = 1
export const MS_NOSUID = 2
export const MS_NODEV = 4
export const MNT_FORCE = 1
export const MNT_DETACH = 2

export function mount(source: string, target: string, fstype: string, flags: number, data: string): void {
  check(`mount ${target}`, mountFn(source, target, fstype, flags, data))
}

export function umount2(target: string, flags: number): void {
  check(`umount ${target}`, umount2Fn(target, flags))
}

export const AF_UNIX = 1
export const SOCK_STREAM = 1
export const SOCK_CLOEXEC = 0o2000000

export function socketpair(domain: number, type: number): [number, number] {
  const sv = [0, 0]
  check('socketpair', socketpairFn(domain, type, 0, sv))
  return [sv[0], sv[1]]
}

export function close(fd: number): void {
  closeFn(fd)
}

/** fcntl(2) with an integer argument; returns -errno instead of throwing. */
export function fcntl(fd: number, cmd: number, arg: number): number {
  const rc = fcntlInt(fd, cmd, arg) as number
  return rc < 0 ? -koffi.errno() : rc
}
export const F_GETFL = 3
export const F_SETFL = 4
export const F_SETPIPE_SZ = 1031 // include/uapi/linux/fcntl.h: F_LINUX_SPECIFIC_BASE + 7
export const F_DUPFD_CLOEXEC = 1030 // include/uapi/linux/fcntl.h: F_LINUX_SPECIFIC_BASE + 6
export const O_NONBLOCK = 0o4000

/** shutdown(2); returns -errno instead of throwing (a peer that is already gone is no error to the caller). */
export function shutdown(fd: number, how: number): number {
  const rc = shutdownFn(fd, how) as number
  return rc < 0 ? -koffi.errno() : rc
}
/** recv(2) into `buf` (a Buffer view is read into in place); returns -errno instead of throwing. */
export function recv(fd: number, buf: Buffer, flags: number): number {
  const rc = Number(recvFn(fd, buf, buf.length, flags))
  return rc < 0 ? -koffi.errno() : rc
}
export const MSG_DONTWAIT = 0x40 // include/linux/socket.h

/** read(2) into `buf`; returns -errno instead of throwing (a non-blocking poll that finds nothing costs no exception). */
export function read(fd: number, buf: Buffer): number {
  const rc = Number(readFn(fd, buf, buf.length))
  return rc < 0 ? -koffi.errno() : rc
}

export const SHUT_RD = 0 // include/linux/net.h (enum sock_shutdown_cmd)
export const SHUT_WR = 1
export const SHUT_RDWR = 2

/** flock(2); returns -errno instead of throwing (EWOULDBLOCK with LOCK_NB is an answer, not a fault). */
export function flock(fd: number, operation: number): number {
  const rc = flockFn(fd, operation) as number
  return rc < 0 ? -koffi.errno() : rc
}
export const LOCK_EX = 2 // include/uapi/asm-generic/fcntl.h
export const LOCK_NB = 4

/** setsockopt of an int option: 0, or -1 (errno not read: callers use it for hints). */
export function setsockoptInt(fd: number, level: number, name: number, value: number): number {
  return setsockoptIntFn(fd, level, name, [value], 4) as number
}

/** posix_fadvise(2); returns the error number (0 on success): it is only advice, callers go on without it. */
export function fadvise(fd: number, offset: number, length: number, advice: number): number {
  return fadviseFn(fd, offset, length, advice) as number
}
export const POSIX_FADV_SEQUENTIAL = 2 // include/uapi/linux/fadvise.h
export const POSIX_FADV_WILLNEED = 3
export const POSIX_FADV_DONTNEED = 4

/** sync_file_range(2); returns 0 or -1 (errno), never throws. */
export function syncFileRange(fd: number, offset: number, length: number, flags: number): number {
  return syncFileRangeFn(fd, offset, length, flags) as number
}
export const SYNC_FILE_RANGE_WRITE = 2 // include/uapi/linux/fs.h

const PROT_READ = 1 // include/uapi/asm-generic/mman-common.h
const MAP_SHARED = 1 // include/uapi/linux/mman.h
const SC_PAGESIZE = 30 // glibc's bits/confname.h: _SC_PAGESIZE
const MAP_FAILED = 0xffffffffffffffffn // (void *) -1

let pageSizeValue: number | undefined
/** The size of a page of memory (and of the page cache), from sysconf(_SC_PAGESIZE). */
export function pageSize(): number {
  if (pageSizeValue === undefined) {
    const v = Number(sysconfFn(SC_PAGESIZE))
    pageSizeValue = v > 0 ? v : 4096
  }
  return pageSizeValue
}

/**
 * Which pages of `[offset, offset + length)` of an open file are in the page cache now: one byte per page,
 * bit 0 set where resident (mincore(2) of a read-only shared mapping, which reads nothing). `offset` must be
 * a multiple of the page size and the range inside the file. Undefined when it cannot be told (mmap or
 * mincore failed: a file that cannot be mapped).
 */
export function residentPages(fd: number, offset: number, length: number): Uint8Array | undefined {
  const page = pageSize()
  const pages = Math.ceil(length / page)
  if (length <= 0 || offset % page !== 0) return undefined
  const addr = mmapFn(null, length, PROT_READ, MAP_SHARED, fd, offset)
  if (addr === null || BigInt(koffi.address(addr)) === MAP_FAILED) return undefined
  try {
    const vec = Buffer.alloc(pages)
    return (mincoreFn(addr, length, vec) as number) === 0 ? vec : undefined
  } finally {
    munmapFn(addr, length)
  }
}

export function getpid(): number {
  return getpidFn() as number
}

export {koffi, lib as libc}

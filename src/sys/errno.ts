/**
 * Linux errno values (include/uapi/asm-generic/errno-base.h, errno.h), with no FFI: what every backend
 * hands the kernel (negated, in fuse_out_header.error or a ublk commit result) and what libc calls report.
 */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ENOSYS: 38,
  EPROTO: 71,
  EOPNOTSUPP: 95,
  ENOTSUP: 95,
  ECONNABORTED: 103,
  ESHUTDOWN: 108,
  ENOTCONN: 107,
  ECANCELED: 125,
} as const

export type ErrnoName = keyof typeof ERRNO

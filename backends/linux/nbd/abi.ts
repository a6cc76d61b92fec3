/**
 * The kernel NBD client's interface, as defined in include/uapi/linux/nbd.h: the ioctls on /dev/nbdN and the
 * kernel's view of the transmission-phase messages on the socket (the NBD protocol's own encoders are in
 * src/serve/nbd/protocol.ts). Values and layouts are checked against the header, as text and compiled, in
 * test/nbd/abi.test.ts. No FFI (src/sys/ioctl.ts is arithmetic), so that test runs on any machine.
 */
import {IO} from '../../../src/sys/ioctl'

/** nbd.h: the ioctl type of every request, `_IO( 0xab, n )` */
export const NBD_IOCTL_TYPE = 0xab

/** nbd.h: ioctls on /dev/nbdN */
export const NBD_SET_SOCK = IO(NBD_IOCTL_TYPE, 0)
export const NBD_SET_BLKSIZE = IO(NBD_IOCTL_TYPE, 1)
export const NBD_SET_SIZE = IO(NBD_IOCTL_TYPE, 2)
export const NBD_DO_IT = IO(NBD_IOCTL_TYPE, 3)
export const NBD_CLEAR_SOCK = IO(NBD_IOCTL_TYPE, 4)
export const NBD_CLEAR_QUE = IO(NBD_IOCTL_TYPE, 5)
export const NBD_PRINT_DEBUG = IO(NBD_IOCTL_TYPE, 6)
export const NBD_SET_SIZE_BLOCKS = IO(NBD_IOCTL_TYPE, 7)
export const NBD_DISCONNECT = IO(NBD_IOCTL_TYPE, 8)
export const NBD_SET_TIMEOUT = IO(NBD_IOCTL_TYPE, 9)
export const NBD_SET_FLAGS = IO(NBD_IOCTL_TYPE, 10)

/** nbd.h: "values for flags field, these are server interaction specific" (NBD_SET_FLAGS) */
export const NBD_FLAG_HAS_FLAGS = 1 << 0
export const NBD_FLAG_READ_ONLY = 1 << 1
export const NBD_FLAG_SEND_FLUSH = 1 << 2
export const NBD_FLAG_SEND_FUA = 1 << 3
export const NBD_FLAG_SEND_TRIM = 1 << 5
/** Since Linux 6.12 (nbd.h "supports WRITE_ZEROES"); an older kernel ignores the bit and zeroes with plain writes. */
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8

/** nbd.h: "values for cmd flags in the upper 16 bits of request type" */
export const NBD_CMD_FLAG_FUA = 1 << 16
/** Since Linux 6.12: a WRITE_ZEROES that must not punch a hole (REQ_NOUNMAP). */
export const NBD_CMD_FLAG_NO_HOLE = 1 << 17

/** nbd.h: "sent over the network in the request/reply magic fields" */
export const NBD_REQUEST_MAGIC = 0x25609513
export const NBD_REPLY_MAGIC = 0x67446698

/**
 * nbd.h: struct nbd_request { __be32 magic; __be32 type; char handle[8]; __be64 from; __be32 len; } __packed
 * (packed and big-endian: plain offsets, not a CStruct).
 */
export const nbd_request = {size: 28, magic: 0, type: 4, handle: 8, from: 16, len: 24} as const
/** nbd.h: struct nbd_reply { __be32 magic; __be32 error; char handle[8]; } */
export const nbd_reply = {size: 16, magic: 0, error: 4, handle: 8} as const

/** What vdev hands the kernel: a read-only export; no flush (nothing is ever written), no trim. */
export const VDEV_NBD_FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY

/**
 * Over a writable server (an overlay): not read-only, a write cache the kernel flushes (SEND_FLUSH), FUA
 * writes (SEND_FUA), discards (SEND_TRIM) and write-zeroes (SEND_WRITE_ZEROES) — every command
 * src/serve/nbd/respond.ts takes on a writable export. No CAN_MULTI_CONN: the kernel gets one socket.
 */
export const VDEV_NBD_WRITABLE_FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES

/** The NBD_SET_FLAGS value for a server. */
export function kernelNbdFlags(writable: boolean): number {
  return writable ? VDEV_NBD_WRITABLE_FLAGS : VDEV_NBD_FLAGS
}

/** Seconds before the kernel fails a request the server has not answered (and drops the connection). */
export const DEFAULT_TIMEOUT_SECONDS = 60

/**
 * The kernel NBD client's ioctl interface, defined once: include/uapi/linux/nbd.h. The messages on the socket
 * are the NBD protocol's transmission phase (src/serve/nbd/protocol.ts); the kernel's own view of them is
 * `struct nbd_request` (28 bytes, packed) and `struct nbd_reply` (16 bytes) in the same header.
 * Pure constants (no FFI), so tests can check them on any machine.
 */

/** Linux _IOC encoding (include/uapi/asm-generic/ioctl.h): dir<<30 | size<<16 | type<<8 | nr; _IO has dir 0, size 0. */
const IO = (type: number, nr: number): number => ((type << 8) | nr) >>> 0

/** The ioctl type of every NBD request: `_IO( 0xab, n )`. */
export const NBD_IOCTL_TYPE = 0xab
export const NBD_SET_SOCK = IO(0xab, 0)
export const NBD_SET_BLKSIZE = IO(0xab, 1)
export const NBD_SET_SIZE = IO(0xab, 2)
export const NBD_DO_IT = IO(0xab, 3)
export const NBD_CLEAR_SOCK = IO(0xab, 4)
export const NBD_CLEAR_QUE = IO(0xab, 5)
export const NBD_PRINT_DEBUG = IO(0xab, 6)
export const NBD_SET_SIZE_BLOCKS = IO(0xab, 7)
export const NBD_DISCONNECT = IO(0xab, 8)
export const NBD_SET_TIMEOUT = IO(0xab, 9)
export const NBD_SET_FLAGS = IO(0xab, 10)

/** "values for flags field, these are server interaction specific" (NBD_SET_FLAGS). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0
export const NBD_FLAG_READ_ONLY = 1 << 1
export const NBD_FLAG_SEND_FLUSH = 1 << 2
export const NBD_FLAG_SEND_FUA = 1 << 3
export const NBD_FLAG_SEND_TRIM = 1 << 5
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8

/** "values for cmd flags in the upper 16 bits of request type". */
export const NBD_CMD_FLAG_FUA = 1 << 16

export const NBD_REQUEST_MAGIC = 0x25609513
export const NBD_REPLY_MAGIC = 0x67446698

/** struct nbd_request { __be32 magic; __be32 type; char handle[8]; __be64 from; __be32 len; } __packed */
export const NBD_REQUEST = {size: 28, magic: 0, type: 4, handle: 8, from: 16, len: 24} as const
/** struct nbd_reply { __be32 magic; __be32 error; char handle[8]; } */
export const NBD_REPLY = {size: 16, magic: 0, error: 4, handle: 8} as const

/** What vdev hands the kernel: a read-only export; no flush (nothing is ever written), no trim. */
export const VDEV_NBD_FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY

/** Seconds before the kernel fails a request the server has not answered (and drops the connection). */
export const DEFAULT_TIMEOUT_SECONDS = 60

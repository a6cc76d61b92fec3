/**
 * The FUSE kernel interface, as defined in include/uapi/linux/fuse.h (protocol 7.45, Linux 6.18).
 * Only what a read-only single-file server needs is declared; every constant and struct names its origin.
 * Layouts are checked against the header's sizes and offsets in test/fuse/abi.test.ts.
 */
import {CStruct} from '../../../src/sys/cstruct'
import {IOR} from '../../../src/sys/ioctl'

/** fuse.h: FUSE_KERNEL_VERSION / FUSE_KERNEL_MINOR_VERSION — the version this server speaks. */
export const FUSE_KERNEL_VERSION = 7
export const FUSE_KERNEL_MINOR_VERSION = 45
/** fuse.h: FUSE_ROOT_ID */
export const FUSE_ROOT_ID = 1
/** fuse.h: FUSE_MIN_READ_BUFFER — a read(2) of /dev/fuse needs at least this much room. */
export const FUSE_MIN_READ_BUFFER = 8192

/** fuse.h: enum fuse_opcode */
export const FuseOpcode = {
  LOOKUP: 1,
  FORGET: 2, // no reply
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42, // no reply
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
  STATX: 52,
  COPY_FILE_RANGE_64: 53, // 7.45
} as const

export const opcodeName: Record<number, string> = Object.fromEntries(Object.entries(FuseOpcode).map(([k, v]) => [v, k]))

/** fuse.h: INIT request/reply flags (fuse_init_in.flags / fuse_init_out.flags; bits 32+ go in flags2). */
export const FuseInitFlag = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8,
  SPLICE_READ: 1 << 9,
  FLOCK_LOCKS: 1 << 10,
  HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  MAP_ALIGNMENT: 1 << 26,
  SUBMOUNTS: 1 << 27,
  HANDLE_KILLPRIV_V2: 1 << 28,
  SETXATTR_EXT: 1 << 29,
  INIT_EXT: 1 << 30,
  INIT_RESERVED: 2 ** 31,
} as const

/**
 * fuse.h: INIT flags of bits 32+, as bits of fuse_init_in.flags2 / fuse_init_out.flags2 (valid when both
 * sides set FUSE_INIT_EXT). FUSE_OVER_IO_URING (1ULL << 41, 7.42): the kernel offers it when the fuse
 * module's `enable_uring` parameter is set; the server says it will register ring entries.
 */
export const FuseInitFlag2 = {
  OVER_IO_URING: 1 << (41 - 32),
} as const

// ---- FUSE over io_uring (fuse.h since 7.42, Linux 6.14; fs/fuse/dev_uring.c) ----

/** fuse.h: FUSE_URING_IN_OUT_HEADER_SZ / FUSE_URING_OP_IN_OUT_SZ */
export const FUSE_URING_IN_OUT_HEADER_SZ = 128
export const FUSE_URING_OP_IN_OUT_SZ = 128

/** fuse.h: struct fuse_uring_ent_in_out — the kernel writes commit_id and payload_sz; the server payload_sz. */
export const fuse_uring_ent_in_out = new CStruct('fuse_uring_ent_in_out', [
  {name: 'flags', type: 'u64'},
  {name: 'commit_id', type: 'u64'},
  {name: 'payload_sz', type: 'u32'},
  {name: 'padding', type: 'u32'},
  {name: 'reserved', type: 'u64'},
])

/**
 * fuse.h: struct fuse_uring_req_header (288 bytes) — iov[0] of a ring entry: `in_out` holds fuse_in_header
 * from the kernel and the server's fuse_out_header back; `op_in` the operation's first argument
 * (fuse_read_in …); the request's other arguments, and the reply's, go in the entry's payload (iov[1]).
 */
export const fuse_uring_req_header = new CStruct('fuse_uring_req_header', [
  {name: 'in_out', type: 'u8', count: FUSE_URING_IN_OUT_HEADER_SZ},
  {name: 'op_in', type: 'u8', count: FUSE_URING_OP_IN_OUT_SZ},
  {name: 'ring_ent_in_out', type: fuse_uring_ent_in_out},
])

/** fuse.h: enum fuse_uring_cmd — the cmd_op of an IORING_OP_URING_CMD on a /dev/fuse descriptor. */
export const FUSE_IO_URING_CMD_REGISTER = 1
export const FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2

/** fuse.h: struct fuse_uring_cmd_req — in the SQE's 80-byte command area (an SQE128 ring); the rest stays 0. */
export const fuse_uring_cmd_req = new CStruct('fuse_uring_cmd_req', [
  {name: 'flags', type: 'u64'},
  {name: 'commit_id', type: 'u64'},
  {name: 'qid', type: 'u16'},
  {name: 'padding', type: 'u8', count: 6},
])

/** fuse.h: FOPEN_* flags returned by OPEN/OPENDIR (fuse_open_out.open_flags). */
export const FOPEN_DIRECT_IO = 1 << 0
export const FOPEN_KEEP_CACHE = 1 << 1
export const FOPEN_CACHE_DIR = 1 << 3
export const FOPEN_NOFLUSH = 1 << 5

/** fuse.h: FUSE_DEV_IOC_MAGIC, FUSE_DEV_IOC_CLONE _IOR(FUSE_DEV_IOC_MAGIC, 0, uint32_t) */
export const FUSE_DEV_IOC_MAGIC = 229
export const FUSE_DEV_IOC_CLONE = IOR(FUSE_DEV_IOC_MAGIC, 0, 4)

/** fuse.h: struct fuse_in_header (total_extlen since 7.38, in units of 8 bytes). */
export const fuse_in_header = new CStruct('fuse_in_header', [
  {name: 'len', type: 'u32'},
  {name: 'opcode', type: 'u32'},
  {name: 'unique', type: 'u64'},
  {name: 'nodeid', type: 'u64'},
  {name: 'uid', type: 'u32'},
  {name: 'gid', type: 'u32'},
  {name: 'pid', type: 'u32'},
  {name: 'total_extlen', type: 'u16'},
  {name: 'padding', type: 'u16'},
])

/** fuse.h: struct fuse_out_header */
export const fuse_out_header = new CStruct('fuse_out_header', [
  {name: 'len', type: 'u32'},
  {name: 'error', type: 'i32'},
  {name: 'unique', type: 'u64'},
])

/** fuse.h: struct fuse_init_in (flags2 and unused[11] since 7.36, sent when the kernel sets FUSE_INIT_EXT). */
export const fuse_init_in = new CStruct('fuse_init_in', [
  {name: 'major', type: 'u32'},
  {name: 'minor', type: 'u32'},
  {name: 'max_readahead', type: 'u32'},
  {name: 'flags', type: 'u32'},
  {name: 'flags2', type: 'u32'},
  {name: 'unused', type: 'u32', count: 11},
])

/** fuse.h: struct fuse_init_out (max_stack_depth 7.40, request_timeout 7.43). */
export const fuse_init_out = new CStruct('fuse_init_out', [
  {name: 'major', type: 'u32'},
  {name: 'minor', type: 'u32'},
  {name: 'max_readahead', type: 'u32'},
  {name: 'flags', type: 'u32'},
  {name: 'max_background', type: 'u16'},
  {name: 'congestion_threshold', type: 'u16'},
  {name: 'max_write', type: 'u32'},
  {name: 'time_gran', type: 'u32'},
  {name: 'max_pages', type: 'u16'},
  {name: 'map_alignment', type: 'u16'},
  {name: 'flags2', type: 'u32'},
  {name: 'max_stack_depth', type: 'u32'},
  {name: 'request_timeout', type: 'u16'},
  {name: 'unused', type: 'u16', count: 11},
])

/** fuse.h: struct fuse_attr */
export const fuse_attr = new CStruct('fuse_attr', [
  {name: 'ino', type: 'u64'},
  {name: 'size', type: 'u64'},
  {name: 'blocks', type: 'u64'},
  {name: 'atime', type: 'u64'},
  {name: 'mtime', type: 'u64'},
  {name: 'ctime', type: 'u64'},
  {name: 'atimensec', type: 'u32'},
  {name: 'mtimensec', type: 'u32'},
  {name: 'ctimensec', type: 'u32'},
  {name: 'mode', type: 'u32'},
  {name: 'nlink', type: 'u32'},
  {name: 'uid', type: 'u32'},
  {name: 'gid', type: 'u32'},
  {name: 'rdev', type: 'u32'},
  {name: 'blksize', type: 'u32'},
  {name: 'flags', type: 'u32'},
])

/** fuse.h: struct fuse_entry_out (LOOKUP reply) */
export const fuse_entry_out = new CStruct('fuse_entry_out', [
  {name: 'nodeid', type: 'u64'},
  {name: 'generation', type: 'u64'},
  {name: 'entry_valid', type: 'u64'},
  {name: 'attr_valid', type: 'u64'},
  {name: 'entry_valid_nsec', type: 'u32'},
  {name: 'attr_valid_nsec', type: 'u32'},
  {name: 'attr', type: fuse_attr},
])

/** fuse.h: struct fuse_getattr_in */
export const fuse_getattr_in = new CStruct('fuse_getattr_in', [
  {name: 'getattr_flags', type: 'u32'},
  {name: 'dummy', type: 'u32'},
  {name: 'fh', type: 'u64'},
])

/** fuse.h: struct fuse_attr_out (GETATTR reply) */
export const fuse_attr_out = new CStruct('fuse_attr_out', [
  {name: 'attr_valid', type: 'u64'},
  {name: 'attr_valid_nsec', type: 'u32'},
  {name: 'dummy', type: 'u32'},
  {name: 'attr', type: fuse_attr},
])

/** fuse.h: struct fuse_open_in (open_flags was "unused" before 7.33) */
export const fuse_open_in = new CStruct('fuse_open_in', [
  {name: 'flags', type: 'u32'},
  {name: 'open_flags', type: 'u32'},
])

/** fuse.h: struct fuse_open_out (backing_id was "padding" before 7.40) */
export const fuse_open_out = new CStruct('fuse_open_out', [
  {name: 'fh', type: 'u64'},
  {name: 'open_flags', type: 'u32'},
  {name: 'backing_id', type: 'i32'},
])

/** fuse.h: struct fuse_release_in */
export const fuse_release_in = new CStruct('fuse_release_in', [
  {name: 'fh', type: 'u64'},
  {name: 'flags', type: 'u32'},
  {name: 'release_flags', type: 'u32'},
  {name: 'lock_owner', type: 'u64'},
])

/** fuse.h: struct fuse_flush_in */
export const fuse_flush_in = new CStruct('fuse_flush_in', [
  {name: 'fh', type: 'u64'},
  {name: 'unused', type: 'u32'},
  {name: 'padding', type: 'u32'},
  {name: 'lock_owner', type: 'u64'},
])

/** fuse.h: struct fuse_read_in (READ and READDIR) */
export const fuse_read_in = new CStruct('fuse_read_in', [
  {name: 'fh', type: 'u64'},
  {name: 'offset', type: 'u64'},
  {name: 'size', type: 'u32'},
  {name: 'read_flags', type: 'u32'},
  {name: 'lock_owner', type: 'u64'},
  {name: 'flags', type: 'u32'},
  {name: 'padding', type: 'u32'},
])

/** fuse.h: struct fuse_write_in (the data follows it) */
export const fuse_write_in = new CStruct('fuse_write_in', [
  {name: 'fh', type: 'u64'},
  {name: 'offset', type: 'u64'},
  {name: 'size', type: 'u32'},
  {name: 'write_flags', type: 'u32'},
  {name: 'lock_owner', type: 'u64'},
  {name: 'flags', type: 'u32'},
  {name: 'padding', type: 'u32'},
])

/** fuse.h: struct fuse_write_out */
export const fuse_write_out = new CStruct('fuse_write_out', [
  {name: 'size', type: 'u32'},
  {name: 'padding', type: 'u32'},
])

/** fuse.h: struct fuse_fsync_in (FSYNC, FSYNCDIR) */
export const fuse_fsync_in = new CStruct('fuse_fsync_in', [
  {name: 'fh', type: 'u64'},
  {name: 'fsync_flags', type: 'u32'},
  {name: 'padding', type: 'u32'},
])

/** fuse.h: struct fuse_fallocate_in */
export const fuse_fallocate_in = new CStruct('fuse_fallocate_in', [
  {name: 'fh', type: 'u64'},
  {name: 'offset', type: 'u64'},
  {name: 'length', type: 'u64'},
  {name: 'mode', type: 'u32'},
  {name: 'padding', type: 'u32'},
])

/** fuse.h: struct fuse_setattr_in */
export const fuse_setattr_in = new CStruct('fuse_setattr_in', [
  {name: 'valid', type: 'u32'},
  {name: 'padding', type: 'u32'},
  {name: 'fh', type: 'u64'},
  {name: 'size', type: 'u64'},
  {name: 'lock_owner', type: 'u64'},
  {name: 'atime', type: 'u64'},
  {name: 'mtime', type: 'u64'},
  {name: 'ctime', type: 'u64'},
  {name: 'atimensec', type: 'u32'},
  {name: 'mtimensec', type: 'u32'},
  {name: 'ctimensec', type: 'u32'},
  {name: 'mode', type: 'u32'},
  {name: 'unused4', type: 'u32'},
  {name: 'uid', type: 'u32'},
  {name: 'gid', type: 'u32'},
  {name: 'unused5', type: 'u32'},
])

/** fuse.h: fuse_setattr_in.valid bits */
export const FATTR_SIZE = 1 << 3
/** fuse.h: fuse_fsync_in.fsync_flags: only the data (fdatasync) */
export const FUSE_FSYNC_FDATASYNC = 1 << 0
/** include/uapi/linux/falloc.h: fallocate(2) modes the loop driver sends for discard and write-zeroes */
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10

/** fuse.h: struct fuse_kstatfs */
export const fuse_kstatfs = new CStruct('fuse_kstatfs', [
  {name: 'blocks', type: 'u64'},
  {name: 'bfree', type: 'u64'},
  {name: 'bavail', type: 'u64'},
  {name: 'files', type: 'u64'},
  {name: 'ffree', type: 'u64'},
  {name: 'bsize', type: 'u32'},
  {name: 'namelen', type: 'u32'},
  {name: 'frsize', type: 'u32'},
  {name: 'padding', type: 'u32'},
  {name: 'spare', type: 'u32', count: 6},
])

/** fuse.h: struct fuse_statfs_out */
export const fuse_statfs_out = new CStruct('fuse_statfs_out', [{name: 'st', type: fuse_kstatfs}])

/** fuse.h: struct fuse_interrupt_in */
export const fuse_interrupt_in = new CStruct('fuse_interrupt_in', [{name: 'unique', type: 'u64'}])

/** fuse.h: struct fuse_forget_in */
export const fuse_forget_in = new CStruct('fuse_forget_in', [{name: 'nlookup', type: 'u64'}])

/** fuse.h: struct fuse_batch_forget_in (followed by `count` struct fuse_forget_one) */
export const fuse_batch_forget_in = new CStruct('fuse_batch_forget_in', [
  {name: 'count', type: 'u32'},
  {name: 'dummy', type: 'u32'},
])

/** fuse.h: struct fuse_forget_one */
export const fuse_forget_one = new CStruct('fuse_forget_one', [
  {name: 'nodeid', type: 'u64'},
  {name: 'nlookup', type: 'u64'},
])

/** fuse.h: struct fuse_dirent (followed by the name, the whole padded to 8 bytes: FUSE_DIRENT_ALIGN) */
export const fuse_dirent = new CStruct('fuse_dirent', [
  {name: 'ino', type: 'u64'},
  {name: 'off', type: 'u64'},
  {name: 'namelen', type: 'u32'},
  {name: 'type', type: 'u32'},
])
/** fuse.h: FUSE_NAME_OFFSET = offsetof(struct fuse_dirent, name) */
export const FUSE_NAME_OFFSET = 24
/** fuse.h: FUSE_DIRENT_ALIGN(x) */
export const direntAlign = (x: number): number => (x + 7) & ~7

/** Encode one struct fuse_dirent with its name (FUSE_DIRENT_SIZE bytes). */
export function encodeDirent(ino: number, nextOff: number, type: number, name: string): Buffer {
  const nameBuf = Buffer.from(name)
  const buf = Buffer.alloc(direntAlign(FUSE_NAME_OFFSET + nameBuf.length))
  fuse_dirent.encode({ino, off: nextOff, namelen: nameBuf.length, type}, buf)
  nameBuf.copy(buf, FUSE_NAME_OFFSET)
  return buf
}

/** sys/stat.h */
export const S_IFDIR = 0o040000
export const S_IFREG = 0o100000
/** dirent.h: d_type values */
export const DT_DIR = 4
export const DT_REG = 8

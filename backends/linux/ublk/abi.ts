/**
 * The ublk userspace interface, as defined in include/uapi/linux/ublk_cmd.h (torvalds/linux master, 2026;
 * everything vdev uses exists since Linux 6.5, GET_FEATURES and USER_COPY included). Sizes and offsets are
 * checked in test/ublk/abi.test.ts.
 */
import {CStruct} from '../../../src/sys/cstruct'
import {IOR, IOWR, iocNr} from '../../../src/sys/ioctl'

/** Legacy (plain-number) control commands — used only when the kernel rejects the ioctl-encoded ones. */
export const UBLK_CMD_GET_DEV_INFO = 0x02
export const UBLK_CMD_ADD_DEV = 0x04
export const UBLK_CMD_DEL_DEV = 0x05
export const UBLK_CMD_START_DEV = 0x06
export const UBLK_CMD_STOP_DEV = 0x07
export const UBLK_CMD_SET_PARAMS = 0x08
export const UBLK_CMD_GET_PARAMS = 0x09
export const UBLK_CMD_GET_FEATURES = 0x13

/** Legacy I/O commands */
export const UBLK_IO_FETCH_REQ = 0x20
export const UBLK_IO_COMMIT_AND_FETCH_REQ = 0x21

/** struct ublksrv_ctrl_cmd — the payload of a control uring_cmd (sqe->cmd of an SQE128 ring). */
export const ublksrv_ctrl_cmd = new CStruct('ublksrv_ctrl_cmd', [
  {name: 'dev_id', type: 'u32'},
  /** must be -1 (0xffff) when the command is not for a queue */
  {name: 'queue_id', type: 'u16'},
  {name: 'len', type: 'u16'},
  {name: 'addr', type: 'u64'},
  {name: 'data', type: 'u64'},
  {name: 'dev_path_len', type: 'u16'},
  {name: 'pad', type: 'u16'},
  {name: 'reserved', type: 'u32'},
])

/** struct ublksrv_ctrl_dev_info */
export const ublksrv_ctrl_dev_info = new CStruct('ublksrv_ctrl_dev_info', [
  {name: 'nr_hw_queues', type: 'u16'},
  {name: 'queue_depth', type: 'u16'},
  {name: 'state', type: 'u16'},
  {name: 'pad0', type: 'u16'},
  {name: 'max_io_buf_bytes', type: 'u32'},
  {name: 'dev_id', type: 'u32'},
  {name: 'ublksrv_pid', type: 'i32'},
  {name: 'pad1', type: 'u32'},
  {name: 'flags', type: 'u64'},
  {name: 'ublksrv_flags', type: 'u64'},
  {name: 'owner_uid', type: 'u32'},
  {name: 'owner_gid', type: 'u32'},
  {name: 'reserved1', type: 'u64'},
  {name: 'reserved2', type: 'u64'},
])

/** struct ublksrv_io_desc — one per tag in the queue's mmapped descriptor array (read-only to us). */
export const ublksrv_io_desc = new CStruct('ublksrv_io_desc', [
  /** op: bits 0-7, flags: bits 8-31 */
  {name: 'op_flags', type: 'u32'},
  /** union with nr_zones */
  {name: 'nr_sectors', type: 'u32'},
  {name: 'start_sector', type: 'u64'},
  {name: 'addr', type: 'u64'},
])

/** struct ublksrv_io_cmd — the payload of an I/O uring_cmd on /dev/ublkcN. */
export const ublksrv_io_cmd = new CStruct('ublksrv_io_cmd', [
  {name: 'q_id', type: 'u16'},
  {name: 'tag', type: 'u16'},
  /** COMMIT: bytes done or -errno */
  {name: 'result', type: 'i32'},
  /** FETCH/COMMIT without USER_COPY: our buffer for this tag (union with zone_append_lba) */
  {name: 'addr', type: 'u64'},
])

/** struct ublk_param_basic */
export const ublk_param_basic = new CStruct('ublk_param_basic', [
  {name: 'attrs', type: 'u32'},
  {name: 'logical_bs_shift', type: 'u8'},
  {name: 'physical_bs_shift', type: 'u8'},
  {name: 'io_opt_shift', type: 'u8'},
  {name: 'io_min_shift', type: 'u8'},
  {name: 'max_sectors', type: 'u32'},
  {name: 'chunk_sectors', type: 'u32'},
  {name: 'dev_sectors', type: 'u64'},
  {name: 'virt_boundary_mask', type: 'u64'},
])

/** struct ublk_param_discard */
export const ublk_param_discard = new CStruct('ublk_param_discard', [
  {name: 'discard_alignment', type: 'u32'},
  {name: 'discard_granularity', type: 'u32'},
  {name: 'max_discard_sectors', type: 'u32'},
  {name: 'max_write_zeroes_sectors', type: 'u32'},
  {name: 'max_discard_segments', type: 'u16'},
  {name: 'reserved0', type: 'u16'},
])

/** struct ublk_param_devt — filled by the kernel (GET_PARAMS after START_DEV). */
export const ublk_param_devt = new CStruct('ublk_param_devt', [
  {name: 'char_major', type: 'u32'},
  {name: 'char_minor', type: 'u32'},
  {name: 'disk_major', type: 'u32'},
  {name: 'disk_minor', type: 'u32'},
])

/** struct ublk_param_zoned */
export const ublk_param_zoned = new CStruct('ublk_param_zoned', [
  {name: 'max_open_zones', type: 'u32'},
  {name: 'max_active_zones', type: 'u32'},
  {name: 'max_zone_append_sectors', type: 'u32'},
  {name: 'reserved', type: 'bytes', count: 20},
])

/** struct ublk_param_dma_align (6.14+) */
export const ublk_param_dma_align = new CStruct('ublk_param_dma_align', [
  {name: 'alignment', type: 'u32'},
  {name: 'pad', type: 'bytes', count: 4},
])

/** struct ublk_param_segment (6.14+) */
export const ublk_param_segment = new CStruct('ublk_param_segment', [
  {name: 'seg_boundary_mask', type: 'u64'},
  {name: 'max_segment_size', type: 'u32'},
  {name: 'max_segments', type: 'u16'},
  {name: 'pad', type: 'bytes', count: 2},
])

/** struct ublk_param_integrity (6.19+) */
export const ublk_param_integrity = new CStruct('ublk_param_integrity', [
  {name: 'flags', type: 'u32'},
  {name: 'max_integrity_segments', type: 'u16'},
  {name: 'interval_exp', type: 'u8'},
  {name: 'metadata_size', type: 'u8'},
  {name: 'pi_offset', type: 'u8'},
  {name: 'csum_type', type: 'u8'},
  {name: 'tag_size', type: 'u8'},
  {name: 'pad', type: 'bytes', count: 5},
])

/**
 * struct ublk_params. `len` tells the kernel how much of it we send; a kernel whose struct is shorter clamps
 * len to its own size, so sending the whole current layout works on older kernels as long as `types` only
 * names parts they know.
 */
export const ublk_params = new CStruct('ublk_params', [
  {name: 'len', type: 'u32'},
  {name: 'types', type: 'u32'},
  {name: 'basic', type: ublk_param_basic},
  {name: 'discard', type: ublk_param_discard},
  {name: 'devt', type: ublk_param_devt},
  {name: 'zoned', type: ublk_param_zoned},
  {name: 'dma', type: ublk_param_dma_align},
  {name: 'seg', type: ublk_param_segment},
  {name: 'integrity', type: ublk_param_integrity},
])

/** ublk_params.types */
export const UBLK_PARAM_TYPE_BASIC = 1 << 0
export const UBLK_PARAM_TYPE_DISCARD = 1 << 1
export const UBLK_PARAM_TYPE_DEVT = 1 << 2

/** ublk_param_basic.attrs */
export const UBLK_ATTR_READ_ONLY = 1 << 0
export const UBLK_ATTR_ROTATIONAL = 1 << 1
/** A volatile write cache: the block layer sends FLUSH requests (REQ_PREFLUSH becomes UBLK_IO_OP_FLUSH). */
export const UBLK_ATTR_VOLATILE_CACHE = 1 << 2
/** With VOLATILE_CACHE: FUA writes arrive as writes flagged UBLK_IO_F_FUA instead of a write + flush. */
export const UBLK_ATTR_FUA = 1 << 3

/** Ioctl-encoded control commands (UBLK_U_CMD_*): _IOR/_IOWR('u', nr, struct ublksrv_ctrl_cmd). */
const U = 'u'.charCodeAt(0)
export const UBLK_U_CMD_GET_DEV_INFO = IOR(U, UBLK_CMD_GET_DEV_INFO, ublksrv_ctrl_cmd.size)
export const UBLK_U_CMD_ADD_DEV = IOWR(U, UBLK_CMD_ADD_DEV, ublksrv_ctrl_cmd.size)
export const UBLK_U_CMD_DEL_DEV = IOWR(U, UBLK_CMD_DEL_DEV, ublksrv_ctrl_cmd.size)
export const UBLK_U_CMD_START_DEV = IOWR(U, UBLK_CMD_START_DEV, ublksrv_ctrl_cmd.size)
export const UBLK_U_CMD_STOP_DEV = IOWR(U, UBLK_CMD_STOP_DEV, ublksrv_ctrl_cmd.size)
export const UBLK_U_CMD_SET_PARAMS = IOWR(U, UBLK_CMD_SET_PARAMS, ublksrv_ctrl_cmd.size)
export const UBLK_U_CMD_GET_PARAMS = IOR(U, UBLK_CMD_GET_PARAMS, ublksrv_ctrl_cmd.size)
export const UBLK_U_CMD_GET_FEATURES = IOR(U, UBLK_CMD_GET_FEATURES, ublksrv_ctrl_cmd.size)

/** Ioctl-encoded I/O commands (UBLK_U_IO_*): _IOWR('u', nr, struct ublksrv_io_cmd). */
export const UBLK_U_IO_FETCH_REQ = IOWR(U, UBLK_IO_FETCH_REQ, ublksrv_io_cmd.size)
export const UBLK_U_IO_COMMIT_AND_FETCH_REQ = IOWR(U, UBLK_IO_COMMIT_AND_FETCH_REQ, ublksrv_io_cmd.size)

/** The legacy number of an ioctl-encoded command (its _IOC_NR). */
export const legacyOpcode = iocNr

/** Device feature flags (ublksrv_ctrl_dev_info.flags, GET_FEATURES) */
export const UBLK_F_SUPPORT_ZERO_COPY = 1n << 0n
export const UBLK_F_URING_CMD_COMP_IN_TASK = 1n << 1n
export const UBLK_F_NEED_GET_DATA = 1n << 2n
export const UBLK_F_USER_RECOVERY = 1n << 3n
export const UBLK_F_UNPRIVILEGED_DEV = 1n << 5n
export const UBLK_F_CMD_IOCTL_ENCODE = 1n << 6n
export const UBLK_F_USER_COPY = 1n << 7n

/** I/O ops (ublksrv_io_desc.op_flags & 0xff) */
export const UBLK_IO_OP_READ = 0
export const UBLK_IO_OP_WRITE = 1
export const UBLK_IO_OP_FLUSH = 2
export const UBLK_IO_OP_DISCARD = 3
export const UBLK_IO_OP_WRITE_SAME = 4
export const UBLK_IO_OP_WRITE_ZEROES = 5

/** Request flags (ublksrv_io_desc.op_flags, bits 8-31; the values are already shifted) */
export const UBLK_IO_F_FAILFAST_DEV = 1 << 8
export const UBLK_IO_F_FAILFAST_TRANSPORT = 1 << 9
export const UBLK_IO_F_FAILFAST_DRIVER = 1 << 10
export const UBLK_IO_F_META = 1 << 11
/** REQ_FUA: the write must be on stable storage before it completes. */
export const UBLK_IO_F_FUA = 1 << 13
/** REQ_NOUNMAP: a write-zeroes that must not deallocate (the overlay records zeros the same way either way). */
export const UBLK_IO_F_NOUNMAP = 1 << 15
export const UBLK_IO_F_SWAP = 1 << 16

/** FETCH completion results (cqe.res); only ABORT means "do not fetch again". */
export const UBLK_IO_RES_OK = 0
export const UBLK_IO_RES_NEED_GET_DATA = 1
export const UBLK_IO_RES_ABORT = -19 // -ENODEV

/** Device states (ublksrv_ctrl_dev_info.state) */
export const UBLK_S_DEV_DEAD = 0
export const UBLK_S_DEV_LIVE = 1
export const UBLK_S_DEV_QUIESCED = 2

/** Offsets in /dev/ublkcN: the descriptor arrays (mmap) and, with USER_COPY, the request buffers (pread/pwrite). */
export const UBLKSRV_CMD_BUF_OFFSET = 0
export const UBLKSRV_IO_BUF_OFFSET = 0x80000000
export const UBLK_MAX_QUEUE_DEPTH = 4096
export const UBLK_IO_BUF_BITS = 25
export const UBLK_TAG_OFF = UBLK_IO_BUF_BITS
export const UBLK_TAG_BITS = 16
export const UBLK_QID_OFF = UBLK_TAG_OFF + UBLK_TAG_BITS
/** Largest single I/O buffer the driver supports (1 << UBLK_IO_BUF_BITS = 32 MiB). */
export const UBLK_MAX_IO_BUF_BYTES = 1 << UBLK_IO_BUF_BITS

/**
 * pread/pwrite position of request (qid, tag)'s data with USER_COPY (UBLKSRV_IO_BUF_OFFSET | qid << QID_OFF |
 * tag << TAG_OFF). Exact as a Number for qid < 2048 (the top queues' positions pass 2^53); vdev uses a few.
 */
export function userCopyOffset(qid: number, tag: number): number {
  if (qid >= 2048 || tag >= 1 << UBLK_TAG_BITS) throw new RangeError(`ublk: no user-copy position for queue ${qid} tag ${tag}`)
  return UBLKSRV_IO_BUF_OFFSET + qid * 2 ** UBLK_QID_OFF + tag * 2 ** UBLK_TAG_OFF
}

/** mmap offset and length of queue qid's descriptor array (ublk_ch_mmap: one max-depth slot per queue). */
export function descArrayMapping(qid: number, depth: number, pageSize = 4096): {offset: number; length: number} {
  const roundUp = (n: number): number => Math.ceil(n / pageSize) * pageSize
  return {
    offset: UBLKSRV_CMD_BUF_OFFSET + qid * roundUp(UBLK_MAX_QUEUE_DEPTH * ublksrv_io_desc.size),
    length: roundUp(depth * ublksrv_io_desc.size),
  }
}

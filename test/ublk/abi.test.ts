/**
 * The io_uring and ublk structs: sizes and offsets against the values of include/uapi/linux/io_uring.h and
 * include/uapi/linux/ublk_cmd.h (torvalds/linux master; compiled with gcc on x86_64 to get these numbers), the
 * ioctl-encoded opcodes, and — where gcc and linux-libc-dev are installed — a C program compiled against the
 * installed headers for every field they have (Debian 12 ships 6.1 headers: older, so a subset).
 */
import {strict as assert} from 'node:assert'
import {execFileSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as abi from '../../backends/linux/ublk/abi'
import * as uring from '../../src/sys/io_uring'
import {deviceParams, MAX_DISCARD_SECTORS} from '../../backends/linux/ublk/params'
import type {CStruct} from '../../src/sys/cstruct'

const EXPECTED: Array<[CStruct, number, Record<string, number>]> = [
  [uring.io_sqring_offsets, 40, {head: 0, tail: 4, ring_mask: 8, ring_entries: 12, flags: 16, dropped: 20, array: 24, resv1: 28, user_addr: 32}],
  [uring.io_cqring_offsets, 40, {head: 0, tail: 4, ring_mask: 8, ring_entries: 12, overflow: 16, cqes: 20, flags: 24, resv1: 28, user_addr: 32}],
  [
    uring.io_uring_params,
    120,
    {sq_entries: 0, cq_entries: 4, flags: 8, sq_thread_cpu: 12, sq_thread_idle: 16, features: 20, wq_fd: 24, resv: 28, sq_off: 40, cq_off: 80},
  ],
  [
    uring.io_uring_sqe,
    64,
    {opcode: 0, flags: 1, ioprio: 2, fd: 4, off: 8, addr: 16, len: 24, rw_flags: 28, user_data: 32, buf_index: 40, personality: 42, file_index: 44, addr3: 48, __pad2: 56},
  ],
  [uring.io_uring_cqe, 16, {user_data: 0, res: 8, flags: 12}],
  [abi.ublksrv_ctrl_cmd, 32, {dev_id: 0, queue_id: 4, len: 6, addr: 8, data: 16, dev_path_len: 24, pad: 26, reserved: 28}],
  [
    abi.ublksrv_ctrl_dev_info,
    64,
    {
      nr_hw_queues: 0,
      queue_depth: 2,
      state: 4,
      pad0: 6,
      max_io_buf_bytes: 8,
      dev_id: 12,
      ublksrv_pid: 16,
      pad1: 20,
      flags: 24,
      ublksrv_flags: 32,
      owner_uid: 40,
      owner_gid: 44,
      reserved1: 48,
      reserved2: 56,
    },
  ],
  [abi.ublksrv_io_desc, 24, {op_flags: 0, nr_sectors: 4, start_sector: 8, addr: 16}],
  [abi.ublksrv_io_cmd, 16, {q_id: 0, tag: 2, result: 4, addr: 8}],
  [
    abi.ublk_param_basic,
    32,
    {attrs: 0, logical_bs_shift: 4, physical_bs_shift: 5, io_opt_shift: 6, io_min_shift: 7, max_sectors: 8, chunk_sectors: 12, dev_sectors: 16, virt_boundary_mask: 24},
  ],
  [
    abi.ublk_param_discard,
    20,
    {discard_alignment: 0, discard_granularity: 4, max_discard_sectors: 8, max_write_zeroes_sectors: 12, max_discard_segments: 16, reserved0: 18},
  ],
  [abi.ublk_param_devt, 16, {char_major: 0, char_minor: 4, disk_major: 8, disk_minor: 12}],
  [abi.ublk_param_zoned, 32, {max_open_zones: 0, max_active_zones: 4, max_zone_append_sectors: 8, reserved: 12}],
  [abi.ublk_param_dma_align, 8, {alignment: 0, pad: 4}],
  [abi.ublk_param_segment, 16, {seg_boundary_mask: 0, max_segment_size: 8, max_segments: 12, pad: 14}],
  [
    abi.ublk_param_integrity,
    16,
    {flags: 0, max_integrity_segments: 4, interval_exp: 6, metadata_size: 7, pi_offset: 8, csum_type: 9, tag_size: 10, pad: 11},
  ],
  [abi.ublk_params, 152, {len: 0, types: 4, basic: 8, discard: 40, devt: 60, zoned: 76, dma: 108, seg: 120, integrity: 136}],
]

/** Fields the Linux 6.1 headers (Debian 12's linux-libc-dev) already have, for the compiled check. */
const IN_6_1: Record<string, string[] | 'all'> = {
  io_sqring_offsets: ['head', 'tail', 'ring_mask', 'ring_entries', 'flags', 'dropped', 'array', 'resv1'],
  io_cqring_offsets: ['head', 'tail', 'ring_mask', 'ring_entries', 'overflow', 'cqes', 'flags', 'resv1'],
  io_uring_params: 'all',
  io_uring_sqe: ['opcode', 'flags', 'ioprio', 'fd', 'off', 'addr', 'len', 'rw_flags', 'user_data', 'buf_index', 'personality', 'file_index', 'addr3'],
  io_uring_cqe: 'all',
  ublksrv_ctrl_cmd: ['dev_id', 'queue_id', 'len', 'addr', 'data'],
  ublksrv_io_desc: 'all',
  ublksrv_io_cmd: 'all',
  ublk_param_basic: 'all',
  ublk_param_discard: 'all',
}

describe('io_uring and ublk ABI (io_uring.h, ublk_cmd.h)', () => {
  for (const [s, size, offsets] of EXPECTED) {
    it(`${s.name}: size ${size} and every field offset`, () => {
      assert.equal(s.size, size)
      assert.deepEqual({...s.offsets}, offsets)
    })
  }

  it('uring_cmd fields sit where io_uring.h puts them', () => {
    assert.equal(uring.SQE_CMD_OP, 8) // cmd_op: first half of the off/addr2 union
    assert.equal(uring.SQE_CMD, 48) // cmd[]: from addr3 on
    // A control command (32 bytes) needs an SQE128 ring: 48 + 32 > 64.
    assert.ok(uring.SQE_CMD + abi.ublksrv_ctrl_cmd.size > 64)
    // An I/O command (16 bytes) fits a plain 64-byte SQE.
    assert.ok(uring.SQE_CMD + abi.ublksrv_io_cmd.size <= 64)
  })

  it('ioctl-encoded opcodes are _IOR/_IOWR(\'u\', nr, struct) and carry the legacy number', () => {
    // Values from the C macros (see the file comment).
    assert.equal(abi.UBLK_U_CMD_ADD_DEV, 0xc0207504)
    assert.equal(abi.UBLK_U_CMD_DEL_DEV, 0xc0207505)
    assert.equal(abi.UBLK_U_CMD_START_DEV, 0xc0207506)
    assert.equal(abi.UBLK_U_CMD_STOP_DEV, 0xc0207507)
    assert.equal(abi.UBLK_U_CMD_SET_PARAMS, 0xc0207508)
    assert.equal(abi.UBLK_U_CMD_GET_PARAMS, 0x80207509)
    assert.equal(abi.UBLK_U_CMD_GET_DEV_INFO, 0x80207502)
    assert.equal(abi.UBLK_U_CMD_GET_FEATURES, 0x80207513)
    assert.equal(abi.UBLK_U_IO_FETCH_REQ, 0xc0107520)
    assert.equal(abi.UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc0107521)
    assert.equal(abi.legacyOpcode(abi.UBLK_U_CMD_ADD_DEV), abi.UBLK_CMD_ADD_DEV)
    assert.equal(abi.legacyOpcode(abi.UBLK_U_IO_COMMIT_AND_FETCH_REQ), abi.UBLK_IO_COMMIT_AND_FETCH_REQ)
  })

  it('user-copy positions and descriptor mappings follow the driver\'s bit layout', () => {
    assert.equal(abi.userCopyOffset(0, 0), 0x80000000)
    // qid << 41 | tag << 25, above UBLKSRV_IO_BUF_OFFSET
    assert.equal(abi.userCopyOffset(1, 2), 0x80000000 + 2 ** 41 + 2 * 2 ** 25)
    assert.equal(abi.userCopyOffset(2047, 65535), 0x80000000 + 2047 * 2 ** 41 + 65535 * 2 ** 25)
    assert.ok(Number.isSafeInteger(abi.userCopyOffset(2047, 65535) + abi.UBLK_MAX_IO_BUF_BYTES))
    assert.throws(() => abi.userCopyOffset(2048, 0), RangeError)
    // Each queue's slot is sized for UBLK_MAX_QUEUE_DEPTH descriptors: 4096 * 24 = 96 KiB.
    assert.deepEqual(abi.descArrayMapping(0, 64), {offset: 0, length: 4096})
    assert.deepEqual(abi.descArrayMapping(2, 200), {offset: 2 * 98304, length: 8192})
  })

  it('encodes ublk_params with the fields where the driver reads them', () => {
    const b = abi.ublk_params.encode({
      len: abi.ublk_params.size,
      types: abi.UBLK_PARAM_TYPE_BASIC,
      basic: {attrs: abi.UBLK_ATTR_READ_ONLY, logical_bs_shift: 12, physical_bs_shift: 12, max_sectors: 2048, dev_sectors: 1n << 40n},
    })
    assert.equal(b.readUInt32LE(0), 152)
    assert.equal(b.readUInt32LE(4), 1)
    assert.equal(b.readUInt32LE(8), 1)
    assert.equal(b[12], 12)
    assert.equal(b.readUInt32LE(16), 2048)
    assert.equal(b.readBigUInt64LE(24), 1n << 40n)
  })

  it('the write-path flags and ops have the values of ublk_cmd.h (torvalds/linux master)', () => {
    // Literal values from the header, for machines without it; the compiled check below confirms them.
    assert.equal(abi.UBLK_ATTR_READ_ONLY, 1)
    assert.equal(abi.UBLK_ATTR_VOLATILE_CACHE, 4)
    assert.equal(abi.UBLK_ATTR_FUA, 8)
    assert.equal(abi.UBLK_PARAM_TYPE_DISCARD, 2)
    assert.deepEqual(
      [abi.UBLK_IO_OP_READ, abi.UBLK_IO_OP_WRITE, abi.UBLK_IO_OP_FLUSH, abi.UBLK_IO_OP_DISCARD, abi.UBLK_IO_OP_WRITE_SAME, abi.UBLK_IO_OP_WRITE_ZEROES],
      [0, 1, 2, 3, 4, 5],
    )
    // Flags sit above the op's byte, already shifted: op_flags & UBLK_IO_F_FUA.
    assert.equal(abi.UBLK_IO_F_FUA, 0x2000)
    assert.equal(abi.UBLK_IO_F_NOUNMAP, 0x8000)
    assert.equal((abi.UBLK_IO_OP_WRITE | abi.UBLK_IO_F_FUA) & 0xff, abi.UBLK_IO_OP_WRITE)
  })

  it('a read-only server gets a read-only disk; a writable one a volatile cache, FUA, discard and write-zeroes', () => {
    const encode = (writable: boolean, sectorSize: number): Buffer =>
      abi.ublk_params.encode({len: abi.ublk_params.size, ...deviceParams({size: 8 << 20, sectorSize, writable}, 1 << 20)})
    const ro = encode(false, 512)
    const o = abi.ublk_params.offsets
    const b = abi.ublk_param_basic.offsets
    const d = abi.ublk_param_discard.offsets
    assert.equal(ro.readUInt32LE(o.types), abi.UBLK_PARAM_TYPE_BASIC)
    assert.equal(ro.readUInt32LE(o.basic + b.attrs), abi.UBLK_ATTR_READ_ONLY)
    assert.equal(ro.readUInt32LE(o.basic + b.max_sectors), 2048)
    assert.equal(ro.readBigUInt64LE(o.basic + b.dev_sectors), 16384n)
    // No discard part at all: the driver leaves discard and write-zeroes off.
    assert.ok(ro.subarray(o.discard, o.discard + abi.ublk_param_discard.size).equals(Buffer.alloc(abi.ublk_param_discard.size)))

    const rw = encode(true, 4096)
    assert.equal(rw.readUInt32LE(o.types), abi.UBLK_PARAM_TYPE_BASIC | abi.UBLK_PARAM_TYPE_DISCARD)
    assert.equal(rw.readUInt32LE(o.basic + b.attrs), abi.UBLK_ATTR_VOLATILE_CACHE | abi.UBLK_ATTR_FUA)
    assert.equal(rw[o.basic + b.logical_bs_shift], 12)
    // ublk_validate_params: a discard granularity, and exactly one segment when discards are allowed.
    assert.equal(rw.readUInt32LE(o.discard + d.discard_granularity), 4096)
    assert.equal(rw.readUInt32LE(o.discard + d.discard_alignment), 0)
    assert.equal(rw.readUInt16LE(o.discard + d.max_discard_segments), 1)
    assert.equal(rw.readUInt32LE(o.discard + d.max_discard_sectors), MAX_DISCARD_SECTORS)
    assert.equal(rw.readUInt32LE(o.discard + d.max_write_zeroes_sectors), MAX_DISCARD_SECTORS)
    assert.equal(MAX_DISCARD_SECTORS, 0x7fffff) // UINT_MAX >> SECTOR_SHIFT, as the kernel's nbd driver
  })

  it('an image that ends in a partial sector gives a disk of its whole logical blocks (in 512-byte units)', () => {
    const sectors = (size: number, sectorSize: number): bigint =>
      abi.ublk_params
        .encode({len: abi.ublk_params.size, ...deviceParams({size, sectorSize, writable: false}, 1 << 20)})
        .readBigUInt64LE(abi.ublk_params.offsets.basic + abi.ublk_param_basic.offsets.dev_sectors)
    assert.equal(sectors((8 << 20) + 100, 512), 16384n)
    assert.equal(sectors((8 << 20) + 4095, 4096), 16384n)
    assert.equal(sectors((8 << 20) + 4096 + 512, 4096), 16392n) // 2049 blocks of 4096, never 2049.125
    assert.equal(sectors(100, 512), 0n)
  })

  const cc = ['/usr/bin/cc', '/usr/bin/gcc'].find((p) => fs.existsSync(p))
  const headers = fs.existsSync('/usr/include/linux/io_uring.h') && fs.existsSync('/usr/include/linux/ublk_cmd.h')
  it('matches a C program compiled against the installed <linux/io_uring.h> and <linux/ublk_cmd.h>', function () {
    if (!cc || !headers) this.skip() // needs gcc + linux-libc-dev; the literal values above still apply
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-ublk-abi-'))
    try {
      const lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <errno.h>', '#include <linux/io_uring.h>', '#include <linux/ublk_cmd.h>', 'int main(void) {']
      const want: Record<string, number> = {}
      for (const [s, size, offsets] of EXPECTED) {
        const fields = IN_6_1[s.name]
        if (!fields) continue
        lines.push(`printf("%s %zu\\n", "${s.name}", sizeof(struct ${s.name}));`)
        want[s.name] = size
        for (const f of fields === 'all' ? Object.keys(offsets) : fields) {
          lines.push(`printf("%s %zu\\n", "${s.name}.${f}", offsetof(struct ${s.name}, ${f}));`)
          want[`${s.name}.${f}`] = offsets[f]
        }
      }
      const consts: Record<string, number> = {
        IORING_OP_NOP: uring.IORING_OP_NOP,
        IORING_OP_READ: uring.IORING_OP_READ,
        IORING_OP_WRITE: uring.IORING_OP_WRITE,
        IORING_OP_URING_CMD: uring.IORING_OP_URING_CMD,
        IORING_SETUP_SQE128: uring.IORING_SETUP_SQE128,
        IORING_SETUP_CQE32: uring.IORING_SETUP_CQE32,
        IORING_FEAT_SINGLE_MMAP: uring.IORING_FEAT_SINGLE_MMAP,
        IORING_ENTER_GETEVENTS: uring.IORING_ENTER_GETEVENTS,
        IORING_OFF_CQ_RING: uring.IORING_OFF_CQ_RING,
        IORING_OFF_SQES: uring.IORING_OFF_SQES,
        UBLK_CMD_ADD_DEV: abi.UBLK_CMD_ADD_DEV,
        UBLK_CMD_START_DEV: abi.UBLK_CMD_START_DEV,
        UBLK_CMD_STOP_DEV: abi.UBLK_CMD_STOP_DEV,
        UBLK_CMD_DEL_DEV: abi.UBLK_CMD_DEL_DEV,
        UBLK_CMD_SET_PARAMS: abi.UBLK_CMD_SET_PARAMS,
        UBLK_IO_FETCH_REQ: abi.UBLK_IO_FETCH_REQ,
        UBLK_IO_COMMIT_AND_FETCH_REQ: abi.UBLK_IO_COMMIT_AND_FETCH_REQ,
        UBLK_IO_RES_ABORT: abi.UBLK_IO_RES_ABORT,
        UBLKSRV_IO_BUF_OFFSET: abi.UBLKSRV_IO_BUF_OFFSET,
        UBLK_MAX_QUEUE_DEPTH: abi.UBLK_MAX_QUEUE_DEPTH,
        UBLK_ATTR_READ_ONLY: abi.UBLK_ATTR_READ_ONLY,
        UBLK_ATTR_ROTATIONAL: abi.UBLK_ATTR_ROTATIONAL,
        UBLK_ATTR_VOLATILE_CACHE: abi.UBLK_ATTR_VOLATILE_CACHE,
        UBLK_ATTR_FUA: abi.UBLK_ATTR_FUA,
        UBLK_PARAM_TYPE_BASIC: abi.UBLK_PARAM_TYPE_BASIC,
        UBLK_PARAM_TYPE_DISCARD: abi.UBLK_PARAM_TYPE_DISCARD,
        UBLK_IO_OP_READ: abi.UBLK_IO_OP_READ,
        UBLK_IO_OP_WRITE: abi.UBLK_IO_OP_WRITE,
        UBLK_IO_OP_FLUSH: abi.UBLK_IO_OP_FLUSH,
        UBLK_IO_OP_DISCARD: abi.UBLK_IO_OP_DISCARD,
        UBLK_IO_OP_WRITE_SAME: abi.UBLK_IO_OP_WRITE_SAME,
        UBLK_IO_OP_WRITE_ZEROES: abi.UBLK_IO_OP_WRITE_ZEROES,
        UBLK_IO_F_FAILFAST_DEV: abi.UBLK_IO_F_FAILFAST_DEV,
        UBLK_IO_F_FAILFAST_TRANSPORT: abi.UBLK_IO_F_FAILFAST_TRANSPORT,
        UBLK_IO_F_FAILFAST_DRIVER: abi.UBLK_IO_F_FAILFAST_DRIVER,
        UBLK_IO_F_META: abi.UBLK_IO_F_META,
        UBLK_IO_F_FUA: abi.UBLK_IO_F_FUA,
        UBLK_IO_F_NOUNMAP: abi.UBLK_IO_F_NOUNMAP,
        UBLK_IO_F_SWAP: abi.UBLK_IO_F_SWAP,
      }
      for (const [name, v] of Object.entries(consts)) {
        lines.push(`printf("%s %lld\\n", "${name}", (long long)(${name}));`)
        want[name] = v
      }
      // Newer than the 6.1 headers: checked when the installed headers have them.
      const newer: Record<string, number> = {
        UBLK_F_USER_COPY: Number(abi.UBLK_F_USER_COPY),
        UBLK_F_CMD_IOCTL_ENCODE: Number(abi.UBLK_F_CMD_IOCTL_ENCODE),
        UBLK_U_CMD_ADD_DEV: abi.UBLK_U_CMD_ADD_DEV,
        UBLK_U_IO_COMMIT_AND_FETCH_REQ: abi.UBLK_U_IO_COMMIT_AND_FETCH_REQ,
        UBLK_U_CMD_GET_FEATURES: abi.UBLK_U_CMD_GET_FEATURES,
      }
      for (const name of Object.keys(newer))
        lines.push(`#ifdef ${name}`, `printf("%s %lld\\n", "${name}", (long long)(${name}));`, '#endif')
      lines.push('return 0; }')
      const src = path.join(dir, 'abi.c')
      const exe = path.join(dir, 'abi')
      fs.writeFileSync(src, lines.join('\n'))
      execFileSync(cc!, ['-o', exe, src])
      const got: Record<string, number> = {}
      for (const line of execFileSync(exe, {encoding: 'utf8'}).trim().split('\n')) {
        const [k, v] = line.split(' ')
        got[k] = Number(v)
      }
      for (const k of Object.keys(got)) if (k in newer) want[k] = newer[k]
      assert.deepEqual(got, want)
    } finally {
      fs.rmSync(dir, {recursive: true, force: true})
    }
  })
})

/**
 * The loop device interface, as defined in include/uapi/linux/loop.h (Linux 5.8+ for LOOP_CONFIGURE).
 * Layouts are checked against the header's sizes and offsets in test/fuse/loop-abi.test.ts.
 */
import {CStruct} from '../../../src/sys/cstruct'

/** loop.h: LO_NAME_SIZE, LO_KEY_SIZE */
export const LO_NAME_SIZE = 64
export const LO_KEY_SIZE = 32

/** loop.h: enum { LO_FLAGS_* } */
export const LO_FLAGS_READ_ONLY = 1
export const LO_FLAGS_AUTOCLEAR = 4
export const LO_FLAGS_PARTSCAN = 8
export const LO_FLAGS_DIRECT_IO = 16

/** loop.h: ioctls on /dev/loopN (plain numbers, not _IOC-encoded) */
export const LOOP_SET_FD = 0x4c00
export const LOOP_CLR_FD = 0x4c01
export const LOOP_SET_STATUS64 = 0x4c04
export const LOOP_GET_STATUS64 = 0x4c05
export const LOOP_SET_DIRECT_IO = 0x4c08
export const LOOP_SET_BLOCK_SIZE = 0x4c09
export const LOOP_CONFIGURE = 0x4c0a

/** loop.h: ioctls on /dev/loop-control */
export const LOOP_CTL_ADD = 0x4c80
export const LOOP_CTL_REMOVE = 0x4c81
export const LOOP_CTL_GET_FREE = 0x4c82

/** loop.h: struct loop_info64 */
export const loop_info64 = new CStruct('loop_info64', [
  {name: 'lo_device', type: 'u64'},
  {name: 'lo_inode', type: 'u64'},
  {name: 'lo_rdevice', type: 'u64'},
  {name: 'lo_offset', type: 'u64'},
  {name: 'lo_sizelimit', type: 'u64'},
  {name: 'lo_number', type: 'u32'},
  {name: 'lo_encrypt_type', type: 'u32'},
  {name: 'lo_encrypt_key_size', type: 'u32'},
  {name: 'lo_flags', type: 'u32'},
  {name: 'lo_file_name', type: 'bytes', count: LO_NAME_SIZE},
  {name: 'lo_crypt_name', type: 'bytes', count: LO_NAME_SIZE},
  {name: 'lo_encrypt_key', type: 'bytes', count: LO_KEY_SIZE},
  {name: 'lo_init', type: 'u64', count: 2},
])

/** loop.h: struct loop_config (LOOP_CONFIGURE) */
export const loop_config = new CStruct('loop_config', [
  {name: 'fd', type: 'u32'},
  {name: 'block_size', type: 'u32'},
  {name: 'info', type: loop_info64},
  {name: '__reserved', type: 'u64', count: 8},
])

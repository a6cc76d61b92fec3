/**
 * The parameters vdev gives a ublk device (UBLK_U_CMD_SET_PARAMS), from the server it serves. No FFI: the
 * ABI test checks them on any machine (test/ublk/abi.test.ts).
 */
import type {BlockServer} from '../../../src/core/blockserver'
import type {Values} from '../../../src/sys/cstruct'
import * as abi from './abi'

/**
 * Largest discard and write-zeroes request, in 512-byte sectors: what ublksrv's loop target and the kernel's
 * nbd driver give (UINT_MAX >> 9, just under 4 GiB). Neither carries data: the overlay records each as one
 * zero record, whatever its length.
 */
export const MAX_DISCARD_SECTORS = 0xffffffff >>> 9

/**
 * SET_PARAMS for a server: a read-only disk (UBLK_ATTR_READ_ONLY), or over a writable server (an overlay) a
 * disk with a volatile write cache (flushes reach us as UBLK_IO_OP_FLUSH) and FUA, discard and write-zeroes
 * (one segment per discard, the driver's only choice; granularity one sector).
 */
export function deviceParams(server: Pick<BlockServer, 'size' | 'sectorSize' | 'writable'>, maxIoBytes: number): Values {
  const bsShift = Math.log2(server.sectorSize)
  const basic = {
    attrs: server.writable ? abi.UBLK_ATTR_VOLATILE_CACHE | abi.UBLK_ATTR_FUA : abi.UBLK_ATTR_READ_ONLY,
    logical_bs_shift: bsShift,
    physical_bs_shift: bsShift,
    io_opt_shift: bsShift,
    io_min_shift: bsShift,
    max_sectors: maxIoBytes / 512,
    // Whole logical blocks: an image that ends in a partial sector (docs/FORMAT.md) ends at the last whole
    // one, as the kernel's loop and nbd drivers size it.
    dev_sectors: BigInt((Math.floor(server.size / server.sectorSize) * server.sectorSize) / 512),
  }
  if (!server.writable) return {types: abi.UBLK_PARAM_TYPE_BASIC, basic}
  return {
    types: abi.UBLK_PARAM_TYPE_BASIC | abi.UBLK_PARAM_TYPE_DISCARD,
    basic,
    discard: {
      discard_alignment: 0,
      discard_granularity: server.sectorSize,
      max_discard_sectors: MAX_DISCARD_SECTORS,
      max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
      max_discard_segments: 1,
    },
  }
}

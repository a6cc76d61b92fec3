/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final XOR 0xFFFFFFFF), as in iSCSI,
 * ext4 and btrfs. crc32c("123456789") = 0xE3069283. The native module uses the SSE4.2 instruction.
 */
import {crc32c as native} from '@node-rs/crc32'

export function crc32c(data: Uint8Array, initial = 0): number {
  return native(data as Buffer, initial) >>> 0
}

/**
 * Chunk encoding and decoding (FORMAT.md §4), shared by the main thread and the codec workers:
 * zero detection, zstd with fall-back to raw, both checksums; and the reverse with every check.
 * zstd runs through zstd-napi's low-level binding so that it reads and writes caller-owned buffers.
 */
import * as zstd from 'zstd-napi/binding'
import {crc32c} from './crc'
import {ChunkKind} from './layout'

export interface EncodedChunk {
  kind: ChunkKind
  crc: number
  storedCrc: number
  /** Stored bytes written at the start of the destination (0 for zero chunks). */
  length: number
}

let zeroBuf = Buffer.alloc(0)
export function isAllZero(b: Uint8Array): boolean {
  if (zeroBuf.length < b.length) zeroBuf = Buffer.alloc(Math.max(b.length, 1 << 20))
  return Buffer.compare(b, zeroBuf.subarray(0, b.length)) === 0
}

export class ChunkEncoder {
  private readonly cctx = new zstd.CCtx()
  constructor(level: number) {
    this.cctx.setParameter(zstd.CParameter.compressionLevel, level)
  }

  /** Encode `chunk`, writing its stored bytes into `dst` (which must hold at least chunk.length bytes). */
  encodeInto(chunk: Uint8Array, dst: Uint8Array): EncodedChunk {
    if (isAllZero(chunk)) return {kind: ChunkKind.Zero, crc: 0, storedCrc: 0, length: 0}
    const crc = crc32c(chunk)
    // Raw when compression does not save at least one 64th (decoding raw is free): zstd is given just
    // less room than that, and reports "destination too small" when the frame would not fit.
    const room = chunk.length - (chunk.length >> 6) - 1
    let n = -1
    try {
      n = this.cctx.compress2(dst.subarray(0, room), chunk)
    } catch {
      n = -1
    }
    if (n < 0) {
      dst.set(chunk)
      return {kind: ChunkKind.Raw, crc, storedCrc: crc, length: chunk.length}
    }
    return {kind: ChunkKind.Zstd, crc, storedCrc: crc32c(dst.subarray(0, n)), length: n}
  }
}

/** Why a stored chunk failed to decode; the caller adds the chunk number and offsets. */
export class ChunkDecodeError extends Error {}

export class ChunkDecoder {
  private readonly dctx = new zstd.DCtx()

  /**
   * Decode one stored chunk into `dst` (exactly its logical length); checks both checksums, or only the
   * stored one when `checkData` is false (the caller then checks the data checksum itself).
   */
  decodeInto(kind: ChunkKind, stored: Uint8Array, crc: number, storedCrc: number, dst: Uint8Array, checkData = true): void {
    const length = dst.length
    if (kind === ChunkKind.Zero || kind === ChunkKind.Unread) {
      dst.fill(0)
      return
    }
    if (crc32c(stored) !== storedCrc) throw new ChunkDecodeError('stored bytes checksum mismatch')
    if (kind === ChunkKind.Raw) {
      if (stored.length !== length) throw new ChunkDecodeError(`raw chunk holds ${stored.length} bytes, expected ${length}`)
      dst.set(stored)
    } else if (kind === ChunkKind.Zstd) {
      let n: number
      try {
        n = this.dctx.decompress(dst, stored)
      } catch (err) {
        throw new ChunkDecodeError(`zstd: ${(err as Error).message}`)
      }
      if (n !== length) throw new ChunkDecodeError(`decompressed to ${n} bytes, expected ${length}`)
    } else throw new ChunkDecodeError(`unknown chunk kind ${kind}`)
    if (checkData && crc32c(dst) !== crc) throw new ChunkDecodeError('data checksum mismatch')
  }

  /** Decode into a new buffer. */
  decode(kind: ChunkKind, stored: Uint8Array, length: number, crc: number, storedCrc: number, checkData = true): Buffer {
    if (kind === ChunkKind.Raw && stored.length === length && crc32c(stored) === storedCrc && storedCrc === crc)
      return Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength)
    const out = Buffer.allocUnsafe(length)
    this.decodeInto(kind, stored, crc, storedCrc, out, checkData)
    return out
  }
}

/**
 * Chunk encoding and decoding (FORMAT.md §4), shared by the main thread and the codec workers:
 * zero detection, zstd with fall-back to raw, both checksums; and the reverse with every check.
 */
import {Compressor, Decompressor} from 'zstd-napi'
import {crc32c} from './crc'
import {ChunkKind} from './layout'

export interface EncodedChunk {
  kind: ChunkKind
  crc: number
  storedCrc: number
  /** Stored bytes (empty for zero chunks). */
  data: Uint8Array
}

let zeroBuf = Buffer.alloc(0)
export function isAllZero(b: Uint8Array): boolean {
  if (zeroBuf.length < b.length) zeroBuf = Buffer.alloc(Math.max(b.length, 1 << 20))
  return Buffer.compare(b, zeroBuf.subarray(0, b.length)) === 0
}

export class ChunkEncoder {
  private readonly zc = new Compressor()
  constructor(level: number) {
    this.zc.setParameters({compressionLevel: level})
  }

  encode(chunk: Uint8Array): EncodedChunk {
    if (isAllZero(chunk)) return {kind: ChunkKind.Zero, crc: 0, storedCrc: 0, data: new Uint8Array(0)}
    const crc = crc32c(chunk)
    const z = this.zc.compress(chunk as Buffer)
    // Raw when compression does not save at least one 64th: decoding raw is free.
    if (z.length >= chunk.length - (chunk.length >> 6)) return {kind: ChunkKind.Raw, crc, storedCrc: crc, data: chunk}
    return {kind: ChunkKind.Zstd, crc, storedCrc: crc32c(z), data: z}
  }
}

/** Why a stored chunk failed to decode; the caller adds the chunk number and offsets. */
export class ChunkDecodeError extends Error {}

export class ChunkDecoder {
  private readonly zd = new Decompressor()

  /** Decode one stored chunk of `length` logical bytes; checks both checksums. */
  decode(kind: ChunkKind, stored: Uint8Array, length: number, crc: number, storedCrc: number): Buffer {
    if (kind === ChunkKind.Zero || kind === ChunkKind.Unread) return Buffer.alloc(length)
    if (crc32c(stored) !== storedCrc) throw new ChunkDecodeError('stored bytes checksum mismatch')
    let out: Buffer
    if (kind === ChunkKind.Raw) {
      if (stored.length !== length) throw new ChunkDecodeError(`raw chunk holds ${stored.length} bytes, expected ${length}`)
      out = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength)
    } else if (kind === ChunkKind.Zstd) {
      try {
        out = this.zd.decompress(stored as Buffer)
      } catch (err) {
        throw new ChunkDecodeError(`zstd: ${(err as Error).message}`)
      }
      if (out.length !== length) throw new ChunkDecodeError(`decompressed to ${out.length} bytes, expected ${length}`)
    } else throw new ChunkDecodeError(`unknown chunk kind ${kind}`)
    if (crc32c(out) !== crc) throw new ChunkDecodeError('data checksum mismatch')
    return out
  }
}

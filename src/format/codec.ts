/**
 * Chunk encoding and decoding (FORMAT.md §4), shared by the main thread and the codec workers:
 * zero detection, zstd with fall-back to raw, both checksums; and the reverse with every check.
 * zstd runs through zstd-napi's low-level binding so that it reads and writes caller-owned buffers, or
 * through Node's built-in zstd where zstd-napi cannot load (./zstd).
 */
import * as zstd from './zstd'
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

/**
 * The compressed size vdev aims each zstd block of a chunk's frame at (ZSTD_c_targetCBlockSize). zstd
 * decodes a frame block by block, so a frame of many small blocks lets a reader decode only the prefix
 * a small read needs (ChunkDecoder.decodePrefixInto), at almost no cost in output size (docs/fuse-loop.md,
 * "Prefix decoding", has the measurements).
 * The frame is still one ordinary zstd frame (FORMAT.md §4); this is the writer's choice, not the format's.
 */
export const ZSTD_TARGET_BLOCK = 8192

export class ChunkEncoder {
  private readonly cctx = new zstd.CCtx()
  /** `targetBlock`: see ZSTD_TARGET_BLOCK; 0 lets zstd use whole 128 KiB blocks (one per 128 KiB chunk). */
  constructor(level: number, targetBlock = ZSTD_TARGET_BLOCK) {
    this.cctx.setParameter(zstd.CParameter.compressionLevel, level)
    if (targetBlock > 0) this.cctx.setParameter(zstd.CParameter.targetCBlockSize, targetBlock)
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

/**
 * Whether a zstd frame has more than one block, from its frame header and first block header (RFC 8878
 * §3.1.1): false for a frame whose first block is its last, and for anything it cannot parse (the full
 * decoder then reports what is wrong).
 */
export function zstdMultiBlock(frame: Uint8Array): boolean {
  if (frame.length < 6 || frame[0] !== 0x28 || frame[1] !== 0xb5 || frame[2] !== 0x2f || frame[3] !== 0xfd) return false
  const fhd = frame[4]
  const fcsFlag = fhd >> 6
  const singleSegment = (fhd >> 5) & 1
  const didFlag = fhd & 3
  const headerLength = 1 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][didFlag] + [singleSegment, 2, 4, 8][fcsFlag]
  const at = 4 + headerLength
  if (frame.length < at + 3) return false
  const lastBlock = frame[at] & 1
  return lastBlock === 0
}

/** FORMAT.md §4: the largest zstd Window_Size a chunk's frame may declare (what RFC 8878 asks every decoder to support). */
export const MAX_ZSTD_WINDOW = 8 << 20

/**
 * Why `frame` is not what FORMAT.md §4 allows a zstd chunk to store, or undefined: exactly one zstd frame
 * (RFC 8878 §3.1.1; not a skippable frame) filling the stored bytes with nothing after it, no dictionary,
 * a Window_Size of at most 8 MiB, and a Frame_Content_Size, when present, equal to the chunk's logical
 * length. Walks the frame and block headers only (a few bytes a block); the decoder checks the rest.
 */
export function zstdFrameProblem(frame: Uint8Array, logicalLength: number): string | undefined {
  const n = frame.length
  if (n < 4) return 'not a zstd frame (too short)'
  const magic = (frame[0] | (frame[1] << 8) | (frame[2] << 16) | (frame[3] << 24)) >>> 0
  if ((magic & 0xfffffff0) === 0x184d2a50) return 'a skippable frame, not a zstd frame'
  if (magic !== 0xfd2fb528) return 'not a zstd frame (bad magic)'
  if (n < 5) return 'zstd frame header cut short'
  const fhd = frame[4]
  const fcsFlag = fhd >> 6
  const singleSegment = (fhd >> 5) & 1
  if (fhd & 8) return 'zstd frame header has its reserved bit set'
  const checksum = (fhd >> 2) & 1
  const didSize = [0, 1, 2, 4][fhd & 3]
  const fcsSize = [singleSegment, 2, 4, 8][fcsFlag]
  let at = 5
  if (n < at + (singleSegment ? 0 : 1) + didSize + fcsSize) return 'zstd frame header cut short'
  let window = 0
  if (!singleSegment) {
    const wd = frame[at++]
    const base = 2 ** (10 + (wd >> 3))
    window = base + (base / 8) * (wd & 7)
  }
  let dictId = 0
  for (let k = 0; k < didSize; k++) dictId += frame[at + k] * 2 ** (8 * k)
  at += didSize
  if (dictId !== 0) return `zstd frame needs dictionary ${dictId}`
  let fcs: number | undefined
  if (fcsSize > 0) {
    fcs = 0
    for (let k = 0; k < fcsSize; k++) fcs += frame[at + k] * 2 ** (8 * k)
    if (fcsSize === 2) fcs += 256
    at += fcsSize
  }
  if (singleSegment) window = fcs!
  if (window > MAX_ZSTD_WINDOW) return `zstd window of ${window} bytes is larger than ${MAX_ZSTD_WINDOW}`
  if (fcs !== undefined && fcs !== logicalLength) return `zstd frame content size ${fcs} is not the chunk's ${logicalLength} bytes`
  for (;;) {
    if (n < at + 3) return 'zstd frame cut short'
    const bh = frame[at] | (frame[at + 1] << 8) | (frame[at + 2] << 16)
    at += 3
    const type = (bh >> 1) & 3
    if (type === 3) return 'zstd block of the reserved type'
    at += type === 1 ? 1 : bh >>> 3
    if (at > n) return 'zstd frame cut short'
    if (bh & 1) break
  }
  if (checksum) at += 4
  if (at > n) return 'zstd frame cut short'
  if (at < n) return `${n - at} bytes after the zstd frame`
  return undefined
}

export class ChunkDecoder {
  private readonly dctx = new zstd.DCtx()

  /**
   * Decode one stored chunk into `dst` (exactly its logical length); checks both checksums, or only the
   * stored one when `checkData` is false (the caller then checks the data checksum itself). `storedChecked`:
   * the caller has just computed the CRC-32C of these very bytes and found it equal to storedCrc (a remote
   * image's cache file, checked on use: src/remote/cache.ts), so it is not computed twice.
   */
  decodeInto(kind: ChunkKind, stored: Uint8Array, crc: number, storedCrc: number, dst: Uint8Array, checkData = true, storedChecked = false): void {
    const length = dst.length
    if (kind === ChunkKind.Zero || kind === ChunkKind.Unread) {
      dst.fill(0)
      return
    }
    if (!storedChecked && crc32c(stored) !== storedCrc) throw new ChunkDecodeError('stored bytes checksum mismatch')
    if (kind === ChunkKind.Raw) {
      if (stored.length !== length) throw new ChunkDecodeError(`raw chunk holds ${stored.length} bytes, expected ${length}`)
      dst.set(stored)
    } else if (kind === ChunkKind.Zstd) {
      const bad = zstdFrameProblem(stored, length)
      if (bad) throw new ChunkDecodeError(bad)
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

  /**
   * Decode at least the first `need` bytes of a stored chunk into `dst` (sized to the chunk's logical
   * length) and return how many bytes at the start of `dst` are valid: the whole chunk, or — for a zstd
   * frame of several blocks — as many whole blocks as cover `need`, so a small read does not pay for the
   * rest of the chunk. Checks the stored bytes' CRC; the data CRC cannot be checked on a prefix, so this
   * is for serving reads, which rely on the stored CRC (FORMAT.md §5).
   */
  decodePrefixInto(kind: ChunkKind, stored: Uint8Array, storedCrc: number, dst: Uint8Array, need: number, storedChecked = false): number {
    if (kind !== ChunkKind.Zstd || need >= dst.length || !zstd.streaming || !zstdMultiBlock(stored)) {
      this.decodeInto(kind, stored, 0, storedCrc, dst, false, storedChecked)
      return dst.length
    }
    if (!storedChecked && crc32c(stored) !== storedCrc) throw new ChunkDecodeError('stored bytes checksum mismatch')
    const bad = zstdFrameProblem(stored, dst.length)
    if (bad) throw new ChunkDecodeError(bad)
    // Streaming with the output cut at `need`: zstd stops once it is filled (it decodes the block that
    // crosses `need` into its own window and hands out only the part that fits).
    this.dctx.reset(zstd.ResetDirective.sessionOnly)
    let produced = 0
    let consumed = 0
    while (produced < need) {
      let r: [number, number, number]
      try {
        r = this.dctx.decompressStream(dst.subarray(produced, need), stored.subarray(consumed))
      } catch (err) {
        this.dctx.reset(zstd.ResetDirective.sessionOnly)
        throw new ChunkDecodeError(`zstd: ${(err as Error).message}`)
      }
      produced += r[1]
      consumed += r[2]
      if (r[0] === 0 || (r[1] === 0 && r[2] === 0)) break
    }
    // The rest of the block that crossed `need` is already decoded: take it too (no input, so no new block).
    if (produced >= need && produced < dst.length) {
      try {
        produced += this.dctx.decompressStream(dst.subarray(produced), stored.subarray(0, 0))[1]
      } catch {
        /* keep what we have */
      }
    }
    this.dctx.reset(zstd.ResetDirective.sessionOnly)
    if (produced < need) throw new ChunkDecodeError(`decompressed to ${produced} bytes, expected at least ${need}`)
    return produced
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

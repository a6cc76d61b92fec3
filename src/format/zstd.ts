/**
 * The zstd vdev compresses chunks with: zstd-napi's low-level binding (reads and writes caller-owned
 * buffers, streams for prefix decoding), or — where zstd-napi cannot load, e.g. a Windows install made
 * offline, without the prebuilt binary it fetches from GitHub and without a compiler — Node's built-in zstd
 * (`node:zlib`, Node ≥ 22.15). Both write ordinary zstd frames (FORMAT.md §4); the built-in one decodes
 * whole chunks only (no prefix decoding: a small read decodes its whole chunk) and copies once more.
 *
 * VDEV_ZSTD=node forces the built-in one (tests), VDEV_ZSTD=napi forbids the fallback.
 * The interface is the subset of zstd-napi's binding that src/format/codec.ts uses.
 */
import * as zlib from 'node:zlib'

export const CParameter = {compressionLevel: 100, targetCBlockSize: 130} as const
export const ResetDirective = {sessionOnly: 1} as const

export interface CCtxLike {
  setParameter(param: number, value: number): void
  /** Compress `src` into `dst`; throws when the frame does not fit. Returns its length. */
  compress2(dst: Uint8Array, src: Uint8Array): number
}
export interface DCtxLike {
  /** Decompress one whole frame into `dst`; returns the decompressed length. */
  decompress(dst: Uint8Array, src: Uint8Array): number
  /** [remaining hint, produced, consumed] — zstd-napi only (see `streaming`). */
  decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number]
  reset(directive: number): void
}

type ZlibZstd = typeof zlib & {
  zstdCompressSync(b: Uint8Array, o: {params: Record<number, number>}): Buffer
  zstdDecompressSync(b: Uint8Array, o: {maxOutputLength: number}): Buffer
}

/** Node's built-in zstd behind zstd-napi's interface. ZSTD_c_compressionLevel = 100, ZSTD_c_targetCBlockSize = 130 (zstd.h). */
class NodeCCtx implements CCtxLike {
  private readonly params: Record<number, number> = {}
  setParameter(param: number, value: number): void {
    this.params[param] = value
  }
  compress2(dst: Uint8Array, src: Uint8Array): number {
    const out = (zlib as ZlibZstd).zstdCompressSync(src, {params: this.params})
    if (out.length > dst.length) throw new Error('Destination buffer is too small')
    dst.set(out)
    return out.length
  }
}

class NodeDCtx implements DCtxLike {
  decompress(dst: Uint8Array, src: Uint8Array): number {
    let out: Buffer
    try {
      out = (zlib as ZlibZstd).zstdDecompressSync(src, {maxOutputLength: dst.length})
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') throw new Error('Destination buffer is too small')
      throw err
    }
    dst.set(out)
    return out.length
  }
  decompressStream(): [number, number, number] {
    throw new Error("node:zlib's zstd has no caller-buffer streaming")
  }
  reset(): void {}
}

export const builtinAvailable = typeof (zlib as Partial<ZlibZstd>).zstdCompressSync === 'function'

interface Impl {
  name: 'zstd-napi' | 'node:zlib'
  CCtx: new () => CCtxLike
  DCtx: new () => DCtxLike
  /** Whether DCtx.decompressStream works (prefix decoding). */
  streaming: boolean
}

function choose(): Impl {
  const want = process.env.VDEV_ZSTD
  const builtin: Impl = {name: 'node:zlib', CCtx: NodeCCtx, DCtx: NodeDCtx, streaming: false}
  const noBuiltin = `this Node (${process.version}) has no built-in zstd (node:zlib needs Node ≥ 22.15)`
  if (want === 'node') {
    if (!builtinAvailable) throw new Error(`VDEV_ZSTD=node: ${noBuiltin}`)
    return builtin
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const napi = require('zstd-napi/binding') as {CCtx: new () => CCtxLike; DCtx: new () => DCtxLike}
    return {name: 'zstd-napi', CCtx: napi.CCtx, DCtx: napi.DCtx, streaming: true}
  } catch (err) {
    if (want === 'napi' || !builtinAvailable) throw new Error(`zstd-napi cannot be loaded (${(err as Error).message.split('\n')[0]}) and ${noBuiltin}`)
    return builtin
  }
}

const impl = choose()
export const implementation = impl.name
export const streaming = impl.streaming
export const CCtx = impl.CCtx
export const DCtx = impl.DCtx

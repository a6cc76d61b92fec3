/**
 * `vdev overlay commit`: a new VDIMG image holding the base with the overlay's changes applied. The base and
 * the overlay are only read. Sectors of bad areas that the overlay wrote are good in the new image (they
 * hold what was written); the rest of each bad area keeps its ddrescue status. The new image's metadata
 * names both parents. docs/OVERLAY.md, "Commands".
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {BadRange} from '../core/errors'
import type {BlockSource} from '../core/source'
import type {InputSource} from '../format/input'
import {formatMapfile, parseMapfile} from '../format/mapfile'
import {createImage, type CreateOptions, type CreateResult} from '../format/writer'
import {Overlay, describeBase} from './overlay'

const STEP = 32 * 1024 * 1024

/** The merged device as the writer's input: reads through the overlay (bad bytes as zeros). */
function mergedInput(o: Overlay, name: string): InputSource {
  return {
    name,
    size: o.size,
    seekable: true,
    sectorSize: o.sectorSize,
    async read(buf: Buffer, position: number): Promise<number> {
      const n = Math.max(0, Math.min(buf.length, o.size - position))
      if (n === 0) return 0
      const r = await o.read(position, n)
      r.data.copy(buf, 0, 0, n)
      return n
    },
    async close() {},
  }
}

/** The bad areas left after the overlay: the base's, minus every sector the overlay holds. */
async function remainingBad(o: Overlay): Promise<BadRange[]> {
  const out: BadRange[] = []
  for (const e of await o.extents(0, o.size)) {
    if (e.kind !== 'bad') continue
    for (let at = e.offset; at < e.offset + e.length; at += STEP) {
      const r = await o.read(at, Math.min(STEP, e.offset + e.length - at))
      for (const b of r.bad) {
        const last = out[out.length - 1]
        if (last && last.status === b.status && last.offset + last.length === b.offset) last.length += b.length
        else out.push({...b})
      }
    }
  }
  return out
}

function fileSha256(file: string): string {
  const h = crypto.createHash('sha256')
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(1 << 20)
    for (let pos = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos)
      if (n === 0) break
      h.update(buf.subarray(0, n))
      pos += n
    }
  } finally {
    fs.closeSync(fd)
  }
  return h.digest('hex')
}

export async function commitOverlay(
  base: BlockSource,
  overlayFile: string,
  out: string,
  opts: Pick<CreateOptions, 'chunkSize' | 'level' | 'threads' | 'force' | 'onProgress'> & {baseName: string; version: string},
): Promise<CreateResult> {
  const o = await Overlay.open(base, overlayFile, {create: false, compactMinBytes: 0})
  try {
    const bad = await remainingBad(o)
    const mapfile = bad.length ? parseMapfile(formatMapfile(bad, o.size, {currentStatus: '+'}), 'remaining bad areas') : undefined
    const baseMeta = (base as {metadata?: unknown}).metadata
    const metadata: Record<string, unknown> = {
      ...(baseMeta && typeof baseMeta === 'object' ? (baseMeta as Record<string, unknown>) : {}),
      created: new Date().toISOString(),
      creator: `vdev ${opts.version} overlay commit`,
      parents: {
        base: {path: path.resolve(opts.baseName), identity: describeBase(o.header.base)},
        overlay: {path: o.path, id: o.header.id.toString('hex'), fileSha256: fileSha256(o.path), bytesWritten: o.bytesWritten},
      },
    }
    return await createImage(mergedInput(o, `${opts.baseName} + ${overlayFile}`), out, {
      chunkSize: opts.chunkSize,
      level: opts.level,
      threads: opts.threads,
      sectorSize: o.sectorSize,
      mapfile,
      hash: true,
      force: opts.force,
      metadata,
      onProgress: opts.onProgress,
    })
  } finally {
    await o.close()
  }
}

/**
 * What `vdev info` reports about an image, as one JSON-able object.
 */
import * as fs from 'node:fs'
import type {BadStatus} from '../core/errors'
import {ChunkKind} from './layout'
import type {VdimgImage} from './reader'

export interface ImageInfo {
  path: string
  format: 'vdimg'
  version: string
  size: number
  sectorSize: number
  chunkSize: number
  chunkCount: number
  fileSize: number
  /** fileSize / size */
  ratio: number
  chunks: Record<string, number>
  sha256: string | null
  metadata: Record<string, unknown>
  badAreaSummary: Record<BadStatus, {count: number; bytes: number}>
  badBytes: number
  badAreaCount: number
  /** The first bad ranges (all of them with --all). */
  badAreas: Array<{offset: number; length: number; status: BadStatus}>
}

export async function describeImage(img: VdimgImage, opts: {maxRanges?: number} = {}): Promise<ImageInfo> {
  const counts: Record<string, number> = {zero: 0, raw: 0, zstd: 0, unread: 0}
  const groups = Math.ceil(img.chunkCount / img.l2Entries)
  for (let g = 0; g < groups; g++) {
    const k = await img.groupKinds(g)
    counts.zero += k[ChunkKind.Zero]
    counts.raw += k[ChunkKind.Raw]
    counts.zstd += k[ChunkKind.Zstd]
    counts.unread += k[ChunkKind.Unread]
    // Chunks of a damaged index group or of an unknown kind (verify names them): listed only when there are any.
    if (k[4]) counts.damaged = (counts.damaged ?? 0) + k[4]
  }
  const summary = img.badAreas.totals()
  const max = opts.maxRanges ?? 20
  const ranges = []
  for (let i = 0; i < Math.min(max, img.badAreas.count); i++) ranges.push(img.badAreas.get(i))
  return {
    path: img.path,
    format: 'vdimg',
    version: img.version,
    size: img.size,
    sectorSize: img.sectorSize,
    chunkSize: img.chunkSize,
    chunkCount: img.chunkCount,
    fileSize: img.fileSize,
    ratio: img.size ? img.fileSize / img.size : 0,
    chunks: counts,
    sha256: img.sha256 ?? null,
    metadata: img.metadata,
    badAreaSummary: summary,
    badBytes: Object.values(summary).reduce((s, v) => s + v.bytes, 0),
    badAreaCount: img.badAreas.count,
    badAreas: ranges,
  }
}

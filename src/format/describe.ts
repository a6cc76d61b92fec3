/**
 * What `vdev info` reports about an image, as one JSON-able object.
 */
import * as fs from 'node:fs'
import type {BadStatus} from '../core/errors'
import {ChunkKind, SectionType} from './layout'
import {RECOVERY_HEADER_SIZE, RecoveryFormatError, decodeRecoveryHeader} from './recovery'
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
  /** Recovery data (format 1.2, FORMAT.md §13): its code and size, only when present; `usable: false` when its header is damaged. */
  recovery?: {bytes: number; usable: boolean; sliceSize?: number; k?: number; m?: number; stripes?: number} | null
}

/** The recovery section's code, from its header (the one at its start, else its copy at its end). */
async function recoveryOf(img: VdimgImage): Promise<ImageInfo['recovery'] | null> {
  const sec = img.sections.find((s) => s.type === SectionType.Recovery)
  if (!sec) return null
  for (const at of [sec.offset, sec.offset + sec.length - RECOVERY_HEADER_SIZE])
    if (sec.length >= RECOVERY_HEADER_SIZE && at + RECOVERY_HEADER_SIZE <= img.fileSize)
      try {
        const l = decodeRecoveryHeader(await img.ranges.read(RECOVERY_HEADER_SIZE, at), at, sec.length)
        return {bytes: sec.length, usable: true, sliceSize: l.sliceSize, k: l.k, m: l.m, stripes: l.stripes}
      } catch (err) {
        if (!(err instanceof RecoveryFormatError)) throw err
      }
  return {bytes: sec.length, usable: false}
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
  const recovery = await recoveryOf(img)
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
    // Only when present: the JSON of images without recovery data is as it was (the 1.0 golden files hold it).
    ...(recovery ? {recovery} : {}),
  }
}

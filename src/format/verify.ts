/**
 * `verify`: every critical structure (and, in 1.1, its copy) was checked when the image was opened; this
 * checks every index table (and its copy) and both checksums of every chunk, lists everything damaged (not only the first), and recomputes
 * the media SHA-256 (bad areas as zeros, FORMAT.md §7) unless `quick`.
 */
import * as crypto from 'node:crypto'
import {decodeAll} from './decode'
import {crc32c} from './crc'
import {SectionType} from './layout'
import type {VdimgImage} from './reader'

/** One damaged range of chunks, or a damaged structure (chunk -1, chunks 0). */
export interface Damage {
  /** The first damaged chunk, or -1 for a structure that holds no chunk data (metadata, an unknown section). */
  chunk: number
  /** How many chunks in a row fail for the same reason (every chunk of a damaged index table: one entry). */
  chunks: number
  /** Image byte range [offset, offset+length) those chunks cover (0, 0 for a structure). */
  offset: number
  length: number
  why: string
}

export interface VerifyResult {
  ok: boolean
  chunks: number
  failedChunks: number
  /** Everything damaged, in image order: structures first, then chunks (at most MAX_LISTED entries). */
  damaged: Damage[]
  /** Damaged chunks past the MAX_LISTED entries of `damaged`: counted, not listed (0 but for wrecks). */
  unlisted: number
  /** The first damaged chunks one by one (at most 100), as before `damaged` existed. */
  problems: Array<{chunk: number; offset: number; length: number; message: string}>
  /** False with --quick: the media hash was not computed. */
  hashed: boolean
  sha256: {recorded: string | null; computed: string | null; match: boolean | null}
  /** Recovery data (format 1.2, FORMAT.md §13): absent, or whether its section's checksum holds. */
  recovery: {present: boolean; intact: boolean | null}
}

/**
 * Adds damaged chunks to a list, merging a chunk into the previous entry when it follows it and fails
 * for the same reason, so that the list stays small when a whole index table is lost.
 */
export class DamageList {
  readonly list: Damage[] = []
  /** The damaged byte ranges, adjacent ones merged whatever their reasons. */
  readonly ranges: Array<{offset: number; length: number}> = []
  chunks = 0
  /** `cap`: how many entries `list` keeps (the rest are still counted in `chunks` and `ranges`). */
  constructor(private readonly cap = Infinity) {}
  add(chunk: number, offset: number, length: number, why: string): void {
    this.chunks++
    const r = this.ranges[this.ranges.length - 1]
    if (r && r.offset + r.length === offset) r.length += length
    else this.ranges.push({offset, length})
    const last = this.list[this.list.length - 1]
    if (last && last.chunk >= 0 && last.chunk + last.chunks === chunk && last.why === why) {
      last.chunks++
      last.length += length
    } else if (this.list.length < this.cap) this.list.push({chunk, chunks: 1, offset, length, why})
  }
}

/**
 * A damage entry in words, without the file name its message starts with: a chunk's message names its
 * image bytes already; a run of chunks (a lost index table) gets them named.
 */
export function describeDamage(image: string, d: Damage): string {
  const why = d.why.startsWith(`${image}: `) ? d.why.slice(image.length + 2) : d.why
  if (d.chunk < 0 || why.startsWith(`chunk ${d.chunk} (image bytes `)) return why
  const bytes = `(image bytes ${d.offset}-${d.offset + d.length - 1})`
  if (d.chunks > 1) return `chunks ${d.chunk}-${d.chunk + d.chunks - 1} ${bytes}: ${why}`
  return `chunk ${d.chunk} ${bytes}: ${why.replace(new RegExp(`^chunk ${d.chunk}: `), '')}`
}

/**
 * Entries of `damaged` kept: far more than a damaged image has (a lost index table is one entry), and a
 * bound on memory for a wreck where every chunk fails for its own reason.
 */
export const MAX_LISTED = 100_000

export async function verifyImage(
  img: VdimgImage,
  opts: {threads?: number; quick?: boolean; signal?: AbortSignal; onProgress?: (done: number, total: number) => void} = {},
): Promise<VerifyResult> {
  const hash = opts.quick ? undefined : crypto.createHash('sha256')
  const damage = new DamageList(MAX_LISTED)
  for (const w of img.warnings) damage.list.push({chunk: -1, chunks: 0, offset: 0, length: 0, why: w})
  // 1.1 (FORMAT.md §12): both places of every index table; one damaged place loses nothing but is listed.
  if (img.hasCopies)
    for (let g = 0; g < Math.ceil(img.chunkCount / img.l2Entries); g++) {
      if (opts.signal?.aborted) break
      for (const why of (await img.tableDamage(g)).lines) damage.list.push({chunk: -1, chunks: 0, offset: 0, length: 0, why})
    }
  const problems: VerifyResult['problems'] = []
  let done = 0
  await decodeAll(img, {
    threads: opts.threads,
    stopOnError: false,
    signal: opts.signal,
    onBatch: (b) => {
      for (const c of b.chunks)
        if (c.error) {
          damage.add(c.index, c.index * img.chunkSize, img.chunkLength(c.index), c.error.message)
          if (problems.length < 100) problems.push({chunk: c.index, offset: c.index * img.chunkSize, length: img.chunkLength(c.index), message: c.error.message})
        }
      hash?.update(b.data)
      done += b.data.length
      opts.onProgress?.(done, img.size)
    },
  })
  // Recovery data (§13) is read by nothing else: its checksum is checked here, over the whole section.
  const rec = img.sections.find((s) => s.type === SectionType.Recovery)
  let recoveryIntact: boolean | null = null
  if (rec && !opts.signal?.aborted) {
    let crc = 0
    if (rec.offset + rec.length <= img.fileSize)
      for (let off = 0; off < rec.length; off += 16 << 20) crc = crc32c(await img.ranges.read(Math.min(16 << 20, rec.length - off), rec.offset + off), crc)
    recoveryIntact = rec.offset + rec.length <= img.fileSize && crc === rec.crc
    const first = damage.list.findIndex((d) => d.chunk >= 0)
    if (!recoveryIntact)
      damage.list.splice(first < 0 ? damage.list.length : first, 0, {chunk: -1, chunks: 0, offset: 0, length: 0, why: `${img.path}: recovery data ${rec.offset + rec.length > img.fileSize ? 'lies outside the file: truncated?' : 'checksum mismatch'} (at byte ${rec.offset})`})
  }
  // A hash over damaged chunks means nothing: report it only when every chunk decoded.
  const computed = hash && !damage.chunks ? hash.digest('hex') : null
  const recorded = img.sha256 ?? null
  const match = recorded && computed ? recorded === computed : null
  return {
    ok: damage.list.length === 0 && match !== false,
    chunks: img.chunkCount,
    failedChunks: damage.chunks,
    damaged: damage.list,
    unlisted: damage.chunks - damage.list.reduce((n, d) => n + d.chunks, 0),
    problems,
    hashed: !!hash,
    sha256: {recorded, computed, match},
    recovery: {present: !!rec, intact: recoveryIntact},
  }
}

/**
 * `verify`: every structure was checked when the image was opened; this checks every index table, both
 * checksums of every chunk, and recomputes the media SHA-256 (bad areas as zeros, FORMAT.md §7).
 */
import * as crypto from 'node:crypto'
import {decodeAll} from './decode'
import type {VdimgImage} from './reader'

export interface VerifyProblem {
  chunk: number
  /** Image byte range [offset, offset+length) the chunk covers. */
  offset: number
  length: number
  message: string
}

export interface VerifyResult {
  ok: boolean
  chunks: number
  failedChunks: number
  /** The first failures, in image order (at most 100). */
  problems: VerifyProblem[]
  sha256: {recorded: string | null; computed: string | null; match: boolean | null}
}

export async function verifyImage(
  img: VdimgImage,
  opts: {threads?: number; onProgress?: (done: number, total: number) => void} = {},
): Promise<VerifyResult> {
  const hash = crypto.createHash('sha256')
  const problems: VerifyProblem[] = []
  let failed = 0
  let done = 0
  await decodeAll(img, {
    threads: opts.threads,
    stopOnError: false,
    onBatch: (b) => {
      for (const c of b.chunks)
        if (c.error) {
          failed++
          if (problems.length < 100)
            problems.push({chunk: c.index, offset: c.index * img.chunkSize, length: img.chunkLength(c.index), message: c.error.message})
        }
      hash.update(b.data)
      done += b.data.length
      opts.onProgress?.(done, img.size)
    },
  })
  // A hash over damaged chunks means nothing: report it only when every chunk decoded.
  const computed = failed ? null : hash.digest('hex')
  const recorded = img.sha256 ?? null
  const match = recorded && computed ? recorded === computed : null
  return {
    ok: failed === 0 && match !== false,
    chunks: img.chunkCount,
    failedChunks: failed,
    problems,
    sha256: {recorded, computed, match},
  }
}

/**
 * The valid images every image mutation starts from, made by the real writer (createImage) from
 * deterministic data: raw chunks (random bytes), zstd chunks (text), zero chunks, unread chunks, index
 * groups with no table (all zero, all unread), bad areas of every ddrescue status (aligned and not),
 * metadata with a ddrescue status line, an image without a media hash, 4096-byte sectors, one chunk, none.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {BadRange} from '../../src/core/errors'
import {openInput} from '../../src/format/input'
import {formatMapfile, parseMapfile} from '../../src/format/mapfile'
import {createImage, type CreateOptions} from '../../src/format/writer'
import {prng, textish} from '../../test/helpers'

export interface BaseImage {
  name: string
  file: string
  /** The image file's bytes. */
  bytes: Buffer
  /** The logical image as extract writes it: bad areas as zeros. */
  data: Buffer
  bad: BadRange[]
  chunkSize: number
}

interface Spec {
  name: string
  size: number
  chunkSize: number
  l2Entries?: number
  sectorSize?: number
  hash?: boolean
  /** Fill the source: the default is text (zstd chunks). */
  fill(data: Buffer): void
  bad: BadRange[]
  metadata?: Record<string, unknown>
}

const K4 = 4096

function specs(): Spec[] {
  const mixedSize = 1030 * K4 + 333
  return [
    {
      // Five index groups of 256 chunks: mixed; all zero (no table); mixed with bad areas; all unread (no
      // table); a short last group ending in a partial chunk.
      name: 'mixed',
      size: mixedSize,
      chunkSize: K4,
      l2Entries: 256,
      fill(d) {
        textish(11, d.length).copy(d)
        for (let c = 0; c < 256; c += 3) prng(100 + c, K4).copy(d, c * K4) // raw chunks
        d.fill(0, 50 * K4, 60 * K4) // zero chunks
        d.fill(0, 256 * K4, 512 * K4) // a whole group of zeros
        for (let c = 512; c < 768; c += 5) prng(1000 + c, K4).copy(d, c * K4)
      },
      bad: [
        {offset: 10 * K4 + 1024, length: 512, status: 'bad-sector'},
        {offset: 20 * K4, length: 2 * K4, status: 'non-trimmed'}, // two unread chunks
        {offset: 600 * K4 + 100, length: 3 * 512, status: 'non-scraped'}, // not sector-aligned
        {offset: 700 * K4, length: 2 * K4 + 512, status: 'bad-sector'},
        {offset: 768 * K4, length: 256 * K4, status: 'non-tried'}, // a whole group
        {offset: mixedSize - 100, length: 100, status: 'bad-sector'},
      ],
      metadata: {model: 'FUZZ DISK 1', serial: 'S-0001', notes: 'fuzz base "mixed" \u00e9', ddrescue: {currentPos: 4096, currentStatus: '+', currentPass: 1}},
    },
    {
      // Big chunks, one index group, no media hash, no bad areas (an empty bad-area map).
      name: 'plain',
      size: 2 * 1024 * 1024 + 1000,
      chunkSize: 64 * 1024,
      hash: false,
      fill(d) {
        textish(21, d.length).copy(d)
        prng(22, 64 * 1024).copy(d, 5 * 64 * 1024)
        d.fill(0, 10 * 64 * 1024, 12 * 64 * 1024)
      },
      bad: [],
    },
    {
      name: 'sector4k',
      size: 300 * 8192 + 4096,
      chunkSize: 8192,
      l2Entries: 256,
      sectorSize: 4096,
      fill(d) {
        textish(31, d.length).copy(d)
        for (let c = 0; c < 300; c += 7) prng(300 + c, 8192).copy(d, c * 8192)
      },
      bad: [{offset: 100 * 8192, length: 4096, status: 'non-tried'}],
      metadata: {tool: 'GNU ddrescue 1.27', date: '2026-01-01 00:00:00'},
    },
    {name: 'small', size: 1000, chunkSize: K4, fill: (d) => textish(41, d.length).copy(d), bad: [{offset: 512, length: 488, status: 'bad-sector'}]},
    {name: 'empty', size: 0, chunkSize: K4, fill: () => undefined, bad: []},
  ]
}

/** Build every base image in `dir` (deterministic: the same bytes every run). */
export async function buildBaseImages(dir: string): Promise<BaseImage[]> {
  const out: BaseImage[] = []
  for (const s of specs()) {
    const data = Buffer.alloc(s.size)
    s.fill(data)
    const raw = path.join(dir, `${s.name}.raw`)
    fs.writeFileSync(raw, data)
    const file = path.join(dir, `${s.name}.vdimg`)
    const opts: CreateOptions = {
      chunkSize: s.chunkSize,
      l2Entries: s.l2Entries,
      sectorSize: s.sectorSize,
      hash: s.hash,
      threads: 1,
      metadata: s.metadata ?? {},
      mapfile: s.bad.length ? parseMapfile(formatMapfile(s.bad, s.size), `${s.name}.map`) : undefined,
    }
    const input = openInput(raw)
    try {
      await createImage(input, file, opts)
    } finally {
      await input.close()
    }
    fs.rmSync(raw)
    const logical = Buffer.from(data)
    for (const b of s.bad) logical.fill(0, b.offset, b.offset + b.length)
    out.push({name: s.name, file, bytes: fs.readFileSync(file), data: logical, bad: s.bad, chunkSize: s.chunkSize})
  }
  return out
}

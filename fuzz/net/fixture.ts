/**
 * The image the protocol targets serve: 4 MiB made by the real writer from deterministic data, with raw
 * and zstd chunks, a zero run, and bad areas of every ddrescue status (one inside a page, one at the very
 * end), so every reply kind a server can give — data, holes, EIO — is reachable.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {BadRange} from '../../src/core/errors'
import type {BlockSource} from '../../src/core/source'
import {openImage} from '../../src/format/reader'
import {Overlay} from '../../src/layers/overlay'
import {openInput} from '../../src/format/input'
import {formatMapfile, parseMapfile} from '../../src/format/mapfile'
import {createImage} from '../../src/format/writer'
import {prng, textish} from '../../test/helpers'
import {workDir} from '../harness'

export const SIZE = 4 * 1024 * 1024
export const SECTOR = 512

export const BAD: BadRange[] = [
  {offset: 1024 * 1024 + 7 * SECTOR, length: SECTOR, status: 'bad-sector'},
  {offset: 2 * 1024 * 1024 + 4096, length: 64 * 1024, status: 'non-tried'},
  {offset: 3 * 1024 * 1024 + 12 * SECTOR, length: 3 * SECTOR, status: 'non-trimmed'},
  {offset: 3 * 1024 * 1024 + 512 * 1024, length: 20 * SECTOR, status: 'non-scraped'},
  {offset: SIZE - SECTOR, length: SECTOR, status: 'bad-sector'},
]
export const ZERO_RUN = {offset: 1536 * 1024, length: 256 * 1024}

export interface ServedImage {
  dir: string
  image: string
  /** What a read returns where it succeeds: the source bytes, zeros in bad areas. */
  data: Buffer
  bad: BadRange[]
  size: number
  cleanup(): void
}

/** `tailBad`: the last sector is a bad area (an edge for block protocols; NFS wants a readable end, for eof). */
export async function makeServedImage(prefix: string, opts: {tailBad?: boolean} = {}): Promise<ServedImage> {
  const bad = opts.tailBad === false ? BAD.filter((b) => b.offset + b.length < SIZE) : BAD
  const dir = workDir(prefix)
  const data = textish(7, SIZE)
  for (let at = 0; at < SIZE; at += 256 * 1024) prng(at, 64 * 1024).copy(data, at) // raw chunks among zstd ones
  data.fill(0, ZERO_RUN.offset, ZERO_RUN.offset + ZERO_RUN.length)
  const raw = path.join(dir, 'disk.raw')
  fs.writeFileSync(raw, data)
  const image = path.join(dir, 'disk.vdimg')
  const input = openInput(raw)
  try {
    await createImage(input, image, {chunkSize: 64 * 1024, threads: 1, mapfile: parseMapfile(formatMapfile(bad, SIZE), 'disk.map'), metadata: {}})
  } finally {
    await input.close()
  }
  fs.rmSync(raw)
  for (const b of bad) data.fill(0, b.offset, b.offset + b.length)
  return {dir, image, data, bad, size: SIZE, cleanup: () => fs.rmSync(dir, {recursive: true, force: true})}
}

export function touchesBad(offset: number, length: number, bad: BadRange[] = BAD): boolean {
  return length > 0 && bad.some((b) => offset < b.offset + b.length && offset + length > b.offset)
}

/** Log lines that mean something went wrong inside a server (not a peer's fault). */
export const INTERNAL_LOG = /TypeError|RangeError|ReferenceError|SyntaxError|Cannot read|is not a function|Maximum call stack|serving thread failed|serving thread:|internal error|failed: |SYSTEM_ERR|assert/i

/** Wait until `cond` holds, polling; false on timeout. */
export async function until(cond: () => boolean, ms: number, step = 2): Promise<boolean> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) return false
    await new Promise((r) => setTimeout(r, step))
  }
  return true
}

/**
 * What the served file holds: its bytes where readable, and which sectors are unreadable. The read-only
 * server's never changes; the writable server's is the model the writes are applied to.
 */
export interface Content {
  data: Buffer
  size: number
  /** One byte per sector: 1 = unreadable. */
  badSector: Uint8Array
}

export function contentOf(fx: ServedImage): Content {
  const badSector = new Uint8Array(Math.ceil(fx.size / SECTOR))
  for (const b of fx.bad) for (let s = Math.floor(b.offset / SECTOR); s * SECTOR < b.offset + b.length; s++) badSector[s] = 1
  return {data: Buffer.from(fx.data), size: fx.size, badSector}
}

export function firstBad(c: Content, off: number, end: number): number | undefined {
  for (let s = Math.floor(off / SECTOR); s * SECTOR < end; s++) if (c.badSector[s]) return Math.max(s * SECTOR, off)
  return undefined
}

/** A write the server acknowledged: applied to the model (the bytes, and the sectors it covered become readable). */
export function applyWrite(c: Content, offset: number, data: Buffer): void {
  data.copy(c.data, offset)
  for (let s = Math.floor(offset / SECTOR); s * SECTOR < offset + data.length; s++) c.badSector[s] = 0
}

/** The overlay holds exactly the model: the same bad sectors, the same bytes everywhere else. */
export async function compareOverlay(ovl: Pick<BlockSource, 'read'>, model: Content): Promise<string | undefined> {
  const r = await ovl.read(0, model.size)
  const bad = new Uint8Array(model.badSector.length)
  for (const b of r.bad) for (let s = Math.floor(b.offset / SECTOR); s * SECTOR < b.offset + b.length; s++) bad[s] = 1
  for (let s = 0; s < bad.length; s++) {
    if (bad[s] !== model.badSector[s]) return `sector ${s} is ${bad[s] ? 'unreadable' : 'readable'} in the overlay, ${model.badSector[s] ? 'unreadable' : 'readable'} in the model`
    if (bad[s]) continue
    const a = r.data.subarray(s * SECTOR, (s + 1) * SECTOR)
    const b = model.data.subarray(s * SECTOR, (s + 1) * SECTOR)
    if (!a.equals(b)) return `sector ${s} holds bytes that are neither the image's nor an acknowledged write's`
  }
  return undefined
}

/** Whatever a session did, its overlay opens again over the image: undefined, or what is wrong. */
export async function reopenOverlay(fx: ServedImage, file: string): Promise<string | undefined> {
  try {
    const again = await Overlay.open(await openImage(fx.image), file)
    await again.close()
    return undefined
  } catch (err) {
    return `the overlay does not open after the session: ${(err as Error).message}`
  }
}

/**
 * The image sources, by kind: what a command, the attach daemon or a serving thread opens. Each kind has
 * an opener taking a SourceDescriptor (kind + absolute path + options) — so any thread can open the same
 * source again — and this is the only module that names them (adding a kind edits nothing else).
 *
 *   vdimg  a VDIMG image (src/format/reader.ts): a local file, or an http(s):// or s3:// URL (src/remote)
 *   raw    a raw file or block device, with an optional GNU ddrescue mapfile (raw.ts)
 *   overlay  a serving thread's view of a copy-on-write overlay over one of those (src/layers/overlay-view.ts):
 *            opened only with the link its owner offered (BlockSource.threadLink), never on its own
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {VdevError, ioError} from '../core/errors'
import type {BlockSource, OpenSourceOptions, SourceDescriptor} from '../core/source'
import {HEADER_SIZE, MAGIC} from '../format/layout'
import {openImage, type ByteRanges, type OpenOptions, type VdimgImage} from '../format/reader'
import {HttpObject, isRemote, type RemoteOptions} from '../remote/http'
import {isS3} from '../remote/s3'
import {LinkedRanges, type RangesLink} from '../remote/link'
import {RawImage} from './raw'
import {OverlayView} from '../layers/overlay-view'
import type {OverlayLink} from '../layers/overlay'

type Opener = (d: SourceDescriptor, how: OpenSourceOptions) => Promise<BlockSource>

const OPENERS: Record<string, Opener> = {
  vdimg: async (d, how) => {
    const opts = {sync: how.sync, cacheBytes: how.cacheBytes, decompressThreads: how.decompressThreads, onWarning: how.onWarning}
    if (!isRemote(d.path)) {
      // A serving thread's instance of a local image: the device's shared decode-ahead buffer (reader.ts threadLink).
      const readAhead = how.sync ? (how.link as {readAhead?: SharedArrayBuffer} | undefined)?.readAhead : undefined
      return openImage(d.path, {...opts, readAhead: readAhead instanceof SharedArrayBuffer ? readAhead : undefined})
    }
    // A serving thread reads a remote image through the link its process's instance offered (src/remote/link.ts).
    if (how.sync) {
      if (!how.link) throw new VdevError('internal', `${d.path}: a remote image is read synchronously only through a link`)
      // With a cache, the device's decode-ahead buffer too (decoding ahead only what the cache holds).
      const readAhead = (how.link as {readAhead?: SharedArrayBuffer}).readAhead
      return openImage(new LinkedRanges(how.link as RangesLink, d.options), {...opts, readAhead: readAhead instanceof SharedArrayBuffer ? readAhead : undefined})
    }
    return openImage(await HttpObject.open(d.path, remoteOptions(d.options)), opts)
  },
  raw: async (d, how) => {
    const o = d.options ?? {}
    return RawImage.open(d.path, {mapfile: typeof o.mapfile === 'string' ? o.mapfile : undefined, sectorSize: typeof o.sectorSize === 'number' ? o.sectorSize : undefined}, how)
  },
  overlay: async (d, how) => {
    // The overlay itself has one owner (the instance that offered the link); a thread only gets a view.
    if (!how.link || typeof d.options?.base !== 'string') throw new VdevError('internal', `${d.path}: an overlay is opened on a serving thread only through its owner's link`)
    const base = await openSource(JSON.parse(d.options.base) as SourceDescriptor, {...how, link: (how.link as OverlayLink).base})
    return new OverlayView(base, how.link as OverlayLink, d)
  },
}

export const SOURCE_KINDS = Object.keys(OPENERS)

/** Open a source from its descriptor, on this thread. */
export function openSource(d: SourceDescriptor, how: OpenSourceOptions = {}): Promise<BlockSource> {
  const open = OPENERS[d.kind]
  if (!open) throw new VdevError('internal', `unknown source kind "${d.kind}" (known: ${SOURCE_KINDS.join(', ')})`)
  return open(d, how)
}

/** A remote image's options as a descriptor carries them (strings and numbers only). */
export function remoteOptions(o: SourceDescriptor['options'] = {}): RemoteOptions {
  const r: RemoteOptions = {}
  if (typeof o.headers === 'string') r.headers = JSON.parse(o.headers) as Record<string, string>
  if (typeof o.timeoutMs === 'number') r.timeoutMs = o.timeoutMs
  if (typeof o.etag === 'string') r.etag = o.etag
  if (typeof o.lastModified === 'string') r.lastModified = o.lastModified
  if (typeof o.versionId === 'string') r.versionId = o.versionId
  if (typeof o.size === 'number') r.size = o.size
  if (typeof o.cacheDir === 'string') r.cacheDir = o.cacheDir
  if (typeof o.cacheBytes === 'number') r.cacheBytes = o.cacheBytes
  return r
}

/**
 * Open a VDIMG image for a command (info, verify, extract): a local path, or an http(s):// or s3:// URL with the
 * remote options of `a` (--header, --remote-timeout).
 */
export async function openVdimg(location: string, a: RemoteArgs = {}, opts: OpenOptions = {}): Promise<VdimgImage> {
  let from: string | ByteRanges = location
  checkVersionId(location, a.versionId)
  if (isRemote(location)) from = await HttpObject.open(location, {headers: a.headers, timeoutMs: a.timeoutMs, cacheDir: a.cacheDir, cacheBytes: a.cacheBytes, versionId: a.versionId})
  return openImage(from, opts)
}

export type ImageFormat = 'auto' | 'vdimg' | 'raw'

export interface SourceArgs {
  /** auto (default): a VDIMG image if the file says so; raw with --mapfile or on a block device. */
  format?: ImageFormat
  /** A GNU ddrescue mapfile for a raw image (implies raw). */
  mapfile?: string
  /** Logical sector size of a raw image. */
  sectorSize?: number
  /** A remote image: extra request headers (--header) and how long one read may take (--remote-timeout). */
  headers?: Record<string, string>
  timeoutMs?: number
  /** A remote image: where to cache fetched bytes (--cache; undefined: none) and its bound (--cache-size). */
  cacheDir?: string
  cacheBytes?: number
  /** An s3:// image: the version to read (--version-id; undefined: the newest). */
  versionId?: string
}

export type RemoteArgs = Pick<SourceArgs, 'headers' | 'timeoutMs' | 'cacheDir' | 'cacheBytes' | 'versionId'>

/**
 * What the user named on the command line, as a descriptor. A VDIMG image is recognised by its magic;
 * anything else is served raw only when asked (--format raw or --mapfile) or when it is a block device,
 * so that a damaged image is never taken for a raw disk.
 */
export function describeSource(image: string, a: SourceArgs = {}): SourceDescriptor {
  if (isRemote(image)) {
    if (a.format === 'raw' || a.mapfile !== undefined || a.sectorSize !== undefined)
      throw new VdevError('usage', `${image}: a remote image is a VDIMG image (raw images and mapfiles are read from local files)`)
    const options: Record<string, string | number> = {}
    if (a.headers && Object.keys(a.headers).length) options.headers = JSON.stringify(a.headers)
    if (a.timeoutMs !== undefined) options.timeoutMs = a.timeoutMs
    if (a.cacheDir !== undefined) options.cacheDir = path.resolve(a.cacheDir)
    if (a.cacheBytes !== undefined) options.cacheBytes = a.cacheBytes
    checkVersionId(image, a.versionId)
    if (a.versionId !== undefined) options.versionId = a.versionId
    return {kind: 'vdimg', path: image, options}
  }
  if (a.headers && Object.keys(a.headers).length) throw new VdevError('usage', '--header goes with an http://, https:// or s3:// image')
  checkVersionId(image, a.versionId)
  const abs = path.resolve(image)
  const format = a.format ?? 'auto'
  if (a.mapfile !== undefined && format === 'vdimg') throw new VdevError('usage', '--mapfile goes with a raw image, not a VDIMG image (its bad areas are inside it)')
  if (a.sectorSize !== undefined && format === 'vdimg') throw new VdevError('usage', '--sector-size goes with a raw image (a VDIMG image records its own)')
  const raw = (): SourceDescriptor => {
    const options: Record<string, string | number> = {}
    if (a.mapfile !== undefined) options.mapfile = path.resolve(a.mapfile)
    if (a.sectorSize !== undefined) options.sectorSize = a.sectorSize
    return {kind: 'raw', path: abs, options}
  }
  if (format === 'raw' || a.mapfile !== undefined) return raw()
  if (format === 'vdimg') return {kind: 'vdimg', path: abs}
  let st: fs.Stats
  try {
    st = fs.statSync(abs)
  } catch (err) {
    throw ioError(image, err)
  }
  if (st.isDirectory()) throw new VdevError('io', `${image}: is a directory`)
  if (a.sectorSize !== undefined) return raw()
  if (hasMagic(abs, image, st)) return {kind: 'vdimg', path: abs}
  if (st.isBlockDevice()) return raw()
  throw new VdevError('format', `${image}: not a VDIMG image (bad magic) (at byte 0); a raw image is served with --format raw, or --mapfile MAP`)
}

/**
 * The VDIMG magic at byte 0, or — a 1.1 image whose first block is damaged (FORMAT.md §12) — at the start
 * of its header copy, the last 256 bytes of a regular file.
 */
function hasMagic(abs: string, name: string, st: fs.Stats): boolean {
  let fd: number
  try {
    fd = fs.openSync(abs, 'r')
  } catch (err) {
    throw ioError(name, err)
  }
  try {
    const b = Buffer.alloc(MAGIC.length)
    const at = (pos: number) => fs.readSync(fd, b, 0, b.length, pos) === b.length && b.equals(MAGIC)
    return at(0) || (st.isFile() && st.size >= 512 && at(st.size - HEADER_SIZE))
  } finally {
    fs.closeSync(fd)
  }
}

/** `--version-id` names a version of an S3 object: anything else has none. */
function checkVersionId(image: string, versionId: string | undefined): void {
  if (versionId !== undefined && !isS3(image)) throw new VdevError('usage', `--version-id goes with an s3:// image (${image.slice(0, 80)} is not one)`)
}

/** Open what the user named (describeSource, then openSource). */
export async function openSourceArg(image: string, a: SourceArgs = {}, how: OpenSourceOptions = {}): Promise<BlockSource> {
  return openSource(describeSource(image, a), how)
}

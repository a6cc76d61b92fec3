/**
 * Fixtures for the NFS server tests: real .vdimg files made by the real writer (createImage) from a raw
 * image and a ddrescue mapfile, the server started over them in this process, and a helper that runs
 * peer tools asynchronously (the server under test shares this event loop, so spawnSync would deadlock).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {execFile} from 'node:child_process'
import type {BadRange} from '../../src/core/errors'
import {BlockServer, type BadPolicy} from '../../src/core/blockserver'
import {createImage} from '../../src/format/writer'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {openInput} from '../../src/format/input'
import {formatMapfile, readMapfile} from '../../src/format/mapfile'
import {startNfsServer, type NfsServerHandle, type NfsServerOptions} from '../../src/serve/nfs'
import {Overlay} from '../../src/layers/overlay'
import type {BlockSource} from '../../src/core/source'

export const SECTOR = 512
export const IMAGE_SIZE = 6 * 1024 * 1024 + 3 * SECTOR // not a multiple of the chunk size

/** Bad areas: one sector inside a page, a 64 KiB non-tried run, odd statuses, and the very last sector. */
export const BAD: BadRange[] = [
  {offset: 1024 * 1024 + 7 * SECTOR, length: SECTOR, status: 'bad-sector'},
  {offset: 3 * 1024 * 1024, length: 64 * 1024, status: 'non-tried'},
  {offset: 4 * 1024 * 1024 + 4096, length: 3 * SECTOR, status: 'non-trimmed'},
  {offset: 5 * 1024 * 1024 + 12 * SECTOR, length: 20 * SECTOR, status: 'non-scraped'},
  {offset: IMAGE_SIZE - SECTOR, length: SECTOR, status: 'bad-sector'},
]
export const ZERO_RUN = {offset: 2 * 1024 * 1024, length: 512 * 1024}

export interface Images {
  dir: string
  /** The source bytes (bad areas hold data the failing medium never gave; the image stores zeros there). */
  raw: string
  data: Buffer
  /** .vdimg of `raw` with the bad areas of BAD. */
  badImage: string
  /** .vdimg of `raw` with no bad areas. */
  goodImage: string
  cleanup(): void
}

export async function makeImages(prefix = 'vdev-nfs-'): Promise<Images> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  const data = crypto.randomBytes(IMAGE_SIZE)
  data.fill(0, ZERO_RUN.offset, ZERO_RUN.offset + ZERO_RUN.length)
  const raw = path.join(dir, 'disk.raw')
  fs.writeFileSync(raw, data)
  const map = path.join(dir, 'disk.map')
  fs.writeFileSync(map, formatMapfile(BAD, IMAGE_SIZE))
  const badImage = path.join(dir, 'bad.vdimg')
  const goodImage = path.join(dir, 'good.vdimg')
  let input = openInput(raw)
  await createImage(input, badImage, {mapfile: readMapfile(map), chunkSize: 64 * 1024})
  await input.close()
  input = openInput(raw)
  await createImage(input, goodImage, {chunkSize: 64 * 1024})
  await input.close()
  return {dir, raw, data, badImage, goodImage, cleanup: () => fs.rmSync(dir, {recursive: true, force: true})}
}

export interface Served {
  image: VdimgImage
  block: BlockServer
  nfs: NfsServerHandle
  logs: string[]
  stop(): Promise<void>
}

/** Open a .vdimg (read-write through `overlay` when given) and serve it on a free loopback port (export "/", file "disk.img"). */
export async function serve(
  file: string,
  opts: Partial<NfsServerOptions> & {badPolicy?: BadPolicy; overlay?: string} = {},
): Promise<Served> {
  const image = await openImage(file)
  let source: BlockSource = image
  if (opts.overlay) {
    try {
      source = await Overlay.open(image, opts.overlay)
    } catch (err) {
      await image.close()
      throw err
    }
  }
  const block = new BlockServer(source, {badPolicy: opts.badPolicy})
  const logs: string[] = []
  let nfs: NfsServerHandle
  try {
    nfs = await startNfsServer(block, {
      host: '127.0.0.1',
      port: 0,
      exportName: '/',
      fileName: 'disk.img',
      identity: path.resolve(file),
      // Served on serving threads unless a test says otherwise (threads: 0 serves on this thread).
      threads: 2,
      ...opts,
      log: (l) => logs.push(l),
    })
  } catch (err) {
    await source.close()
    throw err
  }
  return {
    image,
    block,
    nfs,
    logs,
    async stop() {
      await nfs.close()
      await block.drain()
      await source.close()
    },
  }
}

/** The libnfs URL of the served file (libnfs 4.0: nfsport/mountport skip the portmapper). */
export function nfsUrl(port: number, file = 'disk.img', host = '127.0.0.1'): string {
  // "//disk.img": export "/" then file "/disk.img" (libnfs splits the path at its last slash).
  return `nfs://${host}//${file}?nfsport=${port}&mountport=${port}&version=3`
}

export interface RunResult {
  code: number | null
  stdout: Buffer
  stderr: string
}

/** Run a peer tool without blocking the event loop. */
export function run(cmd: string, args: string[], timeoutMs = 60000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, {encoding: 'buffer', maxBuffer: 256 << 20, timeout: timeoutMs}, (err, stdout, stderr) => {
      // execFile's error carries the exit status in `code` (a string code when the spawn itself failed).
      const code: unknown = err ? (err as unknown as {code?: unknown}).code : 0
      resolve({code: typeof code === 'number' ? code : -1, stdout, stderr: stderr.toString()})
    })
  })
}

/** The source bytes as the image stores them: bad areas read as zeros. */
export function expectedZeroFilled(data: Buffer, bad: BadRange[]): Buffer {
  const out = Buffer.from(data)
  for (const b of bad) out.fill(0, b.offset, b.offset + b.length)
  return out
}

/**
 * Test fixtures for the NBD server: a small raw disk image with data, zeros and bad areas, the matching
 * ddrescue mapfile (as ddrescue writes it: adjacent areas of one status merged), and helpers to run the
 * real peer tools without blocking the event loop (the server under test runs in this process).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {execFile, spawn, type ChildProcess} from 'node:child_process'
import * as net from 'node:net'
import type {BadRange} from '../../src/core/errors'
import {openInput} from '../../src/format/input'
import {formatMapfile, readMapfile} from '../../src/format/mapfile'
import {createImage} from '../../src/format/writer'

export const SECTOR = 512
export const IMAGE_SIZE = 8 * 1024 * 1024

/** Bad areas of the fixture: a single bad sector, runs of each ddrescue status, and the very last sector. */
export const BAD: BadRange[] = [
  {offset: 1024 * 1024 + 7 * SECTOR, length: SECTOR, status: 'bad-sector'},
  {offset: 3 * 1024 * 1024, length: 64 * 1024, status: 'non-tried'},
  {offset: 5 * 1024 * 1024 + 4096, length: 3 * SECTOR, status: 'non-trimmed'},
  {offset: 6 * 1024 * 1024 + 12 * SECTOR, length: 20 * SECTOR, status: 'non-scraped'},
  {offset: IMAGE_SIZE - SECTOR, length: SECTOR, status: 'bad-sector'},
]
/** A run of zeros (for block status: reported as hole+zero by sources that know it). */
export const ZERO_RUN = {offset: 2 * 1024 * 1024, length: 1024 * 1024}

export interface Fixture {
  dir: string
  /** The image bytes (random data, a zero run); the bad areas hold what a failing medium would not give. */
  raw: string
  /** The ddrescue mapfile of `raw`: every bad area as its ddrescue status, the rest finished ('+'). */
  mapfile: string
  /** A second image with no bad areas (for whole-image copies). */
  goodRaw: string
  /** `raw` + `mapfile` as a VDIMG image, made by the real writer (what `vdev create --mapfile` does). */
  image: string
  /** `goodRaw` as a VDIMG image. */
  goodImage: string
  bad: BadRange[]
  size: number
  cleanup(): void
}

/** Chunks small enough that the 1 MiB zero run is whole zero chunks and bad areas share chunks with data. */
export const CHUNK_SIZE = 64 * 1024

export async function makeFixture(): Promise<Fixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-nbd-'))
  const data = crypto.randomBytes(IMAGE_SIZE)
  data.fill(0, ZERO_RUN.offset, ZERO_RUN.offset + ZERO_RUN.length)
  const raw = path.join(dir, 'disk.raw')
  fs.writeFileSync(raw, data)
  const goodRaw = path.join(dir, 'good.raw')
  fs.writeFileSync(goodRaw, data)
  const mapfile = path.join(dir, 'disk.map')
  fs.writeFileSync(mapfile, formatMapfile(BAD, IMAGE_SIZE))
  const image = path.join(dir, 'disk.vdimg')
  const goodImage = path.join(dir, 'good.vdimg')
  for (const [src, out, map] of [
    [raw, image, mapfile],
    [goodRaw, goodImage, undefined],
  ] as const) {
    const input = openInput(src)
    try {
      await createImage(input, out, {chunkSize: CHUNK_SIZE, mapfile: map ? readMapfile(map) : undefined, threads: 1})
    } finally {
      await input.close()
    }
  }
  const cleanup = () => fs.rmSync(dir, {recursive: true, force: true})
  return {dir, raw, mapfile, goodRaw, image, goodImage, bad: BAD, size: IMAGE_SIZE, cleanup}
}

export function isBadSector(offset: number, bad: BadRange[] = BAD): boolean {
  return bad.some((b) => offset < b.offset + b.length && offset + SECTOR > b.offset)
}

export function run(cmd: string, args: string[], opts: {timeout?: number; allowFail?: boolean} = {}) {
  return new Promise<{code: number; stdout: string; stderr: string}>((resolve, reject) => {
    execFile(cmd, args, {timeout: opts.timeout ?? 60_000, maxBuffer: 64 * 1024 * 1024}, (err, stdout, stderr) => {
      const code = err ? (typeof (err as {code?: unknown}).code === 'number' ? ((err as {code: number}).code) : -1) : 0
      if (err && !opts.allowFail) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr || err.message}`))
      else resolve({code, stdout, stderr})
    })
  })
}

export function hasTool(cmd: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => {
    try {
      fs.accessSync(path.join(d, cmd), fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

/** Debian's python3 (python3-libnbd is installed for it, not for other pythons on PATH). */
export const PYTHON = '/usr/bin/python3'
export async function hasPythonNbd(): Promise<boolean> {
  if (!fs.existsSync(PYTHON)) return false
  const r = await run(PYTHON, ['-c', 'import nbd'], {allowFail: true})
  return r.code === 0
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}

/** Start nbdkit in the foreground on a Unix socket; resolves once the socket exists. */
export async function startNbdkit(sock: string, args: string[]): Promise<ChildProcess> {
  const child = spawn('nbdkit', ['-f', '-r', '-U', sock, ...args], {stdio: ['ignore', 'ignore', 'pipe']})
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  for (let i = 0; i < 100; i++) {
    if (fs.existsSync(sock)) return child
    if (child.exitCode !== null) break
    await new Promise((r) => setTimeout(r, 50))
  }
  child.kill('SIGKILL')
  throw new Error(`nbdkit did not start: ${err}`)
}

export function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill('SIGTERM')
    setTimeout(() => child.kill('SIGKILL'), 3000).unref()
  })
}

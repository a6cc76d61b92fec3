/**
 * Fixture for the in-VM kernel backend tests (ublk, NBD): a raw disk with a DOS partition table (made by the real sfdisk), random
 * data, bad areas of each ddrescue status (one inside each partition, one at the very end), the matching
 * mapfile, and the .vdimg the real writer makes from them. Plus an async process runner: the device is served
 * by this very process, so a synchronous spawn (spawnSync, execFileSync) while it is attached would deadlock.
 */
import {spawn} from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import type {BadRange} from '../../src/core/errors'
import {openInput} from '../../src/format/input'
import {formatMapfile, readMapfile} from '../../src/format/mapfile'
import {createImage} from '../../src/format/writer'

export const SECTOR = 512
export const MiB = 1 << 20
export const DISK_SIZE = 8 * MiB
/** Partitions (in sectors), as sfdisk is asked to make them. */
export const PARTITIONS = [
  {start: 2048, size: 4096},
  {start: 6144, size: 8192},
]

export const BAD: BadRange[] = [
  {offset: 1 * MiB + 207 * SECTOR, length: SECTOR, status: 'bad-sector'}, // partition 1
  {offset: 2 * MiB + 64 * 1024, length: 64 * 1024, status: 'non-tried'}, // partition 1
  {offset: 5 * MiB + 4096, length: 3 * SECTOR, status: 'non-trimmed'}, // partition 2
  {offset: 6 * MiB + 12 * SECTOR, length: 20 * SECTOR, status: 'non-scraped'}, // partition 2
  {offset: DISK_SIZE - SECTOR, length: SECTOR, status: 'bad-sector'}, // last sector of the disk
]

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: Buffer
  stderr: string
}

/** Run a tool without blocking the event loop (argv array, no shell). */
export function run(cmd: string, args: string[], opts: {input?: string | Buffer; timeoutMs?: number} = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {stdio: ['pipe', 'pipe', 'pipe']})
    const out: Buffer[] = []
    let err = ''
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => (err += b.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({code, signal, stdout: Buffer.concat(out), stderr: err})
    })
    child.stdin.on('error', () => undefined)
    child.stdin.end(opts.input ?? '')
  })
}

/** `dd` of `count` sectors at sector `skip` with O_DIRECT; null data when the read failed. */
export async function ddSectors(device: string, skip: number, count: number, bs = SECTOR): Promise<{data: Buffer | null; stderr: string}> {
  const r = await run('dd', [`if=${device}`, `bs=${bs}`, `skip=${skip}`, `count=${count}`, 'iflag=direct', 'status=none'])
  return {data: r.code === 0 ? r.stdout : null, stderr: r.stderr}
}

export interface DiskFixture {
  dir: string
  raw: string
  data: Buffer
  mapfile: string
  image: string
  cleanup(): void
}

export async function makeFixture(): Promise<DiskFixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-disk-'))
  const raw = path.join(dir, 'disk.raw')
  fs.writeFileSync(raw, crypto.randomBytes(DISK_SIZE))
  const table = ['label: dos', ...PARTITIONS.map((p) => `start=${p.start}, size=${p.size}, type=83`)].join('\n') + '\n'
  const sf = await run('sfdisk', ['--no-reread', '--no-tell-kernel', raw], {input: table})
  if (sf.code !== 0) throw new Error(`sfdisk failed: ${sf.stderr}`)
  const data = fs.readFileSync(raw)
  const mapfile = path.join(dir, 'disk.map')
  fs.writeFileSync(mapfile, formatMapfile(BAD, DISK_SIZE))
  const image = path.join(dir, 'disk.vdimg')
  const input = openInput(raw)
  try {
    await createImage(input, image, {chunkSize: 64 * 1024, mapfile: readMapfile(mapfile), threads: 1})
  } finally {
    await input.close()
  }
  return {dir, raw, data, mapfile, image, cleanup: () => fs.rmSync(dir, {recursive: true, force: true})}
}

/** True when any byte of `sector` lies in a bad area. */
export function isBadSector(sector: number): boolean {
  const o = sector * SECTOR
  return BAD.some((b) => o < b.offset + b.length && o + SECTOR > b.offset)
}

/**
 * Read the stretch between the second and third bad areas of `device` three times over with O_DIRECT reads
 * of `bs` KiB one at a time (dd's way; on one CPU when `cpu` is given: every request then goes to one ublk
 * queue), checking its bytes: a sequential reader for decode-ahead to follow (the serving process's detach
 * log then counts the chunks decoded ahead and used).
 */
export async function readSequentially(device: string, data: Buffer, opts: {bs?: number; cpu?: number} = {}): Promise<void> {
  const bs = (opts.bs ?? 128) * 1024
  const from = 2 * MiB + 256 * 1024
  const to = 5 * MiB
  const want = crypto.createHash('sha256').update(data.subarray(from, to)).digest('hex')
  const dd = ['dd', `if=${device}`, `bs=${bs}`, `skip=${from}`, `count=${(to - from) / bs}`, 'iflag=direct,skip_bytes', 'status=none']
  for (let pass = 0; pass < 3; pass++) {
    const r = opts.cpu === undefined ? await run(dd[0], dd.slice(1)) : await run('taskset', ['-c', String(opts.cpu), ...dd])
    if (r.code !== 0) throw new Error(`dd of ${device}: ${r.stderr}`)
    if (crypto.createHash('sha256').update(r.stdout).digest('hex') !== want) throw new Error(`dd of ${device}: the bytes differ from the image's`)
  }
}

/** The detach log's decode-ahead line with chunks decoded ahead and read from there (src/lifecycle/daemon.ts). */
export const DECODED_AHEAD = /decode-ahead: [1-9]\d* chunks decoded ahead \(\d+ for a read under way\), [1-9]\d* read from there/

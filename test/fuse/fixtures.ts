/**
 * Fixtures for the attach tests: ext4 file systems built from directories (mkfs.ext4 -d), bad areas
 * found by real GNU ddrescue against a source that really fails (nbdkit's ddrescue filter via nbdfuse),
 * VDIMG images made by the real `vdev create`, and attaching with the FUSE backend. The sandbox that
 * removes what a test made is test/sandbox.ts (re-exported here).
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as zlib from 'node:zlib'
import {spawn} from 'node:child_process'
import {ddrescue, failingSource, prng, runCli, writeTruthMap} from '../helpers'
import {run, runSync, type Sandbox} from '../sandbox'

export {IS_ROOT, Sandbox, readDirect, readSectors, run, runSync, udevSettle} from '../sandbox'
export {writeTruthMap} from '../helpers'

export interface SourceFile {
  name: string
  size: number
}

/** Files of chosen sizes with deterministic contents, some in a subdirectory. */
export function writeTree(dir: string, files: SourceFile[]): void {
  files.forEach((f, i) => {
    const p = path.join(dir, f.name)
    fs.mkdirSync(path.dirname(p), {recursive: true})
    fs.writeFileSync(p, prng(1000 + i, f.size))
  })
}

/** An ext4 image of `size` bytes holding `srcDir` (4 KiB blocks, no lazy init, so mkfs writes all it needs). */
export function mkfsExt4(raw: string, size: number, srcDir: string): void {
  fs.writeFileSync(raw, '')
  fs.truncateSync(raw, size)
  const r = runSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-d', srcDir, raw])
  assert.equal(r.code, 0, `mkfs.ext4: ${r.stderr}`)
}

/** Byte ranges a file occupies inside an ext4 image (debugfs "blocks", 4 KiB blocks). */
export function fileExtents(raw: string, name: string, blockSize = 4096): Array<{offset: number; length: number}> {
  const r = runSync('debugfs', ['-R', `blocks /${name}`, raw])
  assert.equal(r.code, 0, `debugfs: ${r.stderr}`)
  const blocks = r.stdout.trim().split(/\s+/).filter(Boolean).map(Number)
  return blocks.map((b) => ({offset: b * blockSize, length: blockSize}))
}

export interface BadRange {
  offset: number
  length: number
  status: string
}

/** The non-finished areas of a GNU ddrescue mapfile. */
export function mapfileBadAreas(map: string, size: number): BadRange[] {
  const names: Record<string, string> = {'?': 'non-tried', '*': 'non-trimmed', '/': 'non-scraped', '-': 'bad-sector'}
  const lines = fs.readFileSync(map, 'utf8').split('\n').filter((l) => l.trim() && !l.startsWith('#'))
  const out: BadRange[] = []
  let end = 0
  for (const l of lines.slice(1)) {
    const [pos, len, st] = l.trim().split(/\s+/)
    const offset = Number(pos)
    const length = Number(len)
    end = offset + length
    if (st !== '+') out.push({offset, length, status: names[st]})
  }
  if (end < size) out.push({offset: end, length: size - end, status: 'non-tried'})
  return out
}

export function overlaps(a: {offset: number; length: number}, b: {offset: number; length: number}): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length
}

/**
 * Rescue RAW with real GNU ddrescue from a source that fails reads in `bad` (and stop `tail` bytes
 * before the end, leaving them non-tried). Returns the rescued raw file and ddrescue's own mapfile.
 */
export async function rescueWithDdrescue(dir: string, raw: string, bad: Array<{offset: number; length: number}>, tail = 0): Promise<{raw: string; map: string}> {
  const size = fs.statSync(raw).size
  const truth = path.join(dir, 'truth.map')
  writeTruthMap(truth, size, bad)
  const src = await failingSource(dir, raw, truth)
  const out = path.join(dir, 'rescued.raw')
  const map = path.join(dir, 'rescued.map')
  try {
    ddrescue(src.file, out, map, ['-d', ...(tail ? ['-s', String(size - tail)] : [])])
  } finally {
    await src.stop()
  }
  // The rescued file must be as long as the medium for `vdev create`; ddrescue stops at -s.
  if (fs.statSync(out).size < size) fs.truncateSync(out, size)
  return {raw: out, map}
}

/** The files of the standard test file system: small and large, block-aligned and not, nested. */
export const EXT4_FILES: SourceFile[] = [
  {name: 'a-small.txt', size: 1000},
  {name: 'b-block.bin', size: 4096},
  {name: 'c-victim-1mib.bin', size: 1 << 20},
  {name: 'd-odd.bin', size: 70_001},
  {name: 'e-victim-3mib.bin', size: 3 * (1 << 20) + 123},
  {name: 'f-large.bin', size: 2 * (1 << 20)},
  {name: 'dir/g-nested.bin', size: 200_000},
  {name: 'dir/h-nested.bin', size: 12_345},
  {name: 'dir/sub/i-deep.bin', size: 500_000},
  {name: 'j-empty', size: 0},
]

export interface Ext4Fixture {
  srcDir: string
  /** The pristine file system. */
  raw: string
  size: number
  /** What GNU ddrescue recovered, and its mapfile. */
  rescued: {raw: string; map: string}
  bad: BadRange[]
  image: string
}

/**
 * The standard fixture: an ext4 image from EXT4_FILES, bad sectors inside two files' data (one of them
 * a 1 KiB run that is not 4 KiB-aligned) and the last 64 KiB never tried, rescued by real ddrescue,
 * turned into a VDIMG image by the real `vdev create --mapfile`.
 */
export async function buildExt4Fixture(dir: string, opts: {size?: number; sectorSize?: number} = {}): Promise<Ext4Fixture> {
  const size = opts.size ?? 32 << 20
  const srcDir = path.join(dir, 'src')
  writeTree(srcDir, EXT4_FILES)
  const raw = path.join(dir, 'fs.raw')
  mkfsExt4(raw, size, srcDir)
  const c = fileExtents(raw, 'c-victim-1mib.bin')
  const e = fileExtents(raw, 'e-victim-3mib.bin')
  assert.ok(c.length === 256 && e.length > 700, 'victim files have their blocks')
  const bad = [
    {offset: c[100].offset + 1024, length: 1024}, // two sectors inside one block of c
    {offset: e[e.length - 2].offset, length: 4096}, // a whole block near the end of e
  ]
  const rescued = await rescueWithDdrescue(dir, raw, bad, 64 * 1024)
  const image = path.join(dir, 'fs.vdimg')
  const args = ['create', rescued.raw, image, '--mapfile', rescued.map]
  if (opts.sectorSize) args.push('--sector-size', String(opts.sectorSize))
  const r = await runCli(args)
  assert.equal(r.code, 0, `vdev create: ${r.stderr}`)
  return {srcDir, raw, size, rescued, bad: mapfileBadAreas(rescued.map, size), image}
}

export interface AttachJson {
  id: string
  device: string
  backend: string
  image: string
  pid: number
  readOnly: boolean
  partitions: string[]
}

export async function attach(sb: Sandbox, image: string, extra: string[] = []): Promise<AttachJson> {
  const r = await sb.vdev(['attach', image, '--backend', 'fuse', '--json', ...extra])
  assert.equal(r.code, 0, `attach: ${r.stderr}`)
  const j = JSON.parse(r.stdout) as AttachJson
  sb.trackPid(j.pid)
  return j
}

/** Partition scanning needs the kernel's partition parsers; some minimal kernels are built without any. */
export function kernelCannotReadPartitionTables(): string | undefined {
  let config: string
  try {
    config = zlib.gunzipSync(fs.readFileSync('/proc/config.gz')).toString()
  } catch {
    return undefined // no config exposed: assume a normal kernel
  }
  if (/^CONFIG_MSDOS_PARTITION=y/m.test(config)) return undefined
  return `this kernel (${os.release()}) is built without CONFIG_MSDOS_PARTITION, so it reads no partition table`
}

/** An MBR-partitioned image: partitions appear read-only with their bytes; an open partition makes the device busy. */
export async function partitionsScenario(sb: Sandbox): Promise<void> {
  const size = 24 << 20
  const rawPath = sb.p('parts.raw')
  fs.writeFileSync(rawPath, Buffer.alloc(0))
  fs.truncateSync(rawPath, size)
  const sf = spawn('sfdisk', ['--quiet', rawPath], {stdio: ['pipe', 'ignore', 'pipe']})
  sf.stdin.end('label: dos\nstart=2048, size=16384, type=83\nstart=18432, size=28672, type=83\n')
  const code = await new Promise((r) => sf.on('close', r))
  assert.equal(code, 0)
  const fd = fs.openSync(rawPath, 'r+')
  const p1 = prng(11, 16384 * 512)
  const p2 = prng(12, 28672 * 512)
  fs.writeSync(fd, p1, 0, p1.length, 2048 * 512)
  fs.writeSync(fd, p2, 0, p2.length, 18432 * 512)
  fs.closeSync(fd)
  const img = sb.p('parts.vdimg')
  const c = await sb.vdev(['create', rawPath, img])
  assert.equal(c.code, 0, c.stderr)

  const dev = await attach(sb, img)
  assert.deepEqual(dev.partitions, [`${dev.device}p1`, `${dev.device}p2`])
  for (const p of dev.partitions) {
    const r = await run('blockdev', ['--getro', '--getsize64', p])
    assert.deepEqual(r.stdout.toString().trim().split('\n'), ['1', String(p === dev.partitions[0] ? p1.length : p2.length)])
  }
  const r2 = await run('dd', [`if=${dev.partitions[1]}`, 'bs=1M', 'iflag=direct', 'status=none'])
  assert.equal(r2.code, 0, r2.stderr)
  assert.ok(r2.stdout.equals(p2), 'partition 2 bytes')

  // A process holding a partition open makes the device busy.
  const holder = spawn('sh', ['-c', 'exec 3<"$1"; exec sleep 60', 'sh', dev.partitions[0]], {stdio: 'ignore'})
  sb.trackPid(holder.pid)
  await new Promise((r) => setTimeout(r, 300))
  const busy = await sb.vdev(['detach', dev.id])
  assert.equal(busy.code, 8, busy.stderr)
  assert.match(busy.stderr, new RegExp(`${dev.partitions[0]} is open by process ${holder.pid}`))
  holder.kill('SIGKILL')
  await new Promise((r) => holder.on('exit', r))
  const d = await sb.vdev(['detach', dev.id])
  assert.equal(d.code, 0, d.stderr)
  assert.equal(fs.existsSync(dev.partitions[0]), false, 'partition nodes are gone')
  assert.deepEqual(sb.leftovers(), [])
}

/**
 * `extract`: decode an image back to raw bytes — into a file (sparse where zero, built under a temporary
 * name and renamed when complete), onto a block device (--force), or to stdout — and optionally write
 * its bad-area map back out as a GNU ddrescue mapfile.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {VdevError, ioError, type BadRange} from '../core/errors'
import {BadAreaMap} from './badmap'
import {DamageList, type Damage} from './verify'
import {decodeAll} from './decode'
import {formatMapfile} from './mapfile'
import type {VdimgImage} from './reader'
import {syncDirectory} from '../sys/dirsync'
import {writebackBehind} from '../sys/fadvise'

export type BadFill = 'zero' | 'pattern'

/** The fill for unreadable bytes with --bad-fill pattern: this 16-byte text, aligned to absolute offsets. */
export const BAD_PATTERN = Buffer.from('VDEV-UNREADABLE!', 'latin1')

export function fillPattern(buf: Buffer, at: number, len: number, absolute: number): void {
  for (let i = 0; i < len; i++) buf[at + i] = BAD_PATTERN[(absolute + i) % BAD_PATTERN.length]
}

export interface ExtractOptions {
  badFill?: BadFill
  mapfileOut?: string
  force?: boolean
  threads?: number
  /** Stop between batches when aborted (SIGINT, SIGTERM): the temporary file is removed, the reason thrown. */
  signal?: AbortSignal
  onProgress?: (done: number, total: number) => void
}

export interface ExtractResult {
  bytes: number
  sparseBytes: number
  badBytes: number
  /**
   * Chunks that could not be decoded (the first 100 runs of them) (a checksum fails, a zstd frame does not decode, their index table
   * is damaged): written per the bad fill like unreadable bytes, and bad-sector areas in --mapfile-out.
   * The output is complete all the same; the caller reports the damage (exit 5).
   */
  damaged: Damage[]
  damagedChunks: number
  damagedBytes: number
}

/** `map` with the damaged ranges (sorted, disjoint) added as bad-sector areas over whatever was there. */
export function withDamage(map: BadAreaMap, damaged: Array<{offset: number; length: number}>): BadAreaMap {
  if (!damaged.length) return map
  const out: BadRange[] = []
  let d = 0
  for (const r of map) {
    let at = r.offset
    const end = r.offset + r.length
    while (at < end) {
      while (d < damaged.length && damaged[d].offset + damaged[d].length <= at) d++
      const next = damaged[d]
      if (!next || next.offset >= end) {
        out.push({offset: at, length: end - at, status: r.status})
        break
      }
      if (next.offset > at) out.push({offset: at, length: next.offset - at, status: r.status})
      at = next.offset + next.length
    }
  }
  for (const x of damaged) out.push({offset: x.offset, length: x.length, status: 'bad-sector'})
  return BadAreaMap.fromRanges(out)
}

function tempBeside(target: string): string {
  return path.join(path.dirname(path.resolve(target)), `.${path.basename(target)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`)
}

/**
 * Clear O_NONBLOCK on a socket we write to (Node sets it when something touched process.stdout), so
 * writes from libuv's pool simply block. Linux only; false when it cannot.
 */
function makeBlocking(fd: number): boolean {
  if (process.platform !== 'linux') return false
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../sys/libc') as typeof import('../sys/libc')
    const flags = libc.fcntl(fd, libc.F_GETFL, 0)
    if (flags < 0) return false
    return (flags & libc.O_NONBLOCK) === 0 || libc.fcntl(fd, libc.F_SETFL, flags & ~libc.O_NONBLOCK) >= 0
  } catch {
    return false
  }
}

/** A 1 MiB pipe buffer (Linux): fewer, larger writes and wake-ups on both sides of the pipe. */
function growPipe(fd: number): void {
  if (process.platform !== 'linux') return
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../sys/libc') as typeof import('../sys/libc')
    libc.fcntl(fd, libc.F_SETPIPE_SZ, 1 << 20)
  } catch {
    /* the default size works too */
  }
}

/** Write all of buf with fs.write (on libuv's pool, so this thread keeps feeding the decoders). */
function writeAll(fd: number, buf: Uint8Array, pos: number | null, name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0
    const step = (): void =>
      fs.write(fd, buf, done, buf.length - done, pos === null ? null : pos + done, (err, n) => {
        if (err) {
          if (err.code === 'EAGAIN') return void setTimeout(step, 1)
          return reject(ioError(name, err, 'write error'))
        }
        done += n
        if (done >= buf.length) resolve()
        else step()
      })
    step()
  })
}

/**
 * How stdout is written. A pipe is opened again through /proc so that its flags are our own (Node may
 * have made fd 1 non-blocking) and written from libuv's pool; a socket goes through process.stdout,
 * which knows how to wait for it; files, devices and terminals are written through fd 1.
 */
function stdoutWriter(): {write: (b: Buffer) => Promise<void>; close: () => void} {
  let st: fs.Stats | undefined
  try {
    st = fs.fstatSync(1)
  } catch {
    st = undefined
  }
  if (st?.isFIFO()) {
    try {
      const fd = fs.openSync('/proc/self/fd/1', 'w')
      growPipe(fd)
      return {write: (b) => writeAll(fd, b, null, 'stdout'), close: () => fs.closeSync(fd)}
    } catch {
      /* no /proc: fall through */
    }
  }
  if (st?.isSocket() && makeBlocking(1)) return {write: (b) => writeAll(1, b, null, 'stdout'), close: () => undefined}
  if (st?.isSocket() || st?.isFIFO()) {
    // Resolve only once the bytes are written: the batch buffer is reused afterwards.
    const write = (b: Buffer) =>
      new Promise<void>((resolve, reject) => process.stdout.write(b, (err) => (err ? reject(ioError('stdout', err, 'write error')) : resolve())))
    return {write, close: () => undefined}
  }
  return {write: (b) => writeAll(1, b, null, 'stdout'), close: () => undefined}
}

export async function extractImage(img: VdimgImage, out: string, opts: ExtractOptions = {}): Promise<ExtractResult> {
  const fill = opts.badFill ?? 'zero'
  const toStdout = out === '-'
  let fd = -1
  let tmp: string | undefined
  let device = false
  if (!toStdout) {
    let st: fs.Stats | undefined
    try {
      st = fs.statSync(out)
    } catch {
      st = undefined
    }
    if (st && !opts.force) throw new VdevError('exists', `${out}: already exists (use --force to replace it)`)
    if (st?.isBlockDevice()) {
      device = true
      try {
        fd = fs.openSync(out, 'r+')
      } catch (err) {
        throw ioError(out, err)
      }
    } else {
      tmp = tempBeside(out)
      try {
        fd = fs.openSync(tmp, 'wx', 0o644)
      } catch (err) {
        throw ioError(out, err, 'cannot create')
      }
    }
  }
  let mapTmp: string | undefined
  const cleanup = () => {
    if (fd >= 0 && !toStdout) {
      try {
        fs.closeSync(fd)
      } catch {
        /* closed */
      }
      fd = -1
    }
    if (tmp) fs.rmSync(tmp, {force: true})
    if (mapTmp) fs.rmSync(mapTmp, {force: true})
  }
  const result: ExtractResult = {bytes: 0, sparseBytes: 0, badBytes: 0, damaged: [], damagedChunks: 0, damagedBytes: 0}
  const damage = new DamageList(100)
  try {
    if (opts.mapfileOut) {
      if (fs.existsSync(opts.mapfileOut) && !opts.force)
        throw new VdevError('exists', `${opts.mapfileOut}: already exists (use --force to replace it)`)
      mapTmp = tempBeside(opts.mapfileOut)
    }
    // Size the file first: a file system that cannot hold it (EFBIG: ext4 stops 4 KiB short of 16 TiB)
    // fails now, not after decoding the whole image.
    if (tmp) {
      try {
        fs.ftruncateSync(fd, img.size)
      } catch (err) {
        throw ioError(out, err, `cannot make a file of ${img.size} bytes`)
      }
    }
    const stdout = toStdout ? stdoutWriter() : undefined
    // The fsync before the rename then waits for little more than the last few MiB, and its flush of the
    // disk's cache for little more than the last 64 MiB.
    const writeback = toStdout ? undefined : writebackBehind(fd)
    try {
      await decodeAll(img, {
        threads: opts.threads,
        stopOnError: false,
        signal: opts.signal,
        onBatch: async (b) => {
          const bad = img.badAreas.intersect(b.offset, b.data.length)
          if (fill === 'pattern' && bad.length && b.allZero) b = {...b, data: Buffer.from(b.data), allZero: false} // never write into the shared zeros
          for (const r of bad) {
            result.badBytes += r.length
            if (fill === 'pattern') fillPattern(b.data, r.offset - b.offset, r.length, r.offset)
          }
          // Damaged chunks come as zeros (decode.ts); with the pattern they read as unreadable bytes do.
          let patterned = fill === 'pattern' && bad.length > 0
          for (const c of b.chunks)
            if (c.error) {
              const from = c.index * img.chunkSize
              const len = img.chunkLength(c.index)
              damage.add(c.index, from, len, c.error.message)
              if (fill === 'pattern') {
                fillPattern(b.data, from - b.offset, len, from)
                patterned = true
              }
            }
          if (stdout) await stdout.write(b.data)
          else if (device || patterned) await writeAll(fd, b.data, b.offset, out)
          else {
            // Sparse: write runs of chunks that hold data; zero chunks stay holes.
            let runStart = -1
            let at = 0
            const writes: Array<Promise<void>> = []
            const flush = (end: number) => {
              if (runStart >= 0) writes.push(writeAll(fd, b.data.subarray(runStart, end), b.offset + runStart, out))
              runStart = -1
            }
            for (const c of b.chunks) {
              const len = img.chunkLength(c.index)
              if (c.entry.storedLength > 0) {
                if (runStart < 0) runStart = at
              } else {
                flush(at)
                result.sparseBytes += len
              }
              at += len
            }
            flush(at)
            await Promise.all(writes)
          }
          writeback?.behind(b.offset + b.data.length)
          result.bytes += b.data.length
          opts.onProgress?.(result.bytes, img.size)
        },
      })
    } catch (err) {
      await writeback?.settle().catch(() => undefined) // a background fdatasync still holds the descriptor
      throw err
    } finally {
      stdout?.close()
    }
    if (!toStdout) {
      try {
        await writeback?.settle()
        fs.fsyncSync(fd)
        fs.closeSync(fd)
        fd = -1
        if (tmp) {
          fs.renameSync(tmp, out)
          tmp = undefined
          syncDirectory(path.dirname(path.resolve(out)))
        }
      } catch (err) {
        throw ioError(out, err, 'write error')
      }
    }
    result.damaged = damage.list
    result.damagedChunks = damage.chunks
    result.damagedBytes = damage.ranges.reduce((n, d) => n + d.length, 0)
    if (opts.mapfileOut && mapTmp) {
      const d = (img.metadata.ddrescue ?? {}) as {currentPos?: number; currentStatus?: string; currentPass?: number}
      // Damaged chunks' bytes are lost as surely as unreadable sectors: bad-sector ('-') areas.
      const text = formatMapfile(withDamage(img.badAreas, damage.ranges), img.size, {
        currentPos: typeof d.currentPos === 'number' ? d.currentPos : undefined,
        currentStatus: typeof d.currentStatus === 'string' ? d.currentStatus : undefined,
        currentPass: typeof d.currentPass === 'number' ? d.currentPass : undefined,
        comment: `Extracted from ${path.basename(img.path)}`,
      })
      const mfd = fs.openSync(mapTmp, 'wx')
      try {
        fs.writeFileSync(mfd, text)
        fs.fsyncSync(mfd)
      } finally {
        fs.closeSync(mfd)
      }
      fs.renameSync(mapTmp, opts.mapfileOut)
      mapTmp = undefined
      syncDirectory(path.dirname(path.resolve(opts.mapfileOut)))
    }
    return result
  } catch (err) {
    cleanup()
    throw err
  }
}

/**
 * `extract`: decode an image back to raw bytes — into a file (sparse where zero, built under a temporary
 * name and renamed when complete), onto a block device (--force), or to stdout — and optionally write
 * its bad-area map back out as a GNU ddrescue mapfile.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {VdevError, ioError} from '../core/errors'
import {decodeAll} from './decode'
import {formatMapfile} from './mapfile'
import type {VdimgImage} from './reader'

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
  onProgress?: (done: number, total: number) => void
}

export interface ExtractResult {
  bytes: number
  sparseBytes: number
  badBytes: number
}

function tempBeside(target: string): string {
  return path.join(path.dirname(path.resolve(target)), `.${path.basename(target)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`)
}

function writeAll(fd: number, buf: Buffer, pos: number | null, name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0
    const step = (): void =>
      fs.write(fd, buf, done, buf.length - done, pos === null ? null : pos + done, (err, n) => {
        if (err) return reject(ioError(name, err, 'write error'))
        done += n
        if (done >= buf.length) resolve()
        else step()
      })
    step()
  })
}

function stdoutWrite(buf: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(ioError('stdout', err, 'write error'))
    process.stdout.once('error', onError)
    const ok = process.stdout.write(buf, (err) => {
      if (err) return
      if (ok) (process.stdout.removeListener('error', onError), resolve())
    })
    if (!ok) process.stdout.once('drain', () => (process.stdout.removeListener('error', onError), resolve()))
  })
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
  const onSignal = () => (cleanup(), process.exit(130))
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const result: ExtractResult = {bytes: 0, sparseBytes: 0, badBytes: 0}
  try {
    if (opts.mapfileOut) {
      if (fs.existsSync(opts.mapfileOut) && !opts.force)
        throw new VdevError('exists', `${opts.mapfileOut}: already exists (use --force to replace it)`)
      mapTmp = tempBeside(opts.mapfileOut)
    }
    let zeros = Buffer.alloc(0)
    await decodeAll(img, {
      threads: opts.threads,
      onChunk: async (c) => {
        const start = c.index * img.chunkSize
        const len = img.chunkLength(c.index)
        let data = c.data
        const bad = img.badAreas.intersect(start, len)
        if (fill === 'pattern' && bad.length) {
          data = data ? Buffer.from(data) : Buffer.alloc(len)
          for (const b of bad) fillPattern(data, b.offset - start, b.length, b.offset)
        }
        for (const b of bad) result.badBytes += b.length
        if (data) {
          if (toStdout) await stdoutWrite(data)
          else await writeAll(fd, data, start, out)
        } else if (toStdout || device) {
          if (zeros.length < len) zeros = Buffer.alloc(len)
          if (toStdout) await stdoutWrite(zeros.subarray(0, len))
          else await writeAll(fd, zeros.subarray(0, len), start, out)
        } else result.sparseBytes += len
        result.bytes += len
        opts.onProgress?.(result.bytes, img.size)
      },
    })
    if (!toStdout) {
      if (!device) fs.ftruncateSync(fd, img.size)
      fs.fsyncSync(fd)
      fs.closeSync(fd)
      fd = -1
      if (tmp) {
        fs.renameSync(tmp, out)
        tmp = undefined
      }
    }
    if (opts.mapfileOut && mapTmp) {
      const d = (img.metadata.ddrescue ?? {}) as {currentPos?: number; currentStatus?: string; currentPass?: number}
      const text = formatMapfile(img.badAreas, img.size, {
        currentPos: typeof d.currentPos === 'number' ? d.currentPos : undefined,
        currentStatus: typeof d.currentStatus === 'string' ? d.currentStatus : undefined,
        currentPass: typeof d.currentPass === 'number' ? d.currentPass : undefined,
        comment: `Extracted from ${path.basename(img.path)}`,
      })
      fs.writeFileSync(mapTmp, text, {flag: 'wx'})
      fs.renameSync(mapTmp, opts.mapfileOut)
      mapTmp = undefined
    }
    return result
  } catch (err) {
    cleanup()
    throw err
  } finally {
    process.removeListener('SIGINT', onSignal)
    process.removeListener('SIGTERM', onSignal)
  }
}

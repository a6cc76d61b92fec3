/**
 * Compaction of an overlay (docs/OVERLAY.md, "Compaction"): the log keeps every write, overwrites included,
 * so a long session grows the file far beyond what it holds. Compacting writes a new log with one record per
 * extent the overlay holds now (data, write-zeroes, discard), in offset order, under the same header (the
 * same base, id and creation time), and renames it over the old one. Readers see the same bytes before and
 * after; no base is needed.
 *
 * Crash safety: the new log is written to a temporary file beside the overlay, fdatasynced, and renamed into
 * place, then the directory is fsynced — so the overlay is at every moment either the old log or the whole
 * new one. The old file is locked (flock) for the whole time, so a server cannot append to it meanwhile (and
 * a running server makes compaction fail with `exists`, exit 6).
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {VdevError, ioError} from '../core/errors'
import {crc32c} from '../format/crc'
import {lockExclusive} from '../sys/file-lock'
import {HEADER_SIZE, MAX_RECORD_DATA, RECORD_HEADER_SIZE, REC_TRIM, REC_WRITE, REC_ZERO, decodeHeader, encodeHeader, encodeRecordHeader, readAt, replay} from './overlay'
import {syncDirectory} from '../sys/dirsync'

export interface CompactResult {
  path: string
  bytesBefore: number
  bytesAfter: number
  recordsBefore: number
  recordsAfter: number
  /** Bytes after the valid records in the old file (a torn tail), dropped. */
  discardedBytes: number
}

/** Exactly `len` bytes at `pos`: a record the replay kept lies wholly inside the file. */
function preadExact(fd: number, len: number, pos: number): Buffer {
  const b = readAt(fd, len, pos)
  if (b.length < len) throw new Error(`the overlay ends at ${pos + b.length}, inside a record it holds`)
  return b
}

function writeAll(fd: number, b: Buffer, pos: number): void {
  let done = 0
  while (done < b.length) done += fs.writeSync(fd, b, done, b.length - done, pos + done)
}

/** Compact `file` in place. `onProgress(done, total)` counts the data bytes copied. */
export function compactOverlay(file: string, onProgress?: (done: number, total: number) => void): CompactResult {
  let fd: number
  try {
    fd = fs.openSync(file, 'r+')
  } catch (err) {
    throw ioError(file, err, 'cannot open the overlay')
  }
  let tmp: string | undefined
  try {
    const st = fs.fstatSync(fd)
    if (!st.isFile()) throw new VdevError('usage', `${file}: an overlay must be a regular file`)
    if (lockExclusive(fd) === 'busy') throw new VdevError('exists', `${file}: the overlay is in use by another vdev process`)
    const header = decodeHeader(readAt(fd, HEADER_SIZE, 0), file)
    const r = replay(fd, header, st.size)
    const total = r.map.entries.reduce((n, e) => n + (e.kind === 'data' ? e.end - e.start : 0), 0)
    const dir = path.dirname(path.resolve(file))
    tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.compact`)
    const out = fs.openSync(tmp, 'wx', st.mode & 0o777)
    let at = HEADER_SIZE
    let seq = 0
    let copied = 0
    try {
      writeAll(out, encodeHeader(header), 0)
      for (const e of r.map.entries) {
        if (e.kind === 'zero') {
          writeAll(out, encodeRecordHeader({type: e.type === REC_TRIM ? REC_TRIM : REC_ZERO, seq: ++seq, offset: e.start, length: e.end - e.start, dataCrc: 0}, header.id), at)
          at += RECORD_HEADER_SIZE
          continue
        }
        for (let s = e.start; s < e.end; s += MAX_RECORD_DATA) {
          const len = Math.min(MAX_RECORD_DATA, e.end - s)
          const data = preadExact(fd, len, e.file + (s - e.start))
          writeAll(out, encodeRecordHeader({type: REC_WRITE, seq: ++seq, offset: s, length: len, dataCrc: crc32c(data)}, header.id), at)
          writeAll(out, data, at + RECORD_HEADER_SIZE)
          at += RECORD_HEADER_SIZE + len
          copied += len
          onProgress?.(copied, total)
        }
      }
      fs.fdatasyncSync(out)
    } finally {
      fs.closeSync(out)
    }
    fs.renameSync(tmp, file)
    tmp = undefined
    syncDirectory(dir)
    return {path: path.resolve(file), bytesBefore: st.size, bytesAfter: at, recordsBefore: r.records, recordsAfter: seq, discardedBytes: r.discarded}
  } catch (err) {
    if (tmp) fs.rmSync(tmp, {force: true})
    throw err instanceof VdevError ? err : ioError(file, err, 'cannot compact the overlay')
  } finally {
    // Closing the old file releases its lock (the renamed new file is a new inode, unlocked).
    fs.closeSync(fd)
  }
}

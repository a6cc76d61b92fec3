/**
 * Exact positioned reads of an image file: every byte asked for, or an error saying where the file ended
 * (a truncated image) or failed.
 */
import * as fs from 'node:fs'
import {VdevError, ioError} from '../core/errors'

/** Read exactly `len` bytes at `pos` (into `into` when given and large enough); a short read means the file is truncated. */
export function preadExact(fd: number, len: number, pos: number, name: string, into?: Buffer): Promise<Buffer> {
  const buf = into && into.length >= len ? into.subarray(0, len) : Buffer.allocUnsafeSlow(len)
  return new Promise((resolve, reject) => {
    let done = 0
    const step = (): void => {
      if (done === len) return resolve(buf)
      fs.read(fd, buf, done, len - done, pos + done, (err, n) => {
        if (err) return reject(ioError(name, err, `read error at byte ${pos + done}`))
        if (n === 0) return reject(new VdevError('format', `${name}: unexpected end of file at byte ${pos + done} (truncated?)`))
        done += n
        step()
      })
    }
    step()
  })
}

/** Read exactly `len` bytes at `pos` with pread(2), into `into` when given (it must be large enough). */
export function preadExactSync(fd: number, len: number, pos: number, name: string, into?: Buffer): Buffer {
  if (into && into.length < len) throw new VdevError('internal', `${name}: a read of ${len} bytes into a buffer of ${into.length}`)
  const buf = into ? into.subarray(0, len) : Buffer.allocUnsafeSlow(len)
  let done = 0
  while (done < len) {
    let n: number
    try {
      n = fs.readSync(fd, buf, done, len - done, pos + done)
    } catch (err) {
      throw ioError(name, err, `read error at byte ${pos + done}`)
    }
    if (n === 0) throw new VdevError('format', `${name}: unexpected end of file at byte ${pos + done} (truncated?)`)
    done += n
  }
  return buf
}

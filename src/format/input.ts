/**
 * What `create` reads from: a regular file, a block device (size and logical sector size from the
 * kernel) or a stream (stdin; size unknown until its end).
 */
import * as fs from 'node:fs'
import type {Readable} from 'node:stream'
import {VdevError, ioError} from '../core/errors'
import {blockDeviceSectorSize, blockDeviceSize} from '../sys/blockdev'
import {sequentialAdvice} from '../sys/fadvise'

export interface InputSource {
  readonly name: string
  /** Undefined for streams. */
  readonly size: number | undefined
  readonly seekable: boolean
  /** The device's logical sector size, when the kernel knows it. */
  readonly sectorSize?: number
  /** Fill buf from `position` (ignored by streams, which read on). Returns bytes read; fewer only at the end. */
  read(buf: Buffer, position: number): Promise<number>
  close(): Promise<void>
}

function readFully(fd: number, buf: Buffer, position: number, name: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let done = 0
    const step = (): void =>
      fs.read(fd, buf, done, buf.length - done, position + done, (err, n) => {
        if (err) return reject(ioError(name, err, `read error at byte ${position + done}`))
        done += n
        if (n === 0 || done === buf.length) resolve(done)
        else step()
      })
    step()
  })
}

export function openInput(path: string): InputSource {
  if (path === '-') return streamInput(process.stdin, 'stdin')
  let fd: number
  try {
    fd = fs.openSync(path, 'r')
  } catch (err) {
    throw ioError(path, err)
  }
  const st = fs.fstatSync(fd)
  let size = st.size
  let sectorSize: number | undefined
  if (st.isBlockDevice()) {
    size = blockDeviceSize(fd)
    sectorSize = blockDeviceSectorSize(fd)
  } else if (st.isDirectory()) {
    fs.closeSync(fd)
    throw new VdevError('io', `${path}: is a directory`)
  } else if (!st.isFile()) {
    // A FIFO or character device: read it as a stream.
    return streamInput(fs.createReadStream('', {fd, highWaterMark: 1 << 20}), path)
  }
  const ahead = sequentialAdvice(fd, size)
  return {
    name: path,
    size,
    seekable: true,
    sectorSize,
    read: async (buf, position) => {
      ahead.ahead(position, buf.length)
      try {
        return await readFully(fd, buf, position, path)
      } finally {
        ahead.done(position, buf.length)
      }
    },
    close: async () => {
      ahead.close()
      fs.closeSync(fd)
    },
  }
}

export function streamInput(stream: Readable, name: string): InputSource {
  const queue: Buffer[] = []
  let queued = 0
  let ended = false
  let failure: unknown
  let wake: (() => void) | undefined
  stream.on('data', (b: Buffer) => {
    queue.push(b)
    queued += b.length
    if (queued > 64 << 20) stream.pause()
    wake?.()
  })
  stream.on('end', () => ((ended = true), wake?.()))
  stream.on('error', (e) => ((failure = e), wake?.()))
  return {
    name,
    size: undefined,
    seekable: false,
    async read(buf) {
      let done = 0
      while (done < buf.length) {
        if (failure) throw ioError(name, failure, 'read error')
        if (queue.length === 0) {
          if (ended) break
          stream.resume()
          await new Promise<void>((r) => (wake = r))
          wake = undefined
          continue
        }
        const head = queue[0]
        const n = Math.min(head.length, buf.length - done)
        head.copy(buf, done, 0, n)
        done += n
        queued -= n
        if (n === head.length) queue.shift()
        else queue[0] = head.subarray(n)
      }
      if (queued < 16 << 20) stream.resume()
      return done
    },
    async close() {
      stream.destroy()
    },
  }
}

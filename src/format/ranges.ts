/**
 * Where an image's bytes come from, for the reader: a "byte range fetcher" with a known size that answers
 * exact positioned reads — a local file or block device (FileRanges, pread(2)), or an object on a web
 * server (src/remote: ranged GETs). The reader (reader.ts), its index tables and whole-image decoding
 * (decode.ts) read only through it.
 */
import * as fs from 'node:fs'
import type {TransferListItem} from 'node:worker_threads'
import {VdevError, ioError} from '../core/errors'
import type {FetchStats} from '../core/source'
import {blockDeviceSize} from '../sys/blockdev'
import {preadExact, preadExactSync} from './pread'

export interface ByteRanges {
  /** How messages name the image: its path or URL. */
  readonly name: string
  /** Bytes in the file or object. */
  readonly size: number
  /**
   * Exactly `len` bytes at `pos` (into `into` when it is given and large enough), or a VdevError saying
   * where the file ended ('format': truncated) or why it could not be read ('io').
   */
  read(len: number, pos: number, into?: Buffer): Promise<Buffer>
  /** The same, synchronously: only when `synchronous` (a serving thread's instance). */
  readSync(len: number, pos: number, into?: Buffer): Buffer
  /** True when readSync may be called. */
  readonly synchronous: boolean
  /**
   * Options a serving thread passes to open these same bytes again (src/sources), e.g. the ETag a remote
   * object was pinned to. A local file needs none.
   */
  readonly reopen?: Record<string, string | number | boolean>
  /**
   * For bytes that cannot be read synchronously on another thread by themselves (a remote object): what a
   * serving thread needs to read them through this instance (src/remote/link.ts), and what to transfer.
   */
  offerLink?(): {value: unknown; transfer: TransferListItem[]}
  /**
   * Run `f` with this instance's reads limited to bytes it holds locally (a remote object's cache): any
   * other read fails ('io') instead of going to the network. For decoding ahead (VdimgImage.prefetch), which
   * must never fetch: a read the device was not asked for would succeed or wait during an outage.
   * Absent: every read is local (a file).
   */
  localOnly?<T>(f: () => T): T
  /**
   * The CRC-32C this instance computed over exactly the bytes of `b` when it returned them just now (a
   * cache file's check), or undefined: the caller need not compute it again. Asked once, right after the
   * read; forgotten by any other read.
   */
  checkedCrc?(b: Buffer): number | undefined
  /** Whether localOnly can find anything at all (a remote object with a cache). */
  readonly hasLocal?: boolean
  /** What was fetched so far (remote bytes). */
  readonly stats?: FetchStats
  close(): Promise<void>
}

/** A local file or block device, read with pread(2). */
export class FileRanges implements ByteRanges {
  readonly synchronous = true
  private closed = false
  private constructor(
    readonly name: string,
    /** The open file (read-only). */
    readonly fd: number,
    readonly size: number,
  ) {}

  static open(file: string): FileRanges {
    let fd: number
    try {
      fd = fs.openSync(file, 'r')
    } catch (err) {
      throw ioError(file, err)
    }
    try {
      const st = fs.fstatSync(fd)
      if (st.isDirectory()) throw new VdevError('io', `${file}: is a directory`)
      return new FileRanges(file, fd, st.isBlockDevice() ? blockDeviceSize(fd) : st.size)
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
  }

  read(len: number, pos: number, into?: Buffer): Promise<Buffer> {
    return preadExact(this.fd, len, pos, this.name, into)
  }

  readSync(len: number, pos: number, into?: Buffer): Buffer {
    return preadExactSync(this.fd, len, pos, this.name, into)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    fs.closeSync(this.fd)
  }
}

/**
 * Where a serving thread takes its next FUSE request: while it polls (src/threads/poll.ts), by
 * non-blocking reads of its own clone of the session's /dev/fuse descriptor; otherwise by a blocking read
 * of the session's descriptor.
 *
 * Why a clone: O_NONBLOCK belongs to the open file, which all threads share; FUSE_DEV_IOC_CLONE gives this
 * thread a descriptor of its own on the same connection (fuse.h; the kernel hands each request to one
 * reader, whichever descriptor it reads), and a reply must be written to the descriptor its request was
 * read from (each one has its own "processing" list) — `replyFd` says which.
 */
import * as fs from 'node:fs'
import * as libc from '../../../src/sys/libc'
import {ERRNO} from '../../../src/sys/errno'
import {AdaptivePoll} from '../../../src/threads/poll'
import {FUSE_DEV_IOC_CLONE} from './abi'

export class FuseRequestReader {
  /** The descriptor the last request came from: its reply goes there. */
  replyFd: number
  private clone = -1
  private readonly poller: AdaptivePoll

  constructor(
    private readonly sessionFd: number,
    /** How long one poll looks for a request before the thread sleeps (periodUs 0: never poll). */
    poller: AdaptivePoll,
    log: (line: string) => void,
  ) {
    this.replyFd = sessionFd
    this.poller = poller
    if (poller.periodUs <= 0) return
    try {
      this.clone = cloneDevice(sessionFd)
    } catch (err) {
      log(`fuse: no per-thread /dev/fuse descriptor (${(err as Error).message}); serving without polling`)
      this.poller.disable()
    }
  }

  /** Whether the last request was taken while polling. */
  get polled(): boolean {
    return this.replyFd !== this.sessionFd
  }

  /**
   * Read the next request into `buf`; returns its length. Throws the blocking read's error (ENODEV …).
   * `idle`, when given, is called while no request is waiting, one unit of work at a time (true: it did
   * one, look again; false: nothing to do), before the thread sleeps: decoding ahead of a sequential reader.
   */
  next(buf: Buffer, idle?: () => boolean): number {
    if (this.poller.active) {
      const n = this.poller.poll(() => this.tryRead(buf))
      if (n > 0) {
        this.replyFd = this.clone
        return n
      }
    }
    // Work ahead while no request waits, looking for one between units (needs the non-blocking clone).
    while (idle && this.clone >= 0 && idle()) {
      const n = this.tryRead(buf)
      if (n > 0) {
        this.replyFd = this.clone
        return n
      }
      if (n < 0) break
    }
    this.replyFd = this.sessionFd
    this.poller.sleeping()
    const n = fs.readSync(this.sessionFd, buf, 0, buf.length, null)
    this.poller.woke()
    return n
  }

  /** One non-blocking read of the clone: > 0 a request, 0 nothing yet, < 0 the clone is unusable. */
  private tryRead(buf: Buffer): number {
    const n = libc.read(this.clone, buf)
    if (n > 0) return n
    // EAGAIN: nothing yet; ENOENT: a request was interrupted; EINTR: a signal. Anything else (ENODEV,
    // ECONNABORTED: the connection ended) is left to the blocking read to report.
    if (n === -ERRNO.EAGAIN || n === -ERRNO.ENOENT || n === -ERRNO.EINTR) return 0
    this.poller.disable()
    this.close()
    return -1
  }

  close(): void {
    if (this.clone < 0) return
    fs.closeSync(this.clone)
    this.clone = -1
  }
}

/** A new non-blocking /dev/fuse descriptor attached to the connection of `sessionFd` (fuse.h FUSE_DEV_IOC_CLONE). */
function cloneDevice(sessionFd: number): number {
  const fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR | fs.constants.O_NONBLOCK)
  try {
    const arg = Buffer.alloc(4)
    arg.writeUInt32LE(sessionFd, 0)
    libc.ioctl(fd, FUSE_DEV_IOC_CLONE, arg, 'FUSE_DEV_IOC_CLONE')
    return fd
  } catch (err) {
    fs.closeSync(fd)
    throw err
  }
}

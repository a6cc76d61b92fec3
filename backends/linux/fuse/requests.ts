/**
 * Where a serving thread takes its next FUSE request: for a short while by non-blocking reads of its own
 * clone of the session's /dev/fuse descriptor, then by a blocking read of the session's descriptor.
 *
 * Why poll: a reader with one request at a time (fio at queue depth 1, a file system walking its
 * metadata) sends the next request some 30-40 µs after our reply; a thread asleep in read(2) then pays a
 * wake-up (in a VM, an idle vCPU's) before it even sees it. Like QEMU's adaptive polling (and vdev's NBD
 * serving threads), polling stops after a few polls in a row find nothing, so an idle device costs no
 * CPU, and starts again when requests come close together.
 *
 * Why a clone: O_NONBLOCK belongs to the open file, which all threads share; FUSE_DEV_IOC_CLONE gives this
 * thread a descriptor of its own on the same connection (fuse.h; the kernel hands each request to one
 * reader, whichever descriptor it reads), and a reply must be written to the descriptor its request was
 * read from (each one has its own "processing" list) — `replyFd` says which.
 */
import * as fs from 'node:fs'
import {performance} from 'node:perf_hooks'
import * as libc from '../../../src/sys/libc'
import {FUSE_DEV_IOC_CLONE} from './abi'

/** Polling stops after this many polls in a row found no request... */
const MAX_POLL_MISSES = 4
/** ...and starts again when a request wakes the thread within this many poll periods of its going to sleep. */
const REARM_POLLS = 4

export class FuseRequestReader {
  /** The descriptor the last request came from: its reply goes there. */
  replyFd: number
  private clone = -1
  private polling = false
  private misses = 0

  constructor(
    private readonly sessionFd: number,
    /** How long one poll looks for a request before the thread sleeps (0: never poll). */
    private readonly pollUs: number,
    log: (line: string) => void,
  ) {
    this.replyFd = sessionFd
    if (pollUs <= 0) return
    try {
      this.clone = cloneDevice(sessionFd)
      this.polling = true
    } catch (err) {
      log(`fuse: no per-thread /dev/fuse descriptor (${(err as Error).message}); serving without polling`)
    }
  }

  /** Read the next request into `buf`; returns its length. Throws the blocking read's error (ENODEV …). */
  next(buf: Buffer): number {
    if (this.polling) {
      const n = this.poll(buf)
      if (n > 0) {
        this.replyFd = this.clone
        return n
      }
    }
    this.replyFd = this.sessionFd
    const slept = this.clone >= 0 ? performance.now() : 0
    const n = fs.readSync(this.sessionFd, buf, 0, buf.length, null)
    // A request soon after the thread went to sleep: the reader is busy again, poll again.
    if (!this.polling && this.clone >= 0 && performance.now() - slept < (REARM_POLLS * this.pollUs) / 1000) {
      this.polling = true
      this.misses = 0
    }
    return n
  }

  private poll(buf: Buffer): number {
    const deadline = performance.now() + this.pollUs / 1000
    do {
      const n = libc.read(this.clone, buf)
      if (n > 0) {
        this.misses = 0
        return n
      }
      // EAGAIN: nothing yet; ENOENT: a request was interrupted; EINTR: a signal. Anything else (ENODEV,
      // ECONNABORTED: the connection ended) is left to the blocking read to report.
      if (n !== -libc.ERRNO.EAGAIN && n !== -libc.ERRNO.ENOENT && n !== -libc.ERRNO.EINTR) {
        this.polling = false
        this.close()
        return 0
      }
    } while (performance.now() < deadline)
    if (++this.misses >= MAX_POLL_MISSES) this.polling = false
    return 0
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

/**
 * The FUSE serving-thread body (src/threads runs it on each serving thread): read a request from
 * /dev/fuse, answer it, write the reply — no hop through the main thread. Several threads read the one
 * session descriptor at once (the kernel gives each request to one reader), so decoding uses every core,
 * as libfuse's multi-threaded loop does.
 *
 * A READ takes the fast path: ImageFs.readInto reads through the thread's BlockServer (its own instance
 * of the source, synchronous) straight into the reply buffer after the FUSE header, sent with one
 * write(2). Between requests the thread polls briefly before sleeping (requests.ts).
 */
import {COUNTER} from '../../../src/core/counters'
import type {ServingThreadContext} from '../../../src/threads/protocol'
import {ImageFs} from './imagefs'
import {FuseProtocol, READ_BUFFER_SIZE, requestBufferSize, type InitResult} from './protocol'
import {FuseRequestReader} from './requests'

/** The body's settings, the same for every thread. */
export interface FuseThreadConfig {
  /** The session's /dev/fuse descriptor (descriptors are the process's: every thread reads it). */
  fd: number
  fileName: string
  mtime: number
  maxPages: number
  maxBackground: number
  /** Largest WRITE taken (a writable server: an overlay view), else undefined. */
  maxWrite?: number
}

/** thread → main: the thread that read INIT answered it (or could not). */
export type FuseThreadMessage = {init: InitResult} | {initError: string}

export async function run(ctx: ServingThreadContext): Promise<string> {
  const cfg = ctx.config as FuseThreadConfig
  const imageFs = new ImageFs(ctx.server, {fileName: cfg.fileName, mtime: cfg.mtime, maxRead: cfg.maxPages * 4096})
  const post = (m: FuseThreadMessage): void => ctx.post(m)
  const protocol = new FuseProtocol({
    fd: cfg.fd,
    handler: imageFs.handle,
    maxPages: cfg.maxPages,
    maxBackground: cfg.maxBackground,
    maxWrite: cfg.maxWrite,
    log: ctx.log,
    onInit: (r) => post(r instanceof Error ? {initError: r.message} : {init: r}),
    readInto: imageFs.readInto,
  })
  const requests = new FuseRequestReader(cfg.fd, ctx.poller(), ctx.log)
  const c = ctx.counters
  const buf = Buffer.allocUnsafe(cfg.maxWrite ? requestBufferSize(cfg.maxWrite) : READ_BUFFER_SIZE)
  let draining = false
  ctx.ready()
  try {
    for (;;) {
      let n: number
      try {
        n = requests.next(buf, ctx.workAhead) // between requests, work ahead of the readers
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        // EINTR: a signal; EAGAIN: another thread took the request; ENOENT: the request was interrupted.
        if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') continue
        // ENODEV: unmounted; ECONNABORTED: aborted.
        return code ?? String(err)
      }
      if (n === 0) return 'EOF'
      if (!draining && ctx.closing()) {
        draining = true
        void ctx.server.drain() // new reads fail from now on; this thread has none in flight
      }
      // Up from the moment the request is taken until its reply is written: drain waits for 0. (readSync
      // counts a READ too while it is in the source; only zero matters.)
      c[COUNTER.inFlight]++
      if (requests.polled) c[COUNTER.polled]++
      try {
        const pending = protocol.handle(buf.subarray(0, n), requests.replyFd)
        if (pending) await pending
      } finally {
        c[COUNTER.inFlight]--
      }
    }
  } finally {
    requests.close()
  }
}

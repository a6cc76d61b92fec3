/**
 * The FUSE serving-thread body (src/threads runs it on each serving thread): read a request from
 * /dev/fuse, answer it, write the reply — no hop through the main thread. Several threads read the one
 * session descriptor at once (the kernel gives each request to one reader), so decoding uses every core,
 * as libfuse's multi-threaded loop does.
 *
 * A READ takes the fast path: ImageFs.readInto reads through the thread's BlockServer (its own instance
 * of the source, synchronous) straight into the reply buffer after the FUSE header, sent with one
 * write(2). Between requests the thread polls briefly before sleeping (requests.ts).
 *
 * Over io_uring (uring.ts), when the kernel offers it: the first thread answers INIT through /dev/fuse
 * while the others wait (a thread blocked in read(2) would never be woken once the ring takes the
 * connection over), then every thread registers its ring entries and serves from them.
 */
import {COUNTER} from '../../../src/core/counters'
import type {ServingThreadContext} from '../../../src/threads/protocol'
import {ImageFs} from './imagefs'
import {FuseProtocol, READ_BUFFER_SIZE, requestBufferSize, type InitResult} from './protocol'
import {FuseRequestReader} from './requests'
import {FuseRing, payloadSizeFor, queuesFor, RingEnded} from './uring'

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
  /**
   * Offer FUSE over io_uring at INIT (uring.ts). `state[0]`: 0 until the first thread has answered INIT,
   * then 1 (over io_uring) or 2 (through /dev/fuse).
   */
  uring?: {state: SharedArrayBuffer; queues: number; depth: number; threads: number}
}

const INIT_PENDING = 0
const INIT_URING = 1
const INIT_DEV = 2

/** thread → main: the thread that read INIT answered it (or could not). */
export type FuseThreadMessage = {init: InitResult} | {initError: string}

export async function run(ctx: ServingThreadContext): Promise<string> {
  const cfg = ctx.config as FuseThreadConfig
  const imageFs = new ImageFs(ctx.server, {fileName: cfg.fileName, mtime: cfg.mtime, maxRead: cfg.maxPages * 4096})
  const post = (m: FuseThreadMessage): void => ctx.post(m)
  // The first thread sets its ring up before INIT and offers io_uring only if that worked: once INIT has
  // agreed to it, the kernel holds every request until ring entries are registered.
  let ring = cfg.uring && ctx.index === 0 ? makeRing(ctx, cfg) : undefined
  const state = cfg.uring ? new Int32Array(cfg.uring.state) : undefined
  let agreed: boolean | undefined
  const settle = (how: number): void => {
    if (!state || Atomics.load(state, 0) !== INIT_PENDING) return
    Atomics.store(state, 0, how)
    Atomics.notify(state, 0)
  }
  const protocol = new FuseProtocol({
    fd: cfg.fd,
    handler: imageFs.handle,
    maxPages: cfg.maxPages,
    maxBackground: cfg.maxBackground,
    maxWrite: cfg.maxWrite,
    log: ctx.log,
    onInit: (r) => {
      agreed = !(r instanceof Error) && r.uring
      post(r instanceof Error ? {initError: r.message} : {init: r})
    },
    readInto: imageFs.readInto,
    uring: ring !== undefined,
  })
  const requests = new FuseRequestReader(cfg.fd, ctx.poller(), ctx.log)
  const c = ctx.counters
  const buf = Buffer.allocUnsafe(cfg.maxWrite ? requestBufferSize(cfg.maxWrite) : READ_BUFFER_SIZE)
  let draining = false
  ctx.ready()
  if (state && ctx.index > 0) {
    // The first thread reads INIT; wait for its answer before reading /dev/fuse (see the top).
    while (Atomics.load(state, 0) === INIT_PENDING) Atomics.wait(state, 0, INIT_PENDING, 1000)
    if (Atomics.load(state, 0) === INIT_URING) {
      ring = makeRing(ctx, cfg)
      const why = ring && (await serveRing(ctx, ring, protocol, imageFs))
      if (why !== undefined) return why
    }
  }
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
      if (agreed !== undefined && state && Atomics.load(state, 0) === INIT_PENDING) {
        settle(agreed ? INIT_URING : INIT_DEV)
        if (ring && agreed) {
          const why = await serveRing(ctx, ring, protocol, imageFs)
          if (why !== undefined) return why
        }
        ring?.close()
      }
    }
  } finally {
    settle(INIT_DEV) // this thread ended before INIT: the others read /dev/fuse (and see the end)
    ring?.close()
    requests.close()
  }
}

/**
 * Serve from this thread's ring entries until the connection ends (resolves with why), or undefined when
 * the ring could not be set up: the thread then serves through /dev/fuse (the kernel falls back too when
 * a registration fails).
 */
function makeRing(ctx: ServingThreadContext, cfg: FuseThreadConfig): FuseRing | undefined {
  const u = cfg.uring!
  try {
    return new FuseRing({
      fd: cfg.fd,
      qids: queuesFor(ctx.index, u.threads, u.queues),
      depth: u.depth,
      payloadSize: payloadSizeFor(cfg.maxPages, cfg.maxWrite),
      // The first thread also takes what still comes through /dev/fuse (FORGET, INTERRUPT).
      legacyBufferSize: ctx.index === 0 ? (cfg.maxWrite ? requestBufferSize(cfg.maxWrite) : READ_BUFFER_SIZE) : 0,
    })
  } catch (err) {
    ctx.log(`fuse: io_uring: ${(err as Error).message}; serving through /dev/fuse`)
    return undefined
  }
}

async function serveRing(ctx: ServingThreadContext, ring: FuseRing, protocol: FuseProtocol, imageFs: ImageFs): Promise<string | undefined> {
  try {
    ring.register()
  } catch (err) {
    ring.close()
    ctx.log(`fuse: io_uring: ${(err as Error).message}; serving through /dev/fuse`)
    return undefined
  }
  const c = ctx.counters
  const poller = ctx.poller()
  let served = 0
  let draining = false
  try {
    for (;;) {
      let polled = true
      if (!ring.pending && !(poller.active && poller.poll(() => (ring.pending ? 1 : 0)) > 0)) {
        // Work ahead while no request waits, then sleep until one does.
        while (!ring.pending && ctx.workAhead()) {
          // one unit at a time
        }
        if (!ring.pending) {
          poller.sleeping()
          ring.submit(true)
          poller.woke()
          polled = false
        }
      }
      if (!draining && ctx.closing()) {
        draining = true
        void ctx.server.drain()
      }
      c[COUNTER.inFlight]++
      try {
        await ring.serve(protocol, imageFs.readInto, () => {
          served++
          if (polled) c[COUNTER.polled]++
        })
      } finally {
        c[COUNTER.inFlight]--
      }
    }
  } catch (err) {
    if (!(err instanceof RingEnded)) throw err
    // Before any request: the kernel refused the entries (ENOMEM, EINVAL …); else the connection ended.
    if (served === 0 && !['ENOTCONN', 'ECANCELED', 'ECONNABORTED', 'ENODEV'].includes(err.code)) {
      ctx.log(`fuse: io_uring: registering ring entries failed (${err.code}); serving through /dev/fuse`)
      return undefined
    }
    return err.code
  } finally {
    ring.close()
  }
}

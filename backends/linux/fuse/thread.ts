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
import {abortConnection} from './fusectl'
import {FuseRing, payloadSizeFor, queuesFor, RingEnded} from './uring'
import {pageSize} from '../../../src/sys/libc'

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
  /** The FUSE connection's id (/sys/fs/fuse/connections/ID), to abort it if a ring thread fails. */
  connection?: number
}

/** `state[0]`: INIT not answered yet / agreed over io_uring / through /dev/fuse. */
const INIT_PENDING = 0
const INIT_URING = 1
const INIT_DEV = 2
/** `state[1]`: threads that have tried to set their ring up; `state[2]`: those that could not. */
const RINGS_TRIED = 1
const RINGS_FAILED = 2
/** How long the first thread waits, INIT in hand, for the others' rings before answering without io_uring. */
const RINGS_WAIT_MS = 5000

/** thread → main: the thread that read INIT answered it (or could not). */
export type FuseThreadMessage = {init: InitResult} | {initError: string}

export async function run(ctx: ServingThreadContext): Promise<string> {
  const cfg = ctx.config as FuseThreadConfig
  const imageFs = new ImageFs(ctx.server, {fileName: cfg.fileName, mtime: cfg.mtime, maxRead: cfg.maxPages * 4096})
  const post = (m: FuseThreadMessage): void => ctx.post(m)
  const u = cfg.uring
  const state = u ? new Int32Array(u.state) : undefined
  // Every thread sets its ring up before INIT is answered, and io_uring is offered only if all of them
  // could: once INIT has agreed to it the kernel holds every request until each queue has an entry, and a
  // thread's queues (with more than 8) are its own.
  let ring = u ? makeRing(ctx, cfg) : undefined
  if (state) {
    if (!ring) Atomics.add(state, RINGS_FAILED, 1)
    Atomics.add(state, RINGS_TRIED, 1)
    Atomics.notify(state, RINGS_TRIED)
  }
  const everyRing = (): boolean => {
    if (!state || !u || !ring) return false
    const deadline = Date.now() + RINGS_WAIT_MS
    for (let tried = Atomics.load(state, RINGS_TRIED); tried < u.threads && Date.now() < deadline; tried = Atomics.load(state, RINGS_TRIED))
      Atomics.wait(state, RINGS_TRIED, tried, 50)
    return Atomics.load(state, RINGS_TRIED) === u.threads && Atomics.load(state, RINGS_FAILED) === 0
  }
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
    uring: everyRing,
  })
  const requests = new FuseRequestReader(cfg.fd, ctx.poller(), ctx.log)
  const c = ctx.counters
  const buf = Buffer.allocUnsafe(cfg.maxWrite ? requestBufferSize(cfg.maxWrite) : READ_BUFFER_SIZE)
  let draining = false
  ctx.ready()
  try {
    if (state && ctx.index > 0) {
      // The first thread reads INIT; wait for its answer before reading /dev/fuse (see the top).
      while (Atomics.load(state, 0) === INIT_PENDING) Atomics.wait(state, 0, INIT_PENDING, 1000)
      if (ring && Atomics.load(state, 0) === INIT_URING) {
        const why = await serveRing(ctx, cfg, ring, protocol, imageFs)
        if (why !== undefined) return why
      }
      ring?.close()
    }
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
          const why = await serveRing(ctx, cfg, ring, protocol, imageFs)
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

/** This thread's ring (not yet registered: the kernel sizes payloads from INIT), or undefined if it cannot have one. */
function makeRing(ctx: ServingThreadContext, cfg: FuseThreadConfig): FuseRing | undefined {
  const u = cfg.uring!
  try {
    return new FuseRing({
      fd: cfg.fd,
      qids: queuesFor(ctx.index, u.threads, u.queues),
      depth: u.depth,
      payloadSize: payloadSizeFor(cfg.maxPages, cfg.maxWrite, pageSize()),
      // The first thread also takes what still comes through /dev/fuse (FORGET, INTERRUPT).
      legacyBufferSize: ctx.index === 0 ? (cfg.maxWrite ? requestBufferSize(cfg.maxWrite) : READ_BUFFER_SIZE) : 0,
      log: ctx.log,
    })
  } catch (err) {
    ctx.log(`fuse: io_uring: ${(err as Error).message}; serving through /dev/fuse`)
    return undefined
  }
}

/**
 * Serve from this thread's ring entries until the connection ends (resolves with why), or undefined when
 * none of its entries is left (the kernel refused them): the thread then reads /dev/fuse, where the kernel
 * sends requests once it has given up on the ring.
 */
async function serveRing(ctx: ServingThreadContext, cfg: FuseThreadConfig, ring: FuseRing, protocol: FuseProtocol, imageFs: ImageFs): Promise<string | undefined> {
  const c = ctx.counters
  const poller = ctx.poller()
  let draining = false
  try {
    ring.register()
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
          if (polled) c[COUNTER.polled]++
        })
      } finally {
        c[COUNTER.inFlight]--
      }
    }
  } catch (err) {
    if (!(err instanceof RingEnded)) {
      // A failure of this thread (a bug): the requests the kernel has given its entries would wait for ever
      // (through /dev/fuse another thread would take them). Fail them all instead: abort the connection.
      ctx.log(`fuse: io_uring: thread ${ctx.index} failed: ${(err as Error)?.message ?? err}; aborting the FUSE connection`)
      if (cfg.connection) abortConnection(cfg.connection, ctx.log)
      throw err
    }
    if (!err.ended) {
      ctx.log(`fuse: io_uring: no ring entry left on thread ${ctx.index} (${err.code}); serving through /dev/fuse`)
      return undefined
    }
    return err.code
  } finally {
    // The detach log's witness of which path served (docs/fuse-loop.md).
    ctx.log(`fuse: io_uring: thread ${ctx.index} served ${ring.served} requests from its ${ring.entries} ring entries`)
    ring.close()
  }
}

/**
 * Serving threads, written once for every backend and protocol server, after nbdkit's server/threads:
 * a backend names its body (the serving loop: read a request from the kernel or a socket, answer it,
 * repeat) and how many threads; the pool starts them on src/threads/serving-worker.ts, each opening its
 * own instance of the source from its descriptor, and gives the main thread what it needs of them:
 * readiness, their log lines (faults included), their counters summed into the device's BlockServer,
 * the closing flag (drain), and shutdown.
 */
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import type {BlockServer} from '../core/blockserver'
import {CounterSlots} from '../core/counters'
import {VdevError} from '../core/errors'
import {THREAD_LIMITS} from './config'
import {CONTROL, type FromThread, type ServingThreadConfig, type ToThread} from './protocol'

export interface ServingThreadsOptions {
  /** For log lines ("fuse", "ublk", "nbd"). */
  name: string
  /** The device's server on the main thread: the source (its descriptor), the bad-area policy, the stats. */
  server: BlockServer
  /** Absolute path of the compiled body module (exports run(ctx): src/threads/protocol.ts). */
  body: string
  /** Threads started by start(). */
  count: number
  /** Most threads the pool will ever have (counter slots); default `count`. */
  capacity?: number
  /** Decoded-chunk cache of each thread's source instance. */
  cacheBytes: number
  pollMicroseconds?: number
  /** The body's settings, given to every thread; `configFor` overrides it per thread. */
  config?: unknown
  configFor?: (index: number) => unknown
  log: (line: string) => void
  /** V8 heap limits of each thread (default THREAD_LIMITS). */
  heap?: {maxYoungGenerationSizeMb?: number; maxOldGenerationSizeMb?: number}
  /** Body messages from a thread. */
  onMessage?: (thread: ServingThread, message: unknown) => void
}

/** One serving thread, seen from the main thread. */
export class ServingThread {
  /** Resolves with why the thread's body ended (or the thread died). */
  readonly ended: Promise<string>
  /** Resolves once the thread is serving; rejects if it could not start. */
  readonly ready: Promise<void>
  private resolveEnded!: (why: string) => void

  constructor(
    readonly index: number,
    readonly worker: Worker,
    log: (line: string) => void,
    name: string,
    onMessage: (m: unknown) => void,
  ) {
    let ready!: () => void
    let failed!: (e: Error) => void
    this.ready = new Promise<void>((res, rej) => ((ready = res), (failed = rej)))
    this.ready.catch(() => undefined)
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve))
    let over = false
    const end = (why: string): void => {
      failed(new VdevError('io', `${name}: serving thread ${index} could not start: ${why}`))
      if (over) return
      over = true
      this.resolveEnded(why)
    }
    worker.on('message', (m: FromThread) => {
      if ('ready' in m) ready()
      else if ('log' in m) log(m.log)
      else if ('body' in m) onMessage(m.body)
      else if ('end' in m) end(m.end)
      else if ('fatal' in m) {
        log(`${name}: serving thread ${index} failed: ${m.fatal}`)
        end(m.fatal)
      }
    })
    worker.on('error', (err) => {
      log(`${name}: serving thread ${index} failed: ${err.message}`)
      end(`thread failed: ${err.message}`)
    })
    worker.on('exit', (code) => end(`thread exited (${code})`))
  }

  post(body: unknown): void {
    this.worker.postMessage({body} satisfies ToThread)
  }
}

export class ServingThreads {
  readonly threads: ServingThread[] = []
  readonly counters: CounterSlots
  private readonly control = new SharedArrayBuffer(4 * CONTROL.slots)
  private closed = false

  private constructor(private readonly opts: ServingThreadsOptions) {
    this.counters = new CounterSlots(Math.max(opts.capacity ?? opts.count, opts.count, 1))
    opts.server.addCounters(this.counters)
  }

  /**
   * Start `count` threads and wait until each is serving. Rejects (with every thread stopped) when the
   * source cannot be opened again on a thread or a body fails to start.
   */
  static async start(opts: ServingThreadsOptions): Promise<ServingThreads> {
    if (!opts.server.source.descriptor) throw new VdevError('internal', `${opts.name}: this source cannot be opened on a serving thread`)
    const pool = new ServingThreads(opts)
    try {
      for (let i = 0; i < opts.count; i++) pool.spawn()
      await Promise.all(pool.threads.map((t) => t.ready))
    } catch (err) {
      await pool.close(0)
      throw err
    }
    return pool
  }

  /** Whether this server's source can be served by serving threads (it can be opened again). */
  static canServe(server: BlockServer): boolean {
    return server.source.descriptor !== undefined
  }

  /** Start one more thread (up to the capacity); undefined when the pool is full or closed. */
  spawn(): ServingThread | undefined {
    if (this.closed || this.threads.length >= this.counters.count) return undefined
    const index = this.threads.length
    const o = this.opts
    const link = o.server.source.threadLink?.()
    const cfg: ServingThreadConfig = {
      name: o.name,
      index,
      source: o.server.source.descriptor!,
      link: link?.value,
      badPolicy: o.server.badPolicy,
      cacheBytes: o.cacheBytes,
      pollMicroseconds: o.pollMicroseconds ?? 0,
      counters: this.counters.buffer,
      control: this.control,
      body: o.body,
      config: o.configFor ? o.configFor(index) : o.config,
    }
    const worker = new Worker(path.join(__dirname, 'serving-worker.js'), {
      workerData: cfg,
      transferList: link?.transfer,
      resourceLimits: {...THREAD_LIMITS, ...o.heap},
    })
    const t: ServingThread = new ServingThread(index, worker, o.log, o.name, (m) => o.onMessage?.(t, m))
    this.threads.push(t)
    return t
  }

  /** Threads started (alive or not). */
  get size(): number {
    return this.threads.length
  }

  /** Ask every thread to take no new requests (their bodies check ctx.closing()). */
  setClosing(): void {
    Atomics.store(new Int32Array(this.control), CONTROL.closing, 1)
  }

  /** Resolves once every thread's body has ended. */
  get allEnded(): Promise<string[]> {
    return Promise.all(this.threads.map((t) => t.ended))
  }

  /** Let the process exit while threads still run (they sit in blocking calls the kernel will end). */
  unref(): void {
    for (const t of this.threads) t.worker.unref()
  }

  /**
   * Stop every thread: an idle one (waiting for messages) closes its source and exits; one still in a
   * blocking call is terminated after `graceMs` (V8 stops it when the call returns).
   */
  async close(graceMs = 2000): Promise<void> {
    this.closed = true
    await Promise.all(
      this.threads.map(
        (t) =>
          new Promise<void>((resolve) => {
            t.ended.then(() => resolve())
            t.worker.once('exit', () => resolve())
            try {
              t.worker.postMessage({exit: true} satisfies ToThread)
            } catch {
              resolve()
            }
            setTimeout(() => void t.worker.terminate().then(() => resolve()), graceMs).unref()
          }),
      ),
    )
  }
}

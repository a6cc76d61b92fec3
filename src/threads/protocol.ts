/**
 * What passes between the main thread and a serving thread: the one configuration, the one message set,
 * and the thread-body contract every backend's serving loop implements.
 */
import type {BadPolicy, BlockServer} from '../core/blockserver'
import type {SourceDescriptor} from '../core/source'
import {MAX_THREADS} from './config'
import type {AdaptivePoll} from './poll'

/** workerData of every serving thread. */
export interface ServingThreadConfig {
  /** For log lines: "fuse", "ublk", "nbd" … */
  name: string
  index: number
  source: SourceDescriptor
  /** What the main thread's instance of the source offered this thread (BlockSource.threadLink). */
  link?: unknown
  badPolicy: BadPolicy
  /** Decoded-chunk cache of this thread's instance of the source, in bytes. */
  cacheBytes: number
  /** How long the body polls for its next request before sleeping (0: never; src/threads/poll.ts). */
  pollMicroseconds: number
  /** Counter slots of the pool (src/core/counters.ts): this thread counts into slot `index`. */
  counters: SharedArrayBuffer
  /** Int32Array: CONTROL.closing. */
  control: SharedArrayBuffer
  /** Absolute path of the compiled module exporting the body's `run`. */
  body: string
  /** The body's own settings (structured-cloneable). */
  config: unknown
}

/**
 * The pool's shared words: the closing flag (drain), then one word per thread (MAX_THREADS) saying whether an
 * event-loop body's thread sleeps with nothing to work ahead on (src/threads/idle-ahead.ts), then when a
 * thread last went to sleep in a blocking read (src/threads/poll.ts, SharedSleep).
 */
export const CONTROL = {closing: 0, idle: 1, lastSleep: 1 + MAX_THREADS, slots: 2 + MAX_THREADS} as const

/** thread → main */
export type FromThread =
  | {ready: true}
  | {log: string}
  /** The body ended (the kernel side went away, the device stopped …): why. */
  | {end: string}
  /** The thread could not start or failed: why. */
  | {fatal: string}
  /** The body's own messages. */
  | {body: unknown}

/** main → thread */
export type ToThread = {exit: true} | {body: unknown}

/** What a thread body is given. */
export interface ServingThreadContext {
  readonly name: string
  readonly index: number
  /** This thread's server over its own instance of the source (synchronous reads: readSync). */
  readonly server: BlockServer
  readonly config: unknown
  readonly pollMicroseconds: number
  /**
   * A poller for the body's next request (pollMicroseconds long), sharing with the pool's other threads
   * when one of them last went to sleep (src/threads/poll.ts).
   */
  poller(): AdaptivePoll
  /** This thread's counter slot (COUNTER.polled, COUNTER.inFlight are the body's to keep). */
  readonly counters: Float64Array
  log(line: string): void
  /** Tell the main thread this thread is serving (the pool's start() waits for every thread's). */
  ready(): void
  /** Send the main thread a body message. */
  post(message: unknown): void
  /** Called with each body message from the main thread. */
  onMessage(handler: (message: unknown) => void): void
  /** True once the main thread asked every thread to stop taking new requests (drain). */
  closing(): boolean
  /**
   * For a thread with no request to serve: one unit of work ahead of the readers — decoding a chunk ahead
   * of a sequential stream, or a later chunk of a large read another thread serves (the source's prefetch:
   * src/format/read-ahead.ts). True when it did one: look for a request without blocking, then call again;
   * false when there is nothing to do (or the device is closing): sleep until the next request. Every body
   * calls it wherever it would otherwise wait (docs/performance.md, "Decode-ahead").
   */
  workAhead(): boolean
  /**
   * For bodies that serve from the thread's event loop (iSCSI, NFS), which have no point where they know
   * they would sleep: call once, and from then on the thread works ahead in idle turns of its event loop
   * after each read, and wakes the pool's other such threads to do the same for a large one
   * (src/threads/idle-ahead.ts).
   */
  workAheadWhenIdle(): void
}

/** A thread body module exports `run`: serve until the work ends, resolving with why. */
export type ThreadBody = (ctx: ServingThreadContext) => Promise<string> | string

/**
 * `vdev serve --protocol nbd`: an NbdServer on a TCP or Unix listener, its connections served by serving
 * threads. The kernel backend (backends/linux/nbd) uses NbdServer directly on a socketpair instead, with
 * threads from startNbdThreads.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import type {BlockServer} from '../../core/blockserver'
import {listen, type ListenAddress} from '../listen'
import {NbdServer} from './server'
import {ConnectionThreads} from './threads'

export {NbdServer, NbdConnection, MAX_OPTION_LENGTH, MAX_OPTIONS} from './server'
export const NBD_DEFAULT_PORT = 10809 // IANA-assigned NBD port ("Newstyle negotiation")

/**
 * Serving threads (threads.ts): each opens the BlockServer's source again from its descriptor. Unset
 * fields take the defaults below, the only place they are defined (`vdev serve` and the kernel backend).
 */
export interface NbdThreadOptions {
  /** Threads per connection (default: defaultThreadsPerConnection(); 0: serve on the main thread). */
  perConnection?: number
  /** Threads in all (default: two connections' worth, at least 8); connections beyond are served on the main thread. */
  maxThreads?: number
  /** Decoded-chunk cache of each thread (default THREAD_CACHE_BYTES). */
  cacheBytes?: number
  /** How long a thread polls for a connection's next request before sleeping (default DEFAULT_POLL_MICROSECONDS; 0: never). */
  pollMicroseconds?: number
}

/** How long a serving thread polls for a connection's next request before sleeping in read(2). */
export const DEFAULT_POLL_MICROSECONDS = 20

/**
 * Decoded-chunk cache of each serving thread. Small on purpose: it is per thread, a thread keeps serving a
 * client that sends one request at a time (so neighbouring small reads hit its cache), and random reads of
 * a large image rarely hit any cache.
 */
export const THREAD_CACHE_BYTES = 2 << 20

/** Threads per connection of `vdev serve`: one per core, at most 8. */
export function defaultThreadsPerConnection(): number {
  return Math.min(8, os.availableParallelism())
}

/**
 * Start serving threads for `server`'s connections, or return undefined (saying why in the log) when they
 * cannot serve: the source cannot be opened again on a thread (no descriptor, or it fails to open there),
 * or there is no koffi/libc (not Linux). Then connections are served on the main thread.
 */
export async function startNbdThreads(server: BlockServer, t: NbdThreadOptions, log: (line: string) => void): Promise<ConnectionThreads | undefined> {
  const perConnection = t.perConnection ?? defaultThreadsPerConnection()
  if (perConnection <= 0) return undefined
  // A writable source (an overlay) is served on threads through views that call its owner (docs/OVERLAY.md),
  // when its base can be opened on a thread; otherwise on the main thread.
  if (server.writable && !server.source.descriptor) return undefined
  try {
    return await ConnectionThreads.start(server, {
      perConnection,
      maxThreads: t.maxThreads ?? Math.max(8, 2 * perConnection),
      cacheBytes: t.cacheBytes ?? THREAD_CACHE_BYTES,
      pollMicroseconds: t.pollMicroseconds ?? DEFAULT_POLL_MICROSECONDS,
      log,
    })
  } catch (err) {
    log(`nbd: serving threads unavailable, serving on the main thread: ${(err as Error).message.split('\n')[0]}`)
    return undefined
  }
}

export interface RunningNbdServer {
  nbd: NbdServer
  /** Serving threads per connection; 0 when connections are served on the main thread. */
  threadsPerConnection: number
  address: ListenAddress
  /** Stop accepting, finish in-flight requests, close every connection (and remove a Unix socket). */
  close(): Promise<void>
}

/**
 * Listen and serve `server` over NBD. With `threads`, connections are served by serving threads when the
 * source can be opened again on them; what they serve is counted in `server.stats`.
 */
export async function startNbdServer(
  server: BlockServer,
  opts: {listen: ListenAddress; exportName: string; description?: string; log?: (line: string) => void; threads?: NbdThreadOptions},
): Promise<RunningNbdServer> {
  const log = opts.log ?? (() => {})
  const threads = opts.threads ? await startNbdThreads(server, opts.threads, log) : undefined
  const nbd = new NbdServer(server, {exportName: opts.exportName, description: opts.description, log: opts.log, threads})
  const listener = net.createServer({noDelay: true})
  nbd.attach(listener)
  if (opts.listen.kind === 'unix') await removeStaleSocket(opts.listen.path)
  let address: ListenAddress
  try {
    address = await listen(listener, opts.listen)
  } catch (err) {
    await threads?.close()
    throw err
  }
  let closing: Promise<void> | undefined
  return {
    nbd,
    threadsPerConnection: threads ? (opts.threads!.perConnection ?? defaultThreadsPerConnection()) : 0,
    address,
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => listener.close(() => resolve()))
        await nbd.close()
        await stopped
        if (address.kind === 'unix') fs.rmSync(address.path, {force: true})
      })()
      return closing
    },
  }
}

/** A socket file left by a server that died is removed; one that still answers is left for listen() to refuse. */
async function removeStaleSocket(path: string): Promise<void> {
  let st: fs.Stats
  try {
    st = fs.lstatSync(path)
  } catch {
    return
  }
  if (!st.isSocket()) return
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(path)
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
  if (!alive) fs.rmSync(path, {force: true})
}

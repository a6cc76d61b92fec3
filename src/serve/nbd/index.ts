/**
 * `vdev serve --protocol nbd`: an NbdServer on a TCP or Unix listener. The kernel backend
 * (backends/linux/nbd) uses NbdServer directly on a socketpair instead.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import type {BlockServer} from '../../core/blockserver'
import {listen, type ListenAddress} from '../listen'
import {NbdServer} from './server'
import {ServeThreads} from './threads'

export {NbdServer, NbdConnection, MAX_OPTION_LENGTH, MAX_OPTIONS} from './server'
export const NBD_DEFAULT_PORT = 10809 // IANA-assigned NBD port ("Newstyle negotiation")

/** Serving threads (threads.ts) for a VDIMG image: each opens `image` itself. */
export interface NbdThreadOptions {
  image: string
  /** Threads per connection (default: the number of cores, at most 8). */
  perConnection?: number
  /** Threads in all (default: two connections' worth, at least 8); connections beyond are served on the main thread. */
  maxThreads?: number
  /**
   * Decompressed-chunk cache of each thread (default 2 MiB). Small on purpose: it is per thread, a thread
   * keeps serving a client that sends one request at a time (so neighbouring small reads hit its cache),
   * and random reads of a large image rarely hit any cache.
   */
  cacheBytes?: number
  /** How long a thread polls for a connection's next request before sleeping (default 20 µs; 0: never). */
  pollMicroseconds?: number
}

export const DEFAULT_POLL_MICROSECONDS = 20

export function defaultThreadsPerConnection(): number {
  return Math.min(8, os.availableParallelism())
}

export interface RunningNbdServer {
  nbd: NbdServer
  /** Serving threads per connection; 0 when connections are served on the main thread. */
  threadsPerConnection: number
  address: ListenAddress
  /** Stop accepting, finish in-flight requests, close every connection (and remove a Unix socket). */
  close(): Promise<void>
}

export async function startNbdServer(
  server: BlockServer,
  opts: {listen: ListenAddress; exportName: string; description?: string; log?: (line: string) => void; threads?: NbdThreadOptions},
): Promise<RunningNbdServer> {
  let threads: ServeThreads | undefined
  if (opts.threads) {
    const perConnection = opts.threads.perConnection ?? defaultThreadsPerConnection()
    try {
      threads = await ServeThreads.start({
        image: opts.threads.image,
        badPolicy: server.badPolicy,
        cacheBytes: opts.threads.cacheBytes ?? 2 << 20,
        pollMicroseconds: opts.threads.pollMicroseconds ?? DEFAULT_POLL_MICROSECONDS,
        perConnection,
        maxThreads: opts.threads.maxThreads ?? Math.max(8, 2 * perConnection),
        log: opts.log ?? (() => {}),
      })
    } catch (err) {
      // No koffi/libc here (not Linux), or the image cannot be opened by a thread: serve on this thread.
      opts.log?.(`serving threads unavailable, serving on the main thread: ${(err as Error).message.split('\n')[0]}`)
    }
  }
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

/**
 * Every serving thread starts here (src/threads/pool.ts starts it): it opens its own instance of the source
 * from the descriptor (synchronous mode: pread(2) and decoding on this thread; a remote image's bytes
 * come through the link its main-thread instance offered, src/remote/link.ts), builds a BlockServer that
 * counts into the thread's slot of shared memory and logs faults to the daemon's log, then runs the
 * backend's body (its serving loop) until that ends.
 */
import {parentPort, workerData} from 'node:worker_threads'
import {BlockServer} from '../core/blockserver'
import {SLOT_SIZE, slotOf} from '../core/counters'
import type {BlockSource} from '../core/source'
import {openSource} from '../sources'
import {MAX_THREADS} from './config'
import {IdleAhead} from './idle-ahead'
import {AdaptivePoll} from './poll'
import {CONTROL, type FromThread, type ServingThreadConfig, type ServingThreadContext, type ThreadBody, type ToThread} from './protocol'

const cfg = workerData as ServingThreadConfig
const post = (m: FromThread): void => parentPort!.postMessage(m)
const log = (line: string): void => post({log: line})
/** Faults logged per thread before the rest are only counted (a failing disk can fault on every read). */
const MAX_FAULT_LINES = 100

async function main(): Promise<void> {
  let source: BlockSource | undefined
  let faults = 0
  let writeFaults = 0
  let handler: ((m: unknown) => void) | undefined
  const control = new Int32Array(cfg.control)
  const exit = (): void => {
    void (source?.close() ?? Promise.resolve()).finally(() => process.exit(0))
  }
  parentPort!.on('message', (m: ToThread) => {
    if ('exit' in m) exit()
    else handler?.(m.body)
  })
  try {
    let warnings = 0
    source = await openSource(cfg.source, {
      sync: true,
      cacheBytes: cfg.cacheBytes,
      link: cfg.link,
      // Damage this thread's instance reads around on use (an index table read from its copy): each
      // instance finds it for itself, once per structure; the daemon's log hears it as the main thread's does.
      onWarning: (line) => {
        if (++warnings <= MAX_FAULT_LINES) log(`warning: ${cfg.name}: thread ${cfg.index}: ${line}`)
      },
    })
    const counters = slotOf(cfg.counters, cfg.index)
    let idle: IdleAhead | undefined
    const server = new BlockServer(source, {
      onRead: (offset, length) => idle?.reading(offset, length),
      badPolicy: cfg.badPolicy,
      counters,
      onFault: (offset, length, err) => {
        if (++faults <= MAX_FAULT_LINES) log(`${cfg.name}: fault reading ${length} bytes at ${offset}: ${(err as Error)?.message ?? err}`)
        if (faults === MAX_FAULT_LINES) log(`${cfg.name}: thread ${cfg.index}: further faults are counted, not logged`)
      },
      // A writable source (an overlay view): a full or failing disk under the overlay fails every write.
      onWriteFault: (what, offset, length, err) => {
        if (++writeFaults <= MAX_FAULT_LINES) log(`${cfg.name}: ${what} of ${length} bytes at ${offset} failed (${err.errno}): ${err.message}`)
        if (writeFaults === MAX_FAULT_LINES) log(`${cfg.name}: thread ${cfg.index}: further write failures are counted, not logged`)
      },
    })
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const body = (require(cfg.body) as {run?: ThreadBody}).run
    if (typeof body !== 'function') throw new Error(`${cfg.body} exports no run()`)
    const ctx: ServingThreadContext = {
      name: cfg.name,
      index: cfg.index,
      server,
      config: cfg.config,
      pollMicroseconds: cfg.pollMicroseconds,
      poller: () => new AdaptivePoll(cfg.pollMicroseconds, {words: control, index: CONTROL.lastSleep}),
      counters,
      log,
      ready: () => post({ready: true}),
      post: (body) => post({body}),
      onMessage: (h) => (handler = h),
      closing: () => Atomics.load(control, CONTROL.closing) === 1,
      workAhead: () => Atomics.load(control, CONTROL.closing) !== 1 && server.prefetch(),
      workAheadWhenIdle: () => {
        idle ??= new IdleAhead(ctx.workAhead, control, CONTROL.idle, Math.min(MAX_THREADS, cfg.counters.byteLength / (SLOT_SIZE * 8)), cfg.index)
      },
    }
    const why = await body(ctx)
    post({end: why})
  } catch (err) {
    post({fatal: (err as Error)?.message ?? String(err)})
  } finally {
    await source?.close().catch(() => undefined)
  }
}

void main()

/**
 * The attach daemon: open the source, wrap it in a BlockServer, attach it through a backend, record the
 * device in the registry, then serve until SIGTERM/SIGINT (or until the kernel side goes away), and
 * detach cleanly: release the device, drain, close, remove the entry and the run directory.
 *
 * `vdev attach` runs this in a detached child process (the same CLI with a hidden flag) and waits for
 * its ready message; `vdev attach --foreground` runs it in place. The backend's thread model says whether
 * its requests are served on serving threads (then the source opened here starts no decompression
 * workers: each thread opens its own) or on this thread. What every thread served is counted in the
 * BlockServer's stats, which the daemon writes to its run directory for `vdev list` (on SIGUSR1, and
 * every few seconds while they change; `vdev list` asks with SIGUSR2) and logs when it stops.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {BlockServer, type BadPolicy, type BlockStats, type WriteStats} from '../core/blockserver'
import {VdevError} from '../core/errors'
import type {BlockSource, FetchStats, SourceDescriptor} from '../core/source'
import {isRemote} from '../remote/http'
import type {AttachedDevice, Backend} from '../core/backend'
import {backendNames, loadBackend} from '../core/backends'
import {openSource} from '../sources'
import {Overlay} from '../layers/overlay'
import {setReadAheadKiB} from '../sys/blockdev'
import type {ReadAheadStats} from '../format/read-ahead'
import {pollMicroseconds, threadCount} from '../threads/config'
import {logOf, processStartTime, removeEntry, runDirOf, writeEntry, type DeviceEntry} from './registry'
import {cleanupEntry} from './cleanup'

export interface ServeOptions {
  id: string
  /** What to serve (src/sources: describeSource); its path is absolute. */
  source: SourceDescriptor
  /** A resolved backend name (not "auto"). */
  backend: string
  badPolicy: BadPolicy
  /** Called once: with the entry when the device is ready, or with the error that stopped the attach. */
  onReady: (r: {entry: DeviceEntry} | {error: VdevError}) => void
  log: (line: string) => void
  /**
   * Serve read-write: every write goes to this copy-on-write overlay (created if missing; docs/OVERLAY.md),
   * or with `scratch` to a new overlay in a temporary directory removed at detach. The image stays read-only.
   */
  overlay?: {file: string} | {scratch: true}
  /** The device's read-ahead in KiB (`--read-ahead`); undefined: the backend's default (Backend.readAheadKiB). */
  readAheadKiB?: number
}

/** Where a running daemon publishes its counters. */
export const statsFileOf = (id: string): string => path.join(runDirOf(id), 'stats.json')

/** What `vdev list --json` shows of a device's traffic since it was attached. */
export interface DeviceStats {
  reads: number
  bytes: number
  errors: number
  badReads: number
  /** A writable device's writes (each write, write-zeroes and discard), their bytes, flushes and failures. */
  writes?: number
  writeBytes?: number
  flushes?: number
  writeErrors?: number
  /** A remote image: GETs sent (retries included), bytes received and retries (docs/remote.md). */
  fetched?: FetchStats
  /** A VDIMG image on serving threads: what they decoded ahead of readers (src/format/read-ahead.ts). */
  decodeAhead?: ReadAheadStats
  /** When these counters were read (ISO time). */
  at: string
}

/**
 * Set the device's read-ahead (Linux block devices): what buffered sequential reads of the device, and of
 * file systems on it, ask of the server ahead of the reader. A device that has no such setting keeps going
 * (one log line).
 */
function applyReadAhead(device: string, kib: number | undefined, log: (line: string) => void): void {
  if (kib === undefined || process.platform !== 'linux') return
  try {
    log(`read-ahead: ${setReadAheadKiB(device, kib)} KiB`)
  } catch (err) {
    log(`warning: read-ahead of ${kib} KiB not set: ${(err as Error).message}`)
  }
}

/** Failed writes logged before the rest are only counted. */
const MAX_WRITE_FAULT_LINES = 100

/** How often a daemon republishes counters that changed. */
const STATS_PERIOD_MS = 2000

export function asVdevError(err: unknown): VdevError {
  if (err instanceof VdevError) return err
  return new VdevError('internal', (err as Error)?.message ?? String(err))
}

/** Decode-ahead counters of a source that keeps them (a local VDIMG image served on threads). */
function readAheadOf(source: BlockSource): ReadAheadStats | undefined {
  return (source as {readAheadStats?: () => ReadAheadStats | undefined}).readAheadStats?.()
}

function writeStats(file: string, server: BlockServer, fetched: FetchStats | undefined): void {
  const st = server.stats
  const w = server.writeStats
  const writes = server.writable ? {writes: w.writes + w.zeroes + w.trims, writeBytes: w.writeBytes, flushes: w.flushes, writeErrors: w.writeErrors} : {}
  const ra = readAheadOf(server.source)
  const s: DeviceStats = {
    reads: st.reads,
    bytes: st.bytes,
    errors: st.errors,
    badReads: st.badReads,
    ...writes,
    ...(fetched ? {fetched} : {}),
    ...(ra ? {decodeAhead: ra} : {}),
    at: new Date().toISOString(),
  }
  const tmp = `${file}.${process.pid}.tmp`
  try {
    fs.writeFileSync(tmp, JSON.stringify(s) + '\n', {mode: 0o600})
    fs.renameSync(tmp, file)
  } catch {
    // the run directory is gone: the device is being detached
  }
}

/** The decode-ahead line of a stop log (a source served on threads that keeps the counters), else undefined. */
export function describeDecodeAhead(source: BlockSource): string | undefined {
  const ra = readAheadOf(source)
  return ra && `decode-ahead: ${ra.prefetched} chunks decoded ahead (${ra.helped} for a read under way), ${ra.used} read from there (${ra.waited} waited for one)`
}

export function describeStats(st: BlockStats, w?: WriteStats): string {
  const writes = w ? `; ${w.writes} writes (${w.writeBytes} bytes), ${w.zeroes} write-zeroes, ${w.trims} discards, ${w.flushes} flushes, ${w.writeErrors} failed` : ''
  return `served ${st.reads} reads, ${st.bytes} bytes, ${st.errors} errors (${st.badReads} touching bad areas)${writes}`
}

/** The descriptor as the registry keeps it: a remote image's header values are not written down. */
function withoutSecrets(d: SourceDescriptor): SourceDescriptor {
  if (typeof d.options?.headers !== 'string') return d
  let names: string[] = []
  try {
    names = Object.keys(JSON.parse(d.options.headers) as object)
  } catch {
    names = []
  }
  return {...d, options: {...d.options, headers: names.join(', ')}}
}

/** Serve until stopped. Resolves with the process exit code. */
export async function serve(opts: ServeOptions): Promise<number> {
  const {id, log} = opts
  const image = opts.source.path
  let stat: fs.Stats | undefined
  try {
    stat = isRemote(image) ? undefined : fs.statSync(image)
  } catch {
    stat = undefined
  }
  const entry: DeviceEntry = {
    version: 1,
    id,
    status: 'starting',
    partitions: [],
    backend: opts.backend,
    image,
    source: withoutSecrets(opts.source),
    imageDev: stat?.dev,
    imageIno: stat?.ino,
    readOnly: opts.overlay === undefined,
    badPolicy: opts.badPolicy,
    pid: process.pid,
    pidStart: processStartTime(process.pid) ?? 0,
    createdAt: new Date().toISOString(),
    runDir: runDirOf(id),
    log: logOf(id),
    backendState: {},
  }
  writeEntry(entry)

  let stopReason: string | undefined
  let wake: (() => void) | undefined
  const stop = (why: string): void => {
    stopReason ??= why
    wake?.()
  }
  const onSignal = (sig: NodeJS.Signals): void => stop(`received ${sig}`)
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  process.on('SIGHUP', () => log('SIGHUP ignored'))
  // `vdev list` asks for fresh counters with SIGUSR2 (SIGUSR1 belongs to Node's inspector). Listening from
  // the start: a signal that came before the device was ready must not take the default action (exit).
  let onStatsRequest = (): void => undefined
  process.on('SIGUSR2', () => onStatsRequest())

  let source: BlockSource | undefined
  let attached: AttachedDevice | undefined
  let server: BlockServer | undefined
  let publish: (() => void) | undefined
  let timer: NodeJS.Timeout | undefined
  let writeFaults = 0
  try {
    const b = loadBackend(opts.backend)
    if ('error' in b) throw new VdevError('unavailable', b.error)
    if (opts.overlay && !b.writable) throw new VdevError('usage', `the ${b.name} backend cannot attach read-write yet: --overlay and --scratch work with ${writableBackends()}`)
    // A writable device: the overlay's owner is this thread; the backend's serving threads serve it through
    // views that call the owner if the backend can (docs/OVERLAY.md, "Serving"), else this thread serves it.
    const threads = opts.overlay && !b.writableThreads ? 0 : threadCount(b.name, b.threadModel)
    // Serving threads open the source themselves: the instance here only answers what they do not
    // (size, extents), so it starts no decompression workers (an idle one still holds a V8 isolate).
    source = await openSource(opts.source, {
      decompressThreads: threads > 0 ? 0 : Math.min(4, os.availableParallelism()),
      onWarning: (w) => log(`warning: ${w}`),
    })
    if (opts.overlay) {
      let file: string
      if ('scratch' in opts.overlay) {
        // Not under /run (a tmpfs: RAM): the overlay grows with what is written. Recorded before it is
        // created, so that cleaning up after a dead server removes it too.
        entry.scratchDir = fs.mkdtempSync(path.join(os.tmpdir(), `vdev-scratch-${id}-`))
        file = path.join(entry.scratchDir, 'overlay.vdovl')
      } else file = path.resolve(opts.overlay.file)
      entry.overlay = file
      writeEntry(entry)
      source = await Overlay.open(source, file, {log})
    }
    const threaded = threads > 0 && source.descriptor !== undefined
    // A damaged non-critical section (metadata): served without it, said in the log.
    for (const w of (source as {warnings?: string[]}).warnings ?? []) log(`warning: ${w}`)
    server = new BlockServer(source, {
      badPolicy: opts.badPolicy,
      onFault: (offset, length, err) => log(`fault reading ${length} bytes at ${offset}: ${(err as Error)?.message ?? err}`),
      onWriteFault: (what, offset, length, err) => {
        // A full disk fails every write after the first: a hundred lines say it, the counters say the rest.
        if (++writeFaults <= MAX_WRITE_FAULT_LINES) log(`${what} of ${length} bytes at ${offset} failed (${err.errno}): ${err.message}`)
        if (writeFaults === MAX_WRITE_FAULT_LINES) log('further write failures are counted, not logged')
      },
    })
    const srv = server
    const src = source
    log(
      `serving ${image} (${opts.source.kind}${typeof opts.source.options?.mapfile === 'string' ? `, map ${opts.source.options.mapfile}` : ''}): ` +
        `${source.size} bytes, sector size ${source.sectorSize}, bad areas → ${opts.badPolicy === 'zero' ? 'zeros' : 'EIO'}, ` +
        `${entry.overlay ? `read-write into ${entry.scratchDir ? 'the scratch overlay' : 'the overlay'} ${entry.overlay}, ` : ''}` +
        `${threaded ? `${threads} serving threads` : 'served on the main thread'}`,
    )
    attached = await b.attach(server, {
      id,
      image,
      runDir: entry.runDir,
      log,
      threads: threaded ? threads : 0,
      pollMicroseconds: pollMicroseconds(b.name, b.threadModel),
    })
    applyReadAhead(attached.device, opts.readAheadKiB ?? b.readAheadKiB, log)
    entry.status = 'ready'
    entry.device = attached.device
    entry.partitions = attached.partitions
    entry.backendState = attached.state
    writeEntry(entry)
    const statsFile = statsFileOf(id)
    let last = ''
    const fetched = (): FetchStats | undefined => src.fetchStats?.()
    publish = () => {
      const st = srv.stats
      const w = srv.writeStats
      const key = `${st.reads}/${st.errors}/${w.writes}/${w.zeroes}/${w.trims}/${w.flushes}/${fetched()?.requests}/${readAheadOf(src)?.prefetched}`
      if (key === last) return
      last = key
      writeStats(statsFile, srv, fetched())
    }
    writeStats(statsFile, srv, fetched())
    onStatsRequest = () => writeStats(statsFile, srv, fetched())
    timer = setInterval(publish, STATS_PERIOD_MS)
    timer.unref()
    log(`ready: ${attached.device}${attached.partitions.length ? ` (partitions ${attached.partitions.join(' ')})` : ''}`)
    opts.onReady({entry})
    attached.closed?.then(() => stop('the kernel closed the device'))
    if (!stopReason) await new Promise<void>((resolve) => (wake = resolve))
    log(`stopping: ${stopReason}`)
    const t0 = Date.now()
    await attached.detach()
    clearInterval(timer)
    const f = source.fetchStats?.()
    log(`detached in ${Date.now() - t0} ms; ${describeStats(server.stats, server.writable ? server.writeStats : undefined)}${f ? `; fetched ${f.bytes} bytes in ${f.requests} GETs (${f.retries} retries)` : ''}`)
    const ra = describeDecodeAhead(source)
    if (ra) log(ra)
    // An overlay's close makes everything written durable (fdatasync) before the device is gone for good.
    await source.close()
    removeEntry(id)
    fs.rmSync(entry.runDir, {recursive: true, force: true})
    if (entry.scratchDir) fs.rmSync(entry.scratchDir, {recursive: true, force: true})
    return 0
  } catch (err) {
    clearInterval(timer)
    const e = asVdevError(err)
    log(`error: ${e.message}`)
    if (attached) await attached.detach().catch((x) => log(`detach after error: ${(x as Error).message}`))
    if (source) await source.close().catch(() => {})
    await cleanupEntry(entry, log).catch((x) => log(`cleanup: ${(x as Error).message}`))
    if (entry.status === 'starting') opts.onReady({error: e})
    return 1
  } finally {
    process.off('SIGTERM', onSignal)
    process.off('SIGINT', onSignal)
  }
}

/** The backends that serve read-write, for the error that names them. */
function writableBackends(): string {
  return backendNames()
    .map((n) => loadBackend(n))
    .filter((b): b is Backend => !('error' in b) && b.writable === true)
    .map((b) => b.name)
    .join(', ')
}

/**
 * The serving process: open the image, wrap it in a BlockServer, attach it through a backend, record the
 * device in the registry, then serve until SIGTERM/SIGINT (or until the kernel side goes away), and
 * detach cleanly: release the device, drain, close, remove the entry and the run directory.
 *
 * `vdev attach` runs this in a detached child process (the same CLI with a hidden flag) and waits for
 * its ready message; `vdev attach --foreground` runs it in place.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import {BlockServer, type BadPolicy} from '../core/blockserver'
import {VdevError} from '../core/errors'
import type {BlockSource} from '../core/source'
import type {AttachedDevice} from '../core/backend'
import {loadBackend} from '../core/registry'
import {openImage} from '../format/reader'
import {logOf, processStartTime, removeEntry, runDirOf, writeEntry, type DeviceEntry} from './registry'
import {cleanupEntry} from './cleanup'

export interface ServeOptions {
  id: string
  /** Absolute path of the image. */
  image: string
  /** A resolved backend name (not "auto"). */
  backend: string
  badPolicy: BadPolicy
  /** Called once: with the entry when the device is ready, or with the error that stopped the attach. */
  onReady: (r: {entry: DeviceEntry} | {error: VdevError}) => void
  log: (line: string) => void
  /** How the image becomes a BlockSource (default: the VDIMG reader). */
  openSource?: (image: string, backend: string) => Promise<BlockSource>
}

/**
 * Backends that serve from threads of their own, each opening the image itself: the image opened here
 * only gives them its size and path, so it starts no decompression workers (an idle worker thread still
 * costs about 10 MB of memory).
 */
const SERVES_FROM_OWN_THREADS = new Set(['fuse'])

export async function defaultOpenSource(image: string, backend: string): Promise<BlockSource> {
  const threads = SERVES_FROM_OWN_THREADS.has(backend) && process.env.VDEV_FUSE_THREADS !== '0' ? 0 : Math.min(4, os.availableParallelism())
  return openImage(image, {decompressThreads: threads})
}

export function asVdevError(err: unknown): VdevError {
  if (err instanceof VdevError) return err
  return new VdevError('internal', (err as Error)?.message ?? String(err))
}

/** Serve until stopped. Resolves with the process exit code. */
export async function serve(opts: ServeOptions): Promise<number> {
  const {id, image, log} = opts
  let stat: fs.Stats | undefined
  try {
    stat = fs.statSync(image)
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
    imageDev: stat?.dev,
    imageIno: stat?.ino,
    readOnly: true,
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

  let source: BlockSource | undefined
  let attached: AttachedDevice | undefined
  try {
    const b = loadBackend(opts.backend)
    if ('error' in b) throw new VdevError('unavailable', b.error)
    source = await (opts.openSource ?? defaultOpenSource)(image, opts.backend)
    const server = new BlockServer(source, {
      badPolicy: opts.badPolicy,
      onFault: (offset, length, err) => log(`fault reading ${offset}+${length}: ${(err as Error)?.message ?? err}`),
    })
    log(`serving ${image}: ${source.size} bytes, sector size ${source.sectorSize}, bad areas → ${opts.badPolicy === 'zero' ? 'zeros' : 'EIO'}`)
    attached = await b.attach(server, {id, image, runDir: entry.runDir, log})
    entry.status = 'ready'
    entry.device = attached.device
    entry.partitions = attached.partitions
    entry.backendState = attached.state
    writeEntry(entry)
    log(`ready: ${attached.device}${attached.partitions.length ? ` (partitions ${attached.partitions.join(' ')})` : ''}`)
    opts.onReady({entry})
    attached.closed?.then(() => stop('the kernel closed the device'))
    if (!stopReason) await new Promise<void>((resolve) => (wake = resolve))
    log(`stopping: ${stopReason}`)
    const t0 = Date.now()
    await attached.detach()
    const st = server.stats
    log(`detached in ${Date.now() - t0} ms; served ${st.reads} reads, ${st.bytes} bytes, ${st.errors} errors (${st.badReads} touching bad areas)`)
    await source.close()
    removeEntry(id)
    fs.rmSync(entry.runDir, {recursive: true, force: true})
    return 0
  } catch (err) {
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

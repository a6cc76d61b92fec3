/**
 * `vdev detach` and `vdev list`. A running server is asked to stop with SIGTERM — it releases the device,
 * drains in-flight requests, unmounts and removes its entry — and we wait for it to exit. A dead server's
 * leftovers are cleaned up here from its registry entry. A device that is mounted or open is refused
 * unless --force; with --force a server that does not stop in time is killed and cleaned up after.
 */
import * as fs from 'node:fs'
import {VdevError} from '../core/errors'
import {busyReasons} from './busy'
import {cleanupEntry} from './cleanup'
import {loadBackend} from '../core/backends'
import {statsFileOf, type DeviceStats} from './daemon'
import {entryState, readEntries, readEntry, serverAlive, type DeviceEntry, type DeviceState} from './registry'

export interface ListedDevice {
  id: string
  device: string | null
  backend: string
  image: string
  pid: number
  readOnly: boolean
  /** The copy-on-write overlay taking the device's writes (a writable device). */
  overlay?: string
  /** The overlay is a scratch file, deleted at detach. */
  scratch?: boolean
  partitions: string[]
  state: DeviceState
  badPolicy: string
  log: string
  /** vdimg or raw. */
  format: string
  /** A raw image's ddrescue mapfile. */
  mapfile?: string
  /** What the device served since it was attached (every serving thread), when its server runs. */
  stats?: DeviceStats
  /** The FUSE backend: how its server takes the kernel's requests, "io_uring" or "/dev/fuse". */
  requests?: string
}

export function listDevices(): ListedDevice[] {
  return readEntries().map((e) => ({
    id: e.id,
    device: e.device ?? null,
    backend: e.backend,
    image: e.image,
    pid: e.pid,
    readOnly: e.readOnly,
    ...(e.overlay ? {overlay: e.overlay, scratch: e.scratchDir !== undefined} : {}),
    partitions: e.partitions,
    state: entryState(e),
    badPolicy: e.badPolicy,
    log: e.log,
    format: e.source?.kind ?? 'vdimg',
    ...(typeof e.source?.options?.mapfile === 'string' ? {mapfile: e.source.options.mapfile} : {}),
    ...(typeof e.backendState.requests === 'string' ? {requests: e.backendState.requests} : {}),
    ...statsOf(e),
  }))
}

function statsOf(e: DeviceEntry): {stats?: DeviceStats} {
  try {
    return {stats: JSON.parse(fs.readFileSync(statsFileOf(e.id), 'utf8')) as DeviceStats}
  } catch {
    return {}
  }
}

/** How long `list` waits for running servers to publish fresh counters (they do on SIGUSR2). */
const STATS_WAIT_MS = 1000

/** Ask every running server for fresh counters and wait (briefly) until they are written. */
async function refreshStats(entries: DeviceEntry[]): Promise<void> {
  const t0 = Date.now()
  const asked: DeviceEntry[] = []
  for (const e of entries) {
    // Servers from before entries had a source kind do not listen for it (SIGUSR2 would stop them).
    if (e.status !== 'ready' || !e.source || !serverAlive(e)) continue
    try {
      process.kill(e.pid, 'SIGUSR2')
      asked.push(e)
    } catch {
      // gone meanwhile
    }
  }
  const fresh = (e: DeviceEntry): boolean => {
    const s = statsOf(e).stats
    return s !== undefined && Date.parse(s.at) >= t0 - 5
  }
  while (asked.some((e) => !fresh(e)) && Date.now() - t0 < STATS_WAIT_MS) await new Promise((r) => setTimeout(r, 10))
}

/**
 * listDevices, cross-checked with the OS where the backend can ask it (macOS: hdiutil info): a running
 * entry whose device is gone is listed as `gone`, so `vdev detach` can stop its server.
 */
export async function listDevicesChecked(): Promise<ListedDevice[]> {
  await refreshStats(readEntries())
  const entries = new Map(readEntries().map((e) => [e.id, e]))
  const out = listDevices()
  for (const d of out) {
    const e = entries.get(d.id)
    if (!e || d.state !== 'running') continue
    const b = loadBackend(d.backend)
    if ('error' in b || !b.deviceGone || b.platform !== process.platform) continue
    try {
      if (await b.deviceGone(e.backendState)) d.state = 'gone'
    } catch {
      // the check is advisory: keep what the registry says
    }
  }
  return out
}

/** Entries matching a device path, an id, or an image path (by real path or by file identity). */
export function findTarget(target: string): DeviceEntry {
  const entries = readEntries()
  const byId = entries.find((e) => e.id === target)
  if (byId) return byId
  const byDevice = entries.find((e) => e.device === target)
  if (byDevice) return byDevice
  let real: string | undefined
  let st: fs.Stats | undefined
  try {
    real = fs.realpathSync(target)
    st = fs.statSync(real)
  } catch {
    // not a path that exists
  }
  if (real) {
    const m = entries.find((e) => e.device === real || e.image === real || (st && e.imageDev === st.dev && e.imageIno === st.ino))
    if (m) return m
    const part = entries.find((e) => e.partitions.includes(real!))
    if (part) throw new VdevError('not-found', `${target} is a partition of ${part.device} (${part.id}); detach ${part.device}`)
  }
  throw new VdevError('not-found', `no attached device matches ${target} (see "vdev list")`)
}

export interface DetachOptions {
  force?: boolean
  timeoutMs?: number
  log?: (line: string) => void
}

export interface DetachResult {
  id: string
  device: string | null
  image: string
  /** "stopped": the server detached itself; "cleaned": its leftovers were cleaned up here. */
  how: 'stopped' | 'cleaned' | 'killed'
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

async function waitGone(e: DeviceEntry, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (serverAlive(e)) {
    if (Date.now() >= deadline) return false
    await sleep(25)
  }
  return true
}

export async function detachEntry(e: DeviceEntry, opts: DetachOptions = {}): Promise<DetachResult> {
  const log = opts.log ?? (() => {})
  const timeoutMs = opts.timeoutMs ?? 30000
  const what = e.device ? `${e.device} (${e.id})` : e.id
  const busy = e.device ? busyReasons(e.device, serverAlive(e) ? [e.pid] : []) : []
  if (busy.length > 0) {
    const why = `${busy.slice(0, 3).join('; ')}${busy.length > 3 ? ` (+${busy.length - 3} more)` : ''}`
    if (!opts.force) throw new VdevError('busy', `${what} is busy: ${why}; use --force to detach anyway`)
    log(`${what} was busy (${why}); detached anyway: its users get I/O errors, and the kernel frees it on their last close`)
  }
  let how: DetachResult['how'] = 'cleaned'
  if (serverAlive(e)) {
    try {
      process.kill(e.pid, 'SIGTERM')
    } catch {
      // exited meanwhile
    }
    if (await waitGone(e, timeoutMs)) {
      how = 'stopped'
    } else if (opts.force) {
      log(`${what}: the server did not stop within ${timeoutMs / 1000} s; killing it`)
      try {
        process.kill(e.pid, 'SIGKILL')
      } catch {
        // exited meanwhile
      }
      if (!(await waitGone(e, 10000))) throw new VdevError('timeout', `${what}: server ${e.pid} survives SIGKILL (stuck in the kernel?)`)
      how = 'killed'
    } else {
      throw new VdevError('timeout', `${what}: the server did not stop within ${timeoutMs / 1000} s (use --force to kill it)`)
    }
  }
  // A server that stopped cleanly removed its entry; anything still registered is a leftover.
  const left = readEntry(e.id)
  if (left && left.pid === e.pid) await cleanupEntry(left, log)
  return {id: e.id, device: e.device ?? null, image: e.image, how: how === 'stopped' && left ? 'cleaned' : how}
}

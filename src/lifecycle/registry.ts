/**
 * The registry of attached devices: one JSON file per device under <state dir>/devices, written
 * atomically (temporary file + rename), readable by root only. The state directory is /run/vdev (a tmpfs
 * on every systemd machine: after a reboot no device survives, and neither does its entry), or
 * $VDEV_STATE_DIR. Each device also has a private run directory (mount points) and a log file.
 *
 * Ids are vdev0, vdev1 …: the lowest whose run directory does not exist; mkdir(2) is the atomic claim.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {VdevError} from '../core/errors'
import type {SourceDescriptor} from '../core/source'

export interface DeviceEntry {
  version: 1
  id: string
  /** 'starting' until the device exists, then 'ready'. */
  status: 'starting' | 'ready'
  device?: string
  partitions: string[]
  backend: string
  image: string
  /** How the image is read (kind, mapfile …); absent in entries written before sources had kinds (VDIMG). */
  source?: SourceDescriptor
  /** The image file's identity, to recognise it under another path. */
  imageDev?: number
  imageIno?: number
  /** False when writes go to a copy-on-write overlay (`overlay`). */
  readOnly: boolean
  /** The overlay file that takes the device's writes (absolute); the image itself is never written. */
  overlay?: string
  /** The overlay is a scratch file: this directory is removed when the device is detached (or cleaned up). */
  scratchDir?: string
  badPolicy: string
  pid: number
  /** Start time of `pid` (clock ticks since boot, /proc/<pid>/stat field 22): guards against pid reuse. */
  pidStart: number
  createdAt: string
  runDir: string
  log: string
  /** What the backend needs to clean up after a dead server (Backend.cleanup). */
  backendState: Record<string, unknown>
}

/** `gone`: the server runs but the OS no longer has the device (detached outside vdev). */
export type DeviceState = 'starting' | 'running' | 'dead' | 'gone'

/** The default per OS: /run/vdev, or %ProgramData%\vdev on Windows (no /run there). */
export function stateDir(): string {
  if (process.env.VDEV_STATE_DIR) return process.env.VDEV_STATE_DIR
  if (process.platform === 'win32') return path.join(process.env.ProgramData || 'C:\\ProgramData', 'vdev')
  return '/run/vdev'
}

const devicesDir = (): string => path.join(stateDir(), 'devices')
export const runDirOf = (id: string): string => path.join(stateDir(), 'run', id)
export const logOf = (id: string): string => path.join(stateDir(), 'logs', `${id}.log`)
const entryFile = (id: string): string => path.join(devicesDir(), `${id}.json`)

/** Create the state directory tree (root-only). */
export function ensureStateDir(): void {
  for (const d of [stateDir(), devicesDir(), path.join(stateDir(), 'run'), path.join(stateDir(), 'logs')]) {
    try {
      fs.mkdirSync(d, {recursive: true, mode: 0o700})
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EACCES' || code === 'EPERM') throw new VdevError('unavailable', `${d}: permission denied (vdev attach needs root)`)
      throw new VdevError('io', `${d}: cannot create: ${code}`)
    }
  }
}

/** Claim the lowest free id: its run directory is created here and is the claim. */
export function reserveId(): string {
  ensureStateDir()
  for (let n = 0; n < 100000; n++) {
    const id = `vdev${n}`
    if (fs.existsSync(entryFile(id))) continue
    try {
      fs.mkdirSync(runDirOf(id), {mode: 0o700})
      return id
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new VdevError('io', `${runDirOf(id)}: cannot create: ${(err as NodeJS.ErrnoException).code}`)
    }
  }
  throw new VdevError('internal', 'no free device id')
}

export function writeEntry(e: DeviceEntry): void {
  const file = entryFile(e.id)
  const tmp = `${file}.${process.pid}.tmp`
  fs.writeFileSync(tmp, JSON.stringify(e, null, 2) + '\n', {mode: 0o600})
  fs.renameSync(tmp, file)
}

export function removeEntry(id: string): void {
  fs.rmSync(entryFile(id), {force: true})
}

export function readEntry(id: string): DeviceEntry | undefined {
  try {
    const e = JSON.parse(fs.readFileSync(entryFile(id), 'utf8')) as DeviceEntry
    return e && e.id === id ? e : undefined
  } catch {
    return undefined
  }
}

/** Every entry, in id order. Unreadable or foreign files are skipped. */
export function readEntries(): DeviceEntry[] {
  let names: string[]
  try {
    names = fs.readdirSync(devicesDir())
  } catch {
    return []
  }
  return names
    .filter((n) => /^vdev\d+\.json$/.test(n))
    .map((n) => readEntry(n.slice(0, -5)))
    .filter((e): e is DeviceEntry => e !== undefined)
    .sort((a, b) => Number(a.id.slice(4)) - Number(b.id.slice(4)))
}

/** Run directories with no entry: claims of attaches that died before writing one. */
export function orphanRunDirs(): string[] {
  let names: string[]
  try {
    names = fs.readdirSync(path.join(stateDir(), 'run'))
  } catch {
    return []
  }
  return names.filter((id) => /^vdev\d+$/.test(id) && !fs.existsSync(entryFile(id)))
}

/** Start time of a process (field 22 of /proc/<pid>/stat), or undefined if it does not exist. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(rest[22 - 3])
  } catch {
    return undefined
  }
}

/** Whether the entry's server process is alive (same pid, same start time). */
export function serverAlive(e: Pick<DeviceEntry, 'pid' | 'pidStart'>): boolean {
  if (process.platform === 'win32') {
    // No /proc: whether the pid exists is all Windows says here (no guard against pid reuse).
    try {
      process.kill(e.pid, 0)
      return true
    } catch {
      return false
    }
  }
  const t = processStartTime(e.pid)
  if (t === undefined) return false
  // A zombie is as good as dead: its fds (and so its FUSE connection) are closed.
  try {
    const state = fs.readFileSync(`/proc/${e.pid}/stat`, 'utf8')
    if (state.slice(state.lastIndexOf(')') + 2).startsWith('Z')) return false
  } catch {
    return false
  }
  return t === e.pidStart
}

export function entryState(e: DeviceEntry): DeviceState {
  if (!serverAlive(e)) return 'dead'
  return e.status === 'ready' ? 'running' : 'starting'
}

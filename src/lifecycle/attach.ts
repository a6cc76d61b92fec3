/**
 * `vdev attach`: pick the backend, refuse an image that is already attached, then start the serving
 * process in the background (the same CLI, hidden --server-id flag, detached, output to its log file)
 * and wait for its one ready message on an inherited pipe (fd 3) — as qemu-nbd --fork does. If the
 * server fails, its one-line error becomes ours.
 */
import {spawn, type ChildProcess} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {Readable} from 'node:stream'
import type {BadPolicy} from '../core/blockserver'
import type {SourceDescriptor} from '../core/source'
import {VdevError, ioError, type ErrorCode} from '../core/errors'
import {loadBackend, probeBackends} from '../core/backends'
import {describeSource, type SourceArgs} from '../sources'
import {displayUrl, isRemote} from '../remote/http'
import {cleanupEntry} from './cleanup'
import {entryState, logOf, readEntries, readEntry, reserveId, runDirOf, type DeviceEntry} from './registry'

export interface AttachRequest {
  image: string
  /** How to read it: format, ddrescue mapfile, sector size (src/sources: describeSource). */
  source?: SourceArgs
  /** "auto" or a backend name. */
  backend: string
  badPolicy: BadPolicy
  /** Attach read-write into this overlay (an absolute path), or a scratch overlay (src/lifecycle/daemon.ts). */
  overlay?: OverlayRequest
  /** How long to wait for the server to be ready. */
  timeoutMs?: number
  /** The device's read-ahead in KiB; undefined: the backend's default. */
  readAheadKiB?: number
}

/** `--overlay FILE` (absolute) or `--scratch`. */
export type OverlayRequest = {file: string} | {scratch: true}

/** The one message the server writes on fd 3. */
export type ReadyMessage = {ok: true; entry: DeviceEntry} | {ok: false; error: {code: ErrorCode; message: string}}

/** The image, checked to exist, as an absolute real path; a remote image's URL as it is (no stat). */
export function resolveImage(image: string): {path: string; stat: fs.Stats | undefined} {
  if (isRemote(image)) return {path: image, stat: undefined}
  let real: string
  try {
    real = fs.realpathSync(image)
  } catch (err) {
    throw ioError(image, err)
  }
  const stat = fs.statSync(real)
  if (stat.isDirectory()) throw new VdevError('io', `${image}: is a directory`)
  try {
    fs.accessSync(real, fs.constants.R_OK)
  } catch (err) {
    throw ioError(image, err)
  }
  return {path: real, stat}
}

/** "auto" → the available backend with the lowest preference; a name → that backend, if available. */
export async function resolveBackend(name: string, opts: {writable?: boolean} = {}): Promise<string> {
  const all = await probeBackends()
  if (name === 'auto') {
    // Read-write (--overlay, --scratch): the best available backend that can serve a writable device.
    const best = all.find((s) => s.probe.available && (!opts.writable || s.backend?.writable === true))
    if (!best) {
      const why = all.map((s) => `${s.name}: ${!s.probe.available ? s.probe.reason : opts.writable && !s.backend?.writable ? 'read-only' : 'available'}`).join('; ')
      throw new VdevError('unavailable', `no backend can attach here${opts.writable ? ' read-write' : ''} (${why})`)
    }
    return best.name
  }
  const s = all.find((x) => x.name === name)
  if (!s) {
    const b = loadBackend(name)
    throw new VdevError('usage', 'error' in b ? b.error : `unknown backend "${name}"`)
  }
  if (opts.writable && !s.backend?.writable) {
    const can = all.filter((x) => x.backend?.writable).map((x) => x.name)
    throw new VdevError('usage', `the ${name} backend cannot attach read-write: --overlay and --scratch work with ${can.join(', ')}`)
  }
  if (!s.probe.available) throw new VdevError('unavailable', `backend ${name} is not available: ${s.probe.reason}`)
  return name
}

/**
 * One image, one device: attaching an image that is already attached is refused (two devices with the
 * same file system UUID confuse mount-by-UUID and udev, and a second copy brings nothing read-only).
 */
export function refuseIfAttached(image: string, stat: fs.Stats | undefined): void {
  for (const e of readEntries()) {
    const same = e.image === image || (stat !== undefined && e.imageDev === stat.dev && e.imageIno === stat.ino)
    if (!same) continue
    const state = entryState(e)
    const where = e.device ? `${e.device} (${e.id})` : e.id
    if (state === 'dead') throw new VdevError('exists', `${image} is still registered as ${where}, whose server is dead: run "vdev detach ${e.id} --force" first`)
    throw new VdevError('exists', `${image} is already attached as ${where}`)
  }
}

function binRun(): string {
  // dist/src/lifecycle → the package root's bin/run.js
  return path.resolve(__dirname, '..', '..', '..', 'bin', 'run.js')
}

/** Errors of a process start that a moment later may not recur (Wine's CreateProcess has failed once as UNKNOWN). */
const TRANSIENT_SPAWN = new Set(['UNKNOWN', 'EAGAIN', 'ENOMEM', 'EMFILE', 'ENFILE'])

/**
 * Start the background server: resolves once the process runs ('spawn'). A transient failure (thrown, as
 * UNKNOWN is, or emitted, as EAGAIN is) is tried again up to twice, after 0.25 s and 0.5 s, and said in
 * the log (`logFd`, the server's log file).
 */
export async function spawnServer(argv: string[], logFd: number, env: NodeJS.ProcessEnv, tries = 3, exe = process.execPath): Promise<ChildProcess> {
  for (let attempt = 1; ; attempt++) {
    try {
      const child = spawn(exe, argv, {detached: true, stdio: ['ignore', logFd, logFd, 'pipe'], env})
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve)
        child.once('error', reject)
      })
      return child
    } catch (err) {
      if (attempt >= tries || !TRANSIENT_SPAWN.has((err as NodeJS.ErrnoException).code ?? '')) throw err
      // Said in the server's log, where its own lines will follow.
      fs.writeSync(logFd, `${new Date().toISOString()} vdev attach: starting the server failed (${(err as Error).message}); trying again\n`)
      await new Promise((r) => setTimeout(r, 250 * attempt))
    }
  }
}

/** Start a background server for `req` and wait until its device is ready. */
export async function attachInBackground(req: AttachRequest): Promise<DeviceEntry> {
  const {path: image, stat} = resolveImage(req.image)
  const desc = describeSource(image, req.source)
  const backend = await resolveBackend(req.backend, {writable: req.overlay !== undefined})
  refuseIfAttached(image, stat)
  const id = reserveId()
  const logFile = logOf(id)
  const logFd = fs.openSync(logFile, 'a', 0o600)
  const overlay = req.overlay ? ('scratch' in req.overlay ? ['--scratch'] : ['--overlay', req.overlay.file]) : []
  // A remote image's URL with a query string (a presigned URL's signature) or a user name and password
  // goes through the environment too; the command line shows it without them (takeImageFromEnv).
  const secretUrl = isRemote(image) && hasUrlSecrets(image)
  const argv = [binRun(), 'attach', secretUrl ? displayUrl(new URL(image)) : image, '--backend', backend, '--bad-policy', req.badPolicy, '--server-id', id, ...sourceFlags(desc), ...overlay]
  if (req.readAheadKiB !== undefined) argv.push('--read-ahead', String(req.readAheadKiB))
  // A remote image's request headers (a bearer token) go through the environment, not the command line
  // that every user can read in /proc/PID/cmdline.
  const env: NodeJS.ProcessEnv = {...process.env, VDEV_SERVER: '1'}
  delete env[HEADERS_ENV]
  delete env[IMAGE_ENV]
  if (typeof desc.options?.headers === 'string') env[HEADERS_ENV] = desc.options.headers
  if (secretUrl) env[IMAGE_ENV] = image
  let child: ChildProcess
  try {
    child = await spawnServer(argv, logFd, env)
  } catch (err) {
    fs.closeSync(logFd)
    fs.rmSync(runDirOf(id), {recursive: true, force: true})
    fs.rmSync(logFile, {force: true})
    throw new VdevError('unavailable', `cannot start the background server (${process.execPath}): ${(err as Error).message}`)
  }
  fs.closeSync(logFd)
  const pipe = child.stdio[3] as Readable
  const timeoutMs = req.timeoutMs ?? 60000

  // Ctrl-C while waiting: the server runs in its own session and would not see it; stop it too.
  let interrupted = false
  const onSignal = (): void => {
    interrupted = true
    child.kill('SIGTERM')
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const result = await new Promise<ReadyMessage | {exit: string} | {timeout: true}>((resolve) => {
    let text = ''
    let settled = false
    const done = (v: ReadyMessage | {exit: string} | {timeout: true}): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(v)
    }
    const timer = setTimeout(() => done({timeout: true}), timeoutMs)
    pipe.setEncoding('utf8')
    pipe.on('data', (d: string) => {
      text += d
      const nl = text.indexOf('\n')
      if (nl < 0) return
      try {
        done(JSON.parse(text.slice(0, nl)) as ReadyMessage)
      } catch {
        done({exit: `unreadable ready message: ${text.slice(0, 200)}`})
      }
    })
    pipe.on('error', () => {})
    child.on('error', (err) => done({exit: `could not be started: ${err.message}`}))
    child.on('exit', (code, sig) => done({exit: sig ? `killed by ${sig}` : `exited with code ${code}`}))
  })
  pipe.destroy()
  process.off('SIGINT', onSignal)
  process.off('SIGTERM', onSignal)

  if (interrupted) {
    // The server detaches on SIGTERM, also right after becoming ready; wait for it and sweep.
    await new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())))
    const left = readEntry(id)
    if (left) await cleanupEntry(left, () => {}).catch(() => {})
    fs.rmSync(runDirOf(id), {recursive: true, force: true})
    throw new VdevError('internal', `interrupted: ${image} was not attached`)
  }
  if ('ok' in result && result.ok) {
    child.unref()
    return result.entry
  }
  // Failed: make sure nothing is left (the server cleans up after itself unless it crashed).
  if ('timeout' in result) child.kill('SIGKILL')
  await new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())))
  const left = readEntry(id)
  if (left) await cleanupEntry(left, () => {}).catch(() => {})
  fs.rmSync(runDirOf(id), {recursive: true, force: true})
  if ('ok' in result) {
    fs.rmSync(logFile, {force: true})
    throw new VdevError(result.error.code, result.error.message)
  }
  if ('timeout' in result) throw new VdevError('timeout', `the server did not get ${image} ready within ${timeoutMs / 1000} s (log: ${logFile})`)
  throw new VdevError('internal', `the server for ${image} ${result.exit}: ${lastLine(logFile)} (log: ${logFile})`)
}

/** The flags that make the background server open the same source. */
export function sourceFlags(d: SourceDescriptor): string[] {
  const out = ['--format', d.kind]
  const o = d.options ?? {}
  if (typeof o.mapfile === 'string') out.push('--mapfile', o.mapfile)
  if (typeof o.sectorSize === 'number') out.push('--sector-size', String(o.sectorSize))
  if (typeof o.timeoutMs === 'number') out.push('--remote-timeout', String(Math.round(o.timeoutMs / 1000)))
  if (isRemote(d.path)) out.push('--cache', typeof o.cacheDir === 'string' ? o.cacheDir : 'none')
  if (typeof o.cacheBytes === 'number') out.push('--cache-size', String(o.cacheBytes))
  if (typeof o.versionId === 'string') out.push('--version-id', o.versionId)
  return out
}

/** How attach hands a remote image's --header values to its background server (JSON). */
export const HEADERS_ENV = 'VDEV_REMOTE_HEADERS'

/** The background server's side: the headers its parent passed, taken out of the environment. */
export function takeHeadersFromEnv(): Record<string, string> | undefined {
  const v = process.env[HEADERS_ENV]
  delete process.env[HEADERS_ENV]
  if (!v) return undefined
  try {
    return JSON.parse(v) as Record<string, string>
  } catch {
    throw new VdevError('usage', `${HEADERS_ENV}: not the JSON object vdev attach writes`)
  }
}

/** How attach hands its background server a remote image's URL that carries secrets. */
export const IMAGE_ENV = 'VDEV_REMOTE_IMAGE'

/** Whether a URL carries what must not be on a command line: a query string or a user name/password. */
function hasUrlSecrets(image: string): boolean {
  try {
    const u = new URL(image)
    return u.search !== '' || u.username !== '' || u.password !== ''
  } catch {
    return false
  }
}

/**
 * The background server's side: the image its parent passed through the environment (taken out of it)
 * when `argv` is that URL as displayUrl shows it, else `argv` itself.
 */
export function takeImageFromEnv(argv: string): string {
  const v = process.env[IMAGE_ENV]
  delete process.env[IMAGE_ENV]
  if (!v || !isRemote(v)) return argv
  let shown: string
  try {
    shown = displayUrl(new URL(v))
  } catch {
    return argv
  }
  return shown === argv ? v : argv
}

function lastLine(file: string): string {
  try {
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n')
    return lines[lines.length - 1] ?? ''
  } catch {
    return ''
  }
}

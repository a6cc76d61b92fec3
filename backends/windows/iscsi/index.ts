/**
 * Windows without a driver: serve the image from vdev's own iSCSI target on 127.0.0.1 (a free port, an IQN
 * of its own for each attach) and have Windows' built-in Microsoft iSCSI Initiator log in to it, which
 * gives a real disk, `\\.\PhysicalDriveN`, through the OS's own signed drivers.
 *
 * Flow: make sure the MSiSCSI service runs (advapi32) → AddIScsiStaticTargetW (not persistent) →
 * LoginIScsiTargetW (not persistent) → GetDevicesForIScsiSessionW until the disk shows up → its
 * STORAGE_DEVICE_NUMBER gives PhysicalDriveN → if the SAN policy left it offline, bring it online read-only
 * (IOCTL_DISK_SET_DISK_ATTRIBUTES). Teardown: LogoutIScsiTarget, RemoveIScsiStaticTargetW, stop the target.
 *
 * Every call goes through a Win32Api (./api): ./win32 binds the real DLLs with koffi; tests pass a fake on
 * Linux, and under Wine a stand-in iscsidsc.dll records what it was given. Not run on Windows yet.
 */
import * as crypto from 'node:crypto'
import type {AttachContext, AttachedDevice, Backend, Probe} from '../../../src/core/backend'
import type {BlockServer} from '../../../src/core/blockserver'
import {VdevError} from '../../../src/core/errors'
import type {ImageIdentity, RunningIscsiTarget} from '../../../src/serve/iscsi'
import * as abi from './abi'
import type {Handle, Win32Api} from './api'

/** What the registry keeps so that detach/cleanup/list can find the session after the server died. */
export interface WinIscsiState {
  iqn: string
  port: number
  /** ISCSI_UNIQUE_SESSION_ID, 16 bytes as hex. */
  sessionId?: string
  device?: string
  deviceNumber?: number
  [key: string]: unknown
}

export interface WinIscsiDeps {
  api: () => Win32Api
  startTarget: (server: BlockServer, opts: {image: string; identity: ImageIdentity; threads: number; log: (l: string) => void}) => Promise<RunningIscsiTarget>
  /** Milliseconds between polls (service start, device arrival). */
  pollMs: number
  /** How long to wait for the service and for the disk. */
  timeoutMs: number
  sleep: (ms: number) => Promise<void>
}

const hex32 = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`

/** Win32 and ISDSC status codes in messages: decimal for Win32 errors, hex for 0xEFFF.... ISDSC codes. */
export function statusText(n: number): string {
  const names: Record<number, string> = {
    [abi.ERROR_ACCESS_DENIED]: 'access denied',
    [abi.ERROR_FILE_NOT_FOUND]: 'not found',
    [abi.ERROR_NOT_SUPPORTED]: 'not supported',
    [abi.ERROR_INSUFFICIENT_BUFFER]: 'insufficient buffer',
    [abi.ERROR_SERVICE_DISABLED]: 'service disabled',
    [abi.ERROR_SERVICE_DOES_NOT_EXIST]: 'service does not exist',
  }
  return n >>> 0 >= 0x10000 ? `status ${hex32(n)}` : `error ${n}${names[n] ? ` (${names[n]})` : ''}`
}

/** The portal 127.0.0.1:port, as ISCSI_TARGET_PORTALW. */
export function portalFor(port: number): Buffer {
  return abi.ISCSI_TARGET_PORTALW.encode({SymbolicName: abi.wide(''), Address: abi.wide('127.0.0.1'), Socket: port})
}

export function portalGroupFor(port: number): Buffer {
  const b = Buffer.alloc(abi.ISCSI_TARGET_PORTAL_GROUPW.size)
  b.writeUInt32LE(1, abi.ISCSI_TARGET_PORTAL_GROUPW.offsets.Count)
  portalFor(port).copy(b, abi.ISCSI_TARGET_PORTAL_GROUPW.offsets.Portals)
  return b
}

/** The IQN of one attach: the image's own (src/serve/iscsi imageIdentity) + the registry id + 4 random bytes. */
export function attachIqn(imageIqn: string, id: string): string {
  return `${imageIqn}.${id.toLowerCase().replace(/[^a-z0-9-]/g, '-')}.${crypto.randomBytes(4).toString('hex')}`
}

export interface DeviceOnSession {
  targetName: string
  deviceType: number
  deviceNumber: number
  legacyName: string
}

/** Decode GetDevicesForIScsiSessionW's array. */
export function decodeDevices(buf: Buffer, count: number): DeviceOnSession[] {
  const S = abi.ISCSI_DEVICE_ON_SESSIONW
  const out: DeviceOnSession[] = []
  for (let i = 0; i < count && (i + 1) * S.size <= buf.length; i++) {
    const at = i * S.size
    const d = S.decode(buf, at)
    out.push({
      targetName: abi.readWide(buf, at + S.offsets.TargetName, at + S.offsets.ScsiAddress),
      deviceType: d.StorageDeviceNumber.DeviceType,
      deviceNumber: d.StorageDeviceNumber.DeviceNumber,
      legacyName: abi.readWide(buf, at + S.offsets.LegacyName, at + S.offsets.StorageDeviceNumber),
    })
  }
  return out
}

export interface SessionInfo {
  sessionId: string
  targetName: string
}

/** Decode ReportIScsiSessionsW's array; its string pointers point into the same buffer (`base` = its address). */
export function decodeSessions(buf: Buffer, count: number, base: bigint): SessionInfo[] {
  const S = abi.ISCSI_SESSION_INFOW
  const out: SessionInfo[] = []
  const str = (ptr: bigint): string => {
    if (ptr === 0n || ptr < base || ptr >= base + BigInt(buf.length)) return ''
    return abi.readWide(buf, Number(ptr - base))
  }
  for (let i = 0; i < count && (i + 1) * S.size <= buf.length; i++) {
    const at = i * S.size
    out.push({
      sessionId: buf.toString('hex', at, at + abi.ISCSI_UNIQUE_SESSION_ID.size),
      targetName: str(buf.readBigUInt64LE(at + S.offsets.TargetName)),
    })
  }
  return out
}

/** Call a sizing function until its buffer is big enough (ERROR_INSUFFICIENT_BUFFER / ERROR_MORE_DATA). */
function callSized(call: (size: Buffer, buf: Buffer | null) => number, unit: number): {status: number; buf: Buffer; size: number} {
  const size = Buffer.alloc(4)
  let buf: Buffer | null = null
  for (let attempt = 0; attempt < 8; attempt++) {
    const status = call(size, buf)
    if (status !== abi.ERROR_INSUFFICIENT_BUFFER && status !== abi.ERROR_MORE_DATA) return {status, buf: buf ?? Buffer.alloc(0), size: size.readUInt32LE(0)}
    const want = Math.max(size.readUInt32LE(0), 1)
    buf = Buffer.alloc(want * unit)
    size.writeUInt32LE(want, 0)
  }
  throw new VdevError('io', 'the iSCSI initiator kept asking for a bigger buffer')
}

/** The devices on a session: status 0 and the list, or the failing status. */
export function devicesOnSession(api: Win32Api, sessionId: Buffer): {status: number; devices: DeviceOnSession[]} {
  const r = callSized((count, buf) => api.GetDevicesForIScsiSessionW(sessionId, count, buf), abi.ISCSI_DEVICE_ON_SESSIONW.size)
  return {status: r.status, devices: r.status === 0 ? decodeDevices(r.buf, r.size) : []}
}

/** Every live session of the initiator (ReportIScsiSessionsW; BufferSize counts bytes). */
export function reportSessions(api: Win32Api): SessionInfo[] {
  const count = Buffer.alloc(4)
  const r = callSized((size, buf) => api.ReportIScsiSessionsW(size, count, buf), 1)
  if (r.status !== 0) throw new VdevError('io', `ReportIScsiSessionsW failed: ${statusText(r.status)}`)
  return decodeSessions(r.buf, count.readUInt32LE(0), r.buf.length ? api.address(r.buf) : 0n)
}

/** Make sure the Microsoft iSCSI Initiator service runs; start it if not. Not elevated → exit 7. */
export async function ensureInitiatorService(api: Win32Api, deps: Pick<WinIscsiDeps, 'pollMs' | 'timeoutMs' | 'sleep'>, log: (l: string) => void): Promise<void> {
  const denied = (what: string) =>
    new VdevError('unavailable', `${what}: access denied (vdev attach on Windows needs an elevated prompt: "Run as administrator")`)
  const scm = api.OpenSCManagerW(abi.SC_MANAGER_CONNECT)
  if (!scm) {
    const e = api.lastError()
    if (e === abi.ERROR_ACCESS_DENIED) throw denied('the service manager')
    throw new VdevError('unavailable', `the service manager cannot be opened: ${statusText(e)}`)
  }
  let svc: Handle | null = null
  try {
    svc = api.OpenServiceW(scm, abi.MSISCSI_SERVICE, abi.SERVICE_START | abi.SERVICE_QUERY_STATUS)
    if (!svc) {
      const e = api.lastError()
      if (e === abi.ERROR_ACCESS_DENIED) throw denied(`the ${abi.MSISCSI_SERVICE} service`)
      throw new VdevError('unavailable', `the Microsoft iSCSI Initiator service (${abi.MSISCSI_SERVICE}) cannot be opened: ${statusText(e)}`)
    }
    const status = Buffer.alloc(abi.SERVICE_STATUS.size)
    const state = (): number => {
      if (!api.QueryServiceStatus(svc!, status)) throw new VdevError('unavailable', `${abi.MSISCSI_SERVICE}: QueryServiceStatus failed: ${statusText(api.lastError())}`)
      return status.readUInt32LE(abi.SERVICE_STATUS.offsets.dwCurrentState)
    }
    if (state() === abi.SERVICE_RUNNING) return
    if (!api.StartServiceW(svc)) {
      const e = api.lastError()
      if (e === abi.ERROR_ACCESS_DENIED) throw denied(`starting ${abi.MSISCSI_SERVICE}`)
      if (e !== abi.ERROR_SERVICE_ALREADY_RUNNING) throw new VdevError('unavailable', `${abi.MSISCSI_SERVICE} cannot be started: ${statusText(e)}`)
    } else log(`started the ${abi.MSISCSI_SERVICE} service`)
    const until = Date.now() + deps.timeoutMs
    for (;;) {
      const s = state()
      if (s === abi.SERVICE_RUNNING) return
      if (s === abi.SERVICE_STOPPED && Date.now() > until - deps.timeoutMs / 2)
        throw new VdevError('unavailable', `${abi.MSISCSI_SERVICE} stopped right after it was started`)
      if (Date.now() > until) throw new VdevError('timeout', `${abi.MSISCSI_SERVICE} did not reach RUNNING (state ${s})`)
      await deps.sleep(deps.pollMs)
    }
  } finally {
    if (svc) api.CloseServiceHandle(svc)
    api.CloseServiceHandle(scm)
  }
}

/**
 * Bring a disk online and read-only if it is offline or writable (a SAN policy of "offline shared", the
 * default on Windows Server, leaves a new iSCSI disk offline). Not persistent. Returns what it did.
 */
export function onlineReadOnly(api: Win32Api, device: string): 'already' | 'changed' | {failed: string} {
  const h = api.CreateFileW(device, abi.GENERIC_READ | abi.GENERIC_WRITE, abi.FILE_SHARE_READ | abi.FILE_SHARE_WRITE, abi.OPEN_EXISTING)
  if (!h) return {failed: `CreateFileW: ${statusText(api.lastError())}`}
  try {
    const got = Buffer.alloc(abi.GET_DISK_ATTRIBUTES.size)
    const n = Buffer.alloc(4)
    if (!api.DeviceIoControl(h, abi.IOCTL_DISK_GET_DISK_ATTRIBUTES, null, got, n)) return {failed: `IOCTL_DISK_GET_DISK_ATTRIBUTES: ${statusText(api.lastError())}`}
    const attrs = got.readBigUInt64LE(abi.GET_DISK_ATTRIBUTES.offsets.Attributes)
    if ((attrs & abi.DISK_ATTRIBUTE_OFFLINE) === 0n && (attrs & abi.DISK_ATTRIBUTE_READ_ONLY) !== 0n) return 'already'
    const set = abi.SET_DISK_ATTRIBUTES.encode({
      Version: abi.SET_DISK_ATTRIBUTES.size,
      Persist: 0,
      Attributes: abi.DISK_ATTRIBUTE_READ_ONLY,
      AttributesMask: abi.DISK_ATTRIBUTE_OFFLINE | abi.DISK_ATTRIBUTE_READ_ONLY,
    })
    if (!api.DeviceIoControl(h, abi.IOCTL_DISK_SET_DISK_ATTRIBUTES, set, null, n)) return {failed: `IOCTL_DISK_SET_DISK_ATTRIBUTES: ${statusText(api.lastError())}`}
    return 'changed'
  } finally {
    api.CloseHandle(h)
  }
}

/** Log out of the session and remove the static target; both tolerate "already gone". */
export function logoutAndRemove(api: Win32Api, state: WinIscsiState, force: boolean, log: (l: string) => void): void {
  if (state.sessionId) {
    const sid = Buffer.from(state.sessionId, 'hex')
    const st = api.LogoutIScsiTarget(sid)
    if (st !== 0) {
      let live: boolean
      try {
        live = reportSessions(api).some((s) => s.sessionId === state.sessionId)
      } catch {
        live = true
      }
      if (live && !force) throw new VdevError('busy', `LogoutIScsiTarget ${state.device ?? state.iqn} failed: ${statusText(st)} (the disk may be in use; use --force)`)
      if (live) throw new VdevError('busy', `LogoutIScsiTarget ${state.device ?? state.iqn} failed: ${statusText(st)}`)
      log(`session ${state.sessionId} was already gone`)
    } else log(`logged out of ${state.iqn}`)
    state.sessionId = undefined
  }
  const r = api.RemoveIScsiStaticTargetW(state.iqn)
  if (r !== 0) log(`RemoveIScsiStaticTargetW ${state.iqn}: ${statusText(r)} (already removed?)`)
}

export function createBackend(over: Partial<WinIscsiDeps> = {}): Backend {
  let cached: Win32Api | undefined
  const deps: WinIscsiDeps = {
    api:
      over.api ??
      (() =>
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        (cached ??= (require('./win32') as typeof import('./win32')).loadWin32Api())),
    startTarget:
      over.startTarget ??
      ((server, opts) =>
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        (require('../../../src/serve/iscsi') as typeof import('../../../src/serve/iscsi')).startIscsiServer(server, {
          listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
          image: opts.image,
          identity: opts.identity,
          threads: opts.threads,
          log: opts.log,
        })),
    pollMs: over.pollMs ?? 250,
    timeoutMs: over.timeoutMs ?? 30000,
    sleep: over.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms))),
  }

  return {
    name: 'windows-iscsi',
    platform: 'win32',
    description: "vdev's iSCSI target on 127.0.0.1 + the built-in Microsoft iSCSI Initiator: \\\\.\\PhysicalDriveN without a driver",
    preference: 0,
    // One iSCSI connection per serving thread after its login (src/serve/iscsi); the initiator opens one.
    threadModel: {kind: 'serving-threads', defaultThreads: 2, maxThreads: 16, pollMicroseconds: 0},

    async probe(): Promise<Probe> {
      if (process.platform !== 'win32') return {available: false, reason: `needs Windows (this is ${process.platform})`}
      let api: Win32Api
      try {
        api = deps.api()
      } catch (err) {
        return {available: false, reason: `iscsidsc.dll cannot be loaded: ${(err as Error).message.split('\n')[0]}`}
      }
      const scm = api.OpenSCManagerW(abi.SC_MANAGER_CONNECT)
      if (!scm) return {available: false, reason: `the service manager cannot be opened: ${statusText(api.lastError())}`}
      try {
        const svc = api.OpenServiceW(scm, abi.MSISCSI_SERVICE, abi.SERVICE_START | abi.SERVICE_QUERY_STATUS)
        if (!svc) {
          const e = api.lastError()
          return {available: false, reason: e === abi.ERROR_ACCESS_DENIED ? 'needs an elevated prompt ("Run as administrator")' : `${abi.MSISCSI_SERVICE}: ${statusText(e)}`}
        }
        api.CloseServiceHandle(svc)
      } finally {
        api.CloseServiceHandle(scm)
      }
      return {available: true, detail: 'Microsoft iSCSI Initiator'}
    },

    async deviceGone(state: Record<string, unknown>): Promise<boolean> {
      const s = state as WinIscsiState
      if (!s.sessionId) return true
      const api = deps.api()
      if (!reportSessions(api).some((x) => x.sessionId === s.sessionId)) return true
      if (s.deviceNumber === undefined) return false
      const d = devicesOnSession(api, Buffer.from(s.sessionId, 'hex'))
      return d.status === 0 && !d.devices.some((x) => x.deviceType === abi.FILE_DEVICE_DISK && x.deviceNumber === s.deviceNumber)
    },

    async attach(server: BlockServer, ctx: AttachContext): Promise<AttachedDevice> {
      const api = deps.api()
      await ensureInitiatorService(api, deps, ctx.log)
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const {imageIdentity} = require('../../../src/serve/iscsi') as typeof import('../../../src/serve/iscsi')
      const base = imageIdentity(server, ctx.image)
      const identity: ImageIdentity = {...base, iqn: attachIqn(base.iqn, ctx.id)}
      const target = await deps.startTarget(server, {image: ctx.image, identity, threads: ctx.threads, log: ctx.log})
      const port = target.address.port
      const state: WinIscsiState = {iqn: identity.iqn, port}
      let added = false
      try {
        const st = api.AddIScsiStaticTargetW(identity.iqn, 0, false, portalGroupFor(port))
        if (st !== 0) throw new VdevError('io', `AddIScsiStaticTargetW ${identity.iqn} failed: ${statusText(st)}`)
        added = true
        const sid = Buffer.alloc(abi.ISCSI_UNIQUE_SESSION_ID.size)
        const cid = Buffer.alloc(abi.ISCSI_UNIQUE_SESSION_ID.size)
        let login = -1
        for (let attempt = 1; attempt <= 3; attempt++) {
          login = api.LoginIScsiTargetW(identity.iqn, abi.ISCSI_ALL_INITIATOR_PORTS, portalFor(port), false, sid, cid)
          if (login === 0) break
          ctx.log(`LoginIScsiTargetW attempt ${attempt}: ${statusText(login)}`)
          if (attempt < 3) await deps.sleep(deps.pollMs * 2)
        }
        if (login !== 0) throw new VdevError('io', `LoginIScsiTargetW ${identity.iqn} (127.0.0.1:${port}) failed: ${statusText(login)}`)
        state.sessionId = sid.toString('hex')
        ctx.log(`logged in to ${identity.iqn} on 127.0.0.1:${port}, session ${state.sessionId}`)

        const until = Date.now() + deps.timeoutMs
        let disk: DeviceOnSession | undefined
        let last = 'no device yet'
        for (;;) {
          const r = devicesOnSession(api, sid)
          disk = r.devices.find((d) => d.deviceType === abi.FILE_DEVICE_DISK)
          if (disk) break
          last = r.status === 0 ? `${r.devices.length} device(s), no disk yet` : statusText(r.status)
          if (Date.now() > until) throw new VdevError('timeout', `the iSCSI disk did not appear on session ${state.sessionId} (${last})`)
          await deps.sleep(deps.pollMs)
        }
        state.deviceNumber = disk.deviceNumber
        state.device = abi.physicalDrive(disk.deviceNumber)
        const online = onlineReadOnly(api, state.device)
        if (online === 'changed') ctx.log(`${state.device}: brought online read-only`)
        else if (online !== 'already') ctx.log(`${state.device}: cannot check or set online/read-only: ${online.failed}`)
      } catch (err) {
        try {
          if (added) logoutAndRemove(api, state, true, ctx.log)
        } catch (e) {
          ctx.log(`cleanup after a failed attach: ${(e as Error).message}`)
        }
        await target.close()
        throw err
      }
      let detached: Promise<void> | undefined
      return {
        device: state.device!,
        partitions: [],
        state,
        detach() {
          detached ??= (async () => {
            logoutAndRemove(api, state, false, ctx.log)
            await target.close()
          })()
          return detached
        },
      }
    },

    async cleanup(state: Record<string, unknown>, log: (line: string) => void): Promise<void> {
      const s = state as WinIscsiState
      if (!s.iqn) return
      logoutAndRemove(deps.api(), s, true, log)
    },
  }
}

export const backend: Backend = createBackend()

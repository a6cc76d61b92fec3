/**
 * The Linux iSCSI backend: vdev's own iSCSI target (src/serve/iscsi) on 127.0.0.1, a free port and an IQN of
 * this attach alone, and the kernel's initiator (iscsi_tcp + sd) logged in to it with open-iscsi's
 * `iscsistart` (no iscsid needed) → /dev/sdX, read-only (the LUN reports write protect), partitions as
 * /dev/sdXK, unreadable sectors as MEDIUM ERROR → EIO at exactly their LBA.
 *
 * Detach logs the session out with `iscsiadm -m session -r SID -u`. That needs iscsid; when none runs,
 * vdev starts one in the foreground for the logout and stops it after (iscsid adopts the sessions it finds
 * in sysfs, "using default and currently negotiated values", and can then log them out). If that fails
 * too, the last resort deletes the SCSI disk (/sys/block/sdX/device/delete) and closes the target, which
 * leaves the kernel's session object behind; the log says so.
 *
 * open-iscsi's tools may signal their own process group when they exit, so each one runs in a process
 * group (and session) of its own.
 */
import {spawn} from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {AttachContext, AttachedDevice, Backend, Probe} from '../../../src/core/backend'
import {BlockServer} from '../../../src/core/blockserver'
import type {BlockSource, ReadResult} from '../../../src/core/source'
import {VdevError} from '../../../src/core/errors'
import {IQN_PREFIX, imageIdentity, startIscsiServer, type RunningIscsiTarget} from '../../../src/serve/iscsi'
import {diskBytes, diskPartitions, sessionsOf, type IscsiSessionInfo} from './sysfs'

/** open-iscsi keeps its lock files here; iscsistart fails without the directory. */
const LOCK_DIR = '/run/lock/iscsi'
/** The initiator name vdev logs in with (the session's, kept by iscsid when it adopts the session). */
export const INITIATOR_IQN = `${IQN_PREFIX}:initiator`
const SEARCH = ['/usr/sbin', '/sbin', '/usr/bin', '/bin']

export interface IscsiBackendState extends Record<string, unknown> {
  device: string
  /** The per-attach target name: it names this attach's session(s) in /sys/class/iscsi_session. */
  targetName: string
  port: number
  sid: number
  serverPid: number
  /** The LUN's size and block size, for the stand-in target cleanup serves after a dead server. */
  size: number
  sectorSize: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A program in PATH or the sbin directories (a non-root PATH often lacks them). */
export function findTool(name: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SEARCH]) {
    const p = path.join(dir, name)
    try {
      fs.accessSync(p, fs.constants.X_OK)
      return p
    } catch {
      // next
    }
  }
  return undefined
}

interface ToolResult {
  code: number | null
  output: string
}

/** Run a tool (argv, no shell) in a session of its own; output is stdout + stderr. */
function runTool(file: string, args: string[], timeoutMs: number): Promise<ToolResult> {
  return new Promise((resolve) => {
    const child = spawn(file, args, {stdio: ['ignore', 'pipe', 'pipe'], detached: true})
    let output = ''
    child.stdout.on('data', (d: Buffer) => (output += d.toString()))
    child.stderr.on('data', (d: Buffer) => (output += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      resolve({code: null, output: err.message})
    })
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({code, output: output.trim()})
    })
  })
}

function hasCrc32c(): boolean {
  for (const m of ['crc32c_generic', 'crc32c_intel', 'crc32c']) if (fs.existsSync(`/sys/module/${m}`)) return true
  try {
    return /^name\s*:\s*crc32c$/m.test(fs.readFileSync('/proc/crypto', 'utf8'))
  } catch {
    return false
  }
}

function probeSync(): Probe {
  if (process.platform !== 'linux') return {available: false, reason: 'needs Linux'}
  if (process.getuid?.() !== 0) return {available: false, reason: 'needs root (the iSCSI login goes through the kernel)'}
  if (!fs.existsSync('/sys/module/iscsi_tcp')) return {available: false, reason: 'the iscsi_tcp kernel module is not loaded (modprobe iscsi_tcp)'}
  if (!hasCrc32c()) return {available: false, reason: 'no crc32c in the kernel (modprobe crc32c_generic): the iSCSI login would fail with ENOMEM'}
  if (!findTool('iscsistart')) return {available: false, reason: "open-iscsi's iscsistart is not installed (Debian: open-iscsi)"}
  // open-iscsi keeps its locks in /run/lock/iscsi; attach creates it when missing (a fresh /run has none).
  if (!fs.existsSync('/run')) return {available: false, reason: `/run does not exist (open-iscsi keeps its locks in ${LOCK_DIR})`}
  const logout = findTool('iscsiadm') && findTool('iscsid') ? 'logout with iscsiadm' : 'no iscsiadm/iscsid: detach deletes the SCSI disk'
  return {available: true, detail: `iscsi_tcp loaded, iscsistart; ${logout}`}
}

/** The sd disk of a target's session once the kernel has scanned it and knows its size. */
async function waitForDisk(targetName: string, timeoutMs: number): Promise<{session: IscsiSessionInfo; disk: string} | undefined> {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    for (const s of sessionsOf(targetName)) {
      const disk = s.disks.find((d) => diskBytes(d) > 0 && fs.existsSync(`/dev/${d}`))
      if (disk) return {session: s, disk}
    }
    await sleep(100)
  }
  return undefined
}

/**
 * The partitions of a new sd disk. sd reads the partition table in add_disk, after the disk shows in sysfs;
 * opening the device waits for that scan (it holds the disk's open mutex). The open runs on libuv's thread
 * pool: the reads it waits for may be served on this thread's event loop. Then the list must stay the same
 * for a moment, and the nodes exist.
 */
async function scanPartitions(disk: string): Promise<string[]> {
  let last = ''
  let parts: string[] = []
  for (let i = 0; i < 20; i++) {
    const fh = await fs.promises.open(`/dev/${disk}`, 'r').catch(() => undefined)
    await fh?.close()
    parts = diskPartitions(disk)
    const key = parts.join(' ')
    if (i > 0 && key === last && parts.every((p) => fs.existsSync(p))) return parts
    last = key
    await sleep(150)
  }
  return parts
}

/**
 * Log out every session of a target: iscsiadm (through a running iscsid, or one started here for the
 * logout); then, for what is left, delete its SCSI disks. Resolves with how it ended.
 */
async function logoutTarget(targetName: string, log: (line: string) => void): Promise<'none' | 'logged-out' | 'disk-deleted' | 'left'> {
  if (sessionsOf(targetName).length === 0) return 'none'
  const iscsiadm = findTool('iscsiadm')
  const logoutAll = async (): Promise<string> => {
    let out = ''
    for (const s of sessionsOf(targetName)) {
      const r = await runTool(iscsiadm!, ['-m', 'session', '-r', String(s.sid), '-u'], 30_000)
      if (r.code !== 0) out = r.output
    }
    return out
  }
  const gone = async (ms: number): Promise<boolean> => {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (sessionsOf(targetName).length === 0) return true
    return sessionsOf(targetName).length === 0
  }
  if (iscsiadm) {
    // Through the system's iscsid when one runs (or systemd starts it for iscsiadm).
    let why = 'no iscsid running'
    if (iscsidRunning() || fs.existsSync('/run/systemd/system')) {
      why = await logoutAll()
      if (await gone(2000)) return 'logged-out'
    }
    const iscsid = findTool('iscsid')
    if (iscsid) {
      log(`iscsi: iscsiadm could not log out (${why.split('\n').pop()}); starting iscsid for the logout`)
      const daemon = spawn(iscsid, ['-f'], {stdio: ['ignore', 'ignore', 'pipe'], detached: true})
      let daemonErr = ''
      daemon.stderr.on('data', (d: Buffer) => (daemonErr = (daemonErr + d.toString()).slice(-2000)))
      const exited = new Promise<void>((resolve) => daemon.once('close', () => resolve()))
      daemon.on('error', () => undefined)
      try {
        // iscsid adopts the sessions it finds in sysfs (it logs in again, reinstating them) before it answers.
        for (let i = 0; i < 30 && sessionsOf(targetName).length > 0 && daemon.exitCode === null; i++) {
          await logoutAll()
          if (await gone(1000)) break
        }
      } finally {
        if (daemon.exitCode === null && daemon.pid) {
          daemon.kill('SIGTERM')
          if (!(await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]))) daemon.kill('SIGKILL')
        }
        await Promise.race([exited, sleep(2000)])
      }
      if (await gone(2000)) {
        log('iscsi: logged out through an iscsid started for it (stopped again)')
        return 'logged-out'
      }
      log(`iscsi: iscsid could not log out either: ${daemonErr.trim().split('\n').slice(-3).join(' / ')}`)
    }
  }
  // Last resort: take the SCSI disks away; the kernel's session object stays (nothing can destroy it without
  // iscsid's netlink conversation), failed once its target closes.
  let deleted = false
  for (const s of sessionsOf(targetName)) {
    for (const d of s.disks) {
      try {
        fs.writeFileSync(`/sys/block/${d}/device/delete`, '1')
        deleted = true
        log(`iscsi: deleted the SCSI disk ${d} of session ${s.sid}; the kernel's session ${s.sid} remains (no iscsid to log it out)`)
      } catch (err) {
        log(`iscsi: cannot delete ${d}: ${(err as Error).message}`)
      }
    }
  }
  return deleted ? 'disk-deleted' : 'left'
}

/** A LUN with nothing readable: every read fails as an unreadable area (never made-up zeros). */
class NothingReadable implements BlockSource {
  constructor(
    readonly size: number,
    readonly sectorSize: number,
  ) {}
  async read(offset: number, length: number): Promise<ReadResult> {
    return {data: Buffer.alloc(length), bad: length ? [{offset, length, status: 'non-tried'}] : []}
  }
  async close(): Promise<void> {}
}

/** The target a dead server's session reconnects to, so that it can be logged out. */
function startStandIn(targetName: string, port: number, size: number, sectorSize: number): Promise<RunningIscsiTarget> {
  const ss = [512, 1024, 2048, 4096].includes(sectorSize) ? sectorSize : 512
  const bytes = Number.isSafeInteger(size) && size > 0 ? size : ss
  const server = new BlockServer(new NothingReadable(bytes, ss))
  const identity = imageIdentity(server, targetName)
  return startIscsiServer(server, {listen: {kind: 'tcp', host: '127.0.0.1', port}, image: targetName, identity: {...identity, iqn: targetName}, threads: 0})
}

/** An iscsid whose pid file names a live process. */
function iscsidRunning(): boolean {
  try {
    const pid = Number(fs.readFileSync('/run/iscsid.pid', 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 && processAlive(pid)
  } catch {
    return false
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

export const backend: Backend = {
  name: 'iscsi',
  platform: 'linux',
  description: "the kernel's iSCSI initiator (/dev/sdX) logged in with iscsistart to vdev's iSCSI target on 127.0.0.1 (needs iscsi_tcp, open-iscsi)",
  preference: 2,
  /**
   * The kernel makes one session of one connection, and the target serves a connection's full-feature
   * phase on one serving thread; the second thread takes the session iscsid reinstates when it adopts it
   * for the logout (the old connection's thread may not be free yet).
   */
  threadModel: {kind: 'serving-threads', defaultThreads: 2, maxThreads: 8, pollMicroseconds: 0},

  async probe(): Promise<Probe> {
    return probeSync()
  },

  async attach(server: BlockServer, ctx: AttachContext): Promise<AttachedDevice> {
    const iscsistart = findTool('iscsistart')
    if (!iscsistart) throw new VdevError('unavailable', 'iscsi: iscsistart is not installed (Debian: open-iscsi)')
    fs.mkdirSync(LOCK_DIR, {recursive: true})
    // The image's NAA identifier and serial (VPD 0x83/0x80), under a target name of this attach alone.
    const identity = imageIdentity(server, ctx.image)
    const targetName = `${IQN_PREFIX}:attach.${ctx.id.toLowerCase().replace(/[^a-z0-9.-]+/g, '-')}.${crypto.randomBytes(4).toString('hex')}`
    const target: RunningIscsiTarget = await startIscsiServer(server, {
      listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
      image: ctx.image,
      identity: {...identity, iqn: targetName},
      threads: ctx.threads,
      log: ctx.log,
    })
    const port = target.address.port
    ctx.log(`iscsi: target ${targetName} on 127.0.0.1:${port}, ${target.threads ? `${target.threads} serving threads` : 'served on the main thread'}`)
    let found: {session: IscsiSessionInfo; disk: string} | undefined
    try {
      const login = await runTool(iscsistart, ['-i', INITIATOR_IQN, '-t', targetName, '-g', '1', '-a', '127.0.0.1', '-p', String(port)], 120_000)
      if (login.code !== 0) throw new VdevError('io', `iscsi: iscsistart failed (exit ${login.code}): ${login.output.split('\n').slice(-2).join(' / ')}`)
      found = await waitForDisk(targetName, 60_000)
      if (!found) throw new VdevError('timeout', `iscsi: no SCSI disk appeared for the session with ${targetName} within 60 s`)
    } catch (err) {
      await logoutTarget(targetName, ctx.log).catch(() => undefined)
      await target.close()
      throw err
    }
    const {session, disk} = found
    const device = `/dev/${disk}`
    const partitions = await scanPartitions(disk)
    ctx.log(`iscsi: session ${session.sid} → ${device} (${diskBytes(disk)} bytes, read-only)`)
    const state: IscsiBackendState = {device, targetName, port, sid: session.sid, serverPid: process.pid, size: server.size, sectorSize: server.sectorSize}
    let detaching: Promise<void> | undefined
    return {
      device,
      partitions,
      state,
      detach: () =>
        (detaching ??= (async () => {
          const how = await logoutTarget(targetName, ctx.log)
          await target.close()
          const t = server.stats
          ctx.log(`iscsi: ${device}: served ${t.reads} reads, ${t.bytes} bytes, ${t.errors} errors (${t.badReads} touching bad areas)`)
          ctx.log(`iscsi: ${device} detached (${how})`)
        })()),
    }
  },

  async cleanup(state: Record<string, unknown>, log: (line: string) => void): Promise<void> {
    const targetName = state.targetName
    if (typeof targetName !== 'string' || !targetName.startsWith(`${IQN_PREFIX}:attach.`)) return
    const pid = Number(state.serverPid)
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid) && sessionsOf(targetName).some((s) => s.state === 'LOGGED_IN')) {
      log(`iscsi: the target of ${String(state.device)} (pid ${pid}) still runs; not touching its session`)
      return
    }
    if (sessionsOf(targetName).length === 0) return
    // A session whose target died cannot be logged out: iscsid refuses while it tries to reconnect. So a
    // stand-in target answers on the same port under the same name (every read of it fails, it has no
    // data), the session reconnects to it, and is logged out. Its disk is deleted first, so nothing reads it.
    for (const s of sessionsOf(targetName))
      for (const d of s.disks) {
        try {
          fs.writeFileSync(`/sys/block/${d}/device/delete`, '1')
          log(`iscsi: deleted the SCSI disk ${d} of session ${s.sid} (its server is gone)`)
        } catch (err) {
          log(`iscsi: cannot delete ${d}: ${(err as Error).message}`)
        }
      }
    let standIn: RunningIscsiTarget | undefined
    const port = Number(state.port)
    if (Number.isInteger(port) && port > 0 && port < 65536) {
      try {
        standIn = await startStandIn(targetName, port, Number(state.size), Number(state.sectorSize))
        log(`iscsi: a stand-in target ${targetName} on 127.0.0.1:${port} for the logout`)
      } catch (err) {
        log(`iscsi: no stand-in target on 127.0.0.1:${port}: ${(err as Error).message}`)
      }
    }
    let how: Awaited<ReturnType<typeof logoutTarget>>
    try {
      how = await logoutTarget(targetName, log)
    } finally {
      await standIn?.close()
    }
    if (how !== 'none') log(`iscsi: ${String(state.device)}: the session its dead server left is ${how === 'logged-out' ? 'logged out' : how === 'disk-deleted' ? 'gone as a disk (its kernel session remains)' : 'still there'}`)
  },
}

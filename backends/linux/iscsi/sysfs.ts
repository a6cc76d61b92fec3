/**
 * What sysfs tells about the kernel's iSCSI sessions (drivers/scsi/scsi_transport_iscsi.c): each session is
 * /sys/class/iscsi_session/sessionN (N = the session id iscsiadm's `-r` takes) with its `targetname` and
 * `state`; its SCSI disks hang below its device: sessionN/device/targetH:C:T/H:C:T:L/block/sdX. Partitions
 * are /sys/block/sdX/sdXK. No FFI: safe to load anywhere.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'

export const ISCSI_SESSIONS = '/sys/class/iscsi_session'
export const SYS_BLOCK = '/sys/block'

export interface IscsiSessionInfo {
  sid: number
  targetName: string
  state: string
  /** sd disks of the session, by kernel name (sdb …). */
  disks: string[]
}

function readText(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

function list(dir: string): string[] {
  try {
    return fs.readdirSync(dir)
  } catch {
    return []
  }
}

/** The block devices below a session's device: targetH:C:T/H:C:T:L/block/<name>. */
export function sessionDisks(sid: number, root = ISCSI_SESSIONS): string[] {
  const dev = path.join(root, `session${sid}`, 'device')
  const out: string[] = []
  for (const t of list(dev).filter((n) => n.startsWith('target'))) {
    for (const lun of list(path.join(dev, t)).filter((n) => /^\d+:\d+:\d+:\d+$/.test(n))) {
      out.push(...list(path.join(dev, t, lun, 'block')))
    }
  }
  return out.sort()
}

export function listSessions(root = ISCSI_SESSIONS): IscsiSessionInfo[] {
  return list(root)
    .map((n) => /^session(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => {
      const sid = Number(m[1])
      const dir = path.join(root, m[0])
      return {sid, targetName: readText(path.join(dir, 'targetname')) ?? '', state: readText(path.join(dir, 'state')) ?? '', disks: sessionDisks(sid, root)}
    })
    .sort((a, b) => a.sid - b.sid)
}

/** Sessions logged in to a target name (a per-attach IQN names exactly one attach). */
export function sessionsOf(targetName: string, root = ISCSI_SESSIONS): IscsiSessionInfo[] {
  return listSessions(root).filter((s) => s.targetName === targetName)
}

/** Size of a block device in bytes (sysfs `size` counts 512-byte sectors). */
export function diskBytes(name: string, root = SYS_BLOCK): number {
  return Number(readText(path.join(root, name, 'size')) ?? 0) * 512
}

/** Partition device nodes of /dev/sdX, in order. */
export function diskPartitions(name: string, root = SYS_BLOCK): string[] {
  return list(path.join(root, name))
    .map((n) => new RegExp(`^${name}(\\d+)$`).exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .sort((a, b) => Number(a[1]) - Number(b[1]))
    .map((m) => `/dev/${m[0]}`)
}

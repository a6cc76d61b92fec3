/**
 * Is a block device (or one of its partitions) in use? Checked the way a careful admin would: mounts
 * (/proc/self/mountinfo, by device number), holders in sysfs (device-mapper, md), swap, and open file
 * descriptors of every process (/proc/<pid>/fd). Only readlink/readFile: nothing here opens the device
 * or touches a possibly hung file system.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {readMountinfo} from '../sys/mountinfo'

interface BlockNode {
  name: string
  /** "major:minor" */
  dev: string
  sysDir: string
}

function readTrim(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** The disk and its partitions as sysfs sees them now. */
export function blockNodes(device: string): BlockNode[] {
  const name = path.basename(device)
  const sysDir = `/sys/block/${name}`
  const out: BlockNode[] = []
  const dev = readTrim(`${sysDir}/dev`)
  if (!dev) return out
  out.push({name, dev, sysDir})
  let entries: string[] = []
  try {
    entries = fs.readdirSync(sysDir)
  } catch {
    // gone meanwhile
  }
  for (const e of entries) {
    if (!e.startsWith(name)) continue
    const pdev = readTrim(`${sysDir}/${e}/dev`)
    if (pdev) out.push({name: e, dev: pdev, sysDir: `${sysDir}/${e}`})
  }
  return out
}

/**
 * Human-readable reasons why `device` is busy; empty when it is not. `ignorePids`: processes whose open
 * descriptors do not count — the device's own server (the NBD backend holds /dev/nbdN open by design).
 */
export function busyReasons(device: string, ignorePids: number[] = []): string[] {
  const nodes = blockNodes(device)
  if (nodes.length === 0) return []
  const reasons: string[] = []
  const byDev = new Map(nodes.map((n) => [n.dev, n]))
  const byPath = new Map(nodes.flatMap((n) => [[`/dev/${n.name}`, n], [`/dev/block/${n.dev}`, n]] as Array<[string, BlockNode]>))

  for (const m of readMountinfo()) {
    const n = byDev.get(`${m.major}:${m.minor}`)
    if (n) reasons.push(`/dev/${n.name} is mounted on ${m.mountpoint}`)
  }
  for (const n of nodes) {
    let holders: string[] = []
    try {
      holders = fs.readdirSync(`${n.sysDir}/holders`)
    } catch {
      // no holders directory
    }
    for (const h of holders) reasons.push(`/dev/${n.name} is held by ${h}`)
  }
  const swaps = readTrim('/proc/swaps')?.split('\n').slice(1) ?? []
  for (const line of swaps) {
    const n = byPath.get(line.split(/\s+/)[0])
    if (n) reasons.push(`/dev/${n.name} is in use as swap`)
  }
  let pids: string[] = []
  try {
    pids = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid && !ignorePids.includes(Number(p)))
  } catch {
    // no /proc
  }
  for (const pid of pids) {
    let fds: string[]
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`)
    } catch {
      continue
    }
    for (const fd of fds) {
      let target: string
      try {
        target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`)
      } catch {
        continue
      }
      const n = byPath.get(target)
      if (!n) continue
      const comm = readTrim(`/proc/${pid}/comm`) ?? '?'
      reasons.push(`/dev/${n.name} is open by process ${pid} (${comm})`)
      break
    }
  }
  return reasons
}

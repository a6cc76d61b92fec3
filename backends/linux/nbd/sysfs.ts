/**
 * What /sys/block tells about NBD devices (drivers/block/nbd.c): `nbdN/pid` exists while a task sits in
 * NBD_DO_IT (its thread id), `nbdN/size` is the capacity in 512-byte sectors (0 when unconfigured), and
 * partitions appear as `nbdN/nbdNpK`. No FFI: safe to load anywhere.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'

export const SYS_BLOCK = '/sys/block'

export interface NbdSysState {
  index: number
  device: string
  /** Thread id of the task in NBD_DO_IT, when connected. */
  pid?: number
  sizeBytes: number
}

function readNumber(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim())
    return Number.isFinite(n) ? n : undefined
  } catch {
    return undefined
  }
}

export function nbdState(index: number, root = SYS_BLOCK): NbdSysState {
  const dir = path.join(root, `nbd${index}`)
  return {
    index,
    device: `/dev/nbd${index}`,
    pid: readNumber(path.join(dir, 'pid')),
    sizeBytes: (readNumber(path.join(dir, 'size')) ?? 0) * 512,
  }
}

/** Every nbdN under /sys/block, by index. */
export function listNbd(root = SYS_BLOCK): NbdSysState[] {
  let names: string[]
  try {
    names = fs.readdirSync(root)
  } catch {
    return []
  }
  return names
    .map((n) => /^nbd(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => nbdState(Number(m[1]), root))
    .sort((a, b) => a.index - b.index)
}

/** Devices nobody is serving: no NBD_DO_IT task and no size. */
export function freeNbd(root = SYS_BLOCK): NbdSysState[] {
  return listNbd(root).filter((s) => s.pid === undefined && s.sizeBytes === 0)
}

/** Partition device nodes of /dev/nbdN, in order. */
export function nbdPartitions(index: number, root = SYS_BLOCK): string[] {
  const name = `nbd${index}`
  try {
    return fs
      .readdirSync(path.join(root, name))
      .map((n) => new RegExp(`^${name}p(\\d+)$`).exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .sort((a, b) => Number(a[1]) - Number(b[1]))
      .map((m) => `/dev/${m[0]}`)
  } catch {
    return []
  }
}

/** The thread group (process) of a thread id, from /proc/TID/status; undefined if it does not exist. */
export function threadGroupOf(tid: number): number | undefined {
  try {
    const m = /^Tgid:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/${tid}/status`, 'utf8'))
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

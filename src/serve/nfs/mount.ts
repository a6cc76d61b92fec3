/**
 * The MOUNT protocol, program 100005 version 3 (RFC 1813 §5.0 and Appendix I). It hands out the root file
 * handle of our single export and keeps the list DUMP reports. Only loopback peers may mount.
 */
import {printable} from '../printable'
import {AuthFlavor, PROC_UNAVAIL, type CallContext, type ProcOutcome, type RpcCall, type RpcProgram} from './rpc'
import {XdrWriter} from './xdr'
import type {ExportTree} from './export'

/** RFC 1813 §5.0: MOUNT_PROGRAM 100005, MOUNT_V3 3. */
export const MOUNT_PROG = 100005
export const MOUNT_V3 = 3

/** RFC 1813 §5.0 limits: MNTPATHLEN 1024, MNTNAMLEN 255. */
export const MNTPATHLEN = 1024
export const MNTNAMLEN = 255

/** RFC 1813 §5.0 procedures. */
export const MountProc = {NULL: 0, MNT: 1, DUMP: 2, UMNT: 3, UMNTALL: 4, EXPORT: 5} as const

/** RFC 1813 §5.1.5 mountstat3. */
export const MountStat = {
  MNT3_OK: 0,
  MNT3ERR_PERM: 1,
  MNT3ERR_NOENT: 2,
  MNT3ERR_IO: 5,
  MNT3ERR_ACCES: 13,
  MNT3ERR_NOTDIR: 20,
  MNT3ERR_INVAL: 22,
  MNT3ERR_NAMETOOLONG: 63,
  MNT3ERR_NOTSUPP: 10004,
  MNT3ERR_SERVERFAULT: 10006,
} as const

/** "/" stays "/"; "//x/" becomes "/x". A relative path (e.g. "") is left alone: it names no export. */
export function normalizeDirpath(p: string): string {
  if (!p.startsWith('/')) return p
  const s = p.replace(/\/+/g, '/')
  return s.length > 1 && s.endsWith('/') ? s.slice(0, -1) : s
}

export class MountProgram implements RpcProgram {
  readonly prog = MOUNT_PROG
  readonly name = 'mount'
  readonly low = MOUNT_V3
  readonly high = MOUNT_V3
  /** host → mounted directories, for DUMP (RFC 1813 §5.2.2). */
  private readonly mounts = new Map<string, Set<string>>()

  constructor(private readonly tree: ExportTree) {}

  dispatch(call: RpcCall, ctx: CallContext): ProcOutcome {
    const a = call.args
    switch (call.proc) {
      case MountProc.NULL:
        return new XdrWriter()
      case MountProc.MNT: {
        const dir = a.string(MNTPATHLEN, 'dirpath')
        const w = new XdrWriter()
        if (!ctx.trusted) {
          ctx.log(`nfs: refused MNT of ${printable(dir)} from non-loopback peer ${ctx.peer}`)
          return w.uint32(MountStat.MNT3ERR_ACCES)
        }
        if (normalizeDirpath(dir) !== normalizeDirpath(this.tree.exportName)) return w.uint32(MountStat.MNT3ERR_NOENT)
        let set = this.mounts.get(ctx.peer)
        if (!set) this.mounts.set(ctx.peer, (set = new Set()))
        set.add(normalizeDirpath(dir))
        // mountres3_ok: fhandle3 and the flavors the server accepts (RFC 1813 §5.2.1).
        return w.uint32(MountStat.MNT3_OK).opaque(this.tree.root.handle).uint32(1).uint32(AuthFlavor.AUTH_SYS)
      }
      case MountProc.DUMP: {
        const w = new XdrWriter()
        for (const [host, dirs] of this.mounts)
          for (const d of dirs) w.bool(true).string(host.slice(0, MNTNAMLEN)).string(d)
        return w.bool(false)
      }
      case MountProc.UMNT: {
        const dir = a.string(MNTPATHLEN, 'dirpath')
        const set = this.mounts.get(ctx.peer)
        set?.delete(normalizeDirpath(dir))
        if (set && set.size === 0) this.mounts.delete(ctx.peer)
        return new XdrWriter()
      }
      case MountProc.UMNTALL:
        this.mounts.delete(ctx.peer)
        return new XdrWriter()
      case MountProc.EXPORT:
        // exports: one exportnode whose groups name the only clients we serve (RFC 1813 §5.2.5).
        return new XdrWriter()
          .bool(true)
          .string(this.tree.exportName)
          .bool(true)
          .string('127.0.0.1')
          .bool(false) // end of groups
          .bool(false) // end of exports
      default:
        return PROC_UNAVAIL
    }
  }
}

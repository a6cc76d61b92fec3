/**
 * The exported tree: a read-only root directory holding one regular file, the decoded image (read-only, or
 * read-write over a copy-on-write overlay: then mode 0644 and times that move with every write). File handles
 * and the file system id are derived from the image identity (never from the process), so a client that
 * kept a handle across a server restart finds the same objects again, and a handle for another image is
 * answered NFS3ERR_STALE instead of silently reading different data.
 */
import {createHash} from 'node:crypto'
import type {XdrWriter} from './xdr'

/** RFC 1813 §2.4 (nfs_fh3): file handles are opaque<NFS3_FHSIZE>. */
export const NFS3_FHSIZE = 64

/** RFC 1813 §2.3.5 ftype3. */
export const Ftype3 = {NF3REG: 1, NF3DIR: 2, NF3BLK: 3, NF3CHR: 4, NF3LNK: 5, NF3SOCK: 6, NF3FIFO: 7} as const

/** Our handle layout: magic (4) + identity digest (16) + fileid (4). Not an RFC structure: handles are opaque. */
const HANDLE_MAGIC = Buffer.from('vdv1', 'latin1')
const HANDLE_DIGEST_BYTES = 16
export const HANDLE_BYTES = HANDLE_MAGIC.length + HANDLE_DIGEST_BYTES + 4

/** fileids: 1 is the root directory, 2 the image file. Zero is avoided; some clients treat it as "none". */
export const ROOT_FILEID = 1
export const IMAGE_FILEID = 2

export type NodeKind = 'dir' | 'file'

export interface ExportNode {
  kind: NodeKind
  fileid: number
  handle: Buffer
}

export type HandleLookup = {ok: true; node: ExportNode} | {ok: false; why: 'badhandle' | 'stale'}

export interface ExportOptions {
  exportName: string
  fileName: string
  size: number
  /** What makes the image itself: e.g. its absolute path and size. Handles are derived from it. */
  identity: string
  /** Reported as atime/mtime/ctime of both objects (the file's move on as it is written). */
  mtime: Date
  /** The file takes writes (an overlay): mode 0644 instead of 0444. */
  writable?: boolean
  /**
   * The file's times, shared with the other serving threads' trees (FileTimes.create); without it this tree
   * keeps its own, starting at `mtime`.
   */
  times?: SharedArrayBuffer
}

/**
 * The file's atime, mtime and ctime in shared memory, so that every serving thread's tree reports (and moves
 * on) the same times: a WRITE served on one thread changes what GETATTR answers on another. A spin lock
 * guards them (the critical sections are a few loads and stores; Atomics.wait would need a blocked main thread).
 */
export class FileTimes {
  private readonly lock: Int32Array
  private readonly v: Float64Array

  private constructor(readonly buffer: SharedArrayBuffer) {
    this.lock = new Int32Array(buffer, 0, 2)
    this.v = new Float64Array(buffer, 8, 6)
  }

  static create(start: NfsTime): SharedArrayBuffer {
    const t = new FileTimes(new SharedArrayBuffer(8 + 6 * 8))
    t.v.set([start.seconds, start.nseconds, start.seconds, start.nseconds, start.seconds, start.nseconds])
    return t.buffer
  }

  static over(buffer: SharedArrayBuffer): FileTimes {
    return new FileTimes(buffer)
  }

  /** Run `f` on the times under the lock; what it returns replaces them. */
  update(f: (t: {atime: NfsTime; mtime: NfsTime; ctime: NfsTime}) => {atime: NfsTime; mtime: NfsTime; ctime: NfsTime} | undefined): {atime: NfsTime; mtime: NfsTime; ctime: NfsTime} {
    while (Atomics.compareExchange(this.lock, 0, 0, 1) !== 0);
    try {
      const v = this.v
      const now = {atime: {seconds: v[0], nseconds: v[1]}, mtime: {seconds: v[2], nseconds: v[3]}, ctime: {seconds: v[4], nseconds: v[5]}}
      const next = f(now)
      if (!next) return now
      v.set([next.atime.seconds, next.atime.nseconds, next.mtime.seconds, next.mtime.nseconds, next.ctime.seconds, next.ctime.nseconds])
      return next
    } finally {
      Atomics.store(this.lock, 0, 0)
    }
  }
}

/** RFC 1813 §2.5 nfstime3. */
export interface NfsTime {
  seconds: number
  nseconds: number
}

function toNfsTime(ms: number): NfsTime {
  return {seconds: Math.max(0, Math.floor(ms / 1000)), nseconds: Math.max(0, Math.floor((ms % 1000) * 1e6))}
}

function timeLess(a: NfsTime, b: NfsTime): boolean {
  return a.seconds < b.seconds || (a.seconds === b.seconds && a.nseconds < b.nseconds)
}

/** Now, but later than the file's ctime and mtime. */
function nextTime(times: {mtime: NfsTime; ctime: NfsTime}): NfsTime {
  let t = toNfsTime(Date.now())
  for (const last of [times.ctime, times.mtime])
    if (!timeLess(last, t)) t = last.nseconds >= 999999999 ? {seconds: last.seconds + 1, nseconds: 0} : {seconds: last.seconds, nseconds: last.nseconds + 1}
  return t
}

export class ExportTree {
  readonly exportName: string
  readonly fileName: string
  readonly size: number
  readonly root: ExportNode
  readonly file: ExportNode
  /** 64-bit file system id (fattr3.fsid), derived from the identity. */
  readonly fsid: bigint
  /** READDIR cookie verifier: constant for this identity (the directory never changes). */
  readonly cookieVerf: Buffer
  readonly writable: boolean
  private readonly digest: Buffer
  /** The directory's times: fixed. */
  private readonly dirTime: NfsTime
  /** The file's times: kept in memory only (shared by the serving threads), they start at `mtime` and move on with each change. */
  private readonly times: FileTimes

  constructor(opts: ExportOptions) {
    this.exportName = opts.exportName
    this.fileName = opts.fileName
    this.size = opts.size
    const h = createHash('sha256').update('vdev-nfs-export\0').update(opts.identity).digest()
    this.digest = h.subarray(0, HANDLE_DIGEST_BYTES)
    this.fsid = h.readBigUInt64BE(16)
    this.cookieVerf = h.subarray(24, 32)
    this.root = {kind: 'dir', fileid: ROOT_FILEID, handle: this.makeHandle(ROOT_FILEID)}
    this.file = {kind: 'file', fileid: IMAGE_FILEID, handle: this.makeHandle(IMAGE_FILEID)}
    this.writable = opts.writable === true
    this.dirTime = toNfsTime(opts.mtime.getTime())
    this.times = FileTimes.over(opts.times ?? FileTimes.create(this.dirTime))
  }

  /** The shared memory of the file's times (for the serving threads' trees: ExportOptions.times). */
  get timesBuffer(): SharedArrayBuffer {
    return this.times.buffer
  }

  /** The file's times, read together (one consistent set while other threads write). */
  get fileTimes(): {atime: NfsTime; mtime: NfsTime; ctime: NfsTime} {
    return this.times.update(() => undefined)
  }

  /** The file's mtime and ctime. */
  get fileMtime(): NfsTime {
    return this.fileTimes.mtime
  }
  get fileCtime(): NfsTime {
    return this.fileTimes.ctime
  }

  /**
   * The file's data changed (a WRITE): mtime and ctime become now, and always move forward (at least one
   * nanosecond), so a client comparing them (close-to-open, wcc_data) sees every change.
   */
  touchData(): void {
    this.times.update((now) => {
      const t = nextTime(now)
      return {...now, mtime: t, ctime: t}
    })
  }

  /** SETATTR of atime and/or mtime (kept in memory only); ctime moves on. */
  setTimes(atime: NfsTime | undefined, mtime: NfsTime | undefined): void {
    this.times.update((now) => ({atime: atime ?? now.atime, mtime: mtime ?? now.mtime, ctime: nextTime(now)}))
  }

  private makeHandle(fileid: number): Buffer {
    const b = Buffer.alloc(HANDLE_BYTES)
    HANDLE_MAGIC.copy(b, 0)
    this.digest.copy(b, HANDLE_MAGIC.length)
    b.writeUInt32BE(fileid, HANDLE_MAGIC.length + HANDLE_DIGEST_BYTES)
    return b
  }

  /** Map a client's handle to a node: malformed → badhandle, another image's or unknown → stale. */
  lookupHandle(fh: Buffer): HandleLookup {
    if (fh.length !== HANDLE_BYTES || !fh.subarray(0, HANDLE_MAGIC.length).equals(HANDLE_MAGIC))
      return {ok: false, why: 'badhandle'}
    if (!fh.subarray(HANDLE_MAGIC.length, HANDLE_MAGIC.length + HANDLE_DIGEST_BYTES).equals(this.digest))
      return {ok: false, why: 'stale'}
    const fileid = fh.readUInt32BE(HANDLE_MAGIC.length + HANDLE_DIGEST_BYTES)
    if (fileid === ROOT_FILEID) return {ok: true, node: this.root}
    if (fileid === IMAGE_FILEID) return {ok: true, node: this.file}
    return {ok: false, why: 'stale'}
  }

  /** Directory entries in READDIR order; a cookie is the index of the entry after it. */
  entries(): Array<{name: string; node: ExportNode}> {
    return [
      {name: '.', node: this.root},
      {name: '..', node: this.root},
      {name: this.fileName, node: this.file},
    ]
  }

  /** Name lookup inside the root. */
  child(name: string): ExportNode | undefined {
    if (name === '.' || name === '..') return this.root
    if (name === this.fileName) return this.file
    return undefined
  }

  /** RFC 1813 §2.6 fattr3. */
  writeFattr3(w: XdrWriter, node: ExportNode): void {
    const isDir = node.kind === 'dir'
    const size = isDir ? 4096 : this.size
    w.uint32(isDir ? Ftype3.NF3DIR : Ftype3.NF3REG)
    w.uint32(isDir ? 0o555 : this.writable ? 0o644 : 0o444) // mode: read (and search) for everyone; write only over an overlay
    w.uint32(isDir ? 2 : 1) // nlink
    w.uint32(0) // uid
    w.uint32(0) // gid
    w.uint64(size) // size
    w.uint64(size) // used
    w.uint32(0).uint32(0) // rdev (specdata3)
    w.uint64(this.fsid)
    w.uint64(node.fileid)
    const t = isDir ? {atime: this.dirTime, mtime: this.dirTime, ctime: this.dirTime} : this.fileTimes
    for (const x of [t.atime, t.mtime, t.ctime]) w.uint32(x.seconds).uint32(x.nseconds)
  }

  /** RFC 1813 §2.6 pre_op_attr of the file: wcc_attr (size, mtime, ctime) as it is now. */
  writePreOpAttr(w: XdrWriter, before: {mtime: NfsTime; ctime: NfsTime}): void {
    w.bool(true).uint64(this.size)
    w.uint32(before.mtime.seconds).uint32(before.mtime.nseconds)
    w.uint32(before.ctime.seconds).uint32(before.ctime.nseconds)
  }

  /** RFC 1813 §2.6 post_op_attr with attributes present. */
  writePostOpAttr(w: XdrWriter, node: ExportNode | undefined): void {
    if (!node) {
      w.bool(false)
      return
    }
    w.bool(true)
    this.writeFattr3(w, node)
  }
}

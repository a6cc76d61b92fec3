/**
 * The file system the FUSE session serves: a read-only root directory holding one regular file whose
 * bytes are the BlockServer's (the decoded image). Over a read-only server, writes of any kind get EROFS.
 * Over a writable one (an overlay: `attach --overlay`) the file takes WRITE, FSYNC and the fallocate(2)
 * modes the loop driver sends for discard (PUNCH_HOLE) and write-zeroes (ZERO_RANGE); its size is fixed
 * and the tree's names cannot change (EPERM). Operations a single-file tree does not need get ENOSYS,
 * which tells the kernel not to ask again.
 */
import {errnoOf, type BlockServer} from '../../../src/core/blockserver'
import {ERRNO} from '../../../src/sys/errno'
import {
  DT_DIR,
  DT_REG,
  FOPEN_KEEP_CACHE,
  FUSE_ROOT_ID,
  FuseOpcode,
  S_IFDIR,
  S_IFREG,
  encodeDirent,
  fuse_attr_out,
  fuse_entry_out,
  fuse_open_in,
  fuse_open_out,
  fuse_read_in,
  fuse_statfs_out,
  fuse_fallocate_in,
  fuse_fsync_in,
  fuse_setattr_in,
  fuse_write_in,
  fuse_write_out,
  FATTR_SIZE,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
} from './abi'
import type {FuseReply, FuseRequest} from './protocol'

export const FILE_ID = 2
/** The image never changes while served: let the kernel cache names and attributes for a day. */
const VALID_SECONDS = 86400
const O_ACCMODE = 3
const O_RDONLY = 0
const READ_IN_OFFSET = fuse_read_in.offsets.offset
const READ_IN_SIZE = fuse_read_in.offsets.size

export interface ImageFsOptions {
  /** Name of the file in the root directory. */
  fileName?: string
  /** Times reported for both nodes (seconds since the epoch). */
  mtime?: number
  /** Largest READ accepted (bytes); anything larger is refused, never allocated. */
  maxRead?: number
}

export class ImageFs {
  readonly fileName: string
  private readonly mtime: number
  private nextFh = 1
  private readonly maxRead: number
  /** The server takes writes (an overlay): the file is writable. */
  private readonly writable: boolean

  constructor(
    private readonly server: BlockServer,
    opts: ImageFsOptions = {},
  ) {
    this.fileName = opts.fileName ?? 'disk'
    this.mtime = Math.floor(opts.mtime ?? Date.now() / 1000)
    this.maxRead = opts.maxRead ?? 1 << 20
    this.writable = server.writable
  }

  private attr(nodeid: number): Record<string, number> | undefined {
    const t = this.mtime
    const times = {atime: t, mtime: t, ctime: t}
    if (nodeid === FUSE_ROOT_ID) return {ino: 1, mode: S_IFDIR | 0o555, nlink: 2, size: 0, blocks: 0, blksize: 4096, ...times}
    if (nodeid === FILE_ID) {
      const size = this.server.size
      return {ino: FILE_ID, mode: S_IFREG | (this.writable ? 0o644 : 0o444), nlink: 1, size, blocks: Math.ceil(size / 512), blksize: 128 * 1024, ...times}
    }
    return undefined
  }

  /** The FuseHandler: one request in, one reply out. */
  readonly handle = (req: FuseRequest): FuseReply | Promise<FuseReply> => {
    switch (req.opcode) {
      case FuseOpcode.LOOKUP: {
        if (req.nodeid !== FUSE_ROOT_ID) return ERRNO.ENOTDIR
        const nul = req.body.indexOf(0)
        const name = req.body.subarray(0, nul < 0 ? req.body.length : nul).toString()
        if (name !== this.fileName) return ERRNO.ENOENT
        return [fuse_entry_out.encode({nodeid: FILE_ID, generation: 1, entry_valid: VALID_SECONDS, attr_valid: VALID_SECONDS, attr: this.attr(FILE_ID)})]
      }
      case FuseOpcode.GETATTR: {
        const attr = this.attr(req.nodeid)
        if (!attr) return ERRNO.ENOENT
        return [fuse_attr_out.encode({attr_valid: VALID_SECONDS, attr})]
      }
      case FuseOpcode.OPEN: {
        if (req.nodeid === FUSE_ROOT_ID) return ERRNO.EISDIR
        if (req.nodeid !== FILE_ID) return ERRNO.ENOENT
        if (req.body.length < fuse_open_in.size) return ERRNO.EINVAL
        const {flags} = fuse_open_in.decode(req.body)
        if ((flags & O_ACCMODE) !== O_RDONLY && !this.writable) return ERRNO.EROFS
        // The bytes change only through this mount, which keeps the page cache up to date: keep it across opens.
        return [fuse_open_out.encode({fh: this.nextFh++, open_flags: FOPEN_KEEP_CACHE})]
      }
      case FuseOpcode.READ:
        return this.read(req)
      case FuseOpcode.OPENDIR:
        if (req.nodeid !== FUSE_ROOT_ID) return req.nodeid === FILE_ID ? ERRNO.ENOTDIR : ERRNO.ENOENT
        return [fuse_open_out.encode({fh: this.nextFh++, open_flags: 0})]
      case FuseOpcode.READDIR:
        return this.readdir(req)
      case FuseOpcode.STATFS:
        return [
          fuse_statfs_out.encode({
            st: {blocks: Math.ceil(this.server.size / 4096), bfree: 0, bavail: 0, files: 2, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096},
          }),
        ]
      case FuseOpcode.RELEASE:
      case FuseOpcode.RELEASEDIR:
      case FuseOpcode.FLUSH:
      case FuseOpcode.FSYNCDIR:
        return []
      case FuseOpcode.FSYNC:
        return this.writable ? this.fsync(req) : []
      case FuseOpcode.WRITE:
        return this.writable ? this.write(req) : ERRNO.EROFS
      case FuseOpcode.FALLOCATE:
        return this.writable ? this.fallocate(req) : ERRNO.EROFS
      case FuseOpcode.SETATTR:
        return this.writable ? this.setattr(req) : ERRNO.EROFS
      case FuseOpcode.CREATE:
      case FuseOpcode.MKNOD:
      case FuseOpcode.MKDIR:
      case FuseOpcode.UNLINK:
      case FuseOpcode.RMDIR:
      case FuseOpcode.RENAME:
      case FuseOpcode.RENAME2:
      case FuseOpcode.LINK:
      case FuseOpcode.SYMLINK:
      case FuseOpcode.SETXATTR:
      case FuseOpcode.REMOVEXATTR:
      case FuseOpcode.COPY_FILE_RANGE:
      case FuseOpcode.COPY_FILE_RANGE_64:
      case FuseOpcode.TMPFILE:
        // The tree is one fixed file: its names never change, writable or not.
        return this.writable ? ERRNO.EPERM : ERRNO.EROFS
      default:
        return ERRNO.ENOSYS
    }
  }

  private async read(req: FuseRequest): Promise<FuseReply> {
    if (req.nodeid !== FILE_ID) return req.nodeid === FUSE_ROOT_ID ? ERRNO.EISDIR : ERRNO.ENOENT
    if (req.body.length < fuse_read_in.size) return ERRNO.EINVAL
    const {offset, size} = fuse_read_in.decode(req.body)
    if (size > this.maxRead) return ERRNO.EINVAL
    const end = Math.min(offset + size, this.server.size)
    if (offset >= end) return [] // at or past the end: a short (empty) read
    try {
      return [await this.server.read(offset, end - offset)]
    } catch (err) {
      return errnoOf(err)
    }
  }

  /**
   * READ served synchronously (a FuseReadInto for serving threads over a source with readSync): the
   * bytes go straight into `dst`, the reply buffer. Same checks and errors as the asynchronous READ.
   */
  readonly readInto = (nodeid: number, body: Buffer, dst: Buffer): number => {
    if (nodeid !== FILE_ID) return -(nodeid === FUSE_ROOT_ID ? ERRNO.EISDIR : ERRNO.ENOENT)
    if (body.length < fuse_read_in.size) return -ERRNO.EINVAL
    const offset = body.readUInt32LE(READ_IN_OFFSET) + body.readUInt32LE(READ_IN_OFFSET + 4) * 2 ** 32
    const size = body.readUInt32LE(READ_IN_SIZE)
    if (size > this.maxRead || size > dst.length) return -ERRNO.EINVAL
    const end = Math.min(offset + size, this.server.size)
    if (offset >= end) return 0 // at or past the end: a short (empty) read
    try {
      this.server.readSync(offset, end - offset, dst)
      return end - offset
    } catch (err) {
      return -errnoOf(err)
    }
  }

  /** WRITE into the server's overlay; the file's size is the image's (a write past it: ENOSPC). */
  private async write(req: FuseRequest): Promise<FuseReply> {
    if (req.nodeid !== FILE_ID) return req.nodeid === FUSE_ROOT_ID ? ERRNO.EISDIR : ERRNO.ENOENT
    if (req.body.length < fuse_write_in.size) return ERRNO.EINVAL
    const {offset, size} = fuse_write_in.decode(req.body)
    if (size > req.body.length - fuse_write_in.size) return ERRNO.EINVAL
    if (offset + size > this.server.size) return ERRNO.ENOSPC
    try {
      await this.server.write(offset, req.body.subarray(fuse_write_in.size, fuse_write_in.size + size))
      return [fuse_write_out.encode({size, padding: 0})]
    } catch (err) {
      return errnoOf(err)
    }
  }

  /** fsync/fdatasync of the file (the loop device's flush): everything written so far reaches stable storage. */
  private async fsync(req: FuseRequest): Promise<FuseReply> {
    if (req.body.length < fuse_fsync_in.size) return ERRNO.EINVAL
    try {
      await this.server.flush()
      return []
    } catch (err) {
      return errnoOf(err)
    }
  }

  /**
   * fallocate(2): PUNCH_HOLE | KEEP_SIZE (the loop driver's discard) trims, ZERO_RANGE (its write-zeroes)
   * zeroes. Plain allocation cannot be promised (the overlay grows as it is written): EOPNOTSUPP, as file
   * systems without it answer, and the kernel then stops asking for it.
   */
  private async fallocate(req: FuseRequest): Promise<FuseReply> {
    if (req.nodeid !== FILE_ID) return req.nodeid === FUSE_ROOT_ID ? ERRNO.EISDIR : ERRNO.ENOENT
    if (req.body.length < fuse_fallocate_in.size) return ERRNO.EINVAL
    const {offset, length, mode} = fuse_fallocate_in.decode(req.body)
    const punch = (mode & FALLOC_FL_PUNCH_HOLE) !== 0
    const zero = (mode & FALLOC_FL_ZERO_RANGE) !== 0
    const keepSize = (mode & FALLOC_FL_KEEP_SIZE) !== 0
    const known = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
    if ((mode & ~known) !== 0 || punch === zero || (punch && !keepSize)) return ERRNO.EOPNOTSUPP
    if (!Number.isSafeInteger(offset + length) || length <= 0) return ERRNO.EINVAL
    let end = offset + length
    if (end > this.server.size) {
      // Past the end: with KEEP_SIZE the size stays (nothing to do there); growing the file is impossible.
      if (!keepSize) return ERRNO.ENOSPC
      end = this.server.size
    }
    if (offset >= end) return []
    try {
      if (punch) await this.server.trim(offset, end - offset)
      else await this.server.zero(offset, end - offset)
      return []
    } catch (err) {
      return errnoOf(err)
    }
  }

  /** SETATTR: the size is the image's and cannot change (EPERM); anything else (times, mode) is kept as it is. */
  private setattr(req: FuseRequest): FuseReply {
    const attr = this.attr(req.nodeid)
    if (!attr) return ERRNO.ENOENT
    if (req.body.length < fuse_setattr_in.size) return ERRNO.EINVAL
    const {valid, size} = fuse_setattr_in.decode(req.body)
    if (valid & FATTR_SIZE && (req.nodeid !== FILE_ID || size !== this.server.size)) return ERRNO.EPERM
    return [fuse_attr_out.encode({attr_valid: VALID_SECONDS, attr})]
  }

  private readdir(req: FuseRequest): FuseReply {
    if (req.nodeid !== FUSE_ROOT_ID) return req.nodeid === FILE_ID ? ERRNO.ENOTDIR : ERRNO.ENOENT
    if (req.body.length < fuse_read_in.size) return ERRNO.EINVAL
    const {offset, size} = fuse_read_in.decode(req.body)
    const entries: Array<[number, number, string]> = [
      [FUSE_ROOT_ID, DT_DIR, '.'],
      [FUSE_ROOT_ID, DT_DIR, '..'],
      [FILE_ID, DT_REG, this.fileName],
    ]
    const out: Buffer[] = []
    let used = 0
    // The offset is the index of the next entry; each dirent carries the offset of the one after it.
    for (let i = offset; i < entries.length; i++) {
      const [ino, type, name] = entries[i]
      const d = encodeDirent(ino, i + 1, type, name)
      if (used + d.length > size) break
      out.push(d)
      used += d.length
    }
    return out
  }
}

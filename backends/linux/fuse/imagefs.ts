/**
 * The file system the FUSE session serves: a read-only root directory holding one regular file whose
 * bytes are the BlockServer's (the decoded image). Writes of any kind get EROFS; operations a read-only
 * single-file tree does not need get ENOSYS, which tells the kernel not to ask again.
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

  constructor(
    private readonly server: BlockServer,
    opts: ImageFsOptions = {},
  ) {
    this.fileName = opts.fileName ?? 'disk'
    this.mtime = Math.floor(opts.mtime ?? Date.now() / 1000)
    this.maxRead = opts.maxRead ?? 1 << 20
  }

  private attr(nodeid: number): Record<string, number> | undefined {
    const t = this.mtime
    const times = {atime: t, mtime: t, ctime: t}
    if (nodeid === FUSE_ROOT_ID) return {ino: 1, mode: S_IFDIR | 0o555, nlink: 2, size: 0, blocks: 0, blksize: 4096, ...times}
    if (nodeid === FILE_ID) {
      const size = this.server.size
      return {ino: FILE_ID, mode: S_IFREG | 0o444, nlink: 1, size, blocks: Math.ceil(size / 512), blksize: 128 * 1024, ...times}
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
        if ((flags & O_ACCMODE) !== O_RDONLY) return ERRNO.EROFS
        // The bytes never change: keep whatever the page cache holds across opens.
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
      case FuseOpcode.FSYNC:
      case FuseOpcode.FSYNCDIR:
        return []
      case FuseOpcode.WRITE:
      case FuseOpcode.SETATTR:
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
      case FuseOpcode.FALLOCATE:
      case FuseOpcode.COPY_FILE_RANGE:
      case FuseOpcode.COPY_FILE_RANGE_64:
      case FuseOpcode.TMPFILE:
        return ERRNO.EROFS
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

/**
 * The answer to one transmission-phase request, shared by the main-thread connection (server.ts) and the
 * serving threads (thread.ts): the range checks, the errno of every refusal, and the encoding of
 * data, error and block status replies. Reading requests (and a write's payload) and writing replies are
 * the caller's; so are NBD_CMD_DISC and shutting down.
 * Spec: NetworkBlockDevice/nbd doc/proto.md ("Transmission phase", "Structured replies").
 */
import {BlockError, type BlockServer} from '../../core/blockserver'
import * as P from './protocol'

/** What the handshake negotiated for one connection. */
export interface Session {
  structured: boolean
  metaContext: boolean
}

/** The buffers of one reply, written in order as one unit. */
export type Reply = Buffer[]

/** At most this many descriptors in one block status reply (spec: SHOULD NOT send more than 2^20). */
const MAX_DESCRIPTORS = 16384
export const BASE_ALLOCATION_ID = 1

export class Responder {
  /** Serving threads: reads go through BlockServer.readSync into this buffer, reused for every reply. */
  private scratch: Buffer | undefined

  constructor(
    private readonly server: BlockServer,
    private readonly session: Session,
    private readonly opts: {sync: boolean; log: (line: string) => void; peer: string},
  ) {}

  /**
   * The reply to `req` (its payload, if any, already consumed), at once or when its read finishes. In sync
   * mode a read reply points into a buffer reused by the next call: write it before answering again.
   */
  answer(req: P.Request, payload?: Buffer): Reply | Promise<Reply> {
    switch (req.type) {
      case P.NBD_CMD_READ:
        return this.read(req)
      case P.NBD_CMD_WRITE:
      case P.NBD_CMD_TRIM:
      case P.NBD_CMD_WRITE_ZEROES:
        if (!this.server.writable) return this.error(req, P.NBD_EPERM, 'the export is read-only')
        return this.mutate(req, payload)
      case P.NBD_CMD_FLUSH:
        if (this.server.writable) return this.done(req, this.server.flush())
        return this.ok(req)
      case P.NBD_CMD_CACHE:
        return this.outOfRange(req) ?? this.ok(req)
      case P.NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(req)
      default:
        return this.error(req, P.NBD_EINVAL, `unknown command ${req.type}`)
    }
  }

  ok(req: P.Request): Reply {
    return [P.encodeSimpleReply(req.cookie, 0)]
  }

  error(req: P.Request, errno: number, message: string, offset?: number): Reply {
    if (this.session.structured) return [P.encodeErrorChunk(req.cookie, P.NBD_REPLY_FLAG_DONE, errno, message, offset)]
    return [P.encodeSimpleReply(req.cookie, errno)]
  }

  /** A write, write-zeroes or trim on a writable export (an overlay); FUA makes it durable before the reply. */
  private mutate(req: P.Request, payload: Buffer | undefined): Promise<Reply> {
    const fua = (req.flags & P.NBD_CMD_FLAG_FUA) !== 0
    const s = this.server
    if (req.type === P.NBD_CMD_WRITE) {
      if (!payload || payload.length !== req.length) return Promise.resolve(this.error(req, P.NBD_EINVAL, 'write without its payload'))
      return this.done(req, s.write(req.offset, payload, {fua}))
    }
    return this.done(req, req.type === P.NBD_CMD_TRIM ? s.trim(req.offset, req.length, {fua}) : s.zero(req.offset, req.length, {fua}))
  }

  private done(req: P.Request, p: Promise<void>): Promise<Reply> {
    return p.then(
      () => this.ok(req),
      (err: unknown) => {
        const e = err instanceof BlockError ? err : new BlockError('EIO', String((err as Error)?.message ?? err))
        this.opts.log(`nbd ${this.opts.peer}: command ${req.type} at ${req.offset} (${req.length} bytes) failed: ${e.message}`)
        return this.error(req, P.ERRNO_TO_NBD[e.errno] ?? P.NBD_EIO, e.message)
      },
    )
  }

  private outOfRange(req: P.Request): Reply | undefined {
    const size = this.server.size
    if (req.offset + req.length > size)
      return this.error(req, P.NBD_EINVAL, `request of ${req.length} bytes at ${req.offset} extends past the end (${size})`)
    return undefined
  }

  private read(req: P.Request): Reply | Promise<Reply> {
    if (req.length > P.MAX_PAYLOAD) return this.error(req, P.NBD_EINVAL, `read of ${req.length} bytes exceeds the ${P.MAX_PAYLOAD}-byte maximum`)
    const refused = this.outOfRange(req)
    if (refused) return refused
    if (this.opts.sync) {
      if (!this.scratch || this.scratch.length < req.length) this.scratch = Buffer.allocUnsafeSlow(Math.max(req.length, 256 * 1024))
      try {
        return this.data(req, this.server.readSync(req.offset, req.length, this.scratch))
      } catch (err) {
        return this.readError(req, err)
      }
    }
    return this.server.read(req.offset, req.length).then(
      (data) => this.data(req, data),
      (err: unknown) => this.readError(req, err),
    )
  }

  private data(req: P.Request, data: Buffer): Reply {
    if (!this.session.structured) return [P.encodeSimpleReply(req.cookie, 0), data]
    if (data.length === 0) return [P.encodeNoneChunk(req.cookie)]
    return [P.encodeOffsetDataHeader(req.cookie, P.NBD_REPLY_FLAG_DONE, req.offset, data.length), data]
  }

  private readError(req: P.Request, err: unknown): Reply {
    const e = err instanceof BlockError ? err : new BlockError('EIO', String((err as Error)?.message ?? err))
    const errno = P.ERRNO_TO_NBD[e.errno] ?? P.NBD_EIO
    // Name the first unreadable byte, rounded down to its sector, so the client knows where reading failed.
    let at: number | undefined
    if (e.errno === 'EIO' && e.bad.length > 0) {
      const sector = this.server.sectorSize
      at = Math.max(req.offset, Math.floor(e.bad[0].offset / sector) * sector)
    }
    return this.error(req, errno, e.message, at)
  }

  private blockStatus(req: P.Request): Reply | Promise<Reply> {
    if (!this.session.metaContext) return this.error(req, P.NBD_EINVAL, 'no metadata context was negotiated')
    if (req.length === 0) return this.error(req, P.NBD_EINVAL, 'block status of zero bytes')
    const refused = this.outOfRange(req)
    if (refused) return refused
    return this.extents(req.offset, req.length).then((descs) => {
      if (req.flags & P.NBD_CMD_FLAG_REQ_ONE) descs = descs.slice(0, 1)
      return [P.encodeBlockStatusChunk(req.cookie, P.NBD_REPLY_FLAG_DONE, BASE_ALLOCATION_ID, descs)]
    })
  }

  /** base:allocation descriptors for [offset, offset+length): zeros as hole+zero, everything else as data. */
  private async extents(offset: number, length: number): Promise<Array<{length: number; status: number}>> {
    const source = this.server.source
    const zeroBad = this.server.badPolicy === 'zero'
    const out: Array<{length: number; status: number}> = []
    try {
      if (source.extents) {
        let at = offset
        for (const e of await source.extents(offset, length)) {
          // Clip to the request and require the list to be contiguous; anything else ends the list early.
          const s = Math.max(e.offset, offset)
          const end = Math.min(e.offset + e.length, offset + length)
          if (s !== at || end <= s) break
          // Bad areas read as EIO under the default policy: never claim they are zeros, or copy tools would
          // skip them and write zeros instead of reporting the error.
          const zero = e.kind === 'zero' || (e.kind === 'bad' && zeroBad)
          const status = zero ? P.NBD_STATE_HOLE | P.NBD_STATE_ZERO : 0
          const last = out[out.length - 1]
          if (last && last.status === status) last.length += end - s
          else {
            if (out.length >= MAX_DESCRIPTORS) break
            out.push({length: end - s, status})
          }
          at = end
        }
      }
    } catch (err) {
      this.opts.log(`nbd ${this.opts.peer}: extents(${offset}, ${length}) failed: ${(err as Error).message}`)
      out.length = 0
    }
    // "The server MAY always safely report a status of 0 for any block."
    if (out.length === 0) out.push({length, status: 0})
    return out
  }
}

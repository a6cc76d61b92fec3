/**
 * Target "fuse": the FUSE protocol server (backends/linux/fuse/protocol.ts with imagefs.ts) over a real raw
 * image with a ddrescue mapfile, fed requests the way /dev/fuse hands them over — INIT, LOOKUP, GETATTR,
 * OPEN, READ, READDIR, STATFS, RELEASE, FLUSH, FSYNC, write-like operations, FORGET, INTERRUPT, DESTROY,
 * unknown opcodes — then mutated: header fields at their limits (len off by one, zero, past the message;
 * nodeids, offsets past 2^53, sizes past the negotiated maximum, extension lengths past the body),
 * truncated or extended messages. Also the FUSE-over-io_uring entry reader (uring.ts `entryRequest`):
 * ring-entry headers whose len, payload_sz and op_in sizes do not add up.
 *
 * The contract: handle() never throws or rejects; a message shorter than fuse_in_header gets no reply, as
 * do FORGET, BATCH_FORGET and INTERRUPT; every other request gets exactly one reply, whose header carries
 * the request's unique, the reply's true length and 0 or a negative errno (no data with an error); a READ
 * of the file answers the image's bytes (short at the end, nothing past it), EIO when it touches a bad
 * area, EINVAL past the negotiated size — without allocating what the request asks for. entryRequest never
 * throws; what it returns is exactly the header, op_in and payload bytes the sizes name, or undefined only
 * when they cannot be.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {FuseOpcode, fuse_in_header, fuse_uring_req_header} from '../../backends/linux/fuse/abi'
import {FILE_ID, ImageFs} from '../../backends/linux/fuse/imagefs'
import {FuseProtocol, type ReplyTo} from '../../backends/linux/fuse/protocol'
import {entryMessage, entryRequest} from '../../backends/linux/fuse/uring'
import {BlockServer} from '../../src/core/blockserver'
import {ERRNO} from '../../src/sys/errno'
import {RawImage} from '../../src/sources/raw'
import type {Rng} from '../rng'
import {normalize, workDir, type CaseContext, type CaseResult, type Target} from '../harness'

const SIZE = 1024 * 1024 + 1234
const BAD = {offset: 64 * 1024 + 512, length: 1536}
const MAX_PAGES = 32
const MAX_READ = MAX_PAGES * 4096
const U64 = [0n, 1n, 2n, 3n, BigInt(FILE_ID), 2n ** 32n - 1n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n]
const NO_REPLY = new Set<number>([FuseOpcode.FORGET, FuseOpcode.BATCH_FORGET, FuseOpcode.INTERRUPT])
const OPCODES = Object.values(FuseOpcode) as number[]

interface Sent {
  msg: Buffer
  what: string
}

function header(opcode: number, unique: bigint, nodeid: bigint, bodyLen: number, extlen = 0): Buffer {
  const h = Buffer.alloc(fuse_in_header.size)
  h.writeUInt32LE(fuse_in_header.size + bodyLen, 0)
  h.writeUInt32LE(opcode >>> 0, 4)
  h.writeBigUInt64LE(unique, 8)
  h.writeBigUInt64LE(nodeid, 16)
  h.writeUInt16LE(extlen, 36)
  return h
}

/** A request as the kernel sends it. */
function request(rng: Rng, unique: bigint): Sent {
  const op = rng.pick(['READ', 'READ', 'READ', 'INIT', 'LOOKUP', 'GETATTR', 'OPEN', 'READDIR', 'OPENDIR', 'STATFS', 'RELEASE', 'FLUSH', 'FSYNC', 'WRITE', 'FORGET', 'BATCH_FORGET', 'INTERRUPT', 'DESTROY', 'SETATTR', 'other'])
  const node = (): bigint => (rng.chance(0.8) ? BigInt(rng.pick([1, FILE_ID])) : rng.pick(U64))
  switch (op) {
    case 'READ': {
      const body = Buffer.alloc(40)
      const offset = rng.chance(0.8) ? BigInt(rng.pick([0, rng.int(SIZE), BAD.offset - 512, BAD.offset + BAD.length, SIZE - 100, SIZE, SIZE + 4096])) : rng.pick(U64)
      const size = rng.chance(0.8) ? rng.pick([0, 1, 512, 4096, 65536, MAX_READ, rng.int(MAX_READ + 1)]) : rng.pick([MAX_READ + 1, 2 ** 31, 2 ** 32 - 1])
      body.writeBigUInt64LE(offset, 8)
      body.writeUInt32LE(size, 16)
      return {msg: Buffer.concat([header(FuseOpcode.READ, unique, rng.chance(0.85) ? BigInt(FILE_ID) : node(), 40), body]), what: `READ ${offset}+${size}`}
    }
    case 'INIT': {
      const body = Buffer.alloc(rng.pick([64, 64, 16, 8, 0]))
      if (body.length >= 8) {
        body.writeUInt32LE(rng.chance(0.9) ? 7 : rng.pick([0, 6, 8, 0xffffffff]), 0)
        body.writeUInt32LE(rng.pick([0, 5, 22, 23, 36, 38, 41, 42, 45, 99]), 4)
      }
      if (body.length >= 16) body.writeUInt32LE(rng.u32(), 12)
      if (body.length >= 20) body.writeUInt32LE(rng.u32(), 16)
      return {msg: Buffer.concat([header(FuseOpcode.INIT, unique, 0n, body.length), body]), what: `INIT ${body.length} bytes`}
    }
    case 'LOOKUP': {
      const name = Buffer.from(rng.pick(['disk', 'disk', 'other', '', '..', 'd'.repeat(300)]) + (rng.chance(0.9) ? '\0' : ''))
      return {msg: Buffer.concat([header(FuseOpcode.LOOKUP, unique, node(), name.length), name]), what: 'LOOKUP'}
    }
    case 'WRITE': {
      const data = rng.bytes(rng.pick([0, 1, 512, 4096]))
      const body = Buffer.alloc(40)
      body.writeBigUInt64LE(BigInt(rng.int(SIZE)), 8)
      body.writeUInt32LE(rng.chance(0.8) ? data.length : rng.u32(), 16)
      return {msg: Buffer.concat([header(FuseOpcode.WRITE, unique, node(), 40 + data.length), body, data]), what: 'WRITE'}
    }
    case 'other': {
      const opcode = rng.pick([0, 99, 4096, 0xffffffff, rng.pick(OPCODES)])
      const body = rng.bytes(rng.pick([0, 8, 16, 40, 100]))
      return {msg: Buffer.concat([header(opcode, unique, node(), body.length), body]), what: `opcode ${opcode}`}
    }
    default: {
      const opcode = FuseOpcode[op as keyof typeof FuseOpcode]
      const sizes: Record<string, number> = {GETATTR: 16, OPEN: 8, OPENDIR: 8, READDIR: 40, STATFS: 0, RELEASE: 24, FLUSH: 24, FSYNC: 16, FORGET: 8, BATCH_FORGET: 8, INTERRUPT: 8, DESTROY: 0, SETATTR: 88}
      const body = rng.chance(0.9) ? Buffer.alloc(sizes[op] ?? 0) : rng.bytes(rng.int(64))
      if (op === 'READDIR' && body.length >= 20) body.writeUInt32LE(rng.pick([0, 100, 4096, MAX_READ, 2 ** 32 - 1]), 16)
      if (op === 'READDIR' && body.length >= 16) body.writeBigUInt64LE(rng.pick([0n, 1n, 2n, 3n, 2n ** 63n]), 8)
      return {msg: Buffer.concat([header(opcode, unique, node(), body.length), body]), what: op}
    }
  }
}

function mutate(rng: Rng, s: Sent, steps: string[]): Sent {
  const op = rng.pick(['len', 'len', 'cut', 'extend', 'extlen', 'nodeid', 'flip'])
  steps.push(`${s.what}: ${op}`)
  const m = Buffer.from(s.msg)
  switch (op) {
    case 'len':
      if (m.length >= 4) m.writeUInt32LE(rng.pick([0, 1, 39, 40, m.length - 1, m.length + 1, 2 ** 32 - 1]) >>> 0, 0)
      return {msg: m, what: s.what}
    case 'cut':
      return {msg: m.subarray(0, rng.int(m.length + 1)), what: s.what}
    case 'extend':
      return {msg: Buffer.concat([m, rng.bytes(rng.pick([1, 8, 100]))]), what: s.what}
    case 'extlen':
      if (m.length >= 38) m.writeUInt16LE(rng.pick([1, 2, 100, 0xffff]), 36)
      return {msg: m, what: s.what}
    case 'nodeid':
      if (m.length >= 24) m.writeBigUInt64LE(rng.pick(U64), 16)
      return {msg: m, what: s.what}
    default: {
      if (m.length) m[rng.int(m.length)] ^= 1 << rng.int(8)
      return {msg: m, what: s.what}
    }
  }
}

/** What a READ of the file must answer: bytes, or a negative errno. */
function expectRead(data: Buffer, offset: number, size: number): Buffer | number {
  if (size > MAX_READ) return -ERRNO.EINVAL
  const end = Math.min(offset + size, SIZE)
  if (offset >= end) return Buffer.alloc(0)
  if (offset < BAD.offset + BAD.length && end > BAD.offset) return -ERRNO.EIO
  return data.subarray(offset, end)
}

function checkReplies(s: Sent, replies: Buffer[][], data: Buffer, failures: string[]): string {
  const m = s.msg
  if (m.length < fuse_in_header.size) {
    if (replies.length) failures.push(`${s.what}: ${m.length}-byte message answered`)
    return 'short'
  }
  const opcode = m.readUInt32LE(4)
  const unique = m.readBigUInt64LE(8)
  if (NO_REPLY.has(opcode) && m.readUInt32LE(0) === m.length) {
    if (replies.length) failures.push(`${s.what}: opcode ${opcode} takes no reply, got ${replies.length}`)
    return `noreply:${opcode}`
  }
  if (replies.length !== 1) {
    failures.push(`${s.what}: ${replies.length} replies, want 1`)
    return 'replies'
  }
  const out = Buffer.concat(replies[0])
  if (out.length < 16) {
    failures.push(`${s.what}: reply of ${out.length} bytes`)
    return 'short-reply'
  }
  const len = out.readUInt32LE(0)
  const error = out.readInt32LE(4)
  if (len !== out.length) failures.push(`${s.what}: reply header says ${len} bytes, ${out.length} written`)
  if (out.readBigUInt64LE(8) !== unique) failures.push(`${s.what}: reply unique ${out.readBigUInt64LE(8)} for request ${unique}`)
  if (error > 0 || error < -4095) failures.push(`${s.what}: reply error ${error}`)
  if (error !== 0 && out.length !== 16) failures.push(`${s.what}: an error reply with ${out.length - 16} bytes of data`)
  if (out.length > 16 + Math.max(MAX_READ, 64 * 1024)) failures.push(`${s.what}: a reply of ${out.length} bytes`)
  if (opcode === FuseOpcode.READ && m.readUInt32LE(0) === m.length && m.length >= 80 && m.readUInt16LE(36) === 0 && Number(m.readBigUInt64LE(16)) === FILE_ID) {
    const offset = Number(m.readBigUInt64LE(40 + 8))
    const size = m.readUInt32LE(40 + 16)
    const want = expectRead(data, offset, size)
    if (typeof want === 'number') {
      if (error !== want) failures.push(`${s.what}: error ${error}, want ${want}`)
    } else if (error !== 0) failures.push(`${s.what}: error ${error}, want ${want.length} bytes`)
    else if (!out.subarray(16).equals(want)) failures.push(`${s.what}: ${out.length - 16} bytes that are not the image's ${want.length}`)
  }
  return error === 0 ? `ok:${opcode}` : `err:${opcode}:${-error}`
}

/** A ring entry's header with fields at and past their limits; entryRequest must name exactly its bytes. */
function checkEntry(rng: Rng, failures: string[]): string {
  const h = rng.bytes(fuse_uring_req_header.size + (rng.chance(0.05) ? -rng.int(100) - 1 : 0))
  const payload = rng.bytes(rng.pick([0, 16, 4096, 8192]))
  const lenAt = 0
  const psAt = fuse_uring_req_header.offsetOf('ring_ent_in_out.payload_sz')
  if (h.length >= fuse_uring_req_header.size) {
    const payloadSz = rng.chance(0.7) ? rng.int(payload.length + 1) : rng.pick([payload.length + 1, 2 ** 31, 2 ** 32 - 1])
    const opSize = rng.chance(0.7) ? rng.pick([0, 8, 40, 64, 128]) : rng.pick([129, 1000, -1, -40])
    h.writeUInt32LE(payloadSz >>> 0, psAt)
    h.writeUInt32LE((fuse_in_header.size + opSize + payloadSz) >>> 0, lenAt)
  }
  let r: ReturnType<typeof entryRequest>
  try {
    r = entryRequest(h, payload)
  } catch (err) {
    failures.push(`entryRequest threw ${(err as Error).message}`)
    return 'entry:threw'
  }
  if (h.length < fuse_uring_req_header.size) {
    if (r) failures.push(`entryRequest read a ${h.length}-byte header`)
    return 'entry:short'
  }
  const len = h.readUInt32LE(lenAt)
  const payloadSz = h.readUInt32LE(psAt)
  const opSize = len - fuse_in_header.size - payloadSz
  const possible = opSize >= 0 && opSize <= 128 && payloadSz <= payload.length
  if (!r) {
    if (possible) failures.push(`entryRequest refused len ${len}, payload_sz ${payloadSz} (op_in ${opSize})`)
    return 'entry:refused'
  }
  if (!possible) failures.push(`entryRequest took len ${len}, payload_sz ${payloadSz} (op_in ${opSize})`)
  const msg = entryMessage(h, r)
  if (msg.length !== len) failures.push(`entryMessage: ${msg.length} bytes for len ${len}`)
  const want = Buffer.concat([h.subarray(0, 40), h.subarray(128, 128 + opSize), payload.subarray(0, payloadSz)])
  if (!msg.equals(want)) failures.push('entryMessage: not the header, op_in and payload bytes')
  return 'entry:ok'
}

export const fuseTarget: Target = {
  name: 'fuse',
  caseTimeoutMs: 10_000,
  async setup() {
    const dir = workDir('vdev-fuzz-fuse-')
    const raw = path.join(dir, 'disk.raw')
    const data = Buffer.alloc(SIZE)
    for (let i = 0; i + 4 <= SIZE; i += 4) data.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i)
    fs.writeFileSync(raw, data)
    const end = BAD.offset + BAD.length
    fs.writeFileSync(path.join(dir, 'disk.map'), `0 +\n0x0 0x${BAD.offset.toString(16)} +\n0x${BAD.offset.toString(16)} 0x${BAD.length.toString(16)} -\n0x${end.toString(16)} 0x${(SIZE - end).toString(16)} +\n`)
    const source = RawImage.open(raw, {mapfile: path.join(dir, 'disk.map')}, {sync: true})
    const server = new BlockServer(source)
    const imageFs = new ImageFs(server, {fileName: 'disk', mtime: 0, maxRead: MAX_READ})
    let offer = false
    const make = (fast: boolean): FuseProtocol =>
      new FuseProtocol({
        fd: -1,
        handler: imageFs.handle,
        maxPages: MAX_PAGES,
        maxBackground: 16,
        log: () => {},
        onInit: () => {},
        ...(fast ? {readInto: imageFs.readInto} : {}),
        uring: () => offer,
      })
    // The serving threads' way (READs into the reply buffer) and the main thread's (through the handler).
    const protocols = [make(true), make(false)]
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const rng = ctx.rng
        const failures: string[] = []
        const steps: string[] = []
        const outcomes: string[] = []
        const protocol = rng.pick(protocols)
        offer = rng.chance(0.5)
        const sent: Buffer[] = []
        const t0 = Date.now()
        const n = rng.pick([1, 2, 4, 8])
        for (let i = 0; i < n; i++) {
          let s = request(rng, rng.chance(0.9) ? BigInt(1 + rng.int(1 << 30)) : rng.pick(U64))
          const muts = rng.pick([0, 0, 1, 2])
          for (let k = 0; k < muts; k++) s = mutate(rng, s, steps)
          steps.push(`${s.what} (${s.msg.length} bytes)`)
          sent.push(s.msg)
          const replies: Buffer[][] = []
          const to: ReplyTo = (parts) => replies.push(parts.map((p) => Buffer.from(p)))
          try {
            const pending = protocol.handle(s.msg, to)
            if (pending) await pending
          } catch (err) {
            failures.push(`${s.what}: handle threw ${(err as Error)?.message}`)
            continue
          }
          outcomes.push(checkReplies(s, replies, data, failures))
        }
        outcomes.push(checkEntry(rng, failures))
        const ms = Date.now() - t0
        if (ms > 5000) failures.push(`${n} requests took ${ms} ms`)
        return {
          outcome: normalize(outcomes.join(" "), 80),
          failures,
          input: {ext: 'fuse', data: Buffer.concat(sent.map((m) => Buffer.concat([Buffer.from(Uint32Array.of(m.length).buffer), m])))},
          steps,
        }
      },
      async close() {
        await source.close()
        fs.rmSync(dir, {recursive: true, force: true})
      },
    }
  },
}

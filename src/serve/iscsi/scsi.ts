/**
 * The SCSI logical unit behind the iSCSI target: a direct-access block device (SBC-3) over a BlockServer,
 * read-only, or read-write when the server is writable (an overlay, docs/OVERLAY.md), apart from the transport (server.ts), in tgt's and LIO's shape: ONE command table
 * (opcode [+ service action] → handler, CDB usage data and flags) and every error built by sense.ts.
 *
 * Rules every handler follows, as libiscsi's conformance suite expects:
 *  - the LBA range is checked before anything else about the medium, so a write past the end is
 *    ILLEGAL REQUEST / LBA OUT OF RANGE (05/21/00) and only a write inside it DATA PROTECT (07/27/00) on a
 *    read-only LU;
 *  - on a writable LU a write that finds no space (ENOSPC) is DATA PROTECT / SPACE ALLOCATION FAILED WRITE
 *    PROTECT (07/27/07, SBC-3's answer of a thin-provisioned device out of space, which Linux reports as
 *    ENOSPC); any other write or flush failure MEDIUM ERROR / WRITE ERROR (03/0C/00);
 *  - an unreadable sector under the `error` bad-area policy is MEDIUM ERROR / UNRECOVERED READ ERROR
 *    (03/11/00) with INFORMATION = its LBA, and the good blocks before it are transferred;
 *  - unknown opcodes are ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (05/20/00).
 * Specs: SPC-4 (T10/1731-D r37), SBC-3 (T10/BSR INCITS 514 r35), SAM-5.
 */
import {BlockError, type BlockServer} from '../../core/blockserver'
import {ASC, SENSE_KEY, STATUS, ScsiError, buildSense, invalidField, illegalRequest, mediumError, outOfRange, writeProtected, type SenseSpec} from './sense'

/** What identifies the logical unit to initiators (stable for an image). */
export interface LunIdentity {
  /** 8 bytes: an NAA 3h (locally assigned) identifier, its first nibble 3. */
  naa: Buffer
  /** VPD 0x80 unit serial number (ASCII). */
  serial: string
  /** The target's IQN, for the SCSI name string designator. */
  iqn: string
}

/** Largest transfer one command may ask for (Block Limits VPD "MAXIMUM TRANSFER LENGTH", in bytes here). */
export const MAX_TRANSFER_BYTES = 8 * 1024 * 1024
/** Writable LU: COMPARE AND WRITE at most this many blocks (Block Limits VPD byte 5). */
export const MAX_COMPARE_AND_WRITE_BLOCKS = 255
/** Writable LU: WRITE SAME at most this many blocks (Block Limits VPD "MAXIMUM WRITE SAME LENGTH"). */
export const MAX_WRITE_SAME_BLOCKS = 1 << 22
/** Writable LU: UNMAP block descriptors in one command (Block Limits VPD "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT"). */
export const MAX_UNMAP_DESCRIPTORS = 256
/** A WRITE SAME of a non-zero pattern is written in pieces of at most this many bytes. */
const WRITE_SAME_PIECE = 1024 * 1024

/** One command as the transport hands it over. */
export interface ScsiTask {
  cdb: Buffer
  /** The LUN addressed (flat). */
  lun: number
  /** Expected Data Transfer Length from the iSCSI header. */
  expectedLength: number
  /** Data-Out collected for a command whose table entry asks for it. */
  dataOut?: Buffer
  /**
   * The EDTL was shorter than the CDB's transfer (a whole number of blocks): only the Data-Out given is
   * written (FCP-4's "process the command normally except that data beyond [the expected length] shall not
   * be requested or transferred"; the transport reports the overflow residual).
   */
  truncated?: boolean
  /**
   * Where a READ's data may be read (the transport's reused memory), for `length` bytes; undefined: a new
   * buffer. Used only when the read answers at once (BlockServer.immediate).
   */
  buffer?: (length: number) => Buffer | undefined
}

export interface ScsiResult {
  status: number
  /** Data-In (the transport clips it to the expected length and reports the residual). */
  data: Buffer
  /** Sense data for CHECK CONDITION. */
  sense?: Buffer
  /** The sense as built (for logs and tests). */
  senseSpec?: SenseSpec
}

/** Per I_T nexus (iSCSI session) state: the pending unit attention and the last sense for REQUEST SENSE. */
export interface Nexus {
  unitAttention: SenseSpec | undefined
}

export function newNexus(): Nexus {
  // A new I_T nexus sees POWER ON, RESET, OR BUS DEVICE RESET OCCURRED once (SAM-5 §5.14).
  return {unitAttention: {key: SENSE_KEY.unitAttention, asc: ASC.powerOnReset}}
}

type Handler = (t: ScsiTask, lu: LogicalUnit, nexus: Nexus) => Buffer | undefined | Promise<Buffer | undefined>

export interface CommandSpec {
  opcode: number
  /** For opcodes whose CDB carries a service action (0x9e, 0xa3). */
  serviceAction?: number
  name: string
  /** CDB usage data (SPC-4 §6.35.3, Table 262): byte 0 is the opcode, each other byte the bits the target looks at. */
  usage: number[]
  handler: Handler
  /** Answered with a pending unit attention still pending (SAM-5: INQUIRY, REPORT LUNS, REQUEST SENSE). */
  noUnitAttention?: boolean
  /**
   * Bytes of Data-Out this command needs before it runs (VERIFY with BYTCHK, the writes on a writable LU,
   * UNMAP's parameter list); the transport asks for them with R2T. 0 when the command will fail its checks
   * anyway (out of range, read-only, too long): it then runs at once and fails without data.
   */
  dataOut?: (cdb: Buffer, lu: LogicalUnit) => number
  /**
   * The Data-Out must be exactly that long (WRITE SAME's one block, COMPARE AND WRITE's two halves): another
   * expected data transfer length fails the command, INVALID FIELD IN COMMAND INFORMATION UNIT.
   */
  exactDataOut?: boolean
  /** An EDTL short of the CDB's transfer by whole blocks writes those blocks only (WRITE, WRITE AND VERIFY). */
  truncatable?: boolean
}

/** Supported VPD pages, in ascending order (SPC-4 §7.8.13); a writable LU adds Logical Block Provisioning (B2h). */
const VPD_PAGES = [0x00, 0x80, 0x83, 0xb0, 0xb1]
const VPD_PAGES_WRITABLE = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]

/** Mode page codes served (SPC-4 §7.5; SBC-3 §6.4): caching, control. */
const PAGE_CACHING = 0x08
const PAGE_CONTROL = 0x0a
const PAGE_ALL = 0x3f

export class LogicalUnit {
  readonly blockSize: number
  /**
   * Logical blocks: the image's size in sectors, rounded up. An image whose size is not a whole number of
   * sectors (a truncated dump; the format allows any size) keeps its last bytes: the last block is they,
   * then zeros — what qemu's block layer shows of the same file, so `qemu-img compare` finds them equal.
   */
  readonly blocks: number

  constructor(
    readonly server: BlockServer,
    readonly identity: LunIdentity,
  ) {
    this.blockSize = server.sectorSize
    this.blocks = Math.ceil(server.size / server.sectorSize)
  }

  lookup(cdb: Buffer): CommandSpec | undefined {
    const byOp = TABLE.get(cdb[0])
    if (!byOp) return undefined
    if (byOp instanceof Map) return byOp.get(cdb[1] & 0x1f)
    return byOp
  }

  /** True when the LU takes writes (the server is an overlay). */
  get writable(): boolean {
    return this.server.writable
  }

  /** Bytes of Data-Out the command needs before execute() (0: none), and whether exactly that many must come. */
  dataOutLength(cdb: Buffer): number {
    const spec = this.lookup(cdb)
    if (!spec?.dataOut) return 0
    try {
      return spec.dataOut(cdb, this)
    } catch {
      // A CDB the handler refuses (out of range, bad field): it runs at once and says so.
      return 0
    }
  }

  exactDataOut(cdb: Buffer): boolean {
    return this.lookup(cdb)?.exactDataOut === true
  }

  truncatable(cdb: Buffer): boolean {
    return this.lookup(cdb)?.truncatable === true
  }

  private chain: Promise<unknown> = Promise.resolve()

  /**
   * Run `f` after every mutation started before it: COMPARE AND WRITE and ORWRITE read and write as one step,
   * and no other write of this LU comes in between (the overlay serializes its records anyway). The source's
   * own exclusive turn (the overlay's, BlockSource.exclusive) extends that to the LUs of the other serving
   * threads, each serving its own connections through a view of the one overlay.
   */
  exclusive<T>(f: () => Promise<T>): Promise<T> {
    const source = this.server.source
    const inner = source.exclusive ? () => source.exclusive!(f) : f
    const run = this.chain.then(inner, inner)
    this.chain = run.catch(() => undefined)
    return run
  }

  /**
   * A write, write-zeroes or discard of whole blocks at `offset`; the part of a last, partial block past the
   * image's size is dropped (it reads as zeros whatever is written there). Failures become their sense.
   */
  async mutate(kind: 'write' | 'zero' | 'trim', offset: number, length: number, opts: {data?: Buffer; fua?: boolean} = {}): Promise<void> {
    const n = Math.max(0, Math.min(length, this.server.size - offset))
    if (n === 0) return
    try {
      if (kind === 'write') await this.server.write(offset, opts.data!.subarray(0, n), {fua: opts.fua})
      else if (kind === 'zero') await this.server.zero(offset, n, {fua: opts.fua})
      else await this.server.trim(offset, n, {fua: opts.fua})
    } catch (err) {
      throw writeFailure(err, Math.floor(offset / this.blockSize))
    }
  }

  /** SYNCHRONIZE CACHE: every write answered so far on stable storage. */
  async flush(): Promise<void> {
    if (!this.writable) return
    try {
      await this.server.flush()
    } catch (err) {
      throw writeFailure(err)
    }
  }

  /** Run one command to its result; never throws. */
  async execute(t: ScsiTask, nexus: Nexus): Promise<ScsiResult> {
    const cdb = t.cdb
    const spec = this.lookup(cdb)
    try {
      if (t.lun !== 0) {
        // A LUN we do not have: INQUIRY answers "not connected", REPORT LUNS works, the rest fail (SPC-4 §4.7.1? SAM-5 §5.9).
        if (cdb[0] === 0x12) return good(notConnectedInquiry(cdb))
        if (cdb[0] !== 0xa0 && cdb[0] !== 0x03) throw illegalRequest(ASC.lunNotSupported, `no LUN ${t.lun}`)
      }
      if (nexus.unitAttention && !spec?.noUnitAttention) {
        const ua = nexus.unitAttention
        nexus.unitAttention = undefined
        return checkCondition(ua)
      }
      if (!spec) {
        throw cdb[0] === 0x9e || cdb[0] === 0xa3
          ? invalidField(1, `service action 0x${(cdb[1] & 0x1f).toString(16)} of opcode 0x${cdb[0].toString(16)} is not supported`, 4)
          : illegalRequest(ASC.invalidOpcode, `opcode 0x${cdb[0].toString(16)} is not supported`)
      }
      const data = await spec.handler(t, this, nexus)
      return good(data ?? Buffer.alloc(0))
    } catch (err) {
      if (err instanceof ScsiError) return checkCondition(err.sense, (err as ScsiError & {data?: Buffer}).data)
      throw err
    }
  }

  /** Check an (LBA, blocks) range; returns the byte offset and length. */
  range(lba: bigint, count: number): {offset: number; length: number} {
    if (lba + BigInt(count) > BigInt(this.blocks)) throw outOfRange(`LBA ${lba} + ${count} blocks is past the end (${this.blocks} blocks)`)
    return {offset: Number(lba) * this.blockSize, length: count * this.blockSize}
  }

  /** Read blocks; an unreadable sector becomes MEDIUM ERROR with the good blocks before it as the data. */
  async readBlocks(lba: bigint, count: number, into?: ScsiTask['buffer']): Promise<Buffer> {
    const {offset, length} = this.range(lba, count)
    if (length === 0) return Buffer.alloc(0)
    if (length > MAX_TRANSFER_BYTES) throw invalidField(count > 0xffff ? 10 : 7, `transfer of ${length} bytes is larger than the ${MAX_TRANSFER_BYTES}-byte maximum`)
    // Past the image's size (the rest of a last, partial block): zeros.
    const inImage = Math.min(length, this.server.size - offset)
    let data: Buffer
    try {
      // A serving thread's file or VDIMG image: read here and now, into the transport's buffer when it has one.
      if (this.server.immediate) data = this.server.readSync(offset, inImage, inImage === length ? into?.(length) : undefined)
      else data = await this.server.read(offset, inImage)
    } catch (err) {
      throw await this.readFailure(err, offset)
    }
    if (inImage === length) return data
    const padded = Buffer.alloc(length)
    data.copy(padded)
    return padded
  }

  private async readFailure(err: unknown, offset: number): Promise<ScsiError> {
    if (!(err instanceof BlockError)) throw err
    if (err.bad.length === 0) {
      // A fault (corrupt chunk, I/O error on the image): a medium error without a known LBA would lie; say so.
      if (err.errno === 'EIO') return new ScsiError({key: SENSE_KEY.mediumError, asc: ASC.unrecoveredReadError, information: Math.floor(offset / this.blockSize)}, err.message)
      return new ScsiError({key: SENSE_KEY.hardwareError, asc: ASC.internalTargetFailure}, err.message)
    }
    const firstBad = Math.floor(err.bad[0].offset / this.blockSize)
    const e = mediumError(firstBad) as ScsiError & {data?: Buffer}
    const goodBytes = firstBad * this.blockSize - offset
    if (goodBytes > 0) {
      try {
        e.data = await this.server.read(offset, goodBytes)
      } catch {
        // the prefix failed too (a fault): transfer nothing
      }
    }
    return e
  }
}

/** ENOSPC: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07); anything else MEDIUM ERROR / WRITE ERROR (03/0C/00). */
function writeFailure(err: unknown, lba?: number): ScsiError {
  const e = err instanceof BlockError ? err : new BlockError('EIO', (err as Error)?.message ?? String(err))
  if (e.errno === 'ENOSPC') return new ScsiError({key: SENSE_KEY.dataProtect, asc: ASC.spaceAllocationFailedWriteProtect}, `no space for the write: ${e.message}`)
  return new ScsiError({key: SENSE_KEY.mediumError, asc: ASC.writeError, information: lba}, `write failed: ${e.message}`)
}

function good(data: Buffer | undefined): ScsiResult {
  return {status: STATUS.good, data: data ?? Buffer.alloc(0)}
}

function checkCondition(s: SenseSpec, data?: Buffer): ScsiResult {
  return {status: STATUS.checkCondition, data: data ?? Buffer.alloc(0), sense: buildSense(s), senseSpec: s}
}

// ---- CDB fields ----

const u16 = (b: Buffer, at: number) => b.readUInt16BE(at)
const u32 = (b: Buffer, at: number) => b.readUInt32BE(at)
const u64 = (b: Buffer, at: number) => b.readBigUInt64BE(at)

/** Data-In clipped to the CDB's allocation length. */
const clip = (b: Buffer, alloc: number) => (b.length > alloc ? b.subarray(0, alloc) : b)

function padAscii(s: string, n: number): Buffer {
  const b = Buffer.alloc(n, 0x20)
  b.write(s.slice(0, n), 'ascii')
  return b
}

// ---- SPC: INQUIRY ----

function notConnectedInquiry(cdb: Buffer): Buffer {
  const b = Buffer.alloc(36)
  b[0] = 0x7f // peripheral qualifier 011b: no logical unit here; device type 1Fh
  b[2] = 0x06
  b[3] = 0x12
  b[4] = 31
  return clip(b, u16(cdb, 3))
}

function inquiry(t: ScsiTask, lu: LogicalUnit): Buffer {
  const cdb = t.cdb
  const evpd = (cdb[1] & 0x01) !== 0
  if (cdb[1] & 0xfe) throw invalidField(1, 'reserved bits of INQUIRY byte 1 are set')
  const page = cdb[2]
  const alloc = u16(cdb, 3)
  if (!evpd) {
    if (page !== 0) throw invalidField(2, 'PAGE CODE without EVPD')
    return clip(standardInquiry(), alloc)
  }
  return clip(vpdPage(page, lu), alloc)
}

function standardInquiry(): Buffer {
  const b = Buffer.alloc(96)
  b[0] = 0x00 // connected, direct-access block device
  b[1] = 0x00 // not removable
  b[2] = 0x06 // SPC-4
  b[3] = 0x02 | 0x10 // response data format 2, HISUP
  b[4] = b.length - 5
  b[7] = 0x02 // CMDQUE
  padAscii('VDEV', 8).copy(b, 8)
  padAscii('DISK IMAGE', 16).copy(b, 16)
  padAscii('0001', 4).copy(b, 32)
  // Version descriptors (SPC-4 Table 144): SAM-5, iSCSI (no version claimed), SPC-4, SBC-3.
  const versions = [0x00a0, 0x0960, 0x0460, 0x04c0]
  versions.forEach((v, i) => b.writeUInt16BE(v, 58 + 2 * i))
  return b
}

function vpdPage(page: number, lu: LogicalUnit): Buffer {
  const body = vpdBody(page, lu)
  const h = Buffer.alloc(4)
  h[1] = page
  h.writeUInt16BE(body.length, 2)
  return Buffer.concat([h, body])
}

function vpdBody(page: number, lu: LogicalUnit): Buffer {
  switch (page) {
    case 0x00:
      return Buffer.from(lu.writable ? VPD_PAGES_WRITABLE : VPD_PAGES)
    case 0x80:
      return Buffer.from(lu.identity.serial, 'ascii')
    case 0x83: {
      const designators: Buffer[] = []
      // NAA (type 3), binary, associated with the logical unit: NAA 3h "locally assigned" (SPC-4 §7.8.6.6.3).
      designators.push(Buffer.concat([Buffer.from([0x01, 0x03, 0x00, 8]), lu.identity.naa]))
      // T10 vendor ID based (type 1), ASCII: vendor + serial.
      const t10 = Buffer.concat([padAscii('VDEV', 8), Buffer.from(lu.identity.serial, 'ascii')])
      designators.push(Buffer.concat([Buffer.from([0x02, 0x01, 0x00, t10.length]), t10]))
      // SCSI name string (type 8), UTF-8, iSCSI (protocol 5, PIV), associated with the target device.
      let name = Buffer.from(lu.identity.iqn, 'utf8')
      name = Buffer.concat([name, Buffer.alloc(4 - (name.length % 4))]) // null-terminated, padded to 4
      designators.push(Buffer.concat([Buffer.from([0x53, 0x80 | 0x20 | 0x08, 0x00, name.length]), name]))
      return Buffer.concat(designators)
    }
    case 0xb0: {
      // Block Limits (SBC-3 §6.5.3), page length 3Ch.
      const b = Buffer.alloc(0x3c)
      b.writeUInt16BE(1, 2) // optimal transfer length granularity
      b.writeUInt32BE(MAX_TRANSFER_BYTES / lu.blockSize, 4) // maximum transfer length
      b.writeUInt32BE(Math.min(MAX_TRANSFER_BYTES, 128 * 1024) / lu.blockSize, 8) // optimal transfer length
      b.writeUInt32BE(MAX_TRANSFER_BYTES / lu.blockSize, 12) // maximum prefetch length
      if (lu.writable) {
        b[0] = 0x01 // WSNZ: WRITE SAME of 0 blocks ("to the end") is refused
        b[1] = MAX_COMPARE_AND_WRITE_BLOCKS
        b.writeUInt32BE(0xffffffff, 16) // maximum unmap LBA count: no limit
        b.writeUInt32BE(MAX_UNMAP_DESCRIPTORS, 20) // maximum unmap block descriptor count
        b.writeUInt32BE(1, 24) // optimal unmap granularity: one block
        b.writeBigUInt64BE(BigInt(MAX_WRITE_SAME_BLOCKS), 32) // maximum write same length
      }
      return b
    }
    case 0xb2: {
      // Logical Block Provisioning (SBC-3 §6.5.4), writable LU only: UNMAP and WRITE SAME (10/16) with UNMAP
      // deallocate (LBPU, LBPWS, LBPWS10); a deallocated block reads as zeros (LBPRZ); thin provisioned (the
      // overlay's file grows as it is written, and can run out of space).
      if (!lu.writable) throw invalidField(2, 'VPD page 0xb2 is not supported')
      const b = Buffer.alloc(4)
      b[1] = 0x80 | 0x40 | 0x20 | 0x04
      b[2] = 0x02
      return b
    }
    case 0xb1: {
      // Block Device Characteristics (SBC-3 §6.5.2): medium rotation rate 1 = non-rotating medium.
      const b = Buffer.alloc(0x3c)
      b.writeUInt16BE(1, 0)
      return b
    }
    default:
      throw invalidField(2, `VPD page 0x${page.toString(16)} is not supported`)
  }
}

// ---- SPC: MODE SENSE ----

function modePage(code: number, pc: number, writable: boolean): Buffer | undefined {
  const changeable = pc === 1
  switch (code) {
    case PAGE_CACHING: {
      const p = Buffer.alloc(20)
      p[0] = PAGE_CACHING
      p[1] = 18
      // WCE: a writable LU answers a write once it is in the overlay's page cache, durable at SYNCHRONIZE CACHE
      // (or with FUA), so it says it has a write cache (initiators then send SYNCHRONIZE CACHE); a read-only
      // one writes nothing. RCD 0 (reads may be cached); nothing changeable.
      if (writable && !changeable) p[2] = 0x04
      return p
    }
    case PAGE_CONTROL: {
      const p = Buffer.alloc(12)
      p[0] = PAGE_CONTROL
      p[1] = 10
      if (!changeable) {
        p[2] = 0x00 // TST 0, D_SENSE 0 (fixed sense unless an LBA needs 64 bits), GLTSD 0
        p[3] = 0x10 // queue algorithm modifier 1: unrestricted reordering allowed
        p.writeUInt16BE(0xffff, 8) // busy timeout period: unlimited
      }
      return p
    }
    default:
      return undefined
  }
}

function modePages(cdb: Buffer, pageByte: number, subpageByte: number, writable: boolean): Buffer {
  const pc = cdb[pageByte] >> 6
  const code = cdb[pageByte] & 0x3f
  const subpage = cdb[subpageByte]
  if (code === PAGE_ALL) {
    if (subpage !== 0 && subpage !== 0xff) throw invalidField(subpageByte, `subpage 0x${subpage.toString(16)} is not supported`)
    return Buffer.concat([modePage(PAGE_CACHING, pc, writable)!, modePage(PAGE_CONTROL, pc, writable)!])
  }
  const p = subpage === 0 ? modePage(code, pc, writable) : undefined
  if (!p) throw invalidField(pageByte, `mode page 0x${code.toString(16)}/${subpage} is not supported`)
  return p
}

/** Device-specific parameter (SBC-3 §6.4.1): WP (the medium is write-protected) unless writable, and DPOFUA. */
const deviceSpecific = (lu: LogicalUnit) => (lu.writable ? 0 : 0x80) | 0x10

function modeSense6(t: ScsiTask, lu: LogicalUnit): Buffer {
  const cdb = t.cdb
  const dbd = (cdb[1] & 0x08) !== 0
  const pages = modePages(cdb, 2, 3, lu.writable)
  const desc = dbd ? Buffer.alloc(0) : shortBlockDescriptor(lu)
  const h = Buffer.alloc(4)
  h[0] = 3 + desc.length + pages.length
  h[2] = deviceSpecific(lu)
  h[3] = desc.length
  return clip(Buffer.concat([h, desc, pages]), cdb[4])
}

function modeSense10(t: ScsiTask, lu: LogicalUnit): Buffer {
  const cdb = t.cdb
  const dbd = (cdb[1] & 0x08) !== 0
  const llbaa = (cdb[1] & 0x10) !== 0
  const pages = modePages(cdb, 2, 3, lu.writable)
  const desc = dbd ? Buffer.alloc(0) : llbaa ? longBlockDescriptor(lu) : shortBlockDescriptor(lu)
  const h = Buffer.alloc(8)
  h.writeUInt16BE(6 + desc.length + pages.length, 0)
  h[3] = deviceSpecific(lu)
  h[4] = llbaa && !dbd ? 0x01 : 0
  h.writeUInt16BE(desc.length, 6)
  return clip(Buffer.concat([h, desc, pages]), u16(cdb, 7))
}

function shortBlockDescriptor(lu: LogicalUnit): Buffer {
  const d = Buffer.alloc(8)
  d.writeUInt32BE(Math.min(lu.blocks, 0xffffffff), 0)
  d.writeUIntBE(lu.blockSize, 5, 3)
  return d
}

function longBlockDescriptor(lu: LogicalUnit): Buffer {
  const d = Buffer.alloc(16)
  d.writeBigUInt64BE(BigInt(lu.blocks), 0)
  d.writeUInt32BE(lu.blockSize, 12)
  return d
}

// ---- SPC: REPORT LUNS, REQUEST SENSE, REPORT SUPPORTED OPERATION CODES ----

function reportLuns(t: ScsiTask): Buffer {
  const cdb = t.cdb
  const select = cdb[2]
  if (select > 2 && !(select >= 0x10 && select <= 0x12)) throw invalidField(2, `SELECT REPORT 0x${select.toString(16)}`)
  const alloc = u32(cdb, 6)
  if (alloc < 16) throw invalidField(6, 'allocation length below 16')
  const b = Buffer.alloc(16)
  b.writeUInt32BE(8, 0) // one LUN: 0
  return clip(b, alloc)
}

function requestSense(t: ScsiTask, _lu: LogicalUnit, nexus: Nexus): Buffer {
  const desc = (t.cdb[1] & 0x01) !== 0
  const s = nexus.unitAttention ?? {key: SENSE_KEY.noSense, asc: ASC.none}
  nexus.unitAttention = undefined
  return clip(buildSense(s, desc), t.cdb[4])
}

function reportSupportedOpcodes(t: ScsiTask): Buffer {
  const cdb = t.cdb
  const rctd = (cdb[2] & 0x80) !== 0
  const options = cdb[2] & 0x07
  const alloc = u32(cdb, 6)
  const timeouts = () => {
    const d = Buffer.alloc(12)
    d.writeUInt16BE(0x0a, 0)
    return d
  }
  if (options === 0) {
    const descs: Buffer[] = []
    for (const c of COMMANDS) {
      const d = Buffer.alloc(8)
      d[0] = c.opcode
      if (c.serviceAction !== undefined) {
        d.writeUInt16BE(c.serviceAction, 2)
        d[5] |= 0x01 // SERVACTV
      }
      if (rctd) d[5] |= 0x02 // CTDP
      d.writeUInt16BE(c.usage.length, 6)
      descs.push(d)
      if (rctd) descs.push(timeouts())
    }
    const body = Buffer.concat(descs)
    const h = Buffer.alloc(4)
    h.writeUInt32BE(body.length, 0)
    return clip(Buffer.concat([h, body]), alloc)
  }
  const opcode = cdb[3]
  const sa = u16(cdb, 4)
  const hasSa = SERVICE_ACTION_OPCODES.has(opcode)
  let spec: CommandSpec | undefined
  if (options === 1) {
    if (hasSa) throw invalidField(3, `opcode 0x${opcode.toString(16)} has service actions`)
    spec = COMMANDS.find((c) => c.opcode === opcode)
  } else if (options === 2) {
    if (!hasSa) throw invalidField(3, `opcode 0x${opcode.toString(16)} has no service actions`)
    spec = COMMANDS.find((c) => c.opcode === opcode && c.serviceAction === sa)
  } else if (options === 3) {
    spec = COMMANDS.find((c) => c.opcode === opcode && (c.serviceAction === undefined || c.serviceAction === sa))
  } else throw invalidField(2, `REPORTING OPTIONS ${options}`)
  const h = Buffer.alloc(4)
  if (!spec) {
    h[1] = 0x01 // SUPPORT 001b: not supported
    return clip(h, alloc)
  }
  h[1] = (rctd ? 0x80 : 0) | 0x03 // CTDP, SUPPORT 011b: supported as in the standard
  h.writeUInt16BE(spec.usage.length, 2)
  return clip(Buffer.concat([h, Buffer.from(spec.usage), rctd ? timeouts() : Buffer.alloc(0)]), alloc)
}

// ---- SBC: capacity, reads, verify, prefetch, LBA status, writes ----

function readCapacity10(t: ScsiTask, lu: LogicalUnit): Buffer {
  const cdb = t.cdb
  const pmi = (cdb[8] & 0x01) !== 0
  if (!pmi && u32(cdb, 2) !== 0) throw invalidField(2, 'LOGICAL BLOCK ADDRESS without PMI')
  const b = Buffer.alloc(8)
  b.writeUInt32BE(lu.blocks - 1 > 0xffffffff ? 0xffffffff : lu.blocks - 1, 0)
  b.writeUInt32BE(lu.blockSize, 4)
  return b
}

function readCapacity16(t: ScsiTask, lu: LogicalUnit): Buffer {
  const b = Buffer.alloc(32)
  b.writeBigUInt64BE(BigInt(lu.blocks - 1), 0)
  b.writeUInt32BE(lu.blockSize, 8)
  // P_TYPE/PROT_EN 0, one logical block per physical block, lowest aligned LBA 0; LBPME 0 (fully provisioned)
  // when read-only, else LBPME and LBPRZ (UNMAP works, an unmapped block reads as zeros; VPD B2h).
  if (lu.writable) b[14] = 0x80 | 0x40
  return clip(b, u32(t.cdb, 10))
}

/** RDPROTECT/VRPROTECT/WRPROTECT (bits 7-5 of byte 1): no protection information here (SBC-3 §4.22). */
function noProtect(cdb: Buffer): void {
  if (cdb[1] & 0xe0) throw invalidField(1, 'protection information is not supported', 7)
}

function read6(t: ScsiTask, lu: LogicalUnit): Promise<Buffer> {
  const cdb = t.cdb
  const lba = BigInt(cdb.readUIntBE(1, 3) & 0x1fffff)
  return lu.readBlocks(lba, cdb[4] === 0 ? 256 : cdb[4], t.buffer)
}

function read10(t: ScsiTask, lu: LogicalUnit): Promise<Buffer> {
  const cdb = t.cdb
  lu.range(BigInt(u32(cdb, 2)), u16(cdb, 7))
  noProtect(cdb)
  return lu.readBlocks(BigInt(u32(cdb, 2)), u16(cdb, 7), t.buffer)
}

function read12(t: ScsiTask, lu: LogicalUnit): Promise<Buffer> {
  const cdb = t.cdb
  lu.range(BigInt(u32(cdb, 2)), u32(cdb, 6))
  noProtect(cdb)
  return lu.readBlocks(BigInt(u32(cdb, 2)), u32(cdb, 6), t.buffer)
}

function read16(t: ScsiTask, lu: LogicalUnit): Promise<Buffer> {
  const cdb = t.cdb
  lu.range(u64(cdb, 2), u32(cdb, 10))
  noProtect(cdb)
  return lu.readBlocks(u64(cdb, 2), u32(cdb, 10), t.buffer)
}

/** VERIFY 10/12/16 (SBC-3 §5.25): BYTCHK 0 checks the range; 1 compares the Data-Out with the medium, 3 one block with each. */
function verify(lbaAt: number, lbaBytes: 4 | 8, countAt: number, countBytes: 2 | 4): Handler {
  return async (t, lu) => {
    const cdb = t.cdb
    const lba = lbaBytes === 8 ? u64(cdb, lbaAt) : BigInt(u32(cdb, lbaAt))
    const count = countBytes === 2 ? u16(cdb, countAt) : u32(cdb, countAt)
    lu.range(lba, count)
    noProtect(cdb)
    const bytchk = (cdb[1] >> 1) & 0x03
    if (bytchk === 2) throw invalidField(1, 'BYTCHK 2 is reserved', 2)
    if (bytchk === 0 || count === 0) return undefined
    const medium = await lu.readBlocks(lba, count)
    const out = t.dataOut ?? Buffer.alloc(0)
    const expected = bytchk === 1 ? out : Buffer.concat(Array.from({length: count}, () => out.subarray(0, lu.blockSize)))
    for (let i = 0; i < medium.length; i++) {
      if (medium[i] !== expected[i])
        throw new ScsiError({key: 0x0e, asc: 0x1d00, information: i}, `miscompare at byte ${i} of the verified range`) // MISCOMPARE DURING VERIFY OPERATION
    }
    return undefined
  }
}

function verifyDataOut(countAt: number, countBytes: 2 | 4) {
  return (cdb: Buffer, lu: LogicalUnit): number => {
    const bytchk = (cdb[1] >> 1) & 0x03
    const count = countBytes === 2 ? u16(cdb, countAt) : u32(cdb, countAt)
    if (bytchk === 1) return Math.min(count * lu.blockSize, MAX_TRANSFER_BYTES)
    if (bytchk === 3) return count > 0 ? lu.blockSize : 0
    return 0
  }
}

/** PRE-FETCH 10/16 (SBC-3 §5.9): after the range check, GOOD (the decoded-chunk cache is not promised to hold it). */
function prefetch(lbaAt: number, lbaBytes: 4 | 8, countAt: number, countBytes: 2 | 4): Handler {
  return (t, lu) => {
    const cdb = t.cdb
    lu.range(lbaBytes === 8 ? u64(cdb, lbaAt) : BigInt(u32(cdb, lbaAt)), countBytes === 2 ? u16(cdb, countAt) : u32(cdb, countAt))
    return undefined
  }
}

/** SYNCHRONIZE CACHE 10/16 (SBC-3 §5.22): after the range check, every write answered so far made durable (all of them, whatever the range). */
function syncCache(lbaAt: number, lbaBytes: 4 | 8, countAt: number, countBytes: 2 | 4): Handler {
  return async (t, lu) => {
    const cdb = t.cdb
    lu.range(lbaBytes === 8 ? u64(cdb, lbaAt) : BigInt(u32(cdb, lbaAt)), countBytes === 2 ? u16(cdb, countAt) : u32(cdb, countAt))
    await lu.flush()
    return undefined
  }
}

/** GET LBA STATUS (SBC-3 §5.6): one descriptor, everything from the LBA on is mapped (the LU is fully provisioned). */
function getLbaStatus(t: ScsiTask, lu: LogicalUnit): Buffer {
  const cdb = t.cdb
  const lba = u64(cdb, 2)
  const alloc = u32(cdb, 10)
  if (lba >= BigInt(lu.blocks)) throw outOfRange(`LBA ${lba} is past the end (${lu.blocks} blocks)`)
  const b = Buffer.alloc(24)
  b.writeUInt32BE(20, 0) // parameter data length: the bytes that follow
  b.writeBigUInt64BE(lba, 8)
  b.writeUInt32BE(Math.min(lu.blocks - Number(lba), 0xffffffff), 16)
  b[20] = 0x00 // mapped
  return clip(b, alloc)
}

/** The LBA and block count of a CDB (WRITE(6): 21-bit LBA, 0 blocks meaning 256). */
function lbaCount(cdb: Buffer, lbaAt: number, lbaBytes: 0 | 3 | 4 | 8, countAt: number, countBytes: 0 | 1 | 2 | 4): {lba: bigint; count: number} {
  const lba = lbaBytes === 8 ? u64(cdb, lbaAt) : lbaBytes === 4 ? BigInt(u32(cdb, lbaAt)) : lbaBytes === 3 ? BigInt(cdb.readUIntBE(lbaAt, 3) & 0x1fffff) : 0n
  let count = countBytes === 4 ? u32(cdb, countAt) : countBytes === 2 ? u16(cdb, countAt) : countBytes === 1 ? cdb[countAt] : 0
  if (lbaBytes === 3 && count === 0) count = 256
  return {lba, count}
}

/**
 * The checks every write-class command makes first, in libiscsi's expected order: the range (05/21/00),
 * WRPROTECT (05/24/00, not WRITE(6)), then, on a read-only LU, DATA PROTECT / WRITE PROTECTED (07/27/00).
 */
function writeChecks(t: ScsiTask, lu: LogicalUnit, lbaAt: number, lbaBytes: 0 | 3 | 4 | 8, countAt: number, countBytes: 0 | 1 | 2 | 4): {lba: bigint; count: number} {
  const cdb = t.cdb
  const {lba, count} = lbaCount(cdb, lbaAt, lbaBytes, countAt, countBytes)
  if (lbaBytes > 0) {
    lu.range(lba, count)
    if (lbaBytes !== 3) noProtect(cdb)
  }
  if (!lu.writable) throw writeProtected()
  return {lba, count}
}

/** The Data-Out of a command that writes `factor` × its blocks: 0 when its checks fail (it then runs without data). */
function blocksDataOut(lbaAt: number, lbaBytes: 3 | 4 | 8, countAt: number, countBytes: 1 | 2 | 4, factor = 1, maxBlocks = Infinity) {
  return (cdb: Buffer, lu: LogicalUnit): number => {
    if (!lu.writable) return 0
    const {lba, count} = lbaCount(cdb, lbaAt, lbaBytes, countAt, countBytes)
    lu.range(lba, count)
    if (lbaBytes !== 3 && cdb[1] & 0xe0) return 0
    if (count > maxBlocks || count * lu.blockSize > MAX_TRANSFER_BYTES) return 0
    return count * lu.blockSize * factor
  }
}

/** The Data-Out a handler was given, which the transport collected whole (or did not run the command). */
function dataOut(t: ScsiTask, length: number): Buffer {
  if (!t.dataOut || t.dataOut.length < length) throw illegalRequest(ASC.invalidFieldInIu, `${length} bytes of Data-Out expected, ${t.dataOut?.length ?? 0} received`)
  return t.dataOut.subarray(0, length)
}

/**
 * WRITE 6/10/12/16 and WRITE AND VERIFY 10/12/16 (SBC-3 §5.32-5.40): the Data-Out written to the overlay;
 * FUA (byte 1 bit 3; not in WRITE(6)) makes it durable before GOOD. WRITE AND VERIFY writes what it was given
 * (BYTCHK: the data compared is the data written).
 */
function write(lbaAt: number, lbaBytes: 3 | 4 | 8, countAt: number, countBytes: 1 | 2 | 4): Handler {
  return async (t, lu) => {
    const {lba, count} = writeChecks(t, lu, lbaAt, lbaBytes, countAt, countBytes)
    if (count === 0) return undefined
    const {offset, length: full} = lu.range(lba, count)
    if (full > MAX_TRANSFER_BYTES) throw invalidField(countAt, `transfer of ${full} bytes is larger than the ${MAX_TRANSFER_BYTES}-byte maximum`)
    const length = t.truncated ? Math.min(full, t.dataOut?.length ?? 0) : full
    if (length === 0) return undefined
    const data = dataOut(t, length)
    const fua = lbaBytes !== 3 && (t.cdb[1] & 0x08) !== 0
    await lu.exclusive(() => lu.mutate('write', offset, length, {data, fua}))
    return undefined
  }
}

/** ORWRITE(16) (SBC-3 §5.8, no ORPROTECT): each block becomes the OR of itself and the Data-Out, read and written as one step. */
function orWrite(t: ScsiTask, lu: LogicalUnit): Promise<undefined> | undefined {
  const {lba, count} = writeChecks(t, lu, 2, 8, 10, 4)
  if (count === 0) return undefined
  const {offset, length} = lu.range(lba, count)
  if (length > MAX_TRANSFER_BYTES) throw invalidField(10, `transfer of ${length} bytes is larger than the ${MAX_TRANSFER_BYTES}-byte maximum`)
  const data = dataOut(t, length)
  const fua = (t.cdb[1] & 0x08) !== 0
  return lu.exclusive(async () => {
    const old = await lu.readBlocks(lba, count)
    const out = Buffer.allocUnsafe(length)
    for (let i = 0; i < length; i++) out[i] = old[i] | data[i]
    await lu.mutate('write', offset, length, {data: out, fua})
    return undefined
  })
}

/**
 * COMPARE AND WRITE (SBC-3 §5.2): the first half of the Data-Out is compared with the blocks, and only if
 * every byte matches the second half is written, as one step (no other write of this LU in between);
 * otherwise MISCOMPARE 0E/1D/00 with INFORMATION = the offset of the first byte that differs.
 */
function compareAndWrite(t: ScsiTask, lu: LogicalUnit): Promise<undefined> | undefined {
  const {lba, count} = writeChecks(t, lu, 2, 8, 13, 1)
  // 0 blocks compares and writes nothing (SBC-3), but not with Data-Out on its way: the count is then wrong.
  if (count === 0 && t.expectedLength > 0) throw invalidField(13, `COMPARE AND WRITE of 0 blocks with ${t.expectedLength} bytes of Data-Out`)
  if (count === 0) return undefined
  if (count > MAX_COMPARE_AND_WRITE_BLOCKS) throw invalidField(13, `COMPARE AND WRITE of ${count} blocks (at most ${MAX_COMPARE_AND_WRITE_BLOCKS})`)
  const {offset, length} = lu.range(lba, count)
  const data = dataOut(t, 2 * length)
  const fua = (t.cdb[1] & 0x08) !== 0
  return lu.exclusive(async () => {
    const old = await lu.readBlocks(lba, count)
    for (let i = 0; i < length; i++)
      if (old[i] !== data[i]) throw new ScsiError({key: SENSE_KEY.miscompare, asc: ASC.miscompareDuringVerify, information: i}, `COMPARE AND WRITE: miscompare at byte ${i}`)
    await lu.mutate('write', offset, length, {data: data.subarray(length), fua})
    return undefined
  })
}

/**
 * WRITE SAME 10/16 (SBC-3 §5.41-5.42): one block of Data-Out (or none with NDOB, WRITE SAME(16): zeros)
 * repeated over the range. An all-zero block becomes one write-zeroes of the range, or with UNMAP one
 * discard (a discarded block reads as zeros, LBPRZ, so both read the same); any other pattern is written
 * block by block, UNMAP or not (a deallocated block could not read as the pattern). ANCHOR is refused
 * (ANC_SUP 0), and so is 0 blocks ("to the end": WSNZ 1) and more than MAXIMUM WRITE SAME LENGTH.
 */
function writeSame(lbaAt: number, lbaBytes: 4 | 8, countAt: number, countBytes: 2 | 4): Handler {
  return async (t, lu) => {
    const cdb = t.cdb
    const {lba, count} = writeChecks(t, lu, lbaAt, lbaBytes, countAt, countBytes)
    if (cdb[1] & 0x10) throw invalidField(1, 'ANCHOR is not supported', 4)
    if (count === 0) throw invalidField(countAt, 'WRITE SAME of 0 blocks (WSNZ)')
    if (count > MAX_WRITE_SAME_BLOCKS) throw invalidField(countAt, `WRITE SAME of ${count} blocks (at most ${MAX_WRITE_SAME_BLOCKS})`)
    const ndob = lbaBytes === 8 && (cdb[1] & 0x01) !== 0
    const block = ndob ? Buffer.alloc(lu.blockSize) : dataOut(t, lu.blockSize)
    const unmap = (cdb[1] & 0x08) !== 0
    const {offset, length} = lu.range(lba, count)
    await lu.exclusive(async () => {
      if (block.every((b) => b === 0)) return lu.mutate(unmap ? 'trim' : 'zero', offset, length)
      const per = Math.max(1, Math.floor(WRITE_SAME_PIECE / lu.blockSize))
      const piece = Buffer.alloc(Math.min(count, per) * lu.blockSize)
      for (let at = 0; at < piece.length; at += lu.blockSize) block.copy(piece, at)
      for (let done = 0; done < length; done += piece.length) {
        const n = Math.min(piece.length, length - done)
        await lu.mutate('write', offset + done, n, {data: piece.subarray(0, n)})
      }
    })
    return undefined
  }
}

function writeSameDataOut(lbaAt: number, lbaBytes: 4 | 8, countAt: number, countBytes: 2 | 4) {
  return (cdb: Buffer, lu: LogicalUnit): number => {
    if (!lu.writable) return 0
    const {lba, count} = lbaCount(cdb, lbaAt, lbaBytes, countAt, countBytes)
    lu.range(lba, count)
    if (cdb[1] & 0xf0 || count === 0 || count > MAX_WRITE_SAME_BLOCKS) return 0
    if (lbaBytes === 8 && cdb[1] & 0x01) return 0 // NDOB
    return lu.blockSize
  }
}

/**
 * UNMAP (SBC-3 §5.28): the parameter list's block descriptors (LBA, count) discarded. Every descriptor is
 * checked before any is applied: more than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT → INVALID FIELD IN
 * PARAMETER LIST (05/26/00), a range past the end → 05/21/00. A parameter list of 1-7 bytes → PARAMETER
 * LIST LENGTH ERROR (05/1A/00); a descriptor data length that is not a multiple of 16 drops the partial
 * last one; ANCHOR → INVALID FIELD IN CDB.
 */
async function unmap(t: ScsiTask, lu: LogicalUnit): Promise<undefined> {
  const cdb = t.cdb
  if (!lu.writable) throw writeProtected()
  if (cdb[1] & 0x01) throw invalidField(1, 'ANCHOR is not supported', 0)
  const paramLength = u16(cdb, 7)
  if (paramLength === 0) return undefined
  if (paramLength < 8) throw illegalRequest(ASC.parameterListLengthError, `UNMAP parameter list of ${paramLength} bytes`)
  const p = dataOut(t, paramLength)
  const descBytes = Math.min(u16(p, 2), paramLength - 8)
  const n = Math.floor(descBytes / 16)
  if (n > MAX_UNMAP_DESCRIPTORS) throw illegalRequest(ASC.invalidFieldInParameterList, `${n} UNMAP block descriptors (at most ${MAX_UNMAP_DESCRIPTORS})`)
  const ranges: Array<{offset: number; length: number}> = []
  for (let i = 0; i < n; i++) {
    const at = 8 + 16 * i
    const lba = p.readBigUInt64BE(at)
    const count = p.readUInt32BE(at + 8)
    const r = lu.range(lba, count)
    if (count > 0) ranges.push(r)
  }
  await lu.exclusive(async () => {
    for (const r of ranges) await lu.mutate('trim', r.offset, r.length)
  })
  return undefined
}

/** UNMAP's parameter list (at most 64 KiB, the 16-bit length's limit) on a writable LU. */
function unmapDataOut(cdb: Buffer, lu: LogicalUnit): number {
  if (!lu.writable || cdb[1] & 0x01) return 0
  const n = u16(cdb, 7)
  return n < 8 ? 0 : n
}

function testUnitReady(): undefined {
  return undefined
}

function startStopUnit(t: ScsiTask): undefined {
  // A fixed disk: stopping or starting is accepted and changes nothing; LOEJ (eject) is refused as for a fixed medium.
  if (t.cdb[4] & 0x02 && (t.cdb[4] & 0xf0) === 0) throw invalidField(4, 'the medium cannot be ejected', 1)
  return undefined
}

// ---- the table ----

const C = 0x07 // control byte: NACA, LINK ... as tgt reports it

/** The one command table. */
export const COMMANDS: CommandSpec[] = [
  {opcode: 0x00, name: 'TEST UNIT READY', usage: [0x00, 0, 0, 0, 0, C], handler: testUnitReady},
  {opcode: 0x03, name: 'REQUEST SENSE', usage: [0x03, 0x01, 0, 0, 0xff, C], handler: requestSense, noUnitAttention: true},
  {opcode: 0x08, name: 'READ(6)', usage: [0x08, 0x1f, 0xff, 0xff, 0xff, C], handler: read6},
  {opcode: 0x0a, name: 'WRITE(6)', usage: [0x0a, 0x1f, 0xff, 0xff, 0xff, C], handler: write(1, 3, 4, 1), dataOut: blocksDataOut(1, 3, 4, 1), truncatable: true},
  {opcode: 0x12, name: 'INQUIRY', usage: [0x12, 0x01, 0xff, 0xff, 0xff, C], handler: inquiry, noUnitAttention: true},
  {opcode: 0x1a, name: 'MODE SENSE(6)', usage: [0x1a, 0x08, 0xff, 0xff, 0xff, C], handler: modeSense6},
  {opcode: 0x1b, name: 'START STOP UNIT', usage: [0x1b, 0x01, 0, 0x0f, 0xf7, C], handler: startStopUnit},
  {opcode: 0x25, name: 'READ CAPACITY(10)', usage: [0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, C], handler: readCapacity10},
  {opcode: 0x28, name: 'READ(10)', usage: [0x28, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, C], handler: read10},
  {opcode: 0x2a, name: 'WRITE(10)', usage: [0x2a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, C], handler: write(2, 4, 7, 2), dataOut: blocksDataOut(2, 4, 7, 2), truncatable: true},
  {
    opcode: 0x2e,
    name: 'WRITE AND VERIFY(10)',
    usage: [0x2e, 0xf2, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, C],
    handler: write(2, 4, 7, 2),
    dataOut: blocksDataOut(2, 4, 7, 2),

    truncatable: true,
  },
  {
    opcode: 0x2f,
    name: 'VERIFY(10)',
    usage: [0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, C],
    handler: verify(2, 4, 7, 2),
    dataOut: verifyDataOut(7, 2),
  },
  {opcode: 0x34, name: 'PRE-FETCH(10)', usage: [0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, C], handler: prefetch(2, 4, 7, 2)},
  {opcode: 0x35, name: 'SYNCHRONIZE CACHE(10)', usage: [0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, C], handler: syncCache(2, 4, 7, 2)},
  {
    opcode: 0x41,
    name: 'WRITE SAME(10)',
    usage: [0x41, 0xfa, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, C],
    handler: writeSame(2, 4, 7, 2),
    dataOut: writeSameDataOut(2, 4, 7, 2),
    exactDataOut: true,
  },
  {opcode: 0x42, name: 'UNMAP', usage: [0x42, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, C], handler: unmap, dataOut: unmapDataOut},
  {opcode: 0x5a, name: 'MODE SENSE(10)', usage: [0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, C], handler: modeSense10},
  {opcode: 0x88, name: 'READ(16)', usage: [0x88, 0xf8, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C], handler: read16},
  {
    opcode: 0x89,
    name: 'COMPARE AND WRITE',
    usage: [0x89, 0xf8, ...Array(8).fill(0xff), 0, 0, 0, 0xff, 0x1f, C],
    handler: compareAndWrite,
    dataOut: blocksDataOut(2, 8, 13, 1, 2, MAX_COMPARE_AND_WRITE_BLOCKS),
    exactDataOut: true,
  },
  {opcode: 0x8a, name: 'WRITE(16)', usage: [0x8a, 0xf8, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C], handler: write(2, 8, 10, 4), dataOut: blocksDataOut(2, 8, 10, 4), truncatable: true},
  {opcode: 0x8b, name: 'ORWRITE(16)', usage: [0x8b, 0xf8, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C], handler: orWrite, dataOut: blocksDataOut(2, 8, 10, 4)},
  {
    opcode: 0x8e,
    name: 'WRITE AND VERIFY(16)',
    usage: [0x8e, 0xf2, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C],
    handler: write(2, 8, 10, 4),
    dataOut: blocksDataOut(2, 8, 10, 4),

    truncatable: true,
  },
  {
    opcode: 0x8f,
    name: 'VERIFY(16)',
    usage: [0x8f, 0xf6, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C],
    handler: verify(2, 8, 10, 4),
    dataOut: verifyDataOut(10, 4),
  },
  {opcode: 0x90, name: 'PRE-FETCH(16)', usage: [0x90, 0x02, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C], handler: prefetch(2, 8, 10, 4)},
  {opcode: 0x91, name: 'SYNCHRONIZE CACHE(16)', usage: [0x91, 0x02, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C], handler: syncCache(2, 8, 10, 4)},
  {
    opcode: 0x93,
    name: 'WRITE SAME(16)',
    usage: [0x93, 0xf9, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0x1f, C],
    handler: writeSame(2, 8, 10, 4),
    dataOut: writeSameDataOut(2, 8, 10, 4),
    exactDataOut: true,
  },
  {
    opcode: 0x9e,
    serviceAction: 0x10,
    name: 'READ CAPACITY(16)',
    usage: [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, C],
    handler: readCapacity16,
  },
  {
    opcode: 0x9e,
    serviceAction: 0x12,
    name: 'GET LBA STATUS',
    usage: [0x9e, 0x12, ...Array(8).fill(0xff), 0xff, 0xff, 0xff, 0xff, 0, C],
    handler: getLbaStatus,
  },
  {opcode: 0xa0, name: 'REPORT LUNS', usage: [0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, C], handler: reportLuns, noUnitAttention: true},
  {
    opcode: 0xa3,
    serviceAction: 0x0c,
    name: 'REPORT SUPPORTED OPERATION CODES',
    usage: [0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, C],
    handler: reportSupportedOpcodes,
  },
  {opcode: 0xa8, name: 'READ(12)', usage: [0xa8, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, C], handler: read12},
  {opcode: 0xaa, name: 'WRITE(12)', usage: [0xaa, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, C], handler: write(2, 4, 6, 4), dataOut: blocksDataOut(2, 4, 6, 4), truncatable: true},
  {
    opcode: 0xae,
    name: 'WRITE AND VERIFY(12)',
    usage: [0xae, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, C],
    handler: write(2, 4, 6, 4),
    dataOut: blocksDataOut(2, 4, 6, 4),

    truncatable: true,
  },
  {
    opcode: 0xaf,
    name: 'VERIFY(12)',
    usage: [0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, C],
    handler: verify(2, 4, 6, 4),
    dataOut: verifyDataOut(6, 4),
  },
]

const SERVICE_ACTION_OPCODES = new Set(COMMANDS.filter((c) => c.serviceAction !== undefined).map((c) => c.opcode))

const TABLE = new Map<number, CommandSpec | Map<number, CommandSpec>>()
for (const c of COMMANDS) {
  if (c.serviceAction === undefined) TABLE.set(c.opcode, c)
  else {
    let m = TABLE.get(c.opcode) as Map<number, CommandSpec> | undefined
    if (!m) TABLE.set(c.opcode, (m = new Map()))
    m.set(c.serviceAction, c)
  }
}

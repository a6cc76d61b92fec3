/**
 * A deliberately small iSCSI initiator speaking raw PDUs (no digests), for what real initiators never
 * send and for checking the target's PDUs field by field: segment sizes, F/S bits, DataSN, residuals,
 * sense bytes. Well-formed PDUs are built here by hand from RFC 7143's layouts, not with the encoders
 * under test.
 */
import * as net from 'node:net'
import {SocketReader} from '../../src/serve/nbd/reader'

export interface Pdu {
  bhs: Buffer
  opcode: number
  flags: number
  itt: number
  data: Buffer
}

export interface ScsiReply {
  dataIns: Pdu[]
  data: Buffer
  status: number
  sense: Buffer | undefined
  /** Flags byte of the PDU carrying the status (O 0x04, U 0x02). */
  flags: number
  residual: number
  response: Pdu
}

export interface DataOutFields {
  itt: number
  ttt: number
  dataSN: number
  offset: number
  data: Buffer
  final: boolean
}

export const INITIATOR = 'iqn.2026-01.dev.vdev.test:initiator'

export function text(pairs: Record<string, string>): Buffer {
  return Buffer.from(Object.entries(pairs).map(([k, v]) => `${k}=${v}\0`).join(''))
}

export function parseTextData(d: Buffer): Record<string, string> {
  const out: Record<string, string> = {}
  for (const p of d.toString().split('\0').filter(Boolean)) {
    const i = p.indexOf('=')
    out[p.slice(0, i)] = p.slice(i + 1)
  }
  return out
}

export function pdu(opcode: number, flags: number, data: Buffer, fill: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(48)
  b[0] = opcode
  b[1] = flags
  b.writeUIntBE(data.length, 5, 3)
  fill(b)
  const pad = (4 - (data.length % 4)) % 4
  return Buffer.concat([b, data, Buffer.alloc(pad)])
}

export class IscsiRawClient {
  readonly reader: SocketReader
  readonly closed: Promise<void>
  cmdSN = 1
  expStatSN = 0
  itt = 1
  tsih = 0
  /** The answer to the TEST UNIT READY sent after login (the unit attention). */
  unitAttention: ScsiReply | undefined

  private constructor(readonly socket: net.Socket) {
    this.reader = new SocketReader(socket)
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
    socket.on('error', () => {})
  }

  static connect(port: number): Promise<IscsiRawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1')
      s.once('connect', () => resolve(new IscsiRawClient(s)))
      s.once('error', reject)
    })
  }

  send(b: Buffer): void {
    this.socket.write(b)
  }

  destroy(): void {
    this.socket.destroy()
  }

  async read(): Promise<Pdu> {
    const bhs = await this.reader.read(48)
    const len = bhs.readUIntBE(5, 3)
    const ahs = bhs[4] * 4
    if (ahs) await this.reader.read(ahs)
    const padded = len ? await this.reader.read(len + ((4 - (len % 4)) % 4)) : Buffer.alloc(0)
    return {bhs, opcode: bhs[0] & 0x3f, flags: bhs[1], itt: bhs.readUInt32BE(16), data: padded.subarray(0, len)}
  }

  loginPdu(csg: number, nsg: number, transit: boolean, keys: Record<string, string>, isid = '400001370000'): Buffer {
    return pdu(0x43, (transit ? 0x80 : 0) | (csg << 2) | (transit ? nsg : 0), text(keys), (b) => {
      Buffer.from(isid, 'hex').copy(b, 8)
      b.writeUInt16BE(this.tsih, 14)
      b.writeUInt32BE(this.itt, 16)
      b.writeUInt32BE(this.cmdSN, 24)
      b.writeUInt32BE(this.expStatSN, 28)
    })
  }

  /** One login request; returns the response and its keys. */
  async loginStep(csg: number, nsg: number, transit: boolean, keys: Record<string, string>, isid?: string): Promise<{pdu: Pdu; keys: Record<string, string>; status: number}> {
    this.send(this.loginPdu(csg, nsg, transit, keys, isid))
    const r = await this.read()
    this.expStatSN = (r.bhs.readUInt32BE(24) + 1) >>> 0
    if (r.flags & 0x80 && (r.flags & 3) === 3) this.tsih = r.bhs.readUInt16BE(14)
    return {pdu: r, keys: parseTextData(r.data), status: r.bhs.readUInt16BE(36)}
  }

  /** A whole login to the full-feature phase, starting in the operational stage (as libiscsi does). */
  async login(target: string, extra: Record<string, string> = {}, isid?: string): Promise<Record<string, string>> {
    const r = await this.loginStep(1, 3, true, {InitiatorName: INITIATOR, TargetName: target, SessionType: 'Normal', HeaderDigest: 'None', DataDigest: 'None', ...extra}, isid)
    if (r.status !== 0) throw new Error(`login failed: 0x${r.status.toString(16)}`)
    // A new I_T nexus has a power-on unit attention pending: TEST UNIT READY takes it, as libiscsi does.
    this.unitAttention = await this.scsi([0, 0, 0, 0, 0, 0], 0)
    return r.keys
  }

  /** Send a SCSI command (READ direction unless `write`) and gather Data-In PDUs up to its status. */
  async scsi(cdb: number[] | Buffer, edtl: number, opts: {write?: boolean; lun?: number; immediate?: boolean} = {}): Promise<ScsiReply> {
    const itt = this.itt++
    const c = Buffer.alloc(16)
    Buffer.from(cdb).copy(c)
    this.send(
      pdu((opts.immediate ? 0x40 : 0) | 0x01, 0x80 | (opts.write ? 0x20 : 0x40) | 0x01, Buffer.alloc(0), (b) => {
        b[9] = opts.lun ?? 0
        b.writeUInt32BE(itt, 16)
        b.writeUInt32BE(edtl, 20)
        b.writeUInt32BE(this.cmdSN, 24)
        b.writeUInt32BE(this.expStatSN, 28)
        c.copy(b, 32)
      }),
    )
    if (!opts.immediate) this.cmdSN++
    const dataIns: Pdu[] = []
    for (;;) {
      const p = await this.read()
      if (p.itt !== itt) throw new Error(`PDU 0x${p.opcode.toString(16)} for task ${p.itt}, waiting for ${itt}`)
      if (p.opcode === 0x25) {
        dataIns.push(p)
        if (p.flags & 0x01) {
          this.expStatSN = p.bhs.readUInt32BE(24) + 1
          return {dataIns, data: Buffer.concat(dataIns.map((d) => d.data)), status: p.bhs[3], sense: undefined, flags: p.flags, residual: p.bhs.readUInt32BE(44), response: p}
        }
        continue
      }
      if (p.opcode !== 0x21) throw new Error(`unexpected PDU 0x${p.opcode.toString(16)}`)
      this.expStatSN = p.bhs.readUInt32BE(24) + 1
      const sense = p.data.length >= 2 ? p.data.subarray(2, 2 + p.data.readUInt16BE(0)) : undefined
      return {dataIns, data: Buffer.concat(dataIns.map((d) => d.data)), status: p.bhs[3], sense, flags: p.flags, residual: p.bhs.readUInt32BE(44), response: p}
    }
  }

  /** A SCSI Command PDU for a write (W bit), without waiting for anything. Returns its ITT. */
  sendWrite(cdb: number[] | Buffer, edtl: number): number {
    const itt = this.itt++
    const c = Buffer.alloc(16)
    Buffer.from(cdb).copy(c)
    this.send(
      pdu(0x01, 0x80 | 0x20 | 0x01, Buffer.alloc(0), (b) => {
        b.writeUInt32BE(itt, 16)
        b.writeUInt32BE(edtl, 20)
        b.writeUInt32BE(this.cmdSN++, 24)
        b.writeUInt32BE(this.expStatSN, 28)
        c.copy(b, 32)
      }),
    )
    return itt
  }

  /** One Data-Out PDU (fields as given, so tests can send wrong ones). */
  dataOut(f: DataOutFields): void {
    this.send(this.dataOutPdu(f))
  }

  /** The same Data-Out PDU, built and not sent (to put it in one segment with other PDUs). */
  dataOutPdu(f: DataOutFields): Buffer {
    return pdu(0x05, f.final ? 0x80 : 0, f.data, (b) => {
      b.writeUInt32BE(f.itt, 16)
      b.writeUInt32BE(f.ttt, 20)
      b.writeUInt32BE(this.expStatSN, 28)
      b.writeUInt32BE(f.dataSN, 36)
      b.writeUInt32BE(f.offset, 40)
    })
  }

  /**
   * A write command answered the way an initiator does: for each R2T, Data-Out PDUs of at most `segment`
   * bytes (DataSN from 0, F on the last) covering exactly what it asks. Returns the R2Ts seen and the reply.
   */
  async write(cdb: number[] | Buffer, data: Buffer, opts: {edtl?: number; segment?: number} = {}): Promise<ScsiReply & {r2ts: Pdu[]}> {
    const itt = this.sendWrite(cdb, opts.edtl ?? data.length)
    const segment = opts.segment ?? 8192
    const r2ts: Pdu[] = []
    for (;;) {
      const p = await this.read()
      if (p.itt !== itt) throw new Error(`PDU 0x${p.opcode.toString(16)} for task ${p.itt}, waiting for ${itt}`)
      if (p.opcode === 0x31) {
        r2ts.push(p)
        const ttt = p.bhs.readUInt32BE(20)
        const offset = p.bhs.readUInt32BE(40)
        const length = p.bhs.readUInt32BE(44)
        let sn = 0
        for (let at = offset; at < offset + length; at += segment) {
          const n = Math.min(segment, offset + length - at)
          this.dataOut({itt, ttt, dataSN: sn++, offset: at, data: data.subarray(at, at + n), final: at + n >= offset + length})
        }
        continue
      }
      if (p.opcode !== 0x21) throw new Error(`unexpected PDU 0x${p.opcode.toString(16)}`)
      this.expStatSN = p.bhs.readUInt32BE(24) + 1
      const sense = p.data.length >= 2 ? p.data.subarray(2, 2 + p.data.readUInt16BE(0)) : undefined
      return {dataIns: [], data: Buffer.alloc(0), status: p.bhs[3], sense, flags: p.flags, residual: p.bhs.readUInt32BE(44), response: p, r2ts}
    }
  }

  /**
   * A Task Management Function Request, immediate (its CmdSN field the next CmdSN, not advanced), built and
   * not sent, so a test can put it in one segment with other PDUs. Returns the PDU and its ITT.
   */
  tmfPdu(fn: number, f: {ref?: number; refCmdSN?: number; cmdSN?: number; lun?: number} = {}): {pdu: Buffer; itt: number} {
    const itt = this.itt++
    const b = pdu(0x40 | 0x02, 0x80 | fn, Buffer.alloc(0), (h) => {
      h[9] = f.lun ?? 0
      h.writeUInt32BE(itt, 16)
      h.writeUInt32BE(f.ref ?? 0xffffffff, 20)
      h.writeUInt32BE(f.cmdSN ?? this.cmdSN, 24)
      h.writeUInt32BE(this.expStatSN, 28)
      h.writeUInt32BE((f.refCmdSN ?? this.cmdSN - 1) >>> 0, 32)
    })
    return {pdu: b, itt}
  }

  /** NOP-Out with ping data; resolves with the NOP-In. */
  async nop(data: Buffer): Promise<Pdu> {
    const itt = this.itt++
    this.send(
      pdu(0x40, 0x80, data, (b) => {
        b.writeUInt32BE(itt, 16)
        b.writeUInt32BE(0xffffffff, 20)
        b.writeUInt32BE(this.cmdSN, 24)
        b.writeUInt32BE(this.expStatSN, 28)
      }),
    )
    return this.read()
  }
}

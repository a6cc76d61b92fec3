/**
 * Target "iscsi": malformed iSCSI sessions against the real target (startIscsiServer on loopback TCP),
 * with the `error` bad-area policy and with `zero` on the main thread, and with `error` on serving threads
 * (the witness holds one thread; cases get the other or, when it is busy, the main thread); the writable
 * server (an overlay) on serving threads as well.
 *
 * A session is generated from a model of RFC 7143: a login (either start, CSG=0 or CSG=1; sometimes with
 * bad stages, unknown or malformed keys, a wrong target name, a bad version, continued text), then PDUs in
 * the full feature phase: READ 6/10/12/16 in and out of range with expected lengths short, exact and long;
 * random CDBs of every opcode in the command table and unknown ones; write-class commands; NOP-Outs with
 * ping data; task management; text; unsolicited Data-Out; SNACK and unknown opcodes; truncated PDUs, data
 * segments larger than declared, garbage; ended by Logout, a half-close or a disconnect. One case in five
 * flips random bytes of such a session ("chaos") and checks only what holds for any input.
 *
 * A fourth server is writable (an overlay over the same image, on the main thread). Its sessions write:
 * WRITE 6/10/12/16 with the Data-Out an initiator sends for each R2T (the model predicts every R2T's TTT,
 * offset and length from the negotiated MaxBurstLength, segments of various sizes), and Data-Out sequences
 * gone wrong — a wrong DataSN, buffer offset or TTT, data past the burst, a burst ended early, a Data-Out
 * for no task. Chaos there flips bits of Data-Out PDUs only (never a CDB: the model must know what each
 * command may write), and no garbage or write-class random CDBs are sent.
 *
 * The contract checked:
 *  - every PDU the target sends parses: a target opcode, a data segment no larger than the initiator
 *    declared, Data-In of a task in order (DataSN from 0, offsets contiguous), status once per task;
 *  - a read answered GOOD returns the image's bytes (zeros in bad areas under `zero`); one answered
 *    CHECK CONDITION under `error` is MEDIUM ERROR naming the first bad LBA, with the good blocks before it,
 *    or ILLEGAL REQUEST for a range past the end; a read that touches no bad area never fails with a
 *    medium error; a write-class command never succeeds;
 *  - writable server: every R2T has the TTT, buffer offset and length the model predicts (≤ MaxBurstLength);
 *    a write sent right is GOOD whenever it gets a status, one whose Data-Out went wrong never is (ABORTED
 *    COMMAND, or no status while it waits for data); a Data-Out for no task or another TTT gets a Reject;
 *    a read that overlaps no write of its session returns the model's bytes (the image with every write
 *    answered GOOD applied; sectors whose fate is unknown — written without a status, or by a damaged
 *    Data-Out — are left out of every later check), and the witness reads the model's bytes;
 *  - the target never crashes, logs no internal error, keeps serving a witness session that was open all
 *    along, and a fresh session afterwards reads correct bytes.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {Overlay} from '../../src/layers/overlay'
import * as net from 'node:net'
import {BlockServer, type BadPolicy} from '../../src/core/blockserver'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {startIscsiServer, type RunningIscsiTarget} from '../../src/serve/iscsi'
import {COMMANDS} from '../../src/serve/iscsi/scsi'
import {IscsiRawClient, INITIATOR, pdu, text} from '../../test/iscsi/rawclient'
import {normalize, type CaseContext, type CaseResult, type Target, type TargetInstance} from '../harness'
import {INTERNAL_LOG, makeServedImage, touchesBad, until, type ServedImage} from '../net/fixture'
import type {Rng} from '../rng'

const SECTOR = 512

interface Server {
  policy: BadPolicy
  running: RunningIscsiTarget
  logs: string[]
  witness?: IscsiRawClient
  isid: number
  /** Writable server: what every sector holds now, and the sectors whose content is not known. */
  writable?: {model: Buffer; unknown: Uint8Array}
}

/** A write of the writable server's session as the model sent it. */
interface WriteExpect {
  lba: number
  blocks: number
  data: Buffer
  /** right: its Data-Out is all correct; abort: it went wrong (never GOOD); wait: it waits for data (no status). */
  kind: 'right' | 'abort' | 'wait'
}

interface ReadExpect {
  lba: number
  blocks: number
  edtl: number
}

interface Session {
  bytes: Buffer[]
  steps: string[]
  reads: Map<number, ReadExpect>
  writes: Set<number>
  /** Writable server: its writes by ITT, the R2Ts the model predicts (in order), the PDUs that must be rejected, and the Data-Out PDUs (chaos flips only those). */
  w?: {writes: Map<number, WriteExpect>; r2ts: Array<{itt: number; ttt: number; offset: number; length: number}>; rejects: number; dataOutAt: number[]}
  /** Past this the model cannot predict answers (a lie about a length, chaos). */
  lenient: boolean
  maxRecv: number
}

function cdbRead(rng: Rng, size: number): {cdb: Buffer; lba: number; blocks: number} {
  const blocksTotal = size / SECTOR
  const kind = rng.pick([10, 10, 16, 12, 6] as const)
  let lba = rng.weighted([
    [6, rng.int(blocksTotal)],
    [1, blocksTotal - rng.int(4)],
    [1, blocksTotal + rng.int(8)],
    [1, rng.u32()],
  ] as const)
  let blocks = rng.weighted([
    [5, 1 + rng.int(16)],
    [2, rng.int(300)],
    [1, 0],
  ] as const)
  const cdb = Buffer.alloc(kind === 6 ? 6 : kind)
  if (kind === 6) {
    lba &= 0x1fffff
    blocks = Math.min(blocks, 255)
    cdb[0] = 0x08
    cdb.writeUIntBE(lba, 1, 3)
    cdb[4] = blocks
    if (blocks === 0) blocks = 256
  } else if (kind === 10) {
    lba >>>= 0
    cdb[0] = 0x28
    cdb.writeUInt32BE(lba, 2)
    cdb.writeUInt16BE(blocks, 7)
  } else if (kind === 12) {
    lba >>>= 0
    cdb[0] = 0xa8
    cdb.writeUInt32BE(lba, 2)
    cdb.writeUInt32BE(blocks, 6)
  } else {
    cdb[0] = 0x88
    cdb.writeBigUInt64BE(BigInt(lba), 2)
    cdb.writeUInt32BE(blocks, 10)
  }
  return {cdb, lba, blocks}
}

function scsiPdu(c: {itt: number; cmdSN: number}, cdb: Buffer, edtl: number, write: boolean): Buffer {
  const c16 = Buffer.alloc(16)
  cdb.copy(c16, 0, 0, Math.min(16, cdb.length))
  return pdu(0x01, 0x81 | (write ? 0x20 : 0x40), Buffer.alloc(0), (b) => {
    b.writeUInt32BE(c.itt, 16)
    b.writeUInt32BE(edtl, 20)
    b.writeUInt32BE(c.cmdSN, 24)
    c16.copy(b, 32)
  })
}

function dataOutPdu(f: {itt: number; ttt: number; dataSN: number; offset: number; data: Buffer; final: boolean}): Buffer {
  return pdu(0x05, f.final ? 0x80 : 0, f.data, (b) => {
    b.writeUInt32BE(f.itt, 16)
    b.writeUInt32BE(f.ttt, 20)
    b.writeUInt32BE(f.dataSN, 36)
    b.writeUInt32BE(f.offset, 40)
  })
}

function generate(rng: Rng, iqn: string, size: number, isid: string, writable = false): Session {
  const s: Session = {bytes: [], steps: [], reads: new Map(), writes: new Set(), lenient: false, maxRecv: rng.pick([512, 4096, 8192, 65536, 262144])}
  if (writable) s.w = {writes: new Map(), r2ts: [], rejects: 0, dataOutAt: []}
  let maxBurst = 262144 // the default until negotiated (RFC 7143 §13.13)
  let nextTtt = 1
  const push = (b: Buffer, step: string) => {
    s.bytes.push(b)
    s.steps.push(step)
  }
  const login = (csg: number, nsg: number, transit: boolean, keys: Record<string, string>, mangle?: (b: Buffer) => void) => {
    const b = pdu(0x43, (transit ? 0x80 : 0) | (csg << 2) | (transit ? nsg : 0), text(keys), (h) => {
      Buffer.from(isid, 'hex').copy(h, 8)
      h.writeUInt32BE(1, 16)
      h.writeUInt32BE(1, 24)
    })
    mangle?.(b)
    push(b, `login ${csg}->${transit ? nsg : '-'} ${Object.keys(keys).join(',')}`)
  }
  const names = {InitiatorName: INITIATOR, TargetName: rng.chance(0.05) ? 'iqn.2000-01.com.example:nope' : iqn}
  const op = {MaxRecvDataSegmentLength: String(s.maxRecv), MaxBurstLength: String(rng.pick([512, 8192, 262144, 16776192]))}
  const burstIfNegotiated = Number(op.MaxBurstLength)
  const extra: Record<string, string> = rng.chance(0.2) ? {[rng.pick(['X-vdev.fuzz', 'HeaderDigest', 'MaxConnections', 'Bogus'])]: rng.pick(['', 'Yes', '0', 'x'.repeat(rng.int(200)), 'None,Foo'])} : {}
  switch (rng.int(6)) {
    case 0:
      login(0, 1, true, {...names, SessionType: 'Normal', AuthMethod: rng.pick(['None', 'CHAP,None', 'CHAP'])})
      login(1, 3, true, {...op, ...extra})
      maxBurst = burstIfNegotiated
      break
    case 1:
      login(rng.int(4), rng.int(4), rng.chance(0.5), {...names, ...extra}, (b) => rng.chance(0.3) && (b[3] = rng.int(3)))
      s.maxRecv = 8192 // not declared: the default (RFC 7143 §13.12)
      s.lenient = true
      break
    case 2:
      // Continued login text.
      login(1, 0, false, names, (b) => (b[1] |= 0x40))
      login(1, 3, true, op)
      maxBurst = burstIfNegotiated
      break
    default:
      login(1, 3, true, {...names, ...op, HeaderDigest: 'None', DataDigest: 'None', ...extra})
      maxBurst = burstIfNegotiated
  }
  // An extra key (a second MaxBurstLength, a malformed one) makes the prediction unsure: such a session is lenient.
  if (writable && Object.keys(extra).length > 0) s.lenient = true
  /**
   * The Data-Out of a WRITE the target will ask for: for each predicted R2T (one burst of at most
   * MaxBurstLength, TTT counted from 1 on this connection), PDUs of a random segment size, DataSN from 0,
   * F on the last; sometimes one of them goes wrong, and the rest of that write is not sent.
   */
  const writeDataOut = (id: number, r: {lba: number; blocks: number}) => {
    const w = s.w!
    const length = r.blocks * SECTOR
    // No R2T for a write refused on its CDB (past the end, over 8 MiB) or of 0 blocks.
    if (r.blocks === 0 || r.lba + r.blocks > size / SECTOR || length > 8 * 1024 * 1024) return
    const data = rng.bytes(length)
    const seg = Math.min(262144, rng.pick([512, 1536, 4096, 65536, 262144]))
    const mangle = rng.chance(0.25) ? rng.pick(['datasn', 'offset', 'ttt', 'past', 'early', 'no-task'] as const) : undefined
    let pdus = 0
    for (let burst = 0; burst < length; burst += maxBurst) pdus += Math.ceil((Math.min(length, burst + maxBurst) - burst) / seg)
    const mangleAt = rng.int(pdus)
    let kind: WriteExpect['kind'] = 'right'
    let pduIndex = 0
    out: for (let burst = 0; burst < length; burst += maxBurst) {
      const end = Math.min(length, burst + maxBurst)
      const ttt = nextTtt++
      w.r2ts.push({itt: id, ttt, offset: burst, length: end - burst})
      let sn = 0
      for (let at = burst; at < end; at += seg) {
        const n = Math.min(seg, end - at)
        let f = {itt: id, ttt, dataSN: sn++, offset: at, data: data.subarray(at, at + n), final: at + n >= end}
        let step = `data-out ${id} ttt ${ttt} sn ${f.dataSN} @${at}+${n}`
        if (mangle && pduIndex++ === mangleAt) {
          if (mangle === 'datasn') f = {...f, dataSN: f.dataSN + 1 + rng.int(5)}
          else if (mangle === 'offset') f = {...f, offset: f.offset + SECTOR * (1 + rng.int(4))}
          else if (mangle === 'ttt') f = {...f, ttt: ttt + 1 + rng.int(1000)}
          // Past the burst's end (a longer last PDU; the segment stays within the target's 262144 bytes).
          else if (mangle === 'past') f = {...f, offset: end - Math.min(n, 262144 - SECTOR), data: Buffer.concat([f.data.subarray(0, Math.min(n, 262144 - SECTOR)), rng.bytes(SECTOR)])}
          // A burst ended early: F on a PDU that is not its last (or, on its last, a DataSN gone wrong).
          else if (mangle === 'early') f = f.final ? {...f, dataSN: f.dataSN + 1} : {...f, final: true}
          else f = {...f, itt: 0x7f000000 + rng.int(1000)}
          step += ` mangled: ${mangle}`
          if (mangle === 'ttt' || mangle === 'no-task') w.rejects++
          kind = mangle === 'ttt' || mangle === 'no-task' ? 'wait' : 'abort'
          w.dataOutAt.push(s.bytes.length)
          push(dataOutPdu(f), step)
          break out
        }
        w.dataOutAt.push(s.bytes.length)
        push(dataOutPdu(f), step)
      }
    }
    w.writes.set(id, {lba: r.lba, blocks: r.blocks, data, kind})
  }
  let cmdSN = 1
  let itt = 100
  const n = rng.int(30)
  for (let i = 0; i < n; i++) {
    const kind = rng.weighted([
      [10, 'read'],
      [3, 'random-cdb'],
      [writable ? 8 : 2, 'write'],
      [2, 'nop'],
      [1, 'tmf'],
      [1, 'text'],
      [1, 'data-out'],
      [1, 'unknown'],
      [1, 'oversize'],
      [1, 'truncated'],
      [1, 'garbage'],
    ] as const)
    const id = itt++
    switch (kind) {
      case 'read': {
        const r = cdbRead(rng, size)
        const full = r.blocks * SECTOR
        const edtl = rng.weighted([
          [6, full],
          [1, rng.int(full + 1)],
          [1, full + rng.int(10000)],
        ] as const)
        push(scsiPdu({itt: id, cmdSN: cmdSN++}, r.cdb, edtl, false), `read ${r.cdb[0].toString(16)} lba ${r.lba} x${r.blocks} edtl ${edtl}`)
        s.reads.set(id, {lba: r.lba, blocks: r.blocks, edtl})
        break
      }
      case 'random-cdb': {
        const spec = rng.chance(0.9) ? rng.pick(COMMANDS) : undefined
        const cdb = rng.bytes(spec ? spec.usage.length : 6 + rng.int(11))
        if (spec) {
          cdb[0] = spec.opcode
          if (spec.serviceAction !== undefined) cdb[1] = spec.serviceAction
        }
        // The writable server's model must know every write and every R2T: no command from random bytes that
        // takes Data-Out there (write-class, and VERIFY, whose BYTCHK asks for the data to compare).
        if (writable && (!spec || /WRITE|UNMAP|COMPARE|VERIFY/.test(spec.name))) {
          itt--
          continue
        }
        const write = spec ? /WRITE|UNMAP|VERIFY|COMPARE/.test(spec.name) && rng.chance(0.5) : false
        push(scsiPdu({itt: id, cmdSN: cmdSN++}, cdb, rng.int(70000), write), `cdb ${cdb.toString('hex')}${write ? ' W' : ''}`)
        if (spec && /^(WRITE|UNMAP|COMPARE AND WRITE|ORWRITE)/.test(spec.name)) s.writes.add(id)
        break
      }
      case 'write': {
        const r = cdbRead(rng, size)
        r.cdb[0] = {0x08: 0x0a, 0x28: 0x2a, 0xa8: 0xaa, 0x88: 0x8a}[r.cdb[0]]!
        push(scsiPdu({itt: id, cmdSN: cmdSN++}, r.cdb, r.blocks * SECTOR, true), `write ${r.cdb[0].toString(16)} lba ${r.lba}`)
        s.writes.add(id)
        if (s.w) writeDataOut(id, r)
        break
      }
      case 'nop': {
        const ping = rng.bytes(rng.int(600))
        push(
          pdu(0x40, 0x80, ping, (b) => {
            b.writeUInt32BE(rng.chance(0.1) ? 0xffffffff : id, 16)
            b.writeUInt32BE(0xffffffff, 20)
            b.writeUInt32BE(cmdSN, 24)
          }),
          `nop ${ping.length}`,
        )
        break
      }
      case 'tmf':
        push(
          pdu(0x42, 0x80 | rng.int(10), Buffer.alloc(0), (b) => {
            b.writeUInt32BE(id, 16)
            b.writeUInt32BE(rng.chance(0.5) ? id - 1 - rng.int(5) : rng.u32(), 20)
            b.writeUInt32BE(cmdSN, 24)
            b.writeUInt32BE(cmdSN - 1, 32)
          }),
          'tmf',
        )
        break
      case 'text':
        push(
          pdu(0x04, rng.chance(0.8) ? 0x80 : 0xc0, text({SendTargets: rng.pick(['All', iqn, '', 'x'])}), (b) => {
            b.writeUInt32BE(id, 16)
            b.writeUInt32BE(0xffffffff, 20)
            b.writeUInt32BE(cmdSN++, 24)
          }),
          'text',
        )
        break
      case 'data-out':
        push(pdu(0x05, rng.chance(0.5) ? 0x80 : 0, rng.bytes(rng.int(2048)), (b) => b.writeUInt32BE(rng.pick([id - 1, rng.u32()]), 16)), 'data-out')
        break
      case 'unknown':
        push(pdu(rng.pick([0x10, 0x07, 0x1c, 0x3e, 0x23]), 0x80, rng.bytes(rng.int(64)), (b) => b.writeUInt32BE(id, 16)), 'unknown opcode')
        break
      case 'oversize': {
        const h = Buffer.alloc(48)
        h[0] = 0x40
        h[1] = 0x80
        h.writeUIntBE(262145 + rng.int(1 << 23), 5, 3)
        push(h, 'oversize data segment')
        s.lenient = true
        break
      }
      case 'truncated':
        push(rng.bytes(rng.int(47) + 1), 'truncated')
        s.lenient = true
        i = n
        break
      case 'garbage':
        if (writable) {
          // Bytes that may frame as commands with any CDB: not for the writable server's model.
          itt--
          continue
        }
        push(rng.bytes(rng.int(4096)), 'garbage')
        s.lenient = true
        break
    }
  }
  if (rng.chance(0.7))
    push(
      pdu(0x46, 0x80, Buffer.alloc(0), (b) => {
        b.writeUInt32BE(9999, 16)
        b.writeUInt32BE(cmdSN, 24)
      }),
      'logout',
    )
  return s
}

/** Send the session, read what the target says until it closes or goes quiet; check every PDU. */
async function runSession(srv: Server, fx: ServedImage, ctx: CaseContext, isid: string): Promise<{failures: string[]; outcome: string; input: Buffer; steps: string[]}> {
  const rng = ctx.rng
  const s = generate(rng, srv.running.iqn, fx.size, isid, srv.writable !== undefined)
  let input = Buffer.concat(s.bytes)
  const chaos = rng.chance(0.2) && (!s.w || s.w.dataOutAt.length > 0)
  if (chaos && s.w) {
    // Writable server: bits of Data-Out PDUs only — ITT, TTT, DataSN, offset and data, never the framing
    // (a lost frame could turn data into commands the model does not know).
    input = Buffer.from(input)
    const starts: number[] = []
    let at = 0
    for (const b of s.bytes) starts.push((at += b.length) - b.length)
    for (let k = 1 + rng.int(8); k > 0; k--) {
      const i = rng.pick(s.w.dataOutAt)
      const field = rng.weighted([
        [1, [16, 8]],
        [1, [36, 8]],
        [4, [48, s.bytes[i].length - 48]],
      ] as const)
      if (field[1] <= 0) continue
      input[starts[i] + field[0] + rng.int(field[1])] ^= 1 << rng.int(8)
    }
    s.lenient = true
  } else if (chaos) {
    input = Buffer.from(input)
    for (let k = 1 + rng.int(8); k > 0 && input.length; k--) input[rng.int(input.length)] ^= 1 << rng.int(8)
    s.lenient = true
  }
  const failures: string[] = []
  const sock = net.connect(srv.running.address.port, '127.0.0.1')
  sock.on('error', () => {})
  let got = Buffer.alloc(0)
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()))
  sock.on('data', (d: Buffer) => (got = Buffer.concat([got, d])))
  await new Promise<void>((resolve) => sock.once('connect', () => resolve()))
  const ending = rng.pick(['wait', 'wait', 'half-close', 'destroy'])
  sock.write(input)
  if (ending === 'half-close') sock.end()
  const quiet = async () => {
    let last = -1
    while (got.length !== last) {
      last = got.length
      await Promise.race([closed, new Promise((r) => setTimeout(r, 60))])
    }
  }
  if (ending === 'destroy') {
    await new Promise((r) => setTimeout(r, rng.int(5)))
    sock.destroy()
  } else await Promise.race([closed, quiet()])
  sock.destroy()
  // Parse what came back.
  const tasks = new Map<number, {data: Buffer[]; nextSN: number; status?: number; sense?: Buffer; ended: boolean}>()
  const r2ts: Array<{itt: number; ttt: number; offset: number; length: number}> = []
  let off = 0
  let pdus = 0
  let loggedIn = false
  while (off + 48 <= got.length) {
    const h = got.subarray(off, off + 48)
    const opcode = h[0] & 0x3f
    const len = h.readUIntBE(5, 3)
    const total = 48 + h[4] * 4 + len + ((4 - (len % 4)) % 4)
    if (off + total > got.length) break
    const data = got.subarray(off + 48 + h[4] * 4, off + 48 + h[4] * 4 + len)
    off += total
    pdus++
    if (![0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f].includes(opcode)) {
      failures.push(`the target sent opcode 0x${opcode.toString(16)}`)
      break
    }
    if (opcode === 0x23 && h[1] & 0x80 && (h[1] & 3) === 3 && h[36] === 0) loggedIn = true
    const limit = loggedIn && opcode !== 0x23 ? s.maxRecv : 8192
    if (len > limit && opcode !== 0x3f && !chaos) failures.push(`a data segment of ${len} bytes (opcode 0x${opcode.toString(16)}), the initiator declared ${limit}`)
    const itt = h.readUInt32BE(16)
    if (opcode === 0x31) r2ts.push({itt, ttt: h.readUInt32BE(20), offset: h.readUInt32BE(40), length: h.readUInt32BE(44)})
    if (opcode === 0x25 || opcode === 0x21) {
      let t = tasks.get(itt)
      if (!t) tasks.set(itt, (t = {data: [], nextSN: 0, ended: false}))
      // Under chaos a damaged header can give two commands one ITT: per-task order is only checked in model sessions.
      if (t.ended && !chaos) failures.push(`PDU 0x${opcode.toString(16)} for task ${itt} after its status`)
      if (opcode === 0x25) {
        if (h.readUInt32BE(36) !== t.nextSN++ && !chaos) failures.push(`Data-In of task ${itt} out of order (DataSN ${h.readUInt32BE(36)})`)
        const at = t.data.reduce((a, b) => a + b.length, 0)
        if (h.readUInt32BE(40) !== at && !chaos) failures.push(`Data-In of task ${itt} at offset ${h.readUInt32BE(40)}, expected ${at}`)
        t.data.push(Buffer.from(data))
        if (h[1] & 0x01) {
          t.status = h[3]
          t.ended = true
        }
      } else {
        t.status = h[3]
        t.sense = data.length >= 2 ? Buffer.from(data.subarray(2, 2 + data.readUInt16BE(0))) : undefined
        t.ended = true
      }
    }
  }
  const w = srv.writable
  if (w && s.w) {
    // The R2Ts the model predicted, in order (a session cut short sees a prefix of them).
    if (!s.lenient) {
      if (r2ts.length > s.w.r2ts.length) failures.push(`${r2ts.length} R2Ts, the model predicted ${s.w.r2ts.length}`)
      for (let i = 0; i < Math.min(r2ts.length, s.w.r2ts.length); i++) {
        const a = r2ts[i]
        const e = s.w.r2ts[i]
        if (a.itt !== e.itt || a.ttt !== e.ttt || a.offset !== e.offset || a.length !== e.length) {
          failures.push(`R2T ${i} is (ITT ${a.itt}, TTT ${a.ttt}, ${a.offset}+${a.length}), the model predicted (ITT ${e.itt}, TTT ${e.ttt}, ${e.offset}+${e.length})`)
          break
        }
      }
    }
    for (const [itt, e] of s.w.writes) {
      const t = tasks.get(itt)
      const status = t?.ended ? t.status : undefined
      if (!s.lenient && status !== undefined) {
        const key = t!.sense ? (t!.sense[0] === 0x72 ? t!.sense[1] & 0xf : t!.sense[2] & 0xf) : -1
        // (The first command of a session may get the power-on UNIT ATTENTION instead of running.)
        if (e.kind === 'right' && status !== 0 && key !== 6) failures.push(`write ${itt} (lba ${e.lba} x${e.blocks}) sent right ended with status ${status}, sense key ${key}`)
        if (e.kind === 'abort') {
          if (status !== 2 || key !== 0x0b) failures.push(`write ${itt} whose Data-Out went wrong ended with status ${status}, sense key ${key} (ABORTED COMMAND expected)`)
        }
        if (e.kind === 'wait') failures.push(`write ${itt} still waiting for its Data-Out got status ${status}`)
      }
      // The model: a GOOD write of a model session is applied; a write whose fate is not known makes its sectors unknown.
      const sectors = [e.lba, e.lba + e.blocks] as const
      if (!chaos && status === 0) {
        e.data.copy(w.model, e.lba * SECTOR)
        w.unknown.fill(0, ...sectors)
      } else if (chaos || !(status === 2 || (status === undefined && e.kind === 'wait' && !s.lenient))) w.unknown.fill(1, ...sectors)
    }
  }
  const writtenInSession = (lba: number, blocks: number) => [...(s.w?.writes.values() ?? [])].some((e) => e.lba < lba + blocks && lba < e.lba + e.blocks)
  // Check reads and writes against the model (whatever the session, an answer must be right).
  for (const [itt, t] of tasks) {
    if (!t.ended) continue
    // Under chaos the target may have received another opcode under this ITT than the one sent.
    if (s.writes.has(itt) && t.status === 0 && !chaos && !w) failures.push(`write-class task ${itt} succeeded`)
    const r = s.reads.get(itt)
    if (!r || chaos) continue
    if (w) {
      // Writable server: reads run concurrently with the session's writes; only a read that overlaps none of
      // them, no sector of unknown content and no bad area is compared (with the model).
      const past = r.lba + r.blocks > fx.size / SECTOR
      if (t.status === 0 && past) failures.push(`read of task ${itt} past the end succeeded`)
      if (t.status !== 0 || past || writtenInSession(r.lba, r.blocks) || touchesBad(r.lba * SECTOR, r.blocks * SECTOR, fx.bad)) continue
      if (w.unknown.subarray(r.lba, r.lba + r.blocks).some((u) => u !== 0)) continue
      const want = w.model.subarray(r.lba * SECTOR, r.lba * SECTOR + Math.min(r.blocks * SECTOR, r.edtl))
      if (!Buffer.concat(t.data).equals(want)) failures.push(`read of task ${itt} (lba ${r.lba} x${r.blocks}) on the writable LUN returned bytes the model does not have`)
      continue
    }
    const data = Buffer.concat(t.data)
    const offset = r.lba * SECTOR
    const length = r.blocks * SECTOR
    const past = r.lba + r.blocks > fx.size / SECTOR
    if (t.status === 0) {
      if (past) failures.push(`read of task ${itt} past the end succeeded`)
      else {
        const want = fx.data.subarray(offset, offset + Math.min(length, r.edtl))
        if (!data.equals(want)) failures.push(`read of task ${itt} (lba ${r.lba} x${r.blocks}) returned wrong bytes`)
        if (srv.policy === 'error' && touchesBad(offset, length, fx.bad)) failures.push(`read of task ${itt} over a bad area succeeded under the error policy`)
      }
    } else if (t.status === 2 && t.sense) {
      const key = t.sense[0] === 0x72 ? t.sense[1] & 0xf : t.sense[2] & 0xf
      const asc = t.sense[0] === 0x72 ? t.sense[2] : t.sense[12]
      if (key === 3) {
        const firstBad = fx.bad.filter((b) => b.offset + b.length > offset && b.offset < offset + length).map((b) => Math.floor(Math.max(b.offset, offset) / SECTOR))[0]
        if (srv.policy !== 'error' || firstBad === undefined) failures.push(`read of task ${itt} failed with MEDIUM ERROR where nothing is bad`)
        else {
          const info = t.sense.readUInt32BE(3)
          if (info !== firstBad) failures.push(`MEDIUM ERROR of task ${itt} names LBA ${info}, the first bad one is ${firstBad}`)
          const want = fx.data.subarray(offset, Math.min(firstBad * SECTOR, offset + r.edtl))
          if (!data.equals(want)) failures.push(`the good blocks before the bad one (task ${itt}) are wrong`)
        }
      } else if (key === 5 && asc === 0x21 && !past) failures.push(`read of task ${itt} inside the LU refused as out of range`)
      else if (key !== 5 && key !== 6) failures.push(`read of task ${itt} failed with sense key ${key}`)
    }
  }
  return {failures, outcome: `${loggedIn ? 'ffp' : 'login'}:${ending}:${chaos ? 'chaos' : 'model'}:${Math.min(pdus, 5)}`, input, steps: s.steps}
}

async function witness(srv: Server, fx: ServedImage, rng: Rng): Promise<string | undefined> {
  const c = srv.witness
  if (!c || c.socket.destroyed) return 'the witness session is gone'
  let lba = 0
  const w = srv.writable
  let found = false
  for (let k = 0; k < 50 && !found; k++) {
    lba = rng.int(fx.size / SECTOR - 128)
    found = !touchesBad(lba * SECTOR, 64 * SECTOR, fx.bad) && !(w && w.unknown.subarray(lba, lba + 64).some((u) => u !== 0))
  }
  if (!found) return undefined // (a writable LUN whose content is mostly unknown: nothing to compare)
  const truth = w ? w.model : fx.data
  const cdb = Buffer.alloc(10)
  cdb[0] = 0x28
  cdb.writeUInt32BE(lba, 2)
  cdb.writeUInt16BE(64, 7)
  try {
    const r = await Promise.race([c.scsi(cdb, 64 * SECTOR), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer within 5 s')), 5000))])
    if (r.status !== 0 || !r.data.equals(truth.subarray(lba * SECTOR, (lba + 64) * SECTOR))) return `the witness session read wrong bytes at LBA ${lba} (status ${r.status})`
  } catch (err) {
    return `the witness session got no answer: ${(err as Error).message}`
  }
  return undefined
}

async function newWitness(srv: Server): Promise<IscsiRawClient> {
  const c = await IscsiRawClient.connect(srv.running.address.port)
  await c.login(srv.running.iqn, {}, (0x400000000000 + srv.isid++).toString(16))
  return c
}

export const iscsiTarget: Target = {
  name: 'iscsi',
  caseTimeoutMs: 30_000,
  async setup(): Promise<TargetInstance> {
    const fx = await makeServedImage('vdev-fuzz-iscsi-')
    const images: VdimgImage[] = []
    const servers: Server[] = []
    let overlay: Overlay | undefined
    try {
      for (const [policy, threads] of [
        ['error', 0],
        ['zero', 0],
        ['error', 2],
      ] as const) {
        const img = await openImage(fx.image)
        images.push(img)
        const logs: string[] = []
        const running = await startIscsiServer(new BlockServer(img, {badPolicy: policy}), {
          listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
          image: fx.image,
          log: (l) => logs.push(l),
          threads,
        })
        if (threads && running.threads !== threads) throw new Error(`serving threads did not start: ${logs.join('; ')}`)
        const srv: Server = {policy, running, logs, isid: 1}
        servers.push(srv)
        srv.witness = await newWitness(srv)
      }
      // The writable server: an overlay over the image (in the fixture's directory, removed with it).
      const img = await openImage(fx.image)
      images.push(img)
      overlay = await Overlay.open(img, path.join(fx.dir, `fuzz-${process.pid}.vdovl`))
      const logs: string[] = []
      const running = await startIscsiServer(new BlockServer(overlay, {badPolicy: 'error'}), {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, image: fx.image, log: (l) => logs.push(l), threads: 2})
      // On serving threads too: each connection's LU over its thread's view of the overlay.
      if (running.threads !== 2) throw new Error(`the writable server's serving threads did not start: ${logs.join('; ')}`)
      const srv: Server = {policy: 'error', running, logs, isid: 1, writable: {model: Buffer.from(fx.data), unknown: new Uint8Array(fx.size / SECTOR)}}
      // The bad areas read as zeros in fx.data; the model keeps them out of every comparison (touchesBad).
      servers.push(srv)
      srv.witness = await newWitness(srv)
    } catch (err) {
      for (const s of servers) {
        s.witness?.destroy()
        await s.running.close()
      }
      await overlay?.close()
      for (const i of images) await i.close()
      fx.cleanup()
      throw err
    }
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const srv = ctx.rng.pick(servers)
        const logStart = srv.logs.length
        const before = srv.running.target.connectionCount
        // Fuzzed sessions use ISIDs of their own (one matching the witness's would reinstate it away).
        const r = await runSession(srv, fx, ctx, (0x800000000000 + ctx.iteration).toString(16))
        const w = await witness(srv, fx, ctx.rng)
        if (w) {
          r.failures.push(w)
          srv.witness?.destroy()
          try {
            srv.witness = await newWitness(srv)
          } catch {
            srv.witness = undefined
          }
        }
        if (!(await until(() => srv.running.target.connectionCount <= before, 5000))) r.failures.push(`the target kept a connection of the case open (${srv.running.target.connectionCount} > ${before})`)
        if (ctx.rng.chance(0.1)) {
          let fresh: IscsiRawClient | undefined
          try {
            fresh = await newWitness(srv)
            const saved = srv.witness
            srv.witness = fresh
            const f = await witness(srv, fx, ctx.rng)
            srv.witness = saved
            if (f) r.failures.push(`a fresh session: ${f}`)
          } catch (err) {
            r.failures.push(`a fresh session could not log in: ${(err as Error).message}`)
          } finally {
            fresh?.destroy()
          }
        }
        for (const l of srv.logs.slice(logStart)) if (INTERNAL_LOG.test(l)) r.failures.push(`the target logged an internal error: ${l.slice(0, 300)}`)
        if (srv.logs.length > 10000) srv.logs.splice(0, srv.logs.length)
        return {outcome: r.outcome + (r.failures.length ? `:fail:${normalize(r.failures[0], 60)}` : ''), failures: r.failures, input: {ext: 'bin', data: r.input}, steps: r.steps}
      },
      async close() {
        for (const s of servers) {
          s.witness?.destroy()
          await s.running.close()
        }
        await overlay?.close()
        for (const i of images) await i.close()
        fs.rmSync(path.join(fx.dir, `fuzz-${process.pid}.vdovl`), {force: true})
        fx.cleanup()
      },
    }
  },
}

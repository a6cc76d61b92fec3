/**
 * The writable LUN (a BlockServer over an overlay, docs/OVERLAY.md) PDU by PDU with the raw client: R2T
 * fields (R2TSN, TTT, buffer offset, desired length ≤ MaxBurstLength, one outstanding), Data-Out
 * reassembly, residuals when the EDTL differs from the CDB, the EDTL and the CDB's length checked before
 * anything is asked for, Reject for a Data-Out of no task or another TTT (the connection goes on),
 * ABORTED COMMAND for one out of sequence, and the SCSI side: FUA, WRITE SAME (zero, UNMAP, pattern),
 * UNMAP with its parameter list checks, SYNCHRONIZE CACHE, COMPARE AND WRITE, MODE SENSE WP, VPD B0/B2,
 * READ CAPACITY(16) LBPME, ENOSPC as 07/27/07. The base file never changes.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {BlockServer} from '../../src/core/blockserver'
import {Overlay, inspectOverlay} from '../../src/layers/overlay'
import {RawImage} from '../../src/sources/raw'
import {startIscsiServer, type RunningIscsiTarget} from '../../src/serve/iscsi'
import {MAX_DATA_OUT_BYTES} from '../../src/serve/iscsi/server'
import {prng, sha256, tmpDir} from '../helpers'
import {IscsiRawClient} from './rawclient'

const SECTOR = 512
const SIZE = 16 << 20
const BLOCKS = SIZE / SECTOR

const cdb10 = (op: number, lba: number, blocks: number, byte1 = 0) => {
  const c = Buffer.alloc(10)
  c[0] = op
  c[1] = byte1
  c.writeUInt32BE(lba, 2)
  c.writeUInt16BE(blocks, 7)
  return c
}
const cdb16 = (op: number, lba: number, blocks: number, byte1 = 0) => {
  const c = Buffer.alloc(16)
  c[0] = op
  c[1] = byte1
  c.writeBigUInt64BE(BigInt(lba), 2)
  c.writeUInt32BE(blocks, 10)
  return c
}
/** Sense key, ASC, ASCQ of fixed-format sense. */
const senseOf = (s: Buffer | undefined) => (s ? [s[2] & 0xf, s[12], s[13]] : undefined)

async function serveOverlay(base: string, file: string, logs: string[]): Promise<{t: RunningIscsiTarget; server: BlockServer; close: () => Promise<void>}> {
  const overlay = await Overlay.open(RawImage.open(base, {}), file)
  const server = new BlockServer(overlay)
  // Two serving threads: each connection's LU writes through its thread's view of the overlay.
  const t = await startIscsiServer(server, {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, image: base, log: (l) => logs.push(l), threads: 2})
  return {
    t,
    server,
    close: async () => {
      await t.close()
      await overlay.close()
    },
  }
}

describe('iscsi target: a writable LUN over an overlay (raw client)', function () {
  this.timeout(60_000)
  let dir: {dir: string; cleanup: () => void}
  let base: string
  let baseSha: string
  let ovl: string
  let served: Awaited<ReturnType<typeof serveOverlay>>
  let model: Buffer
  const logs: string[] = []
  const clients: IscsiRawClient[] = []
  const session = async (extra: Record<string, string> = {}, isid?: string) => {
    const c = await IscsiRawClient.connect(served.t.address.port)
    clients.push(c)
    await c.login(served.t.iqn, extra, isid)
    return c
  }
  const readBack = async (c: IscsiRawClient, lba: number, blocks: number) => {
    const r = await c.scsi(cdb10(0x28, lba, blocks), blocks * SECTOR)
    assert.equal(r.status, 0)
    return r.data
  }

  before(async () => {
    dir = tmpDir('vdev-iscsi-writable-')
    base = path.join(dir.dir, 'base.img')
    model = prng(7, SIZE)
    fs.writeFileSync(base, model)
    baseSha = sha256(model)
    ovl = path.join(dir.dir, 'o.vdovl')
    served = await serveOverlay(base, ovl, logs)
  })
  afterEach(() => {
    for (const c of clients.splice(0)) c.destroy()
  })
  after(async () => {
    await served?.close()
    if (base) assert.equal(sha256(fs.readFileSync(base)), baseSha, 'the base image changed')
    dir?.cleanup()
  })

  it('is served on serving threads (through views of the overlay), with WP clear, WCE, VPD B2 and LBPME', async () => {
    assert.equal(served.t.threads, 2)
    const c = await session()
    const ms = await c.scsi([0x5a, 0x08, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0], 256)
    assert.equal(ms.status, 0)
    assert.equal(ms.data[3] & 0x80, 0, 'WP is set')
    assert.equal(ms.data[3] & 0x10, 0x10, 'DPOFUA')
    assert.equal(ms.data[8 + 2] & 0x04, 0x04, 'WCE')
    const pages = await c.scsi([0x12, 0x01, 0x00, 0, 255, 0], 255)
    assert.deepEqual([...pages.data.subarray(4)], [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2])
    const b2 = await c.scsi([0x12, 0x01, 0xb2, 0, 255, 0], 255)
    assert.equal(b2.status, 0)
    assert.equal(b2.data[5] & 0xe4, 0xe4, 'LBPU, LBPWS, LBPWS10, LBPRZ')
    const b0 = await c.scsi([0x12, 0x01, 0xb0, 0, 255, 0], 255)
    assert.equal(b0.data[4] & 1, 1, 'WSNZ')
    assert.equal(b0.data.readUInt32BE(24), 256, 'maximum unmap block descriptor count')
    const rc = await c.scsi([0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], 32)
    assert.equal(rc.data[14] & 0xc0, 0xc0, 'LBPME and LBPRZ')
  })

  it('WRITE(10) of 600 KiB: one R2T per burst (≤ MaxBurstLength), R2TSN 0.., offsets, Data-Out of 8 KiB segments; GOOD; the bytes read back', async () => {
    const c = await session({MaxBurstLength: '262144'})
    const data = prng(11, 600 * 1024)
    const r = await c.write(cdb10(0x2a, 100, data.length / SECTOR), data)
    assert.equal(r.status, 0, `sense ${senseOf(r.sense)}`)
    assert.equal(r.flags & 0x06, 0, 'no residual')
    assert.deepEqual(
      r.r2ts.map((p) => [p.bhs.readUInt32BE(36), p.bhs.readUInt32BE(40), p.bhs.readUInt32BE(44)]),
      [
        [0, 0, 262144],
        [1, 262144, 262144],
        [2, 524288, 90112],
      ],
    )
    const ttts = r.r2ts.map((p) => p.bhs.readUInt32BE(20))
    assert.equal(new Set(ttts).size, 3)
    assert.ok(!ttts.includes(0xffffffff))
    data.copy(model, 100 * SECTOR)
    assert.ok((await readBack(c, 100, data.length / SECTOR)).equals(data))
  })

  it('EDTL longer than the CDB: its length only, GOOD, underflow; shorter by whole blocks: those blocks, GOOD, overflow; by part of a block: 05/0E/03, nothing written', async () => {
    const c = await session()
    const two = prng(12, 2 * SECTOR)
    let r = await c.write(cdb10(0x2a, 300, 1), Buffer.concat([two, Buffer.alloc(10000 - two.length)]), {edtl: 10000})
    assert.equal(r.status, 0)
    assert.equal(r.flags & 0x06, 0x02)
    assert.equal(r.residual, 10000 - SECTOR)
    assert.equal(r.r2ts.at(-1)!.bhs.readUInt32BE(44), SECTOR, 'asked for the CDB length only')
    two.copy(model, 300 * SECTOR, 0, SECTOR)
    r = await c.write(cdb10(0x2a, 310, 2), two.subarray(0, SECTOR), {edtl: SECTOR})
    assert.equal(r.status, 0)
    assert.equal(r.flags & 0x06, 0x04)
    assert.equal(r.residual, SECTOR)
    two.copy(model, 310 * SECTOR, 0, SECTOR)
    r = await c.write(cdb10(0x2a, 320, 1), two.subarray(0, 200), {edtl: 200})
    assert.equal(r.status, 2)
    assert.deepEqual(senseOf(r.sense), [0x5, 0x0e, 0x03])
    assert.equal(r.r2ts.length, 0)
    assert.equal(r.flags & 0x06, 0x04)
    assert.equal(r.residual, SECTOR - 200)
    assert.ok((await readBack(c, 300, 21)).equals(model.subarray(300 * SECTOR, 321 * SECTOR)))
  })

  it('nothing is asked for before the CDB is checked: past the end 05/21/00, over 8 MiB 05/24/00, WRPROTECT 05/24/00 — no R2T, no buffer', async () => {
    const c = await session()
    for (const [cdb, sense] of [
      [cdb16(0x8a, BLOCKS - 1, 0xffffffff), [5, 0x21, 0]],
      [cdb16(0x8a, 0, 20000), [5, 0x24, 0]],
      [cdb10(0x2a, 0, 8, 0x20), [5, 0x24, 0]],
    ] as const) {
      const r = await c.write(cdb, Buffer.alloc(0), {edtl: 0xffffffff})
      assert.equal(r.status, 2)
      assert.deepEqual(senseOf(r.sense), sense)
      assert.equal(r.r2ts.length, 0)
    }
  })

  it('a Data-Out for another TTT or no task gets a Reject and changes nothing; the command then completes with the right one', async () => {
    const c = await session()
    const data = prng(13, 4 * SECTOR)
    const itt = c.sendWrite(cdb10(0x2a, 400, 4), data.length)
    const r2t = await c.read()
    assert.equal(r2t.opcode, 0x31)
    const ttt = r2t.bhs.readUInt32BE(20)
    c.dataOut({itt, ttt: ttt + 1000, dataSN: 0, offset: 0, data: Buffer.alloc(data.length, 0xee), final: true})
    let p = await c.read()
    assert.equal(p.opcode, 0x3f)
    assert.equal(p.bhs[2], 0x09, 'invalid PDU field')
    c.expStatSN = p.bhs.readUInt32BE(24) + 1
    c.dataOut({itt: 0x7777, ttt, dataSN: 0, offset: 0, data: Buffer.alloc(SECTOR), final: true})
    p = await c.read()
    assert.equal(p.opcode, 0x3f)
    c.expStatSN = p.bhs.readUInt32BE(24) + 1
    c.dataOut({itt, ttt, dataSN: 0, offset: 0, data, final: true})
    p = await c.read()
    assert.equal(p.opcode, 0x21)
    assert.equal(p.bhs[3], 0)
    c.expStatSN = p.bhs.readUInt32BE(24) + 1
    data.copy(model, 400 * SECTOR)
    assert.ok((await readBack(c, 400, 4)).equals(data))
  })

  for (const [what, mangle, asc] of [
    ['a wrong DataSN', {dataSN: 5}, [0x47, 0x05]],
    ['a wrong buffer offset', {offset: SECTOR}, [0x4b, 0x05]],
    ['data past the burst', {size: 2 * SECTOR}, [0x0c, 0x0d]],
  ] as const) {
    it(`Data-Out with ${what}: Reject, the command ends with ABORTED COMMAND, nothing written; the session goes on`, async () => {
      const c = await session()
      const before = await readBack(c, 500, 2)
      const itt = c.sendWrite(cdb10(0x2a, 500, 1), SECTOR)
      const r2t = await c.read()
      const ttt = r2t.bhs.readUInt32BE(20)
      const m = mangle as {dataSN?: number; offset?: number; size?: number}
      c.dataOut({itt, ttt, dataSN: m.dataSN ?? 0, offset: m.offset ?? 0, data: Buffer.alloc(m.size ?? SECTOR, 0xab), final: true})
      const rej = await c.read()
      assert.equal(rej.opcode, 0x3f)
      const rsp = await c.read()
      assert.equal(rsp.opcode, 0x21)
      assert.equal(rsp.itt, itt)
      assert.equal(rsp.bhs[3], 2)
      const sense = rsp.data.subarray(2)
      assert.deepEqual([sense[2] & 0xf, sense[12], sense[13]], [0x0b, ...asc])
      c.expStatSN = rsp.bhs.readUInt32BE(24) + 1
      // Late Data-Out of the ended task is dropped without a word; the session still serves.
      c.dataOut({itt, ttt, dataSN: 1, offset: 0, data: Buffer.alloc(SECTOR), final: true})
      assert.ok((await readBack(c, 500, 2)).equals(before))
    })
  }

  it('ABORT TASK of a running WRITE: answered only once the write is over (nothing changes after FUNCTION COMPLETE); of one answered: TASK DOES NOT EXIST', async () => {
    // An 8 MiB WRITE whose last Data-Out and an ABORT TASK for it reach the target in one segment: the write
    // runs (it has its data) when the abort is read. Either the abort finds it running — FUNCTION COMPLETE,
    // the write never answered — or it was answered first — GOOD, then TASK DOES NOT EXIST (the two outcomes
    // libiscsi's iSCSITMF.AbortTaskSimpleAsync allows). In the first, the overlay must not change after the
    // TMF response.
    const c = await session({MaxBurstLength: '16776192'})
    const lba = 8192
    const data = prng(14, 8 << 20)
    const writeCmdSN = c.cmdSN
    const itt = c.sendWrite(cdb10(0x2a, lba, data.length / SECTOR), data.length)
    const r2t = await c.read()
    assert.equal(r2t.opcode, 0x31)
    assert.equal(r2t.bhs.readUInt32BE(44), data.length, 'one burst')
    const ttt = r2t.bhs.readUInt32BE(20)
    const segments: Buffer[] = []
    for (let at = 0, sn = 0; at < data.length; at += 65536, sn++) {
      segments.push(c.dataOutPdu({itt, ttt, dataSN: sn, offset: at, data: data.subarray(at, at + 65536), final: at + 65536 >= data.length}))
    }
    const abort = c.tmfPdu(1, {ref: itt, refCmdSN: writeCmdSN})
    c.send(Buffer.concat([...segments, abort.pdu]))
    let answered: number | undefined
    let p = await c.read()
    if (p.opcode === 0x21) {
      assert.equal(p.itt, itt)
      answered = p.bhs[3]
      p = await c.read()
    }
    const sizeAtResponse = fs.statSync(ovl).size
    assert.equal(p.opcode, 0x22)
    assert.equal(p.itt, abort.itt)
    c.expStatSN = p.bhs.readUInt32BE(24) + 1
    if (answered === undefined) {
      assert.equal(p.bhs[2], 0, 'aborted while running: FUNCTION COMPLETE')
    } else {
      assert.equal(answered, 0)
      assert.equal(p.bhs[2], 1, 'answered before the abort: TASK DOES NOT EXIST')
    }
    const first = await readBack(c, lba, data.length / SECTOR)
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(fs.statSync(ovl).size, sizeAtResponse, 'the overlay grew after the TMF response: the aborted write was still running')
    assert.ok((await readBack(c, lba, data.length / SECTOR)).equals(first), 'the blocks changed after the TMF response')
    if (answered === 0) assert.ok(first.equals(data), 'the answered write is not what reads back')
    // An aborted write may have changed its blocks or not (SAM-5): what reads back now is the model.
    model.set(first, lba * SECTOR)
    // A second abort of the same task: it is over; the session goes on.
    c.send(c.tmfPdu(1, {ref: itt, refCmdSN: writeCmdSN}).pdu)
    const again = await c.read()
    assert.deepEqual([again.opcode, again.bhs[2]], [0x22, 1], 'TASK DOES NOT EXIST')
    c.expStatSN = again.bhs.readUInt32BE(24) + 1
    assert.ok((await readBack(c, lba, 16)).equals(model.subarray(lba * SECTOR, (lba + 16) * SECTOR)))
  })

  for (const [name, fn] of [
    ['ABORT TASK', 1],
    ['LOGICAL UNIT RESET', 5],
  ] as const) {
    it(`${name} of a WRITE whose R2T is outstanding: answered only after the Data-Out it asked for (RFC 3720 §10.6.2); the write never runs`, async () => {
      // libiscsi 1.19's iscsi-test-cu crashed (free(): invalid pointer) when the TMF response came before the
      // Data-Out it still had queued for the R2T.
      const c = await session()
      const lba = 700 + fn * 16
      const before = await readBack(c, lba, 8)
      const data = prng(15 + fn, 8 * SECTOR)
      const writeCmdSN = c.cmdSN
      const itt = c.sendWrite(cdb10(0x2a, lba, 8), data.length)
      const r2t = await c.read()
      assert.equal(r2t.opcode, 0x31)
      const tmf = c.tmfPdu(fn, fn === 1 ? {ref: itt, refCmdSN: writeCmdSN} : {})
      c.send(tmf.pdu)
      const next = c.read()
      const early = await Promise.race([next.then((p) => p), new Promise<'none'>((r) => setTimeout(() => r('none'), 300))])
      assert.equal(early, 'none', 'the TMF was answered while the R2T was outstanding')
      c.dataOut({itt, ttt: r2t.bhs.readUInt32BE(20), dataSN: 0, offset: 0, data, final: true})
      const rsp = await next
      assert.deepEqual([rsp.opcode, rsp.itt, rsp.bhs[2]], [0x22, tmf.itt, 0], 'FUNCTION COMPLETE')
      c.expStatSN = rsp.bhs.readUInt32BE(24) + 1
      // No answer for the write ever comes (the next PDU is the read's), and nothing was written.
      assert.ok((await readBack(c, lba, 8)).equals(before))
    })
  }

  it('FUA writes, SYNCHRONIZE CACHE(10/16) flushes the overlay', async () => {
    const c = await session()
    const flushes = served.server.writeStats.flushes
    const data = prng(14, 8 * SECTOR)
    const r = await c.write(cdb16(0x8a, 600, 8, 0x08), data)
    assert.equal(r.status, 0)
    data.copy(model, 600 * SECTOR)
    assert.equal((await c.scsi(cdb10(0x35, 0, 0), 0)).status, 0)
    assert.equal((await c.scsi(cdb16(0x91, 0, 0), 0)).status, 0)
    assert.equal(served.server.writeStats.flushes, flushes + 2)
    assert.deepEqual(senseOf((await c.scsi(cdb10(0x35, BLOCKS, 1), 0)).sense), [5, 0x21, 0])
  })

  it('WRITE SAME: zeros → write-zeroes, with UNMAP → discard, a pattern repeated; 0 blocks refused (WSNZ); another Data-Out size refused', async () => {
    const c = await session()
    const zeroes = served.server.writeStats.zeroes
    const trims = served.server.writeStats.trims
    assert.equal((await c.write(cdb10(0x41, 700, 16), Buffer.alloc(SECTOR))).status, 0)
    assert.equal((await c.write(cdb16(0x93, 716, 16, 0x08), Buffer.alloc(SECTOR))).status, 0)
    assert.equal(served.server.writeStats.zeroes, zeroes + 1)
    assert.equal(served.server.writeStats.trims, trims + 1)
    model.fill(0, 700 * SECTOR, 732 * SECTOR)
    const pattern = prng(15, SECTOR)
    assert.equal((await c.write(cdb16(0x93, 740, 5000, 0x08), pattern)).status, 0)
    for (let i = 0; i < 5000; i++) pattern.copy(model, (740 + i) * SECTOR)
    assert.ok((await readBack(c, 690, 60)).equals(model.subarray(690 * SECTOR, 750 * SECTOR)))
    const last = await c.scsi(cdb10(0x28, 740 + 4999, 1), SECTOR)
    assert.ok(last.data.equals(pattern))
    let r = await c.write(cdb10(0x41, 800, 0), Buffer.alloc(SECTOR))
    assert.deepEqual(senseOf(r.sense), [5, 0x24, 0])
    r = await c.write(cdb10(0x41, 800, 2), Buffer.alloc(2 * SECTOR))
    assert.deepEqual(senseOf(r.sense), [5, 0x0e, 0x03])
    assert.equal(r.r2ts.length, 0)
  })

  it('UNMAP: descriptors discarded (read as zeros), all checked first; short list 05/1A/00, range 05/21/00, too many 05/26/00', async () => {
    const c = await session()
    const list = (descs: Array<[number, number]>, declared = descs.length * 16) => {
      const p = Buffer.alloc(8 + 16 * descs.length)
      p.writeUInt16BE(6 + declared, 0)
      p.writeUInt16BE(declared, 2)
      descs.forEach(([lba, n], i) => {
        p.writeBigUInt64BE(BigInt(lba), 8 + 16 * i)
        p.writeUInt32BE(n, 16 + 16 * i)
      })
      return p
    }
    const unmap = (p: Buffer, len = p.length) => c.write([0x42, 0, 0, 0, 0, 0, 0, len >> 8, len & 0xff, 0], p, {edtl: len})
    let r = await unmap(list([
      [100, 4],
      [110, 2],
    ]))
    assert.equal(r.status, 0)
    model.fill(0, 100 * SECTOR, 104 * SECTOR)
    model.fill(0, 110 * SECTOR, 112 * SECTOR)
    assert.ok((await readBack(c, 96, 20)).equals(model.subarray(96 * SECTOR, 116 * SECTOR)))
    r = await unmap(Buffer.alloc(4), 4)
    assert.deepEqual(senseOf(r.sense), [5, 0x1a, 0])
    r = await unmap(list([
      [120, 1],
      [BLOCKS - 1, 2],
    ]))
    assert.deepEqual(senseOf(r.sense), [5, 0x21, 0])
    assert.ok((await readBack(c, 120, 1)).equals(model.subarray(120 * SECTOR, 121 * SECTOR)), 'a descriptor was applied before the bad one was found')
    r = await unmap(list(Array.from({length: 257}, (_, i) => [i, 1] as [number, number])))
    assert.deepEqual(senseOf(r.sense), [5, 0x26, 0])
    assert.equal((await c.scsi([0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0)).status, 0, 'parameter list length 0: nothing')
  })

  it('COMPARE AND WRITE: writes when the blocks match, MISCOMPARE 0E/1D/00 with the offset when not', async () => {
    const c = await session()
    const old = model.subarray(900 * SECTOR, 902 * SECTOR)
    const next = prng(16, 2 * SECTOR)
    const caw = (cmp: Buffer) => c.write([0x89, 0, 0, 0, 0, 0, 0, 0, 0x03, 0x84, 0, 0, 0, 2, 0, 0], Buffer.concat([cmp, next]))
    const wrong = Buffer.from(old)
    wrong[700] ^= 1
    let r = await caw(wrong)
    assert.equal(r.status, 2)
    assert.deepEqual(senseOf(r.sense), [0x0e, 0x1d, 0])
    assert.equal(r.sense!.readUInt32BE(3), 700)
    r = await caw(Buffer.from(old))
    assert.equal(r.status, 0)
    next.copy(model, 900 * SECTOR)
    assert.ok((await readBack(c, 900, 2)).equals(next))
  })

  it('COMPARE AND WRITE from two sessions on two serving threads at once: each one atomic, no update lost', async () => {
    // Each session counts up a number in block 3000: read it, COMPARE AND WRITE it with the number + 1.
    // Two that compared the same number cannot both succeed: the overlay's owner gives one thread at a time
    // the exclusive turn. Without it, both would write the same number and the count would fall short.
    const LBA = 3000
    const block = (n: number) => {
      const b = Buffer.alloc(SECTOR)
      b.writeUInt32BE(n, 0)
      return b
    }
    const c0 = await session()
    assert.equal((await c0.write(cdb10(0x2a, LBA, 1), block(0))).status, 0)
    // Another ISID: a second session, not a reinstatement of the first.
    const racers = [c0, await session({}, '400001370001')]
    const won = await Promise.all(
      racers.map(async (c) => {
        let wins = 0
        for (let k = 0; k < 150; k++) {
          const cur = (await readBack(c, LBA, 1)).readUInt32BE(0)
          const r = await c.write([0x89, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0xb8, 0, 0, 0, 1, 0, 0], Buffer.concat([block(cur), block(cur + 1)]))
          if (r.status === 0) wins++
          else assert.deepEqual(senseOf(r.sense), [0x0e, 0x1d, 0])
        }
        return wins
      }),
    )
    const final = (await readBack(c0, LBA, 1)).readUInt32BE(0)
    assert.ok(won[0] > 0 && won[1] > 0, `wins ${won}`)
    assert.equal(final, won[0] + won[1], `the count is ${final} after ${won[0]} + ${won[1]} successful COMPARE AND WRITEs`)
    block(final).copy(model, LBA * SECTOR)
  })

  it('commands whose Data-Out would pass the per-connection budget (32 MiB) wait for their R2T', async () => {
    const c = await session({MaxBurstLength: '16776192'})
    const n = Math.floor(MAX_DATA_OUT_BYTES / (8 << 20)) + 2
    const itts = Array.from({length: n}, () => c.sendWrite(cdb10(0x2a, 0, 16384), 8 << 20))
    // Only as many R2Ts as fit in the budget arrive while no data is sent.
    const r2ts: number[] = []
    let quiet = false
    const reading = (async () => {
      while (!quiet) {
        const p = await c.read()
        assert.equal(p.opcode, 0x31)
        r2ts.push(p.itt)
      }
    })().catch(() => undefined)
    await new Promise((r) => setTimeout(r, 1000))
    quiet = true
    assert.deepEqual(r2ts, itts.slice(0, MAX_DATA_OUT_BYTES / (8 << 20)))
    c.destroy()
    await reading
  })

  it('the writes are in the overlay and survive a restart; the base never changed', async () => {
    const info = inspectOverlay(ovl)
    assert.ok(info.bytesWritten > 0)
    await served.close()
    assert.equal(sha256(fs.readFileSync(base)), baseSha)
    served = await serveOverlay(base, ovl, logs)
    const c = await session()
    const all = await c.scsi(cdb16(0x88, 0, 16384), 16384 * SECTOR)
    assert.ok(all.data.equals(model.subarray(0, 16384 * SECTOR)))
    const rest = await c.scsi(cdb16(0x88, 16384, BLOCKS - 16384), (BLOCKS - 16384) * SECTOR)
    assert.ok(rest.data.equals(model.subarray(16384 * SECTOR)))
  })
})

describe('iscsi target: a writable LUN on a full file system', function () {
  this.timeout(60_000)
  let mnt: string | undefined
  let dir: {dir: string; cleanup: () => void}
  before(function () {
    if (process.getuid?.() !== 0 || process.platform !== 'linux') this.skip()
    dir = tmpDir('vdev-iscsi-enospc-')
    const m = path.join(dir.dir, 'mnt')
    fs.mkdirSync(m)
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', m]).status !== 0) this.skip()
    mnt = m
  })
  after(() => {
    if (mnt) spawnSync('umount', [mnt])
    dir?.cleanup()
  })

  it('a write that finds no space: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07); what was written before is intact', async () => {
    const base = path.join(dir.dir, 'base.img')
    const data = prng(17, 4 << 20)
    fs.writeFileSync(base, data)
    const logs: string[] = []
    const s = await serveOverlay(base, path.join(mnt!, 'o.vdovl'), logs)
    const c = await IscsiRawClient.connect(s.t.address.port)
    try {
      await c.login(s.t.iqn)
      const small = prng(18, 64 * SECTOR)
      assert.equal((await c.write(cdb10(0x2a, 0, 64), small)).status, 0)
      const big = prng(19, 2 << 20)
      const r = await c.write(cdb10(0x2a, 1024, big.length / SECTOR), big)
      assert.equal(r.status, 2)
      assert.deepEqual(senseOf(r.sense), [0x7, 0x27, 0x07])
      const back = await c.scsi(cdb10(0x28, 0, 64), 64 * SECTOR)
      assert.ok(back.data.equals(small))
      const after = await c.scsi(cdb10(0x28, 1024, 8), 8 * SECTOR)
      assert.ok(after.data.equals(data.subarray(1024 * SECTOR, 1032 * SECTOR)), 'the failed write left old data')
    } finally {
      c.destroy()
      await s.close()
    }
  })
})

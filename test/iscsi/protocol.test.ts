/**
 * The target PDU by PDU (a raw client, test/iscsi/rawclient.ts): both login starts, the keys it answers,
 * Data-In cut to the initiator's segment and burst sizes with status in the last PDU, residuals, MEDIUM
 * ERROR with the first bad LBA and the good blocks before it, the range check before the write protect,
 * NOP, task management, logout, session reinstatement, discovery. Then what real initiators never send:
 * unknown opcodes, a SCSI command before login, truncated headers, a data segment too large, garbage —
 * the bad connection is dropped (or answered with Reject), the others and the server go on.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import {BlockServer} from '../../src/core/blockserver'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {startIscsiServer, type RunningIscsiTarget} from '../../src/serve/iscsi'
import {buildSense} from '../../src/serve/iscsi/sense'
import {makeFixture, SECTOR, type Fixture} from '../nbd/fixture'
import {INITIATOR, IscsiRawClient, parseTextData, pdu, text} from './rawclient'

const read10 = (lba: number, blocks: number) => {
  const c = Buffer.alloc(10)
  c[0] = 0x28
  c.writeUInt32BE(lba, 2)
  c.writeUInt16BE(blocks, 7)
  return c
}

describe('iscsi target: PDUs (raw client)', function () {
  this.timeout(60_000)
  let fx: Fixture
  let image: VdimgImage
  let t: RunningIscsiTarget
  let raw: Buffer
  const logs: string[] = []
  const clients: IscsiRawClient[] = []
  const connect = async () => {
    const c = await IscsiRawClient.connect(t.address.port)
    clients.push(c)
    return c
  }
  const session = async (extra: Record<string, string> = {}, isid?: string) => {
    const c = await connect()
    await c.login(t.iqn, extra, isid)
    return c
  }
  /** A new session still reads the right bytes. */
  const stillServes = async () => {
    const c = await session()
    const r = await c.scsi(read10(8, 8), 4096)
    assert.equal(r.status, 0)
    assert.ok(r.data.equals(raw.subarray(8 * SECTOR, 16 * SECTOR)))
    c.destroy()
  }

  before(async () => {
    fx = await makeFixture()
    raw = fs.readFileSync(fx.raw)
    image = await openImage(fx.image)
    t = await startIscsiServer(new BlockServer(image), {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, image: fx.image, log: (l) => logs.push(l)})
  })

  afterEach(() => {
    for (const c of clients.splice(0)) c.destroy()
  })

  after(async () => {
    await t?.close()
    await image?.close()
    fx?.cleanup()
  })

  describe('login', () => {
    it('a security-stage start (CSG=0, AuthMethod=None, as Windows) and an operational one (CSG=1, as libiscsi)', async () => {
      const c = await connect()
      const s0 = await c.loginStep(0, 1, true, {InitiatorName: INITIATOR, TargetName: t.iqn, SessionType: 'Normal', AuthMethod: 'None'})
      assert.equal(s0.status, 0)
      assert.equal(s0.keys.AuthMethod, 'None')
      assert.equal(s0.keys.TargetPortalGroupTag, '1')
      assert.equal(s0.pdu.flags, 0x80 | (0 << 2) | 1)
      const s1 = await c.loginStep(1, 3, true, {
        HeaderDigest: 'CRC32C,None',
        DataDigest: 'None',
        MaxConnections: '4',
        InitialR2T: 'No',
        ImmediateData: 'Yes',
        MaxRecvDataSegmentLength: '8192',
        MaxBurstLength: '262144',
        FirstBurstLength: '65536',
        DefaultTime2Wait: '0',
        DefaultTime2Retain: '20',
        MaxOutstandingR2T: '8',
        DataPDUInOrder: 'Yes',
        DataSequenceInOrder: 'Yes',
        ErrorRecoveryLevel: '2',
        'X-com.example.Unknown': 'x',
      })
      assert.equal(s1.status, 0)
      assert.deepEqual(
        {...s1.keys},
        {
          HeaderDigest: 'CRC32C',
          DataDigest: 'None',
          MaxConnections: '1',
          InitialR2T: 'Yes',
          ImmediateData: 'No',
          MaxBurstLength: '262144',
          FirstBurstLength: '65536',
          DefaultTime2Wait: '2',
          DefaultTime2Retain: '0',
          MaxOutstandingR2T: '1',
          DataPDUInOrder: 'Yes',
          DataSequenceInOrder: 'Yes',
          ErrorRecoveryLevel: '0',
          'X-com.example.Unknown': 'NotUnderstood',
          MaxRecvDataSegmentLength: '262144',
        },
      )
      assert.equal(s1.pdu.flags, 0x80 | (1 << 2) | 3)
      assert.notEqual(s1.pdu.bhs.readUInt16BE(14), 0, 'TSIH in the final response')
      const c2 = await connect()
      const keys = await c2.login(t.iqn)
      assert.equal(keys.TargetPortalGroupTag, '1')
      assert.equal(keys.MaxRecvDataSegmentLength, '262144')
      // The first command of the session saw POWER ON, RESET (06/29/00) once; the next is GOOD.
      const ua = c2.unitAttention!
      assert.deepEqual([ua.status, ua.sense![2] & 0x0f, ua.sense![12]], [2, 0x06, 0x29])
      assert.equal((await c2.scsi([0, 0, 0, 0, 0, 0], 0)).status, 0)
    })

    it('refuses an unknown target (0x0203), a missing InitiatorName (0x0207), a bad version (0x0205)', async () => {
      const c = await connect()
      assert.equal((await c.loginStep(1, 3, true, {InitiatorName: INITIATOR, TargetName: 'iqn.2000-01.com.example:other'})).status, 0x0203)
      await c.closed
      const c2 = await connect()
      assert.equal((await c2.loginStep(1, 3, true, {TargetName: t.iqn})).status, 0x0207)
      const c3 = await connect()
      const p = c3.loginPdu(1, 3, true, {InitiatorName: INITIATOR, TargetName: t.iqn})
      p[2] = 2
      p[3] = 1 // version-min 1
      c3.send(p)
      assert.equal((await c3.read()).bhs.readUInt16BE(36), 0x0205)
    })

    it('session reinstatement: a login with the same initiator name and ISID ends the old session', async () => {
      const a = await session({}, '400001370abc')
      const b = await session({}, '400001370abc')
      await a.closed
      const r = await b.scsi(read10(0, 1), 512)
      assert.ok(r.data.equals(raw.subarray(0, 512)))
      assert.ok(logs.some((l) => /reinstating the session/.test(l)))
    })

    it('discovery: SendTargets=All names the target and the address this connection reached, portal group 1', async () => {
      const c = await connect()
      const r = await c.loginStep(1, 3, true, {InitiatorName: INITIATOR, SessionType: 'Discovery'})
      assert.equal(r.status, 0)
      assert.equal(r.keys.TargetPortalGroupTag, undefined)
      c.send(
        pdu(0x04, 0x80, text({SendTargets: 'All'}), (b) => {
          b.writeUInt32BE(9, 16)
          b.writeUInt32BE(0xffffffff, 20)
          b.writeUInt32BE(c.cmdSN++, 24)
          b.writeUInt32BE(c.expStatSN, 28)
        }),
      )
      const resp = await c.read()
      assert.equal(resp.opcode, 0x24)
      assert.deepEqual(parseTextData(resp.data), {TargetName: t.iqn, TargetAddress: `127.0.0.1:${t.address.port},1`})
      // A SCSI command in a discovery session is rejected; the session stays.
      c.send(pdu(0x01, 0xc1, Buffer.alloc(0), (b) => b.writeUInt32BE(10, 16)))
      const rej = await c.read()
      assert.equal(rej.opcode, 0x3f)
    })
  })

  describe('full feature phase', () => {
    it('Data-In within MaxRecvDataSegmentLength and MaxBurstLength, F at each burst end, status in the last PDU', async () => {
      const c = await session({MaxRecvDataSegmentLength: '4096', MaxBurstLength: '8192', FirstBurstLength: '4096'})
      const r = await c.scsi(read10(100, 64), 64 * SECTOR)
      assert.equal(r.status, 0)
      assert.equal(r.dataIns.length, 8)
      r.dataIns.forEach((d, i) => {
        assert.equal(d.data.length, 4096)
        assert.equal(d.bhs.readUInt32BE(36), i, 'DataSN')
        assert.equal(d.bhs.readUInt32BE(40), i * 4096, 'buffer offset')
        assert.equal((d.flags & 0x80) !== 0, i % 2 === 1, 'F at the end of each 8 KiB burst')
        assert.equal((d.flags & 0x01) !== 0, i === 7, 'S in the last PDU only')
      })
      assert.ok(r.data.equals(raw.subarray(100 * SECTOR, 164 * SECTOR)))
      assert.equal(r.flags & 0x06, 0, 'no residual')
    })

    it('residuals: overflow when the expected length is short, underflow when it is long', async () => {
      const c = await session()
      const over = await c.scsi(read10(0, 2), 512)
      assert.equal(over.status, 0)
      assert.equal(over.data.length, 512)
      assert.equal(over.flags & 0x04, 0x04)
      assert.equal(over.residual, 512)
      const zero = await c.scsi(read10(0, 1), 0)
      assert.equal(zero.status, 0)
      assert.equal(zero.dataIns.length, 0)
      assert.equal(zero.flags & 0x04, 0x04)
      assert.equal(zero.residual, 512)
      const inq = await c.scsi([0x12, 0, 0, 0, 36, 0], 100)
      assert.equal(inq.data.length, 36)
      assert.equal(inq.flags & 0x02, 0x02)
      assert.equal(inq.residual, 64)
    })

    it('an unreadable sector: the good blocks before it, then MEDIUM ERROR 03/11/00 with INFORMATION = its LBA, residual underflow', async () => {
      const c = await session()
      const badLba = fx.bad[0].offset / SECTOR
      const start = badLba - 7
      const r = await c.scsi(read10(start, 16), 16 * SECTOR)
      assert.equal(r.status, 0x02)
      assert.equal(r.data.length, 7 * SECTOR)
      assert.ok(r.data.equals(raw.subarray(start * SECTOR, badLba * SECTOR)))
      const s = r.sense!
      assert.equal(s[0], 0xf0, 'fixed format, VALID')
      assert.equal(s[2] & 0x0f, 0x03)
      assert.equal(s.readUInt32BE(3), badLba)
      assert.deepEqual([s[12], s[13]], [0x11, 0x00])
      assert.equal(r.flags & 0x02, 0x02)
      assert.equal(r.residual, 9 * SECTOR)
      assert.equal(r.response.bhs.readUInt32BE(36), r.dataIns.length, 'ExpDataSN')
      // Starting on the bad sector: no data at all.
      const at = await c.scsi(read10(badLba, 1), SECTOR)
      assert.equal(at.dataIns.length, 0)
      assert.equal(at.sense!.readUInt32BE(3), badLba)
    })

    it('writes: LBA OUT OF RANGE (05/21/00) before WRITE PROTECTED (07/27/00); unknown opcode 05/20/00', async () => {
      const c = await session()
      const blocks = fx.size / SECTOR
      const w10 = (lba: number, n: number) => {
        const b = read10(lba, n)
        b[0] = 0x2a
        return b
      }
      const past = await c.scsi(w10(blocks - 1, 2), 1024, {write: true})
      assert.equal(past.status, 2)
      assert.deepEqual([past.sense![2] & 0x0f, past.sense![12], past.sense![13]], [0x05, 0x21, 0x00])
      const inside = await c.scsi(w10(0, 1), 512, {write: true})
      assert.deepEqual([inside.sense![2] & 0x0f, inside.sense![12], inside.sense![13]], [0x07, 0x27, 0x00])
      const unknown = await c.scsi([0xc7, 0, 0, 0, 0, 0], 0)
      assert.deepEqual([unknown.sense![2] & 0x0f, unknown.sense![12], unknown.sense![13]], [0x05, 0x20, 0x00])
    })

    it('descriptor sense for an LBA past 2^32', () => {
      const s = buildSense({key: 3, asc: 0x1100, information: 2 ** 33 + 5})
      assert.equal(s[0], 0x72)
      assert.deepEqual([s[1], s[2], s[3]], [3, 0x11, 0x00])
      assert.equal(s[8], 0x00)
      assert.equal(s[10], 0x80)
      assert.equal(s.readBigUInt64BE(12), 2n ** 33n + 5n)
      assert.equal(buildSense({key: 3, asc: 0x1100, information: 7})[0], 0xf0)
    })

    it('NOP-Out is answered with its ping data; task management (ABORT TASK of a tag no task has, by its RefCmdSN) and logout are answered', async () => {
      const c = await session()
      const ping = crypto.randomBytes(100)
      const nopIn = await c.nop(ping)
      assert.equal(nopIn.opcode, 0x20)
      assert.ok(nopIn.data.equals(ping))
      assert.equal(nopIn.bhs.readUInt32BE(20), 0xffffffff)
      // ABORT TASK of a tag no task has (§11.5.1): one answered already (RefCmdSN below ExpCmdSN) does not
      // exist; one whose CmdSN is in the window and before the request's own has not arrived: FUNCTION COMPLETE,
      // and that CmdSN counts as received — the command, when it comes, is ignored; the next one is served.
      const tmf = (fn: number, ref: number, f: {refCmdSN?: number; cmdSN?: number} = {}) => c.tmfPdu(fn, {ref, ...f}).pdu
      c.send(tmf(1, 0x1234))
      const r1 = await c.read()
      assert.deepEqual([r1.opcode, r1.bhs[2]], [0x22, 1], 'ABORT TASK of a command answered long ago: TASK DOES NOT EXIST')
      const ahead = c.cmdSN
      c.send(tmf(1, 0x4321, {refCmdSN: ahead, cmdSN: ahead + 1}))
      const r0 = await c.read()
      assert.deepEqual([r0.opcode, r0.bhs[2]], [0x22, 0], 'ABORT TASK of a command not yet arrived: FUNCTION COMPLETE')
      assert.equal(r0.bhs.readUInt32BE(28), ahead + 1, 'its CmdSN is taken as received (ExpCmdSN past it)')
      // The aborted command arrives after all (CmdSN `ahead`): ignored — no answer, the next is answered.
      c.send(
        pdu(0x01, 0x80 | 0x40 | 0x01, Buffer.alloc(0), (b) => {
          b.writeUInt32BE(0x4321, 16)
          b.writeUInt32BE(512, 20)
          b.writeUInt32BE(ahead, 24)
          b.writeUInt32BE(c.expStatSN, 28)
          read10(0, 1).copy(b, 32)
        }),
      )
      c.cmdSN = ahead + 1
      const next = await c.scsi(read10(2, 1), 512)
      assert.equal(next.response.itt, c.itt - 1, 'the aborted command was not answered')
      assert.ok(next.data.equals(raw.subarray(1024, 1536)))
      assert.equal(next.response.bhs.readUInt32BE(28), ahead + 2)
      c.send(tmf(5, 0xffffffff))
      const r2 = await c.read()
      assert.deepEqual([r2.opcode, r2.bhs[2]], [0x22, 0])
      c.send(tmf(8, 0))
      assert.equal((await c.read()).bhs[2], 4, 'TASK REASSIGN: allegiance reassignment not supported')
      const after = await c.scsi(read10(1, 1), 512)
      assert.ok(after.data.equals(raw.subarray(512, 1024)))
      c.send(
        pdu(0x46, 0x80, Buffer.alloc(0), (b) => {
          b.writeUInt32BE(c.itt++, 16)
          b.writeUInt32BE(c.cmdSN, 24)
          b.writeUInt32BE(c.expStatSN, 28)
        }),
      )
      const lo = await c.read()
      assert.deepEqual([lo.opcode, lo.bhs[2]], [0x26, 0])
      await c.closed
    })
  })

  describe('on serving threads (the full-feature phase handed to a thread after login)', () => {
    let tt: RunningIscsiTarget
    let server: BlockServer
    let img: VdimgImage
    const threadLogs: string[] = []
    before(async () => {
      img = await openImage(fx.image)
      server = new BlockServer(img)
      tt = await startIscsiServer(server, {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, image: fx.image, log: (l) => threadLogs.push(l), threads: 2})
      assert.equal(tt.threads, 2, threadLogs.join('; '))
    })
    after(async () => {
      await tt?.close()
      await img?.close()
    })
    const threadSession = async (isid: string, extra: Record<string, string> = {}) => {
      const c = await IscsiRawClient.connect(tt.address.port)
      clients.push(c)
      await c.login(tt.iqn, extra, isid)
      return c
    }

    it('reads, Data-In cut to 4 KiB segments and 8 KiB bursts, MEDIUM ERROR with the good prefix; counted in server.stats', async () => {
      const before = server.stats
      const c = await threadSession('400001370101', {MaxRecvDataSegmentLength: '4096', MaxBurstLength: '8192'})
      const r = await c.scsi(read10(100, 64), 64 * SECTOR)
      assert.equal(r.dataIns.length, 8)
      assert.ok(r.data.equals(raw.subarray(100 * SECTOR, 164 * SECTOR)))
      const badLba = fx.bad[0].offset / SECTOR
      const m = await c.scsi(read10(badLba - 3, 8), 8 * SECTOR)
      assert.equal(m.status, 2)
      assert.ok(m.data.equals(raw.subarray((badLba - 3) * SECTOR, badLba * SECTOR)))
      assert.equal(m.sense!.readUInt32BE(3), badLba)
      assert.equal(m.residual, 5 * SECTOR)
      const ping = await c.nop(Buffer.from('ping'))
      assert.equal(ping.data.toString(), 'ping')
      const after = server.stats
      assert.ok(after.reads >= before.reads + 2, `reads ${before.reads} → ${after.reads}`)
      assert.ok(after.badReads >= before.badReads + 1)
      assert.ok(tt.target.threads!.stats.connections >= 1, 'the session was handed to a thread')
    })

    it('32 pipelined reads of one threaded session, answered as they finish, every task with its Data-In in order, then its status; StatSN in order; MEDIUM ERROR among them', async () => {
      const c = await threadSession('400001370111', {MaxRecvDataSegmentLength: '8192'})
      const badLba = fx.bad[0].offset / SECTOR
      const goodLbas = Array.from({length: raw.length / SECTOR}, (_, i) => i).filter((l) => !fx.bad.some((b) => l * SECTOR < b.offset + b.length && (l + 16) * SECTOR > b.offset))
      // Three rounds: the thread reads into one reused buffer per connection, so later rounds read where earlier answers were.
      for (const round of [0, 1, 2]) {
        const rnd = crypto.createHash('sha256').update(`pipelined${round}`).digest()
        const cmds = Array.from({length: 32}, (_, i) => ({itt: 1000 + 32 * round + i, lba: i === 7 ? badLba - 3 : goodLbas[rnd.readUInt32BE(i % 28) % goodLbas.length], blocks: i === 7 ? 8 : 16}))
        c.send(
          Buffer.concat(
            cmds.map((x) =>
              pdu(0x01, 0x80 | 0x40 | 0x01, Buffer.alloc(0), (b) => {
                b.writeUInt32BE(x.itt, 16)
                b.writeUInt32BE(x.blocks * SECTOR, 20)
                b.writeUInt32BE(c.cmdSN++, 24)
                b.writeUInt32BE(c.expStatSN, 28)
                read10(x.lba, x.blocks).copy(b, 32)
              }),
            ),
          ),
        )
        const got = new Map<number, {data: Buffer[]; status?: number; sense?: Buffer; statSN?: number}>()
        let lastStatSN = c.expStatSN - 1
        while ([...got.values()].filter((g) => g.status !== undefined).length < cmds.length) {
          const p = await c.read()
          const g = got.get(p.itt) ?? {data: []}
          got.set(p.itt, g)
          assert.equal(g.status, undefined, `a PDU for task ${p.itt} after its status`)
          if (p.opcode === 0x25) {
            assert.equal(p.bhs.readUInt32BE(40), g.data.reduce((n, d) => n + d.length, 0), 'Data-In offsets in order')
            g.data.push(p.data)
            if (!(p.flags & 0x01)) continue
            g.status = p.bhs[3]
          } else {
            assert.equal(p.opcode, 0x21)
            g.status = p.bhs[3]
            g.sense = p.data.subarray(2, 2 + p.data.readUInt16BE(0))
          }
          g.statSN = p.bhs.readUInt32BE(24)
          assert.equal(g.statSN, lastStatSN + 1, 'StatSN advances by one per status, in the order sent')
          lastStatSN = g.statSN
        }
        for (const x of cmds) {
          const g = got.get(x.itt)!
          if (x.lba === badLba - 3) {
            assert.equal(g.status, 2)
            assert.equal(g.sense!.readUInt32BE(3), badLba)
            assert.ok(Buffer.concat(g.data).equals(raw.subarray(x.lba * SECTOR, badLba * SECTOR)))
          } else {
            assert.equal(g.status, 0, `task ${x.itt}`)
            assert.ok(Buffer.concat(g.data).equals(raw.subarray(x.lba * SECTOR, (x.lba + x.blocks) * SECTOR)), `task ${x.itt} at LBA ${x.lba}`)
          }
        }
        c.expStatSN = lastStatSN + 1
      }
      assert.ok((await c.nop(Buffer.from('after'))).data.equals(Buffer.from('after')))
    })

    it('two sessions on two threads at once; a third is served on the main thread; reinstatement ends a threaded session', async () => {
      const a = await threadSession('400001370201')
      const b = await threadSession('400001370202')
      const c = await threadSession('400001370203')
      for (const x of [a, b, c]) {
        const r = await x.scsi(read10(40, 8), 8 * SECTOR)
        assert.ok(r.data.equals(raw.subarray(40 * SECTOR, 48 * SECTOR)))
      }
      const st = tt.target.threads!.stats
      assert.ok(st.refused >= 1, `a third connection found no free thread (${JSON.stringify(st)})`)
      const again = await threadSession('400001370201')
      await a.closed
      assert.ok((await again.scsi(read10(0, 1), SECTOR)).data.equals(raw.subarray(0, SECTOR)))
    })

    it('a malformed PDU on a threaded connection: Reject, then a data segment too large drops it; the thread serves the next', async () => {
      const c = await threadSession('400001370301')
      const bad = pdu(0x1f, 0x80, Buffer.alloc(0), (b) => b.writeUInt32BE(77, 16))
      c.send(bad)
      assert.equal((await c.read()).opcode, 0x3f)
      const h = Buffer.alloc(48)
      h[0] = 0x40
      h[1] = 0x80
      h.writeUIntBE(0xffffff, 5, 3)
      c.send(h)
      await c.closed
      const d = await threadSession('400001370302')
      assert.ok((await d.scsi(read10(3, 1), SECTOR)).data.equals(raw.subarray(3 * SECTOR, 4 * SECTOR)))
    })
  })

  describe('malformed input: the connection is dropped or rejected, the others and the server go on', () => {
    it('an unknown opcode in the full feature phase gets a Reject (0x05) carrying its header; the session goes on', async () => {
      const c = await session()
      const bad = pdu(0x1f, 0x80, Buffer.alloc(0), (b) => b.writeUInt32BE(77, 16))
      c.send(bad)
      const rej = await c.read()
      assert.equal(rej.opcode, 0x3f)
      assert.equal(rej.bhs[2], 0x05)
      assert.ok(rej.data.equals(bad.subarray(0, 48)))
      const r = await c.scsi(read10(2, 1), 512)
      assert.ok(r.data.equals(raw.subarray(1024, 1536)))
    })

    it('a SCSI command before login closes the connection', async () => {
      const witness = await session()
      const c = await connect()
      c.send(pdu(0x01, 0xc1, Buffer.alloc(0), (b) => b.writeUInt32BE(1, 16)))
      await c.closed
      const r = await witness.scsi(read10(0, 1), 512)
      assert.ok(r.data.equals(raw.subarray(0, 512)))
      await stillServes()
    })

    it('a data segment larger than declared closes the connection without reading it', async () => {
      const witness = await session()
      const c = await session({}, '400001370def') // another ISID: the same one would reinstate (end) the witness
      const h = Buffer.alloc(48)
      h[0] = 0x40 // NOP-Out
      h[1] = 0x80
      h.writeUIntBE(0xffffff, 5, 3)
      h.writeUInt32BE(5, 16)
      c.send(h)
      await c.closed
      assert.equal((await witness.nop(Buffer.from('x'))).opcode, 0x20)
      await stillServes()
    })

    it('truncated headers, garbage and abrupt disconnects leave the server serving', async () => {
      const c1 = await connect()
      c1.send(Buffer.alloc(20, 0x43))
      c1.socket.end()
      await c1.closed
      const c2 = await connect()
      c2.send(crypto.randomBytes(4096))
      await c2.closed
      const c3 = await session()
      c3.send(Buffer.alloc(30))
      c3.destroy()
      const c4 = await connect()
      const p = c4.loginPdu(1, 3, true, {InitiatorName: INITIATOR, TargetName: t.iqn})
      c4.send(p.subarray(0, 60))
      c4.destroy()
      // Malformed login text: a pair without "=".
      const c5 = await connect()
      c5.send(pdu(0x43, 0x87, Buffer.from('InitiatorName\0'), () => {}))
      const r5 = await c5.read()
      assert.equal(r5.bhs[36], 0x02, 'initiator error')
      await c5.closed
      await stillServes()
    })

    it('close() ends sessions that are open and resolves (on the main thread and on serving threads)', async () => {
      const img2 = await openImage(fx.goodImage)
      const t3 = await startIscsiServer(new BlockServer(img2), {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, image: fx.goodImage, threads: 1})
      const c2 = await IscsiRawClient.connect(t3.address.port)
      clients.push(c2)
      await c2.login(t3.iqn)
      await t3.close()
      await c2.closed
      await img2.close()
      const img = await openImage(fx.goodImage)
      const t2 = await startIscsiServer(new BlockServer(img), {listen: {kind: 'tcp', host: '127.0.0.1', port: 0}, image: fx.goodImage})
      const c = await IscsiRawClient.connect(t2.address.port)
      clients.push(c)
      await c.login(t2.iqn)
      await t2.close()
      await c.closed
      await img.close()
    })
  })
})

/**
 * Every NBD message vdev builds or parses, byte for byte against the layouts in the NBD spec
 * (NetworkBlockDevice/nbd doc/proto.md). Expected bytes are written out by hand from the spec text.
 */
import * as assert from 'node:assert/strict'
import * as P from '../../src/serve/nbd/protocol'

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')
const cookie = hex('0102030405060708')

describe('nbd protocol encoding (doc/proto.md)', () => {
  it('magic numbers and values match the spec', () => {
    assert.equal(Buffer.from('NBDMAGIC').readBigUInt64BE(0), P.NBDMAGIC)
    assert.equal(Buffer.from('IHAVEOPT').readBigUInt64BE(0), P.IHAVEOPT)
    assert.equal(P.NBD_REP_MAGIC, 0x3e889045565a9n)
    assert.equal(P.NBD_REQUEST_MAGIC, 0x25609513)
    assert.equal(P.NBD_SIMPLE_REPLY_MAGIC, 0x67446698)
    assert.equal(P.NBD_STRUCTURED_REPLY_MAGIC, 0x668e33ef)
    assert.equal(P.NBD_REP_ERR_UNSUP, 2 ** 31 + 1)
    assert.equal(P.NBD_REP_ERR_UNKNOWN, 2 ** 31 + 6)
    assert.equal(P.NBD_REPLY_TYPE_ERROR, 2 ** 15 + 1)
    assert.equal(P.NBD_REPLY_TYPE_ERROR_OFFSET, 2 ** 15 + 2)
    assert.deepEqual(
      [P.NBD_OPT_EXPORT_NAME, P.NBD_OPT_ABORT, P.NBD_OPT_LIST, P.NBD_OPT_STARTTLS, P.NBD_OPT_INFO, P.NBD_OPT_GO],
      [1, 2, 3, 5, 6, 7],
    )
    assert.deepEqual([P.NBD_OPT_STRUCTURED_REPLY, P.NBD_OPT_LIST_META_CONTEXT, P.NBD_OPT_SET_META_CONTEXT], [8, 9, 10])
    assert.deepEqual([P.NBD_CMD_READ, P.NBD_CMD_WRITE, P.NBD_CMD_DISC, P.NBD_CMD_FLUSH, P.NBD_CMD_TRIM], [0, 1, 2, 3, 4])
    assert.deepEqual([P.NBD_CMD_CACHE, P.NBD_CMD_WRITE_ZEROES, P.NBD_CMD_BLOCK_STATUS], [5, 6, 7])
    assert.deepEqual([P.NBD_EPERM, P.NBD_EIO, P.NBD_EINVAL, P.NBD_ENOSPC, P.NBD_ESHUTDOWN], [1, 5, 22, 28, 108])
    assert.equal(P.NBD_FLAG_CAN_MULTI_CONN, 0x100)
    assert.equal(P.NBD_FLAG_SEND_CACHE, 0x400)
  })

  it('greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags', () => {
    assert.deepEqual(P.encodeGreeting(3), hex('4e42444d41474943 49484156454f5054 0003'))
  })

  it('option header and option reply', () => {
    assert.deepEqual(P.encodeOptionHeader(7, 10), hex('49484156454f5054 00000007 0000000a'))
    assert.deepEqual(P.decodeOptionHeader(hex('49484156454f5054 00000007 0000000a')), {magic: P.IHAVEOPT, option: 7, length: 10})
    assert.deepEqual(
      P.encodeOptionReply(7, P.NBD_REP_ERR_UNSUP, Buffer.from('x')),
      hex('0003e889045565a9 00000007 80000001 00000001 78'),
    )
    assert.deepEqual(P.encodeOptionReply(8, P.NBD_REP_ACK), hex('0003e889045565a9 00000008 00000001 00000000'))
  })

  it('NBD_OPT_EXPORT_NAME reply: size, flags, 124 zeroes unless NO_ZEROES', () => {
    const full = P.encodeExportNameReply(0x10000000, 0x0103, false)
    assert.equal(full.length, 8 + 2 + 124)
    assert.deepEqual(full.subarray(0, 10), hex('0000000010000000 0103'))
    assert.ok(full.subarray(10).every((b) => b === 0))
    assert.deepEqual(P.encodeExportNameReply(0x10000000, 0x0103, true), hex('0000000010000000 0103'))
  })

  it('NBD_REP_SERVER and NBD_REP_INFO payloads', () => {
    assert.deepEqual(P.encodeRepServer('ab', 'd'), hex('00000002 6162 64'))
    assert.deepEqual(P.encodeInfoExport(2 ** 40, 3), hex('0000 0000010000000000 0003'))
    assert.deepEqual(P.encodeInfoString(P.NBD_INFO_NAME, 'ab'), hex('0001 6162'))
    assert.deepEqual(P.encodeInfoString(P.NBD_INFO_DESCRIPTION, 'ab'), hex('0002 6162'))
    assert.deepEqual(P.encodeInfoBlockSize(512, 4096, 1 << 25), hex('0003 00000200 00001000 02000000'))
    assert.deepEqual(P.encodeMetaContext(1, 'base:allocation'), Buffer.concat([hex('00000001'), Buffer.from('base:allocation')]))
  })

  it('NBD_OPT_INFO/GO data: decodes, round-trips, and refuses lengths that overrun', () => {
    const d = hex('00000002 6162 0002 0003 0001')
    assert.deepEqual(P.decodeInfoRequest(d), {name: 'ab', requests: [3, 1]})
    assert.deepEqual(P.encodeInfoRequest('ab', [3, 1]), d)
    assert.throws(() => P.decodeInfoRequest(hex('0000')), P.MalformedOption)
    assert.throws(() => P.decodeInfoRequest(hex('ffffffff 0000')), /exceeds/)
    assert.throws(() => P.decodeInfoRequest(hex('00000000 0005 0001')), /do not fill/)
    assert.throws(() => P.decodeInfoRequest(hex('00000000 0000 00')), /do not fill/)
  })

  it('meta context data: decodes, round-trips, and refuses counts and lengths that overrun', () => {
    const d = Buffer.concat([hex('00000000 00000001 0000000f'), Buffer.from('base:allocation')])
    assert.deepEqual(P.decodeMetaContextRequest(d), {name: '', queries: ['base:allocation']})
    assert.deepEqual(P.encodeMetaContextRequest('', ['base:allocation']), d)
    assert.deepEqual(P.decodeMetaContextRequest(hex('00000001 61 00000000')), {name: 'a', queries: []})
    assert.throws(() => P.decodeMetaContextRequest(hex('00000000 7fffffff')), /query count/)
    assert.throws(() => P.decodeMetaContextRequest(hex('00000000 00000001 ffffffff')), /runs past/)
    assert.throws(() => P.decodeMetaContextRequest(hex('00000009 61')), /runs past/)
    assert.throws(() => P.decodeMetaContextRequest(hex('00000000 00000000 00')), /trailing/)
  })

  it('request: magic, flags, type, cookie, offset, length (28 bytes)', () => {
    const b = hex('25609513 0008 0007 0102030405060708 0000000100000200 00001000')
    assert.deepEqual(P.encodeRequest(7, 8, 0x0102030405060708n, 0x100000200, 0x1000), b)
    const r = P.decodeRequest(b)
    assert.equal(r.magic, P.NBD_REQUEST_MAGIC)
    assert.equal(r.flags, P.NBD_CMD_FLAG_REQ_ONE)
    assert.equal(r.type, P.NBD_CMD_BLOCK_STATUS)
    assert.deepEqual(r.cookie, cookie)
    assert.equal(r.offset, 0x100000200)
    assert.equal(r.length, 0x1000)
    // The kernel puts NBD_CMD_FLAG_FUA (1 << 16 of its 32-bit type) in the upper half: flags 1, type 1.
    const k = P.decodeRequest(hex('25609513 00010001 0000000000000000 0000000000000000 00000200'))
    assert.equal(k.flags, P.NBD_CMD_FLAG_FUA)
    assert.equal(k.type, P.NBD_CMD_WRITE)
    // Offsets beyond 2^53 saturate (they are out of range for any export) instead of losing precision.
    assert.equal(P.decodeRequest(hex('25609513 0000 0000 0000000000000000 ffffffffffffffff 00000200')).offset, Number.MAX_SAFE_INTEGER)
  })

  it('simple reply: magic, error, cookie (16 bytes)', () => {
    assert.deepEqual(P.encodeSimpleReply(cookie, 5), hex('67446698 00000005 0102030405060708'))
  })

  it('structured chunks: OFFSET_DATA, ERROR, ERROR_OFFSET, BLOCK_STATUS, NONE', () => {
    assert.deepEqual(
      P.encodeOffsetDataHeader(cookie, 1, 0x200, 0x1000),
      hex('668e33ef 0001 0001 0102030405060708 00001008 0000000000000200'),
    )
    assert.deepEqual(P.encodeErrorChunk(cookie, 1, 22, 'no'), hex('668e33ef 0001 8001 0102030405060708 00000008 00000016 0002 6e6f'))
    assert.deepEqual(
      P.encodeErrorChunk(cookie, 1, 5, 'x', 0x400),
      hex('668e33ef 0001 8002 0102030405060708 0000000f 00000005 0001 78 0000000000000400'),
    )
    assert.deepEqual(
      P.encodeBlockStatusChunk(cookie, 1, 1, [
        {length: 0x1000, status: 3},
        {length: 0x200, status: 0},
      ]),
      hex('668e33ef 0001 0005 0102030405060708 00000014 00000001 00001000 00000003 00000200 00000000'),
    )
    assert.deepEqual(P.encodeNoneChunk(cookie), hex('668e33ef 0001 0000 0102030405060708 00000000'))
    // An error message is cut to the 4096-byte string limit so its 16-bit length field cannot overflow.
    const long = P.encodeErrorChunk(cookie, 1, 5, 'y'.repeat(70000))
    assert.equal(long.readUInt16BE(24), P.MAX_STRING)
    assert.equal(long.length, 20 + 6 + P.MAX_STRING)
  })
})

/**
 * The byte-level pieces on their own: XDR (RFC 4506) encoding and bounds, RFC 5531 §11 record
 * reassembly across arbitrary chunk boundaries, and the small rules (loopback peers, export paths).
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import {XdrError, XdrReader, XdrWriter} from '../../src/serve/nfs/xdr'
import {RecordDecoder, RecordTooLargeError, frameRecord} from '../../src/serve/nfs/rpc'
import {isLoopbackAddress} from '../../src/serve/nfs'
import {normalizeDirpath} from '../../src/serve/nfs/mount'

describe('nfs codec: XDR', () => {
  it('encodes big-endian words, hypers and padded opaques (RFC 4506 §4)', () => {
    const w = new XdrWriter(8)
    w.uint32(0x01020304).int32(-2).uint64(0x0102030405060708n).bool(true).string('abcde').opaque(Buffer.alloc(0))
    assert.equal(
      w.toBuffer().toString('hex'),
      '01020304' + 'fffffffe' + '0102030405060708' + '00000001' + '00000005' + '6162636465000000' + '00000000',
    )
    assert.equal(w.length, 36)
  })

  it('references large payloads instead of copying them, and still pads them', () => {
    const data = crypto.randomBytes(10001)
    const w = new XdrWriter().uint32(7).opaque(data).uint32(9)
    const parts = w.buffers()
    assert.ok(parts.includes(data), 'payload was copied')
    const all = w.toBuffer()
    assert.equal(all.length, 4 + 4 + 10001 + 3 + 4)
    assert.ok(all.subarray(8, 8 + 10001).equals(data))
    assert.deepEqual([...all.subarray(8 + 10001, 8 + 10004)], [0, 0, 0])
    assert.equal(all.readUInt32BE(all.length - 4), 9)
  })

  it('refuses out-of-range values', () => {
    assert.throws(() => new XdrWriter().uint32(-1), RangeError)
    assert.throws(() => new XdrWriter().uint32(2 ** 32), RangeError)
    assert.throws(() => new XdrWriter().uint64(-1n), RangeError)
  })

  it('decodes what it encodes, and bounds every length before slicing', () => {
    const buf = new XdrWriter().uint32(5).uint64(2n ** 63n).bool(false).string('name').toBuffer()
    const r = new XdrReader(buf)
    assert.equal(r.uint32(), 5)
    assert.equal(r.uint64(), 2n ** 63n)
    assert.equal(r.bool(), false)
    assert.equal(r.string(10), 'name')
    assert.equal(r.remaining, 0)
    assert.throws(() => r.uint32(), XdrError)
    assert.throws(() => new XdrReader(new XdrWriter().string('toolong').toBuffer()).string(6), /exceeds its maximum/)
    assert.throws(() => new XdrReader(new XdrWriter().uint32(1000).toBuffer()).opaque(4096), /truncated/)
    assert.throws(() => new XdrReader(new XdrWriter().uint32(0xffffffff).toBuffer()).opaque(2 ** 32), /truncated/)
    assert.throws(() => new XdrReader(new XdrWriter().uint32(2).toBuffer()).bool(), /not a boolean/)
    // Padding must be present too: 5 bytes of data need 8.
    assert.throws(() => new XdrReader(Buffer.concat([new XdrWriter().uint32(5).toBuffer(), Buffer.alloc(5)])).opaque(8))
  })
})

describe('nfs codec: record marking (RFC 5531 §11)', () => {
  function fragments(record: Buffer, cuts: number[]): Buffer {
    const out: Buffer[] = []
    let at = 0
    for (let i = 0; i <= cuts.length; i++) {
      const end = i < cuts.length ? cuts[i] : record.length
      const last = i === cuts.length
      const head = Buffer.alloc(4)
      head.writeUInt32BE(((last ? 0x80000000 : 0) | (end - at)) >>> 0)
      out.push(head, record.subarray(at, end))
      at = end
    }
    return Buffer.concat(out)
  }

  it('reassembles records from fragments split at every possible chunk boundary', () => {
    const a = crypto.randomBytes(37)
    const b = crypto.randomBytes(300)
    const stream = Buffer.concat([fragments(a, [0, 5, 5, 20]), fragments(b, [100]), frameRecord([Buffer.alloc(0)])[0]])
    for (const step of [1, 2, 3, 7, 64, stream.length]) {
      const d = new RecordDecoder(4096)
      const got: Buffer[] = []
      for (let at = 0; at < stream.length; at += step) got.push(...d.push(stream.subarray(at, at + step)))
      assert.equal(got.length, 3, `step ${step}`)
      assert.ok(got[0].equals(a))
      assert.ok(got[1].equals(b))
      assert.equal(got[2].length, 0)
    }
  })

  it('rejects a record over the cap as soon as a fragment header says so', () => {
    const d = new RecordDecoder(1000)
    assert.deepEqual(d.push(fragments(Buffer.alloc(1000), [500])), [Buffer.alloc(1000)])
    const d2 = new RecordDecoder(1000)
    d2.push(Buffer.concat([Buffer.from([0, 0, 0x01, 0xf4]), Buffer.alloc(500)])) // 500, not last
    assert.throws(() => d2.push(Buffer.from([0x80, 0, 0x01, 0xf5])), RecordTooLargeError) // +501 > 1000
    assert.throws(() => new RecordDecoder(1 << 20).push(Buffer.from([0xff, 0xff, 0xff, 0xff])), RecordTooLargeError)
  })

  it('frames a reply as one last fragment', () => {
    const parts = frameRecord([Buffer.from('ab'), Buffer.from('cdef')])
    assert.equal(parts[0].readUInt32BE(0), 0x80000006)
  })
})

describe('nfs codec: small rules', () => {
  it('loopback peers are 127.0.0.0/8 and ::1, also IPv4-mapped', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1', '::FFFF:127.0.0.9']) assert.ok(isLoopbackAddress(a), a)
    for (const a of ['192.0.2.2', '10.0.0.1', '::ffff:10.0.0.1', 'fd00::2', '128.0.0.1', '', undefined, '::'])
      assert.ok(!isLoopbackAddress(a), String(a))
  })

  it('export paths compare after collapsing slashes; relative paths name nothing', () => {
    assert.equal(normalizeDirpath('/'), '/')
    assert.equal(normalizeDirpath('//'), '/')
    assert.equal(normalizeDirpath('/a//b/'), '/a/b')
    assert.equal(normalizeDirpath(''), '')
    assert.equal(normalizeDirpath('a'), 'a')
  })
})

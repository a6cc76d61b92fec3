/**
 * Damage of every kind is detected: a flipped byte anywhere in the file, truncation anywhere, a newer
 * major version, unknown critical sections. Damage never turns into wrong bytes served as good.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {openImage} from '../../src/format/reader'
import {parseMapfile} from '../../src/format/mapfile'
import {verifyImage} from '../../src/format/verify'
import {crc32c} from '../../src/format/crc'
import {HEADER_SIZE, SECTION_ENTRY_SIZE, decodeHeader, decodeSections, encodeSections} from '../../src/format/layout'
import {VdevError} from '../../src/core/errors'
import {ROOT, prng, textish, tmpDir} from '../helpers'

/**
 * Open and verify; returns the error message, or undefined when the image passes. `warned`: damage read
 * around at open (a 1.1 structure taken from its copy) counts as found, without verifying every chunk.
 */
async function check(file: string, warned = false): Promise<string | undefined> {
  let im
  try {
    im = await openImage(file)
  } catch (err) {
    assert.ok(err instanceof VdevError, `not a VdevError: ${err}`)
    assert.ok(['format', 'unsupported'].includes(err.code), `code ${err.code}`)
    assert.ok(!err.message.includes('\n'), 'one line')
    return err.message
  }
  try {
    if (warned && im.warnings.length) return im.warnings[0]
    const v = await verifyImage(im, {threads: 1})
    // A damaged structure that loses no chunk (a copy, or an original read from its copy) is listed too.
    if (!v.ok) return v.problems[0]?.message ?? v.damaged[0]?.why ?? 'hash mismatch'
    return undefined
  } catch (err) {
    assert.ok(err instanceof VdevError, `not a VdevError: ${err}`)
    return err.message
  } finally {
    await im.close()
  }
}

describe('corruption is detected', function () {
  this.timeout(600_000)
  let t: ReturnType<typeof tmpDir>
  let good: Buffer
  let file: string
  const work = () => path.join(t.dir, 'damaged.vdimg')

  before(async () => {
    t = tmpDir()
    const cs = 4096
    const data = Buffer.concat([prng(1, 3 * cs), Buffer.alloc(2 * cs), textish(2, 500 * cs + 333)])
    const raw = path.join(t.dir, 'src.raw')
    fs.writeFileSync(raw, data)
    const map = parseMapfile(`0 +\n0 0x8000 +\n0x8000 0x1000 -\n0x9000 0x1000 /\n0xA000 ${data.length - 0xa000} +\n`, 'm.map')
    file = path.join(t.dir, 'good.vdimg')
    const input = openInput(raw)
    await createImage(input, file, {chunkSize: cs, l2Entries: 256, mapfile: map, metadata: {model: 'X'}})
    await input.close()
    good = fs.readFileSync(file)
    assert.equal(await check(file), undefined)
  })
  after(() => t.cleanup())

  it('a flipped bit in any byte of any structure or chunk is caught (every header byte, every structure, sampled data)', async () => {
    const h = decodeHeader(good, good.length)
    const sections = decodeSections(good.subarray(h.sectionTableOffset, h.sectionTableOffset + h.sectionCount * SECTION_ENTRY_SIZE), h.sectionTableOffset, good.length)
    const offsets = new Set<number>()
    for (let i = 0; i < HEADER_SIZE; i++) offsets.add(i)
    // Every byte of the entries of sections 1–3; every 4th of the 1.1 copies' entries (4–7), to keep the count.
    for (let i = 0; i < h.sectionCount * SECTION_ENTRY_SIZE; i += i < 3 * SECTION_ENTRY_SIZE ? 1 : 4) offsets.add(h.sectionTableOffset + i)
    // Sections 1–3 densely; the 1.1 copies (types 4–7, FORMAT.md §12: a flip there is a damaged copy) at 8 points.
    for (const s of sections) for (let i = 0; i < s.length; i += Math.max(1, Math.floor(s.length / (s.type >= 4 && s.type <= 7 ? 8 : 64)))) offsets.add(s.offset + i)
    for (const s of sections) offsets.add(s.offset + s.length - 1)
    // Index tables sit between chunk data; sample the whole data area densely.
    // (A flip there is found only by verifying the whole image, ~0.1 s a case: 250 of them.)
    const r = prng(7, 4 * 250)
    for (let i = 0; i < 250; i++) offsets.add(HEADER_SIZE + (r.readUInt32LE(i * 4) % (h.sectionTableOffset - HEADER_SIZE)))
    let n = 0
    for (const off of [...offsets].sort((a, b) => a - b)) {
      const bad = Buffer.from(good)
      bad[off] ^= 1 << (off % 8)
      fs.writeFileSync(work(), bad)
      const msg = await check(work(), true)
      assert.ok(msg, `flip at byte ${off} went unnoticed`)
      n++
    }
    assert.ok(n > 700, `${n} flips`)
  })

  it('truncation anywhere is caught', async () => {
    const cuts = [0, 1, 7, 8, 100, 255, 256, 1000, good.length >> 1, good.length - 33, good.length - 32, good.length - 1]
    const r = prng(8, 4 * 50)
    for (let i = 0; i < 50; i++) cuts.push(r.readUInt32LE(i * 4) % good.length)
    for (const cut of cuts) {
      fs.writeFileSync(work(), good.subarray(0, cut))
      const msg = await check(work())
      assert.ok(msg, `truncation at ${cut} went unnoticed`)
      if (cut >= HEADER_SIZE) assert.match(msg!, /truncated|outside the file|end of file/)
    }
  })

  /** Rewrite the section table (appending one section) and fix the header checksums. */
  function withExtraSection(type: number, flags: number): Buffer {
    const h = decodeHeader(good, good.length)
    const table = good.subarray(h.sectionTableOffset, h.sectionTableOffset + h.sectionCount * SECTION_ENTRY_SIZE)
    // Everything after the section table goes, the 1.1 copies with it (FORMAT.md §12): a 1.1 image without copies.
    const sections = decodeSections(table, h.sectionTableOffset, good.length).filter((s) => s.type < 4 || s.type > 7)
    const payload = Buffer.from('future data')
    const body = good.subarray(0, h.sectionTableOffset)
    sections.push({type, flags, offset: body.length, length: payload.length, crc: crc32c(payload)})
    const newTable = encodeSections(sections)
    const out = Buffer.concat([body, payload, newTable])
    out.writeBigUInt64LE(BigInt(body.length + payload.length), 48)
    out.writeUInt32LE(sections.length, 56)
    out.writeUInt32LE(crc32c(newTable), 60)
    out.fill(0, 96, 112) // the table moved: no section table copy, no header copy (FORMAT.md §12)
    out.writeUInt32LE(crc32c(out.subarray(0, 252)), 252)
    return out
  }

  it('an unknown non-critical section is skipped; an unknown critical one is refused as needing a newer reader', async () => {
    fs.writeFileSync(work(), withExtraSection(77, 0))
    assert.equal(await check(work()), undefined)
    fs.writeFileSync(work(), withExtraSection(78, 1))
    assert.match((await check(work()))!, /unknown critical section type 78: this image needs a newer vdev/)
  })

  it('a newer major version is reported as unsupported, not as damage', async () => {
    const b = Buffer.from(good)
    b.writeUInt16LE(2, 8)
    b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
    fs.writeFileSync(work(), b)
    await assert.rejects(openImage(work()), (e: VdevError) => e.code === 'unsupported' && /format version 2\.1 is not supported/.test(e.message))
    // Its checksum failing, the same field is damage: a 1.1 image reads its header copy (FORMAT.md §12)…
    const d = Buffer.from(good)
    d.writeUInt16LE(2, 8)
    fs.writeFileSync(work(), d)
    const im = await openImage(work())
    await im.close()
    assert.match(im.warnings[0], /header checksum mismatch \(at byte 252; read from its copy at byte \d+\)$/)
    // …and a 1.0 image, without one, says what it said before.
    const golden = fs.readFileSync(path.join(ROOT, 'test', 'golden', '1.0', 'mixed-4k.vdimg'))
    golden.writeUInt16LE(2, 8)
    fs.writeFileSync(work(), golden)
    await assert.rejects(openImage(work()), (e: VdevError) => e.code === 'unsupported' && /format version 2\.0 is not supported/.test(e.message))
  })

  it('a valid checksum over absurd index fields is still refused before allocation', async () => {
    // Make chunk 5's stored length enormous in its index table and re-seal that table's checksum.
    const im = await openImage(file)
    const l1off = im.l1.readBigUInt64LE(0)
    const l1crcAt = im.sections.find((s) => s.type === 1)!.offset
    await im.close()
    const b = Buffer.from(good)
    const entry = Number(l1off) + 5 * 24
    b.writeUInt32LE(0xfffffff0, entry + 8)
    const tableLen = 256 * 24
    b.writeUInt32LE(crc32c(b.subarray(Number(l1off), Number(l1off) + tableLen)), l1crcAt + 12)
    // …and re-seal the chunk index section and the section table and the header.
    const h = decodeHeader(good, good.length)
    const secs = decodeSections(b.subarray(h.sectionTableOffset, h.sectionTableOffset + h.sectionCount * 32), h.sectionTableOffset, b.length)
    const idx = secs.findIndex((s) => s.type === 1)
    secs[idx].crc = crc32c(b.subarray(secs[idx].offset, secs[idx].offset + secs[idx].length))
    const table = encodeSections(secs)
    table.copy(b, h.sectionTableOffset)
    b.writeUInt32LE(crc32c(table), 60)
    b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
    fs.writeFileSync(work(), b)
    assert.match((await check(work()))!, /chunk 5: (stored length 4294967280 is impossible|raw chunk of 4294967280 bytes)/)
  })
})

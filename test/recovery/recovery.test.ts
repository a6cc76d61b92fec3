/**
 * Recovery data (format 1.2, FORMAT.md §13) and `vdev repair`: the Reed–Solomon code against its own
 * algebra (seeded property tests), then real images damaged in every pattern the issue names — spread,
 * consecutive runs, the parity itself, the critical structures — repaired byte-identical to the original;
 * damage beyond the parity repaired as far as it goes, naming exactly the chunks that stay lost.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {cauchy, gfInv, gfInvert, gfMul, mulAdd} from '../../src/format/gf256'
import {simdKernel} from '../../src/format/gf256-simd'
import {crc32c} from '../../src/format/crc'
import {SectionType} from '../../src/format/layout'
import {openImage} from '../../src/format/reader'
import {chooseParams, dataSlices, sliceOrigin, decodeRecoveryHeader, layoutOf, parityOf, RECOVERY_HEADER_SIZE, solveStripe, type RecoveryLayout} from '../../src/format/recovery'
import {repairImage} from '../../src/format/repair'
import {verifyImage} from '../../src/format/verify'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {prng, runCli, textish, tmpDir} from '../helpers'

/** A small deterministic generator for the property tests. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1
  return (n) => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s % n
  }
}

describe('recovery: GF(2^8) and the Cauchy erasure code', () => {
  it('is a field: every non-zero element has an inverse, multiplication distributes over XOR', () => {
    for (let a = 1; a < 256; a++) assert.equal(gfMul(a, gfInv(a)), 1, `${a}`)
    const r = rng(7)
    for (let t = 0; t < 2000; t++) {
      const [a, b, c] = [r(256), r(256), r(256)]
      assert.equal(gfMul(a, b ^ c), gfMul(a, b) ^ gfMul(a, c))
      assert.equal(gfMul(a, gfMul(b, c)), gfMul(gfMul(a, b), c))
    }
  })

  it('mulAdd equals the byte-wise product on aligned and unaligned buffers', () => {
    const src = prng(1, 1027)
    for (const [c, off] of [
      [0, 0],
      [1, 0],
      [0x53, 0],
      [0xca, 1],
      [0xff, 3],
    ]) {
      const dst = Buffer.from(prng(2, 1030)).subarray(off, off + 1027 - off)
      const want = Buffer.from(dst)
      for (let i = 0; i < want.length; i++) want[i] ^= gfMul(c, src[i])
      mulAdd(dst, src.subarray(0, dst.length), c)
      assert.deepEqual(dst, want)
    }
  })

  it('the WebAssembly SIMD kernel gives the same bytes as the JavaScript loop, for every coefficient', () => {
    const k = simdKernel()
    assert.ok(k, 'WebAssembly SIMD is not available in this Node')
    const src = prng(8, 4099)
    const [d, s] = k.arena([4099, 4099])
    // The arena is the module's memory, shared by every user in the process: it holds what the last one left.
    d.fill(0)
    s.set(src)
    const js = Buffer.alloc(4099)
    for (let c = 0; c < 256; c++) {
      k.mulAdd(d, s, c)
      mulAdd(js, src, c)
    }
    assert.ok(Buffer.from(d).equals(js))
  })

  it('every square submatrix of the Cauchy matrix is invertible (random picks over the largest stripe)', () => {
    const r = rng(11)
    for (let t = 0; t < 300; t++) {
      const m = 1 + r(40)
      const k = 256 - m
      const e = 1 + r(m)
      const rows = pick(r, m, e)
      const cols = pick(r, k, e)
      const a = rows.map((i) => cols.map((j) => cauchy(i, j, m)))
      const inv = gfInvert(a)
      for (let i = 0; i < e; i++)
        for (let j = 0; j < e; j++) {
          let s = 0
          for (let x = 0; x < e; x++) s ^= gfMul(a[i][x], inv[x][j])
          assert.equal(s, i === j ? 1 : 0)
        }
    }
  })

  it('rebuilds any e ≤ m lost data slices from any e good parity slices; refuses more', () => {
    const r = rng(23)
    for (let t = 0; t < 60; t++) {
      const k = 1 + r(60)
      const m = 1 + r(12)
      const S = 64
      const l = {sliceSize: S, k, m, stripes: 1, regionOffset: 256, regionLength: k * S}
      const data = Array.from({length: k}, (_, j) => prng(t * 1000 + j, S))
      const parity = Array.from({length: m}, (_, p) => parityOf(l, data, p))
      const badParity = new Set(pick(r, m, r(m + 1)))
      const good = m - badParity.size
      const lost = pick(r, k, Math.min(k, r(m + 2)))
      const have = data.map((d, j) => (lost.includes(j) ? undefined : d))
      const par = parity.map((p, i) => (badParity.has(i) ? undefined : p))
      const out = solveStripe(l, have, par, lost)
      if (lost.length > good) assert.equal(out, undefined)
      else {
        assert.ok(out)
        lost.forEach((j, e) => assert.deepEqual(out[e], data[j]))
      }
    }
  })

  it('gives the check values of FORMAT.md §13.2', () => {
    assert.equal(cauchy(0, 0, 12), 0x3d)
    assert.deepEqual([0, 1, 2].map((j) => cauchy(0, j, 2)), [0x8e, 0xf4, 0x47])
    assert.deepEqual([0, 1, 2].map((j) => cauchy(1, j, 2)), [0xf4, 0x8e, 0xa7])
    const l = {sliceSize: 1, k: 3, m: 2, stripes: 1, regionOffset: 256, regionLength: 3}
    const data = [Buffer.from([1]), Buffer.from([2]), Buffer.from([3])]
    assert.deepEqual([parityOf(l, data, 0)[0], parityOf(l, data, 1)[0]], [0xb2, 0x01])
  })

  it('chooses k + m ≤ 256 with m/k close to the percentage asked for', () => {
    for (const [p, k, m] of [
      [1, 200, 2],
      [5, 240, 12],
      [10, 230, 23],
      [50, 170, 85],
    ]) {
      const c = chooseParams(p, 256, 1 << 30)
      assert.deepEqual([c.k, c.m], [k, m], `${p}%`)
    }
    // A region of fewer slices than a stripe: one stripe of them all.
    const small = chooseParams(5, 4096, 10 * 4096)
    assert.deepEqual([small.k, small.m, small.stripes], [10, 1, 1])
  })
})

function pick(r: (n: number) => number, n: number, count: number): number[] {
  const all = Array.from({length: n}, (_, i) => i)
  for (let i = n - 1; i > 0; i--) {
    const j = r(i + 1)
    ;[all[i], all[j]] = [all[j], all[i]]
  }
  return all.slice(0, count).sort((a, b) => a - b)
}

interface Made {
  file: string
  good: Buffer
  layout: RecoveryLayout
  /** The recovery section's offset. */
  at: number
  /** Each chunk's stored bytes. */
  chunks: Array<{offset: number; length: number}>
  tables: Array<{offset: number; length: number}>
  sections: Map<number, {offset: number; length: number}>
}

async function make(dir: string, name: string, recovery: number | undefined, size = 3 << 20): Promise<Made> {
  // Incompressible, compressible and zero stretches: raw, zstd and zero chunks, several index tables.
  const raw = Buffer.concat([prng(5, size / 2), textish(6, size / 4), Buffer.alloc(size / 8), prng(7, size / 8)])
  const src = path.join(dir, `${name}.raw`)
  fs.writeFileSync(src, raw)
  const file = path.join(dir, `${name}.vdimg`)
  const input = openInput(src)
  try {
    await createImage(input, file, {chunkSize: 8192, l2Entries: 256, recovery, threads: 2})
  } finally {
    await input.close()
  }
  const img = await openImage(file)
  try {
    const chunks = []
    for (let i = 0; i < img.chunkCount; i++) {
      const e = await img.entry(i)
      chunks.push({offset: e.offset, length: e.storedLength})
    }
    const tables = []
    for (let g = 0; g < img.l1.length / 24; g++) {
      const offset = Number(img.l1.readBigUInt64LE(g * 24))
      if (offset) tables.push({offset, length: img.l1.readUInt32LE(g * 24 + 8)})
    }
    const sections = new Map(img.sections.map((s) => [s.type, {offset: s.offset, length: s.length}]))
    const good = fs.readFileSync(file)
    const rec = img.sections.find((s) => s.type === SectionType.Recovery)
    const layout = rec ? decodeRecoveryHeader(good.subarray(rec.offset, rec.offset + RECOVERY_HEADER_SIZE), rec.offset, rec.length) : (undefined as unknown as RecoveryLayout)
    return {file, good, layout, at: rec?.offset ?? 0, chunks, tables, sections}
  } finally {
    await img.close()
  }
}

/** A copy of the image with `damage` applied: [offset, length] ranges overwritten with other bytes. */
function damaged(m: Made, dir: string, name: string, ranges: Array<[number, number]>): string {
  const b = Buffer.from(m.good)
  ranges.forEach(([off, len], n) => {
    for (let i = 0; i < len; i++) b[off + i] = (b[off + i] ^ (0x5a + n + i)) | 1
  })
  const f = path.join(dir, `${name}.vdimg`)
  fs.writeFileSync(f, b)
  return f
}

/** File offset of region slice i. */
const sliceAt = (m: Made, i: number) => sliceOrigin(m.layout) + i * m.layout.sliceSize
const parityAt = (m: Made, s: number, r: number) => m.at + m.layout.parityOffset + (s * m.layout.m + r) * m.layout.sliceSize

describe('recovery: vdev repair of real images', function () {
  this.timeout(120_000)
  let t: ReturnType<typeof tmpDir>
  let m: Made

  before(async () => {
    t = tmpDir()
    m = await make(t.dir, 'base', 5)
  })
  after(() => t?.cleanup())

  it('writes format 1.2 with one recovery section after the originals and before the copies; verify passes', async () => {
    const img = await openImage(m.file)
    try {
      assert.equal(img.version, '1.2')
      assert.deepEqual(img.warnings, [])
      const r = await verifyImage(img, {quick: true})
      assert.equal(r.ok, true)
      assert.deepEqual(r.recovery, {present: true, intact: true})
    } finally {
      await img.close()
    }
    const l = m.layout
    assert.ok(l.stripes >= 3, `${l.stripes} stripes`)
    assert.equal(l.regionOffset, 256)
    const lastTable = Math.max(...m.tables.map((x) => x.offset + x.length))
    assert.equal(l.regionOffset + l.regionLength, lastTable)
    assert.equal(m.at % 4096, 0)
    assert.ok(m.at > m.sections.get(SectionType.Metadata)!.offset)
    assert.ok(m.at + l.length <= m.sections.get(SectionType.IndexTablesCopy)!.offset)
    // Overhead: the parity is m/k of the region (plus the rounding of the last stripe and the CRCs).
    const overhead = l.length / l.regionLength
    assert.ok(overhead > 0.045 && overhead < 0.07, `overhead ${overhead}`)
  })

  /** Repair `f` in place (in-process) and check it is the original again. */
  const repairsExactly = async (f: string) => {
    const r = await repairImage(f)
    assert.equal(r.repaired, true, JSON.stringify(r.remaining))
    assert.equal(r.intact, false)
    assert.ok(fs.readFileSync(f).equals(m.good), 'repaired file differs from the original')
    return r
  }

  it('spread damage: single bytes in many slices all over the region', async () => {
    const r = rng(99)
    const l = m.layout
    const hits: Array<[number, number]> = []
    const perStripe = new Map<number, Set<number>>()
    // Random bytes, as many in each stripe as its parity rebuilds.
    for (let tries = 0; tries < 10_000 && hits.length < l.stripes * l.m; tries++) {
      const at = l.regionOffset + r(l.regionLength)
      const i = Math.floor((at - sliceOrigin(l)) / l.sliceSize)
      const set = perStripe.get(i % l.stripes) ?? new Set()
      if (set.size >= l.m && !set.has(i)) continue
      set.add(i)
      perStripe.set(i % l.stripes, set)
      hits.push([at, 1])
    }
    const rep = await repairsExactly(damaged(m, t.dir, 'spread', hits))
    assert.ok(rep.rebuiltSlices >= hits.length / 2, `${rep.rebuiltSlices} of ${hits.length}`)
  })

  it('a consecutive run: as many slices as there are stripes × parity, less one stripe', async () => {
    const l = m.layout
    const n = l.stripes * (l.m - 1)
    const rep = await repairsExactly(damaged(m, t.dir, 'run', [[sliceAt(m, 5), n * l.sliceSize]]))
    assert.equal(rep.rebuiltSlices, n)
  })

  it('one stripe loses exactly m slices (the most its parity rebuilds)', async () => {
    const l = m.layout
    const ranges: Array<[number, number]> = []
    for (let j = 0; j < l.m; j++) ranges.push([sliceAt(m, j * l.stripes + 1) + 100, 10])
    await repairsExactly(damaged(m, t.dir, 'full-stripe', ranges))
  })

  it('the parity itself: damaged parity slices, CRC table and header, with data damage the rest still rebuilds', async () => {
    const l = m.layout
    const ranges: Array<[number, number]> = []
    // Stripe 0: half its parity damaged, and as many data slices lost as parity is left.
    const half = Math.floor(l.m / 2)
    for (let r = 0; r < half; r++) ranges.push([parityAt(m, 0, r) + 7, 50])
    for (let j = 0; j < l.m - half; j++) ranges.push([sliceAt(m, j * l.stripes), 3])
    // Every parity slice of the last stripe, the recovery header, and one CRC of the table.
    for (let r = 0; r < l.m; r++) ranges.push([parityAt(m, l.stripes - 1, r), 1])
    ranges.push([m.at + 20, 4])
    ranges.push([m.at + RECOVERY_HEADER_SIZE + 8, 4])
    const rep = await repairsExactly(damaged(m, t.dir, 'parity', ranges))
    assert.ok(rep.rewrittenParity >= half + l.m, `${rep.rewrittenParity}`)
  })

  it('structures: header, section table, chunk index, an index table and its copy, the table copies, the trailer', async () => {
    const s = m.sections
    const tbl = m.tables[1]
    const tablesCopy = s.get(SectionType.IndexTablesCopy)!
    const ranges: Array<[number, number]> = [
      [10, 4], // header
      [s.get(SectionType.ChunkIndex)!.offset, 8],
      [s.get(SectionType.Metadata)!.offset + 2, 1],
      [tbl.offset + 30, 40], // a table: original and its copy both damaged, so only parity rebuilds it
      [tablesCopy.offset + m.tables[0].length + 30, 40],
      [tablesCopy.offset + 5, 3], // table 0's copy
    ]
    const img = await openImage(m.file)
    const copyAt = img.header.copyTableOffset
    await img.close()
    ranges.push([copyAt + 3, 2])
    const f = damaged(m, t.dir, 'structures', ranges.filter(([, n]) => n > 0))
    const rep = await repairsExactly(f)
    assert.ok(rep.fixed.some((x) => /header at byte 0 rewritten/.test(x)), rep.fixed.join('\n'))
    assert.ok(rep.fixed.some((x) => /data slice/.test(x)), rep.fixed.join('\n'))
    // The other places: the trailer, the section table, the bad-area map's copy, and zero padding.
    const img2 = await openImage(m.file)
    const h = img2.header
    await img2.close()
    const f2 = damaged(m, t.dir, 'structures2', [
      [m.good.length - 100, 20],
      [h.sectionTableOffset + 40, 8],
      [h.sectionTableOffset + h.sectionCount * 32 + 10, 4],
      [s.get(SectionType.ChunkIndexCopy)!.offset, 2],
    ])
    const rep2 = await repairsExactly(f2)
    assert.ok(rep2.fixed.some((x) => /header copy at byte \d+ rewritten from the original/.test(x)), rep2.fixed.join('\n'))
  })

  it('a header at 0 whose CRC holds but which does not decode (no magic) is rewritten from the trailer, not copied over it', async () => {
    // Fuzz seed 4242 iteration 87: repair took the header by its CRC alone and wrote it over the good trailer.
    const b = Buffer.from(m.good)
    b.fill(0xee, 0, 8)
    b.writeUInt32LE(crc32c(b.subarray(0, 252)), 252)
    const f = path.join(t.dir, 'bad-magic.vdimg')
    fs.writeFileSync(f, b)
    await repairsExactly(f)
  })

  it('beyond the parity: repairs what it can, names exactly the chunks that stay lost, exit 5', async () => {
    const l = m.layout
    const ranges: Array<[number, number]> = []
    // Stripe 2 loses m + 1 slices (too many); stripe 0 loses 2 (repairable).
    for (let j = 0; j <= l.m; j++) ranges.push([sliceAt(m, j * l.stripes + 2) + 1, 2])
    ranges.push([sliceAt(m, 0) + 9, 1], [sliceAt(m, l.stripes * 3) + 9, 1])
    const f = damaged(m, t.dir, 'beyond', ranges)
    const touched = (a: number, n: number) => m.chunks.map((c, i) => (c.length && c.offset < a + n && c.offset + c.length > a ? i : -1)).filter((i) => i >= 0)
    const lost = new Set(ranges.slice(0, l.m + 1).flatMap(([a, n]) => touched(a, n)))
    assert.ok(lost.size > 0)
    const v = await runCli(['verify', f, '--json'])
    assert.equal(v.code, 5)
    const vj = JSON.parse(v.stdout)
    assert.equal(vj.repair.repairable, false)
    assert.match(vj.repair.why, /of stripe 2 lost/)
    const out = path.join(t.dir, 'beyond-fixed.vdimg')
    const res = await runCli(['repair', f, '--out', out, '--json'])
    assert.equal(res.code, 5, res.stderr)
    assert.equal(res.stderr.trim().split('\n').length, 1, res.stderr)
    assert.match(res.stderr, /^vdev: .*not all damage repaired .*chunks? stay lost/)
    const j = JSON.parse(res.stdout)
    const remaining = new Set<number>()
    for (const d of j.remaining) for (let c = d.chunk; c < d.chunk + d.chunks; c++) if (d.chunk >= 0) remaining.add(c)
    assert.deepEqual([...remaining].sort((a, b) => a - b), [...lost].sort((a, b) => a - b))
    // Every other chunk's stored bytes are the original's again.
    const fixed = fs.readFileSync(out)
    m.chunks.forEach((c, i) => {
      if (!lost.has(i)) assert.ok(fixed.subarray(c.offset, c.offset + c.length).equals(m.good.subarray(c.offset, c.offset + c.length)), `chunk ${i}`)
    })
    assert.ok(fs.readFileSync(f).equals(fs.readFileSync(damaged(m, t.dir, 'beyond-again', ranges))), 'the input was changed')
  })

  it('CLI: verify says repairable; repair in place is atomic, exit 0; an intact image is not rewritten', async () => {
    const f = damaged(m, t.dir, 'cli', [[sliceAt(m, 3), 5000]])
    const v = await runCli(['verify', f])
    assert.equal(v.code, 5)
    assert.match(v.stdout, /^repairable: /m)
    const before = fs.readdirSync(t.dir).length
    const r = await runCli(['repair', f])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stderr, '')
    assert.match(r.stdout, /repaired, every chunk and structure intact/)
    assert.ok(fs.readFileSync(f).equals(m.good))
    assert.equal(fs.readdirSync(t.dir).length, before, 'a temporary file was left behind')
    const mtime = fs.statSync(f).mtimeMs
    const again = await runCli(['repair', f, '--json'])
    assert.equal(again.code, 0)
    assert.equal(JSON.parse(again.stdout).intact, true)
    assert.equal(fs.statSync(f).mtimeMs, mtime)
  })

  it('CLI: bad input is one line and a documented exit code', async () => {
    const missing = await runCli(['repair', path.join(t.dir, 'nope.vdimg')])
    assert.equal(missing.code, 3)
    assert.equal(missing.stderr.trim().split('\n').length, 1)
    const junk = path.join(t.dir, 'junk.vdimg')
    fs.writeFileSync(junk, prng(3, 10000))
    const j = await runCli(['repair', junk])
    assert.equal(j.code, 4)
    assert.match(j.stderr, /^vdev: .*not a VDIMG/)
    const exists = await runCli(['repair', m.file, '--out', junk])
    assert.equal(exists.code, 6)
    assert.match(exists.stderr, /already exists/)
    const pct = await runCli(['create', junk, path.join(t.dir, 'x.vdimg'), '--recovery', '0%'])
    assert.equal(pct.code, 2)
    assert.equal(pct.stderr.trim().split('\n').length, 1)
  })

  it('without recovery data: structures are still repaired from their copies; chunk damage is not repairable (exit 5)', async () => {
    const plain = await make(t.dir, 'plain', undefined)
    assert.equal(plain.sections.has(SectionType.Recovery), false)
    const img = await openImage(plain.file)
    assert.equal(img.version, '1.1')
    await img.close()
    const f = damaged(plain, t.dir, 'plain-structures', [
      [5, 10],
      [plain.tables[0].offset + 3, 3],
    ])
    const r = await repairImage(f)
    assert.equal(r.repaired, true)
    assert.ok(fs.readFileSync(f).equals(plain.good))
    const c = damaged(plain, t.dir, 'plain-chunk', [[plain.chunks[2].offset + 1, 1]])
    const v = await runCli(['verify', c, '--json'])
    assert.equal(JSON.parse(v.stdout).repair.why, 'the image has no recovery data')
    const res = await runCli(['repair', c])
    assert.equal(res.code, 5)
    assert.match(res.stderr, /no recovery data/)
  })

  it('a layout the header computes matches the file (data slice CRCs included)', () => {
    const l = m.layout
    assert.deepEqual(layoutOf(l), l)
    assert.equal(l.length, l.parityOffset + l.stripes * l.m * l.sliceSize + RECOVERY_HEADER_SIZE)
    assert.ok(l.parityOffset >= RECOVERY_HEADER_SIZE + (l.stripes * l.m + dataSlices(l)) * 4)
    // The header copy ends the section.
    const head = m.good.subarray(m.at, m.at + RECOVERY_HEADER_SIZE)
    assert.ok(head.equals(m.good.subarray(m.at + l.length - RECOVERY_HEADER_SIZE, m.at + l.length)))
  })
})

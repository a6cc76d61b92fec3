/**
 * Salvage (issue 12 §1): extract finishes around damaged chunks and index tables (bytes per --bad-fill,
 * bad-sector areas in --mapfile-out, one line naming them, exit 5, every other byte exact); verify lists
 * every damaged chunk and structure; damaged metadata is a warning; SIGTERM stops verify and extract of a
 * 16 TiB sparse image at once with nothing left behind. Images are made by the real writer and damaged
 * byte by byte, with the checksums above the damage recomputed or not.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {crc32c} from '../../src/format/crc'
import {BAD_PATTERN} from '../../src/format/extract'
import {openInput} from '../../src/format/input'
import {ChunkKind, SectionType} from '../../src/format/layout'
import {parseMapfile} from '../../src/format/mapfile'
import {openImage} from '../../src/format/reader'
import {verifyImage} from '../../src/format/verify'
import {createImage} from '../../src/format/writer'
import {BIN, runCli, textish, tmpDir, type CliResult} from '../helpers'
import {writeUnreadImage} from './unread-image'
import {reseal, sectionCopy, sectionsOf, tableCopyOffset} from './reseal'

const CS = 128 << 10
const L2 = 256

/** Where chunk i's first-level entry, second-level table and entry, and stored bytes are. */
function locate(b: Buffer, i: number): {l1e: number; table: number; tableLength: number; entry: number; offset: number; storedLength: number; kind: number} {
  const l1 = sectionsOf(b).find((s) => s.type === SectionType.ChunkIndex)!.offset
  const l1e = l1 + Math.floor(i / L2) * 24
  const table = Number(b.readBigUInt64LE(l1e))
  const entry = table + (i % L2) * 24
  return {l1e, table, tableLength: b.readUInt32LE(l1e + 8), entry, offset: Number(b.readBigUInt64LE(entry)), storedLength: b.readUInt32LE(entry + 8), kind: b[entry + 16]}
}

/** Re-seal chunk i's index table in its first-level entry (then reseal() the sections). */
function resealTable(b: Buffer, i: number): void {
  const at = locate(b, i)
  b.writeUInt32LE(crc32c(b.subarray(at.table, at.table + at.tableLength)), at.l1e + 12)
}

describe('salvage: damaged images are extracted around, verified in full, and interrupted cleanly', function () {
  this.timeout(600_000)
  let t: ReturnType<typeof tmpDir>
  let data: Buffer
  let good: Buffer
  const p = (f: string) => path.join(t.dir, f)
  const temporaries = () => fs.readdirSync(t.dir).filter((f) => f.startsWith('.'))

  before(async () => {
    t = tmpDir()
    // 128 MiB in 1024 chunks of 128 KiB, four index groups of 256; one bad-sector area in chunk 5.
    data = textish(11, 128 << 20)
    fs.writeFileSync(p('src.raw'), data)
    const map = parseMapfile(`0 +\n0 ${5 * CS + 4096} +\n${5 * CS + 4096} 4096 -\n${5 * CS + 8192} ${data.length - 5 * CS - 8192} +\n`, 'src.map')
    const input = openInput(p('src.raw'))
    await createImage(input, p('good.vdimg'), {chunkSize: CS, l2Entries: L2, mapfile: map, metadata: {model: 'M', notes: 'n'.repeat(300)}})
    await input.close()
    good = fs.readFileSync(p('good.vdimg'))
    for (let i = 0; i < 1024; i += 97) assert.equal(locate(good, i).kind, ChunkKind.Zstd, `chunk ${i} is compressed`)
  })
  after(() => t.cleanup())

  /** Compare an extracted file with the source: every byte outside `lost` (and the bad-sector area) exact. */
  function assertExactOutside(out: Buffer, lost: Array<[number, number]>, fill: 'zero' | 'pattern'): void {
    assert.equal(out.length, data.length)
    const bad: Array<[number, number]> = [[5 * CS + 4096, 4096], ...lost]
    let at = 0
    for (const [off, len] of [...bad].sort((a, b) => a[0] - b[0])) {
      assert.ok(out.subarray(at, off).equals(data.subarray(at, off)), `bytes ${at}-${off - 1} exact`)
      for (let k = off; k < off + len; k += 997) {
        const want = fill === 'zero' ? 0 : BAD_PATTERN[k % BAD_PATTERN.length]
        assert.equal(out[k], want, `byte ${k} is the fill`)
      }
      at = off + len
    }
    assert.ok(out.subarray(at).equals(data.subarray(at)), `bytes from ${at} exact`)
  }

  it('one bad chunk of 1024: extract writes all of it, that chunk per --bad-fill, every other byte exact, the mapfile lists it, exit 5', async () => {
    const b = Buffer.from(good)
    const c = locate(b, 700)
    b[c.offset + 100] ^= 0x10 // its stored CRC now fails
    fs.writeFileSync(p('one.vdimg'), b)
    for (const fill of ['zero', 'pattern'] as const) {
      fs.rmSync(p('one.raw'), {force: true})
      fs.rmSync(p('one.map'), {force: true})
      const r = await runCli(['extract', p('one.vdimg'), p('one.raw'), '--bad-fill', fill, '--mapfile-out', p('one.map')])
      assert.equal(r.code, 5, r.stderr)
      const lines = r.stderr.split('\n').filter(Boolean)
      assert.equal(lines.length, 1, r.stderr)
      assert.match(lines[0], new RegExp(`^vdev: .*one\\.vdimg: 1 damaged chunk \\(131072 bytes\\) written as (zeros|the VDEV-UNREADABLE! pattern): chunk 700 \\(image bytes ${700 * CS}-${701 * CS - 1}\\): .*checksum mismatch \\(at byte \\d+\\)$`))
      assert.doesNotMatch(r.stderr, /\n\s+at |internal error/)
      assertExactOutside(fs.readFileSync(p('one.raw')), [[700 * CS, CS]], fill)
      const map = parseMapfile(fs.readFileSync(p('one.map'), 'utf8'), 'one.map')
      const bad = [...map.bad].map((x) => [x.offset, x.length, x.status])
      assert.deepEqual(bad, [
        [5 * CS + 4096, 4096, 'bad-sector'],
        [700 * CS, CS, 'bad-sector'],
      ])
      assert.deepEqual(temporaries(), [])
    }
    // --json: the result names the damage; stdout is JSON, exit 5.
    fs.rmSync(p('one.raw'))
    const j = await runCli(['extract', p('one.vdimg'), p('one.raw'), '--json'])
    assert.equal(j.code, 5, j.stderr)
    const o = JSON.parse(j.stdout)
    assert.equal(o.damagedChunks, 1)
    assert.deepEqual(o.damaged.map((d: {chunk: number; offset: number; length: number}) => [d.chunk, d.offset, d.length]), [[700, 700 * CS, CS]])
    // To stdout too: the whole image, the damaged chunk as zeros.
    const s = await runCli(['extract', p('one.vdimg'), '-'])
    assert.equal(s.code, 5, s.stderr)
    assertExactOutside(s.stdoutBuf, [[700 * CS, CS]], 'zero')
  })

  /** Chunks 100 (stored bytes), 300 (zstd frame, stored CRC recomputed), 600 (data CRC), all of group 3 (its table). */
  function severalDamaged(): Buffer {
    const b = Buffer.from(good)
    b[locate(b, 100).offset + 50] ^= 0x01
    const c300 = locate(b, 300)
    for (let k = 20; k < 60; k++) b[c300.offset + k] ^= 0x5a
    b.writeUInt32LE(crc32c(b.subarray(c300.offset, c300.offset + c300.storedLength)), c300.entry + 20)
    resealTable(b, 300)
    const c600 = locate(b, 600)
    b.writeUInt32LE((b.readUInt32LE(c600.entry + 12) ^ 1) >>> 0, c600.entry + 12)
    resealTable(b, 600)
    reseal(b)
    const g3 = locate(b, 800)
    b[g3.table + 7] ^= 0x80 // group 3's table, its checksum left stale…
    b[tableCopyOffset(b, 3)! + 7] ^= 0x80 // …and its copy (FORMAT.md §12), or the copy would serve
    return b
  }

  it('verify lists exactly the damaged chunks (in three index groups) and the damaged index table, exit 5', async () => {
    fs.writeFileSync(p('many.vdimg'), severalDamaged())
    const im = await openImage(p('many.vdimg'))
    const v = await verifyImage(im, {threads: 2})
    await im.close()
    assert.equal(v.ok, false)
    assert.equal(v.failedChunks, 3 + 256)
    assert.deepEqual(
      v.damaged.map((d) => [d.chunk, d.chunks]),
      [
        [100, 1],
        [300, 1],
        [600, 1],
        [768, 256],
      ],
    )
    assert.match(v.damaged[0].why, /chunk 100 .*stored checksum mismatch|chunk 100 .*checksum mismatch/)
    assert.match(v.damaged[3].why, /index table 3 checksum mismatch/)
    assert.equal(v.damaged[3].offset, 768 * CS)
    assert.equal(v.damaged[3].length, 256 * CS)

    const r = await runCli(['verify', p('many.vdimg'), '--json'])
    assert.equal(r.code, 5, r.stderr)
    assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, r.stderr)
    assert.match(r.stderr, /^vdev: .*many\.vdimg: chunk 100 .*\(259 damaged chunks in all\)/)
    const j = JSON.parse(r.stdout)
    assert.equal(j.ok, false)
    assert.deepEqual(
      j.damaged.map((d: {chunk: number}) => d.chunk),
      [100, 300, 600, 768],
    )
    for (const d of j.damaged) for (const k of ['chunk', 'offset', 'length', 'why']) assert.ok(k in d, k)

    // Human output lists each one on stdout; --quick finds the same without the media hash.
    const h = await runCli(['verify', p('many.vdimg'), '--quick'])
    assert.equal(h.code, 5, h.stderr)
    assert.equal(h.stdout.split('\n').filter((l) => l.startsWith('damaged: ')).length, 4, h.stdout)
    assert.match(h.stdout, /damaged: chunks 768-1023 \(image bytes 100663296-134217727\): index table 3 checksum mismatch/)

    // extract goes on around all of them.
    const x = await runCli(['extract', p('many.vdimg'), p('many.raw'), '--mapfile-out', p('many.map')])
    assert.equal(x.code, 5, x.stderr)
    assert.match(x.stderr, /259 damaged chunks \(33947648 bytes\) written as zeros: chunk 100 .*; chunk 300 .*; chunk 600 .*; chunks 768-1023 \(image bytes 100663296-134217727\): index table 3 checksum mismatch/)
    assertExactOutside(
      fs.readFileSync(p('many.raw')),
      [
        [100 * CS, CS],
        [300 * CS, CS],
        [600 * CS, CS],
        [768 * CS, 256 * CS],
      ],
      'zero',
    )
    const map = parseMapfile(fs.readFileSync(p('many.map'), 'utf8'), 'many.map')
    assert.deepEqual(
      [...map.bad].map((x) => [x.offset / CS, x.length / CS]),
      [
        [5 + 4096 / CS, 4096 / CS],
        [100, 1],
        [300, 1],
        [600, 1],
        [768, 256],
      ],
    )
    assert.deepEqual(temporaries(), [])
  })

  it('verify --quick passes an intact image without the media hash', async () => {
    const r = await runCli(['verify', p('good.vdimg'), '--quick', '--json'])
    assert.equal(r.code, 0, r.stderr)
    const j = JSON.parse(r.stdout)
    assert.equal(j.ok, true)
    assert.equal(j.hashed, false)
    assert.deepEqual(j.damaged, [])
    assert.equal(j.sha256.computed, null)
  })

  /** good.vdimg with its metadata section's bytes replaced (same length), its checksum recomputed or not. */
  function damagedMetadata(bytes: (old: Buffer) => Buffer, resealed: boolean): Buffer {
    const b = Buffer.from(good)
    // The original and its copy (FORMAT.md §12) alike, or the copy would serve.
    for (const s of [sectionsOf(b).find((x) => x.type === SectionType.Metadata)!, sectionCopy(b, SectionType.Metadata)!])
      bytes(b.subarray(s.offset, s.offset + s.length)).copy(b, s.offset)
    return resealed ? reseal(b) : b
  }

  it('damaged metadata is a warning: info, extract and serve go on without it; verify counts it as damage', async () => {
    const cases = [
      {name: 'crc', image: damagedMetadata((m) => Buffer.from(m.toString().replace('"M"', '"N"')), false), re: /metadata checksum mismatch/},
      {name: 'json', image: damagedMetadata((m) => Buffer.from(m.toString().replace('{', '[')), true), re: /metadata is not valid JSON|metadata is not a JSON object/},
      {
        name: 'deep',
        image: damagedMetadata((m) => Buffer.concat([Buffer.from('{"a":' + '['.repeat(70) + ']'.repeat(70) + '}'), Buffer.alloc(m.length - 146, 0x20)]), true),
        re: /metadata nests deeper than 64 levels/,
      },
    ]
    for (const c of cases) {
      const f = p(`meta-${c.name}.vdimg`)
      fs.writeFileSync(f, c.image)
      const warning = (r: CliResult) => {
        const lines = r.stderr.split('\n').filter(Boolean)
        assert.ok(lines.length >= 1, `${c.name}: a warning`)
        assert.match(lines[0], /^vdev: warning: .*meta-.*\.vdimg: .*; ignored$/)
        assert.match(lines[0], c.re)
        if (c.name === 'crc') {
          // Both failures named, at the original's offset (as a 1.0 image would say it, FORMAT.md §9).
          const orig = sectionsOf(c.image).find((x) => x.type === SectionType.Metadata)!
          const copy = sectionCopy(c.image, SectionType.Metadata)!
          assert.ok(
            lines[0].endsWith(`: metadata checksum mismatch, and its copy too: metadata copy checksum mismatch at byte ${copy.offset} (at byte ${orig.offset}); ignored`),
            lines[0],
          )
        }
      }
      const i = await runCli(['info', f, '--json'])
      assert.equal(i.code, 0, i.stderr)
      warning(i)
      assert.equal(i.stderr.split('\n').filter(Boolean).length, 1)
      assert.deepEqual(JSON.parse(i.stdout).metadata, {})
      const x = await runCli(['extract', f, p('meta.raw')])
      assert.equal(x.code, 0, x.stderr)
      warning(x)
      assert.ok(fs.readFileSync(p('meta.raw')).subarray(0, 5 * CS).equals(data.subarray(0, 5 * CS)))
      fs.rmSync(p('meta.raw'))
      if (c.name === 'crc') {
        // serve goes on too: its ready line, after the one warning.
        const sock = p('meta.sock')
        const child = spawn(process.execPath, [BIN, 'serve', f, '--listen', `unix:${sock}`, '--json'], {stdio: ['ignore', 'pipe', 'pipe']})
        let out = ''
        let err = ''
        child.stderr.on('data', (d) => (err += d))
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`serve never became ready: ${err}`)), 60_000)
          child.stdout.on('data', (d) => {
            out += d
            if (out.includes('\n')) resolve(clearTimeout(timer))
          })
          child.on('close', () => reject(new Error(`serve exited: ${err}`)))
        })
        assert.equal(JSON.parse(out.split('\n')[0]).protocol, 'nbd')
        warning({code: 0, stdout: out, stderr: err, stdoutBuf: Buffer.from(out)})
        const closed = new Promise((r) => child.on('close', r))
        child.kill('SIGTERM')
        await closed
      }
      const v = await runCli(['verify', f, '--json'])
      assert.equal(v.code, 5, v.stderr)
      const j = JSON.parse(v.stdout)
      assert.equal(j.failedChunks, 0)
      assert.equal(j.damaged.length, 1)
      assert.equal(j.damaged[0].chunk, -1)
      assert.match(j.damaged[0].why, c.re)
    }
    assert.deepEqual(temporaries(), [])
  })

  /**
   * A valid image of `size` bytes (16 TiB by default), every chunk unread: sparse end to end (no chunk
   * stored). Extracting into a file needs it one chunk short of 16 TiB: ext4 holds 4 KiB less than that.
   */
  function huge(size = 2 ** 44): string {
    return writeUnreadImage(p('huge.vdimg'), size)
  }

  for (const [cmd, extra] of [
    ['verify', []],
    ['extract', ['huge.raw']],
    ['extract', ['-']],
  ] as const)
    it(`SIGTERM stops ${cmd} ${extra.join(' ')} of a 16 TiB sparse image within 2 s, exit 130, nothing left behind`, async function () {
      const img = huge(extra[0] === 'huge.raw' ? 2 ** 44 - (4 << 20) : 2 ** 44)
      const args = [BIN, cmd, img, ...extra.map((e) => (e === '-' ? e : p(e)))]
      const child = spawn(process.execPath, args, {stdio: ['ignore', 'pipe', 'pipe']})
      let err = ''
      child.stderr.on('data', (d) => (err += d))
      child.stdout.resume()
      // Well into decoding: the image is open (so the command is past its start-up, however loaded the
      // machine), then half a second more.
      const opened = () => {
        try {
          return fs.readdirSync(`/proc/${child.pid}/fd`).some((fd) => fs.readlinkSync(`/proc/${child.pid}/fd/${fd}`) === img)
        } catch {
          return false
        }
      }
      for (let waited = 0; !opened(); waited += 50) {
        assert.ok(waited < 30_000 && child.exitCode === null, `the image was never opened (${err})`)
        await new Promise((r) => setTimeout(r, 50))
      }
      await new Promise((r) => setTimeout(r, 500))
      assert.equal(child.exitCode, null, `still running (${err})`)
      if (extra[0] === 'huge.raw') assert.equal(temporaries().length, 1, 'the temporary file exists')
      const sent = Date.now()
      child.kill('SIGTERM')
      const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)))
      const took = Date.now() - sent
      assert.ok(took < 2000, `stopped after ${took} ms`)
      assert.equal(code, 130, err)
      const lines = err.split('\n').filter(Boolean)
      assert.equal(lines.length, 1, err)
      assert.match(lines[0], /^vdev: .*huge\.vdimg: interrupted by SIGTERM$/)
      assert.deepEqual(temporaries(), [])
      assert.equal(fs.existsSync(p('huge.raw')), false)
    })
})

/**
 * Format 1.1, no single point of failure (issue 12 §2, FORMAT.md §12): overwrite each aligned 4 KiB block
 * of a test image in turn — every block of the file, header, tables, chunk data, copies and trailer alike —
 * and every chunk whose stored bytes do not touch that block still reads exactly (reader, serving path,
 * extract), and verify names exactly the chunks that do. A 1.0 image (golden) shows what 1.1 changes: the
 * same damage to its header block loses everything.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {openImage} from '../../src/format/reader'
import {VdevError} from '../../src/core/errors'
import {spawn, spawnSync} from 'node:child_process'
import {BIN, ROOT, have, runCli, sha256, tmpDir} from '../helpers'
import {BLOCK, checkDamaged, chunksIn, damageBlock, makeSweepImage, storedMap, type StoredMap} from './block-damage'

describe('format 1.1: any one damaged 4 KiB block loses only the chunks stored in it', function () {
  this.timeout(600_000)
  let t: ReturnType<typeof tmpDir>
  let good: Buffer
  let expected: Buffer
  let map: StoredMap

  before(async () => {
    t = tmpDir()
    const made = await makeSweepImage(t.dir)
    expected = made.expected
    good = fs.readFileSync(made.file)
    map = await storedMap(made.file)
  })
  after(() => t?.cleanup())

  it('is a 1.1 image with copies of every critical structure, far enough from their originals', async () => {
    const img = await openImage(path.join(t.dir, 'sweep.vdimg'))
    try {
      assert.equal(img.version, '1.1')
      assert.equal(img.hasCopies, true)
      assert.deepEqual(img.warnings, [])
    } finally {
      await img.close()
    }
    const blocks = Math.ceil(good.length / BLOCK)
    assert.ok(blocks >= 40 && blocks <= 100, `${blocks} blocks`)
    // No aligned block holds a structure and its copy (FORMAT.md §12).
    const blockOf = (s: {offset: number; length: number}) => [Math.floor(s.offset / BLOCK), Math.floor((s.offset + s.length - 1) / BLOCK)]
    const byName = new Map(map.structures.map((s) => [s.what, s]))
    const pairs: Array<[string, string]> = [
      ['header', 'header copy'],
      ['section table', 'section table copy'],
      ['section 1', 'section 5'],
      ['section 2', 'section 6'],
      ['section 3', 'section 7'],
    ]
    for (const s of map.structures) if (/^index table \d+$/.test(s.what)) pairs.push([s.what, `${s.what} copy`])
    assert.ok(pairs.length >= 8)
    for (const [a, b] of pairs) {
      const [, aLast] = blockOf(byName.get(a)!)
      const [bFirst] = blockOf(byName.get(b)!)
      assert.ok(aLast < bFirst, `${a} and ${b} share a block`)
    }
  })

  it('sweep: every block of the file', async () => {
    const blocks = Math.ceil(good.length / BLOCK)
    let losing = 0
    for (let b = 0; b < blocks; b++) {
      const f = path.join(t.dir, 'damaged.vdimg')
      damageBlock(good, b, f)
      await checkDamaged(f, map, b, expected, t.dir)
      if (chunksIn(map, b).length) losing++
    }
    // Most blocks hold chunk data: the sweep really damaged chunks, not only structures.
    assert.ok(losing > blocks / 2, `${losing} of ${blocks} blocks held chunk data`)
  })

  it('the CLI reads around a damaged header, section table or chunk index, warning once', async () => {
    const hdr = path.join(t.dir, 'hdr.vdimg')
    damageBlock(good, 0, hdr)
    const info = await runCli(['info', hdr, '--json'])
    assert.equal(info.code, 0, info.stderr)
    const warnings = info.stderr.trim().split('\n')
    assert.equal(warnings.length, 1, info.stderr)
    assert.match(warnings[0], /^vdev: warning: .*hdr\.vdimg: .*\(at byte \d+; read from its copy at byte \d+\)$/)
    assert.equal(JSON.parse(info.stdout).version, '1.1')
    // Block 0 holds the header and the start of chunk data: those chunks are lost (exit 5), the rest exact.
    const ex = await runCli(['extract', hdr, '-'])
    const lost = chunksIn(map, 0)
    assert.ok(lost.length > 0)
    assert.equal(ex.code, 5, ex.stderr)
    const want = Buffer.from(expected)
    for (const c of lost) want.fill(0, c * map.chunkSize, Math.min(map.size, (c + 1) * map.chunkSize))
    assert.equal(sha256(ex.stdoutBuf), sha256(want))
    const v = await runCli(['verify', hdr])
    assert.equal(v.code, 5, v.stderr)
    assert.match(v.stdout, /damaged: .*read from its copy/)

    // The primary tail (chunk index, bad-area map, metadata, section table): every one read from its copy.
    const l1 = map.structures.find((s) => s.what === 'section 1')!
    const tail = path.join(t.dir, 'tail.vdimg')
    damageBlock(good, Math.floor(l1.offset / BLOCK), tail)
    const ex2 = await runCli(['extract', tail, '-'])
    const lost2 = chunksIn(map, Math.floor(l1.offset / BLOCK))
    assert.equal(ex2.code, lost2.length ? 5 : 0, ex2.stderr)
    const want2 = Buffer.from(expected)
    for (const c of lost2) want2.fill(0, c * map.chunkSize, Math.min(map.size, (c + 1) * map.chunkSize))
    assert.equal(sha256(ex2.stdoutBuf), sha256(want2))
    for (const what of ['section table', 'chunk index', 'bad-area map', 'metadata'])
      assert.match(ex2.stderr, new RegExp(`^vdev: warning: .*tail\\.vdimg: ${what} checksum mismatch \\(at byte \\d+; read from its copy at byte \\d+\\)$`, 'm'))
  })

  it('serving threads that read an index table from its copy say so in the server\'s log, as the main thread does', async function () {
    if (!have('nbdcopy')) this.skip()
    // One index table's bytes overwritten (nothing else: every chunk is still stored intact).
    const t0 = map.structures.find((x) => /^index table \d+$/.test(x.what))!
    const damaged = Buffer.from(good)
    for (let k = t0.offset; k < t0.offset + t0.length; k++) damaged[k] ^= 0x5a
    const file = path.join(t.dir, 'table.vdimg')
    fs.writeFileSync(file, damaged)
    const sock = path.join(t.dir, 'threads.sock')
    const child = spawn(process.execPath, [BIN, 'serve', file, '--threads', '2', '--bad-policy', 'zero', '--listen', `unix:${sock}`], {stdio: ['ignore', 'ignore', 'pipe']})
    let err = ''
    child.stderr!.on('data', (d) => (err += d))
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
    try {
      const end = Date.now() + 20_000
      while (!fs.existsSync(sock) && Date.now() < end) await new Promise((r) => setTimeout(r, 50))
      const out = path.join(t.dir, 'threads.raw')
      const r = spawnSync('nbdcopy', [`nbd+unix:///?socket=${sock}`, out], {encoding: 'utf8', timeout: 60_000})
      assert.equal(r.status, 0, r.stderr + err)
      assert.equal(sha256(fs.readFileSync(out)), sha256(expected), 'every chunk reads through the table copy')
    } finally {
      child.kill('SIGTERM')
      assert.equal(await exited, 0, err)
    }
    const g = t0.what.split(' ')[2]
    assert.match(err, new RegExp(`^vdev serve: warning: nbd: thread \\d: .*table\\.vdimg: .*index table ${g}\\b.*read from its copy at byte \\d+\\)$`, 'm'))
  })

  it('a 1.0 image has a single point of failure: its header block', async () => {
    const golden = fs.readFileSync(path.join(ROOT, 'test', 'golden', '1.0', 'mixed-4k.vdimg'))
    const f = path.join(t.dir, 'golden-damaged.vdimg')
    damageBlock(golden, 0, f)
    await assert.rejects(openImage(f), (err: unknown) => err instanceof VdevError && err.code === 'format')
  })
})

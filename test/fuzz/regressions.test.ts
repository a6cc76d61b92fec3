/**
 * Minimal reproducers of what `npm run fuzz` found (docs/fuzzing.md, "What it found"), each fixed where
 * it was: a mapfile's current_pass past 2^53 taken inexactly; an empty range taken to intersect the bad
 * area around it, which made an NBD read of zero bytes inside a bad area fail with EIO (and name an error
 * offset outside the request); a zero-length NBD WRITE on a writable export, whose empty payload the main
thread's reader failed to take; extract --mapfile-out writing an image's recorded ddrescue status line as
 * it was, into a mapfile neither ddrescue nor vdev reads.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {VdevError} from '../../src/core/errors'
import {BadAreaMap} from '../../src/format/badmap'
import {openInput} from '../../src/format/input'
import {formatMapfile, parseMapfile} from '../../src/format/mapfile'
import {openImage} from '../../src/format/reader'
import {createImage} from '../../src/format/writer'
import {extractImage} from '../../src/format/extract'
import {Overlay} from '../../src/layers/overlay'
import {RawImage} from '../../src/sources/raw'
import {startNbdServer} from '../../src/serve/nbd'
import * as P from '../../src/serve/nbd/protocol'
import {RawClient} from '../nbd/rawclient'
import {textish, tmpDir} from '../helpers'

describe('fuzz regressions', function () {
  this.timeout(30_000)

  it('mapfile: a current_pass past 2^53 is refused, not rounded (mapfile seed 1, iteration 4564)', () => {
    const map = (pass: string) => `# Mapfile. Created by GNU ddrescue version 1.27\n0x0 + ${pass}\n0x0 0x1000 +\n`
    assert.throws(
      () => parseMapfile(map('99999999999999999999'), 'm.map'),
      (err: unknown) => err instanceof VdevError && err.code === 'format' && /m\.map:2: bad current_pass/.test(err.message),
    )
    assert.throws(() => parseMapfile(map('9007199254740992'), 'm.map'), VdevError)
    assert.equal(parseMapfile(map('9007199254740991'), 'm.map').currentPass, 9007199254740991)
  })

  it('bad areas: an empty range intersects and touches nothing, even inside a bad area', () => {
    const m = BadAreaMap.fromRanges([{offset: 1000, length: 500, status: 'bad-sector'}])
    assert.deepEqual(m.intersect(1200, 0), [])
    assert.equal(m.touches(1200, 0), false)
    assert.equal(m.touches(1000, 0), false)
    assert.deepEqual(m.intersect(1200, 1), [{offset: 1200, length: 1, status: 'bad-sector'}])
    assert.equal(m.touches(1499, 1), true)
  })

  it('extract --mapfile-out: a damaged ddrescue status line in the metadata still gives a valid mapfile (image seed 12, iteration 400)', async () => {
    const t = tmpDir()
    try {
      const raw = path.join(t.dir, 'disk.raw')
      const size = 64 * 1024
      fs.writeFileSync(raw, textish(5, size))
      const bad = [{offset: 4096, length: 512, status: 'non-scraped' as const}]
      const cases: Array<Record<string, unknown>> = [
        {currentPos: 0, currentStatus: '+', currentPass: -3},
        {currentPos: -1, currentStatus: 'ab', currentPass: 1.5},
        {currentPos: 1e308, currentStatus: '\n0x0 + 1', currentPass: 2 ** 60},
        {currentPos: 1.5, currentStatus: ''},
      ]
      for (const [i, ddrescue] of cases.entries()) {
        const file = path.join(t.dir, `disk${i}.vdimg`)
        const input = openInput(raw)
        await createImage(input, file, {chunkSize: 4096, threads: 1, mapfile: parseMapfile(formatMapfile(bad, size), 'disk.map'), metadata: {ddrescue}})
        await input.close()
        const img = await openImage(file)
        const map = path.join(t.dir, `out${i}.map`)
        try {
          await extractImage(img, path.join(t.dir, `out${i}.img`), {threads: 1, mapfileOut: map})
        } finally {
          await img.close()
        }
        const m = parseMapfile(fs.readFileSync(map, 'utf8'), map)
        assert.deepEqual([...m.bad], bad, JSON.stringify(ddrescue))
        assert.equal(m.extent, size)
        assert.ok(Number.isSafeInteger(m.currentPos) && m.currentPos >= 0)
        assert.ok(m.currentPass === undefined || (Number.isSafeInteger(m.currentPass) && m.currentPass >= 1))
      }
      // A newline in the comment (the image's file name) does not start a line of its own.
      const text = formatMapfile([], 512, {comment: 'Extracted from a\n0x0 - 1\n'})
      assert.equal(parseMapfile(text, 'c.map').currentStatus, '+')
    } finally {
      t.cleanup()
    }
  })

  it('nbd: a READ of zero bytes inside a bad area succeeds (nbd seed 1, iteration 856)', async () => {
    const t = tmpDir()
    const raw = path.join(t.dir, 'disk.raw')
    const size = 256 * 1024
    fs.writeFileSync(raw, textish(3, size))
    const file = path.join(t.dir, 'disk.vdimg')
    const bad = [{offset: 64 * 1024, length: 4096, status: 'bad-sector' as const}]
    const input = openInput(raw)
    await createImage(input, file, {chunkSize: 64 * 1024, threads: 1, mapfile: parseMapfile(formatMapfile(bad, size), 'disk.map')})
    await input.close()
    const img = await openImage(file)
    const srv = await startNbdServer(new BlockServer(img), {listen: {kind: 'unix', path: path.join(t.dir, 'nbd.sock')}, exportName: 'disk.vdimg'})
    try {
      for (const structured of [false, true]) {
        const c = await RawClient.connect(path.join(t.dir, 'nbd.sock'))
        try {
          await c.go({structured})
          c.request(P.NBD_CMD_READ, 64 * 1024 + 512, 0, 1n)
          const r = await c.reply(new Map([[1n, 0]]))
          assert.equal(r.error, 0, `structured ${structured}: a zero-length read failed`)
          if (structured) assert.equal(r.type, P.NBD_REPLY_TYPE_NONE)
          // A one-byte read there still fails with EIO.
          c.request(P.NBD_CMD_READ, 64 * 1024 + 512, 1, 2n)
          assert.equal((await c.reply(new Map([[2n, 1]]))).error, P.NBD_EIO)
        } finally {
          c.destroy()
        }
      }
    } finally {
      await srv.close()
      await img.close()
      t.cleanup()
    }
  })

  it('nbd: a WRITE of zero bytes on a writable export is answered, on the main thread and on serving threads (nbd seed 1117112294, iteration 516)', async () => {
    const t = tmpDir()
    const raw = path.join(t.dir, 'disk.raw')
    fs.writeFileSync(raw, textish(4, 256 * 1024))
    try {
      for (const threads of [false, true]) {
        const ovl = await Overlay.open(RawImage.open(raw), path.join(t.dir, `disk-${threads}.vdovl`))
        const sock = path.join(t.dir, `rw-${threads}.sock`)
        const srv = await startNbdServer(new BlockServer(ovl), {
          listen: {kind: 'unix', path: sock},
          exportName: 'disk.raw',
          threads: threads ? {perConnection: 1, maxThreads: 1, pollMicroseconds: 0} : undefined,
        })
        try {
          const c = await RawClient.connect(sock)
          try {
            await c.go()
            // Nothing buffered after the header: the server waited for a payload of no bytes and failed.
            c.request(P.NBD_CMD_WRITE, 4096, 0, 1n, P.NBD_CMD_FLAG_FUA)
            assert.equal((await c.reply()).error, 0, `threads ${threads}`)
            c.request(P.NBD_CMD_WRITE, 8192, 512, 2n)
            c.send(Buffer.alloc(512, 9))
            assert.equal((await c.reply()).error, 0)
          } finally {
            c.destroy()
          }
        } finally {
          await srv.close()
          await ovl.close()
        }
      }
    } finally {
      t.cleanup()
    }
  })
})

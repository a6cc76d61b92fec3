/**
 * Format 1.1's measure through a real attached device (issue 12 §2, FORMAT.md §12): a few aligned 4 KiB
 * blocks of a 1.1 image overwritten in turn — the header, the primary tail (chunk index, bad-area map,
 * metadata, section table), a primary index table, a block of the copies, the trailer — and the image
 * attached with `vdev attach` (FUSE + loop, the real kernel). Every chunk not stored in the damaged block
 * reads exactly from /dev/loopN; each lost chunk fails with EIO, and nothing else does.
 */
import * as assert from 'node:assert/strict'
import {BLOCK, chunksIn, damageBlock, makeSweepImage, storedMap, type StoredMap} from '../format/block-damage'
import {IS_ROOT, Sandbox, attach, readDirect, run} from './fixtures'
import * as fs from 'node:fs'

describe('vdev attach of a 1.1 image with one damaged 4 KiB block (FUSE + loop)', function () {
  this.timeout(300_000)
  let sb: Sandbox | undefined
  let good: Buffer
  let expected: Buffer
  let map: StoredMap

  before(async function () {
    if (!IS_ROOT) this.skip() // mount(2) and loop ioctls need root
    sb = new Sandbox('vdev-damage-')
    const made = await makeSweepImage(sb.dir)
    good = fs.readFileSync(made.file)
    expected = made.expected
    map = await storedMap(made.file)
  })

  after(async function () {
    if (!sb) return
    const left = await sb.teardown()
    assert.deepEqual(left, [], 'left behind')
  })

  const blockOf = (what: string) => Math.floor(map.structures.find((s) => s.what === what)!.offset / BLOCK)
  const cases = (): Array<[string, number]> => [
    ['the header (and the first chunks)', 0],
    ['the chunk index, bad-area map, metadata and section table', blockOf('section 1')],
    ['index table 0', blockOf('index table 0')],
    ['the copy of index table 0', blockOf('index table 0 copy')],
    ['the trailer and the section table copy', Math.floor((map.fileSize - 1) / BLOCK)],
  ]

  const names = ['the header', 'the primary tail', 'a primary index table', 'an index table copy', 'the trailer']
  for (let k = 0; k < 5; k++)
    it(`${names[k]} damaged: only the chunks stored in that block fail`, async () => {
      const [what, block] = cases()[k]
      const file = sb!.p(`damaged-${block}.vdimg`)
      damageBlock(good, block, file)
      const lost = chunksIn(map, block)
      // Bad areas read as zeros here, so that an EIO can only be a lost chunk.
      const dev = await attach(sb!, file, ['--bad-policy', 'zero'])
      try {
        // The whole device in 4 KiB reads (one chunk each), going on past errors: a failed read is zeros.
        // (Not status=none: with noerror, it silences the read errors too.)
        const all = await run('dd', [`if=${dev.device}`, 'bs=4096', 'iflag=direct', 'conv=noerror,sync'])
        const errors = all.stderr.split('\n').filter((l) => /Input\/output error/.test(l)).length
        assert.equal(errors, lost.length, `${what} (block ${block}): ${errors} reads failed, ${lost.length} chunks lost: ${all.stderr}`)
        const want = Buffer.from(expected)
        for (const c of lost) want.fill(0, c * map.chunkSize, Math.min(map.size, (c + 1) * map.chunkSize))
        // The device ends at the last whole sector (its last 488 bytes lie in a partial sector it does not show).
        const shown = Math.floor(map.size / 512) * 512
        assert.ok(all.stdout.subarray(0, shown).equals(want.subarray(0, shown)), `${what} (block ${block}): the device's bytes differ`)
        for (const c of lost) {
          const r = await readDirect(dev.device, c * map.chunkSize, map.chunkSize)
          assert.notEqual(r.code, 0, `chunk ${c} read`)
          assert.match(r.stderr, /Input\/output error/)
        }
      } finally {
        const d = await sb!.vdev(['detach', dev.device])
        assert.equal(d.code, 0, d.stderr)
      }
    })
})

/**
 * VDIMG 1.0 images stay readable forever (issue 12): the golden files in test/golden/1.0/ were written
 * once by the 1.0 writer (test/golden/make-1.0.ts) and are never regenerated. Today's reader, and every
 * later one, must read them exactly: the decoded bytes against a SHA-256 computed from the source data when
 * they were made, `vdev info --json` against what the 1.0 vdev reported, `verify` clean.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {openImage} from '../../src/format/reader'
import {describeImage} from '../../src/format/describe'
import {verifyImage} from '../../src/format/verify'
import {ROOT, runCli, sha256} from '../helpers'

const DIR = path.join(ROOT, 'test', 'golden', '1.0')

interface Golden {
  fileSha256: string
  decodedSha256: string
  info: Record<string, unknown> & {size: number; chunkSize: number; version: string; sha256: string | null}
}

const names = fs
  .readdirSync(DIR)
  .filter((f) => f.endsWith('.vdimg'))
  .map((f) => f.slice(0, -'.vdimg'.length))
  .sort()

describe('golden VDIMG 1.0 files read exactly', function () {
  this.timeout(120_000)

  it('are all there', () => {
    assert.deepEqual(names, ['cd-2048-nohash', 'empty', 'mixed-4k', 'stdin-128k'])
  })

  for (const name of names) {
    const file = path.join(DIR, `${name}.vdimg`)
    const golden = () => JSON.parse(fs.readFileSync(path.join(DIR, `${name}.json`), 'utf8')) as Golden

    describe(name, () => {
      it('is the file the 1.0 writer wrote (unchanged)', () => {
        assert.equal(sha256(fs.readFileSync(file)), golden().fileSha256)
      })

      it('reads exactly through the reader (whole-image and serving paths), verify is clean', async () => {
        const g = golden()
        const img = await openImage(file)
        try {
          assert.equal(img.version, '1.0')
          assert.deepEqual(img.warnings, [])
          const {path: _p, ...info} = await describeImage(img, {maxRanges: Infinity})
          assert.deepEqual(JSON.parse(JSON.stringify(info)), g.info)
          const h = crypto.createHash('sha256')
          for (let at = 0; at < img.size; at += 1 << 20) h.update((await img.read(at, Math.min(1 << 20, img.size - at))).data)
          assert.equal(h.digest('hex'), g.decodedSha256)
          const v = await verifyImage(img, {threads: 1})
          assert.equal(v.ok, true)
          assert.deepEqual(v.damaged, [])
          if (g.info.sha256) assert.equal(v.sha256.computed, g.decodedSha256)
        } finally {
          await img.close()
        }
        // The serving path: synchronous, odd-sized reads that straddle chunks and groups.
        const s = await openImage(file, {sync: true})
        try {
          const h = crypto.createHash('sha256')
          const step = 12345
          for (let at = 0; at < s.size; at += step) h.update(s.readSync(at, Math.min(step, s.size - at)).data)
          assert.equal(h.digest('hex'), g.decodedSha256)
        } finally {
          await s.close()
        }
      })

      it('reads exactly through the CLI: info --json, extract, verify', async () => {
        const g = golden()
        const info = await runCli(['info', file, '--json', '--all'])
        assert.equal(info.code, 0, info.stderr)
        const {path: _p, ...rest} = JSON.parse(info.stdout) as Record<string, unknown>
        assert.deepEqual(rest, g.info)
        const ex = await runCli(['extract', file, '-'])
        assert.equal(ex.code, 0, ex.stderr)
        assert.equal(ex.stdoutBuf.length, g.info.size)
        assert.equal(sha256(ex.stdoutBuf), g.decodedSha256)
        const v = await runCli(['verify', file])
        assert.equal(v.code, 0, v.stderr)
      })
    })
  }
})

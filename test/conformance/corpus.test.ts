/**
 * The conformance corpus (conformance/, docs/FORMAT.md §11): the generator reproduces the committed files
 * byte for byte, and every case gives its expected result through vdev's reader (asynchronous and
 * synchronous reads, verify) and through the CLI (`info --json`, `verify --json`, `extract`).
 */
import {strict as assert} from 'node:assert'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {generate, type Expected} from '../../conformance/generate'
import {VdevError} from '../../src/core/errors'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {verifyImage} from '../../src/format/verify'
import {ROOT, runCli, tmpDir} from '../helpers'

const CASES_DIR = path.join(ROOT, 'conformance', 'cases')
const index = JSON.parse(fs.readFileSync(path.join(CASES_DIR, 'index.json'), 'utf8')) as Array<{name: string; result: string}>
const load = (name: string) => JSON.parse(fs.readFileSync(path.join(CASES_DIR, `${name}.json`), 'utf8')) as Expected
const sha256 = (b: Uint8Array) => crypto.createHash('sha256').update(b).digest('hex')

type Range = {offset: number; length: number}
function merge(ranges: Range[]): Range[] {
  const out: Range[] = []
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1]
    if (last && last.offset + last.length === r.offset) last.length += r.length
    else out.push({offset: r.offset, length: r.length})
  }
  return out
}

/** Read the image chunk by chunk (a damaged chunk fails alone): the bytes (damaged ones as zeros) and the damaged ranges. */
async function readAll(img: VdimgImage, sync: boolean): Promise<{sha256: string; damaged: Range[]}> {
  const out = Buffer.alloc(img.size)
  const damaged: Range[] = []
  for (let i = 0; i < img.chunkCount; i++) {
    const off = i * img.chunkSize
    const len = img.chunkLength(i)
    try {
      const r = sync ? img.readSync(off, len) : await img.read(off, len)
      r.data.copy(out, off)
    } catch (err) {
      if (!(err instanceof VdevError) || err.code !== 'format') throw err
      damaged.push({offset: off, length: len})
    }
  }
  return {sha256: sha256(out), damaged: merge(damaged)}
}

function checkOpened(img: VdimgImage, e: Expected): void {
  assert.equal(img.size, e.size)
  assert.equal(img.sectorSize, e.sectorSize)
  assert.equal(img.chunkSize, e.chunkSize)
  assert.equal(img.version, e.version)
  assert.equal(img.sha256 ?? null, e.mediaSha256)
  assert.deepEqual([...img.badAreas], e.badAreas)
  assert.deepEqual(img.metadata, e.metadata)
}

/** The one stderr line of a refused image: what, and at which byte. */
function checkRefusal(stderr: string, file: string, e: Expected): void {
  const lines = stderr.trim().split('\n')
  assert.equal(lines.length, 1, stderr)
  assert.ok(lines[0].startsWith(`vdev: ${file}: `), lines[0])
  assert.ok(lines[0].includes(e.reason!), `${lines[0]} does not say "${e.reason}"`)
  assert.ok(lines[0].includes(`(at byte ${e.offset})`), `${lines[0]} does not say (at byte ${e.offset})`)
}

describe('conformance corpus', function () {
  this.timeout(600_000)

  it('the generator reproduces the committed corpus byte for byte', () => {
    const t = tmpDir('vdev-conformance-')
    try {
      const names = generate(t.dir).sort()
      const committed = fs.readdirSync(CASES_DIR).sort()
      assert.deepEqual(names, committed, 'the same files')
      for (const n of names) assert.ok(fs.readFileSync(path.join(t.dir, n)).equals(fs.readFileSync(path.join(CASES_DIR, n))), `${n} differs: run npm run conformance`)
    } finally {
      t.cleanup()
    }
  })

  it('the corpus holds valid, damaged and invalid cases, and stays small', () => {
    const kinds = new Set(index.map((c) => c.result))
    assert.deepEqual([...kinds].sort(), ['damaged', 'invalid', 'valid'])
    const bytes = fs.readdirSync(CASES_DIR).reduce((n, f) => n + fs.statSync(path.join(CASES_DIR, f)).size, 0)
    assert.ok(bytes < 640 << 10, `${bytes} bytes`)
  })

  describe('through the reader', () => {
    for (const {name} of index)
      it(name, async () => {
        const e = load(name)
        const file = path.join(CASES_DIR, `${name}.vdimg`)
        assert.equal(sha256(fs.readFileSync(file)), e.file.sha256)
        if (e.result === 'invalid') {
          await assert.rejects(openImage(file), (err: unknown) => {
            assert.ok(err instanceof VdevError, String(err))
            assert.equal(err.code, e.error, err.message)
            assert.ok(err.message.includes(e.reason!), `${err.message} does not say "${e.reason}"`)
            assert.ok(err.message.endsWith(`(at byte ${e.offset})`), `${err.message} does not end with (at byte ${e.offset})`)
            return true
          })
          return
        }
        for (const sync of [false, true]) {
          const img = await openImage(file, {checkDataCrc: true, sync})
          try {
            checkOpened(img, e)
            const r = await readAll(img, sync)
            assert.deepEqual(r.damaged, e.damaged, `damaged ranges (sync ${sync})`)
            assert.equal(r.sha256, e.sha256, `bytes read (sync ${sync})`)
            // After every byte was read: a 1.1 index table read from its copy is found when first loaded.
            assert.equal(img.warnings.length, e.warnings, img.warnings.join('; '))
          } finally {
            await img.close()
          }
        }
        const img = await openImage(file)
        try {
          const v = await verifyImage(img, {threads: 1})
          const chunks = v.damaged.filter((d) => d.chunk >= 0)
          assert.deepEqual(merge(chunks.map((d) => ({offset: d.offset, length: d.length}))), e.damaged)
          assert.equal(v.damaged.length - chunks.length, e.warnings! + (e.repair?.recoveryDamaged ? 1 : 0))
          assert.equal(v.ok, e.result === 'valid')
          if (e.mediaSha256 && !e.damaged!.length) assert.equal(v.sha256.match, true)
        } finally {
          await img.close()
        }
      })
  })

  // Version 1.2 (§13): whether the damage can be repaired, and a repair that gives back the file as written.
  const repairable = index.filter(({name}) => load(name).repair)
  describe(`recovery data (verify --json, repair --out): ${repairable.length} cases`, () => {
    for (const {name} of repairable)
      it(name, async () => {
        const e = load(name)
        const file = path.join(CASES_DIR, `${name}.vdimg`)
        const t = tmpDir('vdev-conformance-repair-')
        try {
          const v = await runCli(['verify', file, '--json'])
          assert.equal(v.code, 5, v.stderr)
          assert.equal(JSON.parse(v.stdout).repair.repairable, e.repair!.repairable, v.stdout)
          const out = path.join(t.dir, 'fixed.vdimg')
          const r = await runCli(['repair', file, '--out', out])
          if (e.repair!.repairable) {
            assert.equal(r.code, 0, r.stderr)
            assert.equal(sha256(fs.readFileSync(out)), e.repair!.fileSha256, 'the repaired file is the file as written')
          } else {
            assert.equal(r.code, 5, r.stderr)
            assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
            assert.match(r.stderr, new RegExp(`${e.damaged!.reduce((n, d) => n + d.length / e.chunkSize!, 0)} chunks stay lost`))
          }
          assert.equal(sha256(fs.readFileSync(file)), e.file.sha256, 'the case file is unchanged')
        } finally {
          t.cleanup()
        }
      })
  })

  // Three processes per case: in `npm test` a fixed sample (every fifth case, and the first of each result
  // kind) keeps the CI budget; VDEV_CONFORMANCE_CLI=all runs every case through the CLI too.
  const all = process.env.VDEV_CONFORMANCE_CLI === 'all'
  const firstOfKind = new Set(['valid', 'damaged', 'invalid'].map((k) => index.find((c) => c.result === k)?.name))
  const sample = index.filter((c, i) => all || i % 5 === 0 || firstOfKind.has(c.name))
  describe(`through the CLI (info --json --all, verify --json, extract): ${sample.length} of ${index.length} cases`, () => {
    for (const {name} of sample)
      it(name, async () => {
        const e = load(name)
        const file = path.join(CASES_DIR, `${name}.vdimg`)
        const t = tmpDir('vdev-conformance-cli-')
        try {
          const out = path.join(t.dir, 'out.raw')
          const [info, verify, extract] = await Promise.all([
            runCli(['info', file, '--json', '--all']),
            runCli(['verify', file, '--json']),
            runCli(['extract', file, out, '--json']),
          ])
          assert.equal(info.code, e.vdevExit.info, `info: ${info.stderr}`)
          assert.equal(verify.code, e.vdevExit.verify, `verify: ${verify.stderr}`)
          assert.equal(extract.code, e.vdevExit.extract, `extract: ${extract.stderr}`)
          if (e.result === 'invalid') {
            for (const r of [info, verify, extract]) checkRefusal(r.stderr, file, e)
            assert.equal(fs.readdirSync(t.dir).length, 0, 'extract leaves nothing behind')
            return
          }
          const i = JSON.parse(info.stdout)
          assert.equal(i.size, e.size)
          assert.equal(i.sectorSize, e.sectorSize)
          assert.equal(i.chunkSize, e.chunkSize)
          assert.equal(i.version, e.version)
          assert.equal(i.sha256 ?? null, e.mediaSha256)
          assert.deepEqual(i.metadata, e.metadata)
          assert.deepEqual(i.badAreas, e.badAreas)
          const v = JSON.parse(verify.stdout)
          const chunks = (v.damaged as Array<{chunk: number; offset: number; length: number}>).filter((d) => d.chunk >= 0)
          assert.deepEqual(merge(chunks.map((d) => ({offset: d.offset, length: d.length}))), e.damaged)
          assert.equal(v.damaged.length - chunks.length, e.warnings! + (e.repair?.recoveryDamaged ? 1 : 0))
          // extract reads every chunk, so it also warns about an index table it had to read from its copy
          // (info reads none; the rest it warns about at open, as info does).
          const warnings = extract.stderr.split('\n').filter((l) => l.startsWith('vdev: warning: '))
          assert.equal(warnings.length, e.warnings, extract.stderr)
          assert.ok(info.stderr.split('\n').filter((l) => l.startsWith('vdev: warning: ')).length <= (e.warnings ?? 0), info.stderr)
          assert.equal(sha256(fs.readFileSync(out)), e.sha256, 'extracted bytes')
        } finally {
          t.cleanup()
        }
      })
  })
})

/**
 * npm run bench:damage — format 1.1's measure, the long way (issue 12 §2, FORMAT.md §12):
 *  1. the sweep of test/format/block-damage.test.ts over a larger image (one raw chunk in 11: ~100+
 *     blocks), every block, with extract: every chunk not stored in the damaged block reads exactly, verify
 *     names exactly the lost ones;
 *  2. what the copies cost: bytes of sections 4–7, the section table copy, the header copy and the padding
 *     before them, as a share of the file, for the bundled sample (built here as scripts/sample.js builds
 *     it) and the 1.5 GiB bench corpus (when .cache/bench/corpus.ext4 exists), and any images named as
 *     arguments. Everything written goes to a temporary directory.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {CACHE} from './corpus'
import {table} from './lib'
import {openImage} from '../src/format/reader'
import {createImage} from '../src/format/writer'
import {openInput} from '../src/format/input'
import {HEADER_SIZE, SECTION_ENTRY_SIZE, SectionType} from '../src/format/layout'
import {tmpDir} from '../test/helpers'
import {BLOCK, checkDamaged, chunksIn, damageBlock, makeSweepImage, storedMap} from '../test/format/block-damage'

const ROOT = path.resolve(__dirname, '..', '..')

/** What the copies cost in a 1.1 image: bytes and share of the file. */
async function overhead(file: string): Promise<{size: number; fileSize: number; copies: number; share: number}> {
  const img = await openImage(file)
  try {
    const h = img.header
    if (!h.copyTableOffset) throw new Error(`${file}: not a 1.1 image with copies`)
    const bytes = (t: SectionType) => img.sections.find((s) => s.type === t)?.length ?? 0
    const tableEnd = h.sectionTableOffset + h.sectionCount * SECTION_ENTRY_SIZE
    const first = img.sections.find((s) => s.type === SectionType.IndexTablesCopy)!.offset
    const copies =
      first - tableEnd + // padding to the 4 KiB boundary
      bytes(SectionType.IndexTablesCopy) +
      bytes(SectionType.ChunkIndexCopy) +
      bytes(SectionType.BadAreaMapCopy) +
      bytes(SectionType.MetadataCopy) +
      h.sectionCount * SECTION_ENTRY_SIZE +
      HEADER_SIZE
    return {size: img.size, fileSize: img.fileSize, copies, share: copies / img.fileSize}
  } finally {
    await img.close()
  }
}

/** The bundled sample, as scripts/sample.js builds it, but into `dir`. */
function buildSample(dir: string): string {
  const src = fs.readFileSync(path.join(ROOT, 'scripts', 'sample.js'), 'utf8')
  const script = path.join(dir, 'sample.js')
  fs.writeFileSync(
    script,
    src
      .replace("const ROOT = path.resolve(__dirname, '..')", `const ROOT = ${JSON.stringify(ROOT)}`)
      .replace("const OUT = path.join(ROOT, '.cache', 'sample')", `const OUT = ${JSON.stringify(dir)}`),
  )
  const r = spawnSync(process.execPath, [script], {encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`sample: ${r.stderr}`)
  return path.join(dir, 'sample.vdimg')
}

async function main(): Promise<void> {
  const t = tmpDir('vdev-bench-damage-')
  try {
    const made = await makeSweepImage(t.dir, 11)
    const good = fs.readFileSync(made.file)
    const map = await storedMap(made.file)
    const blocks = Math.ceil(good.length / BLOCK)
    const started = Date.now()
    let lostTotal = 0
    for (let b = 0; b < blocks; b++) {
      const f = path.join(t.dir, 'damaged.vdimg')
      damageBlock(good, b, f)
      await checkDamaged(f, map, b, made.expected, t.dir)
      lostTotal += chunksIn(map, b).length
    }
    console.log(`sweep: ${blocks} blocks of ${made.file.split('/').pop()} (${good.length} bytes, ${map.chunkCount} chunks) each overwritten in turn:`)
    console.log(`  every chunk not stored in the damaged block read exactly (reader, serving path, extract); verify named exactly the ${lostTotal} lost (${(Date.now() - started) / 1000} s)`)

    const images: Array<[string, string]> = []
    images.push(['bundled sample (16 MiB ext4, 2 bad sectors)', buildSample(t.dir)])
    const corpus = path.join(CACHE, 'corpus.ext4')
    if (fs.existsSync(corpus)) {
      const out = path.join(t.dir, 'corpus.vdimg')
      const input = openInput(corpus)
      await createImage(input, out, {})
      await input.close()
      images.push([`bench corpus (${(fs.statSync(corpus).size / 2 ** 30).toFixed(1)} GiB ext4), defaults`, out])
    }
    for (const a of process.argv.slice(2)) images.push([a, a])
    const rows = []
    for (const [name, file] of images) {
      const o = await overhead(file)
      rows.push([name, o.size, o.fileSize, o.copies, `${(o.share * 100).toFixed(3)}%`])
    }
    console.log('\ncopies (format 1.1) as a share of the file:')
    console.log(table(['image', 'logical bytes', 'file bytes', 'copy bytes', 'share'], rows))
  } finally {
    t.cleanup()
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})

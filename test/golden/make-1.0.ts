/**
 * How the golden VDIMG 1.0 files in test/golden/1.0/ were made — kept for the record, NOT to be run
 * again: they were written once by the 1.0 writer (vdev before format 1.1) and must never change, so that
 * every later reader is tested against bytes an older vdev really wrote. It refuses to overwrite them.
 *
 * Each image comes with `NAME.json`: the file's own SHA-256 (the bytes must not change), what `vdev info
 * --json` reports, and the SHA-256 of the decoded image (bad areas as zeros) computed here from the source
 * bytes, independently of any reader.
 *
 * Usage (once, from a build of the 1.0 writer): node dist/test/golden/make-1.0.js
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {BIN, ROOT, prng, sha256, textish, tmpDir} from '../helpers'

const OUT = path.join(ROOT, 'test', 'golden', '1.0')

/** A chunk that compresses to a few dozen bytes but is not all zero. */
function pattern(n: number, len: number): Buffer {
  const b = Buffer.alloc(len)
  for (let i = 0; i < len; i += 16) b.write(`chunk ${String(n).padStart(6)}\n`.slice(0, Math.min(16, len - i)), i)
  return b
}

interface Spec {
  name: string
  data: Buffer
  map?: string
  args: string[]
  stdin?: boolean
}

function zeroBad(data: Buffer, map: string | undefined): Buffer {
  const out = Buffer.from(data)
  if (!map) return out
  const lines = map.split('\n').filter((l) => l && !l.startsWith('#'))
  const blocks = lines.slice(1).map((l) => l.trim().split(/\s+/))
  let end = 0
  for (const [pos, size, st] of blocks) {
    const p = Number(pos)
    const s = Number(size)
    end = Math.max(end, p + s)
    if (st !== '+') out.fill(0, p, Math.min(out.length, p + s))
  }
  if (end < out.length) out.fill(0, end)
  return out
}

function specs(): Spec[] {
  const cs = 4096
  // mixed-4k: 4 KiB chunks, 256-entry tables → 1 MiB groups; 5 groups, the last one partial.
  //   group 0: pattern (zstd), random (raw), text and zero chunks, bad areas inside and across chunks;
  //   group 1: all zero (no table); group 2: all non-tried (no table, fill unread); group 3: mixed;
  //   group 4: one partial chunk of 1234 bytes.
  const g = 256 * cs
  const size = 4 * g + 1234
  const mixed = Buffer.alloc(size)
  for (let c = 0; c < 256; c++) {
    if (c % 7 === 3) continue // zero chunks among the others
    if (c === 9 || c === 200) prng(c, cs).copy(mixed, c * cs) // stored raw
    else if (c === 17) textish(17, cs).copy(mixed, c * cs)
    else pattern(c, cs).copy(mixed, c * cs)
  }
  for (let c = 3 * 256; c < 3 * 256 + 40; c++) pattern(c, cs).copy(mixed, c * cs)
  prng(99, cs).copy(mixed, (3 * 256 + 41) * cs)
  pattern(1024, 1234).copy(mixed, 4 * g)
  const mixedMap = [
    '# Mapfile. Created by GNU ddrescue version 1.27',
    '# Command line: ddrescue -d /dev/sdx golden.img golden.map',
    '# Start time:   2025-01-02 03:04:05',
    `0x${(5 * cs + 100).toString(16)}     +     1`,
    `0x00000000  0x${(5 * cs + 100).toString(16)}  +`,
    `0x${(5 * cs + 100).toString(16)}  0x00000200  -`, // bad sector at an unaligned offset inside chunk 5
    `0x${(5 * cs + 612).toString(16)}  0x${(10 * cs + 3000 - (5 * cs + 612)).toString(16)}  +`,
    `0x${(10 * cs + 3000).toString(16)}  0x00000800  /`, // non-scraped across the chunk 10/11 boundary
    `0x${(10 * cs + 5048).toString(16)}  0x${(20 * cs - (10 * cs + 5048)).toString(16)}  +`,
    `0x${(20 * cs).toString(16)}  0x${cs.toString(16)}  *`, // chunk 20 wholly non-trimmed: unread
    `0x${(21 * cs).toString(16)}  0x${(2 * g - 21 * cs).toString(16)}  +`,
    `0x${(2 * g).toString(16)}  0x${g.toString(16)}  ?`, // group 2 wholly non-tried
    `0x${(3 * g).toString(16)}  0x${(size - 3 * g).toString(16)}  +`,
    '',
  ].join('\n')

  // cd-2048: a 2048-byte-sector medium, 8 KiB chunks, no media hash; the mapfile stops early, so the
  // rest of the medium is non-tried.
  const cs2 = 8192
  const cdSize = 300 * cs2
  const cd = Buffer.alloc(cdSize)
  for (let c = 0; c < 300; c++) if (c % 5 !== 0) pattern(c, cs2).copy(cd, c * cs2)
  const cdMap = ['# Mapfile. Created by GNU ddrescue version 1.23', `0x${(200 * cs2).toString(16)}  ?  1`, `0x0  0x${(260 * cs2).toString(16)}  +`, ''].join('\n')

  // stdin-128k: the defaults (128 KiB chunks, 4096-entry tables), read from a pipe (size not known ahead).
  const pipe = Buffer.alloc(8 * 131072 + 777)
  for (let c = 0; c < 9; c++) if (c !== 4) pattern(c, c === 8 ? 777 : 131072).copy(pipe, c * 131072)

  return [
    {name: 'mixed-4k', data: mixed, map: mixedMap, args: ['--chunk-size', '4K', '--meta', 'model=GOLDEN DISK 1.0', '--meta', 'serial=G-0001', '--meta', 'notes=golden 1.0 image: never regenerate']},
    {name: 'cd-2048-nohash', data: cd, map: cdMap, args: ['--chunk-size', '8K', '--sector-size', '2048', '--no-hash', '--meta', 'model=GOLDEN CD']},
    {name: 'stdin-128k', data: pipe, args: ['--threads', '1'], stdin: true},
    {name: 'empty', data: Buffer.alloc(0), args: []},
  ]
}

function main(): void {
  fs.mkdirSync(OUT, {recursive: true})
  const t = tmpDir()
  try {
    for (const s of specs()) {
      const img = path.join(OUT, `${s.name}.vdimg`)
      if (fs.existsSync(img)) throw new Error(`${img} exists: golden files are never regenerated`)
      const raw = path.join(t.dir, `${s.name}.raw`)
      fs.writeFileSync(raw, s.data)
      const args = ['create', s.stdin ? '-' : raw, img, ...s.args]
      if (s.map) {
        const map = path.join(t.dir, `${s.name}.map`)
        fs.writeFileSync(map, s.map)
        args.push('--mapfile', map)
      }
      const c = spawnSync(process.execPath, [BIN, ...args], {input: s.stdin ? s.data : undefined, encoding: 'utf8'})
      if (c.status !== 0) throw new Error(`create ${s.name}: ${c.stderr}`)
      const info = spawnSync(process.execPath, [BIN, 'info', img, '--json', '--all'], {encoding: 'utf8'})
      if (info.status !== 0) throw new Error(`info ${s.name}: ${info.stderr}`)
      const parsed = JSON.parse(info.stdout) as Record<string, unknown>
      delete parsed.path
      const expected = {
        comment: 'Written once by the VDIMG 1.0 writer; see make-1.0.ts. Never regenerate.',
        fileSha256: sha256(fs.readFileSync(img)),
        decodedSha256: sha256(zeroBad(s.data, s.map)),
        info: parsed,
      }
      fs.writeFileSync(path.join(OUT, `${s.name}.json`), JSON.stringify(expected, null, 2) + '\n')
      console.log(`${s.name}: ${fs.statSync(img).size} bytes`)
    }
  } finally {
    t.cleanup()
  }
}

if (require.main === module) main()

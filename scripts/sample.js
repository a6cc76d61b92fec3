#!/usr/bin/env node
// Builds the bundled sample: an ext4 file system from samples/files/, a ddrescue mapfile that marks two
// sectors inside docs/chapter-2.txt unreadable, and the VDIMG image made from both by `vdev create`.
// Output: .cache/sample/{sample.raw, sample.map, sample.vdimg}. Usage: node scripts/sample.js
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const {spawnSync} = require('node:child_process')

const ROOT = path.resolve(__dirname, '..')
const OUT = path.join(ROOT, '.cache', 'sample')
const SIZE = 16 * 1024 * 1024

function run(argv, opts = {}) {
  const r = spawnSync(argv[0], argv.slice(1), {encoding: 'utf8', ...opts})
  if (r.error) throw new Error(`${argv[0]}: ${r.error.code === 'ENOENT' ? 'not installed' : r.error.message}`)
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${(r.stderr || '').trim()}`)
  return r.stdout
}

const hex = (n) => '0x' + n.toString(16).toUpperCase().padStart(8, '0')

function buildSample() {
  fs.mkdirSync(OUT, {recursive: true})
  const raw = path.join(OUT, 'sample.raw')
  const map = path.join(OUT, 'sample.map')
  const img = path.join(OUT, 'sample.vdimg')
  fs.rmSync(raw, {force: true})
  run(['truncate', '-s', String(SIZE), raw])
  // Fixed UUID and time so the sample is the same everywhere.
  run(['mkfs.ext4', '-q', '-F', '-b', '4096', '-L', 'vdev-sample', '-U', '7d2b5a4e-3c1f-4a8e-9b6d-0e5f1a2b3c4d', '-d', path.join(ROOT, 'samples', 'files'), raw], {
    env: {...process.env, E2FSPROGS_FAKE_TIME: '1700000000'},
  })
  const blocks = run(['debugfs', '-R', 'blocks /docs/chapter-2.txt', raw], {stdio: ['ignore', 'pipe', 'ignore']})
    .trim()
    .split(/\s+/)
    .map(Number)
  if (blocks.length < 10) throw new Error('sample: chapter-2.txt has too few blocks')
  // Two unreadable sectors: the second sector of the 3rd block and the first of the 15th.
  const bad = [blocks[2] * 4096 + 512, blocks[14] * 4096].sort((a, b) => a - b)
  const lines = ['# Mapfile. Created by vdev scripts/sample.js (two unreadable sectors in docs/chapter-2.txt)', '# current_pos  current_status  current_pass', `${hex(bad[1])}     +               1`, '#      pos        size  status']
  let at = 0
  for (const b of bad) {
    lines.push(`${hex(at)}  ${hex(b - at)}  +`, `${hex(b)}  ${hex(512)}  -`)
    at = b + 512
  }
  lines.push(`${hex(at)}  ${hex(SIZE - at)}  +`)
  fs.writeFileSync(map, lines.join('\n') + '\n')
  run([process.execPath, path.join(ROOT, 'bin', 'run.js'), 'create', '--force', '--mapfile', map, raw, img, '--meta', 'model=vdev sample disk', '--meta', 'notes=built by npm start from samples/files'])
  return {raw, map, img, badSectors: bad}
}

module.exports = {buildSample, OUT}
if (require.main === module) {
  try {
    const s = buildSample()
    console.log(s.img)
  } catch (err) {
    console.error(`sample: ${err.message}`)
    process.exit(1)
  }
}

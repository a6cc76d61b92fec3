/**
 * The benchmark corpus: an ext4 file system of 1.5 GiB filled from /usr/share and /usr/bin with
 * `mkfs.ext4 -d` (realistic mixed content: text, binaries, compressed files, free space), cached in
 * .cache/bench/corpus.ext4 and rebuilt when missing.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'

export const CACHE = path.resolve(__dirname, '..', '..', '.cache', 'bench')
export const CORPUS_SIZE = 1536 * 1024 * 1024

function run(argv: string[]): void {
  const r = spawnSync(argv[0], argv.slice(1), {stdio: ['ignore', 'ignore', 'inherit']})
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed with ${r.status}`)
}

export async function ensureCorpus(): Promise<{raw: string; dir: string}> {
  fs.mkdirSync(CACHE, {recursive: true})
  const raw = path.join(CACHE, 'corpus.ext4')
  if (fs.existsSync(raw) && fs.statSync(raw).size === CORPUS_SIZE) return {raw, dir: CACHE}
  const stage = path.join(CACHE, 'stage')
  fs.rmSync(stage, {recursive: true, force: true})
  fs.mkdirSync(stage)
  process.stderr.write('building the benchmark corpus (ext4 from /usr/share and /usr/bin)…\n')
  run(['cp', '-a', '/usr/share', path.join(stage, 'share')])
  run(['cp', '-a', '/usr/bin', path.join(stage, 'bin')])
  const tmp = raw + '.tmp'
  fs.rmSync(tmp, {force: true})
  run(['truncate', '-s', String(CORPUS_SIZE), tmp])
  run(['mkfs.ext4', '-q', '-F', '-L', 'vdevbench', '-d', stage, tmp])
  fs.renameSync(tmp, raw)
  fs.rmSync(stage, {recursive: true, force: true})
  return {raw, dir: CACHE}
}

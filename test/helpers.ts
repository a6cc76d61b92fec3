/**
 * Shared test helpers: temporary directories, running the real CLI, deterministic data, and a source
 * that really fails reads (nbdkit's ddrescue filter behind nbdfuse), for real GNU ddrescue runs.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'

export const ROOT = path.resolve(__dirname, '..', '..')
export const BIN = path.join(ROOT, 'bin', 'run.js')

export function tmpDir(prefix = 'vdev-test-'): {dir: string; cleanup: () => void} {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  return {dir, cleanup: () => fs.rmSync(dir, {recursive: true, force: true})}
}

export interface CliResult {
  code: number
  stdout: string
  stderr: string
  stdoutBuf: Buffer
}

/** Run `vdev ARGS` as a real process (argv array, no shell). */
export function runCli(args: string[], opts: {input?: Buffer; cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number} = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: opts.cwd,
      env: {...process.env, ...opts.env},
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeout ?? 120_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      const stdoutBuf = Buffer.concat(out)
      resolve({code: code ?? -1, stdout: stdoutBuf.toString(), stderr: Buffer.concat(err).toString(), stdoutBuf})
    })
    child.stdin.on('error', () => undefined)
    child.stdin.end(opts.input ?? Buffer.alloc(0))
  })
}

/** Deterministic pseudo-random bytes (so failures reproduce). */
export function prng(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length)
  let h = crypto.createHash('sha256').update(String(seed)).digest()
  for (let at = 0; at < length; at += h.length) {
    h.copy(out, at, 0, Math.min(h.length, length - at))
    h = crypto.createHash('sha256').update(h).digest()
  }
  return out
}

/** Bytes that compress well: text-like runs. */
export function textish(seed: number, length: number): Buffer {
  const words = ['block', 'sector', 'disk', 'rescue', 'vdev', 'image', 'chunk', 'zstd', '\n', 'the ', 'of ']
  const r = prng(seed, length)
  const out = Buffer.alloc(length)
  let at = 0
  let i = 0
  while (at < length) {
    const w = words[r[i++ % r.length] % words.length]
    at += out.write(w, at)
  }
  return out
}

export function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex')
}

export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd]).status === 0
}

/** Write a ddrescue mapfile with these bad ranges, everything else finished: the truth failingSource fails reads by. */
export function writeTruthMap(map: string, size: number, bad: Array<{offset: number; length: number}>): void {
  const lines = ['# truth for nbdkit ddrescue filter', '0x0 ?']
  let at = 0
  for (const b of [...bad].sort((x, y) => x.offset - y.offset)) {
    if (b.offset > at) lines.push(`0x${at.toString(16)} 0x${(b.offset - at).toString(16)} +`)
    lines.push(`0x${b.offset.toString(16)} 0x${b.length.toString(16)} -`)
    at = b.offset + b.length
  }
  if (at < size) lines.push(`0x${at.toString(16)} 0x${(size - at).toString(16)} +`)
  fs.writeFileSync(map, lines.join('\n') + '\n')
}

/**
 * Serve RAW through nbdkit's ddrescue filter (EIO outside the mapfile's finished areas) as a file via
 * nbdfuse: a source that really fails reads where we choose. Returns the file path and a stop function.
 */
export async function failingSource(dir: string, raw: string, mapfile: string): Promise<{file: string; stop: () => Promise<void>}> {
  const mnt = path.join(dir, 'fail-mnt')
  fs.mkdirSync(mnt, {recursive: true})
  const file = path.join(mnt, 'disk')
  const child: ChildProcess = spawn('nbdfuse', [file, '[', 'nbdkit', '--filter=ddrescue', 'file', raw, `ddrescue-mapfile=${mapfile}`, ']'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr!.on('data', (b) => (stderr += b))
  const exited = new Promise<void>((r) => child.on('exit', () => r()))
  const stop = async () => {
    spawnSync('fusermount3', ['-u', mnt])
    const t = setTimeout(() => child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(t)
  }
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`nbdfuse exited: ${stderr}`)
    if (fs.existsSync(file) && fs.statSync(file).size > 0) return {file, stop}
    await new Promise((r) => setTimeout(r, 100))
  }
  await stop()
  throw new Error(`nbdfuse did not come up: ${stderr}`)
}

/** Run GNU ddrescue (real) from SRC to OUT with MAP; extra options as argv. */
export function ddrescue(src: string, out: string, map: string, extra: string[] = []): void {
  const r = spawnSync('ddrescue', ['-q', '-b', '512', ...extra, src, out, map], {encoding: 'utf8'})
  if (r.status !== 0 && r.status !== 1) throw new Error(`ddrescue failed (${r.status}): ${r.stderr}`)
}

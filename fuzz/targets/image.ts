/**
 * Target "image": mutated VDIMG images through what `info`, `verify` and `extract` call (openImage,
 * describeImage, verifyImage, extractImage), plus serving reads (asynchronous and sync mode) and extents;
 * on the CLI slice, through the real CLI (bin/run.js) as well.
 *
 * The contract checked:
 *  - every failure is a VdevError whose code maps to a documented exit code for damaged input (format,
 *    unsupported, or io for output trouble), with a one-line message naming the file: never an exception
 *    of another kind, which the CLI reports as exit 1 (internal error);
 *  - what info prints can be printed (its JSON and each metadata value stringify);
 *  - verify and extract agree: a chunk verify rejects fails extract, an image verify accepts extracts,
 *    to bytes whose SHA-256 is the one verify computed; reads that succeed return those same bytes;
 *  - a failed extract leaves no output and no temporary file beside it; a successful one writes exactly
 *    the image's size, and its --mapfile-out parses back to the image's bad areas;
 *  - the CLI exits with the code the library's outcome maps to (never 1), prints exactly one line
 *    "vdev: …" on stderr when it fails and nothing when it succeeds, no stack trace, within a time limit.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn, spawnSync} from 'node:child_process'
import * as net from 'node:net'
import {EXIT_CODES, VdevError, type BadRange, type ErrorCode} from '../../src/core/errors'
import {BadAreaMap} from '../../src/format/badmap'
import {describeImage} from '../../src/format/describe'
import {extractImage} from '../../src/format/extract'
import {parseMapfile} from '../../src/format/mapfile'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {verifyImage, type VerifyResult} from '../../src/format/verify'
import {normalize, ROOT, workDir, type CaseContext, type CaseResult, type Target, type TargetInstance} from '../harness'
import {buildBaseImages, type BaseImage} from '../image/bases'
import {mutateImage} from '../image/mutate'

/** verify and extract run only on images up to this size (a huge sparse image is valid, just slow to decode). */
const MAX_DECODE = 64 * 1024 * 1024
const CLI_TIMEOUT_MS = 60_000
const BIN = path.join(ROOT, 'bin', 'run.js')

interface Expected {
  info: number
  verify?: number
  extract?: number
  size?: number
  /** What verify computed: the SHA-256 of what extract must write. */
  sha256?: string | null
}

class Failures {
  readonly list: string[] = []
  add(s: string): void {
    this.list.push(s)
  }
  /** The error contract: a VdevError of an allowed code, one line, naming the file. Returns its exit code. */
  error(where: string, err: unknown, file: string, allowed: ErrorCode[]): {exit: number; outcome: string} {
    if (!(err instanceof VdevError)) {
      const e = err as Error
      this.add(`${where}: threw ${e?.name ?? typeof err}: ${String(e?.message ?? err).split('\n')[0]} — not a VdevError, so the CLI exits 1 (internal error)`)
      return {exit: EXIT_CODES.internal, outcome: `${where}:internal:${normalize(String(e?.name))}`}
    }
    if (!allowed.includes(err.code)) this.add(`${where}: error code '${err.code}' (exit ${err.exitCode}) for a damaged image: ${err.message}`)
    if (err.message.includes('\n')) this.add(`${where}: the message is not one line: ${JSON.stringify(err.message.slice(0, 200))}`)
    // What is wrong with the image names the image (an output error names the output).
    if (err.code !== 'io' && !err.message.includes(file)) this.add(`${where}: the message does not name the file: ${err.message}`)
    return {exit: err.exitCode, outcome: `${where}:${err.code}:${normalize(err.message.split(file).join('FILE'))}`}
  }
}

function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex')
}

function strayTemps(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'))
}

/** Bad areas as a list with adjacent ranges of one status merged (the form both sides of a round trip take). */
function canonical(ranges: Iterable<BadRange>): string {
  return JSON.stringify([...BadAreaMap.fromRanges(ranges)])
}

/** What the running case is doing, for the message when it hangs. */
let doing = ''

async function libraryPaths(file: string, dir: string, ctx: CaseContext, f: Failures, parts: string[]): Promise<Expected | {openExit: number}> {
  const rng = ctx.rng
  doing = 'openImage'
  let img: VdimgImage
  try {
    img = await openImage(file)
  } catch (err) {
    const r = f.error('open', err, file, ['format', 'unsupported'])
    parts.push(r.outcome)
    return {openExit: r.exit}
  }
  let syncImg: VdimgImage | undefined
  try {
    parts.push('open:ok')
    // info: what describeImage returns, printed as the command prints it.
    doing = 'describeImage'
    let infoExit = 0
    try {
      const info = await describeImage(img, {maxRanges: rng.chance(0.3) ? Infinity : 20})
      try {
        JSON.stringify(info)
        for (const v of Object.values(info.metadata)) if (typeof v !== 'string') JSON.stringify(v)
      } catch (err) {
        f.add(`info: the result cannot be printed: ${(err as Error).name}: ${(err as Error).message}`)
        infoExit = EXIT_CODES.internal
      }
      const total = Object.values(info.chunks).reduce((s, n) => s + n, 0)
      if (total !== img.chunkCount) f.add(`info: chunk counts add up to ${total}, not ${img.chunkCount}`)
      parts.push('info:ok')
    } catch (err) {
      const r = f.error('info', err, file, ['format', 'unsupported'])
      infoExit = r.exit
      parts.push(r.outcome)
    }

    // Serving reads, as backends do them: asynchronous, and sync mode (serving threads, prefix decoding).
    const reads: Array<{offset: number; data: Buffer}> = []
    doing = 'reads'
    if (img.size > 0) {
      try {
        syncImg = await openImage(file, {sync: true, cacheBytes: 1 << 20})
      } catch (err) {
        f.add(`a second open (sync mode) failed where the first succeeded: ${(err as Error).message}`)
      }
      for (let i = 0; i < 4; i++) {
        const offset = rng.chance(0.3) ? Math.floor(rng.int(img.size) / img.chunkSize) * img.chunkSize : rng.int(img.size)
        const length = Math.min(img.size - offset, rng.pick([1, 512, 4096, img.chunkSize, 2 * img.chunkSize + 7, 16 * img.chunkSize]))
        const sync = i % 2 === 1 && syncImg !== undefined
        try {
          const r = sync ? syncImg!.readSync(offset, length) : await img.read(offset, length)
          if (r.data.length !== length) f.add(`read(${offset}, ${length}) returned ${r.data.length} bytes`)
          reads.push({offset, data: Buffer.from(r.data)})
        } catch (err) {
          parts.push(f.error(sync ? 'readSync' : 'read', err, file, ['format']).outcome)
        }
      }
      try {
        await img.extents(0, Math.min(img.size, 64 * img.chunkSize))
      } catch (err) {
        parts.push(f.error('extents', err, file, ['format']).outcome)
      }
    }
    if (img.size > MAX_DECODE) {
      parts.push('decode:skipped-huge')
      return {info: infoExit, size: img.size}
    }

    let verify: VerifyResult | undefined
    let verifyExit: number
    doing = 'verifyImage'
    try {
      verify = await verifyImage(img, {threads: 1})
      verifyExit = verify.ok ? 0 : EXIT_CODES.verify
      parts.push(
        verify.ok
          ? 'verify:ok'
          : verify.failedChunks
            ? `verify:chunks:${normalize(verify.problems[0]?.message.split(file).join('FILE') ?? '')}`
            : verify.sha256.match === false
              ? 'verify:hash-mismatch'
              : 'verify:damaged-structure',
      )
    } catch (err) {
      const r = f.error('verify', err, file, ['format'])
      verifyExit = r.exit
      parts.push(r.outcome)
    }

    const out = path.join(dir, 'out.img')
    const mapOut = rng.chance(0.3) ? path.join(dir, 'out.map') : undefined
    let extractExit = 0
    doing = 'extractImage'
    try {
      const result = await extractImage(img, out, {threads: 1, mapfileOut: mapOut})
      // Damaged chunks either fail extract, or (where extract writes them as unreadable bytes and the CLI
      // exits 5) are counted in its result; either way they are the ones verify finds.
      const damaged = (result as {damagedChunks?: number}).damagedChunks ?? 0
      extractExit = damaged ? EXIT_CODES.verify : 0
      parts.push(damaged ? 'extract:damaged' : 'extract:ok')
      const st = fs.statSync(out)
      if (st.size !== img.size) f.add(`extract: wrote ${st.size} bytes for a ${img.size}-byte image`)
      if (verify && verify.failedChunks !== damaged)
        f.add(`extract ${damaged ? `reported ${damaged}` : 'found no'} damaged chunks where verify found ${verify.failedChunks}${verify.problems[0] ? ` (${verify.problems[0].message})` : ''}`)
      if (!damaged) {
        const bytes = fs.readFileSync(out)
        if (verify?.sha256.computed && sha256(bytes) !== verify.sha256.computed) f.add('extract wrote other bytes than verify hashed')
        for (const r of reads)
          if (!r.data.equals(bytes.subarray(r.offset, r.offset + r.data.length)))
            f.add(`read(${r.offset}, ${r.data.length}) returned other bytes than extract wrote there`)
      }
      if (mapOut) {
        try {
          const m = parseMapfile(fs.readFileSync(mapOut, 'utf8'), mapOut)
          // With damage the mapfile holds the damaged chunks as bad areas too.
          if (!damaged && canonical(m.bad) !== canonical(img.badAreas)) f.add('extract --mapfile-out: the mapfile does not hold the image\'s bad areas')
          if (m.extent !== img.size && img.size > 0) f.add(`extract --mapfile-out: the mapfile covers ${m.extent} bytes, the image ${img.size}`)
        } catch (err) {
          f.add(`extract --mapfile-out wrote a mapfile that does not parse: ${(err as Error).message}`)
        }
      }
    } catch (err) {
      const r = f.error('extract', err, file, ['format', 'io'])
      extractExit = r.exit
      parts.push(r.outcome)
      if (fs.existsSync(out)) f.add('extract failed but left its output behind')
      if (mapOut && fs.existsSync(mapOut)) f.add('extract failed but left its mapfile behind')
      if (verify && verify.failedChunks === 0 && err instanceof VdevError && err.code === 'format')
        f.add(`extract failed on an image verify found no damaged chunk in: ${err.message}`)
    }
    const temps = strayTemps(dir)
    if (temps.length) f.add(`extract left temporary files: ${temps.join(', ')}`)
    return {info: infoExit, verify: verifyExit, extract: extractExit, size: img.size, sha256: verify?.sha256.computed}
  } finally {
    await img.close()
    await syncImg?.close()
  }
}

interface CliRun {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stdoutBytes: Buffer
  stderr: string
  timedOut: boolean
}

/**
 * Run the CLI (argv, no shell). Its stdout is Node's pipe (a socketpair), or with `fifo` a named pipe in
 * `fifo` — what a shell's `|` gives, which extract writes through another path.
 */
function runCli(args: string[], fifo?: string): Promise<CliRun> {
  return new Promise((resolve) => {
    const env = {...process.env}
    delete env.VDEV_DEBUG
    let reader: net.Socket | undefined
    let writeFd: number | undefined
    if (fifo) {
      // Open the read end first (non-blocking), so opening the write end does not wait for a reader.
      spawnSync('mkfifo', [fifo])
      reader = new net.Socket({fd: fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK), readable: true, writable: false})
      writeFd = fs.openSync(fifo, 'w')
    }
    const child = spawn(process.execPath, [BIN, ...args], {stdio: ['ignore', writeFd ?? 'pipe', 'pipe'], env})
    if (writeFd !== undefined) fs.closeSync(writeFd)
    const stdout = reader ?? child.stdout!
    const out: Buffer[] = []
    const err: Buffer[] = []
    stdout.on('data', (b: Buffer) => out.push(b))
    stdout.on('error', () => undefined)
    child.stderr!.on('data', (b: Buffer) => err.push(b))
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, CLI_TIMEOUT_MS)
    let exit: {code: number | null; signal: NodeJS.Signals | null} | undefined
    let ended = !reader
    const finish = () => {
      if (!exit || !ended) return
      clearTimeout(timer)
      const stdoutBytes = Buffer.concat(out)
      resolve({...exit, stdout: stdoutBytes.toString(), stdoutBytes, stderr: Buffer.concat(err).toString(), timedOut})
    }
    reader?.on('close', () => ((ended = true), finish()))
    child.on('close', (code, signal) => ((exit = {code, signal}), finish()))
  })
}

/** The documented exit codes a command on a damaged image may end with. */
const CLI_CODES: Record<string, number[]> = {info: [0, 3, 4], verify: [0, 3, 4, 5], extract: [0, 3, 4, 5]}

async function cliSlice(file: string, dir: string, expected: Expected | {openExit: number}, ctx: CaseContext, f: Failures, parts: string[]): Promise<void> {
  const opened = !('openExit' in expected)
  const size = 'openExit' in expected ? undefined : expected.size
  const sha = 'openExit' in expected ? undefined : expected.sha256
  const small = opened && (size ?? 0) <= MAX_DECODE
  // Extract to a file, or to stdout (a pipe): each has its own writer.
  const toStdout = ctx.rng.chance(0.5)
  const out = toStdout ? '-' : path.join(dir, 'cli-out.img')
  const json = ctx.iteration % 2 === 1
  const runs: Array<{cmd: string; args: string[]; want: number | undefined; fifo?: boolean}> = [
    {cmd: 'info', args: ['info', file, ...(json ? ['--json'] : [])], want: opened ? expected.info : expected.openExit},
  ]
  if (!opened || small) {
    runs.push({cmd: 'verify', args: ['verify', file], want: opened ? expected.verify : expected.openExit})
    runs.push({cmd: 'extract', args: ['extract', file, out], want: opened ? expected.extract : expected.openExit, fifo: toStdout && ctx.rng.chance(0.5)})
  }
  for (const r of runs) {
    const what = `CLI ${r.cmd}${r.cmd === 'extract' && toStdout ? ` to stdout (${r.fifo ? 'a FIFO' : 'a socketpair'})` : ''}`
    doing = `${what}: vdev ${r.args.join(' ')}`
    const res = await runCli(r.args, r.fifo ? path.join(dir, 'stdout.fifo') : undefined)
    parts.push(`cli-${r.cmd}:${res.code}`)
    if (res.timedOut) {
      f.add(`${what}: no exit within ${CLI_TIMEOUT_MS / 1000} s (hang)`)
      continue
    }
    if (res.code === null) {
      f.add(`${what}: killed by ${res.signal}`)
      continue
    }
    if (res.code === 1) f.add(`${what}: exit 1 (internal error): ${res.stderr.trim().split('\n')[0]}`)
    else if (!CLI_CODES[r.cmd].includes(res.code)) f.add(`${what}: exit ${res.code} is not one of ${CLI_CODES[r.cmd].join(', ')}`)
    if (r.want !== undefined && res.code !== r.want) f.add(`${what}: exit ${res.code}, but the library's outcome maps to ${r.want}`)
    if (/\n\s+at /.test(res.stderr)) f.add(`${what}: a stack trace on stderr`)
    // Warnings ("vdev: warning: …", damage a command works around) may come first; then a failure says
    // what is wrong in exactly one line, and a success says nothing more.
    const lines = res.stderr.split('\n').filter((l, i, all) => l !== '' || i < all.length - 1)
    const said = lines.filter((l) => !l.startsWith('vdev: warning: '))
    if (res.code !== 0) {
      if (said.length !== 1) f.add(`${what}: ${said.length} lines on stderr for a failure (want exactly 1): ${JSON.stringify(res.stderr.slice(0, 300))}`)
      else if (!said[0].startsWith('vdev: ')) f.add(`${what}: stderr does not start with "vdev: ": ${said[0]}`)
    } else if (said.length) f.add(`${what}: succeeded but wrote to stderr: ${JSON.stringify(res.stderr.slice(0, 300))}`)
    if (r.cmd === 'info' && json) {
      try {
        const v = JSON.parse(res.stdout) as {error?: unknown}
        if (res.code !== 0 && !v.error) f.add(`${what} --json: failed without {"error": …} on stdout`)
      } catch {
        f.add(`${what} --json: stdout is not JSON: ${JSON.stringify(res.stdout.slice(0, 200))}`)
      }
    }
    // Exit 0 — or 5, damaged chunks written as unreadable bytes — means a complete output.
    const complete = res.code === 0 || (res.code === 5 && r.cmd === 'extract')
    if (r.cmd === 'extract' && toStdout && complete && size !== undefined) {
      if (res.stdoutBytes.length !== size) f.add(`${what}: exit ${res.code} but ${res.stdoutBytes.length} bytes on stdout (image: ${size} bytes)`)
      else if (res.code === 0 && sha && sha256(res.stdoutBytes) !== sha) f.add(`${what}: exit 0 but other bytes than verify hashed`)
    }
    if (r.cmd === 'extract' && !toStdout) {
      if (complete && size !== undefined) {
        if (!fs.existsSync(out) || fs.statSync(out).size !== size)
          f.add(`${what}: exit ${res.code} but the output is ${fs.existsSync(out) ? `${fs.statSync(out).size} bytes` : 'missing'} (image: ${size} bytes)`)
        else if (res.code === 0 && sha && sha256(fs.readFileSync(out)) !== sha) f.add(`${what}: exit 0 but other bytes than verify hashed`)
      }
      if (!complete && fs.existsSync(out)) f.add(`${what}: failed but left its output`)
    }
    if (r.cmd === 'extract') {
      const temps = strayTemps(dir)
      if (temps.length) f.add(`${what}: left temporary files: ${temps.join(', ')}`)
    }
  }
}

export const imageTarget: Target = {
  name: 'image',
  caseTimeoutMs: 4 * CLI_TIMEOUT_MS,
  async setup(): Promise<TargetInstance> {
    const work = workDir('vdev-fuzz-image-')
    const bases: BaseImage[] = await buildBaseImages(work)
    const weights = bases.map((b) => [b.name === 'mixed' ? 5 : b.name === 'plain' || b.name === 'sector4k' ? 2 : 1, b] as const)
    let n = 0
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const base = ctx.rng.weighted(weights)
        const m = mutateImage(base, ctx.rng)
        const dir = path.join(work, `case-${n++}`)
        fs.mkdirSync(dir)
        const file = path.join(dir, `${base.name}.vdimg`)
        fs.writeFileSync(file, m.bytes)
        const f = new Failures()
        const parts: string[] = []
        try {
          const expected = await libraryPaths(file, dir, ctx, f, parts)
          if (ctx.cli) await cliSlice(file, dir, expected, ctx, f, parts)
        } finally {
          if (!f.list.length || !ctx.verbose) fs.rmSync(dir, {recursive: true, force: true})
        }
        return {
          outcome: parts.join(' | '),
          failures: f.list,
          input: {ext: 'vdimg', data: m.bytes},
          steps: [`base image "${base.name}"`, ...m.steps],
        }
      },
      async close() {
        fs.rmSync(work, {recursive: true, force: true})
      },
      progress: () => doing,
    }
  },
}

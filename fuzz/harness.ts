/**
 * The fuzzing loop shared by every target: cases derived from (target, seed, iteration), a time budget
 * and an iteration cap, a timeout per case, uncaught exceptions and unhandled rejections charged to the
 * case that was running, distinct outcomes counted, and every failing input saved under fuzz/crashes/
 * with the one-line command that replays it.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {Rng} from './rng'

/** The repository's top level (this file runs as dist/fuzz/harness.js). */
export const ROOT = path.resolve(__dirname, '..', '..')
export const CRASH_DIR = path.join(ROOT, 'fuzz', 'crashes')

export interface CaseContext {
  target: string
  seed: number
  iteration: number
  rng: Rng
  verbose: boolean
  /** Whether this case also runs the real CLI (targets that have a CLI slice). */
  cli: boolean
  log(line: string): void
}

export interface CaseResult {
  /** What happened, normalized (numbers and paths taken out), for counting distinct outcomes. */
  outcome: string
  /** Contract violations: empty when the case passed. */
  failures: string[]
  /** The input to keep when the case failed (an image, a mapfile, the bytes a client sent). */
  input?: {ext: string; data: Buffer | string}
  /** What the case did (mutations applied, messages sent), printed on replay and saved with the input. */
  steps?: string[]
}

export interface TargetInstance {
  runCase(ctx: CaseContext): Promise<CaseResult>
  close(): Promise<void>
  /** What the running case is doing (named when it hangs). */
  progress?(): string
}

export interface Target {
  name: string
  /** A case that takes longer is a hang. */
  caseTimeoutMs: number
  setup(opts: {verbose: boolean}): Promise<TargetInstance>
}

export interface RunOptions {
  seed: number
  /** Stop after this many cases (default: no cap). */
  iterations?: number
  /** Stop after this many seconds (default: no limit; at least one of the two must be given). */
  seconds?: number
  /** The first iteration (default 0); a replay runs exactly one. */
  first?: number
  /** Run the CLI slice on every n-th case (0: never). */
  cliEvery?: number
  verbose?: boolean
  /** Save failing inputs under fuzz/crashes (default true). */
  save?: boolean
  /** Called before each case (the supervisor records which case is running). */
  onCase?: (iteration: number) => void
  log?: (line: string) => void
}

export interface FailureReport {
  iteration: number
  messages: string[]
  replay: string
  saved?: string
}

export interface TargetReport {
  target: string
  seed: number
  cases: number
  seconds: number
  outcomes: Record<string, number>
  failures: FailureReport[]
  /** Set when the run stopped early (a hang leaves the target in an unknown state). */
  aborted?: string
}

/** A temporary directory for a target's files: on tmpfs when there is one (extract's fsync costs nothing there). */
export function workDir(prefix: string): string {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir()
  return fs.mkdtempSync(path.join(base, prefix))
}

export function replayCommand(target: string, seed: number, iteration: number): string {
  return `npm run fuzz -- --target ${target} --seed ${seed} --iter ${iteration}`
}

/** Numbers, hex and temporary paths out of a message, so that outcomes of one kind count once. */
export function normalize(message: string, max = 140): string {
  return message
    .replace(/\/tmp\/[^\s:]+/g, 'PATH')
    .replace(/0x[0-9a-f]+/gi, 'N')
    .replace(/[0-9]+/g, 'N')
    .replace(/"[^"]*"/g, '"…"')
    .slice(0, max)
}

function errorText(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message.split('\n')[0]}`
  return String(err)
}

function save(target: string, seed: number, iteration: number, r: CaseResult, messages: string[], replay: string): string | undefined {
  try {
    fs.mkdirSync(CRASH_DIR, {recursive: true})
    const base = path.join(CRASH_DIR, `${target}-s${seed}-i${iteration}`)
    const text = [`replay: ${replay}`, '', 'failures:', ...messages.map((m) => `  ${m}`), '', 'steps:', ...(r.steps ?? []).map((s) => `  ${s}`), ''].join('\n')
    fs.writeFileSync(`${base}.txt`, text)
    if (r.input) {
      fs.writeFileSync(`${base}.${r.input.ext}`, r.input.data)
      return `${base}.${r.input.ext}`
    }
    return `${base}.txt`
  } catch {
    return undefined
  }
}

/** Run one target for a number of cases or seconds; never throws for what a case does. */
export async function runTarget(target: Target, opts: RunOptions): Promise<TargetReport> {
  if (opts.iterations === undefined && opts.seconds === undefined) throw new Error('runTarget needs iterations or seconds')
  const log = opts.log ?? ((l: string) => process.stdout.write(l + '\n'))
  const report: TargetReport = {target: target.name, seed: opts.seed, cases: 0, seconds: 0, outcomes: {}, failures: []}
  const stray: string[] = []
  const seenKinds = new Set<string>()
  const onUncaught = (err: unknown) => stray.push(`uncaught exception: ${errorText(err)}`)
  const onRejection = (err: unknown) => stray.push(`unhandled rejection: ${errorText(err)}`)
  process.on('uncaughtException', onUncaught)
  process.on('unhandledRejection', onRejection)
  let t0 = Date.now()
  let deadline = Infinity
  const first = opts.first ?? 0
  const last = opts.iterations !== undefined ? first + opts.iterations : Infinity
  let instance: TargetInstance | undefined
  try {
    instance = await target.setup({verbose: opts.verbose ?? false})
    // The budget and the rate count cases only, not the setup.
    t0 = Date.now()
    if (opts.seconds !== undefined) deadline = t0 + opts.seconds * 1000
    for (let iteration = first; iteration < last && Date.now() < deadline; iteration++) {
      opts.onCase?.(iteration)
      const ctx: CaseContext = {
        target: target.name,
        seed: opts.seed,
        iteration,
        rng: Rng.forCase(target.name, opts.seed, iteration),
        verbose: opts.verbose ?? false,
        cli: (opts.cliEvery ?? 0) > 0 && iteration % opts.cliEvery! === 0,
        log,
      }
      stray.length = 0
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), target.caseTimeoutMs)))
      let result: CaseResult
      let hung = false
      try {
        const r = await Promise.race([instance.runCase(ctx), timeout])
        if (r === 'timeout') {
          hung = true
          const doing = instance.progress?.()
          result = {outcome: 'hang', failures: [`hang: the case did not finish within ${target.caseTimeoutMs} ms${doing ? ` (it was at: ${doing})` : ''}`]}
        } else result = r
      } catch (err) {
        result = {outcome: 'harness-error', failures: [`the case threw: ${errorText(err)}`]}
      } finally {
        clearTimeout(timer)
      }
      // Exceptions thrown from callbacks (a server's socket handler) surface a tick later.
      await new Promise((r) => setImmediate(r))
      const messages = [...result.failures, ...stray]
      report.cases++
      report.outcomes[result.outcome] = (report.outcomes[result.outcome] ?? 0) + 1
      if (opts.verbose) {
        for (const s of result.steps ?? []) log(`  step: ${s}`)
        log(`  outcome: ${result.outcome}`)
      }
      if (messages.length) {
        const replay = replayCommand(target.name, opts.seed, iteration)
        const saved = opts.save === false ? undefined : save(target.name, opts.seed, iteration, result, messages, replay)
        report.failures.push({iteration, messages, replay, saved})
        // Each kind of failure is printed the first time it comes; the summary counts the rest.
        const kind = normalize(messages[0], 100)
        if (!seenKinds.has(kind) || opts.verbose) {
          seenKinds.add(kind)
          log(`${target.name}: FAILURE at iteration ${iteration}: ${messages[0]}${messages.length > 1 ? ` (+${messages.length - 1} more)` : ''}`)
          log(`  replay: ${replay}${saved ? `   input: ${path.relative(ROOT, saved)}` : ''}`)
        }
      }
      if (hung) {
        report.aborted = `case ${iteration} hung; the target's state is unknown, so the run stopped`
        break
      }
    }
  } catch (err) {
    report.aborted = `setup or teardown failed: ${errorText(err)}`
  } finally {
    try {
      if (!report.aborted?.includes('hung')) await instance?.close()
    } catch (err) {
      report.aborted ??= `teardown failed: ${errorText(err)}`
    }
    process.off('uncaughtException', onUncaught)
    process.off('unhandledRejection', onRejection)
    report.seconds = (Date.now() - t0) / 1000
  }
  return report
}

/** One line per target: cases, rate, distinct outcomes, failures. */
export function summaryLine(r: TargetReport): string {
  const rate = r.seconds > 0 ? (r.cases / r.seconds).toFixed(1) : '-'
  const distinct = Object.keys(r.outcomes).length
  return `${r.target.padEnd(8)} ${String(r.cases).padStart(7)} cases  ${rate.padStart(8)}/s  ${String(distinct).padStart(5)} distinct outcomes  ${r.failures.length} failures${r.aborted ? `  (aborted: ${r.aborted})` : ''}`
}

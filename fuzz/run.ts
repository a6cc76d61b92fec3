/**
 * `npm run fuzz`: run every fuzz target (or those named) for a time budget each, and print per target the
 * cases run, the rate, the distinct outcomes and the failures, each with the command that replays it.
 *
 *   npm run fuzz                                     every target, 60 s each, a random seed (printed)
 *   npm run fuzz -- --target nbd,nfs --seconds 300 --seed 7
 *   npm run fuzz -- --target image --seed S --iter N  replay one case, verbosely
 *
 * Each target runs in a child process of its own under a watchdog: a case that crashes the process (a
 * native fault) or blocks its event loop is still reported, with the case that was running.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {fork} from 'node:child_process'
import {CRASH_DIR, normalize, replayCommand, runTarget, summaryLine, type Target, type TargetReport} from './harness'
import {TARGETS} from './targets'

interface Args {
  targets: string[]
  seed: number
  seconds: number
  iterations?: number
  iter?: number
  cliEvery: number
  verbose: boolean
  /** Print the n most frequent outcomes of each target. */
  outcomes: number
  child: boolean
  fork: boolean
}

const USAGE = `usage: npm run fuzz -- [--target ${Object.keys(TARGETS).join(',')}] [--seconds S] [--iterations N] [--seed S] [--iter N] [--cli-every N] [--outcomes N] [--no-fork] [--verbose]`

function parseArgs(argv: string[]): Args {
  const a: Args = {targets: Object.keys(TARGETS), seed: 1 + Math.floor(Math.random() * 0x7fffffff), seconds: 60, cliEvery: 25, verbose: false, outcomes: 0, child: false, fork: true}
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    const value = (): string => {
      const v = argv[++i]
      if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`)
      return v
    }
    const num = (): number => {
      const v = value()
      const n = Number(v)
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${flag}: "${v}" is not a whole number\n${USAGE}`)
      return n
    }
    switch (flag) {
      case '--target':
      case '--targets':
        a.targets = value().split(',').filter(Boolean)
        break
      case '--seed':
        a.seed = num()
        break
      case '--seconds':
        a.seconds = num()
        break
      case '--iterations':
        a.iterations = num()
        break
      case '--iter':
        a.iter = num()
        break
      case '--cli-every':
        a.cliEvery = num()
        break
      case '--verbose':
        a.verbose = true
        break
      case '--outcomes':
        a.outcomes = num()
        break
      case '--no-fork':
        a.fork = false
        break
      case '--child':
        a.child = true
        break
      case '-h':
      case '--help':
        process.stdout.write(USAGE + '\n')
        process.exit(0)
        break
      default:
        throw new Error(`unknown argument "${flag}"\n${USAGE}`)
    }
  }
  for (const t of a.targets) if (!TARGETS[t]) throw new Error(`unknown target "${t}" (targets: ${Object.keys(TARGETS).join(', ')})`)
  return a
}

/** Where the child running `target` as process `pid` records the case it is running. */
function markerPath(target: string, pid: number): string {
  return path.join(CRASH_DIR, `.running-${target}-${pid}`)
}

/** In the child: run one target, recording the running case in a marker file, and send the report. */
async function child(a: Args): Promise<void> {
  const target = TARGETS[a.targets[0]]
  fs.mkdirSync(CRASH_DIR, {recursive: true})
  const marker = fs.openSync(markerPath(target.name, process.pid), 'w')
  const num = Buffer.alloc(8)
  const report = await runTarget(target, {
    seed: a.seed,
    seconds: a.seconds,
    iterations: a.iterations,
    cliEvery: a.cliEvery,
    verbose: a.verbose,
    onCase(i) {
      num.writeBigUInt64LE(BigInt(i))
      fs.writeSync(marker, num, 0, 8, 0)
    },
  })
  fs.closeSync(marker)
  fs.rmSync(markerPath(target.name, process.pid), {force: true})
  process.send!(report, () => process.exit(0))
}

/** In the parent: run a target in a child process, with a watchdog. */
function supervise(target: Target, a: Args): Promise<TargetReport> {
  const argv = ['--child', '--target', target.name, '--seed', String(a.seed), '--seconds', String(a.seconds), '--cli-every', String(a.cliEvery)]
  if (a.iterations !== undefined) argv.push('--iterations', String(a.iterations))
  if (a.verbose) argv.push('--verbose')
  const started = Date.now()
  return new Promise((resolve) => {
    const c = fork(__filename, argv, {stdio: ['ignore', 'inherit', 'inherit', 'ipc']})
    let report: TargetReport | undefined
    let killedBy: string | undefined
    // The budget, one case's timeout, setup and teardown.
    const limit = a.seconds * 1000 + target.caseTimeoutMs + 120_000
    const watchdog = setTimeout(() => {
      killedBy = `the watchdog (no report after ${Math.round(limit / 1000)} s: a blocked event loop?)`
      c.kill('SIGKILL')
    }, limit)
    c.on('message', (m) => (report = m as TargetReport))
    c.on('exit', (code, signal) => {
      clearTimeout(watchdog)
      const marker = markerPath(target.name, c.pid ?? 0)
      if (report) return resolve(report)
      let iteration = -1
      try {
        const b = fs.readFileSync(marker)
        if (b.length >= 8) iteration = Number(b.readBigUInt64LE(0))
      } catch {
        /* no case had started */
      }
      fs.rmSync(marker, {force: true})
      const why = killedBy ?? `the fuzzing process died (${signal ? `signal ${signal}` : `exit ${code}`})`
      resolve({
        target: target.name,
        seed: a.seed,
        cases: Math.max(0, iteration),
        seconds: (Date.now() - started) / 1000,
        outcomes: {},
        failures: [
          {
            iteration,
            messages: [`${why}${iteration >= 0 ? ` during case ${iteration}` : ''}`],
            replay: iteration >= 0 ? replayCommand(target.name, a.seed, iteration) : '(before the first case)',
          },
        ],
        aborted: why,
      })
    })
  })
}

async function main(): Promise<void> {
  let a: Args
  try {
    a = parseArgs(process.argv.slice(2))
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`)
    process.exit(2)
  }
  if (a.child) return child(a)
  if (a.iter !== undefined) {
    // Replay: one case, in this process, verbosely; the CLI slice runs too.
    let failed = false
    for (const name of a.targets) {
      process.stdout.write(`replaying ${name} seed ${a.seed} iteration ${a.iter}\n`)
      const r = await runTarget(TARGETS[name], {seed: a.seed, first: a.iter, iterations: 1, cliEvery: 1, verbose: true})
      if (r.failures.length || r.aborted) failed = true
      else process.stdout.write(`${name}: case passed\n`)
    }
    process.exit(failed ? 1 : 0)
  }
  process.stdout.write(`fuzzing ${a.targets.join(', ')}: seed ${a.seed}, ${a.iterations !== undefined ? `at most ${a.iterations} cases and ` : ''}${a.seconds} s each\n`)
  const reports: TargetReport[] = []
  for (const name of a.targets) {
    const r = a.fork ? await supervise(TARGETS[name], a) : await runTarget(TARGETS[name], {seed: a.seed, seconds: a.seconds, iterations: a.iterations, cliEvery: a.cliEvery, verbose: a.verbose})
    process.stdout.write(summaryLine(r) + '\n')
    reports.push(r)
  }
  process.stdout.write('\n')
  for (const r of reports) process.stdout.write(summaryLine(r) + '\n')
  if (a.outcomes > 0)
    for (const r of reports) {
      process.stdout.write(`\n${r.target}: the ${a.outcomes} most frequent of ${Object.keys(r.outcomes).length} outcomes\n`)
      for (const [o, n] of Object.entries(r.outcomes).sort((x, y) => y[1] - x[1]).slice(0, a.outcomes)) process.stdout.write(`  ${String(n).padStart(7)}  ${o}\n`)
    }
  const failures = reports.flatMap((r) => r.failures.map((f) => ({target: r.target, ...f})))
  if (failures.length) {
    // One line per kind of failure (numbers aside), with how often it came and the first case to replay.
    const kinds = new Map<string, {count: number; first: (typeof failures)[number]}>()
    for (const f of failures) {
      const k = `${f.target}: ${normalize(f.messages[0], 100)}`
      const e = kinds.get(k)
      if (e) e.count++
      else kinds.set(k, {count: 1, first: f})
    }
    process.stdout.write(`\n${failures.length} failing cases, ${kinds.size} kinds:\n`)
    for (const {count, first} of kinds.values())
      process.stdout.write(`  ${first.target} ×${count}: ${first.messages[0]}\n    ${first.replay}\n`)
  }
  process.exit(failures.length || reports.some((r) => r.aborted) ? 1 : 0)
}

void main()

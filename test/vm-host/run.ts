/**
 * Run the in-VM suite (or some of its files) by hand, with the guest console on stderr:
 *   node dist/test/vm-host/run.js [test/vm/ublk.test.ts ...] [--grep PATTERN] [--timeout SECONDS]
 * Exits with the guest mocha's status (1 if the guest never reported one).
 */
import {CONSOLE_LOG, runInVm} from './vm'

async function main(): Promise<number> {
  const args = process.argv.slice(2)
  const files: string[] = []
  let grep: string | undefined
  let timeoutMs: number | undefined
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--grep') grep = args[++i]
    else if (args[i] === '--timeout') timeoutMs = Number(args[++i]) * 1000
    else files.push(args[i])
  }
  const r = await runInVm({files, grep, timeoutMs, echo: process.stderr, log: (l) => process.stderr.write(`[vm] ${l}\n`)})
  process.stderr.write(
    `[vm] kernel ${r.assets.kernelRelease}; /init at ${r.initSeconds ?? '?'}s, suite started at ` +
      `${r.suiteStartSeconds ?? '?'}s, qemu exited at ${r.totalSeconds.toFixed(1)}s; console: ${CONSOLE_LOG}\n`,
  )
  if (r.timedOut) process.stderr.write('[vm] timed out\n')
  return r.status ?? 1
}

// Only as a script: mocha loads every .js under dist/test when it runs the host suite.
if (require.main === module)
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`vm: ${(err as Error).message}\n`)
      process.exit(1)
    },
  )

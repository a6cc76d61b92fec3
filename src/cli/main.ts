/**
 * Entry point used by bin/run.js: runs oclif and turns every failure into one line on stderr and a
 * stable exit code (README, "Exit codes"). No stack traces reach the user unless VDEV_DEBUG=1.
 */
import * as path from 'node:path'
import {run, flush, Errors} from '@oclif/core'
import {VdevError, EXIT_CODES} from '../core/errors'

export function describeError(err: unknown): {code: string; message: string; exit: number} {
  if (err instanceof VdevError) return {code: err.code, message: err.message, exit: err.exitCode}
  const e = err as {oclif?: {exit?: number}; message?: string; code?: string}
  if (e && e.oclif && typeof e.oclif.exit === 'number') {
    // oclif's own parse errors (unknown flag, missing argument): usage errors.
    const first = String(e.message ?? 'invalid arguments')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('See more help'))
      .join(' ')
    return {code: 'usage', message: first, exit: e.oclif.exit === 0 ? 0 : EXIT_CODES.usage}
  }
  const msg = e?.message ? String(e.message).split('\n')[0] : String(err)
  return {code: 'internal', message: `internal error: ${msg}`, exit: EXIT_CODES.internal}
}

export async function main(argv: string[]): Promise<void> {
  const root = path.resolve(__dirname, '..', '..', '..')
  try {
    await run(argv, root)
    await flush()
  } catch (err) {
    if (err instanceof Errors.ExitError) {
      process.exitCode = err.oclif.exit
      return
    }
    const d = describeError(err)
    if (d.exit === 0) return
    if (process.env.VDEV_DEBUG === '1') console.error(err)
    process.stderr.write(`vdev: ${d.message}\n`)
    if (argv.includes('--json')) process.stdout.write(JSON.stringify({error: {code: d.code, message: d.message}}) + '\n')
    process.exitCode = d.exit
  }
}

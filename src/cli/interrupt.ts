/**
 * SIGINT and SIGTERM during a long command (verify, extract): the command's AbortSignal fires, the work
 * stops between batches, what it was writing is removed on the way out, and main.ts prints one line and
 * exits 130 (README, "Exit codes"). Should the work not come back within a few seconds, exit anyway.
 */
import {VdevError} from '../core/errors'

export interface Interruptible {
  signal: AbortSignal
  dispose: () => void
}

export function interruptible(what: string): Interruptible {
  const ac = new AbortController()
  const on = (sig: NodeJS.Signals) => {
    if (ac.signal.aborted) return process.exit(130) // a second signal: now
    ac.abort(new VdevError('interrupted', `${what}: interrupted by ${sig}`))
    setTimeout(() => {
      process.stderr.write(`vdev: ${what}: interrupted by ${sig}\n`)
      process.exit(130)
    }, 5000).unref()
  }
  process.on('SIGINT', on)
  process.on('SIGTERM', on)
  return {
    signal: ac.signal,
    dispose: () => {
      process.removeListener('SIGINT', on)
      process.removeListener('SIGTERM', on)
    },
  }
}

/**
 * Mocha reporter used inside the VM: the usual spec output on the console (streamed to the host's log) plus a
 * JSON summary written to $VDEV_VM_RESULTS in the shared folder, which the host turns into its verdict.
 */
import * as fs from 'node:fs'
import Mocha = require('mocha')

export interface GuestTestResult {
  file: string
  title: string
  state: 'passed' | 'failed' | 'pending'
  ms?: number
  error?: string
}

export interface GuestResults {
  tests: GuestTestResult[]
  passes: number
  failures: number
  pending: number
}

class GuestReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options)
    const tests: GuestTestResult[] = []
    const file = (t: Mocha.Runnable): string => t.file ?? t.parent?.file ?? '?'
    runner.on('pass', (t) => tests.push({file: file(t), title: t.fullTitle(), state: 'passed', ms: t.duration}))
    runner.on('pending', (t) => tests.push({file: file(t), title: t.fullTitle(), state: 'pending'}))
    runner.on('fail', (t, err: Error) =>
      tests.push({file: file(t), title: t.fullTitle(), state: 'failed', error: (err?.stack ?? String(err)).slice(0, 4000)}),
    )
    runner.once('end', () => {
      const out = process.env.VDEV_VM_RESULTS
      if (!out) return
      const results: GuestResults = {
        tests,
        passes: tests.filter((t) => t.state === 'passed').length,
        failures: tests.filter((t) => t.state === 'failed').length,
        pending: tests.filter((t) => t.state === 'pending').length,
      }
      fs.writeFileSync(out, JSON.stringify(results, null, 1))
    })
  }
}

export = GuestReporter

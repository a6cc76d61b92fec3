/**
 * The real-kernel suite, run from the host suite: boots the test VM (Debian's 6.12 kernel under qemu TCG, see
 * docs/vm-harness.md) once and runs every in-VM test file (dist/test/vm/**) in it. Fails with the guest's own
 * failures; fails (never skips) when the VM cannot be built or booted. VDEV_VM_FILES (comma-separated) and
 * VDEV_VM_GREP narrow the run; the console goes to .cache/vm/console.log.
 */
import {strict as assert} from 'node:assert'
import {runInVm, defaultVmFiles, type VmRun} from './vm'

describe('real-kernel VM suite', function () {
  const timeoutMs = Number(process.env.VDEV_VM_TIMEOUT ?? 40 * 60) * 1000
  this.timeout(timeoutMs + 120_000)
  let run: VmRun

  before(async () => {
    const files = process.env.VDEV_VM_FILES?.split(',').filter(Boolean)
    run = await runInVm({
      files,
      grep: process.env.VDEV_VM_GREP,
      timeoutMs,
      echo: process.env.VDEV_VM_ECHO ? process.stderr : undefined,
    })
    console.log(
      `      VM (${run.assets.kernelRelease}): /init at ${run.initSeconds?.toFixed(1) ?? '?'}s, suite from ` +
        `${run.suiteStartSeconds?.toFixed(1) ?? '?'}s, done at ${run.totalSeconds.toFixed(1)}s; console ${run.consoleLog}`,
    )
  })

  it('boots the guest and gets a verdict back', () => {
    assert.ok(!run.timedOut, `VM run timed out; console tail:\n${run.consoleTail}`)
    assert.notEqual(run.status, null, `the guest reported no mocha status; console tail:\n${run.consoleTail}`)
    assert.ok(run.results, `the guest wrote no results; console tail:\n${run.consoleTail}`)
  })

  it('runs tests from every in-VM file', function () {
    if (process.env.VDEV_VM_FILES || process.env.VDEV_VM_GREP) this.skip()
    const ran = new Set(run.results?.tests.map((t) => t.file))
    for (const f of defaultVmFiles()) assert.ok(ran.has(f), `no test of ${f} ran in the VM`)
  })

  it('passes every in-VM test', () => {
    const failed = run.results?.tests.filter((t) => t.state === 'failed') ?? []
    assert.ok(
      failed.length === 0 && run.status === 0,
      `${failed.length} in-VM test(s) failed (guest mocha status ${run.status}):\n` +
        failed.map((t) => `  ${t.title}\n    ${t.error?.split('\n').slice(0, 6).join('\n    ')}`).join('\n') +
        `\nconsole: ${run.consoleLog}`,
    )
    assert.ok((run.results?.passes ?? 0) > 0, 'no in-VM test passed')
  })
})

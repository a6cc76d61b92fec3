/**
 * A fixed-seed slice of the overlay fuzz target (fuzz/targets/overlay.ts, docs/fuzzing.md): mutated overlay
 * files give a one-line error or a consistent overlay, never a crash or a hang; the CLI slice checks the
 * exit codes of `vdev overlay info`.
 */
import {strict as assert} from 'node:assert'
import {runTarget} from '../../fuzz/harness'
import {overlayTarget} from '../../fuzz/targets/overlay'

describe('fuzz slice: overlay (fixed seed)', function () {
  this.timeout(180_000)
  it('400 cases of seed 20261201 keep the contract', async () => {
    const r = await runTarget(overlayTarget, {seed: 20261201, iterations: 400, cliEvery: 100, log: () => undefined})
    assert.equal(r.aborted, undefined, r.aborted)
    assert.equal(r.cases, 400)
    assert.deepEqual(
      r.failures.map((f) => `${f.messages.join('; ')} — replay: ${f.replay}`),
      [],
    )
  })
})

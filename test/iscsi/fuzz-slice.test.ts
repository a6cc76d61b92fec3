/**
 * A short, fixed-seed slice of the "iscsi" fuzz target (fuzz/targets/iscsi.ts): the same malformed and
 * well-formed sessions on every run, so a contract violation any of them finds fails the suite. `npm run
 * fuzz -- --target iscsi` runs it for longer with fresh seeds.
 */
import {strict as assert} from 'node:assert'
import {runTarget} from '../../fuzz/harness'
import {iscsiTarget} from '../../fuzz/targets/iscsi'

const SEED = 20261122
const CASES = 300

describe('fuzz slice: iscsi (fixed seed)', function () {
  this.timeout(120_000)
  it(`${CASES} cases of seed ${SEED} keep the contract`, async () => {
    const r = await runTarget(iscsiTarget, {seed: SEED, iterations: CASES, cliEvery: 0, log: () => undefined})
    assert.equal(r.aborted, undefined, r.aborted)
    assert.equal(r.cases, CASES)
    assert.deepEqual(
      r.failures.map((f) => `${f.messages.join('; ')} — replay: ${f.replay}`),
      [],
    )
  })
})

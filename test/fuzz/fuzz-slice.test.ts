/**
 * A short, fixed-seed slice of every fuzz target (docs/fuzzing.md): the same cases on every run, so a
 * contract violation any of them finds fails `npm test`. `npm run fuzz` runs the same targets for longer
 * with fresh seeds. A failing case is saved under fuzz/crashes/ and the assertion names the command
 * that replays it.
 */
import {strict as assert} from 'node:assert'
import {runTarget} from '../../fuzz/harness'
import {fuseTarget} from '../../fuzz/targets/fuse'
import {httpTarget} from '../../fuzz/targets/http'
import {imageTarget} from '../../fuzz/targets/image'
import {mapfileTarget} from '../../fuzz/targets/mapfile'
import {nbdTarget} from '../../fuzz/targets/nbd'
import {nfsTarget} from '../../fuzz/targets/nfs'
import {recoveryTarget} from '../../fuzz/targets/recovery'

const SEED = 20261122

/**
 * Cases per target: about 25 s in all on an idle 2-core machine. The image slice runs the real CLI twice. (The
 * iscsi target has its own slice, test/iscsi/fuzz-slice.test.ts.)
 */
const SLICE = [
  {target: mapfileTarget, iterations: 4000},
  // Seed 31 was picked when its image cases included a chunk offset of 2^64−1 under valid checksums and,
  // through the CLI, metadata nested 100 000 deep — the two bugs known when the harness was written. The
  // format 1.1 mutations (copies, overwritten blocks) changed every seed's cases since; those two bugs keep
  // their own reproducers in test/cli/hostile-input.test.ts.
  {target: imageTarget, iterations: 40, cliEvery: 20, seed: 31},
  {target: nbdTarget, iterations: 500},
  {target: fuseTarget, iterations: 1500},
  // Two in five nfs cases start a read-write server over a fresh overlay (slower): 250 take what 400 read-only ones did.
  {target: nfsTarget, iterations: 250},
  {target: httpTarget, iterations: 150},
  // Recovery data (format 1.2): its header parser, verify's assessment and repair; the CLI on one case in 10.
  {target: recoveryTarget, iterations: 20, cliEvery: 10},
]

describe('fuzz slice (fixed seed)', function () {
  this.timeout(180_000)
  for (const slice of SLICE) {
    const seed = slice.seed ?? SEED
    it(`${slice.target.name}: ${slice.iterations} cases of seed ${seed} keep the contract`, async () => {
      const r = await runTarget(slice.target, {seed, iterations: slice.iterations, cliEvery: slice.cliEvery ?? 0, log: () => undefined})
      assert.equal(r.aborted, undefined, r.aborted)
      assert.equal(r.cases, slice.iterations)
      assert.deepEqual(
        r.failures.map((f) => `${f.messages.join('; ')} — replay: ${f.replay}`),
        [],
      )
    })
  }
})

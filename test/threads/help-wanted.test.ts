/**
 * The one rule for when a read wants another serving thread's help (src/threads/help-wanted.ts), shared by
 * the NBD threads' nudge and the iSCSI/NFS threads' wake-ups: a read of HELP_BYTES or more; a smaller one
 * once it is the third in a row that starts where the one before ended; never a random small read.
 */
import * as assert from 'node:assert/strict'
import {HELP_AFTER_SEQUENTIAL, HELP_BYTES, HelpWanted} from '../../src/threads/help-wanted'

describe('threads: HelpWanted (when a read is worth waking another thread)', () => {
  it('a large read always; small reads only from the third in a row that continues the last; a seek starts over', () => {
    const h = new HelpWanted()
    assert.equal(h.read(10 << 20, HELP_BYTES), true, 'a large read')
    assert.equal(h.read(0, HELP_BYTES - 1), false, 'a small read elsewhere')
    const small = 32 * 1024
    const got: boolean[] = []
    for (let i = 0; i < 5; i++) got.push(h.read((1 << 30) + i * small, small))
    // The first starts a run (a seek), then HELP_AFTER_SEQUENTIAL continuations before help is wanted.
    assert.deepEqual(got, [false, ...Array(HELP_AFTER_SEQUENTIAL - 1).fill(false), ...Array(5 - HELP_AFTER_SEQUENTIAL).fill(true)])
    assert.equal(h.read(7, small), false, 'a seek ends the run')
    assert.equal(h.read(7 + small, small), false)
    assert.equal(h.read(7 + 2 * small, small), true, 'the third in a row again')
    // Random small reads never want help.
    const r = new HelpWanted()
    for (let i = 0; i < 100; i++) assert.equal(r.read(((i * 7919) % 1000) * 65536 + 512, 4096), false)
  })
})

/**
 * The worker pool keeps the process alive until close() is done, even when replies its workers sent just
 * before close() arrive during it (they used to unref the workers, and Node exited 0 with close() and the
 * command awaiting it still pending: `extract` of a damaged image exited 0, its temporary file left).
 */
import {strict as assert} from 'node:assert'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'

const DIST = path.resolve(__dirname, '..', '..', 'src')

/** Run in a process of its own, with the real pool and the real codec worker: what the CLI does. */
const SCRIPT = `
const [pool_js, worker_js] = process.argv.slice(1)
const {WorkerPool} = require(pool_js)
const pool = new WorkerPool(worker_js, 2)
const task = () => ({op: 'decode', buf: new ArrayBuffer(0), items: []})
Promise.all([pool.run(task()), pool.run(task())]).then(() => {
  for (const p of [pool.run(task()), pool.run(task())]) p.catch(() => undefined)
  // Busy while both replies come back: they wait, undelivered, until close() has begun.
  const until = Date.now() + 200
  while (Date.now() < until);
  pool.close().then(() => process.stdout.write('closed'))
})
`

describe('WorkerPool', function () {
  this.timeout(60_000)

  it('close() keeps the process alive until the workers are gone, when replies arrive during it', () => {
    for (let run = 0; run < 3; run++) {
      const r = spawnSync(process.execPath, ['-e', SCRIPT, path.join(DIST, 'core', 'workerpool.js'), path.join(DIST, 'format', 'codec-worker.js')], {
        encoding: 'utf8',
        timeout: 30_000,
      })
      assert.equal(r.stderr, '')
      assert.equal(r.stdout, 'closed', `run ${run}: the process exited (${r.status}) before close() resolved`)
    }
  })
})

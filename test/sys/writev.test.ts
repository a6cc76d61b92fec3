/**
 * src/sys/writev.ts: after a partial writev(2), the rest of the gather list starts exactly after the
 * bytes written. Checked with real partial writes: a non-blocking FIFO accepts only what its pipe buffer
 * holds (64 KiB by default), so a 200 KiB writev stops in the middle of a buffer.
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {afterWritten} from '../../src/sys/writev'
import {tmpDir} from '../helpers'

describe('sys/writev afterWritten', () => {
  it('cuts a gather list after n bytes: whole buffers dropped, the next one cut, the rest kept', () => {
    const a = Buffer.from('abc')
    const b = Buffer.from('defgh')
    const c = Buffer.from('ij')
    const join = (l: Buffer[]) => Buffer.concat(l).toString()
    assert.equal(join(afterWritten([a, b, c], 0)), 'abcdefghij')
    assert.equal(join(afterWritten([a, b, c], 3)), 'defghij')
    assert.equal(join(afterWritten([a, b, c], 4)), 'efghij')
    assert.equal(join(afterWritten([a, b, c], 9)), 'j')
    assert.deepEqual(afterWritten([a, b, c], 10), [])
    assert.equal(afterWritten([a, b, c], 3)[0], b, 'a buffer not cut is passed on as it is')
  })

  it('resumes real partial writes to a full pipe byte for byte', () => {
    const {dir, cleanup} = tmpDir('writev-')
    const fifo = path.join(dir, 'fifo')
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0)
    const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK)
    try {
      const parts = [crypto.randomBytes(70_001), crypto.randomBytes(5), crypto.randomBytes(130_000)]
      const want = Buffer.concat(parts)
      const got: Buffer[] = []
      let bufs: Buffer[] = parts
      let partial = 0
      while (bufs.length > 0) {
        let n = 0
        try {
          n = fs.writevSync(fd, bufs)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
        }
        const total = bufs.reduce((s, b) => s + b.length, 0)
        if (n < total) partial++
        bufs = afterWritten(bufs, n)
        const chunk = Buffer.alloc(1 << 20)
        const r = fs.readSync(fd, chunk)
        got.push(chunk.subarray(0, r))
      }
      assert.ok(partial >= 2, `expected partial writes, saw ${partial}`)
      assert.ok(Buffer.concat(got).equals(want))
    } finally {
      fs.closeSync(fd)
      cleanup()
    }
  })
})

/**
 * The io_uring layer against this machine's kernel (io_uring is in every kernel ublk runs on, and it needs no
 * module): rings set up and mmapped through koffi, a NOP, IORING_OP_READ of a real file, an SQE128 ring, a
 * full SQ, a message from one ring to another (IORING_OP_MSG_RING), and a completion that arrives later (posted as task_work) waking the event loop through the ring fd.
 */
import {strict as assert} from 'node:assert'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as uring from '../../src/sys/io_uring'
import {AF_UNIX, close, koffi, SOCK_STREAM, socketpair} from '../../src/sys/libc'

describe('io_uring through koffi (this machine\'s kernel)', () => {
  let dir: string
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-uring-'))))
  after(() => fs.rmSync(dir, {recursive: true, force: true}))

  it('sets up and maps the rings; a NOP completes with its user_data (completionsReady until reaped)', () => {
    const ring = new uring.IoUring({entries: 8})
    try {
      assert.equal(ring.sqEntries, 8)
      assert.equal(ring.cqEntries, 16)
      assert.equal(ring.sqeSize, 64)
      const sqe = ring.getSqe()!
      sqe[uring.io_uring_sqe.offsets.opcode] = uring.IORING_OP_NOP
      uring.setUserData(sqe, 0xdeadbeef, 7)
      assert.equal(ring.completionsReady, false)
      assert.equal(ring.submit(1), 1)
      assert.equal(ring.completionsReady, true)
      const got: uring.Cqe[] = []
      assert.equal(ring.reap((c) => got.push(c)), 1)
      assert.deepEqual(got, [{userData: 0xdeadbeef, userDataHigh: 7, res: 0, flags: 0}])
      assert.equal(ring.completionsReady, false)
      assert.equal(ring.reap(() => assert.fail('no more completions')), 0)
    } finally {
      ring.close()
      ring.close() // idempotent
    }
  })

  it('IORING_OP_MSG_RING posts a CQE to another ring (how a busy ublk queue wakes the others), none to the sender unless it fails', () => {
    const a = new uring.IoUring({entries: 4})
    const b = new uring.IoUring({entries: 4})
    try {
      uring.prepMsgRing(a.getSqe()!, b.fd, 0xffff_fff0)
      assert.equal(a.submit(0), 1)
      b.flush()
      assert.equal(b.completionsReady, true)
      const got: uring.Cqe[] = []
      assert.equal(b.reap((c) => got.push(c)), 1)
      assert.deepEqual(got, [{userData: 0xffff_fff0, userDataHigh: 0, res: 0, flags: 0}])
      a.flush()
      assert.equal(a.reap(() => assert.fail('no CQE on the sender when the message went')), 0)
      // To a descriptor that is no ring: the sender gets the failure.
      const fd = fs.openSync(__filename, 'r')
      try {
        uring.prepMsgRing(a.getSqe()!, fd, 0xffff_fff0)
        a.submit(1)
        const failed: uring.Cqe[] = []
        a.reap((c) => failed.push(c))
        assert.equal(failed.length, 1)
        assert.ok(failed[0].res < 0, `res ${failed[0].res}`)
      } finally {
        fs.closeSync(fd)
      }
    } finally {
      a.close()
      b.close()
    }
  })

  it('reads a file at an offset with IORING_OP_READ, on an SQE128 ring', () => {
    const file = path.join(dir, 'data')
    const data = crypto.randomBytes(256 * 1024)
    fs.writeFileSync(file, data)
    const fd = fs.openSync(file, 'r')
    const ring = new uring.IoUring({entries: 4, flags: uring.IORING_SETUP_SQE128})
    try {
      assert.equal(ring.sqeSize, 128)
      const bufs = [Buffer.alloc(4096), Buffer.alloc(65536), Buffer.alloc(100)]
      const offsets = [0, 12345, data.length - 100]
      bufs.forEach((b, i) => {
        const sqe = ring.getSqe()!
        uring.prepRw(sqe, uring.IORING_OP_READ, fd, uring.bufferAddress(b), b.length, offsets[i])
        uring.setUserData(sqe, i)
      })
      ring.submit(3)
      const res = new Map<number, number>()
      while (res.size < 3) {
        ring.reap((c) => res.set(c.userData, c.res))
        if (res.size < 3) ring.waitSync()
      }
      bufs.forEach((b, i) => {
        assert.equal(res.get(i), b.length)
        assert.ok(b.equals(data.subarray(offsets[i], offsets[i] + b.length)), `read ${i} differs`)
      })
      // A read past the end returns 0 bytes; a bad fd returns -EBADF.
      const sqe = ring.getSqe()!
      uring.prepRw(sqe, uring.IORING_OP_READ, 12345, uring.bufferAddress(bufs[2]), 100, 0)
      uring.setUserData(sqe, 9)
      ring.submit(1)
      let r = 0
      ring.reap((c) => (r = c.res))
      assert.equal(r, -9)
    } finally {
      ring.close()
      fs.closeSync(fd)
    }
  })

  it('refuses more SQEs than the ring holds until they are submitted', () => {
    const ring = new uring.IoUring({entries: 2})
    try {
      assert.ok(ring.getSqe())
      assert.ok(ring.getSqe())
      assert.equal(ring.getSqe(), null)
      ring.submit(2)
      ring.reap(() => undefined)
      assert.ok(ring.getSqe())
    } finally {
      ring.close()
    }
  })

  it('wakes the event loop through the ring fd when a pending read completes later', async () => {
    const ring = new uring.IoUring({entries: 4})
    const [a, b] = socketpair(AF_UNIX, SOCK_STREAM)
    const buf = Buffer.alloc(5)
    try {
      const sqe = ring.getSqe()!
      uring.prepRw(sqe, uring.IORING_OP_READ, a, uring.bufferAddress(buf), 5, 0)
      uring.setUserData(sqe, 77)
      ring.submit(0)
      assert.equal(ring.reap(() => undefined), 0) // nothing to read yet
      const got = await new Promise<uring.Cqe>((resolve) => {
        const h = koffi.node.poll(ring.fd, {readable: true}, () => {
          ring.reap((c) => {
            h.close()
            resolve(c)
          })
        })
        setTimeout(() => fs.writeSync(b, 'hello'), 50)
      })
      assert.deepEqual(got, {userData: 77, userDataHigh: 0, res: 5, flags: 0})
      assert.equal(buf.toString(), 'hello')
    } finally {
      ring.close()
      close(a)
      close(b)
    }
  })
})

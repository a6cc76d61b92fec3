/**
 * The kernel NBD backend's ioctl numbers, flags and structs (backends/linux/nbd/abi.ts) against the kernel's
 * own header, include/uapi/linux/nbd.h: parsed as text, and compiled with the C compiler so the real _IO()
 * macro and struct layout decide. The kernel itself only runs in the VM (test/vm/nbd.test.ts).
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as U from '../../backends/linux/nbd/abi'
import * as P from '../../src/serve/nbd/protocol'
import {nbdPartitions, listNbd, freeNbd} from '../../backends/linux/nbd/sysfs'
import {loadBackend} from '../../src/core/backends'
import {hasTool, run} from './fixture'

const HEADER = '/usr/include/linux/nbd.h'
const IOCTLS = [
  'NBD_SET_SOCK', 'NBD_SET_BLKSIZE', 'NBD_SET_SIZE', 'NBD_DO_IT', 'NBD_CLEAR_SOCK', 'NBD_CLEAR_QUE',
  'NBD_PRINT_DEBUG', 'NBD_SET_SIZE_BLOCKS', 'NBD_DISCONNECT', 'NBD_SET_TIMEOUT', 'NBD_SET_FLAGS',
] as const
const FLAGS = ['NBD_FLAG_HAS_FLAGS', 'NBD_FLAG_READ_ONLY', 'NBD_FLAG_SEND_FLUSH', 'NBD_FLAG_SEND_FUA', 'NBD_FLAG_SEND_TRIM', 'NBD_FLAG_CAN_MULTI_CONN'] as const

describe('kernel NBD abi (include/uapi/linux/nbd.h)', () => {
  it('ioctl numbers, flags and magics equal the header text', function () {
    if (!fs.existsSync(HEADER)) this.skip() // linux-libc-dev
    const h = fs.readFileSync(HEADER, 'utf8')
    for (const name of IOCTLS) {
      const m = new RegExp(`#define\\s+${name}\\s+_IO\\(\\s*0x([0-9a-f]+)\\s*,\\s*(\\d+)\\s*\\)`).exec(h)
      assert.ok(m, `${name} not in the header`)
      assert.equal(U[name], (parseInt(m[1], 16) << 8) | Number(m[2]), name)
    }
    for (const name of FLAGS) {
      const m = new RegExp(`#define\\s+${name}\\s+\\(1 << (\\d+)\\)`).exec(h)
      assert.ok(m, `${name} not in the header`)
      assert.equal(U[name], 1 << Number(m[1]), name)
    }
    assert.equal(U.NBD_CMD_FLAG_FUA, 1 << Number(/#define\s+NBD_CMD_FLAG_FUA\s+\(1 << (\d+)\)/.exec(h)![1]))
    // Newer than Debian 12's 6.1 headers (Linux 6.12): compared when the installed header has them.
    for (const name of ['NBD_FLAG_SEND_WRITE_ZEROES', 'NBD_CMD_FLAG_NO_HOLE'] as const) {
      const m = new RegExp(`#define\\s+${name}\\s+\\(1 << (\\d+)\\)`).exec(h)
      if (m) assert.equal(U[name], 1 << Number(m[1]), name)
    }
    assert.equal(U.NBD_REQUEST_MAGIC, parseInt(/#define NBD_REQUEST_MAGIC 0x([0-9a-f]+)/.exec(h)![1], 16))
    assert.equal(U.NBD_REPLY_MAGIC, parseInt(/#define NBD_REPLY_MAGIC 0x([0-9a-f]+)/.exec(h)![1], 16))
  })

  it('compiled against the header: _IO() values, struct sizes and offsets', async function () {
    if (!fs.existsSync(HEADER) || !hasTool('cc')) this.skip()
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-nbd-abi-'))
    try {
      const src = path.join(dir, 'u.c')
      fs.writeFileSync(
        src,
        `#include <stdio.h>\n#include <stddef.h>\n#include <sys/ioctl.h>\n#include <linux/nbd.h>\nint main(void){\n` +
          IOCTLS.map((n) => `printf("${n} %lu\\n", (unsigned long)${n});`).join('\n') +
          `\nprintf("req.size %zu\\n", sizeof(struct nbd_request));` +
          `printf("req.magic %zu\\nreq.type %zu\\nreq.handle %zu\\nreq.from %zu\\nreq.len %zu\\n", offsetof(struct nbd_request, magic), offsetof(struct nbd_request, type), offsetof(struct nbd_request, handle), offsetof(struct nbd_request, from), offsetof(struct nbd_request, len));` +
          `printf("rep.size %zu\\nrep.magic %zu\\nrep.error %zu\\nrep.handle %zu\\n", sizeof(struct nbd_reply), offsetof(struct nbd_reply, magic), offsetof(struct nbd_reply, error), offsetof(struct nbd_reply, handle));` +
          `return 0;}\n`,
      )
      await run('cc', ['-o', path.join(dir, 'u'), src])
      const out = (await run(path.join(dir, 'u'), [])).stdout
      const v = Object.fromEntries(out.trim().split('\n').map((l) => l.split(' ')).map(([k, n]) => [k, Number(n)]))
      for (const n of IOCTLS) assert.equal(U[n], v[n], n)
      assert.deepEqual(
        {size: v['req.size'], magic: v['req.magic'], type: v['req.type'], handle: v['req.handle'], from: v['req.from'], len: v['req.len']},
        U.nbd_request,
      )
      assert.deepEqual({size: v['rep.size'], magic: v['rep.magic'], error: v['rep.error'], handle: v['rep.handle']}, U.nbd_reply)
    } finally {
      fs.rmSync(dir, {recursive: true, force: true})
    }
  })

  it('the kernel structs and the protocol codecs agree: request 28 bytes, simple reply 16, same magics', () => {
    assert.equal(U.nbd_request.size, P.REQUEST_SIZE)
    assert.equal(U.nbd_reply.size, P.SIMPLE_REPLY_SIZE)
    assert.equal(U.NBD_REQUEST_MAGIC, P.NBD_REQUEST_MAGIC)
    assert.equal(U.NBD_REPLY_MAGIC, P.NBD_SIMPLE_REPLY_MAGIC)
    // The kernel's 32-bit type carries NBD_CMD_FLAG_FUA in its upper half: the spec's 16-bit flags field.
    const req = P.encodeRequest(P.NBD_CMD_READ, P.NBD_CMD_FLAG_FUA, 1n, 0, 512)
    assert.equal(req.readUInt32BE(U.nbd_request.type), U.NBD_CMD_FLAG_FUA | P.NBD_CMD_READ)
    assert.equal(U.VDEV_NBD_FLAGS, U.NBD_FLAG_HAS_FLAGS | U.NBD_FLAG_READ_ONLY)
  })

  it('a writable server: no READ_ONLY; flush, FUA, trim and write-zeroes, with the values of nbd.h and the protocol', () => {
    // torvalds/linux include/uapi/linux/nbd.h (6.12+): "#define NBD_FLAG_SEND_WRITE_ZEROES (1 << 6)",
    // "#define NBD_CMD_FLAG_NO_HOLE (1 << 17)"; the protocol's flags are the same bits (doc/proto.md).
    assert.equal(U.NBD_FLAG_SEND_WRITE_ZEROES, 1 << 6)
    assert.equal(U.NBD_FLAG_SEND_WRITE_ZEROES, P.NBD_FLAG_SEND_WRITE_ZEROES)
    assert.equal(U.NBD_CMD_FLAG_NO_HOLE, P.NBD_CMD_FLAG_NO_HOLE << 16)
    for (const n of ['NBD_FLAG_HAS_FLAGS', 'NBD_FLAG_READ_ONLY', 'NBD_FLAG_SEND_FLUSH', 'NBD_FLAG_SEND_FUA', 'NBD_FLAG_SEND_TRIM'] as const) assert.equal(U[n], P[n], n)
    assert.equal(U.kernelNbdFlags(false), U.NBD_FLAG_HAS_FLAGS | U.NBD_FLAG_READ_ONLY)
    const rw = U.kernelNbdFlags(true)
    assert.equal(rw & U.NBD_FLAG_READ_ONLY, 0)
    assert.equal(rw, U.NBD_FLAG_HAS_FLAGS | U.NBD_FLAG_SEND_FLUSH | U.NBD_FLAG_SEND_FUA | U.NBD_FLAG_SEND_TRIM | U.NBD_FLAG_SEND_WRITE_ZEROES)
    // Every command those flags make the kernel send is one the NBD server takes on a writable export.
    assert.deepEqual([P.NBD_CMD_WRITE, P.NBD_CMD_FLUSH, P.NBD_CMD_TRIM, P.NBD_CMD_WRITE_ZEROES], [1, 3, 4, 6])
  })

  it('reads NBD devices and partitions from a sysfs tree', () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-sysblock-'))
    try {
      const mk = (name: string, files: Record<string, string>, subdirs: string[] = []) => {
        fs.mkdirSync(path.join(root, name), {recursive: true})
        for (const [f, c] of Object.entries(files)) fs.writeFileSync(path.join(root, name, f), c)
        for (const d of subdirs) fs.mkdirSync(path.join(root, name, d))
      }
      mk('nbd0', {size: '16384\n', pid: '4242\n'}, ['nbd0p1', 'nbd0p10', 'nbd0p2'])
      mk('nbd1', {size: '0\n'})
      mk('nbd10', {size: '0\n'})
      mk('loop0', {size: '0\n'})
      assert.deepEqual(
        listNbd(root).map((s) => [s.device, s.pid, s.sizeBytes]),
        [
          ['/dev/nbd0', 4242, 16384 * 512],
          ['/dev/nbd1', undefined, 0],
          ['/dev/nbd10', undefined, 0],
        ],
      )
      assert.deepEqual(freeNbd(root).map((s) => s.device), ['/dev/nbd1', '/dev/nbd10'])
      assert.deepEqual(nbdPartitions(0, root), ['/dev/nbd0p1', '/dev/nbd0p2', '/dev/nbd0p10'])
      assert.deepEqual(nbdPartitions(1, root), [])
    } finally {
      fs.rmSync(root, {recursive: true, force: true})
    }
  })

  it('the backend is registered, prefers itself over FUSE, declares serving threads, and says why it is unavailable here', async () => {
    const b = loadBackend('nbd')
    assert.ok(!('error' in b), 'error' in b ? b.error : '')
    assert.equal(b.name, 'nbd')
    assert.equal(b.preference, 1)
    // Takes `attach --overlay` (read-write, served on the main thread).
    assert.equal(b.writable, true)
    // Served by the shared serving threads: 2-3 of them, polling 20 µs (docs/nbd.md).
    assert.equal(b.threadModel.kind, 'serving-threads')
    if (b.threadModel.kind === 'serving-threads') {
      assert.ok(b.threadModel.defaultThreads >= 2 && b.threadModel.defaultThreads <= 3)
      assert.equal(b.threadModel.pollMicroseconds, 20)
    }
    const p = await b.probe()
    if (fs.existsSync('/sys/module/nbd') || fs.existsSync('/dev/nbd0')) return // a host with nbd: probed for real in the VM
    assert.equal(p.available, false)
    assert.match((p as {reason: string}).reason, /nbd kernel module is not loaded/)
  })
})

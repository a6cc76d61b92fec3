/**
 * The FUSE and loop structs: sizes and offsets against the values in the kernel headers
 * (include/uapi/linux/fuse.h 7.45, include/uapi/linux/loop.h), and — where a C compiler and the
 * Linux UAPI headers are installed — against a C program compiled with those very headers.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {execFileSync} from 'node:child_process'
import * as fuse from '../../backends/linux/fuse/abi'
import {ENABLE_URING_PARAMETER, payloadSizeFor, possibleCpus, queuesFor, uringOffered} from '../../backends/linux/fuse/uring'
import * as loop from '../../backends/linux/loop/abi'
import {CStruct} from '../../src/sys/cstruct'

/** [struct, sizeof, {field: offsetof}] as in the headers (x86_64 and aarch64 agree: no long/pointer fields). */
const EXPECTED: Array<[CStruct, number, Record<string, number>]> = [
  [fuse.fuse_in_header, 40, {len: 0, opcode: 4, unique: 8, nodeid: 16, uid: 24, gid: 28, pid: 32, total_extlen: 36, padding: 38}],
  [fuse.fuse_out_header, 16, {len: 0, error: 4, unique: 8}],
  [fuse.fuse_init_in, 64, {major: 0, minor: 4, max_readahead: 8, flags: 12, flags2: 16, unused: 20}],
  [
    fuse.fuse_init_out,
    64,
    {
      major: 0,
      minor: 4,
      max_readahead: 8,
      flags: 12,
      max_background: 16,
      congestion_threshold: 18,
      max_write: 20,
      time_gran: 24,
      max_pages: 28,
      map_alignment: 30,
      flags2: 32,
      max_stack_depth: 36,
      request_timeout: 40,
      unused: 42,
    },
  ],
  [
    fuse.fuse_attr,
    88,
    {ino: 0, size: 8, blocks: 16, atime: 24, mtime: 32, ctime: 40, atimensec: 48, mtimensec: 52, ctimensec: 56, mode: 60, nlink: 64, uid: 68, gid: 72, rdev: 76, blksize: 80, flags: 84},
  ],
  [fuse.fuse_entry_out, 128, {nodeid: 0, generation: 8, entry_valid: 16, attr_valid: 24, entry_valid_nsec: 32, attr_valid_nsec: 36, attr: 40}],
  [fuse.fuse_getattr_in, 16, {getattr_flags: 0, dummy: 4, fh: 8}],
  [fuse.fuse_attr_out, 104, {attr_valid: 0, attr_valid_nsec: 8, dummy: 12, attr: 16}],
  [fuse.fuse_open_in, 8, {flags: 0, open_flags: 4}],
  [fuse.fuse_open_out, 16, {fh: 0, open_flags: 8, backing_id: 12}],
  [fuse.fuse_release_in, 24, {fh: 0, flags: 8, release_flags: 12, lock_owner: 16}],
  [fuse.fuse_flush_in, 24, {fh: 0, unused: 8, padding: 12, lock_owner: 16}],
  [fuse.fuse_read_in, 40, {fh: 0, offset: 8, size: 16, read_flags: 20, lock_owner: 24, flags: 32, padding: 36}],
  [fuse.fuse_write_in, 40, {fh: 0, offset: 8, size: 16, write_flags: 20, lock_owner: 24, flags: 32, padding: 36}],
  [fuse.fuse_write_out, 8, {size: 0, padding: 4}],
  [fuse.fuse_fsync_in, 16, {fh: 0, fsync_flags: 8, padding: 12}],
  [fuse.fuse_fallocate_in, 32, {fh: 0, offset: 8, length: 16, mode: 24, padding: 28}],
  [
    fuse.fuse_setattr_in,
    88,
    {valid: 0, padding: 4, fh: 8, size: 16, lock_owner: 24, atime: 32, mtime: 40, ctime: 48, atimensec: 56, mtimensec: 60, ctimensec: 64, mode: 68, unused4: 72, uid: 76, gid: 80, unused5: 84},
  ],
  [fuse.fuse_kstatfs, 80, {blocks: 0, bfree: 8, bavail: 16, files: 24, ffree: 32, bsize: 40, namelen: 44, frsize: 48, padding: 52, spare: 56}],
  [fuse.fuse_statfs_out, 80, {st: 0}],
  [fuse.fuse_interrupt_in, 8, {unique: 0}],
  [fuse.fuse_forget_in, 8, {nlookup: 0}],
  [fuse.fuse_batch_forget_in, 8, {count: 0, dummy: 4}],
  [fuse.fuse_forget_one, 16, {nodeid: 0, nlookup: 8}],
  [fuse.fuse_dirent, 24, {ino: 0, off: 8, namelen: 16, type: 20}],
  [
    loop.loop_info64,
    232,
    {
      lo_device: 0,
      lo_inode: 8,
      lo_rdevice: 16,
      lo_offset: 24,
      lo_sizelimit: 32,
      lo_number: 40,
      lo_encrypt_type: 44,
      lo_encrypt_key_size: 48,
      lo_flags: 52,
      lo_file_name: 56,
      lo_crypt_name: 120,
      lo_encrypt_key: 184,
      lo_init: 216,
    },
  ],
  [loop.loop_config, 304, {fd: 0, block_size: 4, info: 8, __reserved: 240}],
]

/** Fields newer than an installed header may be (minor version that added them). */
const SINCE: Record<string, number> = {
  'fuse_init_out.max_stack_depth': 40,
  'fuse_init_out.request_timeout': 43,
  'fuse_init_out.unused': 43, // u32[7] at 36 before 7.43
  'fuse_open_out.backing_id': 40,
}

describe('FUSE and loop ABI (fuse.h 7.45, loop.h)', () => {
  for (const [s, size, offsets] of EXPECTED) {
    it(`${s.name}: size ${size} and every field offset`, () => {
      assert.equal(s.size, size)
      assert.deepEqual({...s.offsets}, offsets)
    })
  }

  it('nested offsets and dirent padding', () => {
    assert.equal(fuse.fuse_entry_out.offsetOf('attr.size'), 48)
    assert.equal(fuse.fuse_attr_out.offsetOf('attr.mode'), 76)
    assert.equal(loop.loop_config.offsetOf('info.lo_flags'), 60)
    assert.equal(fuse.FUSE_NAME_OFFSET, fuse.fuse_dirent.size)
    const d = fuse.encodeDirent(2, 3, fuse.DT_REG, 'disk')
    assert.equal(d.length, 32) // 24 + 4 rounded up to 8
    assert.equal(d.readUInt32LE(16), 4)
    assert.equal(d.subarray(24, 28).toString(), 'disk')
    assert.equal(fuse.encodeDirent(1, 1, fuse.DT_DIR, '.').length, 32)
  })

  it('encode/decode round trip keeps every field', () => {
    const v = {major: 7, minor: 45, max_readahead: 1 << 20, flags: 0x8040_0001, max_background: 64, congestion_threshold: 48, max_write: 4096, time_gran: 1, max_pages: 256, map_alignment: 0, flags2: 3, max_stack_depth: 0, request_timeout: 0}
    const b = fuse.fuse_init_out.encode(v)
    assert.equal(b.length, 64)
    assert.deepEqual(fuse.fuse_init_out.decode(b), v)
    assert.equal(b.readUInt16LE(28), 256)
  })

  it('FUSE over io_uring (fuse.h 7.42): the ring entry header, the SQE command, the INIT flag', () => {
    // Newer than Debian 12's <linux/fuse.h> (7.38), so checked against the kernel's header by value only.
    assert.equal(fuse.fuse_uring_ent_in_out.size, 32)
    assert.deepEqual({...fuse.fuse_uring_ent_in_out.offsets}, {flags: 0, commit_id: 8, payload_sz: 16, padding: 20, reserved: 24})
    assert.equal(fuse.fuse_uring_req_header.size, 288)
    assert.deepEqual({...fuse.fuse_uring_req_header.offsets}, {in_out: 0, op_in: 128, ring_ent_in_out: 256})
    assert.equal(fuse.fuse_uring_req_header.offsetOf('ring_ent_in_out.payload_sz'), 272)
    assert.equal(fuse.fuse_uring_cmd_req.size, 24) // fits the SQE128 command area (80 bytes)
    assert.deepEqual({...fuse.fuse_uring_cmd_req.offsets}, {flags: 0, commit_id: 8, qid: 16, padding: 18})
    assert.equal([fuse.FUSE_IO_URING_CMD_REGISTER, fuse.FUSE_IO_URING_CMD_COMMIT_AND_FETCH].join(), '1,2')
    assert.equal(2 ** 32 * fuse.FuseInitFlag2.OVER_IO_URING, 2 ** 41) // FUSE_OVER_IO_URING (1ULL << 41)
  })

  it('FUSE over io_uring: one queue per possible CPU, the payload the kernel asks for, the switches', () => {
    // /sys/devices/system/cpu/possible as the kernel writes it (cpulist format).
    assert.equal(possibleCpus('0\n'), 1)
    assert.equal(possibleCpus('0-1\n'), 2)
    assert.equal(possibleCpus('0-3,8-11\n'), 8)
    assert.equal(possibleCpus('0-63'), 64)
    assert.equal(possibleCpus(''), 0) // unreadable or empty: io_uring is not used
    assert.equal(possibleCpus(), Number(fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim().split('-').pop()) + 1)
    // fuse_uring_create: max(FUSE_MIN_READ_BUFFER, max_write, max_pages * PAGE_SIZE).
    assert.equal(payloadSizeFor(256), 1 << 20)
    assert.equal(payloadSizeFor(1), fuse.FUSE_MIN_READ_BUFFER)
    assert.equal(payloadSizeFor(32, 1 << 20), 1 << 20)
    // Every thread on every queue of a small machine; round robin beyond 8 queues (entries = queues × depth).
    assert.deepEqual(queuesFor(1, 2, 2), [0, 1])
    assert.deepEqual(queuesFor(0, 1, 8), [0, 1, 2, 3, 4, 5, 6, 7])
    assert.deepEqual(queuesFor(1, 3, 12), [1, 4, 7, 10])
    assert.deepEqual(queuesFor(12, 16, 9), [3]) // more threads than queues: none left without one
    const spread = [0, 1, 2].flatMap((t) => queuesFor(t, 3, 64))
    assert.deepEqual(spread.sort((a, b) => a - b), Array.from({length: 64}, (_, q) => q))
    assert.deepEqual(uringOffered({VDEV_FUSE_URING: '0'}), {offered: false, reason: 'VDEV_FUSE_URING=0'})
    const here = uringOffered({})
    if (!fs.existsSync(ENABLE_URING_PARAMETER)) assert.match(here.reason, /no FUSE over io_uring/)
    else assert.equal(here.offered, fs.readFileSync(ENABLE_URING_PARAMETER, 'utf8').trim() === 'Y', here.reason)
  })

  it('FUSE_DEV_IOC_CLONE is _IOR(229, 0, uint32_t)', () => {
    // include/uapi/asm-generic/ioctl.h: dir(2=read)<<30 | size<<16 | type<<8 | nr
    assert.equal(fuse.FUSE_DEV_IOC_CLONE, ((2 << 30) | (4 << 16) | (229 << 8) | 0) >>> 0)
  })

  const cc = ['/usr/bin/cc', '/usr/bin/gcc'].find((p) => fs.existsSync(p))
  const headers = fs.existsSync('/usr/include/linux/fuse.h') && fs.existsSync('/usr/include/linux/loop.h')
  it('matches a C program compiled against the installed <linux/fuse.h> and <linux/loop.h>', function () {
    if (!cc || !headers) this.skip() // needs gcc + linux-libc-dev; the literal values above still apply
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-abi-'))
    try {
      const lines: string[] = ['#include <stdio.h>', '#include <stddef.h>', '#include <stdint.h>', '#include <linux/ioctl.h>', '#include <linux/fuse.h>', '#include <linux/loop.h>', '#include <linux/falloc.h>', 'int main(void) {']
      for (const [s, , offsets] of EXPECTED) {
        lines.push(`printf("%s %zu\\n", "${s.name}", sizeof(struct ${s.name}));`)
        for (const f of Object.keys(offsets)) {
          const since = SINCE[`${s.name}.${f}`]
          if (since) lines.push(`#if FUSE_KERNEL_MINOR_VERSION >= ${since}`)
          lines.push(`printf("%s %zu\\n", "${s.name}.${f}", offsetof(struct ${s.name}, ${f}));`)
          if (since) lines.push('#endif')
        }
      }
      lines.push('printf("FUSE_DEV_IOC_CLONE %lu\\n", (unsigned long)FUSE_DEV_IOC_CLONE);')
      lines.push('printf("LOOP_CONFIGURE %d\\nLOOP_CTL_GET_FREE %d\\nLOOP_CLR_FD %d\\n", LOOP_CONFIGURE, LOOP_CTL_GET_FREE, LOOP_CLR_FD);')
      lines.push('printf("LO_FLAGS %d %d %d %d\\n", LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR, LO_FLAGS_PARTSCAN, LO_FLAGS_DIRECT_IO);')
      lines.push('printf("WRITE_BITS %d %d %d %d %d\\n", FATTR_SIZE, FUSE_FSYNC_FDATASYNC, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE);')
      lines.push('return 0; }')
      fs.writeFileSync(path.join(dir, 'probe.c'), lines.join('\n'))
      execFileSync(cc!, ['-o', path.join(dir, 'probe'), path.join(dir, 'probe.c')], {stdio: 'pipe'})
      const out = execFileSync(path.join(dir, 'probe'), {encoding: 'utf8'})
      const got = new Map(out.trim().split('\n').map((l) => {
        const i = l.indexOf(' ')
        return [l.slice(0, i), l.slice(i + 1)] as [string, string]
      }))
      let checked = 0
      for (const [s, size, offsets] of EXPECTED) {
        assert.equal(Number(got.get(s.name)), size, `sizeof(struct ${s.name})`)
        for (const [f, off] of Object.entries(offsets)) {
          const v = got.get(`${s.name}.${f}`)
          if (v === undefined) continue // field newer than the installed header
          assert.equal(Number(v), off, `offsetof(struct ${s.name}, ${f})`)
          checked++
        }
      }
      assert.ok(checked > 100, `only ${checked} offsets checked`)
      assert.equal(Number(got.get('FUSE_DEV_IOC_CLONE')), fuse.FUSE_DEV_IOC_CLONE)
      assert.equal(Number(got.get('LOOP_CONFIGURE')), loop.LOOP_CONFIGURE)
      assert.equal(Number(got.get('LOOP_CTL_GET_FREE')), loop.LOOP_CTL_GET_FREE)
      assert.equal(Number(got.get('LOOP_CLR_FD')), loop.LOOP_CLR_FD)
      assert.equal(got.get('WRITE_BITS'), `${fuse.FATTR_SIZE} ${fuse.FUSE_FSYNC_FDATASYNC} ${fuse.FALLOC_FL_KEEP_SIZE} ${fuse.FALLOC_FL_PUNCH_HOLE} ${fuse.FALLOC_FL_ZERO_RANGE}`)
      assert.equal(got.get('LO_FLAGS'), `${loop.LO_FLAGS_READ_ONLY} ${loop.LO_FLAGS_AUTOCLEAR} ${loop.LO_FLAGS_PARTSCAN} ${loop.LO_FLAGS_DIRECT_IO}`)
    } finally {
      fs.rmSync(dir, {recursive: true, force: true})
    }
  })
})

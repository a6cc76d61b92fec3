/**
 * src/sys/ioctl.ts encodes request numbers as include/uapi/asm-generic/ioctl.h does: against known values,
 * against the C compiler expanding the kernel headers' own macros, and as the interface files use it.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {IO, IOC, IOR, IOW, IOWR, iocNr} from '../../src/sys/ioctl'
import {BLKGETSIZE64, BLKSSZGET} from '../../src/sys/blockdev'
import * as fuse from '../../backends/linux/fuse/abi'
import * as loop from '../../backends/linux/loop/abi'
import * as nbd from '../../backends/linux/nbd/abi'
import * as ublk from '../../backends/linux/ublk/abi'
import {tmpDir} from '../helpers'

const u = 'u'.charCodeAt(0)

/** name, our encoding, the value the kernel headers give, and the C expression (header's own macro). */
const KNOWN: {name: string; ours: number; value: number; c: string}[] = [
  {name: 'BLKGETSIZE64', ours: IOR(0x12, 114, 8), value: 0x80081272, c: 'BLKGETSIZE64'},
  {name: 'BLKSSZGET', ours: IO(0x12, 104), value: 0x1268, c: 'BLKSSZGET'},
  {name: 'BLKBSZSET', ours: IOW(0x12, 113, 8), value: 0x40081271, c: 'BLKBSZSET'},
  // loop.h writes its numbers plainly (0x4C00 | n), which is what _IO('L', n) encodes.
  {name: 'LOOP_CONFIGURE', ours: IO(0x4c, 0x0a), value: 0x4c0a, c: 'LOOP_CONFIGURE'},
  {name: 'FUSE_DEV_IOC_CLONE', ours: IOR(229, 0, 4), value: 0x8004e500, c: 'FUSE_DEV_IOC_CLONE'},
  {name: 'NBD_SET_SOCK', ours: IO(0xab, 0), value: 0xab00, c: 'NBD_SET_SOCK'},
  {name: 'NBD_DO_IT', ours: IO(0xab, 3), value: 0xab03, c: 'NBD_DO_IT'},
  {name: 'NBD_SET_FLAGS', ours: IO(0xab, 10), value: 0xab0a, c: 'NBD_SET_FLAGS'},
  // ublk_cmd.h defines UBLK_U_* as below; an older installed header may lack them, so spell the macro out.
  {name: 'UBLK_U_CMD_GET_DEV_INFO', ours: IOR(u, 0x02, 32), value: 0x80207502, c: "_IOR('u', UBLK_CMD_GET_DEV_INFO, struct ublksrv_ctrl_cmd)"},
  {name: 'UBLK_U_CMD_ADD_DEV', ours: IOWR(u, 0x04, 32), value: 0xc0207504, c: "_IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd)"},
  {name: 'UBLK_U_CMD_GET_FEATURES', ours: IOR(u, 0x13, 32), value: 0x80207513, c: "_IOR('u', 0x13, struct ublksrv_ctrl_cmd)"},
  {name: 'UBLK_U_IO_FETCH_REQ', ours: IOWR(u, 0x20, 16), value: 0xc0107520, c: "_IOWR('u', UBLK_IO_FETCH_REQ, struct ublksrv_io_cmd)"},
]
const HEADERS = ['sys/ioctl.h', 'linux/fs.h', 'linux/loop.h', 'linux/fuse.h', 'linux/nbd.h', 'linux/ublk_cmd.h']

function hasCc(): boolean {
  const linux = HEADERS.filter((h) => h.startsWith('linux/'))
  return spawnSync('cc', ['--version']).status === 0 && linux.every((h) => fs.existsSync(path.join('/usr/include', h)))
}

describe('ioctl request numbers (src/sys/ioctl.ts)', () => {
  it('equal the known values', () => {
    for (const k of KNOWN) assert.equal(k.ours, k.value, `${k.name}: 0x${k.ours.toString(16)}`)
  })

  it('equal the kernel headers compiled by the C compiler', function () {
    if (!hasCc()) this.skip() // needs cc and linux-libc-dev
    const t = tmpDir('vdev-ioctl-')
    try {
      const src = path.join(t.dir, 'ioctl.c')
      fs.writeFileSync(
        src,
        `#include <stdio.h>\n${HEADERS.map((h) => `#include <${h}>`).join('\n')}\nint main(void) {\n` +
          KNOWN.map((k) => `  printf("%s %lu\\n", "${k.name}", (unsigned long)(${k.c}));`).join('\n') +
          '\n  return 0;\n}\n',
      )
      const cc = spawnSync('cc', ['-o', path.join(t.dir, 'ioctl'), src], {encoding: 'utf8'})
      assert.equal(cc.status, 0, cc.stderr)
      const out = spawnSync(path.join(t.dir, 'ioctl'), {encoding: 'utf8'}).stdout
      const header = new Map(out.trim().split('\n').map((l) => l.split(' ')).map(([n, v]) => [n, Number(v)]))
      for (const k of KNOWN) assert.equal(k.ours, header.get(k.name), k.name)
    } finally {
      t.cleanup()
    }
  })

  it('are what the interface files use', () => {
    assert.equal(BLKGETSIZE64, 0x80081272)
    assert.equal(BLKSSZGET, 0x1268)
    assert.equal(loop.LOOP_CONFIGURE, 0x4c0a)
    assert.equal(fuse.FUSE_DEV_IOC_CLONE, 0x8004e500)
    assert.equal(nbd.NBD_SET_SOCK, 0xab00)
    assert.equal(nbd.NBD_DO_IT, 0xab03)
    assert.equal(ublk.UBLK_U_CMD_ADD_DEV, 0xc0207504)
    assert.equal(ublk.UBLK_U_IO_FETCH_REQ, 0xc0107520)
    assert.equal(ublk.legacyOpcode(ublk.UBLK_U_CMD_GET_FEATURES), ublk.UBLK_CMD_GET_FEATURES)
  })

  it('_IOC_NR takes the number back; fields that do not fit are refused', () => {
    assert.equal(iocNr(IOWR(u, 0x21, 16)), 0x21)
    assert.equal(IOC(3, 0xff, 0xff, 0x3fff), 0xffffffff)
    assert.throws(() => IOR(0x100, 0, 4), RangeError)
    assert.throws(() => IO(0x12, 256), RangeError)
    assert.throws(() => IOR(0x12, 1, 1 << 14), RangeError)
    assert.throws(() => IOW(0x12, 1, -1), RangeError)
  })
})

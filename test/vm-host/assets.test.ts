/**
 * The VM builder's own parts, on the host: the newc cpio writer read back by the real cpio(1), and the
 * modinfo `depends=` reader on a module-like string table.
 */
import {strict as assert} from 'node:assert'
import {execFileSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {modinfoDepends} from './assets'
import {cpioNewc} from './cpio'

describe('VM initramfs builder', () => {
  it('writes a newc archive that GNU cpio lists and extracts byte for byte', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-cpio-'))
    try {
      const data = Buffer.from('#!/bin/sh\necho odd length file\n')
      const big = Buffer.alloc(70001, 7)
      const archive = cpioNewc([
        {name: 'bin', mode: 0o40755},
        {name: 'bin/init', mode: 0o100755, data},
        {name: 'modules', mode: 0o40755},
        {name: 'modules/x.ko', mode: 0o100644, data: big},
      ])
      assert.equal(archive.length % 4, 0)
      const file = path.join(dir, 'a.cpio')
      fs.writeFileSync(file, archive)
      const list = execFileSync('cpio', ['-it', '--quiet', '-F', file], {encoding: 'utf8'}).trim().split('\n')
      assert.deepEqual(list, ['bin', 'bin/init', 'modules', 'modules/x.ko'])
      const out = path.join(dir, 'out')
      fs.mkdirSync(out)
      execFileSync('cpio', ['-idm', '--quiet', '-F', file], {cwd: out})
      assert.ok(fs.readFileSync(path.join(out, 'bin/init')).equals(data))
      assert.equal(fs.statSync(path.join(out, 'bin/init')).mode & 0o777, 0o755)
      assert.ok(fs.readFileSync(path.join(out, 'modules/x.ko')).equals(big))
    } finally {
      fs.rmSync(dir, {recursive: true, force: true})
    }
  })

  it('reads depends= from .modinfo strings, normalising - to _', () => {
    const ko = Buffer.from('\x7fELF....\0license=GPL\0depends=sunrpc,nfs-acl,grace\0name=lockd\0vermagic=6.12\0')
    assert.deepEqual(modinfoDepends(ko), ['sunrpc', 'nfs_acl', 'grace'])
    assert.deepEqual(modinfoDepends(Buffer.from('\0depends=\0name=loop\0')), [])
    assert.deepEqual(modinfoDepends(Buffer.from('\0name=virtio_rng\0')), [])
  })
})

/**
 * backends/linux/iscsi/sysfs.ts on a fake sysfs tree laid out as scsi_transport_iscsi and sd lay it out:
 * /sys/class/iscsi_session/sessionN/{targetname,state,device/targetH:C:T/H:C:T:L/block/sdX}, and
 * /sys/block/sdX/{size,sdXK}. The real tree is exercised in the VM (test/vm/iscsi-backend.test.ts).
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {backend} from '../../backends/linux/iscsi'
import {diskBytes, diskPartitions, listSessions, sessionsOf} from '../../backends/linux/iscsi/sysfs'

describe('iscsi backend: sysfs', () => {
  let root: string
  const w = (p: string, text: string) => {
    fs.mkdirSync(path.dirname(path.join(root, p)), {recursive: true})
    fs.writeFileSync(path.join(root, p), text)
  }
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-iscsi-sysfs-'))
    w('class/session3/targetname', 'iqn.2026-01.dev.vdev:attach.vdev0.0a1b2c3d\n')
    w('class/session3/state', 'LOGGED_IN\n')
    fs.mkdirSync(path.join(root, 'class/session3/device/target3:0:0/3:0:0:0/block/sdb'), {recursive: true})
    w('class/session3/device/target3:0:0/3:0:0:0/vendor', 'VDEV\n')
    w('class/session10/targetname', 'iqn.2003-01.org.other:disk\n')
    w('class/session10/state', 'FAILED\n')
    fs.mkdirSync(path.join(root, 'class/session10/device'), {recursive: true})
    w('class/other', '')
    w('block/sdb/size', '16384\n')
    for (const n of ['sdb10', 'sdb2', 'sdb1', 'queue', 'holders']) fs.mkdirSync(path.join(root, 'block/sdb', n), {recursive: true})
  })
  after(() => fs.rmSync(root, {recursive: true, force: true}))

  it('lists sessions by id with their target, state and disks', () => {
    assert.deepEqual(listSessions(path.join(root, 'class')), [
      {sid: 3, targetName: 'iqn.2026-01.dev.vdev:attach.vdev0.0a1b2c3d', state: 'LOGGED_IN', disks: ['sdb']},
      {sid: 10, targetName: 'iqn.2003-01.org.other:disk', state: 'FAILED', disks: []},
    ])
    assert.deepEqual(sessionsOf('iqn.2003-01.org.other:disk', path.join(root, 'class')).map((s) => s.sid), [10])
    assert.deepEqual(sessionsOf('iqn.none', path.join(root, 'class')), [])
    assert.deepEqual(listSessions(path.join(root, 'missing')), [])
  })

  it('gives the disk size in bytes and its partitions in order', () => {
    assert.equal(diskBytes('sdb', path.join(root, 'block')), 16384 * 512)
    assert.equal(diskBytes('sdz', path.join(root, 'block')), 0)
    assert.deepEqual(diskPartitions('sdb', path.join(root, 'block')), ['/dev/sdb1', '/dev/sdb2', '/dev/sdb10'])
  })

  it('declares serving threads and comes after ublk and NBD in auto', () => {
    assert.equal(backend.threadModel.kind, 'serving-threads')
    assert.equal(backend.preference, 2)
  })

  it('cleanup ignores state that is not an iSCSI attach of vdev', async () => {
    const lines: string[] = []
    await backend.cleanup({}, (l) => lines.push(l))
    await backend.cleanup({targetName: 'iqn.2003-01.org.other:disk'}, (l) => lines.push(l))
    assert.deepEqual(lines, [])
  })
})

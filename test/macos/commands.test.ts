/**
 * Every command the macOS backend runs, byte for byte (they cannot be run here: no macOS).
 */
import * as assert from 'node:assert/strict'
import {
  attachToolFor,
  diskutilImageAttachArgv,
  hdiutilAttachArgv,
  hdiutilDetachArgv,
  hdiutilInfoArgv,
  mountNfsArgv,
  parseProductVersion,
  rawDeviceOf,
  swVersArgv,
  umountArgv,
} from '../../backends/macos/nfs/commands'
import {servedFileName} from '../../backends/macos/nfs'

describe('macOS backend: command lines', () => {
  it('mount_nfs: NFS v3 over TCP, read-only, no locks, MOUNT and NFS on the one port', () => {
    assert.deepEqual(mountNfsArgv(49152, '/var/run/vdev/vdev3/nfs'), [
      '/sbin/mount_nfs',
      '-o',
      'ro,nolocks,vers=3,tcp,port=49152,mountport=49152,soft,intr',
      '127.0.0.1:/',
      '/var/run/vdev/vdev3/nfs',
    ])
    // Over an overlay: read-write, nothing else changes.
    assert.deepEqual(mountNfsArgv(49152, '/m', '/', {readWrite: true})[2], 'rw,nolocks,vers=3,tcp,port=49152,mountport=49152,soft,intr')
    assert.throws(() => mountNfsArgv(0, '/x'), RangeError)
    assert.throws(() => mountNfsArgv(65536, '/x'), RangeError)
  })

  it('hdiutil attach: read-only raw disk, nothing mounted, no verify or fsck, plist output', () => {
    assert.deepEqual(hdiutilAttachArgv('/var/run/vdev/vdev3/nfs/disk with space.img'), [
      '/usr/bin/hdiutil',
      'attach',
      '-readonly',
      '-nomount',
      '-noverify',
      '-noautofsck',
      '-imagekey',
      'diskimage-class=CRawDiskImage',
      '-plist',
      '/var/run/vdev/vdev3/nfs/disk with space.img',
    ])
  })

  it('hdiutil attach over an overlay: -readwrite in place of -readonly, the rest the same', () => {
    const ro = hdiutilAttachArgv('/r/nfs/disk.img')
    const rw = hdiutilAttachArgv('/r/nfs/disk.img', {readWrite: true})
    assert.equal(rw[2], '-readwrite')
    assert.deepEqual([...rw.slice(0, 2), ...rw.slice(3)], [...ro.slice(0, 2), ...ro.slice(3)])
    assert.deepEqual(diskutilImageAttachArgv('/r/nfs/disk.img', {readWrite: true}), ['/usr/sbin/diskutil', 'image', 'attach', '--noMount', '--plist', '/r/nfs/disk.img'])
  })

  it('diskutil image attach (macOS 26+): read-only, nothing mounted, plist output', () => {
    assert.deepEqual(diskutilImageAttachArgv('/r/nfs/disk.img'), [
      '/usr/sbin/diskutil',
      'image',
      'attach',
      '--readOnly',
      '--noMount',
      '--plist',
      '/r/nfs/disk.img',
    ])
  })

  it('detach, unmount, info and sw_vers', () => {
    assert.deepEqual(hdiutilDetachArgv('/dev/disk4', false), ['/usr/bin/hdiutil', 'detach', '/dev/disk4'])
    assert.deepEqual(hdiutilDetachArgv('/dev/disk4', true), ['/usr/bin/hdiutil', 'detach', '/dev/disk4', '-force'])
    assert.deepEqual(umountArgv('/r/nfs', false), ['/sbin/umount', '/r/nfs'])
    assert.deepEqual(umountArgv('/r/nfs', true), ['/sbin/umount', '-f', '/r/nfs'])
    assert.deepEqual(hdiutilInfoArgv(), ['/usr/bin/hdiutil', 'info', '-plist'])
    assert.deepEqual(swVersArgv(), ['/usr/bin/sw_vers', '-productVersion'])
  })

  it('chooses diskutil from macOS 26 on, hdiutil before and when the version is unknown', () => {
    assert.equal(parseProductVersion('26.0.1\n'), 26)
    assert.equal(parseProductVersion('15.5'), 15)
    assert.equal(parseProductVersion('10.15.7\n'), 10)
    assert.equal(parseProductVersion('ProductVersion: 15.5'), undefined)
    assert.equal(parseProductVersion(''), undefined)
    assert.equal(attachToolFor(26), 'diskutil')
    assert.equal(attachToolFor(27), 'diskutil')
    assert.equal(attachToolFor(15), 'hdiutil')
    assert.equal(attachToolFor(undefined), 'hdiutil')
  })

  it('raw device nodes and the served file name', () => {
    assert.equal(rawDeviceOf('/dev/disk4'), '/dev/rdisk4')
    assert.equal(rawDeviceOf('/dev/disk12s3'), '/dev/rdisk12s3')
    assert.throws(() => rawDeviceOf('/dev/rdisk4'), RangeError)
    assert.throws(() => rawDeviceOf('disk4'), RangeError)
    assert.equal(servedFileName('/images/Seagate ST3500.vdimg'), 'Seagate ST3500.img')
    assert.equal(servedFileName('/images/floppy.VDIMG'), 'floppy.img')
    assert.equal(servedFileName('/images/raw.bin'), 'raw.bin.img')
  })
})

/**
 * Every macOS command the backend runs, built as an argv array by a pure function (spawned with execFile,
 * never through a shell). Paths are absolute so that a PATH entry cannot substitute a tool. Option
 * spellings follow the tools' manual pages: mount_nfs(8), hdiutil(1), diskutil(8), umount(8), sw_vers(1).
 */

export const MOUNT_NFS = '/sbin/mount_nfs'
export const UMOUNT = '/sbin/umount'
export const HDIUTIL = '/usr/bin/hdiutil'
export const DISKUTIL = '/usr/sbin/diskutil'
export const SW_VERS = '/usr/bin/sw_vers'

/** macOS 26 (Tahoe) is the first with `diskutil image attach`; hdiutil attach is its predecessor. */
export const DISKUTIL_IMAGE_SINCE = 26

/**
 * mount_nfs(8): NFS v3 over TCP to our loopback server, read-only (read-write over an overlay:
 * `readWrite`), no NLM locking (the server offers none), MOUNT and NFS both on the one port we listen on.
 * `soft,intr` make I/O fail instead of hanging forever if the server dies, so `hdiutil detach -force` and
 * `umount -f` can still clean up.
 */
export function mountNfsArgv(port: number, mountPoint: string, exportPath = '/', opts: {readWrite?: boolean} = {}): string[] {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`bad port ${port}`)
  return [
    MOUNT_NFS,
    '-o',
    `${opts.readWrite ? 'rw' : 'ro'},nolocks,vers=3,tcp,port=${port},mountport=${port},soft,intr`,
    `127.0.0.1:${exportPath}`,
    mountPoint,
  ]
}

/** umount(8) of the NFS mount; -f forces it when the server is gone or files are open. */
export function umountArgv(mountPoint: string, force: boolean): string[] {
  return force ? [UMOUNT, '-f', mountPoint] : [UMOUNT, mountPoint]
}

/**
 * hdiutil(1) attach of the served file as a raw disk: read-only (`-readonly`; over an overlay,
 * `readWrite`, `-readwrite`: the served file is writable and the disk takes writes), no volume mounted,
 * no verification, no fsck, the raw-image class forced (the file has no UDIF header to recognise), plist
 * output.
 */
export function hdiutilAttachArgv(file: string, opts: {readWrite?: boolean} = {}): string[] {
  return [
    HDIUTIL,
    'attach',
    opts.readWrite ? '-readwrite' : '-readonly',
    '-nomount',
    '-noverify',
    '-noautofsck',
    '-imagekey',
    'diskimage-class=CRawDiskImage',
    '-plist',
    file,
  ]
}

/**
 * diskutil(8) `image attach` (macOS 26+): read-only (without `--readOnly` over an overlay: the writable
 * file attaches read-write), nothing mounted, plist output. Raw files attach as raw.
 */
export function diskutilImageAttachArgv(file: string, opts: {readWrite?: boolean} = {}): string[] {
  return [DISKUTIL, 'image', 'attach', ...(opts.readWrite ? [] : ['--readOnly']), '--noMount', '--plist', file]
}

/** hdiutil(1) detach of the disk (works for disks attached by either tool); -force for --force. */
export function hdiutilDetachArgv(device: string, force: boolean): string[] {
  return force ? [HDIUTIL, 'detach', device, '-force'] : [HDIUTIL, 'detach', device]
}

/** hdiutil(1) info -plist: every attached image, for `vdev list` to cross-check the registry. */
export function hdiutilInfoArgv(): string[] {
  return [HDIUTIL, 'info', '-plist']
}

export function swVersArgv(): string[] {
  return [SW_VERS, '-productVersion']
}

/** "26.0.1\n" → 26; undefined when it is not a version. */
export function parseProductVersion(out: string): number | undefined {
  const m = /^\s*(\d+)(\.\d+)*\s*$/.exec(out)
  return m ? Number(m[1]) : undefined
}

/** Which attach command to use on this macOS major version. */
export function attachToolFor(major: number | undefined): 'diskutil' | 'hdiutil' {
  return major !== undefined && major >= DISKUTIL_IMAGE_SINCE ? 'diskutil' : 'hdiutil'
}

/** /dev/disk4 → /dev/rdisk4 (the raw, unbuffered node; character device). */
export function rawDeviceOf(device: string): string {
  const m = /^\/dev\/(disk\d+(s\d+)*)$/.exec(device)
  if (!m) throw new RangeError(`not a disk device: ${device}`)
  return `/dev/r${m[1]}`
}

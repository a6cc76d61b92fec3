/**
 * The FUSE control file system (Documentation/filesystems/fuse.rst, "Control filesystem"): each
 * connection is a directory /sys/fs/fuse/connections/<dev> whose `abort` file fails every request
 * now and later — the way out when a server hangs or is stuck, where unmounting alone would wait.
 */
import * as fs from 'node:fs'
import * as libc from '../../../src/sys/libc'
import {readMountinfo, type MountEntry} from '../../../src/sys/mountinfo'

export const FUSECTL_DIR = '/sys/fs/fuse/connections'

/**
 * The connection id of the FUSE mount at `dir`: the superblock's device number as the kernel prints a
 * dev_t (major << 20 | minor), which is the directory name under /sys/fs/fuse/connections.
 */
export function connectionOfMount(dir: string, mounts: MountEntry[] = readMountinfo()): number | undefined {
  // The last mount at a path is the visible one.
  const m = mounts.filter((x) => x.mountpoint === dir && (x.fstype === 'fuse' || x.fstype.startsWith('fuse.'))).pop()
  return m ? m.major * 2 ** 20 + m.minor : undefined
}

function fusectlMounted(): boolean {
  return readMountinfo().some((m) => m.mountpoint === FUSECTL_DIR && m.fstype === 'fusectl')
}

/** Mount fusectl if nobody has (systemd normally does; minimal systems and containers may not). */
export function ensureFusectl(log: (line: string) => void = () => {}): boolean {
  if (fusectlMounted()) return true
  try {
    libc.mount('fusectl', FUSECTL_DIR, 'fusectl', 0, '')
    log(`fusectl mounted at ${FUSECTL_DIR}`)
    return true
  } catch (err) {
    log(`cannot mount fusectl at ${FUSECTL_DIR}: ${(err as Error).message}`)
    return false
  }
}

/** Abort connection `id`: pending and future requests fail (ECONNABORTED/ENOTCONN), readers unblock. */
export function abortConnection(id: number, log: (line: string) => void = () => {}): boolean {
  if (!ensureFusectl(log)) return false
  const file = `${FUSECTL_DIR}/${id}/abort`
  try {
    fs.writeFileSync(file, '1')
    log(`fuse: connection ${id} aborted`)
    return true
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'ENOENT') log(`fuse: cannot abort connection ${id}: ${code}`)
    return false
  }
}

/** umount2(2); "not mounted" is success. Synchronous: call it off the serving thread. */
export function unmount(dir: string, lazy: boolean): void {
  try {
    libc.umount2(dir, lazy ? libc.MNT_DETACH : 0)
  } catch (err) {
    const e = err as libc.SysError
    if (e.errno === libc.ERRNO.EINVAL || e.errno === libc.ERRNO.ENOENT) return
    throw err
  }
}

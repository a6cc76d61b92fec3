/**
 * An exclusive advisory lock on an open file (flock(2), LOCK_EX | LOCK_NB), held until the descriptor is
 * closed or the process dies — so a killed holder never leaves a stale lock behind, unlike a lock file.
 * Used by the overlay: two processes appending to one log would overwrite each other's records.
 * On systems other than Linux (no libc binding here) it is a no-op that says so.
 */
export type LockResult = 'locked' | 'busy' | 'unsupported'

export function lockExclusive(fd: number): LockResult {
  if (process.platform !== 'linux') return 'unsupported'
  // Loaded on first use: it loads libc through koffi.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const libc = require('./libc') as typeof import('./libc')
  const rc = libc.flock(fd, libc.LOCK_EX | libc.LOCK_NB)
  if (rc === 0) return 'locked'
  if (rc === -libc.ERRNO.EAGAIN) return 'busy' // EWOULDBLOCK is EAGAIN on Linux
  // A file system without flock support (some network mounts answer ENOLCK): serve unlocked, as before.
  return 'unsupported'
}

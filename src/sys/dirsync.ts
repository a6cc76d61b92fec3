/**
 * Making a new file's name durable: a file built under a temporary name is fsynced, renamed (or linked)
 * to its name, then its directory is fsynced — without that last step a crash soon after the command
 * returned may leave the directory without the new name (ext4 commits it within ~5 s, other file systems
 * later), whatever was synced of the file itself.
 */
import * as fs from 'node:fs'

/** fsync a directory so a rename or link in it is durable (some file systems cannot: the files themselves are synced). */
export function syncDirectory(dir: string): void {
  try {
    const d = fs.openSync(dir, 'r')
    try {
      fs.fsyncSync(d)
    } finally {
      fs.closeSync(d)
    }
  } catch {
    // A file system that cannot open or fsync a directory: the files themselves are synced.
  }
}

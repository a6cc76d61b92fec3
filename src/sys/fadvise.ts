/**
 * Hints for files read or written once from start to end: posix_fadvise ahead of the reads (create's
 * input, extract's and verify's image), sync_file_range behind the writes (create's image, extract's
 * file). Linux only, and only hints: where libc cannot be loaded, reads and writes work the same.
 */
type Libc = typeof import('./libc')

/** libc for posix_fadvise, or undefined where it cannot be loaded (advice only: reads work the same). */
function loadLibc(): Libc | undefined {
  if (process.platform !== 'linux') return undefined
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('./libc') as Libc
  } catch {
    return undefined
  }
}

/**
 * How far ahead of the reads a seekable input is asked for (POSIX_FADV_WILLNEED), in steps of
 * WILLNEED_STEP: a cold file read in 4 MiB preads with only the kernel's read-ahead (SEQUENTIAL: twice
 * the device's window) comes off the disk several times slower than one asked for tens of MiB ahead
 * (docs/performance.md, "Cold input"). The pages land in the page cache, not in our memory.
 */
const WILLNEED_AHEAD = 64 << 20
const WILLNEED_STEP = 8 << 20

/**
 * Advice for a file read once from start to end: SEQUENTIAL now, and `ahead(position, length)` before
 * each read asks for the bytes up to WILLNEED_AHEAD past it. A read elsewhere (a seek) starts over there.
 */
export function sequentialAdvice(fd: number, size: number): (position: number, length: number) => void {
  const libc = loadLibc()
  if (!libc) return () => undefined
  try {
    libc.fadvise(fd, 0, 0, libc.POSIX_FADV_SEQUENTIAL)
  } catch {
    return () => undefined
  }
  let from = 0 // the advised range is [from, to)
  let to = 0
  let failed = false
  return (position, length) => {
    if (failed) return
    if (position < from || position > to) from = to = position
    const want = Math.min(size, position + length + WILLNEED_AHEAD)
    try {
      while (to < want) {
        libc.fadvise(fd, to, WILLNEED_STEP, libc.POSIX_FADV_WILLNEED)
        to += WILLNEED_STEP
      }
    } catch {
      failed = true
    }
  }
}

/**
 * How much written data is left to the kernel's own writeback before we start it (SYNC_FILE_RANGE_WRITE):
 * `create` and `extract FILE` fsync before the rename, and a file written at our pace with its writeback
 * started along the way has little left for that fsync to wait for (docs/performance.md, "fsync").
 */
const WRITEBACK_STEP = 16 << 20

/**
 * For a file written from start to end: `behind(end)` after each write starts the writeback of what was
 * written up to `end` since the last time, every WRITEBACK_STEP bytes, and says whether it did. Does not
 * wait for the disk. Stops trying after the first failure (not a file: ESPIPE).
 */
export function writebackBehind(fd: number): (end: number) => boolean {
  const libc = loadLibc()
  if (!libc) return () => false
  let from = 0
  let failed = false
  return (end) => {
    if (failed || end - from < WRITEBACK_STEP) return false
    try {
      failed = libc.syncFileRange(fd, from, end - from, libc.SYNC_FILE_RANGE_WRITE) !== 0
    } catch {
      failed = true
    }
    from = end
    return !failed
  }
}

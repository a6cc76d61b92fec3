/**
 * posix_fadvise for files read once from start to end (create's input, extract's and verify's image).
 * Linux only, and only advice: where libc cannot be loaded, reads work the same.
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

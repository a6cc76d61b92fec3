/**
 * Hints for files read or written once from start to end: posix_fadvise ahead of the reads (create's
 * input, extract's and verify's image), sync_file_range and a background fdatasync behind the writes
 * (create's image, extract's file). Linux only: where libc cannot be loaded, reads and writes work the
 * same, and the one fsync at the end does all the flushing.
 */
import * as fs from 'node:fs'

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

/** The reads of a file read once from start to end, as `sequentialAdvice` advises the kernel of them. */
export interface SequentialReads {
  /** Before a read of `[position, position + length)`: ask for the bytes up to WILLNEED_AHEAD past it. */
  ahead(position: number, length: number): void
  /** Once that read's bytes are in the caller's buffer (or it failed). */
  done(position: number, length: number): void
  /** No more reads: drop what is left to drop. */
  close(): void
}

const NONE: SequentialReads = {ahead: () => undefined, done: () => undefined, close: () => undefined}

/**
 * Advice for a file read once from start to end: SEQUENTIAL now, WILLNEED ahead of the reads, and the
 * page cache left as it was found: before a step is asked for, which of its pages are resident is noted
 * (mincore), and once every read up to the step's end is done, the pages that were not are dropped
 * (DONTNEED). A file that was cached stays cached (a warm input reads from memory, and so does the next
 * run); one that was not leaves nothing behind — a 500 GB image read once does not push everything else
 * out of memory — and its reads reuse the pages just freed instead of taking fresh ones, which on this
 * machine cost the kernel as much CPU as the rest of `create`'s reads (docs/performance.md, "Cold input:
 * the page cache as found"). `VDEV_DROP_BEHIND=0` keeps every page (the behaviour before). A read
 * elsewhere (a seek) starts the advice over there.
 */
export function sequentialAdvice(fd: number, size: number): SequentialReads {
  const libc = loadLibc()
  if (!libc) return NONE
  try {
    libc.fadvise(fd, 0, 0, libc.POSIX_FADV_SEQUENTIAL)
  } catch {
    return NONE
  }
  const dropBehind = process.env.VDEV_DROP_BEHIND !== '0'
  let page = 4096
  try {
    page = libc.pageSize()
  } catch {
    /* the common size */
  }
  let from = 0 // the advised range is [from, to)
  let to = 0
  let failed = false
  /** Steps asked for, in order, with their pages resident before (undefined: not known, so none is dropped). */
  const steps: Array<{start: number; end: number; resident: Uint8Array | undefined}> = []
  /** Reads started and not done, by position (a count each). */
  const reading = new Map<number, number>()
  let doneTo = 0 // the highest end of a read done

  const drop = (step: {start: number; end: number; resident: Uint8Array | undefined}): void => {
    const r = step.resident
    if (!r) return
    for (let i = 0; i < r.length; ) {
      if (r[i] & 1) {
        i++
        continue
      }
      let j = i
      while (j < r.length && !(r[j] & 1)) j++
      const at = step.start + i * page
      libc.fadvise(fd, at, Math.min(step.end, step.start + j * page) - at, libc.POSIX_FADV_DONTNEED)
      i = j
    }
  }
  const dropPassed = (): void => {
    let mark = doneTo
    for (const p of reading.keys()) mark = Math.min(mark, p)
    while (steps.length && steps[0].end <= mark) drop(steps.shift()!)
  }

  return {
    ahead(position, length) {
      if (failed) return
      reading.set(position, (reading.get(position) ?? 0) + 1)
      if (position < from || position > to) from = to = position - (position % page)
      const want = Math.min(size, position + length + WILLNEED_AHEAD)
      try {
        while (to < want) {
          const end = Math.min(size, to + WILLNEED_STEP)
          let resident: Uint8Array | undefined
          if (dropBehind) {
            try {
              resident = libc.residentPages(fd, to, end - to)
            } catch {
              resident = undefined
            }
          }
          libc.fadvise(fd, to, WILLNEED_STEP, libc.POSIX_FADV_WILLNEED)
          if (resident) steps.push({start: to, end, resident})
          to += WILLNEED_STEP
        }
      } catch {
        failed = true
      }
    },
    done(position, length) {
      const n = reading.get(position) ?? 0
      if (n > 1) reading.set(position, n - 1)
      else reading.delete(position)
      doneTo = Math.max(doneTo, position + length)
      if (!failed && dropBehind) dropPassed()
    },
    close() {
      if (failed || !dropBehind) return
      for (const s of steps.splice(0)) drop(s)
    },
  }
}

/**
 * How much written data is left to the kernel's own writeback before we start it (SYNC_FILE_RANGE_WRITE):
 * `create` and `extract FILE` fsync before the rename, and a file written at our pace with its writeback
 * started along the way has little left for that fsync to wait for (docs/performance.md, "fsync").
 */
const WRITEBACK_STEP = 16 << 20

/**
 * How much written data one device cache flush may be left to cover. A disk with a write cache (this
 * machine's virtual disk: its host's page cache) makes each fsync's flush take time in proportion to what
 * was written since the last one — ~0.19 s for a 509 MiB image, ~0.5 s for a 1.5 GiB extract — with
 * both cores idle. An `fdatasync` on libuv's pool every FLUSH_STEP (one at a time, never waited for
 * while writing) leaves the final fsync the last few tens of MiB (docs/performance.md, "fsync").
 */
const FLUSH_STEP = 64 << 20

/** The writes of a file written once from start to end, as `writebackBehind` hurries them to the disk. */
export interface WritebackBehind {
  /**
   * After each write, with the end of what is written: starts the writeback of what was written since the
   * last time, every WRITEBACK_STEP bytes, and an `fdatasync` in the background every FLUSH_STEP; says
   * whether it started writeback now. Never waits for the disk. Stops trying after the first failure
   * (not a file: ESPIPE).
   */
  behind(end: number): boolean
  /**
   * Before the final fsync (and before closing the descriptor): waits for a background `fdatasync` still
   * under way, and throws the error one met. Linux reports a writeback error to one fsync of an open file,
   * not to each: the final fsync may not see again what a background one was told.
   */
  settle(): Promise<void>
}

/**
 * For a file written from start to end, on its descriptor `fd` (which the caller keeps open until
 * `settle()` has returned).
 */
export function writebackBehind(fd: number): WritebackBehind {
  const libc = loadLibc()
  let from = 0
  let flushedFrom = 0
  let failed = !libc
  let flushing: Promise<void> | undefined
  let flushError: NodeJS.ErrnoException | undefined
  const flush = () => {
    flushing = new Promise<void>((resolve) =>
      fs.fdatasync(fd, (err) => {
        if (err && !flushError) flushError = err
        flushing = undefined
        resolve()
      }),
    )
  }
  return {
    behind(end) {
      if (failed || end - from < WRITEBACK_STEP) return false
      try {
        failed = libc!.syncFileRange(fd, from, end - from, libc!.SYNC_FILE_RANGE_WRITE) !== 0
      } catch {
        failed = true
      }
      from = end
      if (!failed && !flushing && !flushError && end - flushedFrom >= FLUSH_STEP) {
        flushedFrom = end
        flush()
      }
      return !failed
    },
    async settle() {
      while (flushing) await flushing
      if (flushError) throw flushError
    },
  }
}

/**
 * Errors are values with a code and a one-line message for the user; the CLI maps codes to exit codes.
 * Exit codes are stable: scripts may depend on them (see README, "Exit codes").
 */

export type ErrorCode =
  | 'usage' // bad flags or arguments
  | 'io' // a file or device could not be opened, read or written
  | 'format' // an image or mapfile is malformed, truncated or corrupt
  | 'unsupported' // a valid image this reader cannot handle (newer major version, unknown critical section)
  | 'verify' // verify found a mismatch
  | 'exists' // an output already exists and --force was not given
  | 'unavailable' // the environment lacks what is needed (not root, no /dev/fuse, module missing)
  | 'busy' // a device is in use
  | 'not-found' // no attached device matches
  | 'timeout' // a wait ran out of time
  | 'interrupted' // stopped by SIGINT or SIGTERM; nothing half-written is left
  | 'internal'

export const EXIT_CODES: Record<ErrorCode, number> = {
  usage: 2,
  io: 3,
  format: 4,
  unsupported: 4,
  verify: 5,
  exists: 6,
  unavailable: 7,
  busy: 8,
  'not-found': 9,
  timeout: 10,
  interrupted: 130,
  internal: 1,
}

export class VdevError extends Error {
  readonly code: ErrorCode
  constructor(code: ErrorCode, message: string, options?: {cause?: unknown}) {
    super(message, options)
    this.code = code
    this.name = 'VdevError'
  }

  get exitCode(): number {
    return EXIT_CODES[this.code]
  }
}

/** The ddrescue block statuses other than finished ('+'). "Never read" and "unreadable" stay distinct. */
export type BadStatus = 'non-tried' | 'non-trimmed' | 'non-scraped' | 'bad-sector'

export interface BadRange {
  offset: number
  length: number
  status: BadStatus
}

/** A read touched bytes that were never read from the original medium or could not be read. */
export class UnreadableAreaError extends VdevError {
  readonly ranges: BadRange[]
  constructor(ranges: BadRange[]) {
    const first = ranges[0]
    super('io', `unreadable area at byte ${first.offset} (${first.length} bytes, ${first.status})`)
    this.ranges = ranges
    this.name = 'UnreadableAreaError'
  }
}

/** Turn a Node system error into a one-line VdevError naming the path. */
export function ioError(path: string, err: unknown, doing = 'cannot open'): VdevError {
  const e = err as NodeJS.ErrnoException
  if (e instanceof VdevError) return e
  const why =
    e?.code === 'ENOENT'
      ? 'no such file or directory'
      : e?.code === 'EACCES' || e?.code === 'EPERM'
        ? 'permission denied'
        : e?.code === 'EISDIR'
          ? 'is a directory'
          : e?.code === 'EIO'
            ? 'input/output error'
            : e?.code === 'ENOSPC'
              ? 'no space left on device'
              : e?.code === 'EFBIG'
                ? 'file too large for the file system (or ulimit -f)'
                : (e?.code ?? String(e?.message ?? e))
  return new VdevError('io', `${path}: ${doing}: ${why}`, {cause: err})
}

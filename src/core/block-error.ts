/**
 * The failure of a block request and the bad-area policy, shared by the BlockServer and the layers.
 */
import type {BadRange} from './errors'
import {ERRNO, type ErrnoName} from '../sys/errno'

export type BadPolicy = 'error' | 'zero'

/** A failed block request, carrying the errno a backend hands the kernel or a protocol peer. */
export class BlockError extends Error {
  constructor(
    readonly errno: 'EIO' | 'EINVAL' | 'ENOSPC' | 'EPERM' | 'ESHUTDOWN',
    message: string,
    readonly bad: BadRange[] = [],
  ) {
    super(message)
    this.name = 'BlockError'
  }
}

/** The Linux errno (positive) for any failure of a read: a BlockError's own, else EIO. */
export function errnoOf(err: unknown): number {
  return err instanceof BlockError ? ERRNO[err.errno as ErrnoName] : ERRNO.EIO
}


/**
 * Run one synchronous function on a short-lived worker thread. Some syscalls block until this very
 * process answers kernel requests on its main thread (LOOP_CONFIGURE with a partition scan of a file
 * on our own FUSE mount, LOOP_CLR_FD draining I/O, open(2) of that file): calling them on the main
 * thread would deadlock, so they run here while the main thread keeps serving.
 */
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {VdevError, type ErrorCode} from '../core/errors'

export interface OffThreadError {
  message: string
  name?: string
  code?: string
  errno?: number
  vdevCode?: ErrorCode
}

/** Call `fn(...args)` exported by the compiled module `modulePath` (absolute .js path) on a new thread. */
export function runOffThread<T>(modulePath: string, fn: string, args: unknown[]): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const w = new Worker(path.join(__dirname, 'offthread-worker.js'), {workerData: {modulePath, fn, args}})
    let settled = false
    w.once('message', (m: {result?: T; error?: OffThreadError}) => {
      settled = true
      if (m.error) reject(reviveError(m.error))
      else resolve(m.result as T)
    })
    w.once('error', (err) => {
      settled = true
      reject(err)
    })
    w.once('exit', (code) => {
      if (!settled) reject(new Error(`${fn}: worker thread exited with code ${code}`))
    })
  })
}

export function reviveError(e: OffThreadError): Error {
  if (e.vdevCode) return new VdevError(e.vdevCode, e.message)
  const err = new Error(e.message) as Error & {code?: string; errno?: number}
  if (e.name) err.name = e.name
  if (e.code !== undefined) err.code = e.code
  if (e.errno !== undefined) err.errno = e.errno
  return err
}

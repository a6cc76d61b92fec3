/** The worker side of runOffThread: load the module, call the function, post the result or the error. */
import {parentPort, workerData} from 'node:worker_threads'
import {VdevError} from '../core/errors'

const {modulePath, fn, args} = workerData as {modulePath: string; fn: string; args: unknown[]}
try {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(modulePath) as Record<string, (...a: unknown[]) => unknown>
  const result = mod[fn](...args)
  parentPort!.postMessage({result})
} catch (err) {
  const e = err as Error & {code?: unknown; errno?: unknown}
  parentPort!.postMessage({
    error: {
      message: e?.message ?? String(err),
      name: e?.name,
      code: typeof e?.code === 'string' ? e.code : undefined,
      errno: typeof e?.errno === 'number' ? e.errno : undefined,
      vdevCode: err instanceof VdevError ? err.code : undefined,
    },
  })
}

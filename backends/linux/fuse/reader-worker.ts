/**
 * A thread that blocks in read(2) on /dev/fuse and hands each request to the main thread. Blocking
 * reads here, not on libuv's thread pool, keep the pool free for the image reader's file I/O. The thread
 * does not wait for replies: the main thread writes them, so requests pipeline.
 */
import * as fs from 'node:fs'
import {parentPort, workerData} from 'node:worker_threads'

const {fd, bufferSize} = workerData as {fd: number; bufferSize: number}
const buf = Buffer.allocUnsafe(bufferSize)

for (;;) {
  let n: number
  try {
    n = fs.readSync(fd, buf, 0, bufferSize, null)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    // EINTR: a signal; EAGAIN: another reader took the request; ENOENT: the request was interrupted.
    if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') continue
    // ENODEV: unmounted; ECONNABORTED: aborted (with FUSE_ABORT_ERROR).
    parentPort!.postMessage({end: code ?? String(err)})
    break
  }
  if (n === 0) {
    parentPort!.postMessage({end: 'EOF'})
    break
  }
  const msg = new Uint8Array(n)
  msg.set(buf.subarray(0, n))
  parentPort!.postMessage(msg, [msg.buffer])
}

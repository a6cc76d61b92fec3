/**
 * A serving thread: it opens the image itself, reads requests from /dev/fuse (blocking, on this thread,
 * never on libuv's pool), answers them and writes the replies — no hop through the main thread. Several
 * run at once, so decompression and copying use every core, as libfuse's multi-threaded loop does.
 *
 * Each thread has its own BlockServer (same bad-area policy) over its own image instance (its own file
 * descriptor and a small chunk cache) and serves one request at a time. The image is opened in the
 * reader's sync mode: a READ is answered by pread(2) and decompression on this thread, straight into the
 * reply buffer after the FUSE header, and sent with one write(2) — no libuv pool hop, no allocation, no
 * copy of the data. Between requests the thread polls briefly before sleeping (requests.ts). Counters
 * go to shared memory for the main thread, which also sets the "closing" flag there when the device is
 * being detached.
 */
import {parentPort, workerData} from 'node:worker_threads'
import {BlockServer, type BadPolicy} from '../../../src/core/blockserver'
import {openImage} from '../../../src/format/reader'
import {ImageFs} from './imagefs'
import {FuseProtocol, READ_BUFFER_SIZE} from './protocol'
import {FuseRequestReader} from './requests'
import {COUNTERS, SLOT, type ServeThreadConfig} from './threads'

const cfg = workerData as ServeThreadConfig
const shared = new Float64Array(cfg.shared)
const base = SLOT.first + cfg.index * COUNTERS
const log = (line: string): void => parentPort!.postMessage({log: line})

async function main(): Promise<void> {
  const image = await openImage(cfg.image, {cacheBytes: cfg.cacheBytes, sync: true})
  const server = new BlockServer(image, {badPolicy: cfg.badPolicy as BadPolicy})
  const imageFs = new ImageFs(server, {fileName: cfg.fileName, mtime: cfg.mtime, maxRead: cfg.maxPages * 4096, log})
  const protocol = new FuseProtocol({
    fd: cfg.fd,
    handler: imageFs.handle,
    maxPages: cfg.maxPages,
    maxBackground: cfg.maxBackground,
    log,
    onInit: (r) => parentPort!.postMessage(r instanceof Error ? {initError: r.message} : {init: r}),
    readInto: imageFs.readInto,
  })
  const requests = new FuseRequestReader(cfg.fd, cfg.pollMicroseconds, log)
  parentPort!.postMessage({ready: true})
  const buf = Buffer.allocUnsafe(READ_BUFFER_SIZE)
  let draining = false
  for (;;) {
    let n: number
    try {
      n = requests.next(buf)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // EINTR: a signal; EAGAIN: another thread took the request; ENOENT: the request was interrupted.
      if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') continue
      // ENODEV: unmounted; ECONNABORTED: aborted.
      parentPort!.postMessage({end: code ?? String(err)})
      break
    }
    if (shared[SLOT.closing] === 1 && !draining) {
      draining = true
      void server.drain() // new reads fail (EIO) from now on; this thread has none in flight
    }
    shared[base + 4] = 1
    if (requests.replyFd !== cfg.fd) shared[base + 5]++
    const pending = protocol.handle(buf.subarray(0, n), requests.replyFd)
    if (pending) await pending
    shared[base + 4] = 0
    const st = server.stats
    shared[base + 0] = st.reads
    shared[base + 1] = st.bytes
    shared[base + 2] = st.errors
    shared[base + 3] = st.badReads
  }
  requests.close()
  await image.close()
}

main().catch((err) => {
  parentPort!.postMessage({fatal: (err as Error)?.message ?? String(err)})
})

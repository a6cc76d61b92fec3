/**
 * A ublk queue served on a thread of its own, as ublksrv and libublk serve each hardware queue: the thread
 * opens the image itself (the reader's sync mode: pread(2) and decompression on this thread, a small chunk
 * cache), sets up the queue's io_uring, issues every FETCH_REQ — the driver then takes this thread as the
 * queue's daemon and accepts its commands only from it — and loops in UblkQueue.runBlocking(): one
 * io_uring_enter per turn sends the answers and waits for the next requests. Reads are answered
 * synchronously, so a queue has one request in decompression at a time; several queues (threads) use the
 * cores. It ends when the driver aborts the queue's fetches (STOP_DEV, or the device going away).
 *
 * Served-request counts go to shared memory (the thread sits in io_uring_enter, where it cannot take
 * messages).
 */
import {parentPort, workerData} from 'node:worker_threads'
import {BlockServer, type BadPolicy} from '../../../src/core/blockserver'
import {openImage} from '../../../src/format/reader'
import {UblkQueue, type UblkQueueOptions} from './queue'

/** The queue's own options (cdevFd: /dev/ublkcN, opened once by the main thread — descriptors are shared by
 * every thread of the process), and what the thread needs to build its BlockServer. */
export interface QueueThreadConfig extends Omit<UblkQueueOptions, 'server' | 'log' | 'blocking'> {
  /** Absolute path of the VDIMG image; each thread opens its own instance. */
  image: string
  cacheBytes: number
  badPolicy: string
  legacyOpcodes: boolean
  /** Float64Array: per queue, requests served. */
  shared: SharedArrayBuffer
}

async function main(): Promise<void> {
  const {image: imagePath, cacheBytes, badPolicy, legacyOpcodes, shared, ...queue} = workerData as QueueThreadConfig
  const served = new Float64Array(shared)
  const log = (line: string): void => parentPort!.postMessage({log: line})
  const image = await openImage(imagePath, {cacheBytes, sync: true})
  try {
    const server = new BlockServer(image, {badPolicy: badPolicy as BadPolicy})
    const q = new UblkQueue({...queue, server, log, blocking: true}, legacyOpcodes)
    try {
      // The FETCH_REQs go out at the start of runBlocking; START_DEV (on the main thread) waits for them.
      parentPort!.postMessage({ready: true})
      q.runBlocking(() => (served[queue.qid] = q.served))
    } finally {
      q.close()
    }
  } finally {
    await image.close()
  }
}

main().then(
  () => parentPort!.postMessage({done: true}),
  (err: unknown) => parentPort!.postMessage({fatal: (err as Error)?.message ?? String(err)}),
)

/**
 * The serving-thread body of a ublk queue (src/threads runs it, one queue per thread), as ublksrv and libublk
 * serve each hardware queue: the thread sets up the queue's io_uring over its own instance of the source
 * (ctx.server, sync mode), issues every FETCH_REQ — the driver then takes this thread as the queue's daemon
 * and accepts its commands only from it — and loops in UblkQueue.runBlocking(): one io_uring_enter per turn
 * sends the answers and waits for the next requests. A queue has one request in decoding at a time; several
 * queues (threads) use the cores. It ends when the driver aborts the queue's fetches (STOP_DEV, or the device
 * going away). The thread's BlockServer counts into its shared slot and logs faults; nothing else to report.
 */
import type {ServingThreadContext} from '../../../src/threads/protocol'
import {UblkQueue, type UblkQueueOptions} from './queue'

/** Per thread (ServingThreads' configFor): its queue. cdevFd is /dev/ublkcN, opened once by the main thread —
 * descriptors are shared by every thread of the process. */
export interface UblkThreadConfig extends Omit<UblkQueueOptions, 'server' | 'log' | 'blocking' | 'workAhead'> {
  legacyOpcodes: boolean
}

export async function run(ctx: ServingThreadContext): Promise<string> {
  const {legacyOpcodes, ...queue} = ctx.config as UblkThreadConfig
  const q = new UblkQueue({...queue, server: ctx.server, log: ctx.log, blocking: true, workAhead: ctx.workAhead}, legacyOpcodes)
  try {
    // The FETCH_REQs go out at the start of runBlocking; START_DEV (on the main thread) waits for them.
    ctx.ready()
    return await q.runBlocking()
  } finally {
    q.close()
  }
}

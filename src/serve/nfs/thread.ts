/**
 * The serving-thread body of the NFS server (threads.ts is the main thread's side): for each connection
 * handed over, a socket on the duplicated descriptor and the same Connection and programs as the main
 * thread (index.ts), over this thread's own BlockServer. The file's times and the write verifier are the
 * server's (shared memory, config), so every thread answers as one server.
 */
import * as net from 'node:net'
import type {ServingThreadContext} from '../../threads/protocol'
import {Connection, nfsDispatcher, type NfsExportConfig} from './index'
import type {FromNfsThread, ToNfsThread} from './threads'

export async function run(ctx: ServingThreadContext): Promise<string> {
  const dispatcher = nfsDispatcher(ctx.server, ctx.config as NfsExportConfig, (l) => ctx.log(l))
  const live = new Map<number, Connection>()
  // Decode ahead in the event loop's idle turns, and when another thread takes a large read (idle-ahead.ts).
  ctx.workAheadWhenIdle()
  ctx.onMessage((raw) => {
    const m = raw as ToNfsThread
    if ('assign' in m) {
      const {id, fd, peer} = m.assign
      let c: Connection
      try {
        c = new Connection(new net.Socket({fd, readable: true, writable: true}), dispatcher, peer)
      } catch (err) {
        ctx.post({done: id, reason: `cannot open the connection from ${peer}: ${(err as Error).message}`} satisfies FromNfsThread)
        return
      }
      live.set(id, c)
      // Done once its calls in flight are answered (or dropped): the main thread may then close the source.
      void c.finished
        .then(() => dispatcher.drain())
        .then(() => {
          live.delete(id)
          ctx.post({done: id, reason: 'closed'} satisfies FromNfsThread)
        })
    } else if ('stop' in m) live.get(m.stop)?.close()
  })
  ctx.ready()
  // The pool ends the thread ({exit}) once every connection is finished; nothing else ends the body.
  return new Promise<string>(() => undefined)
}

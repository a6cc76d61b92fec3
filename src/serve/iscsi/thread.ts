/**
 * The serving-thread body of the iSCSI target (threads.ts is the main thread's side): for each connection
 * handed over, a socket on the duplicated descriptor and the same IscsiConnection code as the main thread,
 * resumed in the full-feature phase, over this thread's own BlockServer (its own instance of the source:
 * pread(2) and decoding here). The thread's event loop serves one connection at a time.
 */
import * as net from 'node:net'
import type {ServingThreadContext} from '../../threads/protocol'
import {IscsiConnection, IscsiTarget} from './server'
import type {FromIscsiThread, IscsiThreadConfig, ToIscsiThread} from './threads'

export async function run(ctx: ServingThreadContext): Promise<string> {
  const cfg = ctx.config as IscsiThreadConfig
  const target = new IscsiTarget(ctx.server, {iqn: cfg.iqn, identity: cfg.identity, log: (l) => ctx.log(l)})
  const live = new Map<number, IscsiConnection>()
  // Decode ahead in the event loop's idle turns, and when another thread takes a large read (idle-ahead.ts).
  ctx.workAheadWhenIdle()
  ctx.onMessage((raw) => {
    const m = raw as ToIscsiThread
    if ('assign' in m) {
      const {id, fd, state, leftover} = m.assign
      let socket: net.Socket
      try {
        socket = new net.Socket({fd, readable: true, writable: true})
      } catch (err) {
        ctx.post({done: id, reason: `cannot open the connection: ${(err as Error).message}`} satisfies FromIscsiThread)
        return
      }
      const c = target.resume(socket, state, Buffer.from(leftover))
      live.set(id, c)
      void c.finished.then(() => {
        live.delete(id)
        ctx.post({done: id, reason: 'closed'} satisfies FromIscsiThread)
      })
    } else if ('stop' in m) void live.get(m.stop)?.shutdown()
    else if ('kill' in m) live.get(m.kill)?.destroy()
  })
  ctx.ready()
  // The pool ends the thread ({exit}) once every connection is finished; nothing else ends the body.
  return new Promise<string>(() => undefined)
}

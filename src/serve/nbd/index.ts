/**
 * `vdev serve --protocol nbd`: an NbdServer on a TCP or Unix listener. The kernel backend
 * (backends/linux/nbd) uses NbdServer directly on a socketpair instead.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import type {BlockServer} from '../../core/blockserver'
import {listen, type ListenAddress} from '../listen'
import {NbdServer} from './server'

export {NbdServer, NbdConnection, MAX_OPTION_LENGTH, MAX_OPTIONS} from './server'
export const NBD_DEFAULT_PORT = 10809 // IANA-assigned NBD port ("Newstyle negotiation")

export interface RunningNbdServer {
  nbd: NbdServer
  address: ListenAddress
  /** Stop accepting, finish in-flight requests, close every connection (and remove a Unix socket). */
  close(): Promise<void>
}

export async function startNbdServer(
  server: BlockServer,
  opts: {listen: ListenAddress; exportName: string; description?: string; log?: (line: string) => void},
): Promise<RunningNbdServer> {
  const nbd = new NbdServer(server, {exportName: opts.exportName, description: opts.description, log: opts.log})
  const listener = net.createServer({noDelay: true})
  nbd.attach(listener)
  if (opts.listen.kind === 'unix') await removeStaleSocket(opts.listen.path)
  const address = await listen(listener, opts.listen)
  let closing: Promise<void> | undefined
  return {
    nbd,
    address,
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => listener.close(() => resolve()))
        await nbd.close()
        await stopped
        if (address.kind === 'unix') fs.rmSync(address.path, {force: true})
      })()
      return closing
    },
  }
}

/** A socket file left by a server that died is removed; one that still answers is left for listen() to refuse. */
async function removeStaleSocket(path: string): Promise<void> {
  let st: fs.Stats
  try {
    st = fs.lstatSync(path)
  } catch {
    return
  }
  if (!st.isSocket()) return
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(path)
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
  if (!alive) fs.rmSync(path, {force: true})
}

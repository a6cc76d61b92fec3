/**
 * The --listen address of `vdev serve`: `unix:PATH`, `HOST:PORT`, `[IPv6]:PORT`, `HOST` or `:PORT`.
 * Loopback is the default and the only thing allowed without an explicit opt-in: an image served on a
 * network interface is readable by anyone who can reach it (the protocols have no authentication here).
 */
import * as net from 'node:net'
import {VdevError} from '../core/errors'

export type ListenAddress = {kind: 'unix'; path: string} | {kind: 'tcp'; host: string; port: number}

export function parseListen(spec: string, defaultPort: number): ListenAddress {
  if (spec.startsWith('unix:')) {
    const path = spec.slice(5)
    if (!path) throw new VdevError('usage', `--listen ${spec}: missing socket path after "unix:"`)
    return {kind: 'unix', path}
  }
  let host = spec
  let port = defaultPort
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(spec)
  if (v6) {
    host = v6[1]
    if (v6[2] !== undefined) port = Number(v6[2])
  } else if (spec.includes(':') && !net.isIPv6(spec)) {
    const i = spec.lastIndexOf(':')
    host = spec.slice(0, i) || '127.0.0.1'
    const p = spec.slice(i + 1)
    if (!/^\d+$/.test(p)) throw new VdevError('usage', `--listen ${spec}: port "${p}" is not a number`)
    port = Number(p)
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new VdevError('usage', `--listen ${spec}: port ${port} is out of range (0-65535)`)
  if (!host) throw new VdevError('usage', `--listen ${spec}: missing host`)
  return {kind: 'tcp', host, port}
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true
  if (net.isIPv4(host)) return host.startsWith('127.')
  if (net.isIPv6(host)) return host === '::1' || /^::ffff:127\./i.test(host)
  return false
}

export function formatListen(a: ListenAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`
  return net.isIPv6(a.host) ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`
}

/** Listen and resolve with the address actually bound (port 0 picks a free port). */
export function listen(server: net.Server, a: ListenAddress): Promise<ListenAddress> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const where = formatListen(a)
      const why =
        err.code === 'EADDRINUSE'
          ? 'address already in use'
          : err.code === 'EACCES'
            ? 'permission denied'
            : err.code === 'EADDRNOTAVAIL'
              ? 'address not available on this machine'
              : err.code === 'ENOENT'
                ? 'no such directory'
                : (err.code ?? err.message)
      reject(new VdevError('io', `cannot listen on ${where}: ${why}`, {cause: err}))
    }
    server.once('error', onError)
    const done = () => {
      server.off('error', onError)
      const addr = server.address()
      if (a.kind === 'unix' || addr === null || typeof addr === 'string') resolve(a)
      else resolve({kind: 'tcp', host: a.host, port: addr.port})
    }
    if (a.kind === 'unix') server.listen(a.path, done)
    else server.listen(a.port, a.host, done)
  })
}

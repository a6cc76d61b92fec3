/**
 * Acknowledge what a TCP socket has received at once (Linux's TCP_QUICKACK), for HTTP clients reading
 * from servers that do not set TCP_NODELAY. Such a server — Ceph RGW by default (its beast frontend's
 * `tcp_nodelay` is off) — writes an answer's head, then its body; Nagle's algorithm holds a body shorter
 * than a segment until the head is acknowledged, and the client's kernel delays that acknowledgement (up
 * to 40 ms, hoping to send it with data). Every small GET on a kept-alive connection then takes ~42 ms
 * (docs/remote.md, "Delayed acknowledgements"). Called once the head has arrived, this sends the pending
 * acknowledgement, and the body follows at once.
 *
 * TCP_QUICKACK is not sticky (the kernel goes back to delaying), so it is set for every answer. Linux only;
 * elsewhere, or where libc cannot be loaded, nothing happens. VDEV_REMOTE_QUICKACK=0 turns it off.
 */
import type * as net from 'node:net'

type Libc = typeof import('./libc')

const IPPROTO_TCP = 6
const TCP_QUICKACK = 12

let setQuickAck: ((fd: number) => void) | null | undefined

function load(): ((fd: number) => void) | null {
  if (setQuickAck !== undefined) return setQuickAck
  setQuickAck = null
  if (process.platform !== 'linux' || process.env.VDEV_REMOTE_QUICKACK === '0') return null
  try {
    // As fadvise.ts: libc lazily (the module throws where libc.so.6 cannot be loaded).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('./libc') as Libc
    setQuickAck = (fd) => void libc.setsockoptInt(fd, IPPROTO_TCP, TCP_QUICKACK, 1)
  } catch {
    setQuickAck = null
  }
  return setQuickAck
}

/** Whether quickAck does anything here. */
export function quickAckAvailable(): boolean {
  return load() !== null
}

/** TCP_QUICKACK on socket descriptor `fd` (an error — not a TCP socket — is ignored: it is a hint). */
export function quickAckFd(fd: number): void {
  if (fd >= 0) load()?.(fd)
}

/** TCP_QUICKACK on a Node socket (its descriptor, where libuv has one: TCP on Unix). */
export function quickAck(socket: net.Socket | null | undefined): void {
  const fd = (socket as unknown as {_handle?: {fd?: number}} | null | undefined)?._handle?.fd
  if (typeof fd === 'number') quickAckFd(fd)
}

/** Resolves when a socket's output buffer drains (or the socket closes): the back-pressure wait every server uses. */
import type {Socket} from 'node:net'

export function drained(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      socket.off('drain', done)
      socket.off('close', done)
      resolve()
    }
    socket.on('drain', done)
    socket.on('close', done)
  })
}

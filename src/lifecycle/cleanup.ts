/**
 * Cleaning up after a server that is gone (killed, crashed, or stopped half-way): the backend releases
 * what its recorded state names (Backend.cleanup), anything still mounted inside the device's run
 * directory is unmounted, and the run directory and the registry entry are removed. Idempotent.
 */
import * as fs from 'node:fs'
import {loadBackend} from '../core/backends'
import {readMountinfo} from '../sys/mountinfo'
import {removeEntry, type DeviceEntry} from './registry'

export async function cleanupEntry(e: DeviceEntry, log: (line: string) => void): Promise<void> {
  const b = loadBackend(e.backend)
  if ('error' in b) log(`cleanup: ${b.error}`)
  // The run directory goes with the state, so a backend can find what a server that died early left there.
  else await b.cleanup({...e.backendState, runDir: e.runDir}, log)
  const inside = readMountinfo()
    .filter((m) => m.mountpoint === e.runDir || m.mountpoint.startsWith(e.runDir + '/'))
    .sort((a, b) => b.mountpoint.length - a.mountpoint.length)
  if (inside.length > 0) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../sys/libc') as typeof import('../sys/libc')
    for (const m of inside) {
      try {
        libc.umount2(m.mountpoint, libc.MNT_DETACH)
        log(`unmounted ${m.mountpoint}`)
      } catch (err) {
        log(`cannot unmount ${m.mountpoint}: ${(err as Error).message}`)
      }
    }
  }
  fs.rmSync(e.runDir, {recursive: true, force: true})
  // A scratch overlay dies with its device (`attach --scratch`); a named overlay is the user's and stays.
  if (e.scratchDir) fs.rmSync(e.scratchDir, {recursive: true, force: true})
  removeEntry(e.id)
}

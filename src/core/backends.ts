/**
 * The list of backends. Each backend module lives in its own folder under backends/ and exports
 * `backend: Backend`; this list is the only place that names them. A module that fails to load (wrong
 * OS, missing native library) is reported as unavailable, never as a crash.
 */
import * as path from 'node:path'
import type {Backend, Probe} from './backend'

/** Module paths relative to dist/, in no particular order (Backend.preference orders them). */
const MODULES: Record<string, string> = {
  ublk: 'backends/linux/ublk/index.js',
  nbd: 'backends/linux/nbd/index.js',
  iscsi: 'backends/linux/iscsi/index.js',
  fuse: 'backends/linux/fuse/index.js',
  'macos-nfs': 'backends/macos/nfs/index.js',
  'windows-iscsi': 'backends/windows/iscsi/index.js',
}

export interface BackendStatus {
  name: string
  backend?: Backend
  probe: Probe
}

const distRoot = path.resolve(__dirname, '..', '..')

export function backendNames(): string[] {
  return Object.keys(MODULES)
}

export function loadBackend(name: string): Backend | {error: string} {
  const rel = MODULES[name]
  if (!rel) return {error: `unknown backend "${name}" (known: ${backendNames().join(', ')})`}
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require(path.join(distRoot, rel)) as {backend?: Backend}
    if (!mod.backend) return {error: `backend module ${rel} exports no backend`}
    return mod.backend
  } catch (err) {
    return {error: `backend ${name} could not be loaded: ${(err as Error).message.split('\n')[0]}`}
  }
}

/** Probe every backend; sorted by preference, unavailable ones last. */
export async function probeBackends(): Promise<BackendStatus[]> {
  const out: BackendStatus[] = []
  for (const name of backendNames()) {
    const b = loadBackend(name)
    if ('error' in b) {
      out.push({name, probe: {available: false, reason: b.error}})
      continue
    }
    if (b.platform !== process.platform) {
      out.push({name, backend: b, probe: {available: false, reason: `needs ${b.platform} (this is ${process.platform})`}})
      continue
    }
    let probe: Probe
    try {
      probe = await b.probe()
    } catch (err) {
      probe = {available: false, reason: (err as Error).message}
    }
    out.push({name, backend: b, probe})
  }
  const rank = (s: BackendStatus) => (s.probe.available ? 0 : 1000) + (s.backend?.preference ?? 999)
  return out.sort((a, b) => rank(a) - rank(b))
}

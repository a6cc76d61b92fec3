import {VdevCommand} from '../cli/base'
import {probeBackends} from '../core/backends'

export interface BackendRow {
  name: string
  available: boolean
  /** Why not, when unavailable; what was found, when available. */
  reason: string
  platform: string | null
  preference: number | null
  description: string | null
}

export default class Backends extends VdevCommand {
  static override summary = 'List the backends that can attach images here, and why the others cannot'
  static override aliases = ['doctor']
  static override description = `Probes every backend (kernel modules, devices, privileges) in order of preference; "vdev attach --backend auto" uses the first available one.`
  static override examples = ['<%= config.bin %> backends', '<%= config.bin %> doctor --json']

  async run(): Promise<BackendRow[]> {
    await this.parse(Backends)
    const rows: BackendRow[] = (await probeBackends()).map((s) => ({
      name: s.name,
      available: s.probe.available,
      reason: s.probe.available ? (s.probe.detail ?? '') : s.probe.reason,
      platform: s.backend?.platform ?? null,
      preference: s.backend?.preference ?? null,
      description: s.backend?.description ?? null,
    }))
    const w = Math.max(...rows.map((r) => r.name.length))
    for (const r of rows) this.say(`${r.name.padEnd(w)}  ${r.available ? 'available  ' : 'unavailable'}  ${r.reason}`)
    return rows
  }
}

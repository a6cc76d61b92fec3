import {VdevCommand} from '../cli/base'
import {listDevicesChecked, type ListedDevice} from '../lifecycle/detach'

export default class List extends VdevCommand {
  static override summary = 'List attached devices and whether their servers are running'
  static override description = `Every device in the registry (/run/vdev), with its state: "running", "starting", "dead" when its server is gone (killed or crashed) — then "vdev detach --force ID" cleans up what it left — or "gone" when the server runs but the OS no longer has the device (e.g. a macOS disk ejected outside vdev; checked with hdiutil info) — then "vdev detach ID" stops the server.`
  static override examples = ['<%= config.bin %> list', '<%= config.bin %> list --json']

  async run(): Promise<ListedDevice[]> {
    await this.parse(List)
    const devices = await listDevicesChecked()
    if (devices.length === 0) {
      this.say('no attached devices')
      return devices
    }
    const rows = [['ID', 'DEVICE', 'STATE', 'BACKEND', 'PID', 'PARTITIONS', 'IMAGE']]
    for (const d of devices) rows.push([d.id, d.device ?? '-', d.state, d.backend, String(d.pid), String(d.partitions.length), d.image])
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
    for (const r of rows) this.say(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  '))
    return devices
  }
}

import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../../cli/base'
import {humanBytes} from '../../cli/progress'
import {inspectOverlay, type OverlayInfo} from '../../layers/overlay'

export default class OverlayInfoCommand extends VdevCommand {
  static override summary = 'Show what a copy-on-write overlay holds: the base it belongs to, bytes written, extents'
  static override description = 'Reads the overlay file on its own (the base is not needed) and never writes it. See docs/OVERLAY.md.'
  static override examples = ['<%= config.bin %> overlay info disk.vdovl', '<%= config.bin %> overlay info disk.vdovl --json | jq .extents']
  static override args = {overlay: Args.string({description: 'the overlay file (vdev serve --overlay FILE)', required: true})}
  static override flags = {
    all: Flags.boolean({description: 'list every extent, not just the first 20'}),
  }

  async run(): Promise<OverlayInfo> {
    const {args, flags} = await this.parse(OverlayInfoCommand)
    const info = inspectOverlay(args.overlay)
    this.say(`overlay:      ${info.path} (version ${info.version}, created ${info.created})`)
    this.say(`base:         ${info.base.kind} ${info.base.sha256}`)
    this.say(`size:         ${humanBytes(info.size)} (${info.size} bytes), sector size ${info.sectorSize}`)
    this.say(`written:      ${humanBytes(info.bytesWritten)} (${info.bytesWritten} bytes) in ${info.extents.length} extents, ${info.records} records`)
    this.say(`file:         ${humanBytes(info.fileBytes)}${info.discardedBytes ? `; ${info.discardedBytes} bytes after the last valid record (a write cut short; removed when next opened for writing)` : ''}`)
    const shown = flags.all ? info.extents : info.extents.slice(0, 20)
    for (const e of shown) this.say(`  ${String(e.offset).padStart(16)} +${String(e.length).padEnd(12)} ${e.kind}`)
    if (shown.length < info.extents.length) this.say(`  … ${info.extents.length - shown.length} more (--all)`)
    return info
  }
}

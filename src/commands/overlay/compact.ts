import {Args} from '@oclif/core'
import {VdevCommand} from '../../cli/base'
import {Progress, humanBytes} from '../../cli/progress'
import {compactOverlay, type CompactResult} from '../../layers/overlay-compact'

export default class OverlayCompact extends VdevCommand {
  static override summary = 'Rewrite an overlay with only what it holds now, dropping overwritten data'
  static override description = `The overlay is a log: every write is appended, overwrites included, so the file grows with every write. Compaction writes a new log with one record per extent the overlay holds (same base, same id), then renames it over the old one: the overlay reads the same bytes before and after, and is at every moment either the old log or the whole new one. An overlay in use by a running attach or serve is refused (exit 6). See docs/OVERLAY.md.`
  static override examples = ['<%= config.bin %> overlay compact disk.vdovl', '<%= config.bin %> overlay compact disk.vdovl --json']
  static override args = {overlay: Args.string({description: 'the overlay file', required: true})}

  async run(): Promise<CompactResult> {
    const {args} = await this.parse(OverlayCompact)
    const progress = Progress.for('compact', this.jsonEnabled())
    let r: CompactResult
    try {
      r = compactOverlay(args.overlay, (d, t) => progress.update(d, t))
    } finally {
      progress.done()
    }
    this.say(`${args.overlay}: ${humanBytes(r.bytesBefore)} → ${humanBytes(r.bytesAfter)} (${r.recordsBefore} records → ${r.recordsAfter})`)
    return r
  }
}

import * as fs from 'node:fs'
import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../../cli/base'
import {Progress, humanBytes} from '../../cli/progress'
import {sourceArgs, sourceFlags} from '../../cli/source-flags'
import {VdevError} from '../../core/errors'
import type {CreateResult} from '../../format/writer'
import {commitOverlay} from '../../layers/overlay-commit'
import {openSourceArg} from '../../sources'

export default class OverlayCommit extends VdevCommand {
  static override summary = 'Write a new image: the base with an overlay’s changes applied (both left untouched)'
  static override description = `Reads IMG through the overlay FILE (which must belong to IMG) and writes OUT, a new VDIMG image: written sectors hold what was written, sectors of bad areas that were written become good, the rest of each bad area keeps its status. OUT's metadata names both parents (the base's identity, the overlay's id and file hash). IMG and FILE are only read. OUT is written under a temporary name and renamed when complete; never replaced without --force. See docs/OVERLAY.md.`
  static override examples = ['<%= config.bin %> overlay commit disk.vdimg disk.vdovl repaired.vdimg', '<%= config.bin %> overlay commit rescued.img disk.vdovl repaired.vdimg --mapfile rescued.map']
  static override args = {
    image: Args.string({description: 'the base image (.vdimg), or a raw image (see --format, --mapfile)', required: true}),
    overlay: Args.string({description: 'the overlay file', required: true}),
    out: Args.string({description: 'the new image to write (.vdimg)', required: true}),
  }
  static override flags = {
    ...sourceFlags,
    level: Flags.integer({char: 'l', description: 'zstd compression level (-7 to 19)'}),
    threads: Flags.integer({char: 't', description: 'compression threads (default: every core)'}),
    force: Flags.boolean({char: 'f', description: 'replace OUT if it exists'}),
  }

  async run(): Promise<CreateResult> {
    const {args, flags} = await this.parse(OverlayCommit)
    if (!flags.force && fs.existsSync(args.out)) throw new VdevError('exists', `${args.out}: already exists (use --force to replace it)`)
    if (!fs.existsSync(args.overlay)) throw new VdevError('io', `${args.overlay}: cannot open the overlay: no such file or directory`)
    const base = await openSourceArg(args.image, sourceArgs(flags))
    const progress = Progress.for('commit', this.jsonEnabled())
    let result: CreateResult
    try {
      result = await commitOverlay(base, args.overlay, args.out, {
        level: flags.level,
        threads: flags.threads,
        force: flags.force,
        baseName: args.image,
        version: this.config.version,
        onProgress: (d, t) => progress.update(d, t),
      })
    } finally {
      progress.done()
    }
    this.say(`${result.path}: ${humanBytes(result.size)} in ${humanBytes(result.fileSize)}; bad areas: ${result.badAreas} (${humanBytes(result.badBytes)}); sha256 ${result.sha256}`)
    return result
  }
}

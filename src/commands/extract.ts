import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {remoteArgs, remoteFlags} from '../cli/source-flags'
import {openVdimg} from '../sources'
import {interruptible} from '../cli/interrupt'
import {Progress, humanBytes} from '../cli/progress'
import {extractImage, type ExtractResult} from '../format/extract'
import {describeDamage} from '../format/verify'

/** How many damaged ranges the closing line names before it only counts them. */
const NAMED = 5

export default class Extract extends VdevCommand {
  static override summary = 'Decode an image back to raw bytes (sparse where zero), optionally with a ddrescue mapfile'
  static override description = `Writes the logical image to OUT (a file, built under a temporary name and renamed when complete; a block device with --force) or to stdout (-). Unreadable areas are written as zeros, or with --bad-fill pattern as the repeated text "VDEV-UNREADABLE!". --mapfile-out writes the bad areas as a GNU ddrescue mapfile, so ddrescue can resume a rescue into the extracted file.

A damaged chunk (its checksums fail, its zstd frame does not decode, or its index table is damaged) does not stop the extract: its bytes are written like unreadable ones (--bad-fill), it is a bad-sector area ('-') in --mapfile-out, one line on stderr names the damaged ranges, and the exit code is 5; OUT is complete and every other byte exact. Interrupted (SIGINT, SIGTERM): nothing is left behind, exit 130.`
  static override examples = [
    '<%= config.bin %> extract disk.vdimg disk.img',
    '<%= config.bin %> extract disk.vdimg disk.img --mapfile-out disk.map',
    '<%= config.bin %> extract disk.vdimg - | sha256sum',
  ]
  static override args = {
    image: Args.string({description: 'the image (.vdimg), a local file or an http(s):// or s3:// URL', required: true}),
    out: Args.string({description: 'output file or block device, or - for stdout', required: true}),
  }
  static override flags = {
    ...remoteFlags,
    'bad-fill': Flags.string({description: 'what unreadable bytes (and damaged chunks) become', options: ['zero', 'pattern'], default: 'zero'}),
    'mapfile-out': Flags.string({description: 'write the bad areas (and damaged chunks) as a GNU ddrescue mapfile'}),
    threads: Flags.integer({char: 't', description: 'decompression threads (default: every core)'}),
    force: Flags.boolean({char: 'f', description: 'replace OUT / the mapfile if they exist'}),
  }

  async run(): Promise<ExtractResult & {image: string; out: string}> {
    const {args, flags} = await this.parse(Extract)
    const img = await openVdimg(args.image, remoteArgs(flags), {onWarning: (l) => this.warnAll([l])})
    this.warnAll(img.warnings)
    const progress = Progress.for('extract', this.jsonEnabled() || args.out === '-')
    const stop = interruptible(args.image)
    let r: ExtractResult
    try {
      r = await extractImage(img, args.out, {
        badFill: flags['bad-fill'] as 'zero' | 'pattern',
        mapfileOut: flags['mapfile-out'],
        force: flags.force,
        threads: flags.threads,
        signal: stop.signal,
        onProgress: (d, t) => progress.update(d, t),
      })
    } finally {
      stop.dispose()
      progress.done()
      await img.close()
    }
    if (args.out !== '-') this.say(`${args.out}: ${humanBytes(r.bytes)} written (${humanBytes(r.sparseBytes)} sparse, ${humanBytes(r.badBytes)} unreadable${r.damagedChunks ? `, ${humanBytes(r.damagedBytes)} damaged` : ''})`)
    if (r.damagedChunks) {
      // Success with damage: OUT is complete; one line names the damaged ranges, and the exit code says so.
      const named = r.damaged.slice(0, NAMED).map((d) => describeDamage(args.image, d))
      const listed = r.damaged.slice(0, NAMED).reduce((n, d) => n + d.chunks, 0)
      const more = listed < r.damagedChunks ? `; and ${r.damagedChunks - listed} more chunk${r.damagedChunks - listed > 1 ? 's' : ''}` : ''
      const fill = flags['bad-fill'] === 'pattern' ? 'the VDEV-UNREADABLE! pattern' : 'zeros'
      process.stderr.write(
        `vdev: ${args.image}: ${r.damagedChunks} damaged chunk${r.damagedChunks > 1 ? 's' : ''} (${r.damagedBytes} bytes) written as ${fill}: ${named.join('; ')}${more}\n`,
      )
      process.exitCode = 5
    }
    return {image: args.image, out: args.out, ...r}
  }
}

import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {Progress, humanBytes} from '../cli/progress'
import {extractImage, type ExtractResult} from '../format/extract'
import {openImage} from '../format/reader'

export default class Extract extends VdevCommand {
  static override summary = 'Decode an image back to raw bytes (sparse where zero), optionally with a ddrescue mapfile'
  static override description = `Writes the logical image to OUT (a file, built under a temporary name and renamed when complete; a block device with --force) or to stdout (-). Unreadable areas are written as zeros, or with --bad-fill pattern as the repeated text "VDEV-UNREADABLE!". --mapfile-out writes the bad areas as a GNU ddrescue mapfile, so ddrescue can resume a rescue into the extracted file.`
  static override examples = [
    '<%= config.bin %> extract disk.vdimg disk.img',
    '<%= config.bin %> extract disk.vdimg disk.img --mapfile-out disk.map',
    '<%= config.bin %> extract disk.vdimg - | sha256sum',
  ]
  static override args = {
    image: Args.string({description: 'the image (.vdimg)', required: true}),
    out: Args.string({description: 'output file or block device, or - for stdout', required: true}),
  }
  static override flags = {
    'bad-fill': Flags.string({description: 'what unreadable bytes become', options: ['zero', 'pattern'], default: 'zero'}),
    'mapfile-out': Flags.string({description: 'write the bad areas as a GNU ddrescue mapfile'}),
    threads: Flags.integer({char: 't', description: 'decompression threads (default: every core)'}),
    force: Flags.boolean({char: 'f', description: 'replace OUT / the mapfile if they exist'}),
  }

  async run(): Promise<ExtractResult & {image: string; out: string}> {
    const {args, flags} = await this.parse(Extract)
    const img = await openImage(args.image)
    const progress = Progress.for('extract', this.jsonEnabled() || args.out === '-')
    try {
      const r = await extractImage(img, args.out, {
        badFill: flags['bad-fill'] as 'zero' | 'pattern',
        mapfileOut: flags['mapfile-out'],
        force: flags.force,
        threads: flags.threads,
        onProgress: (d, t) => progress.update(d, t),
      })
      progress.done()
      if (args.out !== '-') this.say(`${args.out}: ${humanBytes(r.bytes)} written (${humanBytes(r.sparseBytes)} sparse, ${humanBytes(r.badBytes)} unreadable)`)
      return {image: args.image, out: args.out, ...r}
    } finally {
      progress.done()
      await img.close()
    }
  }
}

import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {Progress} from '../cli/progress'
import {VdevError} from '../core/errors'
import {openImage} from '../format/reader'
import {verifyImage, type VerifyResult} from '../format/verify'

export default class Verify extends VdevCommand {
  static override summary = 'Check every structure, every chunk checksum and the media hash of an image'
  static override description = 'Exits 0 when the image is intact, 5 when a chunk or the media hash does not match, 4 when a structure is damaged.'
  static override examples = ['<%= config.bin %> verify disk.vdimg', '<%= config.bin %> verify disk.vdimg --json']
  static override args = {image: Args.string({description: 'the image (.vdimg)', required: true})}
  static override flags = {threads: Flags.integer({char: 't', description: 'decompression threads (default: every core)'})}

  async run(): Promise<VerifyResult & {image: string}> {
    const {args, flags} = await this.parse(Verify)
    const img = await openImage(args.image)
    const progress = Progress.for('verify', this.jsonEnabled())
    let r: VerifyResult
    try {
      r = await verifyImage(img, {threads: flags.threads, onProgress: (d, t) => progress.update(d, t)})
    } finally {
      progress.done()
      await img.close()
    }
    const out = {image: args.image, ...r}
    if (this.jsonEnabled()) {
      if (!r.ok) {
        process.stdout.write(JSON.stringify(out) + '\n')
        throw new VdevError('verify', failureLine(args.image, r))
      }
      return out
    }
    if (!r.ok) throw new VdevError('verify', failureLine(args.image, r))
    this.say(`${args.image}: OK, ${r.chunks} chunks, sha256 ${r.sha256.computed ?? '(not recorded)'}`)
    return out
  }
}

function failureLine(image: string, r: VerifyResult): string {
  if (r.problems.length) {
    const p = r.problems[0]
    const more = r.failedChunks > 1 ? ` (${r.failedChunks} chunks failed)` : ''
    // The chunk error already names the file; keep the line single.
    return `${p.message.startsWith(image) ? p.message.slice(image.length + 2) : p.message}${more}`.replace(/^/, `${image}: `)
  }
  return `${image}: media hash mismatch: recorded ${r.sha256.recorded}, computed ${r.sha256.computed}`
}

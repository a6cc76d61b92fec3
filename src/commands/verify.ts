import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {remoteArgs, remoteFlags} from '../cli/source-flags'
import {openVdimg} from '../sources'
import {interruptible} from '../cli/interrupt'
import {Progress} from '../cli/progress'
import {VdevError} from '../core/errors'
import {describeDamage, verifyImage, type VerifyResult} from '../format/verify'
import {assessRepair, type RepairAssessment} from '../format/repair'

export default class Verify extends VdevCommand {
  static override summary = 'Check every structure, every chunk checksum and the media hash of an image'
  static override description = `Lists everything damaged — every chunk whose checksums fail or whose zstd frame does not decode, every damaged index table (with the chunks it loses), a damaged metadata or other non-critical section — not only the first. Exits 0 when the image is intact, 5 when anything is damaged or the media hash does not match, 4 when a structure the image cannot be opened without is damaged, 130 when interrupted (SIGINT, SIGTERM). --quick checks the structures and both checksums of every chunk but not the media hash.`
  static override examples = ['<%= config.bin %> verify disk.vdimg', '<%= config.bin %> verify disk.vdimg --quick', '<%= config.bin %> verify disk.vdimg --json']
  static override args = {image: Args.string({description: 'the image (.vdimg), a local file or an http(s):// or s3:// URL', required: true})}
  static override flags = {
    ...remoteFlags,
    quick: Flags.boolean({description: 'check structures and chunk checksums; skip the media hash'}),
    threads: Flags.integer({char: 't', description: 'decompression threads (default: every core)'}),
  }

  async run(): Promise<Omit<VerifyResult, 'problems'> & {image: string; repair?: RepairAssessment | null}> {
    const {args, flags} = await this.parse(Verify)
    const img = await openVdimg(args.image, remoteArgs(flags))
    const progress = Progress.for('verify', this.jsonEnabled())
    const stop = interruptible(args.image)
    let r: VerifyResult
    // Whether `vdev repair` can fix what is damaged (local images only: repair writes a file).
    let repair: RepairAssessment | null | undefined
    try {
      r = await verifyImage(img, {threads: flags.threads, quick: flags.quick, signal: stop.signal, onProgress: (d, t) => progress.update(d, t)})
      if (!r.ok && !stop.signal.aborted)
        repair = /^[a-z][a-z0-9+.-]*:\/\//i.test(args.image)
          ? null
          : r.damaged.length === 0
            ? {recovery: r.recovery.present ? 'usable' : 'none', lostSlices: 0, damagedParity: 0, unrepairableStripes: 0, repairable: false, why: 'the media hash does not match, yet every chunk and structure is intact'}
            : await assessRepair(img)
    } finally {
      stop.dispose()
      progress.done()
      await img.close()
    }
    const {problems: _firstOnes, ...rest} = r
    const out = {image: args.image, ...rest, ...(repair !== undefined ? {repair} : {})}
    if (!this.jsonEnabled()) for (const d of r.damaged) this.say(`damaged: ${describeDamage(args.image, d)}`)
    if (repair) this.say(repair.repairable ? `repairable: \`vdev repair ${args.image}\` rebuilds every damaged byte` : `not repairable: ${repair.why}`)
    if (!r.ok) {
      // The result (with --json, the whole list) on stdout, one line on stderr, exit 5.
      const e = new VdevError('verify', failureLine(args.image, r))
      process.stderr.write(`vdev: ${e.message}\n`)
      process.exitCode = e.exitCode
      return out
    }
    const hash = r.hashed ? `sha256 ${r.sha256.computed ?? '(not recorded)'}` : 'media hash not checked (--quick)'
    this.say(`${args.image}: OK, ${r.chunks} chunks, ${hash}`)
    return out
  }
}

function failureLine(image: string, r: VerifyResult): string {
  if (r.damaged.length) {
    const first = describeDamage(image, r.damaged[0])
    const parts = []
    if (r.failedChunks) parts.push(`${r.failedChunks} damaged chunk${r.failedChunks > 1 ? 's' : ''}`)
    const structures = r.damaged.filter((d) => d.chunk < 0).length
    if (structures) parts.push(`${structures} damaged section${structures > 1 ? 's' : ''}`)
    return `${image}: ${first}${r.damaged.length > 1 || r.failedChunks > 1 ? ` (${parts.join(', ')} in all)` : ''}`
  }
  return `${image}: media hash mismatch: recorded ${r.sha256.recorded}, computed ${r.sha256.computed}`
}

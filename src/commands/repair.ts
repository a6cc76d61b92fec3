import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {interruptible} from '../cli/interrupt'
import {VdevError} from '../core/errors'
import {repairImage, type RepairReport} from '../format/repair'
import {describeDamage} from '../format/verify'

export default class Repair extends VdevCommand {
  static override summary = 'Rebuild damaged chunks, index tables and structures of an image from its recovery data and copies'
  static override description = `Finds every damaged chunk and index table (by their checksums) and rebuilds them bit-exactly from the image's recovery data (\`vdev create --recovery N%\`, format 1.2), as long as no stripe lost more slices than it has good parity; rewrites damaged copies of the critical structures (format 1.1) from their originals and the reverse, and damaged recovery data from the repaired chunks. Writes OUT (default: IMAGE itself) under a temporary name beside it, renamed into place when complete. An existing OUT is not replaced without --force. Exits 0 when everything was repaired (or nothing was damaged: then nothing is written), 5 when damage remains (OUT is still written, with everything that could be repaired), 4 when the image cannot be opened at all.`
  static override examples = ['<%= config.bin %> repair disk.vdimg', '<%= config.bin %> repair disk.vdimg --out fixed.vdimg', '<%= config.bin %> repair disk.vdimg --json']
  static override args = {image: Args.string({description: 'the image (.vdimg), a local file', required: true})}
  static override flags = {
    out: Flags.string({char: 'o', description: 'write the repaired image here (default: repair IMAGE in place)'}),
    force: Flags.boolean({char: 'f', description: 'replace OUT if it exists'}),
  }

  async run(): Promise<RepairReport & {image: string}> {
    const {args, flags} = await this.parse(Repair)
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(args.image)) throw new VdevError('usage', `${args.image}: repair needs a local file`)
    const stop = interruptible(args.image)
    let r: RepairReport
    try {
      r = await repairImage(args.image, {out: flags.out, force: flags.force, signal: stop.signal})
    } finally {
      stop.dispose()
    }
    const out = {image: args.image, ...r}
    const name = r.out ?? args.image
    if (r.intact) {
      this.say(`${args.image}: nothing damaged${flags.out ? `; copied to ${flags.out}` : ''}`)
      return out
    }
    for (const line of r.fixed) this.say(`repaired: ${line}`)
    if (!r.repaired) {
      for (const d of r.remaining) this.say(`damaged: ${describeDamage(name, d)}`)
      const chunks = r.remaining.filter((d) => d.chunk >= 0)
      const lost = chunks.reduce((n, d) => n + d.chunks, 0)
      const first = r.remaining[0] ? describeDamage(name, r.remaining[0]) : 'damage remains'
      const why = r.recovery === 'none' ? 'no recovery data' : r.recovery === 'damaged' ? 'its recovery data is unusable' : `${r.lostStripes} stripe${r.lostStripes === 1 ? '' : 's'} lost more slices than their parity rebuilds`
      const e = new VdevError('verify', `${name}: not all damage repaired (${why}): ${lost ? `${lost} chunk${lost === 1 ? '' : 's'} stay lost, first ` : ''}${first}`)
      process.stderr.write(`vdev: ${e.message}\n`)
      process.exitCode = e.exitCode
      return out
    }
    this.say(`${name}: repaired, every chunk and structure intact`)
    return out
  }
}

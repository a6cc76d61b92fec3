import * as fs from 'node:fs'
import * as path from 'node:path'
import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../../cli/base'
import {VdevError, ioError} from '../../core/errors'
import {inspectOverlay} from '../../layers/overlay'

interface Range {
  offset: number
  length: number
}

export default class OverlayDiff extends VdevCommand {
  static override summary = 'List the byte ranges an overlay changes (written, zeroed or discarded), merged'
  static override description = `One line per changed range: offset and length in bytes. With --mapfile-out the ranges are also written as a GNU ddrescue mapfile in which the changed ranges are finished ('+') and the rest non-tried ('?'), for ddrescue --domain-mapfile. See docs/OVERLAY.md.`
  static override examples = ['<%= config.bin %> overlay diff disk.vdovl', '<%= config.bin %> overlay diff disk.vdovl --mapfile-out changed.map']
  static override args = {overlay: Args.string({description: 'the overlay file', required: true})}
  static override flags = {
    'mapfile-out': Flags.string({description: 'also write the changed ranges as a ddrescue mapfile'}),
    force: Flags.boolean({description: 'replace an existing --mapfile-out file'}),
  }

  async run(): Promise<{size: number; changedBytes: number; ranges: Range[]}> {
    const {args, flags} = await this.parse(OverlayDiff)
    const info = inspectOverlay(args.overlay)
    const ranges: Range[] = []
    for (const e of info.extents) {
      const last = ranges[ranges.length - 1]
      if (last && last.offset + last.length === e.offset) last.length += e.length
      else ranges.push({offset: e.offset, length: e.length})
    }
    const out = flags['mapfile-out']
    if (out) writeMapfile(out, info.size, ranges, flags.force)
    for (const r of ranges) this.say(`${r.offset} ${r.length}`)
    return {size: info.size, changedBytes: info.bytesWritten, ranges}
  }
}

const hex = (n: number) => `0x${n.toString(16).toUpperCase().padStart(8, '0')}`

/** The mapfile is written beside its destination and renamed into place: never half-written. */
function writeMapfile(out: string, size: number, ranges: Range[], force: boolean): void {
  if (!force && fs.existsSync(out)) throw new VdevError('exists', `${out}: already exists (add --force to replace it)`)
  const lines = ['# Mapfile. Created by vdev overlay diff: + the overlay changed these bytes, ? unchanged', '# current_pos  current_status  current_pass', `${hex(0)}     +               1`, '#      pos        size  status']
  let at = 0
  for (const r of ranges) {
    if (r.offset > at) lines.push(`${hex(at)}  ${hex(r.offset - at)}  ?`)
    lines.push(`${hex(r.offset)}  ${hex(r.length)}  +`)
    at = r.offset + r.length
  }
  if (at < size) lines.push(`${hex(at)}  ${hex(size - at)}  ?`)
  const tmp = path.join(path.dirname(path.resolve(out)), `.${path.basename(out)}.${process.pid}.tmp`)
  try {
    fs.writeFileSync(tmp, lines.join('\n') + '\n', {flag: 'wx'})
    fs.renameSync(tmp, out)
  } catch (err) {
    fs.rmSync(tmp, {force: true})
    throw ioError(out, err, 'cannot write the mapfile')
  }
}

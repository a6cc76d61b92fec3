import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {humanBytes} from '../cli/progress'
import {describeImage, type ImageInfo} from '../format/describe'
import {openImage} from '../format/reader'

export default class Info extends VdevCommand {
  static override summary = 'Show what an image holds: size, chunks, bad areas, metadata, hash'
  static override examples = ['<%= config.bin %> info disk.vdimg', '<%= config.bin %> info disk.vdimg --json | jq .badAreas']
  static override args = {image: Args.string({description: 'the image (.vdimg)', required: true})}
  static override flags = {
    all: Flags.boolean({description: 'list every bad range, not just the first 20'}),
  }

  async run(): Promise<ImageInfo> {
    const {args, flags} = await this.parse(Info)
    const img = await openImage(args.image)
    try {
      const info = await describeImage(img, {maxRanges: flags.all ? Infinity : 20})
      this.say(`image:        ${info.path} (VDIMG ${info.version})`)
      this.say(`size:         ${humanBytes(info.size)} (${info.size} bytes), sector size ${info.sectorSize}`)
      this.say(`chunk size:   ${humanBytes(info.chunkSize)}, ${info.chunkCount} chunks`)
      this.say(`stored:       ${humanBytes(info.fileSize)} (${pct(info.ratio)} of the image)`)
      this.say(`chunks:       ${Object.entries(info.chunks).map(([k, v]) => `${v} ${k}`).join(', ')}`)
      this.say(`sha256:       ${info.sha256 ?? '(not recorded)'}`)
      if (info.badAreaCount === 0) this.say('bad areas:    none')
      else {
        this.say(`bad areas:    ${info.badAreaCount} (${humanBytes(info.badBytes)})`)
        for (const [status, v] of Object.entries(info.badAreaSummary))
          if (v.count) this.say(`  ${status.padEnd(12)} ${String(v.count).padStart(8)} areas ${humanBytes(v.bytes).padStart(12)}`)
        for (const r of info.badAreas) this.say(`  ${String(r.offset).padStart(16)} +${String(r.length).padEnd(12)} ${r.status}`)
        if (info.badAreaCount > info.badAreas.length) this.say(`  … ${info.badAreaCount - info.badAreas.length} more (--all)`)
      }
      const md = Object.entries(info.metadata)
      if (md.length) {
        this.say('metadata:')
        for (const [k, v] of md) this.say(`  ${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`)
      }
      return info
    } finally {
      await img.close()
    }
  }
}

/** 24.5%, 0.04%, <0.01%: enough digits to say something for tiny ratios. */
function pct(r: number): string {
  const p = r * 100
  if (p === 0) return '0%'
  if (p < 0.01) return '<0.01%'
  return `${p.toFixed(p < 1 ? 2 : 1)}%`
}

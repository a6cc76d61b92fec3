import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {humanBytes} from '../cli/progress'
import {describeImage, type ImageInfo} from '../format/describe'
import {sourceArgs, sourceFlags} from '../cli/source-flags'
import {describeSource, openVdimg, remoteOptions} from '../sources'
import {HttpObject, type RemoteIdentity} from '../remote/http'
import {RawImage, describeRaw, type RawInfo} from '../sources/raw'

export default class Info extends VdevCommand {
  static override summary = 'Show what an image holds: size, chunks, bad areas, metadata, hash'
  static override examples = [
    '<%= config.bin %> info disk.vdimg',
    '<%= config.bin %> info disk.vdimg --json | jq .badAreas',
    '<%= config.bin %> info rescued.img --mapfile rescued.map',
  ]
  static override args = {image: Args.string({description: 'the image (.vdimg; a local file or an http(s):// or s3:// URL), or a raw image or block device (see --format, --mapfile)', required: true})}
  static override flags = {
    ...sourceFlags,
    all: Flags.boolean({description: 'list every bad range, not just the first 20'}),
  }

  async run(): Promise<ImageInfo | RawInfo> {
    const {args, flags} = await this.parse(Info)
    const desc = describeSource(args.image, sourceArgs(flags))
    const maxRanges = flags.all ? Infinity : 20
    if (desc.kind === 'raw') {
      const o = desc.options ?? {}
      const raw = RawImage.open(desc.path, {mapfile: o.mapfile as string | undefined, sectorSize: o.sectorSize as number | undefined})
      try {
        const info = describeRaw(raw, {maxRanges})
        this.say(`image:        ${info.path} (raw${info.mapfile ? `, ddrescue map ${info.mapfile}` : ''})`)
        this.say(`size:         ${humanBytes(info.size)} (${info.size} bytes), sector size ${info.sectorSize}`)
        if (info.fileSize < info.size) this.say(`file:         ${humanBytes(info.fileSize)}: the map goes on past the end of the file`)
        this.sayBadAreas(info)
        return info
      } finally {
        await raw.close()
      }
    }
    const img = await openVdimg(desc.path, remoteOptions(desc.options), {onWarning: (l) => this.warnAll([l])})
    this.warnAll(img.warnings)
    try {
      const info: ImageInfo & {remote?: RemoteIdentity} = await describeImage(img, {maxRanges})
      // A remote image: what pins it (the same version is read again with --version-id; docs/remote.md).
      if (img.ranges instanceof HttpObject) info.remote = img.ranges.identity
      this.say(`image:        ${info.path} (VDIMG ${info.version})`)
      const r = info.remote
      if (r) this.say(`remote:       ${[r.etag && `ETag ${r.etag}`, r.lastModified && `Last-Modified ${r.lastModified}`, r.versionId && `version ${r.versionId}`].filter(Boolean).join(', ') || '(no ETag: not pinned)'}`)
      this.say(`size:         ${humanBytes(info.size)} (${info.size} bytes), sector size ${info.sectorSize}`)
      this.say(`chunk size:   ${humanBytes(info.chunkSize)}, ${info.chunkCount} chunks`)
      this.say(`stored:       ${humanBytes(info.fileSize)} (${pct(info.ratio)} of the image)`)
      this.say(`chunks:       ${Object.entries(info.chunks).map(([k, v]) => `${v} ${k}`).join(', ')}`)
      this.say(`sha256:       ${info.sha256 ?? '(not recorded)'}`)
      const rec = info.recovery
      if (rec)
        this.say(
          `recovery:     ${humanBytes(rec.bytes)}, ${rec.usable ? `stripes of ${rec.k} data + ${rec.m} parity slices of ${rec.sliceSize} bytes (${rec.stripes} stripes)` : 'its header is damaged'}`,
        )
      this.sayBadAreas(info)
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

  private sayBadAreas(info: Pick<ImageInfo, 'badAreaCount' | 'badBytes' | 'badAreaSummary' | 'badAreas'>): void {
    if (info.badAreaCount === 0) return this.say('bad areas:    none')
    this.say(`bad areas:    ${info.badAreaCount} (${humanBytes(info.badBytes)})`)
    for (const [status, v] of Object.entries(info.badAreaSummary))
      if (v.count) this.say(`  ${status.padEnd(12)} ${String(v.count).padStart(8)} areas ${humanBytes(v.bytes).padStart(12)}`)
    for (const r of info.badAreas) this.say(`  ${String(r.offset).padStart(16)} +${String(r.length).padEnd(12)} ${r.status}`)
    if (info.badAreaCount > info.badAreas.length) this.say(`  … ${info.badAreaCount - info.badAreas.length} more (--all)`)
  }
}

/** 24.5%, 0.04%, <0.01%: enough digits to say something for tiny ratios. */
function pct(r: number): string {
  const p = r * 100
  if (p === 0) return '0%'
  if (p < 0.01) return '<0.01%'
  return `${p.toFixed(p < 1 ? 2 : 1)}%`
}

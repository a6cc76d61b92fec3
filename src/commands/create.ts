import * as fs from 'node:fs'
import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {Progress, humanBytes} from '../cli/progress'
import {VdevError} from '../core/errors'
import {openInput} from '../format/input'
import {readMapfile} from '../format/mapfile'
import {buildMetadata} from '../format/metadata'
import {createImage, DEFAULT_LEVEL, type CreateResult} from '../format/writer'
import {DEFAULT_CHUNK_SIZE} from '../format/layout'

export default class Create extends VdevCommand {
  static override summary = 'Create a VDIMG image from a file, a block device or stdin'
  static override description = `Reads SOURCE (a file, a block device, or - for stdin) and writes OUT: fixed-size chunks, each compressed with zstd on every core, all-zero chunks stored as index entries only. With --mapfile, areas the GNU ddrescue mapfile does not mark finished are recorded as bad areas (with their ddrescue status) and their bytes are not stored; a mapfile that stops before the end of SOURCE leaves the rest non-tried.

OUT is written under a temporary name beside it and renamed only when complete; an existing OUT is never replaced without --force.`
  static override examples = [
    '<%= config.bin %> create disk.img disk.vdimg',
    '<%= config.bin %> create --mapfile disk.map rescued.img disk.vdimg --meta model="WDC WD5000" --meta serial=WD-123',
    'dd if=/dev/sdb bs=1M | <%= config.bin %> create - disk.vdimg --level 9',
    '<%= config.bin %> create /dev/sdb disk.vdimg --json',
  ]
  static override args = {
    source: Args.string({description: 'file, block device, or - for stdin', required: true}),
    out: Args.string({description: 'the image to write (.vdimg)', required: true}),
  }
  static override flags = {
    mapfile: Flags.string({char: 'm', description: 'GNU ddrescue mapfile of SOURCE'}),
    'chunk-size': Flags.string({description: 'chunk size: a power of two from 4K to 4M', default: `${DEFAULT_CHUNK_SIZE / 1024}K`}),
    level: Flags.integer({char: 'l', description: 'zstd compression level (-7 to 19)', default: DEFAULT_LEVEL}),
    threads: Flags.integer({char: 't', description: 'compression threads (default: every core)'}),
    'sector-size': Flags.integer({description: 'sector size of the original medium: 512, 2048 or 4096 (default: the device\'s, else 512)'}),
    meta: Flags.string({description: 'metadata key=value (repeatable); well-known keys: model, serial, tool, date, notes', multiple: true}),
    'no-hash': Flags.boolean({description: 'do not compute the media SHA-256 (for huge sparse images)'}),
    force: Flags.boolean({char: 'f', description: 'replace OUT if it exists'}),
    recovery: Flags.string({description: 'store Reed–Solomon recovery data of N% of the stored bytes (e.g. 5%), for `vdev repair` (format 1.2)'}),
  }

  async run(): Promise<CreateResult> {
    const {args, flags} = await this.parse(Create)
    const chunkSize = parseSize(flags['chunk-size'])
    const map = flags.mapfile ? readMapfile(flags.mapfile) : undefined
    if (!flags.force && fs.existsSync(args.out)) throw new VdevError('exists', `${args.out}: already exists (use --force to replace it)`)
    const input = openInput(args.source)
    const progress = Progress.for('create', this.jsonEnabled())
    let result: CreateResult
    try {
      result = await createImage(input, args.out, {
        chunkSize,
        level: flags.level,
        threads: flags.threads,
        sectorSize: flags['sector-size'],
        mapfile: map,
        hash: !flags['no-hash'],
        force: flags.force,
        recovery: flags.recovery === undefined ? undefined : parsePercent(flags.recovery),
        metadata: buildMetadata({source: args.source, meta: flags.meta ?? [], mapfile: map, version: this.config.version}),
        onProgress: (d, t) => progress.update(d, t),
      })
    } finally {
      progress.done()
      await input.close()
    }
    const ratio = result.size ? (result.fileSize / result.size) * 100 : 0
    this.say(`${result.path}: ${humanBytes(result.size)} in ${humanBytes(result.fileSize)} (${ratio.toFixed(1)}%)`)
    this.say(`chunks: ${Object.entries(result.chunks).map(([k, v]) => `${v} ${k}`).join(', ')}`)
    if (result.badAreas) this.say(`bad areas: ${result.badAreas} (${humanBytes(result.badBytes)})`)
    if (result.sha256) this.say(`sha256: ${result.sha256}`)
    const rec = result.recovery
    if (rec) this.say(`recovery: ${humanBytes(rec.bytes)}, stripes of ${rec.k} data + ${rec.m} parity slices of ${rec.sliceSize} bytes (${rec.stripes} stripes)`)
    return result
  }
}

/** "5%", "5", "0.5%" → 5, 5, 0.5. */
export function parsePercent(text: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*%?$/.exec(text.trim())
  const n = m ? Number(m[1]) : NaN
  if (!(n > 0 && n <= 100)) throw new VdevError('usage', `invalid recovery "${text}" (a percentage above 0 and at most 100, e.g. 5%)`)
  return n
}

/** "128K", "1M", "4096" → bytes. */
export function parseSize(text: string): number {
  const m = /^([0-9]+)\s*([KMG]?)(i?B)?$/i.exec(text.trim())
  if (!m) throw new VdevError('usage', `invalid size "${text}" (examples: 4096, 64K, 1M)`)
  const mult = {'': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3}[m[2].toUpperCase() as '' | 'K' | 'M' | 'G']
  return Number(m[1]) * mult
}

/**
 * The flags that say how an image is read, shared by attach, serve and info: a VDIMG image is recognised
 * by itself; a raw image (a ddrescue output file, a plain disk image, a block device) is served as it is,
 * with its ddrescue mapfile when there is one.
 */
import {Flags} from '@oclif/core'
import type {ImageFormat, SourceArgs} from '../sources'

export const sourceFlags = {
  mapfile: Flags.string({
    char: 'm',
    description: 'the GNU ddrescue mapfile of a raw image: bytes not marked finished ("+") read as unreadable (implies --format raw)',
  }),
  format: Flags.string({
    description: 'auto: a VDIMG image, or raw with --mapfile or for a block device; raw: a plain image file or block device (read-only)',
    options: ['auto', 'vdimg', 'raw'],
    default: 'auto',
  }),
  'sector-size': Flags.integer({description: 'logical sector size of a raw image (default: the block device\'s, else 512)', min: 512, max: 4096}),
}

export function sourceArgs(flags: {mapfile?: string; format?: string; 'sector-size'?: number}): SourceArgs {
  return {format: (flags.format ?? 'auto') as ImageFormat, mapfile: flags.mapfile, sectorSize: flags['sector-size']}
}

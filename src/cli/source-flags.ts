/**
 * The flags that say how an image is read, shared by attach, serve and info: a VDIMG image is recognised
 * by itself; a raw image (a ddrescue output file, a plain disk image, a block device) is served as it is,
 * with its ddrescue mapfile when there is one. A VDIMG image may also be an http(s):// URL (remoteFlags).
 */
import {Flags} from '@oclif/core'
import {VdevError} from '../core/errors'
import type {ImageFormat, SourceArgs} from '../sources'

/** How a remote image (http:// or https://) is read: every command that takes an image has them. */
export const remoteFlags = {
  header: Flags.string({
    description: 'a remote image: add this request header to every GET ("Name: value", e.g. "Authorization: Bearer …"); repeatable',
    multiple: true,
  }),
  'remote-timeout': Flags.integer({
    description: 'a remote image: seconds one read may take, retries included, before it fails (EIO / exit 3)',
    default: 30,
    min: 1,
    max: 60,
  }),
}

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
  ...remoteFlags,
}

/** `--header` values as a header object; a malformed one is a usage error. */
export function parseHeaders(values: string[] | undefined): Record<string, string> | undefined {
  if (!values?.length) return undefined
  const out: Record<string, string> = {}
  for (const v of values) {
    const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/.exec(v)
    if (!m || /[\r\n\0]/.test(m[2])) throw new VdevError('usage', `--header ${JSON.stringify(v.slice(0, 60))}: expected "Name: value" on one line`)
    const name = m[1].toLowerCase()
    if (name === 'range' || name === 'if-match' || name === 'host') throw new VdevError('usage', `--header ${m[1]}: vdev sets that header itself`)
    out[name] = m[2]
  }
  return out
}

export function remoteArgs(flags: {header?: string[]; 'remote-timeout'?: number}): Pick<SourceArgs, 'headers' | 'timeoutMs'> {
  return {headers: parseHeaders(flags.header), timeoutMs: flags['remote-timeout'] !== undefined ? flags['remote-timeout'] * 1000 : undefined}
}

export function sourceArgs(flags: {mapfile?: string; format?: string; 'sector-size'?: number; header?: string[]; 'remote-timeout'?: number}): SourceArgs {
  return {format: (flags.format ?? 'auto') as ImageFormat, mapfile: flags.mapfile, sectorSize: flags['sector-size'], ...remoteArgs(flags)}
}

/**
 * The flags that say how an image is read, shared by attach, serve and info: a VDIMG image is recognised
 * by itself; a raw image (a ddrescue output file, a plain disk image, a block device) is served as it is,
 * with its ddrescue mapfile when there is one. A VDIMG image may also be an http(s):// or s3:// URL (remoteFlags).
 */
import {Flags} from '@oclif/core'
import {VdevError} from '../core/errors'
import {defaultCacheDir} from '../remote/cache'
import type {ImageFormat, RemoteArgs, SourceArgs} from '../sources'

/** How a remote image (http://, https:// or s3://) is read: every command that takes an image has them. */
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
  cache: Flags.string({
    description: 'a remote image: keep fetched bytes in this directory, shared by every vdev process (default: $XDG_CACHE_HOME/vdev or ~/.cache/vdev); "none": no cache',
  }),
  'cache-size': Flags.string({description: 'a remote image: most bytes the cache directory holds (e.g. 512M, 10G; default 10G)'}),
  'version-id': Flags.string({
    description: 'an s3:// image in a versioned bucket: read this version of the object (a version id, as `aws s3api get-object --version-id` takes it); default: the newest',
  }),
}

/** "10G", "512M", "4096": bytes; a malformed size is a usage error. */
export function parseSize(v: string, flag: string): number {
  const m = /^([0-9]+)([KMGT]?)(?:i?B)?$/i.exec(v.trim())
  if (!m) throw new VdevError('usage', `${flag} ${JSON.stringify(v)}: expected a size such as 512M or 10G`)
  const n = Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase())
  if (!Number.isSafeInteger(n) || n < 1 << 20) throw new VdevError('usage', `${flag} ${v}: at least 1M`)
  return n
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

type RemoteFlagValues = {header?: string[]; 'remote-timeout'?: number; cache?: string; 'cache-size'?: string; 'version-id'?: string}

export function remoteArgs(flags: RemoteFlagValues): RemoteArgs {
  const cache = flags.cache ?? defaultCacheDir()
  return {
    headers: parseHeaders(flags.header),
    timeoutMs: flags['remote-timeout'] !== undefined ? flags['remote-timeout'] * 1000 : undefined,
    cacheDir: cache === 'none' ? undefined : cache,
    cacheBytes: flags['cache-size'] !== undefined ? parseSize(flags['cache-size'], '--cache-size') : undefined,
    versionId: parseVersionId(flags['version-id']),
  }
}

/** `--version-id`: S3's ids are up to 1024 printable characters; anything else is a usage error. */
export function parseVersionId(v: string | undefined): string | undefined {
  if (v === undefined) return undefined
  if (!/^[\x21-\x7e]{1,1024}$/.test(v)) throw new VdevError('usage', `--version-id ${JSON.stringify(v.slice(0, 60))}: expected an S3 version id (printable characters, no spaces)`)
  return v
}

export function sourceArgs(flags: {mapfile?: string; format?: string; 'sector-size'?: number} & RemoteFlagValues): SourceArgs {
  return {format: (flags.format ?? 'auto') as ImageFormat, mapfile: flags.mapfile, sectorSize: flags['sector-size'], ...remoteArgs(flags)}
}

/**
 * Image metadata (FORMAT.md §8): a JSON object with well-known keys and free user keys.
 */
import * as os from 'node:os'
import {VdevError} from '../core/errors'
import type {Mapfile} from './mapfile'

/** Well-known keys and their JSON types. Anything else is a free user key (string values). */
export const WELL_KNOWN: Record<string, 'string' | 'number'> = {
  model: 'string', // source model
  serial: 'string', // source serial number
  size: 'number', // source size in bytes
  sectorSize: 'number', // source logical sector size
  tool: 'string', // acquisition tool, e.g. "GNU ddrescue 1.27"
  date: 'string', // acquisition date, ISO 8601
  notes: 'string',
  source: 'string', // the path the image was created from
  created: 'string', // when the image was created, ISO 8601
  creator: 'string', // the program that wrote the image
  host: 'string',
}

/**
 * FORMAT.md §8: metadata nests at most this many levels of objects and arrays (the top-level object is
 * level 1), so code that walks it recursively (JSON.stringify, printing it) cannot run out of stack.
 */
export const MAX_METADATA_DEPTH = 64

/**
 * Where JSON text first nests deeper than `max` (a byte index), or undefined. Scans the bytes without
 * recursion, before anything parses them; brackets inside strings do not count. Multi-byte UTF-8
 * sequences never contain ASCII bytes, so the bytes can be scanned as they are.
 */
export function metadataTooDeep(b: Uint8Array, max = MAX_METADATA_DEPTH): number | undefined {
  let depth = 0
  let inString = false
  for (let i = 0; i < b.length; i++) {
    const c = b[i]
    if (inString) {
      if (c === 0x5c) i++ // backslash: the next byte is escaped
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) return i
    } else if (c === 0x7d || c === 0x5d) depth--
  }
  return undefined
}

export function parseMeta(pairs: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const p of pairs) {
    const eq = p.indexOf('=')
    if (eq <= 0) throw new VdevError('usage', `--meta "${p}" is not key=value`)
    const key = p.slice(0, eq)
    const value = p.slice(eq + 1)
    if (WELL_KNOWN[key] === 'number') {
      if (!/^[0-9]+$/.test(value)) throw new VdevError('usage', `--meta ${key} must be a whole number, got "${value}"`)
      out[key] = Number(value)
    } else out[key] = value
  }
  return out
}

export function buildMetadata(o: {source: string; meta: string[]; mapfile?: Mapfile & {tool?: string}; version: string}): Record<string, unknown> {
  const md: Record<string, unknown> = {
    source: o.source,
    created: new Date().toISOString(),
    creator: `vdev ${o.version}`,
    host: os.hostname(),
  }
  if (o.mapfile) {
    md.ddrescue = {
      currentPos: o.mapfile.currentPos,
      currentStatus: o.mapfile.currentStatus,
      ...(o.mapfile.currentPass !== undefined ? {currentPass: o.mapfile.currentPass} : {}),
      ...(o.mapfile.commandLine ? {commandLine: o.mapfile.commandLine} : {}),
    }
    if (o.mapfile.tool) md.tool = o.mapfile.tool
    if (o.mapfile.startTime) md.date = o.mapfile.startTime
  }
  return {...md, ...parseMeta(o.meta)}
}

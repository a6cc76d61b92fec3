/**
 * GNU ddrescue mapfiles (the ddrescue manual, "Mapfile structure"): comment lines start with '#', a
 * status line `current_pos current_status [current_pass]`, then block lines `pos size status`. Integers
 * use C syntax (0x hex, leading-0 octal, decimal). Blocks must be contiguous and non-overlapping; a gap
 * before the first block or after the last is non-tried, as ddrescue itself treats it.
 */
import * as fs from 'node:fs'
import {VdevError, ioError, type BadRange, type BadStatus} from '../core/errors'
import {BadAreaMap} from './badmap'

/** Block status characters (ddrescue manual). '+' is finished; the rest are bad-area statuses. */
export const BLOCK_STATUS: Record<string, BadStatus | 'finished'> = {
  '?': 'non-tried',
  '*': 'non-trimmed',
  '/': 'non-scraped',
  '-': 'bad-sector',
  '+': 'finished',
}
export const STATUS_CHAR: Record<BadStatus, string> = {
  'non-tried': '?',
  'non-trimmed': '*',
  'non-scraped': '/',
  'bad-sector': '-',
}
/** current_status characters: the phase ddrescue was in ('F' filling, 'G' generating, '+' finished). */
const CURRENT_STATUS = new Set(['?', '*', '/', '-', 'F', 'G', '+'])

export interface Mapfile {
  currentPos: number
  currentStatus: string
  currentPass?: number
  /** Bad (non-finished) areas within [0, extent), plus the leading gap if the first block starts after 0. */
  bad: BadAreaMap
  /** End of the last block: how many bytes of the source the mapfile describes. */
  extent: number
  /** End of the last finished ('+') block: the source must hold at least this many bytes. */
  finishedEnd: number
  /** From ddrescue's header comments, when present: "GNU ddrescue 1.27", its command line, its start time. */
  tool?: string
  commandLine?: string
  startTime?: string
}

const INTEGER = /^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/

/** Parse a C-syntax non-negative integer; undefined if malformed or beyond 2^53. */
export function parseCInteger(text: string): number | undefined {
  if (!INTEGER.test(text)) return undefined
  let v: bigint
  if (/^0[xX]/.test(text)) v = BigInt(text)
  else if (text.length > 1 && text[0] === '0') v = BigInt('0o' + text.slice(1))
  else v = BigInt(text)
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined
}

export function parseMapfile(text: string, name: string): Mapfile {
  const fail = (line: number, what: string): never => {
    throw new VdevError('format', `${name}:${line}: ${what}`)
  }
  let status: {pos: number; st: string; pass?: number} | undefined
  const ranges: BadRange[] = []
  let end = -1
  let finishedEnd = 0
  const info: {tool?: string; commandLine?: string; startTime?: string} = {}
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const ln = i + 1
    const comment = /^#\s*(Mapfile\. Created by|Command line:|Start time:)\s*(.*)$/.exec(lines[i].trim())
    if (comment && !status) {
      if (comment[1] === 'Command line:') info.commandLine = comment[2]
      else if (comment[1] === 'Start time:') info.startTime = comment[2]
      else info.tool = comment[2].replace(/ version /, ' ')
    }
    const hash = lines[i].indexOf('#')
    const body = (hash >= 0 ? lines[i].slice(0, hash) : lines[i]).trim()
    if (!body) continue
    const f = body.split(/\s+/)
    if (!status) {
      if (f.length < 2 || f.length > 3) fail(ln, `status line needs 2 or 3 fields (current_pos current_status [current_pass]), got ${f.length}`)
      const pos = parseCInteger(f[0])
      if (pos === undefined) fail(ln, `bad current_pos "${f[0]}"`)
      if (f[1].length !== 1 || !CURRENT_STATUS.has(f[1])) fail(ln, `bad current_status "${f[1]}"`)
      let pass: number | undefined
      if (f.length === 3) {
        pass = /^[0-9]+$/.test(f[2]) ? Number(f[2]) : undefined
        // Past 2^53 a pass number would not be kept exactly (and written back by extract --mapfile-out).
        if (pass === undefined || !Number.isSafeInteger(pass) || pass < 1) fail(ln, `bad current_pass "${f[2]}"`)
      }
      status = {pos: pos as number, st: f[1], pass}
      continue
    }
    if (f.length !== 3) fail(ln, `block line needs 3 fields (pos size status), got ${f.length}`)
    const pos = parseCInteger(f[0])
    const size = parseCInteger(f[1])
    if (pos === undefined) fail(ln, `bad block position "${f[0]}"`)
    if (size === undefined || size === 0) fail(ln, `bad block size "${f[1]}"`)
    const st = f[2].length === 1 ? BLOCK_STATUS[f[2]] : undefined
    if (!st) fail(ln, `bad block status "${f[2]}" (expected one of ? * / - +)`)
    const p = pos as number
    const s = size as number
    if (!Number.isSafeInteger(p + s)) fail(ln, 'block extends past 2^53 bytes')
    if (end < 0) {
      if (p > 0) ranges.push({offset: 0, length: p, status: 'non-tried'})
    } else if (p < end) fail(ln, `block at ${p} overlaps the previous block (which ends at ${end})`)
    else if (p > end) fail(ln, `block at ${p} is not contiguous with the previous block (which ends at ${end})`)
    if (st !== 'finished') ranges.push({offset: p, length: s, status: st as BadStatus})
    else finishedEnd = p + s
    end = p + s
  }
  if (!status) fail(lines.length, 'no status line (is this a ddrescue mapfile?)')
  const st = status as {pos: number; st: string; pass?: number}
  return {currentPos: st.pos, currentStatus: st.st, currentPass: st.pass, bad: BadAreaMap.fromRanges(ranges), extent: Math.max(end, 0), finishedEnd, ...info}
}

/** Upper bound on a mapfile we read into memory (a map of 10 million blocks is ~400 MB of text). */
const MAX_MAPFILE_BYTES = 512 * 1024 * 1024

export function readMapfile(path: string): Mapfile {
  let text: string
  try {
    const st = fs.statSync(path)
    if (st.isDirectory()) throw Object.assign(new Error('is a directory'), {code: 'EISDIR'})
    if (st.size > MAX_MAPFILE_BYTES) throw new VdevError('format', `${path}: mapfile is ${st.size} bytes, more than the ${MAX_MAPFILE_BYTES} accepted`)
    text = fs.readFileSync(path, 'utf8')
  } catch (err) {
    throw ioError(path, err)
  }
  return parseMapfile(text, path)
}

const hex = (n: number) => '0x' + n.toString(16).toUpperCase().padStart(8, '0')

/**
 * Write a ddrescue mapfile covering [0, size): bad areas as listed, everything else finished. The status
 * line's values come from an image's metadata (extract --mapfile-out), which anything may have written:
 * one that ddrescue (or parseMapfile) would refuse is replaced by the default, so the mapfile stays valid.
 */
export function formatMapfile(
  bad: Iterable<BadRange>,
  size: number,
  opts: {currentPos?: number; currentStatus?: string; currentPass?: number; comment?: string} = {},
): string {
  const comment = opts.comment?.replace(/[\r\n]+/g, ' ')
  const lines = ['# Mapfile. Created by vdev', ...(comment ? [`# ${comment}`] : []), '# current_pos  current_status  current_pass']
  const list = [...bad]
  const given = opts.currentStatus !== undefined && CURRENT_STATUS.has(opts.currentStatus) ? opts.currentStatus : undefined
  const status = given ?? (list.some((b) => b.status === 'non-tried') ? '?' : '+')
  const exact = (v: number | undefined, min: number) => (v !== undefined && Number.isSafeInteger(v) && v >= min ? v : undefined)
  lines.push(`${hex(exact(opts.currentPos, 0) ?? 0)}     ${status}               ${exact(opts.currentPass, 1) ?? 1}`)
  lines.push('#      pos        size  status')
  let at = 0
  for (const b of list) {
    if (b.offset > at) lines.push(`${hex(at)}  ${hex(b.offset - at)}  +`)
    lines.push(`${hex(b.offset)}  ${hex(b.length)}  ${STATUS_CHAR[b.status]}`)
    at = b.offset + b.length
  }
  if (at < size || size === 0) {
    if (at < size) lines.push(`${hex(at)}  ${hex(size - at)}  +`)
  }
  return lines.join('\n') + '\n'
}

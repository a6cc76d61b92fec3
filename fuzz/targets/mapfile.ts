/**
 * Target "mapfile": GNU ddrescue mapfiles, real-looking (header comments, a status line, contiguous
 * blocks of every status, hex or decimal), then mutated line by line and token by token: numbers in
 * every C syntax and at every limit (2^53, 2^64 …), unknown statuses, missing, repeated, swapped or
 * extra lines and fields, CR LF, tabs, NUL, a BOM, truncation.
 *
 * The contract of parseMapfile: it throws a VdevError with code 'format' and a one-line message naming
 * the file, or it returns a map that is consistent — integers exact, bad areas sorted, disjoint, non-empty
 * and inside the mapfile's extent, the finished end inside it too — that agrees with a reference reading
 * of the same block lines, survives a round trip through formatMapfile, and answers covers / touches /
 * intersect as a linear scan of its ranges does.
 */
import {VdevError, type BadRange, type BadStatus} from '../../src/core/errors'
import {BadAreaMap} from '../../src/format/badmap'
import {BLOCK_STATUS, formatMapfile, parseMapfile, type Mapfile} from '../../src/format/mapfile'
import type {Rng} from '../rng'
import {normalize, type CaseContext, type CaseResult, type Target} from '../harness'

const NAME = 'fuzz.map'
const STATUSES = ['+', '-', '?', '*', '/']
const CURRENT = ['?', '*', '/', '-', 'F', 'G', '+']

function num(rng: Rng, v: bigint): string {
  const style = rng.pick(['hex', 'hex', 'dec', 'HEX', 'oct'])
  if (style === 'hex') return '0x' + v.toString(16).toUpperCase().padStart(rng.chance(0.7) ? 8 : 0, '0')
  if (style === 'HEX') return '0X' + v.toString(16)
  if (style === 'oct') return v === 0n ? '0' : '0' + v.toString(8)
  return v.toString()
}

/** A mapfile as ddrescue writes one: header comments, status line, contiguous blocks. */
function realistic(rng: Rng): {lines: string[]; blocks: number} {
  const lines: string[] = []
  if (rng.chance(0.8)) {
    lines.push('# Mapfile. Created by GNU ddrescue version 1.27')
    lines.push('# Command line: ddrescue -d -r3 /dev/sdb disk.img disk.map')
    lines.push('# Start time:   2026-01-01 10:00:00')
    lines.push('# Current time: 2026-01-01 11:22:33')
    if (rng.chance(0.5)) lines.push('# Finished')
    lines.push('# current_pos  current_status  current_pass')
  }
  const sector = BigInt(rng.pick([512, 2048, 4096, 1]))
  const n = rng.pick([0, 1, 2, 5, 20, rng.range(1, 300)])
  let pos = rng.chance(0.9) ? 0n : BigInt(rng.range(1, 100)) * sector
  lines.push(`${num(rng, pos + BigInt(rng.int(1000)) * sector)}     ${rng.pick(CURRENT)}               ${rng.chance(0.8) ? rng.range(1, 5) : ''}`.trimEnd())
  if (rng.chance(0.7)) lines.push('#      pos        size  status')
  let prev = ''
  for (let i = 0; i < n; i++) {
    const size = BigInt(rng.pick([1, 1, 2, 8, 128, 2048, rng.range(1, 100000)])) * sector
    let st = rng.pick(STATUSES)
    if (st === prev && rng.chance(0.7)) st = rng.pick(STATUSES) // ddrescue merges neighbours of one status; not always
    prev = st
    lines.push(`${num(rng, pos)}  ${num(rng, size)}  ${st}`)
    pos += size
  }
  return {lines, blocks: n}
}

const NUMBERS = [
  '0', '1', '00', '08', '09', '0x', '0X0', '0x0', '0xg', '-1', '+1', '1e3', '1.0', '0b101', '٣', '１',
  '4294967295', '0xFFFFFFFF', '9007199254740991', '9007199254740992', '9007199254740993', '0x1FFFFFFFFFFFFF',
  '0x20000000000000', '0x20000000000001', '18446744073709551615', '0xFFFFFFFFFFFFFFFF', '18446744073709551616',
  '0777777777777777777777', '01000000000000000000', '1000000000000000000000000000000', '0000000000000000000000000001',
]
const STATUS_TOKENS = ['+', '-', '?', '*', '/', 'F', 'G', 'x', '++', '', '\u00a0', '+#', '#', '0', 'é']

function mutate(rng: Rng, lines: string[]): string[] {
  const op = rng.pick([
    'number', 'number', 'number', 'status', 'delete', 'duplicate', 'swap', 'comment', 'blank', 'junk-line', 'extra-field',
    'missing-field', 'move-status', 'gap', 'overlap', 'trailing-comment', 'nul', 'long-line', 'tabs', 'pass',
  ])
  const i = lines.length ? rng.int(lines.length) : 0
  const fields = (lines[i] ?? '').split(/\s+/).filter(Boolean)
  switch (op) {
    case 'number':
      if (fields.length) {
        const k = rng.int(Math.min(2, fields.length))
        fields[k] = rng.chance(0.7) ? rng.pick(NUMBERS) : String(rng.u64())
        lines[i] = fields.join(rng.pick(['  ', ' ', '\t']))
      }
      break
    case 'status':
      if (fields.length >= 2) {
        fields[fields.length >= 3 ? 2 : 1] = rng.pick(STATUS_TOKENS)
        lines[i] = fields.join('  ')
      }
      break
    case 'delete':
      lines.splice(i, 1)
      break
    case 'duplicate':
      lines.splice(i, 0, lines[i] ?? '')
      break
    case 'swap': {
      if (lines.length < 2) break
      const j = rng.int(lines.length)
      ;[lines[i], lines[j]] = [lines[j], lines[i]]
      break
    }
    case 'comment':
      lines.splice(i, 0, rng.pick(['#', '# Command line: x', '#Mapfile. Created by X', '# Start time: now', '  # indented']))
      break
    case 'blank':
      lines.splice(i, 0, rng.pick(['', ' ', '\t', '\r']))
      break
    case 'junk-line':
      lines.splice(i, 0, rng.bytes(rng.range(1, 40)).toString('latin1'))
      break
    case 'extra-field':
      lines[i] = `${lines[i] ?? ''} ${rng.pick(['1', '+', 'x', '0x10'])}`
      break
    case 'missing-field':
      lines[i] = fields.slice(0, Math.max(0, fields.length - 1)).join(' ')
      break
    case 'move-status': {
      const s = lines.findIndex((l) => !l.trim().startsWith('#') && l.trim() !== '')
      if (s >= 0) lines.push(...lines.splice(s, 1))
      break
    }
    case 'gap':
    case 'overlap':
      if (fields.length === 3) {
        let v: bigint
        try {
          v = cInt(fields[0])
        } catch {
          break
        }
        fields[0] = '0x' + (op === 'gap' ? v + 1n : v > 0n ? v - 1n : 0n).toString(16)
        lines[i] = fields.join('  ')
      }
      break
    case 'trailing-comment':
      lines[i] = `${lines[i] ?? ''}${rng.pick([' # note', '#x', ' #'])}`
      break
    case 'nul':
      lines[i] = `${lines[i] ?? ''}\u0000`
      break
    case 'long-line':
      lines.splice(i, 0, rng.pick(['0 ', '# ', '1 '.repeat(3)]) + 'x'.repeat(rng.pick([1000, 100000])))
      break
    case 'tabs':
      lines[i] = (lines[i] ?? '').replace(/ +/g, '\t')
      break
    case 'pass':
      if (fields.length >= 2) lines[i] = `${fields[0]} ${fields[1]} ${rng.pick(['0', '-1', '1.5', '99999999999999999999', '2147483648', '01', 'x', ''])}`
      break
  }
  return lines
}

/** The reference reading of block lines: pos size status, each integer in C syntax, exactly. */
function cInt(t: string): bigint {
  if (/^0[xX]/.test(t)) return BigInt(t)
  if (t.length > 1 && t[0] === '0') return BigInt('0o' + t.slice(1))
  return BigInt(t)
}

function reference(text: string): {bad: BadRange[]; extent: number; finishedEnd: number} {
  const bodies = text
    .split('\n')
    .map((l) => (l.includes('#') ? l.slice(0, l.indexOf('#')) : l).trim())
    .filter(Boolean)
  const bad: BadRange[] = []
  let end = -1n
  let finishedEnd = 0n
  for (const body of bodies.slice(1)) {
    const [p, s, st] = body.split(/\s+/)
    const pos = cInt(p)
    const size = cInt(s)
    if (end < 0n && pos > 0n) bad.push({offset: 0, length: Number(pos), status: 'non-tried'})
    const status = BLOCK_STATUS[st]
    if (status === 'finished') finishedEnd = pos + size
    else bad.push({offset: Number(pos), length: Number(size), status: status as BadStatus})
    end = pos + size
  }
  return {bad, extent: Number(end < 0n ? 0n : end), finishedEnd: Number(finishedEnd)}
}

function canonical(ranges: Iterable<BadRange>): string {
  return JSON.stringify([...BadAreaMap.fromRanges(ranges)])
}

function checkMap(m: Mapfile, text: string, rng: Rng, failures: string[]): void {
  const safe = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
  if (!safe(m.currentPos)) failures.push(`current_pos ${m.currentPos} is not an exact non-negative integer`)
  if (!CURRENT.includes(m.currentStatus)) failures.push(`current_status ${JSON.stringify(m.currentStatus)} is not a ddrescue phase`)
  if (m.currentPass !== undefined && (!safe(m.currentPass) || m.currentPass < 1)) failures.push(`current_pass ${m.currentPass} is not an exact integer ≥ 1`)
  if (!safe(m.extent)) failures.push(`extent ${m.extent} is not exact`)
  if (!safe(m.finishedEnd) || m.finishedEnd > m.extent) failures.push(`finished end ${m.finishedEnd} is not inside the extent ${m.extent}`)
  const list = [...m.bad]
  let prev = 0
  for (const r of list) {
    if (!safe(r.offset) || !safe(r.length) || r.length === 0) failures.push(`bad range ${JSON.stringify(r)} is not exact and non-empty`)
    if (r.offset < prev) failures.push(`bad range at ${r.offset} is out of order or overlaps`)
    if (r.offset + r.length > m.extent) failures.push(`bad range ${JSON.stringify(r)} ends past the extent ${m.extent}`)
    prev = r.offset + r.length
  }
  if (failures.length) return
  const ref = reference(text)
  if (ref.extent !== m.extent) failures.push(`extent ${m.extent}, but the block lines end at ${ref.extent}`)
  if (ref.finishedEnd !== m.finishedEnd) failures.push(`finished end ${m.finishedEnd}, but the last '+' block ends at ${ref.finishedEnd}`)
  if (canonical(ref.bad) !== canonical(list)) failures.push('the bad areas differ from the block lines')
  // Round trip: what extract --mapfile-out would write reads back the same.
  const again = parseMapfile(formatMapfile(list, m.extent, {currentPos: m.currentPos, currentStatus: m.currentStatus, currentPass: m.currentPass}), 'again.map')
  if (canonical(again.bad) !== canonical(list) || again.currentPos !== m.currentPos || again.currentStatus !== m.currentStatus)
    failures.push('formatMapfile → parseMapfile does not give the same map back')
  if (m.extent > 0 && again.extent !== m.extent && !(list.length === 0 && again.extent === 0)) failures.push(`round trip: extent ${m.extent} came back as ${again.extent}`)
  // The lookups agree with a linear scan.
  for (let k = 0; k < 8 && m.extent > 0; k++) {
    const off = rng.int(m.extent)
    const len = 1 + rng.int(Math.min(m.extent - off, rng.pick([1, 512, 1 << 20, m.extent])))
    const hit = list.filter((r) => r.offset < off + len && r.offset + r.length > off)
    const clipped = hit.map((r) => ({offset: Math.max(r.offset, off), length: Math.min(r.offset + r.length, off + len) - Math.max(r.offset, off), status: r.status}))
    if (JSON.stringify(m.bad.intersect(off, len)) !== JSON.stringify(clipped)) failures.push(`intersect(${off}, ${len}) disagrees with a scan`)
    if (m.bad.touches(off, len) !== hit.length > 0) failures.push(`touches(${off}, ${len}) disagrees with a scan`)
    let at = off
    for (const r of hit) if (r.offset <= at) at = Math.max(at, r.offset + r.length)
    if (m.bad.covers(off, len) !== at >= off + len) failures.push(`covers(${off}, ${len}) disagrees with a scan`)
  }
}

export const mapfileTarget: Target = {
  name: 'mapfile',
  caseTimeoutMs: 10_000,
  async setup() {
    return {
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const rng = ctx.rng
        const {lines} = realistic(rng)
        const n = rng.pick([0, 1, 1, 2, 3, 6])
        for (let k = 0; k < n; k++) mutate(rng, lines)
        const eol = rng.chance(0.1) ? '\r\n' : '\n'
        let text = (rng.chance(0.05) ? '\ufeff' : '') + lines.join(eol) + (rng.chance(0.9) ? eol : '')
        if (rng.chance(0.05)) text = text.slice(0, rng.int(text.length + 1))
        const failures: string[] = []
        let outcome: string
        const t0 = Date.now()
        try {
          const m = parseMapfile(text, NAME)
          outcome = `ok:${m.bad.count === 0 ? 'clean' : 'bad'}`
          checkMap(m, text, rng, failures)
        } catch (err) {
          if (!(err instanceof VdevError)) {
            failures.push(`threw ${(err as Error)?.name}: ${(err as Error)?.message} — not a VdevError`)
            outcome = `threw:${(err as Error)?.name}`
          } else {
            if (err.code !== 'format') failures.push(`error code '${err.code}', not 'format': ${err.message}`)
            if (err.message.includes('\n') || err.message.includes('\r')) failures.push(`the message is not one line: ${JSON.stringify(err.message.slice(0, 200))}`)
            if (!err.message.startsWith(`${NAME}:`)) failures.push(`the message does not start with the file name: ${err.message}`)
            outcome = `format:${normalize(err.message.replace(/^fuzz\.map:\d+: /, ''), 60)}`
          }
        }
        const ms = Date.now() - t0
        if (ms > 2000) failures.push(`parsing ${text.length} characters took ${ms} ms`)
        return {outcome, failures, input: {ext: 'map', data: text}, steps: [`${lines.length} lines, ${text.length} characters`]}
      },
      async close() {},
    }
  },
}

/**
 * `repair`: rebuilds an image's damaged chunk data and index tables from its recovery data (format 1.2,
 * FORMAT.md §13) and its damaged critical structures from their copies (1.1, §12), bit-exactly, in a
 * working copy that is renamed into place only when done. `assessRepair` is the same search without
 * writing: what `verify` says about whether the damage it found is repairable.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {VdevError, ioError} from '../core/errors'
import {crc32c} from './crc'
import {
  COPY_ALIGN,
  ChunkKind,
  HEADER_SIZE,
  L1_ENTRY_SIZE,
  L2_ENTRY_SIZE,
  LayoutError,
  SECTION_ENTRY_SIZE,
  SectionType,
  decodeHeader,
  decodeL1Entry,
  readL2Entry,
  type Section,
} from './layout'
import {openImage, type VdimgImage} from './reader'
import {
  RECOVERY_HEADER_SIZE,
  RecoveryFormatError,
  dataSlices,
  sliceOrigin,
  decodeRecoveryHeader,
  encodeRecovery,
  parityOf,
  solveStripe,
  type RecoveryLayout,
} from './recovery'
import {verifyImage, type Damage} from './verify'
import {syncDirectory} from '../sys/dirsync'

/** Byte-level access to the file being repaired (or only assessed). */
class FileBytes {
  constructor(
    private readonly fd: number,
    readonly name: string,
    readonly size: number,
    private readonly writable: boolean,
  ) {}
  /** `len` bytes at `pos`; bytes past the end of the file read as zeros (a truncated file: damage). */
  read(len: number, pos: number): Buffer {
    const b = Buffer.alloc(len)
    let done = 0
    while (done < len && pos + done < this.size) {
      let n: number
      try {
        n = fs.readSync(this.fd, b, done, len - done, pos + done)
      } catch (err) {
        throw ioError(this.name, err, `read error at byte ${pos + done}`)
      }
      if (n === 0) break
      done += n
    }
    return b
  }
  inside(len: number, pos: number): boolean {
    return pos >= HEADER_SIZE && pos + len <= this.size
  }
  write(buf: Buffer, pos: number): void {
    if (!this.writable) throw new VdevError('internal', `${this.name}: repair wrote while only assessing`)
    let done = 0
    while (done < buf.length) {
      try {
        done += fs.writeSync(this.fd, buf, done, buf.length - done, pos + done)
      } catch (err) {
        throw ioError(this.name, err, 'write error')
      }
    }
  }
}

/** A sorted set of damaged file byte ranges. */
class Ranges {
  list: Array<[number, number]> = []
  add(from: number, to: number): void {
    if (to > from) this.list.push([from, to])
  }
  normalize(): void {
    this.list.sort((a, b) => a[0] - b[0])
    const out: Array<[number, number]> = []
    for (const r of this.list) {
      const last = out[out.length - 1]
      if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1])
      else out.push([r[0], r[1]])
    }
    this.list = out
  }
  /** The parts of [from, to) in the set. */
  within(from: number, to: number): Array<[number, number]> {
    const out: Array<[number, number]> = []
    for (const [a, b] of this.list) if (b > from && a < to) out.push([Math.max(a, from), Math.min(b, to)])
    return out
  }
}

export interface RepairReport {
  /** Every damage found was repaired (or there was none). */
  repaired: boolean
  /** Nothing was damaged: no file was written. */
  intact: boolean
  /** What was found and fixed, one line each. */
  fixed: string[]
  /** Data slices rebuilt from parity, and parity slices rewritten. */
  rebuiltSlices: number
  rewrittenParity: number
  /** Stripes with more lost slices than good parity: their chunks stay lost. */
  lostStripes: number
  /** What remains damaged after repair (verify's list of the result). */
  remaining: Damage[]
  /** Whether the image has recovery data usable for repair. */
  recovery: 'none' | 'usable' | 'damaged'
  out?: string
}

export interface RepairAssessment {
  recovery: 'none' | 'usable' | 'damaged'
  /** Lost data slices (chunk data and index tables) found, and how many stripes hold more than their good parity can rebuild. */
  lostSlices: number
  damagedParity: number
  unrepairableStripes: number
  /** Whether every damage found can be repaired: structures from their copies, data from parity. */
  repairable: boolean
  /** Why not, in one line (the first unrepairable stripe). */
  why?: string
}

interface Structures {
  /** Good header bytes (from offset 0 or the trailer). */
  header: Buffer
  headerAt: number[]
  table: Buffer
  tableAt: number[]
  sections: Section[]
  byType: Map<number, Section>
}

/** The critical structures as the reader chose them, with every place they should be in the file. */
function structuresOf(img: VdimgImage, f: FileBytes): Structures {
  const h = img.header
  const tableLen = h.sectionCount * SECTION_ENTRY_SIZE
  const headerAt = [0, ...(h.trailerOffset ? [h.trailerOffset] : [])]
  // The header the reader took: the one at 0 when it decodes (magic, CRC, every field), else the trailer.
  let header = f.read(HEADER_SIZE, 0)
  const decodes = (b: Buffer) => {
    try {
      decodeHeader(b, f.size)
      return true
    } catch (err) {
      if (err instanceof LayoutError) return false
      throw err
    }
  }
  if (!decodes(header) && h.trailerOffset) header = f.read(HEADER_SIZE, h.trailerOffset)
  const tableAt = [h.sectionTableOffset, ...(h.copyTableOffset ? [h.copyTableOffset] : [])]
  let table = f.read(tableLen, h.sectionTableOffset)
  if (crc32c(table) !== h.sectionTableCrc && h.copyTableOffset) table = f.read(tableLen, h.copyTableOffset)
  const byType = new Map<number, Section>()
  for (const s of img.sections) if (!byType.has(s.type)) byType.set(s.type, s)
  return {header, headerAt, table, tableAt, sections: img.sections, byType}
}

interface Scan {
  /** Damaged bytes of the protected region (chunk stored bytes, index tables) not fixable from a copy. */
  lost: Ranges
  /** Index tables whose original and copy both fail: their chunks are checked once the table is rebuilt. */
  lostTables: number[]
  /** Fixes from copies (applied when repairing), one line each. */
  fixes: Array<{line: string; apply: () => void}>
}

/** Each table's place and its copy's (FORMAT.md §12.2). */
function tablePlaces(img: VdimgImage, s: Structures): Array<{g: number; offset: number; length: number; crc: number; copy?: number}> {
  const out = []
  const c = s.byType.get(SectionType.IndexTablesCopy)
  let at = c ? c.offset : 0
  for (let g = 0; g < img.l1.length / L1_ENTRY_SIZE; g++) {
    let e
    try {
      e = decodeL1Entry(img.l1, g, 0)
    } catch (err) {
      if (err instanceof LayoutError) continue
      throw err
    }
    if (e.offset === 0) continue
    out.push({g, offset: e.offset, length: e.length, crc: e.crc, copy: c ? at : undefined})
    at += e.length
  }
  if (c && at - c.offset !== c.length) for (const t of out) t.copy = undefined
  return out
}

/** The damaged stored bytes of the chunks of one index table. */
function scanChunks(f: FileBytes, table: Buffer, lost: Ranges): number {
  let n = 0
  for (let i = 0; i < table.length / L2_ENTRY_SIZE; i++) {
    let e
    try {
      e = readL2Entry(table, i, 0)
    } catch (err) {
      if (err instanceof LayoutError) continue
      throw err
    }
    if ((e.kind !== ChunkKind.Raw && e.kind !== ChunkKind.Zstd) || e.storedLength === 0) continue
    if (!f.inside(e.storedLength, e.offset) || crc32c(f.read(e.storedLength, e.offset)) !== e.storedCrc) {
      lost.add(e.offset, e.offset + e.storedLength)
      n++
    }
  }
  return n
}

/** Damaged structures and chunk data: what copies fix, and the file ranges only parity can rebuild. */
function scan(img: VdimgImage, f: FileBytes, s: Structures): Scan {
  const fixes: Scan['fixes'] = []
  const lost = new Ranges()
  const lostTables: number[] = []
  const same = (what: string, good: Buffer, places: number[]) => {
    for (const at of places) {
      const have = f.read(good.length, at)
      if (!have.equals(good) || at + good.length > f.size)
        fixes.push({line: at === places[0] ? `${what} at byte ${at} rewritten from its copy` : `${what} copy at byte ${at} rewritten from the original`, apply: () => f.write(good, at)})
    }
  }
  same('header', s.header, s.headerAt)
  same('section table', s.table, s.tableAt)
  const pairs: Array<[SectionType, SectionType, string]> = [
    [SectionType.ChunkIndex, SectionType.ChunkIndexCopy, 'chunk index'],
    [SectionType.BadAreaMap, SectionType.BadAreaMapCopy, 'bad-area map'],
    [SectionType.Metadata, SectionType.MetadataCopy, 'metadata'],
  ]
  for (const [o, c, what] of pairs) {
    const so = s.byType.get(o)
    const sc = s.byType.get(c)
    if (!so || !sc || so.length !== sc.length || so.crc !== sc.crc) continue
    const a = f.read(so.length, so.offset)
    const b = f.read(sc.length, sc.offset)
    const good = crc32c(a) === so.crc ? a : crc32c(b) === so.crc ? b : undefined
    if (good) same(what, good, [so.offset, sc.offset])
  }
  for (const t of tablePlaces(img, s)) {
    const a = f.inside(t.length, t.offset) ? f.read(t.length, t.offset) : undefined
    const b = t.copy !== undefined ? f.read(t.length, t.copy) : undefined
    const aOk = !!a && crc32c(a) === t.crc
    const bOk = !!b && crc32c(b) === t.crc
    if (aOk && b && !bOk) fixes.push({line: `index table copy of group ${t.g} at byte ${t.copy} rewritten from its original`, apply: () => f.write(a!, t.copy!)})
    if (!aOk && bOk) fixes.push({line: `index table of group ${t.g} at byte ${t.offset} rewritten from its copy`, apply: () => f.write(b!, t.offset)})
    const good = aOk ? a : bOk ? b : undefined
    if (good) scanChunks(f, good, lost)
    else {
      lost.add(t.offset, t.offset + t.length)
      lostTables.push(t.g)
    }
  }
  lost.normalize()
  return {lost, lostTables, fixes}
}

interface RecoveryData {
  section: Section
  layout: RecoveryLayout
  /** Each parity slice's CRC from the table (stripe-major). */
  crcs: Buffer
  headerDamaged: boolean
}

/** The recovery section's header (or its copy) and CRC table; undefined when neither header is usable. */
function loadRecovery(f: FileBytes, s: Structures): RecoveryData | 'none' | 'damaged' {
  const sec = s.byType.get(SectionType.Recovery)
  if (!sec) return 'none'
  let layout: RecoveryLayout | undefined
  let headerDamaged = false
  for (const at of [sec.offset, sec.offset + sec.length - RECOVERY_HEADER_SIZE]) {
    if (sec.length < RECOVERY_HEADER_SIZE || at + RECOVERY_HEADER_SIZE > f.size) {
      headerDamaged = true
      continue
    }
    try {
      layout = decodeRecoveryHeader(f.read(RECOVERY_HEADER_SIZE, at), at, sec.length)
      break
    } catch (err) {
      if (!(err instanceof RecoveryFormatError)) throw err
      headerDamaged = true
    }
  }
  if (!layout) return 'damaged'
  const crcs = f.read((layout.stripes * layout.m + dataSlices(layout)) * 4, sec.offset + RECOVERY_HEADER_SIZE)
  return {section: sec, layout, crcs, headerDamaged}
}

/** Slice `i`: file bytes [origin + i·S, origin + (i+1)·S), zeros outside the region (FORMAT.md §13.1). */
function readSlice(f: FileBytes, l: RecoveryLayout, i: number): Buffer {
  const S = l.sliceSize
  const from = sliceOrigin(l) + i * S
  const a = Math.max(from, l.regionOffset)
  const b = Math.min(from + S, l.regionOffset + l.regionLength)
  const out = Buffer.alloc(S)
  if (b > a) f.read(b - a, a).copy(out, a - from)
  return out
}

function parityAt(r: RecoveryData, s: number, p: number): number {
  const l = r.layout
  return r.section.offset + l.parityOffset + (s * l.m + p) * l.sliceSize
}

/** Parity slices of stripe s, undefined where the slice fails its CRC (or lies outside the file). */
function readParity(f: FileBytes, r: RecoveryData, s: number): Array<Buffer | undefined> {
  const l = r.layout
  return Array.from({length: l.m}, (_, p) => {
    const at = parityAt(r, s, p)
    if (at + l.sliceSize > f.size) return undefined
    const b = f.read(l.sliceSize, at)
    return crc32c(b) === r.crcs.readUInt32LE((s * l.m + p) * 4) ? b : undefined
  })
}

/**
 * Lost region slices by stripe: stripe → positions. A slice is lost when it touches a damaged chunk or
 * table and its bytes fail its own CRC (a slice whose CRC entry is damaged counts as lost: a wasted
 * parity slice, never a wrong byte).
 */
function lostByStripe(f: FileBytes, r: RecoveryData, lost: Ranges): Map<number, Set<number>> {
  const l = r.layout
  const by = new Map<number, Set<number>>()
  const S = l.sliceSize
  for (const [a, b] of lost.list) {
    const origin = sliceOrigin(l)
    const from = Math.max(a, l.regionOffset) - origin
    const to = Math.min(b, l.regionOffset + l.regionLength) - origin
    for (let i = Math.floor(from / S); i * S < to; i++) {
      if (crc32c(readSlice(f, l, i)) === r.crcs.readUInt32LE((l.stripes * l.m + i) * 4)) continue
      const s = i % l.stripes
      let set = by.get(s)
      if (!set) by.set(s, (set = new Set()))
      set.add(Math.floor(i / l.stripes))
    }
  }
  return by
}

/** What repair could do, without writing: verify's "repairable" line. */
export async function assessRepair(img: VdimgImage): Promise<RepairAssessment> {
  let fd: number
  try {
    fd = fs.openSync(img.path, 'r')
  } catch (err) {
    throw ioError(img.path, err)
  }
  try {
    const f = new FileBytes(fd, img.path, fs.fstatSync(fd).size, false)
    const s = structuresOf(img, f)
    const sc = scan(img, f, s)
    const rec = loadRecovery(f, s)
    if (rec === 'none' || rec === 'damaged') {
      const any = sc.lost.list.length > 0
      return {recovery: rec, lostSlices: 0, damagedParity: 0, unrepairableStripes: 0, repairable: !any, why: any ? (rec === 'none' ? 'the image has no recovery data' : 'its recovery data is damaged') : undefined}
    }
    const l = rec.layout
    const by = lostByStripe(f, rec, sc.lost)
    let lostSlices = 0
    let damagedParity = 0
    let bad = 0
    let why: string | undefined
    for (let st = 0; st < l.stripes; st++) {
      const parity = readParity(f, rec, st)
      const good = parity.filter(Boolean).length
      damagedParity += l.m - good
      const miss = by.get(st)?.size ?? 0
      lostSlices += miss
      if (miss > good) {
        bad++
        why ??= `${miss} of ${l.k} slices of stripe ${st} lost, ${good} good parity slice${good === 1 ? '' : 's'}`
      }
      if ((st & 255) === 255) await new Promise((r) => setImmediate(r))
    }
    return {recovery: 'usable', lostSlices, damagedParity, unrepairableStripes: bad, repairable: bad === 0, why}
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Repair `image` into `out` (default: the image itself), through a temporary file beside the output that
 * is renamed into place when complete. Never writes when the image is intact.
 */
export async function repairImage(image: string, opts: {out?: string; force?: boolean; signal?: AbortSignal; threads?: number} = {}): Promise<RepairReport> {
  if (opts.out && !opts.force && path.resolve(opts.out) !== path.resolve(image) && fs.existsSync(opts.out))
    throw new VdevError('exists', `${opts.out}: already exists (use --force to replace it)`)
  // A first look, by checksums only (no decoding): is anything damaged at all?
  const img = await openImage(image)
  let nothing: boolean
  let hasRecovery = false
  try {
    const fd = fs.openSync(image, 'r')
    try {
      const size = fs.fstatSync(fd).size
      const f = new FileBytes(fd, image, size, false)
      const sc = scan(img, f, structuresOf(img, f))
      const sec = img.sections.find((x) => x.type === SectionType.Recovery)
      const recoveryIntact = !sec || sectionCrc(fd, sec, size) === sec.crc
      hasRecovery = !!sec
      nothing = sc.fixes.length === 0 && sc.lost.list.length === 0 && recoveryIntact && img.warnings.length === 0
    } finally {
      fs.closeSync(fd)
    }
  } finally {
    await img.close()
  }
  if (opts.signal?.aborted) throw new VdevError('interrupted', `${image}: interrupted`)
  const out = opts.out ?? image
  const fresh = (): RepairReport => ({repaired: true, intact: true, fixed: [], rebuiltSlices: 0, rewrittenParity: 0, lostStripes: 0, remaining: [], recovery: hasRecovery ? 'usable' : 'none'})
  if (nothing) {
    const r = fresh()
    if (opts.out && path.resolve(opts.out) !== path.resolve(image)) copyAtomically(image, opts.out)
    return {...r, out: opts.out}
  }

  const dir = path.dirname(path.resolve(out))
  const tmp = path.join(dir, `.${path.basename(out)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`)
  try {
    fs.copyFileSync(image, tmp, fs.constants.COPYFILE_FICLONE)
  } catch (err) {
    fs.rmSync(tmp, {force: true})
    throw ioError(out, err, 'cannot create')
  }
  const cleanup = () => fs.rmSync(tmp, {force: true})
  const onSignal = () => {
    cleanup()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  let fd: number | undefined
  try {
    fd = fs.openSync(tmp, 'r+')
    const report = await repairFile(image, tmp, fd, opts.signal)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    fd = undefined
    const check = await openImage(tmp)
    try {
      const after = await verifyImage(check, {quick: true, signal: opts.signal, threads: opts.threads})
      // What remains, named by the file it will be in.
      report.remaining = after.damaged.map((d) => ({...d, why: d.why.split(tmp).join(out)}))
      report.repaired = after.ok
    } finally {
      await check.close()
    }
    fs.renameSync(tmp, out)
    syncDirectory(dir)
    return {...report, out}
  } catch (err) {
    if (fd !== undefined) fs.closeSync(fd)
    cleanup()
    if (err instanceof VdevError && err.message.includes(tmp)) throw new VdevError(err.code, err.message.split(tmp).join(out))
    throw err
  } finally {
    process.removeListener('SIGINT', onSignal)
    process.removeListener('SIGTERM', onSignal)
  }
}

function sectionCrc(fd: number, sec: Section, size: number): number {
  if (sec.offset + sec.length > size) return -1
  let crc = 0
  const buf = Buffer.allocUnsafe(Math.min(16 << 20, Math.max(1, sec.length)))
  for (let off = 0; off < sec.length; off += buf.length) {
    const n = Math.min(buf.length, sec.length - off)
    fs.readSync(fd, buf, 0, n, sec.offset + off)
    crc = crc32c(buf.subarray(0, n), crc)
  }
  return crc
}

function copyAtomically(from: string, to: string): void {
  const tmp = path.join(path.dirname(path.resolve(to)), `.${path.basename(to)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`)
  try {
    fs.copyFileSync(from, tmp, fs.constants.COPYFILE_FICLONE)
    // The copy reaches the disk before it takes the name: never a named file with only part of it there.
    const fd = fs.openSync(tmp, 'r')
    try {
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(tmp, to)
    syncDirectory(path.dirname(path.resolve(to)))
  } catch (err) {
    fs.rmSync(tmp, {force: true})
    throw ioError(to, err, 'cannot create')
  }
}

async function repairFile(image: string, tmp: string, fd: number, signal?: AbortSignal): Promise<RepairReport> {
  const report: RepairReport = {repaired: false, intact: false, fixed: [], rebuiltSlices: 0, rewrittenParity: 0, lostStripes: 0, remaining: [], recovery: 'none'}
  const size = fs.fstatSync(fd).size
  const f = new FileBytes(fd, tmp, size, true)
  const img = await openImage(tmp)
  let s: Structures
  let sc: Scan
  try {
    s = structuresOf(img, f)
    sc = scan(img, f, s)
    for (const fix of sc.fixes) {
      fix.apply()
      report.fixed.push(fix.line)
    }
    const rec = loadRecovery(f, s)
    report.recovery = rec === 'none' ? 'none' : rec === 'damaged' ? 'damaged' : 'usable'
    if (typeof rec === 'object') {
      const l = rec.layout
      const D = dataSlices(l)
      const solved = new Set<string>()
      const lostStripes = new Set<number>()
      // Rounds: a lost index table, once rebuilt, shows which of its chunks are damaged too.
      for (let round = 0; round < 4; round++) {
        const by = lostByStripe(f, rec, sc.lost)
        let changed = false
        for (const [st, set] of by) {
          if (signal?.aborted) throw new VdevError('interrupted', `${image}: interrupted`)
          const missing = [...set].sort((a, b) => a - b)
          const key = `${st}:${missing.join(',')}`
          if (solved.has(key)) continue
          solved.add(key)
          const data = missing.length ? Array.from({length: l.k}, (_, j) => (set.has(j) ? undefined : readSlice(f, l, j * l.stripes + st))) : []
          const rebuilt = solveStripe(l, data, readParity(f, rec, st), missing)
          if (!rebuilt) {
            lostStripes.add(st)
            continue
          }
          lostStripes.delete(st)
          missing.forEach((j, e) => {
            const i = j * l.stripes + st
            if (i >= D) return
            const from = sliceOrigin(l) + i * l.sliceSize
            const to = Math.min(from + l.sliceSize, l.regionOffset + l.regionLength)
            // Only the damaged bytes: a slice's other bytes were good, and stay as they were.
            for (const [a, b] of sc.lost.within(from, to)) f.write(rebuilt[e].subarray(a - from, b - from), a)
            report.rebuiltSlices++
            changed = true
          })
          if ((st & 63) === 63) await new Promise((r) => setImmediate(r))
        }
        if (!changed) break
        // Rescan: rebuilt tables name their chunks; rebuilt chunks that still fail keep their stripes lost.
        const again = scan(img, f, s)
        for (const fix of again.fixes) {
          fix.apply()
          report.fixed.push(fix.line)
        }
        // What still fails is what is lost now: chunks made whole by other stripes free their slices.
        if (again.lost.list.length === 0) break
        const before = JSON.stringify(sc.lost.list)
        sc.lost = again.lost
        if (JSON.stringify(sc.lost.list) === before) break
      }
      report.lostStripes = lostStripes.size
      if (report.rebuiltSlices) report.fixed.push(`${report.rebuiltSlices} data slice${report.rebuiltSlices === 1 ? '' : 's'} of ${l.sliceSize} bytes rebuilt from recovery data`)
      // The recovery data itself: parity slices that fail, rebuilt from their (now whole) stripes.
      const rescan = scan(img, f, s)
      if (rescan.lost.list.length === 0) fixRecovery(f, rec, report)
      else if (lostStripes.size) report.fixed.push(`${lostStripes.size} stripe${lostStripes.size === 1 ? '' : 's'} with more lost slices than parity: not rebuilt`)
    }
    zeroPadding(f, s, img)
    // The recovery section, as a whole, must now match its checksum; a last resort is to encode it again.
    if (typeof rec === 'object' && scan(img, f, s).lost.list.length === 0 && sectionCrc(fd, rec.section, size) !== rec.section.crc) {
      await encodeRecovery(
        rec.layout,
        async (len, pos) => f.read(len, pos),
        async (buf, at) => f.write(buf, rec.section.offset + at),
        signal,
      )
      report.fixed.push('recovery data encoded again')
    }
  } finally {
    await img.close()
  }
  return report
}

/** Damaged parity slices (and CRC entries, headers, padding) of a recovery section whose data is whole. */
function fixRecovery(f: FileBytes, rec: RecoveryData, report: RepairReport): void {
  const l = rec.layout
  let rewritten = 0
  for (let st = 0; st < l.stripes; st++) {
    const parity = readParity(f, rec, st)
    if (parity.every(Boolean)) continue
    const data = Array.from({length: l.k}, (_, j) => readSlice(f, l, j * l.stripes + st))
    parity.forEach((p, r) => {
      if (p) return
      const b = parityOf(l, data, r)
      f.write(b, parityAt(rec, st, r))
      const c = Buffer.alloc(4)
      c.writeUInt32LE(crc32c(b))
      f.write(c, rec.section.offset + RECOVERY_HEADER_SIZE + (st * l.m + r) * 4)
      rec.crcs.writeUInt32LE(crc32c(b), (st * l.m + r) * 4)
      rewritten++
    })
  }
  report.rewrittenParity = rewritten
  if (rewritten) report.fixed.push(`${rewritten} parity slice${rewritten === 1 ? '' : 's'} rebuilt`)
  // Both headers, and the zeros between the CRC table and the first parity slice.
  const head = f.read(RECOVERY_HEADER_SIZE, rec.section.offset)
  const tail = f.read(RECOVERY_HEADER_SIZE, rec.section.offset + l.length - RECOVERY_HEADER_SIZE)
  let good: Buffer | undefined
  for (const [b, at] of [
    [head, rec.section.offset],
    [tail, rec.section.offset + l.length - RECOVERY_HEADER_SIZE],
  ] as const)
    try {
      decodeRecoveryHeader(b, at, rec.section.length)
      good ??= b
    } catch (err) {
      if (!(err instanceof RecoveryFormatError)) throw err
    }
  if (good && (!head.equals(good) || !tail.equals(good))) {
    f.write(good, rec.section.offset)
    f.write(good, rec.section.offset + l.length - RECOVERY_HEADER_SIZE)
    report.fixed.push(head.equals(good) ? 'recovery header copy rewritten from the header' : 'recovery header rewritten from its copy')
  }
  const padFrom = rec.section.offset + RECOVERY_HEADER_SIZE + (l.stripes * l.m + dataSlices(l)) * 4
  const padTo = rec.section.offset + l.parityOffset
  if (padTo > padFrom && f.read(padTo - padFrom, padFrom).some((x) => x !== 0)) f.write(Buffer.alloc(padTo - padFrom), padFrom)
}

/**
 * vdev's writer leaves zeros between the section table and the next 4 KiB boundary, and after recovery
 * data up to the copies (FORMAT.md §12.3, §13): bytes of no structure, which repair puts back as zeros.
 */
function zeroPadding(f: FileBytes, s: Structures, img: VdimgImage): void {
  const tableLen = s.table.length
  const starts = [...s.sections.map((x) => [x.offset, x.offset + x.length]), ...s.tableAt.map((a) => [a, a + tableLen]), ...s.headerAt.map((a) => [a, a + HEADER_SIZE])]
  const ends = [img.header.sectionTableOffset + tableLen]
  const rec = s.byType.get(SectionType.Recovery)
  if (rec) ends.push(rec.offset + rec.length)
  for (const from of ends) {
    const next = Math.min(...starts.map((x) => x[0]).filter((x) => x >= from))
    if (!Number.isFinite(next) || next - from >= COPY_ALIGN || next % COPY_ALIGN !== 0 || next === from) continue
    if (starts.some(([a, b]) => a < next && b > from)) continue
    const have = f.read(next - from, from)
    if (have.some((x) => x !== 0)) f.write(Buffer.alloc(next - from), from)
  }
}

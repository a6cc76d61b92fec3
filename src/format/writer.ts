/**
 * `create`: turns an input (file, block device, stdin) plus an optional ddrescue mapfile into a VDIMG
 * file. Reading and hashing happen on the main thread in order; compression runs on worker threads;
 * results are written back in order. The file is built under a temporary name beside the output and
 * renamed only when complete.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import * as crypto from 'node:crypto'
import {VdevError, ioError, type BadRange, type BadStatus} from '../core/errors'
import {WorkerPool} from '../core/workerpool'
import {syncDirectory} from '../sys/dirsync'
import {writebackBehind} from '../sys/fadvise'
import {BadAreaMap} from './badmap'
import {crc32c} from './crc'
import {preadExact} from './pread'
import type {InputSource} from './input'
import {DEFAULT_SLICE_SIZE, MAX_SLICE_SIZE, MIN_SLICE_SIZE, chooseParams, encodeRecovery, layoutOf} from './recovery'
import type {Mapfile} from './mapfile'
import type {EncodeResult, EncodeTask} from './codec-worker'
import {
  COPY_ALIGN,
  ChunkKind,
  DATA_START,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_L2_ENTRIES,
  HEADER_FLAG_HASH,
  L2_ENTRY_SIZE,
  MAX_BAD_AREAS,
  MAX_CHUNK_SIZE,
  MAX_L2_ENTRIES,
  MIN_CHUNK_SIZE,
  MIN_L2_ENTRIES,
  SECTION_ENTRY_SIZE,
  SECTION_FLAG_CRITICAL,
  SECTOR_SIZES,
  SectionType,
  VERSION_MAJOR,
  VERSION_MINOR,
  VERSION_MINOR_RECOVERY,
  encodeHeader,
  encodeL1,
  encodeSections,
  isPowerOfTwo,
  writeL2Entry,
  type L1Entry,
  type Section,
} from './layout'

export interface CreateOptions {
  chunkSize?: number
  /** zstd level, 1–19 (negative levels are zstd's fast modes). */
  level?: number
  threads?: number
  sectorSize?: number
  l2Entries?: number
  metadata?: Record<string, unknown>
  mapfile?: Mapfile
  /** Compute the media SHA-256 (default true). */
  hash?: boolean
  /** Replace an existing output. */
  force?: boolean
  /**
   * Store Reed–Solomon parity of this many percent of the chunk data and index tables (format 1.2,
   * FORMAT.md §13), for `vdev repair`. Default: none.
   */
  recovery?: number
  /** The recovery data's slice size (a power of two, 512 B – 1 MiB; default 4 KiB). */
  recoverySliceSize?: number
  onProgress?: (bytesRead: number, total: number | undefined) => void
}

export interface CreateResult {
  path: string
  size: number
  fileSize: number
  chunkSize: number
  sectorSize: number
  chunks: Record<string, number>
  sha256?: string
  badAreas: number
  badBytes: number
  /** The recovery data written (`--recovery`): its code and size. */
  recovery?: {percent: number; sliceSize: number; k: number; m: number; stripes: number; bytes: number}
}

export const DEFAULT_LEVEL = 3

function validate(opts: CreateOptions, input: InputSource) {
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE
  if (!isPowerOfTwo(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE)
    throw new VdevError('usage', `chunk size ${chunkSize} is not a power of two from 4 KiB to 4 MiB`)
  const sectorSize = opts.sectorSize ?? input.sectorSize ?? 512
  if (!(SECTOR_SIZES as readonly number[]).includes(sectorSize))
    throw new VdevError('usage', `sector size ${sectorSize} is not 512, 2048 or 4096`)
  if (chunkSize < sectorSize) throw new VdevError('usage', `chunk size ${chunkSize} is smaller than the sector size ${sectorSize}`)
  const level = opts.level ?? DEFAULT_LEVEL
  if (!Number.isInteger(level) || level < -7 || level > 19) throw new VdevError('usage', `compression level ${level} is not from -7 to 19`)
  const l2Entries = opts.l2Entries ?? DEFAULT_L2_ENTRIES
  if (!isPowerOfTwo(l2Entries) || l2Entries < MIN_L2_ENTRIES || l2Entries > MAX_L2_ENTRIES)
    throw new VdevError('usage', `index table size ${l2Entries} is not a power of two from 256 to 65536`)
  const threads = opts.threads ?? os.availableParallelism()
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) throw new VdevError('usage', `thread count ${threads} is not from 1 to 256`)
  if (opts.recovery !== undefined && !(opts.recovery > 0 && opts.recovery <= 100))
    throw new VdevError('usage', `recovery ${opts.recovery}% is not more than 0% and at most 100%`)
  const slice = opts.recoverySliceSize ?? DEFAULT_SLICE_SIZE
  if (!isPowerOfTwo(slice) || slice < MIN_SLICE_SIZE || slice > MAX_SLICE_SIZE)
    throw new VdevError('usage', `recovery slice size ${slice} is not a power of two from 512 to 1 MiB`)
  return {chunkSize, sectorSize, level, l2Entries, threads}
}

/** Write `buf` at `pos` completely. */
function writeAt(fd: number, buf: Uint8Array, pos: number, name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0
    const step = (): void =>
      fs.write(fd, buf, done, buf.length - done, pos + done, (err, n) => {
        if (err) return reject(ioError(name, err, 'write error'))
        done += n
        if (done >= buf.length) resolve()
        else step()
      })
    step()
  })
}

const ZERO = Buffer.alloc(4 << 20)
function hashZeros(h: crypto.Hash, n: number): void {
  while (n > 0) {
    const k = Math.min(n, ZERO.length)
    h.update(ZERO.subarray(0, k))
    n -= k
  }
}

interface Batch {
  firstChunk: number
  /** Per chunk in the batch: logical length, and whether it is wholly unread. */
  lengths: number[]
  unread: boolean[]
  result: Promise<EncodeResult | undefined>
}

export async function createImage(source: InputSource, outPath: string, opts: CreateOptions = {}): Promise<CreateResult> {
  const {chunkSize, sectorSize, level, l2Entries, threads} = validate(opts, source)
  let input = source
  const map = opts.mapfile
  if (map) input = padToMapfile(input, map)
  const bad = map?.bad ?? BadAreaMap.EMPTY
  /** Bytes past the mapfile's end are non-tried (the ddrescue manual's rule). */
  const tailStart = map ? map.extent : Infinity
  const badIn = (off: number, len: number): BadRange[] => {
    const r = bad.intersect(off, len)
    if (off + len > tailStart) {
      const s = Math.max(off, tailStart)
      r.push({offset: s, length: off + len - s, status: 'non-tried'})
    }
    return r
  }
  const isUnread = (off: number, len: number) => off >= tailStart || bad.covers(off, Math.min(len, tailStart - off))

  if (!opts.force && fs.existsSync(outPath))
    throw new VdevError('exists', `${outPath}: already exists (use --force to replace it)`)
  const dir = path.dirname(path.resolve(outPath))
  const tmp = path.join(dir, `.${path.basename(outPath)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`)
  let fd: number
  try {
    fd = fs.openSync(tmp, 'wx+', 0o644) // read back too: the index tables' copies
  } catch (err) {
    throw ioError(outPath, err, 'cannot create')
  }
  // The fsync before the rename then waits for little more than the last few MiB, and its flush of the
  // disk's cache for little more than the last 64 MiB.
  const writeback = writebackBehind(fd)

  const pool = new WorkerPool(path.join(__dirname, 'codec-worker.js'), threads)
  const hasher = opts.hash === false ? undefined : crypto.createHash('sha256')
  const counts = {zero: 0, raw: 0, zstd: 0, unread: 0}
  const l1: L1Entry[] = []
  const l2 = Buffer.alloc(l2Entries * L2_ENTRY_SIZE)
  let l2Count = 0
  let l2Uniform: ChunkKind | undefined | null = undefined // the one kind of every chunk so far, null if mixed
  let filePos = DATA_START
  let chunkIndex = 0
  let bytesRead = 0
  // Powers of two no larger than a group, so batches never straddle an index group.
  const batchChunks = Math.min(l2Entries, Math.max(1, Math.floor((4 << 20) / chunkSize)))
  // Two batches a worker: one compressing, one waiting. Each batch holds 4 MiB of input and 4 MiB of output
  // (a raw chunk stores all its bytes), so this and the read-ahead below bound the memory (< 150 MB on 2 cores).
  const maxInFlight = threads * 2
  const inflight: Batch[] = []
  // Batch buffers go to a worker and come back: reusing them spares the kernel fresh zeroed pages.
  const batchBytes = batchChunks * chunkSize
  const spare: ArrayBuffer[] = []
  const take = (): ArrayBuffer => spare.pop() ?? new ArrayBuffer(batchBytes)
  /** Batches read ahead of the one being handed to a worker (seekable inputs). */
  const readAheadDepth = 3
  let cleanedUp = false
  const cleanup = () => {
    if (cleanedUp) return
    cleanedUp = true
    try {
      fs.closeSync(fd)
    } catch {
      /* already closed */
    }
    fs.rmSync(tmp, {force: true})
  }
  const onSignal = () => {
    cleanup()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const flushL2 = async () => {
    if (l2Count === 0) return
    if (l2Uniform === ChunkKind.Zero || l2Uniform === ChunkKind.Unread) {
      l1.push({offset: 0, length: 0, crc: 0, fillKind: l2Uniform})
    } else {
      const table = l2.subarray(0, l2Count * L2_ENTRY_SIZE)
      await writeAt(fd, table, filePos, tmp)
      l1.push({offset: filePos, length: table.length, crc: crc32c(table), fillKind: 0})
      filePos += table.length
    }
    l2Count = 0
    l2Uniform = undefined
  }

  const addEntry = async (kind: ChunkKind, offset: number, storedLength: number, crc: number, storedCrc: number) => {
    writeL2Entry(l2, l2Count++, {offset, storedLength, crc, kind, storedCrc})
    l2Uniform = l2Uniform === undefined ? kind : l2Uniform === kind ? kind : null
    counts[kind === ChunkKind.Zero ? 'zero' : kind === ChunkKind.Raw ? 'raw' : kind === ChunkKind.Zstd ? 'zstd' : 'unread']++
    if (l2Count === l2Entries) await flushL2()
  }

  const complete = async (b: Batch) => {
    const r = await b.result
    const out = r ? new Uint8Array(r.out, 0, r.outLength) : new Uint8Array(0)
    if (out.length) await writeAt(fd, out, filePos, tmp)
    if (r) spare.push(r.buf, r.out)
    // Advance first: a group completed by this batch writes its index table after the batch's data.
    const base = filePos
    filePos += out.length
    writeback.behind(filePos)
    let at = 0
    let k = 0
    for (let i = 0; i < b.lengths.length; i++) {
      if (b.unread[i]) {
        await addEntry(ChunkKind.Unread, 0, 0, 0, 0)
        continue
      }
      const kind = r!.kinds[k] as ChunkKind
      const len = r!.lengths[k]
      await addEntry(kind, len ? base + at : 0, len, r!.crcs[k], r!.storedCrcs[k])
      at += len
      k++
    }
  }

  let size = input.size
  // A seekable input is read ahead of the loop, READ_AHEAD batches at a time, so that reading a cold input
  // overlaps compressing it instead of alternating with it (the kernel's own read-ahead stops at its window).
  const readAhead: Array<{start: number; want: number; read: Promise<{buf: Buffer; got: number}>}> = []
  let plannedTo = 0 // the chunk from which the next read ahead is planned
  /** The next batch at or after chunk `ci` that the loop below will read (it skips unread groups and batches). */
  const nextRead = (ci: number, total: number): {start: number; want: number; next: number} | undefined => {
    for (;;) {
      const start = ci * chunkSize
      if (start >= total) return undefined
      if (ci % l2Entries === 0) {
        const groupLen = Math.min(l2Entries * chunkSize, total - start)
        if (isUnread(start, groupLen)) {
          ci += Math.ceil(groupLen / chunkSize)
          continue
        }
      }
      const want = Math.min(batchChunks * chunkSize, total - start)
      const next = ci + Math.ceil(want / chunkSize)
      let allUnread = true
      for (let off = 0; off < want && allUnread; off += chunkSize) allUnread = isUnread(start + off, Math.min(chunkSize, want - off))
      if (!allUnread) return {start, want, next}
      ci = next
    }
  }
  const planReads = () => {
    if (!input.seekable || size === undefined) return
    while (readAhead.length < readAheadDepth) {
      const r = nextRead(plannedTo, size)
      if (!r) return
      plannedTo = r.next
      const buf = Buffer.from(take(), 0, r.want)
      const read = input.read(buf, r.start).then((got) => ({buf, got}))
      read.catch(() => undefined) // observed when the loop reaches it
      readAhead.push({start: r.start, want: r.want, read})
    }
  }
  try {
    for (;;) {
      const start = chunkIndex * chunkSize
      if (size !== undefined && start >= size) break
      planReads()
      // A whole index group inside one bad area is recorded without reading it.
      if (input.seekable && size !== undefined && chunkIndex % l2Entries === 0) {
        const groupLen = Math.min(l2Entries * chunkSize, size - start)
        if (isUnread(start, groupLen)) {
          while (inflight.length) await complete(inflight.shift()!)
          const n = Math.ceil(groupLen / chunkSize)
          if (hasher) hashZeros(hasher, groupLen)
          counts.unread += n
          l1.push({offset: 0, length: 0, crc: 0, fillKind: ChunkKind.Unread})
          chunkIndex += n
          bytesRead += groupLen
          opts.onProgress?.(bytesRead, size)
          continue
        }
      }
      let want = batchChunks * chunkSize
      if (size !== undefined) want = Math.min(want, size - start)
      const lengths: number[] = []
      const unread: boolean[] = []
      for (let off = 0; off < want; off += chunkSize) {
        const len = Math.min(chunkSize, want - off)
        lengths.push(len)
        unread.push(isUnread(start + off, len))
      }
      let buf: Buffer
      let got: number
      if (input.seekable && unread.every((u) => u)) {
        buf = Buffer.from(take(), 0, want)
        buf.fill(0)
        got = want
      } else {
        // Reads planned for batches the loop went past (never, while nextRead follows the loop) go back to the pool.
        while (readAhead.length && readAhead[0].start < start) readAhead.shift()!.read.then((r) => spare.push(r.buf.buffer as ArrayBuffer), () => undefined)
        const ahead = readAhead[0]
        if (ahead && ahead.start === start && ahead.want === want) {
          readAhead.shift()
          planReads()
          ;({buf, got} = await ahead.read)
        } else {
          buf = Buffer.from(take(), 0, want)
          got = await input.read(buf, start)
        }
        if (got < want) {
          if (input.seekable) throw new VdevError('io', `${input.name}: source ended at byte ${start + got}, expected ${size} bytes`)
          size = start + got
          while (lengths.length && lengths.reduce((a, b) => a + b, 0) > got) {
            const over = lengths.reduce((a, b) => a + b, 0) - got
            const last = lengths.length - 1
            if (lengths[last] > over) lengths[last] -= over
            else {
              lengths.pop()
              unread.pop()
            }
          }
          for (let i = 0; i < lengths.length; i++) unread[i] = isUnread(start + i * chunkSize, lengths[i])
        }
      }
      // Bytes of areas not marked finished are not stored: zero them before hashing and compressing.
      for (const r of badIn(start, got)) buf.fill(0, r.offset - start, r.offset - start + r.length)
      hasher?.update(buf.subarray(0, got))
      bytesRead += got
      const chunks: Array<[number, number]> = []
      for (let i = 0; i < lengths.length; i++) if (!unread[i]) chunks.push([i * chunkSize, lengths[i]])
      let result: Promise<EncodeResult | undefined> = Promise.resolve(undefined)
      if (chunks.length) {
        const task: EncodeTask = {op: 'encode', level, buf: buf.buffer as ArrayBuffer, scratch: take(), chunks}
        result = pool.run<EncodeResult>(task, [task.buf, task.scratch])
      } else spare.push(buf.buffer as ArrayBuffer)
      result.catch(() => undefined) // observed when completed, in order
      inflight.push({firstChunk: chunkIndex, lengths, unread, result})
      chunkIndex += lengths.length
      opts.onProgress?.(bytesRead, size)
      while (inflight.length >= maxInFlight) await complete(inflight.shift()!)
      if (got < want) break
    }
    while (inflight.length) await complete(inflight.shift()!)
    await flushL2()
    size ??= 0
    // FORMAT.md §13: the protected region, the chunk data and second-level tables, ends here.
    const regionEnd = filePos
    const recovery =
      opts.recovery !== undefined && regionEnd > DATA_START
        ? layoutOf(chooseParams(opts.recovery, DATA_START, regionEnd - DATA_START, opts.recoverySliceSize ?? DEFAULT_SLICE_SIZE))
        : undefined

    // The stored bad-area map: the mapfile's areas, plus non-tried from its end to the image end.
    const ranges: BadRange[] = [...bad]
    if (map && size > map.extent) ranges.push({offset: map.extent, length: size - map.extent, status: 'non-tried'})
    const badMap = BadAreaMap.fromRanges(ranges)
    if (badMap.count > MAX_BAD_AREAS)
      throw new VdevError('format', `${map ? 'mapfile' : input.name}: ${badMap.count} bad areas, more than the ${MAX_BAD_AREAS} an image may hold`)
    const sha = hasher?.digest()
    const metadata = {...(opts.metadata ?? {})}
    metadata.size ??= size
    metadata.sectorSize ??= sectorSize

    // The originals, then the section table (FORMAT.md §10), then the copies (§12): every copy after every
    // original, the first at a multiple of 4096, so that no aligned 4 KiB block holds a structure and its copy.
    const l1Bytes = encodeL1(l1)
    const badBytes = badMap.encode()
    const metaBytes = Buffer.from(JSON.stringify(metadata), 'utf8')
    const sections: Section[] = []
    const addSection = async (type: SectionType, flags: number, data: Buffer) => {
      await writeAt(fd, data, filePos, tmp)
      sections.push({type, flags, offset: filePos, length: data.length, crc: crc32c(data)})
      filePos += data.length
    }
    await addSection(SectionType.ChunkIndex, SECTION_FLAG_CRITICAL, l1Bytes)
    await addSection(SectionType.BadAreaMap, SECTION_FLAG_CRITICAL, badBytes)
    await addSection(SectionType.Metadata, 0, metaBytes)
    const tableOffset = filePos
    const tableLength = (recovery ? 8 : 7) * SECTION_ENTRY_SIZE
    filePos = Math.ceil((filePos + tableLength) / COPY_ALIGN) * COPY_ALIGN
    let recoverySection: Section | undefined
    if (recovery) {
      // After the padding, before the copies (§13): at least one 4 KiB boundary from the data it protects.
      const at = filePos
      let crc = 0
      await encodeRecovery(
        recovery,
        (len, pos) => preadExact(fd, len, pos, tmp),
        (buf, off) => writeAt(fd, buf, at + off, tmp),
      )
      // The section's CRC over its bytes in order, read back in 16 MiB steps (the parts arrive out of order).
      for (let off = 0; off < recovery.length; off += 16 << 20) {
        const n = Math.min(16 << 20, recovery.length - off)
        crc = crc32c(await preadExact(fd, n, at + off, tmp), crc)
      }
      recoverySection = {type: SectionType.Recovery, flags: 0, offset: at, length: recovery.length, crc}
      filePos += recovery.length
      filePos = Math.ceil(filePos / COPY_ALIGN) * COPY_ALIGN
    }
    // Every second-level table again, read back from the file and checked against the CRC it was written with.
    const tablesCopyOffset = filePos
    let tablesCrc = 0
    for (const e of l1) {
      if (e.offset === 0) continue
      const t = await preadExact(fd, e.length, e.offset, tmp)
      if (crc32c(t) !== e.crc) throw new VdevError('io', `${tmp}: index table at byte ${e.offset} reads back differently than it was written`)
      await writeAt(fd, t, filePos, tmp)
      tablesCrc = crc32c(t, tablesCrc)
      filePos += t.length
    }
    sections.push({type: SectionType.IndexTablesCopy, flags: 0, offset: tablesCopyOffset, length: filePos - tablesCopyOffset, crc: tablesCrc})
    await addSection(SectionType.ChunkIndexCopy, 0, l1Bytes)
    await addSection(SectionType.BadAreaMapCopy, 0, badBytes)
    await addSection(SectionType.MetadataCopy, 0, metaBytes)
    if (recoverySection) sections.push(recoverySection)
    const table = encodeSections(sections)
    if (table.length !== tableLength) throw new VdevError('internal', `section table of ${table.length} bytes, expected ${tableLength}`)
    await writeAt(fd, table, tableOffset, tmp)
    const copyTableOffset = filePos
    await writeAt(fd, table, filePos, tmp)
    filePos += table.length
    const trailerOffset = filePos
    const header = encodeHeader({
      major: VERSION_MAJOR,
      minor: recoverySection ? VERSION_MINOR_RECOVERY : VERSION_MINOR,
      headerSize: 0,
      flags: sha ? HEADER_FLAG_HASH : 0,
      sectorSize,
      chunkSize,
      l2Entries,
      size,
      chunkCount: Math.ceil(size / chunkSize),
      sectionTableOffset: tableOffset,
      sectionCount: sections.length,
      sectionTableCrc: crc32c(table),
      sha256: sha ?? Buffer.alloc(32),
      copyTableOffset,
      trailerOffset,
    })
    await writeAt(fd, header, trailerOffset, tmp)
    filePos += header.length
    await writeAt(fd, header, 0, tmp)
    try {
      await writeback.settle()
      fs.fsyncSync(fd)
    } catch (err) {
      throw ioError(outPath, err, 'write error')
    }
    fs.closeSync(fd)
    cleanedUp = true
    try {
      if (opts.force) fs.renameSync(tmp, outPath)
      else {
        // link() fails if the output appeared meanwhile: never replace without --force.
        fs.linkSync(tmp, outPath)
        fs.rmSync(tmp)
      }
      syncDirectory(dir)
    } catch (err) {
      fs.rmSync(tmp, {force: true})
      const e = err as NodeJS.ErrnoException
      if (e.code === 'EEXIST') throw new VdevError('exists', `${outPath}: already exists (use --force to replace it)`)
      throw ioError(outPath, err, 'cannot create')
    }
    const totals = badMap.totals()
    return {
      path: outPath,
      size,
      fileSize: filePos,
      chunkSize,
      sectorSize,
      chunks: counts,
      sha256: sha?.toString('hex'),
      badAreas: badMap.count,
      badBytes: (Object.keys(totals) as BadStatus[]).reduce((s, k) => s + totals[k].bytes, 0),
      recovery: recovery && {
        percent: opts.recovery!,
        sliceSize: recovery.sliceSize,
        k: recovery.k,
        m: recovery.m,
        stripes: recovery.stripes,
        bytes: recovery.length,
      },
    }
  } catch (err) {
    // Reads still under way write into buffers nobody will look at; let them end before the input closes.
    await Promise.allSettled(readAhead.map((r) => r.read))
    await writeback.settle().catch(() => undefined) // a background fdatasync still holds the descriptor
    cleanup()
    throw err
  } finally {
    process.removeListener('SIGINT', onSignal)
    process.removeListener('SIGTERM', onSignal)
    await pool.close()
  }
}

/**
 * ddrescue writes its mapfile for the whole medium even when the rescued file is shorter (a run stopped
 * early). Bytes past the end of the source that the mapfile does not mark finished are not needed: the
 * image keeps the medium's size and those bytes stay bad areas. Bytes it marks finished must be there.
 */
function padToMapfile(input: InputSource, map: Mapfile): InputSource {
  const short = (have: number) =>
    new VdevError('format', `${input.name}: source is ${have} bytes but the mapfile marks bytes up to ${map.finishedEnd} as rescued`)
  if (input.seekable && input.size !== undefined) {
    const real = input.size
    if (real < map.finishedEnd) throw short(real)
    if (real >= map.extent) return input
    return {
      ...input,
      name: input.name,
      size: map.extent,
      seekable: true,
      async read(buf, pos) {
        const avail = Math.max(0, Math.min(buf.length, real - pos))
        const n = avail ? await input.read(buf.subarray(0, avail), pos) : 0
        buf.fill(0, n)
        return Math.min(buf.length, map.extent - pos)
      },
      close: () => input.close(),
    }
  }
  let total = 0
  let ended = false
  return {
    name: input.name,
    size: undefined,
    seekable: false,
    async read(buf) {
      let n = ended ? 0 : await input.read(buf, total)
      if (n < buf.length && !ended) {
        ended = true
        if (total + n < map.finishedEnd) throw short(total + n)
      }
      if (ended && total + n < map.extent) {
        const pad = Math.min(buf.length - n, map.extent - (total + n))
        buf.fill(0, n, n + pad)
        n += pad
      }
      total += n
      return n
    },
    close: () => input.close(),
  }
}

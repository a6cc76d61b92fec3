/**
 * What one random 4 KiB read costs a serving thread, stage by stage, without any kernel interface in the way
 * (docs/performance.md, "Random reads: where a serving thread's time goes"):
 *
 *   node dist/bench/random-cost.js IMAGE [READS]
 *
 * 1. The whole read as a serving thread does it: `readSync` of an image opened in sync mode (the serving
 *    threads' default 64 MiB cache; decode-ahead off), READS aligned 4 KiB reads at seeded random offsets;
 *    µs per read and per read of a stored chunk.
 * 2. For the stored chunks those reads touched, each stage alone, µs per chunk: the index lookup, the pread
 *    of the stored bytes, their CRC-32C, the frame walk, the prefix decode as the reader drives it, zstd's
 *    one-shot decode of the whole chunk, and the same for the prefix through other ways of driving zstd.
 * 3. zstd's speed in KiB of output per µs, prefix and whole (the floor of a read's cost).
 * Times are CPU µs of this thread (process.cpuUsage; they move far less with the machine's load than wall time).
 * Nothing asserts; it prints a table.
 */
import {ChunkDecoder, zstdFrameProblem} from '../src/format/codec'
import {crc32c} from '../src/format/crc'
import {ChunkKind, type ChunkEntry} from '../src/format/layout'
import {maxStored, openImage} from '../src/format/reader'
import * as zstd from '../src/format/zstd'

/** Microseconds. */
function now(): number {
  return Number(process.hrtime.bigint()) / 1000
}

async function main(): Promise<void> {
  const file = process.argv[2]
  const reads = Number(process.argv[3] ?? 20000)
  if (!file) throw new Error('usage: random-cost IMAGE [READS]')
  const img = await openImage(file, {sync: true})
  let seed = 20260101
  const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32)
  const blocks = Math.floor(img.size / 4096)
  const offsets = Array.from({length: reads}, () => Math.floor(rnd() * blocks) * 4096)
  const dst = Buffer.alloc(4096)
  // Warm the JIT and the page cache on other offsets.
  for (let k = 0; k < 2000; k++) img.readSync(Math.floor(rnd() * blocks) * 4096, 4096, dst)
  const stored = offsets.filter((o) => {
    const e = img.entrySync(Math.floor(o / img.chunkSize))
    return e.kind === ChunkKind.Zstd || e.kind === ChunkKind.Raw
  }).length
  const cpu0 = process.cpuUsage()
  const t0 = now()
  for (const o of offsets) img.readSync(o, 4096, dst)
  const wall = now() - t0
  const cpu = process.cpuUsage(cpu0)
  const whole = cpu.user + cpu.system
  const rows: Array<[string, number]> = []
  rows.push([`readSync 4 KiB, per read (${reads} reads, ${stored} of stored chunks; wall ${(wall / reads).toFixed(1)} µs)`, whole / reads])
  rows.push(['readSync 4 KiB, per read of a stored chunk', whole / stored])

  // Stage by stage, over the zstd chunks these reads touched (need = the read's end in its chunk).
  const items: Array<{i: number; e: ChunkEntry; need: number}> = []
  for (const o of offsets.slice(0, 4000)) {
    const i = Math.floor(o / img.chunkSize)
    const e = img.entrySync(i)
    if (e.kind === ChunkKind.Zstd) items.push({i, e, need: o - i * img.chunkSize + 4096})
  }
  const scratch = Buffer.allocUnsafeSlow(maxStored(img.chunkSize))
  const storedOf = items.map((it) => Buffer.from(img.ranges.readSync(it.e.storedLength, it.e.offset, scratch)))
  const out = Buffer.allocUnsafeSlow(img.chunkSize)
  const dec = new ChunkDecoder()
  const time = (what: string, f: (k: number) => void) => {
    const c = process.cpuUsage()
    for (let k = 0; k < items.length; k++) f(k)
    const u = process.cpuUsage(c)
    rows.push([what, (u.user + u.system) / items.length])
  }
  time('index lookup (entrySync)', (k) => img.entrySync(items[k].i))
  time('pread of the stored bytes', (k) => img.ranges.readSync(items[k].e.storedLength, items[k].e.offset, scratch))
  time('CRC-32C of the stored bytes', (k) => crc32c(storedOf[k]))
  time('frame walk (zstdFrameProblem)', (k) => zstdFrameProblem(storedOf[k], img.chunkLength(items[k].i)))
  let prefixOut = 0
  time('prefix decode as the reader does (decodePrefixInto, incl. CRC and walk)', (k) => {
    const it = items[k]
    prefixOut += dec.decodePrefixInto(it.e.kind, storedOf[k], it.e.storedCrc, out.subarray(0, img.chunkLength(it.i)), it.need)
  })
  const dctx = new zstd.DCtx()
  time('whole chunk, one-shot DCtx.decompress', (k) => dctx.decompress(out.subarray(0, img.chunkLength(items[k].i)), storedOf[k]))
  const sd = new zstd.DCtx()
  let streamOut = 0
  time('prefix, decompressStream only (dst cut at need, then the rest of the block)', (k) => {
    const it = items[k]
    sd.reset(zstd.ResetDirective.sessionOnly)
    const r = sd.decompressStream(out.subarray(0, it.need), storedOf[k])
    let n = r[1]
    if (n < img.chunkLength(it.i)) n += sd.decompressStream(out.subarray(n, img.chunkLength(it.i)), storedOf[k].subarray(0, 0))[1]
    streamOut += n
  })
  time('prefix, decompressStream only, dst cut at need (no rest of block)', (k) => {
    const it = items[k]
    sd.reset(zstd.ResetDirective.sessionOnly)
    sd.decompressStream(out.subarray(0, it.need), storedOf[k])
  })
  const avgNeed = items.reduce((s, it) => s + it.need, 0) / items.length
  const wholeUs = rows.find((r) => r[0].startsWith('whole chunk'))![1]
  const streamUs = rows.find((r) => r[0].startsWith('prefix, decompressStream only (dst'))![1]
  console.log(`${file}: ${img.chunkSize / 1024} KiB chunks; ${items.length} zstd chunk reads; average need ${(avgNeed / 1024).toFixed(1)} KiB, average prefix decoded ${(prefixOut / items.length / 1024).toFixed(1)} KiB`)
  for (const [w, us] of rows) console.log(`${us.toFixed(2).padStart(9)} µs  ${w}`)
  console.log(`zstd output speed: whole ${((img.chunkSize / 1024) / wholeUs).toFixed(3)} KiB/µs, prefix ${((streamOut / items.length / 1024) / streamUs).toFixed(3)} KiB/µs`)
  await img.close()
}

main().catch((err) => {
  console.error(`random-cost: ${(err as Error).message}`)
  process.exit(2)
})

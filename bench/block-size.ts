/**
 * node dist/bench/block-size.js [FILE] — what the writer's 8 KiB zstd blocks (ZSTD_TARGET_BLOCK,
 * targetCBlockSize) cost and buy, on one thread: compression and whole-chunk decoding speed of the same
 * 128 KiB chunks with and without them, stored size, and the cost of the first 4 KiB of a chunk (prefix
 * decoding, what a random 4 KiB read pays) against decoding the whole chunk. FILE defaults to the
 * benchmark corpus; every 4th non-zero chunk of it is used (BENCH_CHUNKS of them, 3000 by default).
 * BENCH_ORDER=whole-first measures the frames without 8 KiB blocks first.
 */
import * as fs from 'node:fs'
import {ensureCorpus} from './corpus'
import {ChunkDecoder, ChunkEncoder, isAllZero, ZSTD_TARGET_BLOCK} from '../src/format/codec'
import {ChunkKind} from '../src/format/layout'

const CHUNK = 128 << 10

function cpuMs(f: () => void): number {
  const t = process.cpuUsage()
  f()
  const u = process.cpuUsage(t)
  return (u.user + u.system) / 1000
}

async function main(): Promise<void> {
  const file = process.argv[2] ?? (await ensureCorpus()).raw
  const want = Number(process.env.BENCH_CHUNKS ?? 3000)
  const fd = fs.openSync(file, 'r')
  const chunks: Buffer[] = []
  for (let pos = 0, k = 0; chunks.length < want; pos += CHUNK) {
    const b = Buffer.allocUnsafe(CHUNK)
    if (fs.readSync(fd, b, 0, CHUNK, pos) < CHUNK) break
    if (!isAllZero(b) && k++ % 4 === 0) chunks.push(b)
  }
  fs.closeSync(fd)
  const mib = (chunks.length * CHUNK) / (1 << 20)
  const rows: string[] = []
  for (const target of process.env.BENCH_ORDER === 'whole-first' ? [0, ZSTD_TARGET_BLOCK] : [ZSTD_TARGET_BLOCK, 0]) {
    const enc = new ChunkEncoder(3, target)
    const dec = new ChunkDecoder()
    const stored: Array<{kind: ChunkKind; data: Buffer; crc: number; storedCrc: number}> = []
    const scratch = Buffer.allocUnsafe(CHUNK)
    const best = (f: () => void) => Math.min(cpuMs(f), cpuMs(f), cpuMs(f))
    const cms = best(() => {
      stored.length = 0
      for (const c of chunks) {
        const e = enc.encodeInto(c, scratch)
        stored.push({kind: e.kind, data: Buffer.from(scratch.subarray(0, e.length)), crc: e.crc, storedCrc: e.storedCrc})
      }
    })
    const size = stored.reduce((s, x) => s + x.data.length, 0)
    const dst = Buffer.allocUnsafe(CHUNK)
    const whole = best(() => {
      for (const s of stored) dec.decodeInto(s.kind, s.data, s.crc, s.storedCrc, dst, false)
    })
    const prefix = best(() => {
      for (const s of stored) dec.decodePrefixInto(s.kind, s.data, s.storedCrc, dst, 4096)
    })
    rows.push(
      `| ${target ? `${target / 1024} KiB blocks` : 'whole 128 KiB blocks'} | ${(mib / (cms / 1000)).toFixed(0)} | ${(mib / (whole / 1000)).toFixed(0)} | ` +
        `${((prefix / stored.length) * 1000).toFixed(1)} / ${((whole / stored.length) * 1000).toFixed(1)} | ${((size / (chunks.length * CHUNK)) * 100).toFixed(2)}% |`,
    )
  }
  process.stdout.write(
    `${chunks.length} chunks of ${file}, load ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n` +
      `| frames | compress MiB/s (CPU, best of 3) | decode whole chunk MiB/s (CPU, best of 3, stored CRC checked) | first 4 KiB / whole chunk, µs | stored / logical |\n|---|---|---|---|---|\n` +
      rows.join('\n') +
      '\n',
  )
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`)
  process.exit(2)
})

/**
 * In-process A/B of the serving threads' read path: two builds' readers (each a dist/ tree, e.g. main's and
 * this one's) open the same image in sync mode and take turns at the same seeded random 4 KiB reads, in
 * batches, so the machine's load falls on both alike; prints CPU µs per read of each (process.cpuUsage of
 * this single-threaded process) and their ratio. docs/performance.md, "Random reads".
 *
 *   node dist/bench/ab-readsync.js DIST_A DIST_B IMAGE [READS_PER_BATCH] [BATCHES]
 *
 * IMAGE_B=FILE gives B another image of the same data (e.g. one written with other zstd block sizes).
 * SEQ=1: sequential reads of READ_LEN bytes (default 512 KiB, what the loop device sends FUSE) instead, each
 * batch the next stretch of the image (wrapping), in turn as well. AHEAD=1 (with SEQ=1): each build's reader
 * has a second instance sharing its decode-ahead buffer (as a device's two serving threads do), which after
 * every read decodes ahead until there is nothing to do; the CPU counted is both instances'.
 */
import * as path from 'node:path'

interface Reader {
  readSync(offset: number, length: number, dst?: Buffer): unknown
  size: number
  close(): Promise<void>
}

async function main(): Promise<void> {
  const [distA, distB, image] = process.argv.slice(2, 5)
  const per = Number(process.argv[5] ?? 1000)
  const batches = Number(process.argv[6] ?? 20)
  if (!image) throw new Error('usage: ab-readsync DIST_A DIST_B IMAGE [READS_PER_BATCH] [BATCHES]')
  const withAhead = process.env.AHEAD === '1'
  const helpers: Array<Reader | undefined> = []
  const open = async (dist: string, file = image): Promise<Reader> => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const m = require(path.resolve(dist, 'src/format/reader.js')) as {openImage(p: string, o: object): Promise<Reader>}
    if (!withAhead) return m.openImage(file, {sync: true, cacheBytes: 2 << 20})
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const ra = require(path.resolve(dist, 'src/format/read-ahead.js')) as {SharedReadAhead: {create(chunkSize: number): SharedArrayBuffer}}
    const probe = (await m.openImage(file, {sync: true})) as Reader & {chunkSize: number}
    const sab = ra.SharedReadAhead.create(probe.chunkSize)
    await probe.close()
    helpers.push(await m.openImage(file, {sync: true, cacheBytes: 2 << 20, readAhead: sab}))
    return m.openImage(file, {sync: true, cacheBytes: 2 << 20, readAhead: sab})
  }
  const imgs = [await open(distA), await open(distB, process.env.IMAGE_B ?? image)]
  let seed = 20260101
  const rnd = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32
  const seq = process.env.SEQ === '1'
  const len = seq ? Number(process.env.READ_LEN ?? 512 << 10) : 4096
  const blocks = Math.floor(imgs[0].size / len)
  const dst = Buffer.alloc(len)
  const cpu = [0, 0]
  let next = 0
  for (let b = -2; b < batches; b++) {
    const offsets = Array.from({length: per}, () => (seq ? (next++ % blocks) * len : Math.floor(rnd() * blocks) * len))
    // Alternate which goes first, so neither always follows the other's cache misses.
    for (const k of b & 1 ? [1, 0] : [0, 1]) {
      const c = process.cpuUsage()
      const helper = helpers[k] as (Reader & {prefetch(): boolean}) | undefined
      for (const o of offsets) {
        imgs[k].readSync(o, len, dst)
        if (helper) while (helper.prefetch());
      }
      const u = process.cpuUsage(c)
      if (b >= 0) cpu[k] += u.user + u.system // the first two batches warm up the JIT
    }
  }
  const n = per * batches
  console.log(`${seq ? `${len}-byte sequential` : '4 KiB random'} reads: A ${(cpu[0] / n).toFixed(2)} µs/read  B ${(cpu[1] / n).toFixed(2)} µs/read  B/A ${(cpu[1] / cpu[0]).toFixed(3)}  (${n} reads each, load ${(await import('node:os')).loadavg()[0].toFixed(1)})`)
  for (const i of [...imgs, ...helpers]) await i?.close()
}

main().catch((err) => {
  console.error(`ab-readsync: ${(err as Error).message}`)
  process.exit(2)
})

/**
 * npm run bench:reader — the shared reader in-process (no kernel): decompression on the calling thread
 * vs on worker threads, for sequential 1 MiB reads and random 4 KiB reads at queue depth 1 and 32.
 * This is the measurement behind OpenOptions.decompressThreads' default.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {ensureCorpus, CACHE} from './corpus'
import {fmt, markImage, MiB, staleImage, table} from './lib'
import {openImage} from '../src/format/reader'
import {createImage} from '../src/format/writer'
import {openInput} from '../src/format/input'

async function main(): Promise<void> {
  const {raw} = await ensureCorpus()
  const img = path.join(CACHE, 'reader.vdimg')
  if (staleImage(img, raw)) {
    fs.rmSync(img, {force: true})
    const input = openInput(raw)
    await createImage(input, img, {})
    await input.close()
    markImage(img)
  }
  const rows: string[][] = []
  for (const threads of [-1, 0, 1, 2]) {
    // -1: sync mode (readSync into a reused buffer), as a dedicated serving thread uses it.
    const im = await openImage(img, threads < 0 ? {sync: true, cacheBytes: 16 * MiB} : {decompressThreads: threads, cacheBytes: 16 * MiB})
    const dst = Buffer.allocUnsafe(MiB)
    const readOne = threads < 0 ? async (o: number, l: number) => void im.readSync(o, l, dst) : async (o: number, l: number) => void (await im.read(o, l))
    const seqBytes = Math.min(im.size, 1024 * MiB)
    let t = process.hrtime.bigint()
    const depth = 4
    let next = 0
    await Promise.all(
      Array.from({length: depth}, async () => {
        for (;;) {
          const off = next
          next += MiB
          if (off >= seqBytes) return
          await readOne(off, MiB)
        }
      }),
    )
    const seq = seqBytes / MiB / (Number(process.hrtime.bigint() - t) / 1e9)
    const rnd = async (qd: number, n: number) => {
      let seed = 12345
      const pick = () => ((seed = (seed * 1103515245 + 12345) >>> 0), (seed % Math.floor(im.size / 4096)) * 4096)
      let done = 0
      t = process.hrtime.bigint()
      await Promise.all(
        Array.from({length: qd}, async () => {
          while (done++ < n) await readOne(pick(), 4096)
        }),
      )
      return n / (Number(process.hrtime.bigint() - t) / 1e9)
    }
    const qd1 = await rnd(1, 3000)
    const qd32 = await rnd(32, 6000)
    rows.push([threads < 0 ? 'sync mode (readSync, pread)' : threads === 0 ? 'calling thread' : `${threads} worker thread${threads > 1 ? 's' : ''}`, fmt(seq, 0), fmt(qd1, 0), fmt(qd32, 0)])
    await im.close()
  }
  console.log(table(['decompression on', 'seq 1 MiB MiB/s', 'rand 4K QD1 IOPS', 'rand 4K QD32 IOPS'], rows))
}

main().catch((err) => {
  console.error(`bench:reader: ${err.message}`)
  process.exit(1)
})

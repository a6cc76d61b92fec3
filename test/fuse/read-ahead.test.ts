/**
 * Reading ahead of sequential readers (docs/performance.md):
 *   - `vdev attach --read-ahead KiB` sets the device's read-ahead, read back from sysfs (the backend's default
 *     without it, 0 turns it off, bad values refused with one line, exit 2);
 *   - decode-ahead (src/format/read-ahead.ts): instances of one image sharing a decode-ahead buffer, one
 *     reading sequentially and one decoding ahead between its reads, give exactly the bytes and bad areas a
 *     plain instance gives, a damaged chunk fails the same way, and the work and memory ahead are bounded;
 *   - through the real kernel (FUSE + loop, the serving threads `vdev attach` starts): concurrent O_DIRECT
 *     streams read exact bytes, and requests touching a bad area fail with EIO while the others stream on.
 */
import * as assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import * as fs from 'node:fs'
import {createImage} from '../../src/format/writer'
import {openInput} from '../../src/format/input'
import {readMapfile} from '../../src/format/mapfile'
import {openImage} from '../../src/format/reader'
import {READ_AHEAD_BYTES, SharedReadAhead} from '../../src/format/read-ahead'
import {ChunkKind} from '../../src/format/layout'
import {prng, textish} from '../helpers'
import {IS_ROOT, Sandbox, attach, overlaps, readDirect, run} from './fixtures'

const MiB = 1 << 20
const CHUNK = 64 * 1024
const SIZE = 24 * MiB + 4096
const BAD = [
  {offset: 2 * MiB + 512, length: 1024},
  {offset: 9 * MiB - 2048, length: 8192},
  {offset: 17 * MiB, length: 2 * CHUNK},
]
const touchesBad = (offset: number, length: number): boolean => BAD.some((b) => overlaps(b, {offset, length}))

/** Text (zstd chunks), zeros, random bytes (raw chunks), text. */
function imageBytes(): Buffer {
  const b = Buffer.alloc(SIZE)
  textish(11, 6 * MiB).copy(b, 0)
  prng(12, 4 * MiB).copy(b, 10 * MiB)
  textish(13, SIZE - 14 * MiB).copy(b, 14 * MiB)
  return b
}

/** The bytes a reader must see: bad areas read as zeros (FORMAT.md §6). */
function expected(data: Buffer): Buffer {
  const e = Buffer.from(data)
  for (const b of BAD) e.fill(0, b.offset, b.offset + b.length)
  return e
}

async function makeImage(sb: Sandbox, data: Buffer): Promise<string> {
  fs.writeFileSync(sb.p('disk.raw'), data)
  const lines = ['# read-ahead.test.ts', '0x0 +']
  let at = 0
  for (const b of BAD) {
    lines.push(`0x${at.toString(16)} 0x${(b.offset - at).toString(16)} +`, `0x${b.offset.toString(16)} 0x${b.length.toString(16)} -`)
    at = b.offset + b.length
  }
  lines.push(`0x${at.toString(16)} 0x${(SIZE - at).toString(16)} +`)
  fs.writeFileSync(sb.p('disk.map'), lines.join('\n') + '\n')
  const input = openInput(sb.p('disk.raw'))
  try {
    await createImage(input, sb.p('disk.vdimg'), {chunkSize: CHUNK, mapfile: readMapfile(sb.p('disk.map'))})
  } finally {
    await input.close()
  }
  return sb.p('disk.vdimg')
}

describe('reading ahead: --read-ahead and decode-ahead on the serving threads', function () {
  this.timeout(120_000)
  let sb: Sandbox | undefined
  let data: Buffer
  let image: string

  before(async () => {
    sb = new Sandbox('vdev-read-ahead-')
    data = imageBytes()
    image = await makeImage(sb, data)
  })
  after(async () => {
    if (!sb) return
    const left = await sb.teardown()
    sb = undefined
    assert.deepEqual(left, [], 'the test left devices, mounts or processes behind')
  })

  it('decode-ahead: a sequential reader gets the exact bytes and bad areas from chunks another instance decoded ahead, within a bounded buffer', async () => {
    const sab = SharedReadAhead.create(CHUNK)
    const plain = await openImage(image, {sync: true, cacheBytes: 1 << 20})
    const reader = await openImage(image, {sync: true, cacheBytes: 256 << 10, readAhead: sab})
    const ahead = await openImage(image, {sync: true, cacheBytes: 256 << 10, readAhead: sab})
    const want = expected(data)
    const shared = new SharedReadAhead(sab, CHUNK)
    try {
      // The whole buffer, allocated once: at most READ_AHEAD_BYTES of chunks (at least 4) and a small header.
      assert.ok(sab.byteLength <= Math.max(READ_AHEAD_BYTES, 4 * CHUNK) + 4096, `${sab.byteLength} bytes`)
      const step = 300 * 1024 // not a multiple of the chunk size: reads begin and end inside chunks
      let maxAhead = 0
      for (let off = 4096 * 3; off < SIZE; off += step) {
        const len = Math.min(step, SIZE - off)
        const got = reader.readSync(off, len)
        const ref = plain.readSync(off, len)
        assert.ok(got.data.equals(want.subarray(off, off + len)), `bytes at ${off}`)
        assert.ok(ref.data.equals(got.data))
        assert.deepEqual(got.bad, ref.bad, `bad areas at ${off}`)
        let units = 0
        while (ahead.prefetch()) assert.ok(++units <= shared.slots, 'decode-ahead stops after a window of chunks')
        const s = shared.stats()
        maxAhead = Math.max(maxAhead, s.prefetched - s.used)
      }
      const s = reader.readAheadStats()!
      assert.ok(s.prefetched > 50, `chunks decoded ahead: ${s.prefetched}`)
      assert.ok(s.used > 50, `reads served from them: ${s.used}`)
      // Work ahead that nobody read yet never exceeds the window (half the slots, each read once or twice).
      assert.ok(maxAhead <= shared.slots, `decoded ahead and unread: ${maxAhead} (slots ${shared.slots})`)
      // Zero chunks are never decoded ahead: the zeros between 6 and 10 MiB cost nothing.
      const zeros = (4 * MiB) / CHUNK
      assert.ok(s.prefetched <= SIZE / CHUNK - zeros, `${s.prefetched} decoded ahead`)

      // Help with a read under way: another instance decodes its last chunks first, from the end back to the
      // chunk its reader is on, and the read takes them.
      const r = shared.begin(240, 247)
      shared.reading(r, 240)
      assert.equal(ahead.prefetch(), true)
      assert.equal(shared.stats().helped, 1)
      const got = Buffer.alloc(CHUNK)
      assert.equal(shared.copyOut(247, got, 0, 0, CHUNK), true, 'the last chunk was decoded first')
      assert.ok(got.equals(want.subarray(247 * CHUNK, 248 * CHUNK)))
      shared.reading(r, 246)
      assert.equal(ahead.prefetch(), false, 'nothing after the chunk the reader is on')
      shared.end(r)
      const before = shared.stats().used
      assert.ok(reader.readSync(240 * CHUNK, 8 * CHUNK).data.equals(want.subarray(240 * CHUNK, 248 * CHUNK)))
      assert.ok(shared.stats().used > before, 'the read used the helped chunk')
    } finally {
      await Promise.all([plain.close(), reader.close(), ahead.close()])
    }
  })

  it('decode-ahead: a damaged chunk decoded ahead fails the read that needs it as it does without read-ahead', async () => {
    const damaged = sb!.p('damaged.vdimg')
    fs.copyFileSync(image, damaged)
    const probe = await openImage(damaged, {sync: true})
    const i = 40 // 2.5 MiB: text, a zstd chunk
    const e = probe.entrySync(i)
    await probe.close()
    assert.equal(e.kind, ChunkKind.Zstd)
    const fd = fs.openSync(damaged, 'r+')
    fs.writeSync(fd, Buffer.from([0x5a ^ 0xff]), 0, 1, e.offset + Math.floor(e.storedLength / 2))
    fs.closeSync(fd)
    const sab = SharedReadAhead.create(CHUNK)
    const reader = await openImage(damaged, {sync: true, cacheBytes: 256 << 10, readAhead: sab})
    const ahead = await openImage(damaged, {sync: true, cacheBytes: 256 << 10, readAhead: sab})
    const plain = await openImage(damaged, {sync: true})
    try {
      const want = expected(data)
      let off = 0
      for (; off < i * CHUNK - 256 * 1024; off += 256 * 1024) {
        assert.ok(reader.readSync(off, 256 * 1024).data.equals(want.subarray(off, off + 256 * 1024)))
        while (ahead.prefetch());
      }
      const err = (f: () => unknown): string => {
        try {
          f()
        } catch (x) {
          return (x as Error).message
        }
        return 'no error'
      }
      const withAhead = err(() => reader.readSync(i * CHUNK, 4096))
      assert.match(withAhead, /chunk 40\b/)
      assert.equal(withAhead, err(() => plain.readSync(i * CHUNK, 4096)))
      // The next chunk still reads.
      assert.ok(reader.readSync((i + 1) * CHUNK, CHUNK).data.equals(want.subarray((i + 1) * CHUNK, (i + 2) * CHUNK)))
    } finally {
      await Promise.all([plain.close(), reader.close(), ahead.close()])
    }
  })

  it('attach sets the read-ahead: the backend default, --read-ahead N read back from sysfs, 0 off; bad values exit 2', async function () {
    if (!IS_ROOT) this.skip()
    const ra = (dev: string): number => Number(fs.readFileSync(`/sys/block/${dev.replace('/dev/', '')}/queue/read_ahead_kb`, 'utf8'))
    const page = Number((await run('getconf', ['PAGESIZE'])).stdout.toString()) / 1024
    for (const [flag, want] of [[undefined, 8192], ['1234', Math.floor(1234 / page) * page], ['0', 0]] as const) {
      const j = await attach(sb!, image, flag === undefined ? [] : ['--read-ahead', flag])
      try {
        assert.equal(ra(j.device), want, `--read-ahead ${flag}`)
        assert.match(fs.readFileSync(`${sb!.stateDir}/logs/${j.id}.log`, 'utf8'), new RegExp(`read-ahead: ${want} KiB`))
      } finally {
        assert.equal((await sb!.vdev(['detach', j.device])).code, 0)
      }
    }
    for (const bad of ['-1', '65537', 'lots']) {
      const r = await sb!.vdev(['attach', image, '--read-ahead', bad])
      assert.equal(r.code, 2, `--read-ahead ${bad}: ${r.stderr}`)
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
      assert.match(r.stderr, /^vdev: .*read-ahead/)
    }
  })

  it('through the kernel: concurrent O_DIRECT streams read exact bytes, requests touching bad areas fail with EIO, chunks are decoded ahead', async function () {
    if (!IS_ROOT) this.skip()
    const j = await attach(sb!, image)
    const want = expected(data)
    try {
      // Three streams at once over disjoint regions, 1 MiB requests one at a time each (dd's way).
      const regions = [
        {from: 0, to: 8 * MiB},
        {from: 10 * MiB, to: 16 * MiB},
        {from: 18 * MiB + 3 * 4096, to: SIZE - 4096},
      ]
      const streams = regions.map(async (r) => {
        for (let off = r.from; off < r.to; off += MiB) {
          const len = Math.min(MiB, r.to - off)
          const got = await readDirect(j.device, off, len)
          if (touchesBad(off, len)) assert.notEqual(got.code, 0, `read of ${len} at ${off} touches a bad area`)
          else {
            assert.equal(got.code, 0, `read of ${len} at ${off}: ${got.stderr}`)
            assert.ok(got.stdout.equals(want.subarray(off, off + len)), `bytes of ${len} at ${off}`)
          }
        }
      })
      await Promise.all(streams)
      // A request of one sector right after a bad one, and the bad one itself.
      assert.notEqual((await readDirect(j.device, BAD[0].offset, 512)).code, 0)
      const after = await readDirect(j.device, BAD[0].offset + BAD[0].length, 512)
      assert.equal(after.code, 0, after.stderr)
      assert.ok(after.stdout.equals(want.subarray(BAD[0].offset + BAD[0].length, BAD[0].offset + BAD[0].length + 512)))
      // One stream through a region with no bad area, with dd, compared by hash; `vdev list` shows what the
      // idle threads decoded ahead (again, if a loaded machine left them no idle moment).
      const sum = createHash('sha256').update(want.subarray(10 * MiB, 16 * MiB)).digest('hex')
      let ahead: {prefetched: number; used: number} | undefined
      for (let pass = 0; pass < 5 && !(ahead && ahead.prefetched > 0 && ahead.used > 0); pass++) {
        const whole = await run('sh', ['-c', `dd if=${j.device} bs=1M iflag=direct skip=10 count=6 status=none | sha256sum`])
        assert.equal(whole.stdout.toString().split(' ')[0], sum)
        const l = await sb!.vdev(['list', '--json'])
        ahead = (JSON.parse(l.stdout) as Array<{stats?: {decodeAhead?: {prefetched: number; used: number}}}>)[0].stats?.decodeAhead
      }
      assert.ok(ahead && ahead.prefetched > 0 && ahead.used > 0, `vdev list: decodeAhead ${JSON.stringify(ahead)}`)
    } finally {
      assert.equal((await sb!.vdev(['detach', j.device])).code, 0)
    }
    assert.match(fs.readFileSync(`${sb!.stateDir}/logs/${j.id}.log`, 'utf8'), /decode-ahead: [1-9]\d* chunks decoded ahead \(\d+ for a read under way\), [1-9]\d* read from there/)
  })
})

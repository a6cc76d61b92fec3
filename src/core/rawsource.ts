/**
 * A raw image file (optionally with a list of bad ranges, e.g. from a ddrescue mapfile) as a BlockSource.
 * It is the simplest source; tests use it as a reference beside the VDIMG reader.
 */
import * as fs from 'node:fs'
import type {BlockSource, ReadResult, Extent} from './source'
import type {BadRange} from './errors'
import {ioError} from './errors'

export class RawFileSource implements BlockSource {
  private constructor(
    private readonly fd: number,
    readonly size: number,
    readonly sectorSize: number,
    private readonly bad: BadRange[],
  ) {}

  static open(path: string, opts: {sectorSize?: number; bad?: BadRange[]} = {}): RawFileSource {
    let fd: number
    try {
      fd = fs.openSync(path, 'r')
    } catch (err) {
      throw ioError(path, err)
    }
    const size = fs.fstatSync(fd).size
    const bad = [...(opts.bad ?? [])].sort((a, b) => a.offset - b.offset)
    return new RawFileSource(fd, size, opts.sectorSize ?? 512, bad)
  }

  private badIn(offset: number, length: number): BadRange[] {
    const end = offset + length
    const out: BadRange[] = []
    for (const b of this.bad) {
      if (b.offset >= end) break
      const s = Math.max(b.offset, offset)
      const e = Math.min(b.offset + b.length, end)
      if (s < e) out.push({offset: s, length: e - s, status: b.status})
    }
    return out
  }

  async read(offset: number, length: number): Promise<ReadResult> {
    const data = Buffer.alloc(length)
    let done = 0
    while (done < length) {
      const n = await new Promise<number>((resolve, reject) =>
        fs.read(this.fd, data, done, length - done, offset + done, (err, got) => (err ? reject(err) : resolve(got))),
      )
      if (n === 0) break
      done += n
    }
    const bad = this.badIn(offset, length)
    for (const b of bad) data.fill(0, b.offset - offset, b.offset - offset + b.length)
    return {data, bad}
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = []
    let at = offset
    for (const b of this.badIn(offset, length)) {
      if (b.offset > at) out.push({offset: at, length: b.offset - at, kind: 'data'})
      out.push({offset: b.offset, length: b.length, kind: 'bad'})
      at = b.offset + b.length
    }
    if (at < offset + length) out.push({offset: at, length: offset + length - at, kind: 'data'})
    return out
  }

  async close(): Promise<void> {
    fs.closeSync(this.fd)
  }
}

/**
 * The overlay log's append point, shared between its owner (overlay.ts) and the serving threads' views
 * (overlay-view.ts), so that a thread appends a whole-sector write, write-zeroes or discard record itself,
 * with no call to the owner (docs/OVERLAY.md, "Serving"). Everything that appends — owner or thread —
 * takes one lock in shared memory, writes its record at the tail with the next sequence number (one
 * positional write, synchronously), advances tail and sequence and publishes the record to the owner in a
 * ring, then releases the lock. So records are still written one at a time, in sequence order, each to
 * fresh space, and the tail never passes a record that is not whole: the log's format, replay and crash
 * safety are exactly the owner-only ones. The owner applies the ring's records to its map (in order)
 * before anything that reads the map, and holds the lock while compaction switches logs.
 */
import * as fs from 'node:fs'
import {crc32c} from '../format/crc'
import {afterWritten} from '../sys/writev'

export const RECORD_MAGIC = 0x524c5656 // "VVLR" little-endian bytes 56 56 4c 52
export const RECORD_HEADER_SIZE = 64

/** Records the ring holds before a thread must have the owner empty it (a call). */
const RING = 8192
/** Int32 slots. */
const I = {lock: 0, closed: 1, fd: 2, produced: 3, consumed: 4, poked: 5, length: 8} as const
/** Float64 slots (after the Int32 ones). */
const F = {tail: 0, seq: 1, nextCheck: 2, length: 4} as const
const F_AT = I.length * 4
const RING_AT = F_AT + F.length * 8

/** One published record: its type, image range and where its data starts in the log. */
export interface Published {
  type: number
  offset: number
  length: number
  /** File offset of its data (write records). */
  file: number
}

export function encodeRecordHeader(r: {type: number; seq: number; offset: number; length: number; dataCrc: number}, id: Buffer): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_SIZE)
  b.writeUInt32LE(RECORD_MAGIC, 0)
  b.writeUInt16LE(r.type, 4)
  b.writeBigUInt64LE(BigInt(r.seq), 8)
  b.writeBigUInt64LE(BigInt(r.offset), 16)
  b.writeBigUInt64LE(BigInt(r.length), 24)
  id.copy(b, 32, 0, 16)
  b.writeUInt32LE(r.dataCrc, 48)
  b.writeUInt32LE(crc32c(b.subarray(0, 60)), 60)
  return b
}

/**
 * Write `parts` at `pos` whole (pwritev, synchronously: into the page cache, microseconds for a record of a
 * few pages — cheaper than a trip through libuv's thread pool; durability is the flush's fdatasync).
 */
export function pwritevAll(fd: number, parts: Buffer[], pos: number): void {
  let bufs = parts
  for (;;) {
    const n = fs.writevSync(fd, bufs, pos)
    if (n <= 0) throw Object.assign(new Error('short write'), {code: 'EIO'})
    pos += n
    bufs = afterWritten(bufs, n)
    if (bufs.length === 0) return
  }
}

/** Why an append did not happen: the ring is full (the owner must empty it first), or the log is closed. */
export type Refusal = 'full' | 'closed'

export class SharedLog {
  readonly shared: SharedArrayBuffer
  private readonly ints: Int32Array
  private readonly nums: Float64Array
  private readonly ring: Float64Array

  constructor(shared?: SharedArrayBuffer) {
    this.shared = shared ?? new SharedArrayBuffer(RING_AT + RING * 4 * 8)
    this.ints = new Int32Array(this.shared, 0, I.length)
    this.nums = new Float64Array(this.shared, F_AT, F.length)
    this.ring = new Float64Array(this.shared, RING_AT, RING * 4)
  }

  /**
   * Take the lock: spin briefly (a holder keeps it for one pwrite), then sleep on it. With `timeoutMs`,
   * false if it was not had by then (a thread ended while holding it: only when the process stops).
   */
  lock(timeoutMs = Infinity): boolean {
    const w = this.ints
    for (let i = 0; i < 100; i++) if (Atomics.compareExchange(w, I.lock, 0, 1) === 0) return true
    const deadline = Date.now() + timeoutMs
    // 2: locked, and someone may be waiting (the unlocker then wakes one).
    while (Atomics.exchange(w, I.lock, 2) !== 0) {
      const left = deadline - Date.now()
      if (left <= 0) return false
      Atomics.wait(w, I.lock, 2, Math.min(left, 1000))
    }
    return true
  }

  unlock(): void {
    if (Atomics.exchange(this.ints, I.lock, 0) === 2) Atomics.notify(this.ints, I.lock, 1)
  }

  /** Owner: the log's descriptor, tail and last sequence number (under the lock, or before any thread has the log). */
  set(fd: number, tail: number, seq: number): void {
    Atomics.store(this.ints, I.fd, fd)
    this.nums[F.tail] = tail
    this.nums[F.seq] = seq
  }

  get fd(): number {
    return Atomics.load(this.ints, I.fd)
  }

  get tail(): number {
    return this.nums[F.tail]
  }

  get seq(): number {
    return this.nums[F.seq]
  }

  /** Owner: threads poke it once the tail reaches this (to look whether the log is worth compacting). */
  set nextCheck(at: number) {
    this.nums[F.nextCheck] = at
    Atomics.store(this.ints, I.poked, 0)
  }

  /** Owner: no more appends (under the lock: none is under way). */
  close(): void {
    Atomics.store(this.ints, I.closed, 1)
  }

  get closed(): boolean {
    return Atomics.load(this.ints, I.closed) === 1
  }

  /**
   * Append one record (the caller holds the lock): header and data in one positional write at the tail,
   * then tail and sequence advanced and the record published. A failed write leaves the tail where it was
   * (the file cut back to it) and throws. Returns whether the tail has reached `nextCheck` for the first
   * time since it was set (the caller pokes the owner).
   */
  appendLocked(id: Buffer, type: number, offset: number, length: number, data?: Buffer): Refusal | boolean {
    if (this.closed) return 'closed'
    const produced = Atomics.load(this.ints, I.produced)
    if (((produced - Atomics.load(this.ints, I.consumed)) | 0) >= RING) return 'full'
    const fd = this.fd
    const tail = this.tail
    const seq = this.seq + 1
    const hdr = encodeRecordHeader({type, seq, offset, length, dataCrc: data ? crc32c(data) : 0}, id)
    try {
      pwritevAll(fd, data ? [hdr, data] : [hdr], tail)
    } catch (err) {
      // The next record overwrites whatever part of this one reached the file.
      try {
        fs.ftruncateSync(fd, tail)
      } catch {
        // The tail stays where it was either way.
      }
      throw err
    }
    const slot = (produced & (RING - 1)) * 4
    this.ring[slot] = type
    this.ring[slot + 1] = offset
    this.ring[slot + 2] = length
    this.ring[slot + 3] = tail + RECORD_HEADER_SIZE
    this.nums[F.seq] = seq
    this.nums[F.tail] = tail + RECORD_HEADER_SIZE + (data ? data.length : 0)
    Atomics.store(this.ints, I.produced, (produced + 1) | 0)
    return this.nums[F.tail] >= this.nums[F.nextCheck] && Atomics.exchange(this.ints, I.poked, 1) === 0
  }

  /** Owner: the records published since the last call, in sequence order. */
  drain(apply: (r: Published) => void): number {
    const produced = Atomics.load(this.ints, I.produced)
    let consumed = Atomics.load(this.ints, I.consumed)
    let n = 0
    while (consumed !== produced) {
      const slot = (consumed & (RING - 1)) * 4
      apply({type: this.ring[slot], offset: this.ring[slot + 1], length: this.ring[slot + 2], file: this.ring[slot + 3]})
      consumed = (consumed + 1) | 0
      n++
    }
    Atomics.store(this.ints, I.consumed, consumed)
    return n
  }
}

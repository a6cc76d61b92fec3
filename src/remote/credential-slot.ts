/**
 * The AWS keys an s3:// image is read with, in shared memory, for the serving threads' own GETs (curl.ts):
 * the thread that opened the image (which loads them and keeps temporary ones fresh: s3.ts,
 * credentials.ts) publishes each set it loads; a serving thread reads the newest whenever it signs. The
 * keys never leave the process (threads share its memory anyway) and are never written to disk.
 *
 * Layout (Int32 words, then bytes): [0] generation — odd while the owner writes, even when the slot is
 * whole; [1] length of the JSON that follows; bytes from 8: the JSON. A reader copies the JSON out and
 * takes it only if the generation was even and the same before and after (a sequence lock: the owner
 * never waits for readers). Every word of it is written and read with Atomics, so that the copy cannot be
 * reordered around the generation's loads on any CPU (JavaScript orders only atomic accesses). Keys too long for the slot are not published: threads then leave every S3 GET
 * to the owner, as when they cannot sign at all.
 */
import type {AwsCredentials} from './sigv4'

/** Bytes for the JSON: STS session tokens run to ~1–2 KiB; 16 KiB leaves room for any seen. */
const SLOT_BYTES = 16 << 10
const HEADER = 8

/** What a thread signs with: keys (with their expiration, ms since the epoch), or none (unsigned requests). */
export type SlotCredentials = {keys: AwsCredentials; expiresAt?: number} | {keys: undefined}

export class CredentialSlot {
  private readonly words: Int32Array
  /** The JSON's words (Atomics), and a private copy to decode from. */
  private readonly data: Int32Array
  private readonly scratch = new Int32Array(SLOT_BYTES / 4)
  /** JSON that did not parse although the generation said the copy was whole (for tests: never). */
  parseFailures = 0
  /** Reader side: the generation last decoded, and what it gave. */
  private seen = -1
  private last: SlotCredentials | undefined

  private constructor(readonly buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer, 0, 2)
    this.data = new Int32Array(buffer, HEADER)
  }

  /** A new, empty slot (nothing published: readers get undefined). */
  static create(): CredentialSlot {
    return new CredentialSlot(new SharedArrayBuffer(HEADER + SLOT_BYTES))
  }

  /** A thread's view of a slot it was given. */
  static attach(buffer: SharedArrayBuffer): CredentialSlot {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength !== HEADER + SLOT_BYTES) throw new Error('not a credential slot')
    return new CredentialSlot(buffer)
  }

  /**
   * Owner: publish `c` (undefined: requests go unsigned). False when they do not fit: the slot is then
   * emptied, so that no thread goes on with keys older than the owner's.
   */
  publish(c: (AwsCredentials & {expiration?: Date}) | undefined): boolean {
    const json = c ? JSON.stringify({a: c.accessKeyId, s: c.secretAccessKey, t: c.sessionToken, e: c.expiration?.getTime()}) : '{}'
    const enc = Buffer.from(json, 'utf8')
    const fits = enc.length <= SLOT_BYTES
    const n = Math.ceil(enc.length / 4)
    const padded = new Int32Array(n)
    if (fits) new Uint8Array(padded.buffer).set(enc)
    Atomics.add(this.words, 0, 1)
    if (fits) for (let i = 0; i < n; i++) Atomics.store(this.data, i, padded[i])
    Atomics.store(this.words, 1, fits ? enc.length : 0)
    Atomics.add(this.words, 0, 1)
    return fits
  }

  /** Reader: the newest keys, or undefined when none are published (or they did not fit). */
  read(): SlotCredentials | undefined {
    for (let tries = 0; tries < 100; tries++) {
      const g = Atomics.load(this.words, 0)
      if (g === this.seen) return this.last
      if (g & 1) continue
      const len = Atomics.load(this.words, 1)
      if (len <= 0 || len > SLOT_BYTES) {
        if (Atomics.load(this.words, 0) !== g) continue
        this.seen = g
        this.last = undefined
        return undefined
      }
      const n = Math.ceil(len / 4)
      for (let i = 0; i < n; i++) this.scratch[i] = Atomics.load(this.data, i)
      if (Atomics.load(this.words, 0) !== g) continue
      const text = Buffer.from(this.scratch.buffer, 0, len).toString('utf8')
      let v: SlotCredentials | undefined
      try {
        const o = JSON.parse(text) as {a?: string; s?: string; t?: string; e?: number}
        v = o.a && o.s ? {keys: {accessKeyId: o.a, secretAccessKey: o.s, sessionToken: o.t}, expiresAt: o.e} : {keys: undefined}
      } catch {
        this.parseFailures++
        v = undefined
      }
      this.seen = g
      this.last = v
      return v
    }
    // The owner kept writing (it does not, a few times an hour at most): leave this GET to it.
    return undefined
  }
}

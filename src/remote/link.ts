/**
 * How serving threads read a remote object synchronously (docs/remote.md, "Threads"). Serving threads
 * answer one request at a time with readSync; HTTP is asynchronous. So the process's own instance of the
 * object (HttpObject, on the thread that opened the image: the daemon's or `vdev serve`'s main thread,
 * whose event loop is otherwise idle) does every GET, and each serving thread gets a *link* to it: a
 * MessagePort and a shared Int32 flag. A read posts {id, len, pos} on the port and sleeps in Atomics.wait
 * on the flag; the owner fetches (through its read-ahead, its shared in-flight GETs and its ETag pin — one
 * of each for the whole process, whatever the number of threads), posts the bytes (transferred, not
 * copied) and sets the flag; the thread wakes and takes the answer with receiveMessageOnPort. This is the
 * pattern of synckit and of Node's own synchronous module hooks.
 *
 * The owner's read has its own deadline (--remote-timeout); the thread waits that long plus a margin, so
 * a read never hangs even if the owner is stuck: it fails with EIO.
 */
import {MessageChannel, receiveMessageOnPort, type MessagePort} from 'node:worker_threads'
import {VdevError, type ErrorCode} from '../core/errors'
import type {ByteRanges} from '../format/ranges'

/** What travels to a serving thread (structured-cloned; the port is transferred). */
export interface RangesLink {
  port: MessagePort
  /** Int32Array over it: [0] = 1 once an answer was posted. */
  flag: SharedArrayBuffer
  name: string
  size: number
  /** How long the owner may take for one read (ms). */
  timeoutMs: number
}

type Request = {id: number; len: number; pos: number}
type Answer = {id: number; data?: ArrayBuffer; error?: {code: ErrorCode; message: string}}

/** On the owner's thread: a new link answering from `ranges`. The caller transfers `link.port`. */
export function offerLink(ranges: ByteRanges, timeoutMs: number): RangesLink {
  const {port1, port2} = new MessageChannel()
  const flag = new SharedArrayBuffer(4)
  const word = new Int32Array(flag)
  port1.on('message', (m: Request) => {
    const answer = (a: Answer, transfer: ArrayBuffer[] = []): void => {
      try {
        port1.postMessage(a, transfer)
      } finally {
        Atomics.store(word, 0, 1)
        Atomics.notify(word, 0)
      }
    }
    ranges.read(m.len, m.pos).then(
      (b) => {
        // Transfer the bytes when they own their memory whole; copy otherwise.
        const own = b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && !(b.buffer instanceof SharedArrayBuffer)
        const data = own ? (b.buffer as ArrayBuffer) : (new Uint8Array(b).buffer as ArrayBuffer)
        answer({id: m.id, data}, [data])
      },
      (err: unknown) => {
        const e = err instanceof VdevError ? err : new VdevError('io', `${ranges.name}: ${(err as Error)?.message ?? err}`)
        answer({id: m.id, error: {code: e.code, message: e.message}})
      },
    )
  })
  // The port must not keep a process alive that is otherwise done.
  port1.unref()
  return {port: port2, flag, name: ranges.name, size: ranges.size, timeoutMs}
}

/** On a serving thread: the object's bytes, read synchronously through the link. */
export class LinkedRanges implements ByteRanges {
  readonly synchronous = true
  readonly name: string
  readonly size: number
  private readonly word: Int32Array
  private nextId = 1
  private closed = false

  constructor(
    private readonly link: RangesLink,
    readonly reopen?: Record<string, string | number | boolean>,
  ) {
    this.name = link.name
    this.size = link.size
    this.word = new Int32Array(link.flag)
  }

  readSync(len: number, pos: number, into?: Buffer): Buffer {
    if (this.closed) throw new VdevError('io', `${this.name}: closed`)
    const id = this.nextId++
    Atomics.store(this.word, 0, 0)
    this.link.port.postMessage({id, len, pos} satisfies Request)
    const deadline = Date.now() + this.link.timeoutMs + 5000
    for (;;) {
      const got = receiveMessageOnPort(this.link.port)
      if (got) {
        const a = got.message as Answer
        if (a.id !== id) continue // an answer to a read that gave up waiting
        if (a.error) throw new VdevError(a.error.code, a.error.message)
        const b = Buffer.from(a.data!)
        if (b.length !== len) throw new VdevError('io', `${this.name}: ${b.length} bytes for a read of ${len}`)
        if (into && into.length >= len) {
          b.copy(into, 0)
          return into.subarray(0, len)
        }
        return b
      }
      const left = deadline - Date.now()
      if (left <= 0) throw new VdevError('io', `${this.name}: bytes ${pos}-${pos + len - 1}: no answer from the fetching thread within ${Math.round((this.link.timeoutMs + 5000) / 1000)} s`)
      Atomics.wait(this.word, 0, 0, left)
      Atomics.store(this.word, 0, 0)
    }
  }

  read(len: number, pos: number, into?: Buffer): Promise<Buffer> {
    try {
      return Promise.resolve(this.readSync(len, pos, into))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.link.port.close()
  }
}

/**
 * A serving thread (see threads.ts): it opens the image itself in sync mode, then serves the connections
 * the main thread assigns it, one at a time. For each request it takes the connection's read lock, reads
 * the request (and a refused write's payload) with blocking read(2), releases the lock, answers from its
 * own image instance, and writes the reply whole with writev(2) under the write lock — so replies never
 * interleave, and come back in the order they finish.
 */
import * as fs from 'node:fs'
import {parentPort, workerData} from 'node:worker_threads'
import {BlockServer} from '../../core/blockserver'
import {openImage, type VdimgImage} from '../../format/reader'
import * as libc from '../../sys/libc'
import * as P from './protocol'
import {Responder, type Reply} from './respond'
import {STATE, lock, unlock, type Assignment, type ServeThreadConfig, type ThreadMessage} from './threads'

const cfg = workerData as ServeThreadConfig
const post = (m: ThreadMessage): void => parentPort!.postMessage(m)
const log = (line: string): void => post({log: line})

/** Polling stops after this many polls in a row found no request... */
const MAX_POLL_MISSES = 4
/** ...and starts again when a request wakes the thread within this many poll periods of its going to sleep. */
const REARM_POLLS = 4

/** The request stream ended or broke: nothing more can be read from this connection. */
class StreamEnded extends Error {}

/**
 * The connection's request stream, shared by its threads and used only under the read lock: a buffer in
 * shared memory that read(2) fills with as many bytes as the socket has (several requests at once when a
 * client pipelines), and the offsets of the unconsumed bytes in it. It starts with the bytes the main
 * thread had read past the handshake.
 */
class Input {
  private readonly buf: Buffer
  private readonly discard = Buffer.allocUnsafe(64 * 1024)
  private polling = true
  private pollMisses = 0

  constructor(
    private readonly fd: number,
    private readonly state: Int32Array,
    shared: SharedArrayBuffer,
    private readonly pollUs: number,
  ) {
    this.buf = Buffer.from(shared)
  }

  /** Bytes read and not yet consumed: another request (or part of one) is already here. */
  get pending(): number {
    return Atomics.load(this.state, STATE.inputEnd) - Atomics.load(this.state, STATE.inputStart)
  }

  /** The next `n` bytes (n <= the buffer's size), valid until the next call; StreamEnded when the peer closes first. */
  take(n: number): Buffer {
    let start = Atomics.load(this.state, STATE.inputStart)
    let end = Atomics.load(this.state, STATE.inputEnd)
    if (end - start < n && start + n > this.buf.length) {
      // Make room at the end: move the partial request to the front.
      this.buf.copyWithin(0, start, end)
      end -= start
      start = 0
    }
    while (end - start < n) end += this.fill(this.buf, end, this.buf.length - end)
    const out = this.buf.subarray(start, start + n)
    start += n
    if (start === end) start = end = 0
    Atomics.store(this.state, STATE.inputStart, start)
    Atomics.store(this.state, STATE.inputEnd, end)
    return out
  }

  /** Consume and drop `n` bytes (a refused write's payload), buffered ones first. */
  skip(n: number): void {
    const buffered = Math.min(n, this.pending)
    if (buffered > 0) this.take(buffered)
    for (let left = n - buffered; left > 0; ) left -= this.fill(this.discard, 0, Math.min(left, this.discard.length))
  }

  private fill(into: Buffer, at: number, max: number): number {
    const polled = this.poll(into.subarray(at, at + max))
    if (polled > 0) return polled
    const t0 = this.pollUs > 0 ? process.hrtime.bigint() : 0n
    for (;;) {
      let n: number
      try {
        n = fs.readSync(this.fd, into, at, max, null)
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if (code === 'EINTR' || code === 'EAGAIN') continue
        throw new StreamEnded(`read: ${code ?? (err as Error).message}`)
      }
      if (n === 0) throw new StreamEnded(this.pending === 0 ? 'peer closed' : 'peer closed in the middle of a request')
      // A request that came soon after the thread went to sleep: the client is busy again, poll again.
      if (!this.polling && this.pollUs > 0 && Number(process.hrtime.bigint() - t0) < REARM_POLLS * this.pollUs * 1000) {
        this.polling = true
        this.pollMisses = 0
      }
      return n
    }
  }

  /**
   * Before sleeping in read(2), look for the next request for up to pollUs (non-blocking recv(2) in a
   * loop): a client with one request at a time usually sends the next one within microseconds of its
   * reply, and a thread that never slept answers it without the cost of a wake-up (in a VM, an idle
   * vCPU's). Like QEMU's adaptive polling, it stops after a few polls in a row find nothing (an idle
   * client costs nothing), and starts again when requests come close together. Returns bytes read or 0.
   */
  private poll(into: Buffer): number {
    if (!this.polling || this.pollUs <= 0) return 0
    const deadline = process.hrtime.bigint() + BigInt(this.pollUs * 1000)
    do {
      const n = libc.recv(this.fd, into, libc.MSG_DONTWAIT)
      if (n > 0) {
        this.pollMisses = 0
        return n
      }
      // 0: the peer closed; an error other than "nothing yet": let the blocking read report either.
      if (n === 0 || (n !== -libc.ERRNO.EAGAIN && n !== -libc.ERRNO.EINTR)) return 0
    } while (process.hrtime.bigint() < deadline)
    if (++this.pollMisses >= MAX_POLL_MISSES) this.polling = false
    return 0
  }
}

function writeAll(fd: number, parts: Reply): void {
  let left = 0
  for (const p of parts) left += p.length
  let bufs = parts
  for (;;) {
    let n: number
    try {
      n = fs.writevSync(fd, bufs)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EINTR' || code === 'EAGAIN') continue
      throw new StreamEnded(`write: ${code ?? (err as Error).message}`)
    }
    left -= n
    if (left === 0) return
    // A partial write (a signal): go on after the bytes written.
    const rest: Buffer[] = []
    for (const b of bufs) {
      if (n >= b.length) n -= b.length
      else {
        rest.push(n > 0 ? b.subarray(n) : b)
        n = 0
      }
    }
    bufs = rest
  }
}

/** Serve one connection until it ends; returns why it ended (for the main thread's log). */
async function serve(server: BlockServer, m: Assignment): Promise<string> {
  const state = new Int32Array(m.state)
  const input = new Input(m.fd, state, m.input, cfg.pollMicroseconds)
  const responder = new Responder(server, m.session, {sync: true, log, peer: m.peer})
  const closing = () => Atomics.store(state, STATE.closing, 1)
  const reply = (r: Reply) => {
    lock(state, STATE.writeLock)
    try {
      writeAll(m.fd, r)
    } finally {
      unlock(state, STATE.writeLock)
    }
  }
  // Held across the serving of a request when no other request had arrived: a client with one request in
  // flight is then served by one thread with no hand-over (no wake-ups of the others, no lock traffic).
  let holding = false
  try {
    for (;;) {
      if (!holding) lock(state, STATE.readLock)
      holding = true
      if (Atomics.load(state, STATE.closing)) return 'closing'
      const req = P.decodeRequest(input.take(P.REQUEST_SIZE))
      if (req.magic !== P.NBD_REQUEST_MAGIC) {
        closing()
        return `bad request magic 0x${req.magic.toString(16)}`
      }
      if (req.type === P.NBD_CMD_WRITE) {
        // The payload follows the header; it must be consumed (or the connection closed) to stay in sync.
        if (req.length > P.MAX_PAYLOAD) {
          closing()
          return `write payload of ${req.length} bytes`
        }
        input.skip(req.length)
      }
      if (Atomics.load(state, STATE.closing)) {
        // "...any subsequently received requests SHOULD be ESHUTDOWN" (Terminating the transmission phase).
        closing()
        reply(responder.error(req, P.NBD_ESHUTDOWN, 'the server is shutting down'))
        return 'closing'
      }
      if (req.type === P.NBD_CMD_DISC) {
        // The other threads answer what they hold; the main thread closes once all have left.
        closing()
        return 'disconnect'
      }
      if (input.pending > 0) {
        holding = false
        unlock(state, STATE.readLock)
      }
      const r = responder.answer(req)
      reply(r instanceof Promise ? await r : r)
    }
  } catch (err) {
    closing()
    if (err instanceof StreamEnded) return err.message
    return `serving thread: ${(err as Error).message}`
  } finally {
    if (holding) unlock(state, STATE.readLock)
  }
}

async function main(): Promise<void> {
  let image: VdimgImage
  try {
    image = await openImage(cfg.image, {sync: true, cacheBytes: cfg.cacheBytes})
  } catch (err) {
    post({fatal: (err as Error).message})
    return
  }
  const server = new BlockServer(image, {
    badPolicy: cfg.badPolicy,
    onFault: (offset, length, err) => log(`read of ${length} bytes at ${offset} failed: ${(err as Error)?.message ?? err}`),
  })
  parentPort!.on('message', (m: Assignment | {exit: true}) => {
    if ('exit' in m) {
      void image.close().finally(() => process.exit(0))
      return
    }
    const before = server.stats
    void serve(server, m).then((reason) => {
      const after = server.stats
      const served = {reads: after.reads - before.reads, bytes: after.bytes - before.bytes, errors: after.errors - before.errors, badReads: after.badReads - before.badReads}
      post({done: m.connection, reason, served})
    })
  })
  post({ready: true})
}

void main()

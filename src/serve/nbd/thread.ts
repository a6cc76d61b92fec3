/**
 * The body of an NBD serving thread (src/threads runs it; threads.ts hands it connections): it serves the
 * connections the main thread assigns it, one at a time, with its own instance of the source. For each
 * request it takes the connection's read lock, reads the request (and a write's payload: an overlay view takes it, a read-only export drops it) with
 * blocking read(2), releases the lock, answers, and writes the reply whole with writev(2) under the write
 * lock — so replies never interleave, and come back in the order they finish. A thread that would sleep (no
 * request has come, or another thread holds the read lock) decodes ahead meanwhile (ctx.workAhead).
 */
import * as fs from 'node:fs'
import {COUNTER} from '../../core/counters'
import * as libc from '../../sys/libc'
import {afterWritten} from '../../sys/writev'
import {HelpWanted} from '../../threads/help-wanted'
import {AdaptivePoll} from '../../threads/poll'
import type {ServingThreadContext} from '../../threads/protocol'
import * as P from './protocol'
import {Responder, type Reply} from './respond'
import {STATE, lock, lockWorking, nudge, unlock, type Assignment, type AssignmentDone} from './threads'


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

  constructor(
    private readonly fd: number,
    private readonly state: Int32Array,
    shared: SharedArrayBuffer,
    /** Before sleeping in read(2), look for the next request with non-blocking recv(2) (src/threads/poll.ts). */
    private readonly poll: AdaptivePoll,
    /** This thread's counter slot: requests taken while polling are counted in COUNTER.polled. */
    private readonly counters: Float64Array,
    /** Work ahead of the readers while no request has come (ServingThreadContext.workAhead). */
    private readonly workAhead: () => boolean,
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

  /** The next `n` bytes in a buffer of their own (a write's payload, up to MAX_PAYLOAD), buffered ones first. */
  takeCopy(n: number): Buffer {
    const out = Buffer.allocUnsafe(n)
    const buffered = Math.min(n, this.pending)
    if (buffered > 0) this.take(buffered).copy(out, 0)
    for (let at = buffered; at < n; ) at += this.fill(out, at, n - at)
    return out
  }

  /** Consume and drop `n` bytes (a refused write's payload), buffered ones first. */
  skip(n: number): void {
    const buffered = Math.min(n, this.pending)
    if (buffered > 0) this.take(buffered)
    for (let left = n - buffered; left > 0; ) left -= this.fill(this.discard, 0, Math.min(left, this.discard.length))
  }

  private fill(into: Buffer, at: number, max: number): number {
    const dst = into.subarray(at, at + max)
    const tryRecv = (): number => {
      const n = libc.recv(this.fd, dst, libc.MSG_DONTWAIT)
      if (n > 0) return n
      // Nothing yet: poll on. 0 (the peer closed) or another error: let the blocking read report either.
      return n === -libc.ERRNO.EAGAIN || n === -libc.ERRNO.EINTR ? 0 : -1
    }
    const polled = this.poll.poll(tryRecv)
    if (polled > 0) {
      this.counters[COUNTER.polled]++
      return polled
    }
    // Decode ahead while nothing has come, looking for it between units.
    while (this.workAhead()) {
      const n = tryRecv()
      if (n > 0) return n
      if (n < 0) break
    }
    this.poll.sleeping()
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
      this.poll.woke()
      return n
    }
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
    bufs = afterWritten(bufs, n)
  }
}

/** Serve one connection until it ends; returns why it ended (for the main thread's log). */
async function serve(ctx: ServingThreadContext, m: Assignment): Promise<string> {
  const state = new Int32Array(m.state)
  const input = new Input(m.fd, state, m.input, ctx.poller(), ctx.counters, ctx.workAhead)
  const responder = new Responder(ctx.server, m.session, {sync: true, log: (l) => ctx.log(l), peer: m.peer})
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
  // A read that wants help (a large one; the third small one in a row read while holding the lock, one request
  // at a time, each starting where the last ended: a client streaming in small requests) wakes a thread asleep
  // at the connection's read lock to decode some of its chunks and those after it while this one serves it;
  // a random 4 KiB read does not pay for a wake-up (src/threads/help-wanted.ts).
  const help = new HelpWanted()
  try {
    for (;;) {
      // Waiting for the lock (another thread reads the next request): decode ahead meanwhile.
      if (!holding) lockWorking(state, STATE.readLock, ctx.workAhead)
      holding = true
      if (Atomics.load(state, STATE.closing)) return 'closing'
      const req = P.decodeRequest(input.take(P.REQUEST_SIZE))
      if (req.magic !== P.NBD_REQUEST_MAGIC) {
        closing()
        return `bad request magic 0x${req.magic.toString(16)}`
      }
      let payload: Buffer | undefined
      if (req.type === P.NBD_CMD_WRITE) {
        // The payload follows the header; it must be consumed (or the connection closed) to stay in sync.
        if (req.length > P.MAX_PAYLOAD) {
          closing()
          return `write payload of ${req.length} bytes`
        }
        // A writable export (an overlay view) takes it; a read-only one drops it and answers EPERM.
        if (ctx.server.writable) payload = input.takeCopy(req.length)
        else input.skip(req.length)
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
      } else if (req.type === P.NBD_CMD_READ) {
        if (help.read(Number(req.offset), req.length)) nudge(state, STATE.readLock)
      }
      const r = responder.answer(req, payload)
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

/**
 * Serve each connection assigned to this thread, telling the main thread when it leaves one. The thread
 * lives until the pool stops it (src/threads/serving-worker.ts closes the source and exits).
 */
export function run(ctx: ServingThreadContext): Promise<string> {
  ctx.onMessage((m) => {
    const a = m as Assignment
    void serve(ctx, a).then((reason) => ctx.post({done: a.connection, reason} satisfies AssignmentDone))
  })
  ctx.ready()
  return new Promise<string>(() => undefined)
}

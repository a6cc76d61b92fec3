/**
 * A synchronous call from a serving thread to an object owned by another thread (the one that opened it),
 * whose work is asynchronous: the thread posts the call on a MessagePort and sleeps in Atomics.wait on a
 * shared flag; the owner's handler runs on its event loop, posts the answer (buffers transferred, not
 * copied) and sets the flag; the thread wakes and takes the answer with receiveMessageOnPort. The pattern
 * of synckit and of Node's synchronous module hooks. Serving threads answer one request at a time, so one
 * call is outstanding per link. Used by the overlay (src/layers/overlay-view.ts: its owner takes
 * partial-sector and FUA writes, flushes and the reads of what was written) and by remote images
 * (src/remote/link.ts: the owner does every GET).
 */
import {MessageChannel, receiveMessageOnPort, type MessagePort, type TransferListItem} from 'node:worker_threads'

/** What travels to the serving thread (structured-cloned; the port is transferred). */
export interface SyncLink {
  port: MessagePort
  /** Int32Array over it: [0] = 1 once an answer was posted. */
  flag: SharedArrayBuffer
}

/** An answer: a value, or an error (its name, code and message survive the crossing). */
export interface SyncAnswer<T> {
  id: number
  value?: T
  error?: {message: string; code?: string}
}

/**
 * On the owner's thread: a link whose calls `handler` answers. The caller transfers `link.port`. `onClose`
 * runs once the other side is gone (its thread ended, or it closed the port).
 */
export function offerSyncLink<Q, A>(handler: (call: Q) => Promise<{value: A; transfer?: TransferListItem[]}>, onClose?: () => void): SyncLink {
  const {port1, port2} = new MessageChannel()
  if (onClose) port1.once('close', onClose)
  const flag = new SharedArrayBuffer(4)
  const word = new Int32Array(flag)
  port1.on('message', (m: {id: number; call: Q}) => {
    const answer = (a: SyncAnswer<A>, transfer: TransferListItem[] = []): void => {
      try {
        port1.postMessage(a, transfer)
      } finally {
        Atomics.store(word, 0, 1)
        Atomics.notify(word, 0)
      }
    }
    handler(m.call).then(
      (r) => answer({id: m.id, value: r.value}, r.transfer),
      (err: unknown) => answer({id: m.id, error: {message: (err as Error)?.message ?? String(err), code: (err as {errno?: string; code?: string})?.errno ?? (err as {code?: string})?.code}}),
    )
  })
  // The port must not keep a process alive that is otherwise done.
  port1.unref()
  return {port: port2, flag}
}

/** On a serving thread: call the owner and wait for its answer. Throws what the owner's handler threw. */
export class SyncCaller<Q, A> {
  private readonly word: Int32Array
  private nextId = 1

  /** `skipped`: told of each answer nobody waits for any more (a late one, or one left at close). */
  constructor(
    private readonly link: SyncLink,
    private readonly skipped?: (value: A) => void,
  ) {
    this.word = new Int32Array(link.flag)
  }

  /**
   * Call the owner and wait for its answer. With `timeoutMs`, give up after that long with an error whose
   * code is ETIMEDOUT (a late answer is then skipped by the next call).
   */
  call(call: Q, transfer: TransferListItem[] = [], timeoutMs?: number): A {
    const id = this.nextId++
    Atomics.store(this.word, 0, 0)
    this.link.port.postMessage({id, call}, transfer)
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs
    for (;;) {
      const got = receiveMessageOnPort(this.link.port)
      if (got) {
        const a = got.message as SyncAnswer<A>
        if (a.id !== id) {
          if (!a.error) this.skipped?.(a.value as A)
          continue
        }
        if (a.error) throw Object.assign(new Error(a.error.message), {code: a.error.code})
        return a.value as A
      }
      const left = deadline - Date.now()
      if (left <= 0) throw Object.assign(new Error(`no answer within ${Math.round(timeoutMs! / 1000)} s`), {code: 'ETIMEDOUT'})
      // The owner answers every call (its work has its own failure paths); wake now and then regardless.
      Atomics.wait(this.word, 0, 0, Math.min(1000, left))
      Atomics.store(this.word, 0, 0)
    }
  }

  /** Post a call whose answer nobody waits for (the next call skips it). */
  post(call: Q): void {
    this.link.port.postMessage({id: this.nextId++, call})
  }

  close(): void {
    // Answers already here that nobody will take.
    if (this.skipped) for (let got = receiveMessageOnPort(this.link.port); got; got = receiveMessageOnPort(this.link.port)) {
      const a = got.message as SyncAnswer<A>
      if (!a.error) this.skipped(a.value as A)
    }
    this.link.port.close()
  }
}

/**
 * A small pool of worker threads running one script. Each task goes to the least busy worker; replies
 * carry the task id. Workers are unref'd, so an idle pool never keeps the process alive.
 */
import {Worker, type TransferListItem} from 'node:worker_threads'

interface Pending {
  resolve: (v: unknown) => void
  reject: (e: unknown) => void
}

export class WorkerPool {
  private readonly workers: Worker[] = []
  private readonly busy: number[] = []
  private readonly pending = new Map<number, Pending & {worker: number}>()
  private nextId = 1
  private failed: Error | undefined
  private closing = false

  constructor(script: string, size: number, workerData?: unknown) {
    for (let i = 0; i < Math.max(1, size); i++) {
      const w = new Worker(script, {workerData})
      w.unref()
      w.on('message', (m: {id: number; error?: string; result?: unknown}) => {
        const p = this.pending.get(m.id)
        if (!p) return
        this.pending.delete(m.id)
        this.busy[p.worker]--
        this.refresh()
        if (m.error !== undefined) p.reject(new Error(m.error))
        else p.resolve(m.result)
      })
      w.on('error', (err) => this.fail(err))
      w.on('exit', (code) => {
        if (code !== 0 && !this.closing) this.fail(new Error(`worker exited with code ${code}`))
      })
      this.workers.push(w)
      this.busy.push(0)
    }
  }

  get size(): number {
    return this.workers.length
  }

  private fail(err: Error): void {
    this.failed ??= err
    for (const [id, p] of this.pending) {
      this.pending.delete(id)
      p.reject(err)
    }
  }

  /** Keep the process alive only while tasks are outstanding. */
  private refresh(): void {
    // Closing holds every worker ref'd until its exit is delivered: a reply arriving meanwhile must not unref
    // it, or the event loop empties with close() still awaited and the process exits 0 mid-command.
    if (this.closing) return
    const active = this.pending.size > 0
    for (const w of this.workers) (active ? w.ref() : w.unref())
  }

  run<T>(task: object, transfer: TransferListItem[] = []): Promise<T> {
    if (this.failed) return Promise.reject(this.failed)
    if (this.closing) return Promise.reject(new Error('worker pool is closed'))
    let best = 0
    for (let i = 1; i < this.busy.length; i++) if (this.busy[i] < this.busy[best]) best = i
    const id = this.nextId++
    this.busy[best]++
    const p = new Promise<T>((resolve, reject) =>
      this.pending.set(id, {resolve: resolve as (v: unknown) => void, reject, worker: best}),
    )
    this.refresh()
    this.workers[best].postMessage({...task, id}, transfer)
    return p
  }

  /**
   * Post `message` to every worker, expecting no reply (e.g. SharedArrayBuffers that later tasks name by
   * number). A worker gets its messages in order, so every task run after this sees it.
   */
  broadcast(message: object): void {
    if (this.failed || this.closing) return
    for (const w of this.workers) w.postMessage(message)
  }

  async close(): Promise<void> {
    this.closing = true
    await Promise.all(this.workers.map((w) => (w.ref(), w.terminate())))
    this.workers.length = 0
    // Tasks the stopped workers never answered: reject them, so nothing awaits them forever.
    this.fail(new Error('worker pool is closed'))
  }
}

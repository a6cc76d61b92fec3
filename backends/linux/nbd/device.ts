/**
 * One kernel NBD device served from this process: a socketpair, the kernel's end handed to /dev/nbdN by a
 * worker thread that stays in NBD_DO_IT, and vdev's NBD server (transmission phase only, as the kernel
 * speaks no handshake) on the other end. Detach asks the kernel to disconnect (NBD_DISCONNECT: it sends
 * NBD_CMD_DISC, the server finishes what is in flight and closes), then the worker clears the socket and
 * closes the device, which releases it (pid gone, size 0).
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import type {BlockServer} from '../../../src/core/blockserver'
import {VdevError} from '../../../src/core/errors'
import * as libc from '../../../src/sys/libc'
import {NbdServer} from '../../../src/serve/nbd/server'
import type {ConnectionThreads} from '../../../src/serve/nbd/threads'
import type {DoItWorkerData} from './do-it-worker'
import {freeNbd, nbdPartitions, nbdState} from './sysfs'
import * as U from './abi'

export interface NbdAttachOptions {
  exportName: string
  log: (line: string) => void
  timeoutSeconds?: number
  /** Try only these devices (default: every free /dev/nbdN). */
  candidates?: string[]
  /** Serving threads for the kernel's requests (src/serve/nbd/threads.ts); without them the main thread serves. */
  threads?: ConnectionThreads
}

type WorkerMessage =
  | {type: 'ready'; device: string; fd: number}
  | {type: 'error'; message: string; errno: number}
  | {type: 'done'; rc: number}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export class NbdKernelDevice {
  private doItReturned = false
  private detaching: Promise<void> | undefined
  private readonly exitHook = () => this.emergencyDisconnect()
  /** Resolves when NBD_DO_IT has returned and the worker has closed the device. */
  readonly closed: Promise<void>

  private constructor(
    readonly device: string,
    readonly index: number,
    private readonly workerFd: number,
    private readonly worker: Worker,
    private readonly nbd: NbdServer,
    private readonly log: (line: string) => void,
  ) {
    this.closed = new Promise((resolve) => worker.once('exit', () => resolve()))
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'done') {
        this.doItReturned = true
        if (m.rc < 0) log(`nbd: ${device}: NBD_DO_IT ended with errno ${-m.rc}`)
      }
    })
    process.once('exit', this.exitHook)
    void this.closed.then(() => process.off('exit', this.exitHook))
  }

  static async attach(server: BlockServer, opts: NbdAttachOptions): Promise<NbdKernelDevice> {
    const candidates = opts.candidates ?? freeNbd().map((s) => s.device)
    if (candidates.length === 0) throw new VdevError('busy', 'no free /dev/nbdN device (every one is connected)')
    const [ours, theirs] = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC)
    const data: DoItWorkerData = {
      candidates,
      sockFd: theirs,
      blockSize: server.sectorSize,
      size: server.size,
      flags: U.kernelNbdFlags(server.writable),
      timeout: opts.timeoutSeconds ?? U.DEFAULT_TIMEOUT_SECONDS,
    }
    const worker = new Worker(path.join(__dirname, 'do-it-worker.js'), {workerData: data})
    let first: WorkerMessage
    try {
      first = await new Promise<WorkerMessage>((resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', reject)
        worker.once('exit', (code) => reject(new Error(`the NBD worker exited (${code}) before configuring a device`)))
      })
    } catch (err) {
      libc.close(ours)
      libc.close(theirs)
      throw new VdevError('io', `nbd: ${(err as Error).message}`)
    }
    // The kernel holds its own reference to the socket from NBD_SET_SOCK on.
    libc.close(theirs)
    if (first.type !== 'ready') {
      libc.close(ours)
      await worker.terminate()
      const m = first.type === 'error' ? first.message : 'NBD_DO_IT returned at once'
      throw new VdevError(first.type === 'error' && first.errno === libc.ERRNO.EBUSY ? 'busy' : 'io', `nbd: ${m}`)
    }
    const index = Number(/(\d+)$/.exec(first.device)![1])
    const nbd = new NbdServer(server, {exportName: opts.exportName, log: opts.log, threads: opts.threads})
    nbd.handleTransmission(new net.Socket({fd: ours, readable: true, writable: true}))
    const dev = new NbdKernelDevice(first.device, index, first.fd, worker, nbd, opts.log)
    try {
      await dev.waitConnected()
    } catch (err) {
      await dev.detach()
      throw err
    }
    opts.log(`nbd: ${first.device} connected (${server.size} bytes, block size ${server.sectorSize}, ${server.writable ? 'read-write: flush, FUA, trim, write-zeroes' : 'read-only'})`)
    return dev
  }

  /** NBD_DO_IT has started when the kernel shows its pid and the size. */
  private async waitConnected(): Promise<void> {
    for (let i = 0; i < 500; i++) {
      const s = nbdState(this.index)
      if (s.pid !== undefined && s.sizeBytes > 0) return
      if (this.doItReturned) throw new VdevError('io', `nbd: ${this.device}: NBD_DO_IT returned before the device came up`)
      await sleep(10)
    }
    throw new VdevError('timeout', `nbd: ${this.device} did not come up within 5 s`)
  }

  /**
   * Read the partition table: opening the whole device makes the kernel rescan it (nbd sets
   * GD_NEED_PART_SCAN in NBD_DO_IT). The open runs on libuv's thread pool, because the scan reads through
   * the NBD server on this thread's event loop; a blocking open here would deadlock.
   */
  async scanPartitions(): Promise<string[]> {
    const fh = await fs.promises.open(this.device, 'r')
    await fh.close()
    const parts = nbdPartitions(this.index)
    // devtmpfs (or udev) creates the nodes a moment after sysfs lists them.
    for (let i = 0; i < 200 && !parts.every((p) => fs.existsSync(p)); i++) await sleep(10)
    return parts
  }

  get connected(): boolean {
    return !this.doItReturned
  }

  /** NBD_DISCONNECT, wait for the worker to release the device; NBD_CLEAR_SOCK if the kernel does not let go. */
  detach(): Promise<void> {
    return (this.detaching ??= (async () => {
      if (!this.doItReturned) {
        const fh = await fs.promises.open(this.device, 'r').catch(() => undefined)
        try {
          if (fh) libc.tryIoctl(fh.fd, U.NBD_DISCONNECT, 0)
          const done = await Promise.race([this.closed.then(() => true), sleep(5000).then(() => false)])
          if (!done && fh) {
            this.log(`nbd: ${this.device}: no disconnect after 5 s; clearing the socket`)
            libc.tryIoctl(fh.fd, U.NBD_CLEAR_SOCK, 0)
          }
        } finally {
          await fh?.close()
        }
      }
      await Promise.race([this.closed, sleep(10_000)])
      await this.nbd.close()
      // The server's stats include what its serving threads served (their shared counters).
      const t = this.nbd.server.stats
      const on = this.nbd.threads ? 'serving threads' : 'the main thread'
      this.log(`nbd: ${this.device}: served ${t.reads} reads, ${t.bytes} bytes, ${t.errors} errors (${t.badReads} touching bad areas) on ${on}`)
      this.log(`nbd: ${this.device} disconnected`)
    })())
  }

  /** At process exit the worker must leave NBD_DO_IT, or Node would wait for it forever. */
  private emergencyDisconnect(): void {
    if (this.doItReturned) return
    libc.tryIoctl(this.workerFd, U.NBD_DISCONNECT, 0)
    libc.tryIoctl(this.workerFd, U.NBD_CLEAR_SOCK, 0)
  }
}

/**
 * The backend contract. A backend turns a BlockServer into an OS block device. Each backend lives in its
 * own folder under backends/ and registers itself in src/core/backends.ts; adding one edits nothing else.
 * It declares how it serves (its thread model, as nbdkit plugins do); the attach daemon reads that.
 */
import type {BlockServer} from './blockserver'
import type {ThreadModel} from '../threads/config'

export type Probe = {available: true; detail?: string} | {available: false; reason: string}

export interface AttachContext {
  /** Registry id of this device, e.g. "vdev3". */
  id: string
  /** Absolute path of the image. */
  image: string
  /** Private per-device directory (mount points, sockets), created and removed by the lifecycle. */
  runDir: string
  log: (line: string) => void
  /**
   * Serving threads to start (src/threads), from the backend's thread model and the environment; 0 when
   * the backend serves on the main thread or the source cannot be opened again on a thread.
   */
  threads: number
  /** How long a serving thread polls for its next request before sleeping (0: never). */
  pollMicroseconds: number
}

export interface AttachedDevice {
  /** The block device node, e.g. /dev/loop3, /dev/ublkb0, /dev/nbd0, /dev/disk4. */
  device: string
  /** Extra device nodes the user may want (macOS: /dev/rdiskN). */
  aliases?: string[]
  partitions: string[]
  /** Backend-specific facts saved in the registry so `detach` can clean up after a dead server. */
  state: Record<string, unknown>
  /** Tear down the device (the server still runs); idempotent. */
  detach(): Promise<void>
  /** Resolves if the device goes away by itself (e.g. the kernel dropped the connection). */
  closed?: Promise<void>
}

export interface Backend {
  readonly name: string
  readonly platform: NodeJS.Platform
  /** One line for `vdev backends`. */
  readonly description: string
  /** Lower is preferred by `--backend auto`. */
  readonly preference: number
  /** How it serves: on serving threads of its own, or on the main thread's event loop. */
  readonly threadModel: ThreadModel
  /**
   * True when the backend serves a writable BlockServer (an overlay: `attach --overlay`) read-write, with the
   * kernel's write path (writes, flushes, discards, write-zeroes). Others attach read-only only.
   */
  readonly writable?: boolean
  /**
   * True when its serving threads also serve a writable server (through views of the overlay that call its
   * owner, src/layers/overlay-view.ts); otherwise a writable device is served on the main thread.
   */
  readonly writableThreads?: boolean
  /**
   * The device's read-ahead in KiB, set at attach unless `--read-ahead` says otherwise (Linux:
   * /sys/block/X/queue/read_ahead_kb); undefined leaves the kernel's. docs/performance.md has the measurements.
   */
  readonly readAheadKiB?: number
  probe(): Promise<Probe>
  attach(server: BlockServer, ctx: AttachContext): Promise<AttachedDevice>
  /** Clean up what a dead server left behind, from the registry state. Must be idempotent. */
  cleanup(state: Record<string, unknown>, log: (line: string) => void): Promise<void>
  /**
   * Optional, for `vdev list`: ask the OS whether the device recorded in `state` is still there (e.g.
   * macOS: `hdiutil info -plist`), so a disk ejected behind vdev's back is shown as such.
   */
  deviceGone?(state: Record<string, unknown>): Promise<boolean>
}

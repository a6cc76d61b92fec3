import * as fs from 'node:fs'
import * as path from 'node:path'
import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import type {BadPolicy} from '../core/blockserver'
import {VdevError} from '../core/errors'
import {backendNames} from '../core/backends'
import {attachInBackground, refuseIfAttached, resolveBackend, resolveImage, takeHeadersFromEnv, takeImageFromEnv, type OverlayRequest, type ReadyMessage} from '../lifecycle/attach'
import {logOf, reserveId, type DeviceEntry} from '../lifecycle/registry'
import {serve, type ServeOptions} from '../lifecycle/daemon'
import {sourceArgs, sourceFlags} from '../cli/source-flags'
import {describeSource, type SourceArgs} from '../sources'

/** Largest --read-ahead: 64 MiB, far past where reading ahead stops paying (docs/performance.md). */
const MAX_READ_AHEAD_KIB = 65536

export interface AttachOutput {
  id: string
  device: string
  backend: string
  image: string
  pid: number
  readOnly: boolean
  /** The overlay taking the writes (with --overlay or --scratch). */
  overlay?: string
  partitions: string[]
}

function output(e: DeviceEntry): AttachOutput {
  return {id: e.id, device: e.device!, backend: e.backend, image: e.image, pid: e.pid, readOnly: e.readOnly, ...(e.overlay ? {overlay: e.overlay} : {}), partitions: e.partitions}
}

/** A log function appending timestamped lines to a file descriptor. */
function fileLog(fd: number): (line: string) => void {
  return (line) => {
    try {
      fs.writeSync(fd, `${new Date().toISOString()} ${line}\n`)
    } catch {
      // the log is best effort
    }
  }
}

export default class Attach extends VdevCommand {
  static override summary = 'Attach an image as a block device (read-only, or read-write into an overlay) and print the device path'
  static override description = `Starts a serving process in the background, waits until the device is ready, prints its path (like "losetup -f --show -r -P") and exits. Unreadable areas of the image read as I/O errors (EIO), or as zeros with --bad-policy zero. Partitions in the image appear as DEVICEp1, DEVICEp2 …

With --overlay FILE (or --scratch) the device is writable: every write, discard and write-zeroes goes to the copy-on-write overlay FILE (created if missing; docs/OVERLAY.md) and the image itself is only ever read, so its hashes never change. "vdev overlay commit" turns image + overlay into a new image.

The server logs to /run/vdev/logs/ID.log. "vdev list" shows attached devices, "vdev detach" releases them. An image can be attached once at a time; attaching it again is refused. Needs root.`
  static override examples = [
    '<%= config.bin %> attach disk.vdimg',
    'sudo mount -o ro "$(<%= config.bin %> attach disk.vdimg)p1" /mnt',
    '<%= config.bin %> attach disk.vdimg --json',
    '<%= config.bin %> attach disk.vdimg --backend fuse --bad-policy zero',
    '<%= config.bin %> attach disk.vdimg --foreground   # serve until Ctrl-C / SIGTERM (systemd, CI)',
    '<%= config.bin %> attach rescued.img --mapfile rescued.map   # GNU ddrescue output, as it is',
    '<%= config.bin %> attach disk.raw --format raw',
    '<%= config.bin %> attach disk.vdimg --overlay disk.vdovl   # read-write; writes go to disk.vdovl',
    'sudo fsck -y "$(<%= config.bin %> attach disk.vdimg --scratch)p1"   # repair a throwaway copy',
    '<%= config.bin %> attach https://images.example.org/disk.vdimg --header "Authorization: Bearer $TOKEN"',
  ]
  static override args = {image: Args.string({description: 'the image (.vdimg; a local file or an http(s):// or s3:// URL), or a raw image or block device (see --format, --mapfile)', required: true})}
  static override flags = {
    ...sourceFlags,
    backend: Flags.string({description: 'how to make the device ("auto": the best available, see "vdev backends")', options: ['auto', ...backendNames()], default: 'auto'}),
    'bad-policy': Flags.string({description: 'what reads of unreadable areas return', options: ['error', 'zero'], default: 'error'}),
    foreground: Flags.boolean({description: 'serve in this process until SIGINT/SIGTERM, then detach'}),
    overlay: Flags.string({
      description: 'attach read-write: writes go to this copy-on-write overlay file (created if missing); the image is never written',
      exclusive: ['scratch'],
    }),
    scratch: Flags.boolean({description: 'attach read-write into a temporary overlay that is deleted at detach', exclusive: ['overlay']}),
    timeout: Flags.integer({description: 'seconds to wait for the device to be ready', default: 60, min: 1}),
    'read-ahead': Flags.integer({
      description: "the device's read-ahead in KiB (Linux: /sys/block/DEV/queue/read_ahead_kb): how far the kernel reads ahead of buffered sequential reads; default: the backend's (fuse, ublk, nbd 8192; docs/performance.md), 0 turns it off",
      min: 0,
      max: MAX_READ_AHEAD_KIB,
    }),
    'server-id': Flags.string({hidden: true, description: 'internal: run as the background server for this id'}),
  }

  async run(): Promise<AttachOutput | undefined> {
    const {args, flags} = await this.parse(Attach)
    const badPolicy = flags['bad-policy'] as BadPolicy
    const source = sourceArgs(flags)
    const overlay: OverlayRequest | undefined = flags.scratch ? {scratch: true} : flags.overlay !== undefined ? {file: path.resolve(flags.overlay)} : undefined
    const readAheadKiB = flags['read-ahead']
    if (flags['server-id']) return this.runServer(takeImageFromEnv(args.image), {...source, headers: takeHeadersFromEnv()}, flags.backend, badPolicy, flags['server-id'], overlay, readAheadKiB)
    if (flags.foreground) return this.runForeground(args.image, source, flags.backend, badPolicy, overlay, readAheadKiB)
    const entry = await attachInBackground({image: args.image, source, backend: flags.backend, badPolicy, overlay, timeoutMs: flags.timeout * 1000, readAheadKiB})
    this.say(entry.device)
    return output(entry)
  }

  /** The hidden background server: report readiness on fd 3, log to stdout (the log file). */
  private async runServer(image: string, source: SourceArgs, backend: string, badPolicy: BadPolicy, id: string, overlay: OverlayRequest | undefined, readAheadKiB: number | undefined): Promise<undefined> {
    let reported = false
    const report = (m: ReadyMessage): void => {
      if (reported) return
      reported = true
      try {
        fs.writeSync(3, JSON.stringify(m) + '\n')
        fs.closeSync(3)
      } catch {
        // the parent is gone; keep serving
      }
    }
    const opts: ServeOptions = {
      id,
      source: describeSource(image, source),
      backend,
      badPolicy,
      overlay,
      readAheadKiB,
      log: fileLog(1),
      onReady: (r) => report('entry' in r ? {ok: true, entry: r.entry} : {ok: false, error: {code: r.error.code, message: r.error.message}}),
    }
    const code = await serve(opts)
    // Reader threads may still sit in read(2) on a device that is gone; exit explicitly.
    process.exit(code)
  }

  private async runForeground(imageArg: string, sourceArg: SourceArgs, backendArg: string, badPolicy: BadPolicy, overlay: OverlayRequest | undefined, readAheadKiB: number | undefined): Promise<undefined> {
    const {path: image, stat} = resolveImage(imageArg)
    const source = describeSource(image, sourceArg)
    const backend = await resolveBackend(backendArg, {writable: overlay !== undefined})
    refuseIfAttached(image, stat)
    const id = reserveId()
    const logFd = fs.openSync(logOf(id), 'a', 0o600)
    let failure: VdevError | undefined
    const code = await serve({
      id,
      source,
      backend,
      badPolicy,
      overlay,
      readAheadKiB,
      log: fileLog(logFd),
      onReady: (r) => {
        if ('error' in r) {
          failure = r.error
          return
        }
        if (this.jsonEnabled()) process.stdout.write(JSON.stringify(output(r.entry), null, 2) + '\n')
        else process.stdout.write(r.entry.device + '\n')
      },
    })
    fs.closeSync(logFd)
    if (failure) throw failure
    if (code !== 0) throw new VdevError('internal', `the server stopped with an error (log: ${logOf(id)})`)
    // Reader threads of a FUSE session may outlive it by a moment; nothing else is pending.
    process.exit(0)
  }
}

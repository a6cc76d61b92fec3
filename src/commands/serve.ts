import * as path from 'node:path'
import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {BlockServer, type BadPolicy} from '../core/blockserver'
import {VdevError} from '../core/errors'
import {sourceArgs, sourceFlags} from '../cli/source-flags'
import {describeStats} from '../lifecycle/daemon'
import {openSourceArg} from '../sources'
import {formatListen, isLoopback, parseListen, type ListenAddress} from '../serve/listen'
import {DEFAULT_POLL_MICROSECONDS, NBD_DEFAULT_PORT, defaultThreadsPerConnection, startNbdServer} from '../serve/nbd'

/** What src/serve/nfs exports (loaded lazily: the NFS server is optional for this command). */
interface NfsModule {
  startNfsServer(
    server: BlockServer,
    opts: {host: string; port: number; exportName: string; fileName: string; log: (l: string) => void},
  ): Promise<{host: string; port: number; close(): Promise<void>}>
}

export default class Serve extends VdevCommand {
  static override summary = 'Serve an image read-only over NBD (or NFS v3) until interrupted'
  static override description = `Serves the decoded image to network block device clients (qemu, nbd-client, nbdcopy, nbdinfo, nbdfuse …) or, with --protocol nfs, as one file over NFS v3. The export is read-only; reads of unreadable areas fail with EIO (or read as zeros with --bad-policy zero).

It listens on loopback only (127.0.0.1, port ${NBD_DEFAULT_PORT} for NBD) unless told otherwise; a non-loopback address also needs --allow-remote, because anyone who can reach it can read the image. With --json it prints one line once it accepts connections and nothing else on stdout. SIGINT or SIGTERM stops it: the listener closes, requests in flight finish, and it exits 0.`
  static override examples = [
    '<%= config.bin %> serve disk.vdimg',
    '<%= config.bin %> serve disk.vdimg --listen unix:/run/disk.sock --json',
    'nbdcopy nbd://127.0.0.1:10809/disk.vdimg disk.raw',
    'qemu-system-x86_64 -drive file=nbd://127.0.0.1:10809/disk.vdimg,format=raw,readonly=on …',
    '<%= config.bin %> serve disk.vdimg --protocol nfs --listen 127.0.0.1:2049',
    '<%= config.bin %> serve rescued.img --mapfile rescued.map   # GNU ddrescue output, as it is',
  ]
  static override args = {image: Args.string({description: 'the image (.vdimg), or a raw image or block device (see --format, --mapfile)', required: true})}
  static override flags = {
    ...sourceFlags,
    protocol: Flags.string({char: 'p', description: 'nbd or nfs (NFS v3 over TCP)', options: ['nbd', 'nfs'], default: 'nbd'}),
    listen: Flags.string({
      char: 'l',
      description: `unix:PATH or HOST:PORT (default 127.0.0.1:${NBD_DEFAULT_PORT} for nbd, 127.0.0.1 on a free port for nfs)`,
    }),
    'bad-policy': Flags.string({description: 'unreadable areas: error (EIO) or zero (read as zeros)', options: ['error', 'zero'], default: 'error'}),
    'allow-remote': Flags.boolean({description: 'allow listening on a non-loopback address'}),
    'export-name': Flags.string({description: 'NBD export name (default: the image file name; "" always works too)'}),
    threads: Flags.integer({
      description: `NBD: serving threads per connection, each reading, decoding and answering requests (default: the number of cores, at most 8; 0 serves on the main thread)`,
      min: 0,
      max: 64,
    }),
    'poll-us': Flags.integer({
      description: `NBD serving threads: microseconds to poll for a connection's next request before sleeping, which saves a wake-up per request for clients that send one at a time; stops by itself while a client is idle (default ${DEFAULT_POLL_MICROSECONDS}; 0 never polls)`,
      min: 0,
      max: 1000,
    }),
  }

  async run(): Promise<void> {
    const {args, flags} = await this.parse(Serve)
    const protocol = flags.protocol as 'nbd' | 'nfs'
    const address = parseListen(flags.listen ?? '127.0.0.1', protocol === 'nbd' ? NBD_DEFAULT_PORT : 0)
    if (address.kind === 'tcp' && !isLoopback(address.host) && !flags['allow-remote'])
      throw new VdevError(
        'usage',
        `--listen ${formatListen(address)} is not a loopback address: anyone who can reach it could read the image (add --allow-remote if that is what you want)`,
      )
    if (protocol === 'nfs' && address.kind === 'unix') throw new VdevError('usage', '--protocol nfs needs a HOST:PORT address (NFS runs over TCP)')
    const nfs = protocol === 'nfs' ? loadNfs() : undefined

    // Listen for the signals before anything is printed: a client may read the ready line and send SIGTERM at once.
    const signalled = new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGINT', resolve)
      process.once('SIGTERM', resolve)
    })
    const image = await openSourceArg(args.image, sourceArgs(flags))
    const log = (line: string) => process.stderr.write(`vdev serve: ${line}\n`)
    const server = new BlockServer(image, {
      badPolicy: flags['bad-policy'] as BadPolicy,
      onFault: (offset, length, err) => log(`read of ${length} bytes at ${offset} failed: ${(err as Error)?.message ?? err}`),
    })
    const base = path.basename(args.image)
    let stop: () => Promise<void>
    try {
      if (nfs) {
        // The one file in the export is the decoded image: disk.vdimg → disk.img.
        const fileName = base.replace(/\.(vdimg|img|raw)$/i, '') + '.img'
        const h = await nfs.startNfsServer(server, {host: (address as {host: string}).host, port: (address as {port: number}).port, exportName: '/', fileName, log})
        const listen = formatListen({kind: 'tcp', host: h.host, port: h.port})
        this.ready({protocol, listen, export: '/', file: fileName}, `serving ${args.image} over NFS v3 at ${listen}, export /, file ${fileName}`)
        stop = () => h.close()
      } else {
        const exportName = flags['export-name'] ?? base
        const perConnection = flags.threads ?? defaultThreadsPerConnection()
        const threads = perConnection > 0 ? {perConnection, pollMicroseconds: flags['poll-us']} : undefined
        const running = await startNbdServer(server, {listen: address, exportName, log, threads})
        const listen = formatListen(running.address)
        const uri = nbdUri(running.address, exportName)
        this.ready({protocol, listen, export: exportName, uri}, `serving ${args.image} over NBD at ${uri}`)
        stop = () => running.close()
      }
    } catch (err) {
      await image.close()
      throw err
    }

    const signal = await signalled
    if (!this.jsonEnabled()) log(`${signal}: stopping`)
    await stop()
    await server.drain()
    log(`stopped; ${describeStats(server.stats)}`)
    await image.close()
  }

  private ready(line: Record<string, unknown>, human: string): void {
    if (this.jsonEnabled()) process.stdout.write(JSON.stringify(line) + '\n')
    else this.say(human)
  }
}

export function nbdUri(a: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName).replace(/%2F/g, '/')
  if (a.kind === 'unix') return `nbd+unix:///${name}?socket=${a.path}`
  return `nbd://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}/${name}`
}

function loadNfs(): NfsModule {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require('../serve/nfs/index') as Partial<NfsModule>
    if (typeof mod.startNfsServer !== 'function') throw new Error('src/serve/nfs exports no startNfsServer')
    return mod as NfsModule
  } catch (err) {
    throw new VdevError('unavailable', `NFS serving is unavailable in this build: ${(err as Error).message.split('\n')[0]}`)
  }
}

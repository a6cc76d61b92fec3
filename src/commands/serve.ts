import * as path from 'node:path'
import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {BlockServer, type BadPolicy} from '../core/blockserver'
import {VdevError} from '../core/errors'
import {sourceArgs, sourceFlags} from '../cli/source-flags'
import {COUNTER} from '../core/counters'
import {describeDecodeAhead, describeStats} from '../lifecycle/daemon'
import {openSourceArg} from '../sources'
import {formatListen, isLoopback, parseListen, type ListenAddress} from '../serve/listen'
import {DEFAULT_POLL_MICROSECONDS, NBD_DEFAULT_PORT, defaultThreadsPerConnection, startNbdServer} from '../serve/nbd'
import {ISCSI_DEFAULT_PORT, startIscsiServer} from '../serve/iscsi'
import * as fs from 'node:fs'
import * as os from 'node:os'
import type {BlockSource} from '../core/source'
import {Overlay} from '../layers/overlay'

/** What src/serve/nfs exports (loaded lazily: the NFS server is optional for this command). */
interface NfsModule {
  startNfsServer(
    server: BlockServer,
    opts: {host: string; port: number; exportName: string; fileName: string; log: (l: string) => void; threads?: number},
  ): Promise<{host: string; port: number; threads: number; threadStats?: {connections: number}; mainConnections: number; close(): Promise<void>}>
}

export default class Serve extends VdevCommand {
  static override summary = 'Serve an image over NBD (or NFS v3, or iSCSI) until interrupted: read-only, or read-write into an overlay'
  static override description = `Serves the decoded image to network block device clients (qemu, nbd-client, nbdcopy, nbdinfo, nbdfuse …) or, with --protocol nfs, as one file over NFS v3, or with --protocol iscsi as an iSCSI target with one LUN (0) whose unreadable sectors fail with MEDIUM ERROR (Windows' built-in initiator, open-iscsi, qemu, libiscsi). The export is read-only unless --overlay FILE or --scratch is given (then writes, write-zeroes, discards and flushes — NFS WRITE and COMMIT, SCSI WRITE, WRITE SAME, UNMAP and SYNCHRONIZE CACHE — go to a copy-on-write overlay file and the image is never written; docs/OVERLAY.md); reads of unreadable areas fail with EIO (or read as zeros with --bad-policy zero).

It listens on loopback only (127.0.0.1, port ${NBD_DEFAULT_PORT} for NBD, ${ISCSI_DEFAULT_PORT} for iSCSI) unless told otherwise; a non-loopback address also needs --allow-remote, because anyone who can reach it can read the image. With --json it prints one line once it accepts connections and nothing else on stdout. SIGINT or SIGTERM stops it: the listener closes, requests in flight finish, and it exits 0.`
  static override examples = [
    '<%= config.bin %> serve disk.vdimg',
    '<%= config.bin %> serve disk.vdimg --listen unix:/run/disk.sock --json',
    'nbdcopy nbd://127.0.0.1:10809/disk.vdimg disk.raw',
    'qemu-system-x86_64 -drive file=nbd://127.0.0.1:10809/disk.vdimg,format=raw,readonly=on …',
    '<%= config.bin %> serve disk.vdimg --protocol nfs --listen 127.0.0.1:2049',
    '<%= config.bin %> serve rescued.img --mapfile rescued.map   # GNU ddrescue output, as it is',
    '<%= config.bin %> serve disk.vdimg --overlay disk.vdovl   # read-write; writes go to disk.vdovl, the image is untouched',
    '<%= config.bin %> serve disk.vdimg --protocol nfs --scratch   # the file read-write over NFS v3; the writes are thrown away at exit',
    '<%= config.bin %> serve disk.vdimg --protocol iscsi --json   # {"protocol":"iscsi","listen":"127.0.0.1:3260","target":"iqn.2026-01.dev.vdev:disk-…","lun":0,"uri":"iscsi://…"}',
    '<%= config.bin %> serve disk.vdimg --protocol iscsi --listen 0.0.0.0:3260 --allow-remote --chap-user vdev --chap-secret-file /etc/vdev/chap',
  ]
  static override args = {image: Args.string({description: 'the image (.vdimg), or a raw image or block device (see --format, --mapfile)', required: true})}
  static override flags = {
    ...sourceFlags,
    protocol: Flags.string({char: 'p', description: 'nbd, nfs (NFS v3 over TCP) or iscsi (an iSCSI target, RFC 7143)', options: ['nbd', 'nfs', 'iscsi'], default: 'nbd'}),
    listen: Flags.string({
      char: 'l',
      description: `unix:PATH or HOST:PORT (default 127.0.0.1:${NBD_DEFAULT_PORT} for nbd, 127.0.0.1:${ISCSI_DEFAULT_PORT} for iscsi, 127.0.0.1 on a free port for nfs)`,
    }),
    'bad-policy': Flags.string({description: 'unreadable areas: error (EIO) or zero (read as zeros)', options: ['error', 'zero'], default: 'error'}),
    'allow-remote': Flags.boolean({description: 'allow listening on a non-loopback address'}),
    'chap-user': Flags.string({description: 'iSCSI: require CHAP (MD5) authentication as this user; the secret comes from --chap-secret-file'}),
    'chap-secret-file': Flags.string({description: 'iSCSI: file holding the CHAP secret (first line; 12-16 bytes or more recommended)'}),
    'no-auth': Flags.boolean({description: 'iSCSI with --allow-remote: serve without CHAP (anyone who can reach the address can read the image)'}),
    overlay: Flags.string({
      description:
        'NBD, NFS and iSCSI: serve read-write, every write going to this copy-on-write overlay file (created if missing; docs/OVERLAY.md); the image is never written',
    }),
    scratch: Flags.boolean({description: 'NBD, NFS and iSCSI: serve read-write into a temporary overlay that is deleted when serve exits'}),
    'export-name': Flags.string({description: 'NBD export name (default: the image file name; "" always works too)'}),
    threads: Flags.integer({
      description: `NBD: serving threads per connection, each reading, decoding and answering requests; iSCSI: serving threads, each serving one connection after its login; NFS: serving threads, each serving one connection (default: the number of cores, at most 8; 0 serves on the main thread)`,
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
    const protocol = flags.protocol as 'nbd' | 'nfs' | 'iscsi'
    const address = parseListen(flags.listen ?? '127.0.0.1', protocol === 'nbd' ? NBD_DEFAULT_PORT : protocol === 'iscsi' ? ISCSI_DEFAULT_PORT : 0)
    if (address.kind === 'tcp' && !isLoopback(address.host) && !flags['allow-remote'])
      throw new VdevError(
        'usage',
        `--listen ${formatListen(address)} is not a loopback address: anyone who can reach it could read the image (add --allow-remote if that is what you want)`,
      )
    if (protocol === 'nfs' && address.kind === 'unix') throw new VdevError('usage', '--protocol nfs needs a HOST:PORT address (NFS runs over TCP)')
    const nfs = protocol === 'nfs' ? loadNfs() : undefined
    const chap = protocol === 'iscsi' ? readChap(flags, address.kind === 'tcp' && !isLoopback(address.host)) : undefined
    if (protocol !== 'iscsi' && (flags['chap-user'] || flags['chap-secret-file'])) throw new VdevError('usage', '--chap-user and --chap-secret-file are for --protocol iscsi')

    // Listen for the signals before anything is printed: a client may read the ready line and send SIGTERM at once.
    const signalled = new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGINT', resolve)
      process.once('SIGTERM', resolve)
    })
    if (flags.overlay !== undefined && flags.scratch) throw new VdevError('usage', '--overlay and --scratch exclude each other')
    const writable = flags.overlay !== undefined || flags.scratch
    let scratchDir: string | undefined
    const removeScratch = () => {
      if (scratchDir) fs.rmSync(scratchDir, {recursive: true, force: true})
      scratchDir = undefined
    }
    const base = await openSourceArg(args.image, sourceArgs(flags), {onWarning: (l) => this.warnAll([l])})
    this.warnAll((base as {warnings?: string[]}).warnings ?? [])
    let image: BlockSource = base
    if (writable) {
      let file = flags.overlay
      if (!file) {
        scratchDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-scratch-'))
        process.once('exit', removeScratch)
        file = path.join(scratchDir, 'overlay.vdovl')
      }
      try {
        image = await Overlay.open(base, file, {log: (line) => process.stderr.write(`vdev serve: ${line}\n`)})
      } catch (err) {
        await base.close()
        removeScratch()
        throw err
      }
    }
    const log = (line: string) => process.stderr.write(`vdev serve: ${line}\n`)
    const server = new BlockServer(image, {
      badPolicy: flags['bad-policy'] as BadPolicy,
      onFault: (offset, length, err) => log(`read of ${length} bytes at ${offset} failed: ${(err as Error)?.message ?? err}`),
    })
    const imageName = path.basename(args.image)
    const overlay = image instanceof Overlay ? {overlay: image.path, scratch: flags.scratch} : {}
    const how = image instanceof Overlay ? ` read-write into ${flags.scratch ? 'a scratch overlay' : `the overlay ${image.path}`}` : ''
    let stop: () => Promise<void>
    let served = (): string => ''
    try {
      if (nfs) {
        // The one file in the export is the decoded image: disk.vdimg → disk.img.
        const fileName = imageName.replace(/\.(vdimg|img|raw)$/i, '') + '.img'
        const threads = flags.threads ?? defaultThreadsPerConnection()
        const h = await nfs.startNfsServer(server, {host: (address as {host: string}).host, port: (address as {port: number}).port, exportName: '/', fileName, log, threads})
        const listen = formatListen({kind: 'tcp', host: h.host, port: h.port})
        this.ready({protocol, listen, export: '/', file: fileName, ...overlay}, `serving ${args.image} over NFS v3 at ${listen}, export /, file ${fileName}${how}`)
        stop = () => h.close()
        // Where the connections were served, and what the main thread read itself (none when every client got a thread).
        served = () =>
          `; connections: ${h.threadStats?.connections ?? 0} on serving threads, ${h.mainConnections} on the main thread (which served ${server.counters[COUNTER.reads]} reads)`
      } else if (protocol === 'iscsi') {
        if (address.kind !== 'tcp') throw new VdevError('usage', '--protocol iscsi needs a HOST:PORT address (iSCSI runs over TCP)')
        const threads = flags.threads ?? defaultThreadsPerConnection()
        const running = await startIscsiServer(server, {listen: address, image: args.image, chap, log, threads})
        const listen = formatListen(running.address)
        this.ready(
          {protocol, listen, target: running.iqn, lun: running.lun, uri: running.uri, ...overlay},
          `serving ${args.image} over iSCSI at ${listen}, target ${running.iqn}, LUN ${running.lun} (${running.uri})${chap ? ', CHAP required' : ''}${how ? `,${how}` : ''}`,
        )
        stop = () => running.close()
      } else {
        const exportName = flags['export-name'] ?? imageName
        const perConnection = flags.threads ?? defaultThreadsPerConnection()
        const threads = perConnection > 0 ? {perConnection, pollMicroseconds: flags['poll-us']} : undefined
        const running = await startNbdServer(server, {listen: address, exportName, log, threads})
        const listen = formatListen(running.address)
        const uri = nbdUri(running.address, exportName)
        this.ready({protocol, listen, export: exportName, uri, ...overlay}, `serving ${args.image} over NBD at ${uri}${how}`)
        stop = () => running.close()
      }
    } catch (err) {
      await image.close()
      removeScratch()
      throw err
    }

    const signal = await signalled
    if (!this.jsonEnabled()) log(`${signal}: stopping`)
    await stop()
    await server.drain()
    const w = server.writeStats
    log(`stopped; ${describeStats(server.stats)}${server.writable ? `; ${w.writes} writes (${w.writeBytes} bytes), ${w.zeroes} write-zeroes, ${w.trims} trims, ${w.flushes} flushes, ${w.writeErrors} failed` : ''}${served()}`)
    const ra = describeDecodeAhead(image)
    if (ra) log(ra)
    await image.close()
    removeScratch()
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

/**
 * CHAP for --protocol iscsi: --chap-user with --chap-secret-file; on a non-loopback address it is required
 * unless --no-auth says otherwise.
 */
function readChap(flags: {'chap-user'?: string; 'chap-secret-file'?: string; 'no-auth'?: boolean}, remote: boolean): {user: string; secret: Buffer} | undefined {
  const user = flags['chap-user']
  const file = flags['chap-secret-file']
  if (!user !== !file) throw new VdevError('usage', '--chap-user and --chap-secret-file go together')
  if (user && flags['no-auth']) throw new VdevError('usage', '--no-auth contradicts --chap-user')
  if (!user) {
    if (remote && !flags['no-auth'])
      throw new VdevError('usage', 'an iSCSI target on a non-loopback address needs CHAP (--chap-user and --chap-secret-file) or --no-auth')
    return undefined
  }
  let text: string
  try {
    text = fs.readFileSync(file!, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new VdevError('io', `${file}: cannot read the CHAP secret: ${code === 'ENOENT' ? 'no such file or directory' : code === 'EACCES' ? 'permission denied' : (code ?? (err as Error).message)}`)
  }
  const secret = text.split(/\r?\n/)[0]
  if (!secret) throw new VdevError('format', `${file}: the CHAP secret (first line) is empty`)
  return {user, secret: Buffer.from(secret, 'utf8')}
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

/**
 * `vdev serve --protocol iscsi`: an iSCSI target (server.ts) on a TCP listener, one LUN (0) per image,
 * read-only, or read-write over a writable BlockServer (`--overlay`, on serving threads through views). The
 * target's IQN is stable for an image: derived from its media hash when the source has one (a VDIMG image),
 * else from its path, size and modification time (a raw image and its mapfile), and from the overlay's id
 * when there is one, so an initiator that saved the target finds it again after a restart.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import type {BlockServer} from '../../core/blockserver'
import {listen, type ListenAddress} from '../listen'
import type {ChapConfig} from './login'
import {IscsiTarget} from './server'
import {IscsiThreads} from './threads'

export {IscsiTarget, IscsiConnection, QUEUE_DEPTH} from './server'
export {LogicalUnit, COMMANDS} from './scsi'

/** IANA "iscsi-target" (RFC 7143 §13.1? — §4.2 "well-known port 3260"). */
export const ISCSI_DEFAULT_PORT = 3260
/** The naming authority of vdev's IQNs: iqn.YYYY-MM.reversed-domain (RFC 3720 §3.2.6.3.1). */
export const IQN_PREFIX = 'iqn.2026-01.dev.vdev'
/** The one LUN of every target. */
export const LUN = 0
/** Decoded-chunk cache of each serving thread's instance of the source. */
export const THREAD_CACHE_BYTES = 8 << 20

export interface ImageIdentity {
  iqn: string
  /** 8 bytes: NAA 3h (locally assigned) designator for VPD 0x83. */
  naa: Buffer
  /** VPD 0x80 unit serial number. */
  serial: string
}

/**
 * The target name and SCSI identifiers of an image: a digest of its media hash (the SHA-256 of the whole
 * logical image, as `vdev info` shows it) when the source carries one, else of its path, size, mtime and
 * how it is read (mapfile, sector size).
 */
export function imageIdentity(server: BlockServer, imagePath: string): ImageIdentity {
  // An overlay (docs/OVERLAY.md) is another disk over the same image: its base names the image, its id the disk.
  const top = server.source as {base?: unknown; header?: {id?: unknown}}
  const overlayId = server.writable && Buffer.isBuffer(top.header?.id) ? top.header.id : undefined
  const src = (overlayId ? top.base : server.source) as {sha256?: unknown; descriptor?: {kind: string; path: string; options?: unknown}}
  const h = crypto.createHash('sha256')
  if (overlayId) h.update(`overlay:${overlayId.toString('hex')}\0`)
  if (typeof src.sha256 === 'string' && src.sha256) h.update(`media:${src.sha256}`)
  else {
    const abs = src.descriptor?.path ?? path.resolve(imagePath)
    let st: fs.Stats | undefined
    try {
      st = fs.statSync(abs)
    } catch {
      st = undefined
    }
    h.update(`file:${abs}\0${server.size}\0${st?.mtimeMs ?? 0}\0${JSON.stringify(src.descriptor?.options ?? {})}`)
  }
  h.update(`\0${server.sectorSize}`)
  const d = h.digest()
  const name = path
    .basename(imagePath)
    .toLowerCase()
    .replace(/\.(vdimg|img|raw)$/, '')
    .replace(/[^a-z0-9.-]+/g, '-')
    .replace(/^[-.]+|[-.]+$/g, '')
    .slice(0, 64)
  const id = d.subarray(0, 6).toString('hex')
  const naa = Buffer.from(d.subarray(8, 16))
  naa[0] = 0x30 | (naa[0] & 0x0f)
  return {iqn: `${IQN_PREFIX}:${name ? `${name}-` : ''}${id}`, naa, serial: d.subarray(0, 10).toString('hex')}
}

export interface RunningIscsiTarget {
  target: IscsiTarget
  /** Serving threads started (0: connections are served on the main thread). */
  threads: number
  address: {kind: 'tcp'; host: string; port: number}
  iqn: string
  lun: number
  uri: string
  close(): Promise<void>
}

/** libiscsi's URL form: iscsi://HOST:PORT/IQN/LUN. */
export function iscsiUri(host: string, port: number, iqn: string, lun = LUN): string {
  return `iscsi://${host.includes(':') ? `[${host}]` : host}:${port}/${iqn}/${lun}`
}

export async function startIscsiServer(
  server: BlockServer,
  opts: {
    listen: ListenAddress
    image: string
    chap?: ChapConfig
    log?: (line: string) => void
    identity?: ImageIdentity
    /** Serving threads, each serving one connection's full-feature phase (0 or absent: the main thread). */
    threads?: number
  },
): Promise<RunningIscsiTarget> {
  if (opts.listen.kind !== 'tcp') throw new Error('iSCSI listens on TCP only')
  const id = opts.identity ?? imageIdentity(server, opts.image)
  const identity = {naa: id.naa, serial: id.serial, iqn: id.iqn}
  const log = opts.log ?? (() => {})
  let threads: IscsiThreads | undefined
  // A writable source (an overlay) too: each thread's LU writes through a view of it, and the overlay's owner
  // orders the exclusive sections of every thread (docs/iscsi.md "Writable LUN").
  if (opts.threads && opts.threads > 0) {
    try {
      threads = await IscsiThreads.start(server, {count: opts.threads, cacheBytes: THREAD_CACHE_BYTES, config: {iqn: id.iqn, identity}, log})
    } catch (err) {
      log(`iscsi: serving threads unavailable, serving on the main thread: ${(err as Error).message.split('\n')[0]}`)
    }
  }
  const target = new IscsiTarget(server, {iqn: id.iqn, chap: opts.chap, identity, log: opts.log, threads})
  const listener = net.createServer({noDelay: true})
  target.attach(listener)
  let address: {kind: 'tcp'; host: string; port: number}
  try {
    address = (await listen(listener, opts.listen)) as {kind: 'tcp'; host: string; port: number}
  } catch (err) {
    await threads?.close()
    throw err
  }
  let closing: Promise<void> | undefined
  return {
    target,
    threads: threads?.threads ?? 0,
    address,
    iqn: id.iqn,
    lun: LUN,
    uri: iscsiUri(address.host, address.port, id.iqn),
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => listener.close(() => resolve()))
        await target.close()
        await stopped
      })()
      return closing
    },
  }
}

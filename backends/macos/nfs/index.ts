/**
 * macOS without a kext: serve the decoded image as one file from the loopback NFSv3 server, mount it
 * with mount_nfs into the device's private directory, and let DiskImages attach that file as a raw disk
 * (`diskutil image attach` on macOS 26+, `hdiutil attach` before), which gives /dev/diskN, /dev/rdiskN
 * and its partitions. Teardown runs the other way: detach the disk, unmount, stop the server.
 *
 * Every command is an argv array from ./commands (pure, tested byte for byte); every output is parsed by
 * ./parse (tested against recorded real outputs). The commands run through a Runner so that tests on
 * Linux can play the macOS tools' part with recorded outputs — this backend cannot run off macOS.
 */
import {execFile} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type {AttachContext, AttachedDevice, Backend, Probe} from '../../../src/core/backend'
import type {BlockServer} from '../../../src/core/blockserver'
import {VdevError} from '../../../src/core/errors'
import type {NfsServerHandle, NfsServerOptions} from '../../../src/serve/nfs'
import {
  HDIUTIL,
  MOUNT_NFS,
  attachToolFor,
  diskutilImageAttachArgv,
  hdiutilAttachArgv,
  hdiutilDetachArgv,
  hdiutilInfoArgv,
  mountNfsArgv,
  parseProductVersion,
  swVersArgv,
  umountArgv,
} from './commands'
import {findAttachedImage, parseAttachOutput, parseHdiutilInfo, type AttachedDisk, type InfoImage} from './parse'

export interface RunResult {
  /** Exit status; 127 when the program could not be started. */
  code: number
  stdout: string
  stderr: string
}
export type Runner = (argv: string[]) => Promise<RunResult>

/** Run argv[0] with the rest as arguments, no shell. */
export const execRunner: Runner = (argv) =>
  new Promise((resolve) => {
    execFile(argv[0], argv.slice(1), {encoding: 'utf8', timeout: 120000, maxBuffer: 16 << 20}, (err, stdout, stderr) => {
      if (!err) return resolve({code: 0, stdout, stderr})
      const e = err as NodeJS.ErrnoException & {code?: number | string}
      if (typeof e.code === 'number') return resolve({code: e.code, stdout, stderr})
      resolve({code: 127, stdout: stdout ?? '', stderr: `${argv[0]}: ${e.message}`})
    })
  })

/** What the registry keeps so that `detach`/`cleanup` can undo an attach even after the server died. */
export interface MacNfsState {
  nfsPort: number
  mountPoint: string
  /** The served file inside the mount (what DiskImages attached). */
  file: string
  device?: string
  attachTool?: 'diskutil' | 'hdiutil'
  [key: string]: unknown
}

export interface MacNfsDeps {
  run: Runner
  startNfs: (server: BlockServer, opts: NfsServerOptions) => Promise<NfsServerHandle>
}

function firstLine(s: string): string {
  return s.trim().split('\n').filter(Boolean).pop() ?? ''
}

async function mustRun(run: Runner, argv: string[], what: string): Promise<RunResult> {
  const r = await run(argv)
  if (r.code === 127) throw new VdevError('unavailable', `${what}: cannot run ${argv[0]} (${firstLine(r.stderr)})`)
  if (r.code !== 0) throw new VdevError('io', `${what} failed (exit ${r.code}): ${firstLine(r.stderr) || firstLine(r.stdout)}`)
  return r
}

/** The images DiskImages has attached (`hdiutil info -plist`), for `vdev list` to cross-check the registry. */
export async function listAttachedImages(run: Runner = execRunner): Promise<InfoImage[]> {
  return parseHdiutilInfo((await mustRun(run, hdiutilInfoArgv(), 'hdiutil info')).stdout)
}

/** Is the disk a registry entry recorded still attached from the file it served? */
export function isStillAttached(state: Record<string, unknown>, images: InfoImage[]): boolean {
  const file = typeof state.file === 'string' ? state.file : undefined
  const device = typeof state.device === 'string' ? state.device : undefined
  return file !== undefined && findAttachedImage(images, file, device) !== undefined
}

/** The name of the one file in the export: disk.vdimg → disk.img. */
export function servedFileName(image: string): string {
  return path.basename(image).replace(/\.vdimg$/i, '') + '.img'
}

export function createBackend(deps: Partial<MacNfsDeps> = {}): Backend {
  const run = deps.run ?? execRunner
  const startNfs =
    deps.startNfs ??
    ((server: BlockServer, opts: NfsServerOptions) =>
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      (require('../../../src/serve/nfs') as typeof import('../../../src/serve/nfs')).startNfsServer(server, opts))

  async function macosMajor(): Promise<number | undefined> {
    const r = await run(swVersArgv())
    return r.code === 0 ? parseProductVersion(r.stdout) : undefined
  }

  /** Attach the served file; on macOS 26+ with diskutil, falling back to hdiutil if diskutil fails. */
  async function attachFile(file: string, readWrite: boolean, log: (l: string) => void): Promise<{disk: AttachedDisk; tool: 'diskutil' | 'hdiutil'}> {
    if (attachToolFor(await macosMajor()) === 'diskutil') {
      const r = await run(diskutilImageAttachArgv(file, {readWrite}))
      if (r.code === 0) {
        try {
          return {disk: parseAttachOutput(r.stdout), tool: 'diskutil'}
        } catch (err) {
          // It attached but said something we cannot read: find the disk the way `vdev list` would.
          const found = findAttachedImage(await listAttachedImages(run), file)
          if (found?.device) return {disk: found as AttachedDisk, tool: 'diskutil'}
          throw new VdevError('io', `diskutil image attach: ${(err as Error).message}`)
        }
      }
      log(`diskutil image attach failed (exit ${r.code}: ${firstLine(r.stderr)}); trying hdiutil attach`)
    }
    const r = await mustRun(run, hdiutilAttachArgv(file, {readWrite}), 'hdiutil attach')
    return {disk: parseAttachOutput(r.stdout), tool: 'hdiutil'}
  }

  /** Undo what `state` records, in reverse order. Plain first; forced where `force` says so. */
  async function teardown(state: MacNfsState, force: boolean, log: (l: string) => void): Promise<void> {
    if (state.device) {
      const r = await run(hdiutilDetachArgv(state.device, force))
      if (r.code !== 0 && !force) {
        throw new VdevError('busy', `hdiutil detach ${state.device} failed: ${firstLine(r.stderr) || `exit ${r.code}`} (use --force)`)
      }
      if (r.code !== 0) {
        // Forced and still failing: it may be gone already (a second cleanup, a reboot). Check.
        const images = await listAttachedImages(run).catch(() => undefined)
        if (!images || isStillAttached(state, images))
          throw new VdevError('busy', `hdiutil detach -force ${state.device} failed: ${firstLine(r.stderr) || `exit ${r.code}`}`)
        log(`${state.device} was already detached`)
      }
      state.device = undefined
    }
    // With the disk gone nothing of ours holds the mount, so a plain unmount that fails is retried forced.
    const u = await run(umountArgv(state.mountPoint, force))
    if (u.code !== 0) {
      const again = force ? u : await run(umountArgv(state.mountPoint, true))
      if (again.code !== 0 && isMounted(state.mountPoint))
        throw new VdevError('busy', `umount ${state.mountPoint} failed: ${firstLine(again.stderr) || `exit ${again.code}`}`)
    }
  }

  return {
    name: 'macos-nfs',
    platform: 'darwin',
    description: 'loopback NFSv3 server + mount_nfs + DiskImages (hdiutil/diskutil): /dev/diskN without a kext',
    preference: 0,
    // The NFS server hands each connection to a serving thread: the mount's NFS connection gets one, its
    // short MOUNT connection the other (a connection that finds none free is served on the main thread).
    threadModel: {kind: 'serving-threads', defaultThreads: 2, maxThreads: 8, pollMicroseconds: 0},
    // Over an overlay the NFS server serves the file read-write (WRITE/COMMIT through each thread's view of
    // the overlay), the mount is read-write and DiskImages attaches the disk read-write.
    writable: true,
    writableThreads: true,

    /** For `vdev list`: the disk is gone when `hdiutil info -plist` no longer shows our file attached. */
    async deviceGone(state: Record<string, unknown>): Promise<boolean> {
      return !isStillAttached(state, await listAttachedImages(run))
    },

    async probe(): Promise<Probe> {
      if (process.platform !== 'darwin') return {available: false, reason: `needs macOS (this is ${process.platform})`}
      for (const tool of [MOUNT_NFS, HDIUTIL])
        if (!fs.existsSync(tool)) return {available: false, reason: `${tool} is missing`}
      const major = await macosMajor()
      return {available: true, detail: `macOS ${major ?? '?'}, attach with ${attachToolFor(major)}`}
    },

    async attach(server: BlockServer, ctx: AttachContext): Promise<AttachedDevice> {
      const fileName = servedFileName(ctx.image)
      const nfs = await startNfs(server, {
        host: '127.0.0.1',
        port: 0,
        exportName: '/',
        fileName,
        log: ctx.log,
        identity: path.resolve(ctx.image),
        threads: ctx.threads,
      })
      const mountPoint = path.join(ctx.runDir, 'nfs')
      const state: MacNfsState = {nfsPort: nfs.port, mountPoint, file: path.join(mountPoint, fileName)}
      let mounted = false
      try {
        fs.mkdirSync(mountPoint, {recursive: true, mode: 0o700})
        const readWrite = server.writable
        await mustRun(run, mountNfsArgv(nfs.port, mountPoint, '/', {readWrite}), `mount_nfs 127.0.0.1:/ on ${mountPoint}`)
        mounted = true
        ctx.log(`NFS export mounted ${readWrite ? 'read-write' : 'read-only'} on ${mountPoint} (server on 127.0.0.1:${nfs.port})`)
        const {disk, tool} = await attachFile(state.file, readWrite, ctx.log)
        state.device = disk.device
        state.attachTool = tool
        ctx.log(`${tool} attached ${state.file} as ${disk.device}`)
        let detached: Promise<void> | undefined
        return {
          device: disk.device,
          aliases: [disk.rawDevice],
          partitions: disk.partitions,
          state,
          detach(opts?: {force?: boolean}): Promise<void> {
            detached ??= (async () => {
              await teardown(state, opts?.force === true, ctx.log)
              await nfs.close()
            })().catch((err) => {
              detached = undefined // let a later (forced) detach try again
              throw err
            })
            return detached
          },
        }
      } catch (err) {
        if (state.device || mounted) await teardown(state, true, ctx.log).catch((e) => ctx.log(`cleanup after failed attach: ${(e as Error).message}`))
        await nfs.close()
        throw err
      }
    },

    async cleanup(raw: Record<string, unknown>, log: (line: string) => void): Promise<void> {
      if (typeof raw.mountPoint !== 'string') return // nothing was mounted yet
      const state = raw as MacNfsState
      await teardown(state, true, log)
    },
  }
}

function isMounted(dir: string): boolean {
  // A mount point's device differs from its parent's.
  try {
    return fs.statSync(dir).dev !== fs.statSync(path.dirname(dir)).dev
  } catch {
    return false
  }
}

export const backend: Backend = createBackend()

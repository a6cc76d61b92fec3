/**
 * The served file as a benchmark target, inside the test VM: the loopback NFS server (in this process),
 * the kernel's NFS v3 client mounted on it, and optionally a read-only loop device over the file (the
 * Linux analogue of what DiskImages does on macOS). Other benchmark scripts call attachNfsForBench and
 * point fio at `target`. mount(8) and losetup(8) are spawned, never called synchronously: the kernel's
 * MOUNT and READ calls are answered by this process's event loop.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import type {BlockSource} from '../../src/core/source'
import {startNfsServer} from '../../src/serve/nfs'
import {run} from './proc'

export interface NfsBenchTarget {
  /** What to read: the file on the NFS mount, or the loop device over it. */
  target: string
  port: number
  close(): Promise<void>
}

/**
 * Serve `source` over NFS on 127.0.0.1 (on `threads` serving threads; 0 or absent: the main thread), mount
 * it in `workDir` with the kernel client (rsize 1 MiB), and return the file — or, with `loop`, a read-only
 * direct-I/O loop device over it.
 */
export async function attachNfsForBench(source: BlockSource, workDir: string, opts: {loop?: boolean; threads?: number} = {}): Promise<NfsBenchTarget> {
  const block = new BlockServer(source)
  const nfs = await startNfsServer(block, {
    host: '127.0.0.1',
    port: 0,
    exportName: '/',
    fileName: 'bench.img',
    log: (l) => process.stderr.write(`${l}\n`),
    threads: opts.threads,
  })
  const mnt = path.join(workDir, 'nfs-mnt')
  fs.mkdirSync(mnt, {recursive: true})
  let mounted = false
  let loop = ''
  const close = async (): Promise<void> => {
    if (loop) await run('losetup', ['-d', loop])
    loop = ''
    if (mounted) {
      const u = await run('umount', [mnt])
      if (u.code !== 0) await run('umount', ['-f', '-l', mnt])
    }
    mounted = false
    await nfs.close()
    await block.drain()
  }
  try {
    // No mount.nfs helper: util-linux hands the options to the kernel's text parser, which needs addr=.
    const o = `vers=3,proto=tcp,port=${nfs.port},mountport=${nfs.port},mountproto=tcp,nolock,ro,addr=127.0.0.1,rsize=1048576`
    const m = await run('mount', ['-t', 'nfs', '-o', o, '127.0.0.1:/', mnt])
    if (m.code !== 0) throw new Error(`mount -t nfs: ${m.stderr.trim()}`)
    mounted = true
    const file = path.join(mnt, 'bench.img')
    if (!opts.loop) return {target: file, port: nfs.port, close}
    const l = await run('losetup', ['-r', '--direct-io=on', '-f', '--show', file])
    if (l.code !== 0) throw new Error(`losetup: ${l.stderr.trim()}`)
    loop = l.stdout.trim()
    return {target: loop, port: nfs.port, close}
  } catch (err) {
    await close()
    throw err
  }
}

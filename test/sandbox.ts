/**
 * A sandbox for tests that attach devices through the real CLI: its own temp directory and vdev state
 * directory, a record of every mount and process a test makes, and a teardown that removes them all — and
 * any loop device over its files — also when the test failed. Plus the small runners such tests share.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn, spawnSync} from 'node:child_process'
import {runCli, tmpDir, type CliResult} from './helpers'

export const IS_ROOT = process.getuid?.() === 0

/** Run a command without a shell, asynchronously (the main thread may be serving FUSE). */
export function run(cmd: string, args: string[], opts: {timeoutMs?: number; input?: Buffer} = {}): Promise<{code: number | null; signal: string | null; stdout: Buffer; stderr: string; ms: number}> {
  const t0 = Date.now()
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {stdio: ['pipe', 'pipe', 'pipe']})
    const out: Buffer[] = []
    let err = ''
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => (err += b))
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({code, signal, stdout: Buffer.concat(out), stderr: err, ms: Date.now() - t0})
    })
    child.stdin.on('error', () => undefined)
    child.stdin.end(opts.input ?? Buffer.alloc(0))
  })
}

export function runSync(cmd: string, args: string[]): {code: number | null; stdout: string; stderr: string} {
  const r = spawnSync(cmd, args, {encoding: 'utf8'})
  return {code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? ''}
}

/** One O_DIRECT read of a device: `length` bytes at `offset` in one request (dd bs=length count=1). */
export function readDirect(device: string, offset: number, length: number): ReturnType<typeof run> {
  return run('dd', [`if=${device}`, `bs=${length}`, `skip=${offset}`, 'count=1', 'iflag=direct,skip_bytes', 'status=none'])
}

/** Wait until udev (where it runs) has processed the events of a new device: its probes read the device too. */
export async function udevSettle(): Promise<void> {
  if (spawnSync('sh', ['-c', 'command -v udevadm']).status === 0) await run('udevadm', ['settle', '--timeout=10'])
}

export async function readSectors(device: string, sector: number, count: number, bs = 512): Promise<{code: number | null; data: Buffer; stderr: string}> {
  const r = await run('dd', [`if=${device}`, `bs=${bs}`, `skip=${sector}`, `count=${count}`, 'iflag=direct', 'status=none'])
  return {code: r.code, data: r.stdout, stderr: r.stderr}
}

/** Names (loopN) of loop devices whose backing file matches. */
function loopsOver(match: (backingFile: string) => boolean): string[] {
  return fs.readdirSync('/sys/block').filter((n) => {
    if (!n.startsWith('loop')) return false
    try {
      return match(fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim())
    } catch {
      return false
    }
  })
}

/** A sandbox: its own state directory for vdev, and a record of what to tear down. */
export class Sandbox {
  readonly dir: string
  readonly stateDir: string
  private readonly mounts: string[] = []
  private readonly pids: number[] = []
  private readonly rm: () => void

  /** Loop devices over a lazily unmounted FUSE file ("/disk") that existed before this sandbox: not ours. */
  private readonly foreignDetached: Set<string>

  constructor(prefix = 'vdev-attach-') {
    const t = tmpDir(prefix)
    this.dir = t.dir
    this.rm = t.cleanup
    this.stateDir = path.join(this.dir, 'state')
    this.foreignDetached = new Set(loopsOver((back) => back === '/disk'))
  }

  p(name: string): string {
    return path.join(this.dir, name)
  }

  env(): NodeJS.ProcessEnv {
    return {VDEV_STATE_DIR: this.stateDir}
  }

  /** Run the vdev CLI against this sandbox's registry. */
  vdev(args: string[], timeout = 120_000): Promise<CliResult> {
    return runCli(args, {env: this.env(), timeout})
  }

  /** mount -o ro DEVICE at a new directory; recorded for teardown. */
  mountRo(device: string, name = 'mnt'): Promise<string> {
    return this.mount(device, name, ['-o', 'ro'])
  }

  /** mount [options] SOURCE at a new directory `name` in the sandbox; recorded for teardown. */
  async mount(source: string, name: string, options: string[] = []): Promise<string> {
    const dir = this.p(name)
    fs.mkdirSync(dir, {recursive: true})
    const r = await run('mount', [...options, source, dir])
    assert.equal(r.code, 0, `mount ${source}: ${r.stderr}`)
    this.mounts.push(dir)
    return dir
  }

  async umount(dir: string): Promise<void> {
    const r = await run('umount', [dir])
    assert.equal(r.code, 0, `umount ${dir}: ${r.stderr}`)
    this.mounts.splice(this.mounts.indexOf(dir), 1)
  }

  trackPid(pid: number | undefined): void {
    if (pid) this.pids.push(pid)
  }

  /** Registry entries as files (independent of the code under test). */
  entries(): Array<{id: string; pid: number; device?: string; runDir: string}> {
    const d = path.join(this.stateDir, 'devices')
    if (!fs.existsSync(d)) return []
    return fs
      .readdirSync(d)
      .filter((f) => f.endsWith('.json'))
      .map((f) => JSON.parse(fs.readFileSync(path.join(d, f), 'utf8')))
  }

  /** What this sandbox still has in the kernel: loop devices over files in it, mounts in it, processes. */
  leftovers(): string[] {
    const out: string[] = []
    for (const n of fs.readdirSync('/sys/block').filter((x) => x.startsWith('loop'))) {
      let back = ''
      try {
        back = fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim()
      } catch {
        continue
      }
      if (back.startsWith(this.dir) || (back === '/disk' && !this.foreignDetached.has(n))) out.push(`loop device /dev/${n} over ${back}`)
    }
    for (const l of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const f = l.split(' ')
      if (f[4]?.startsWith(this.dir)) out.push(`mount at ${f[4]}`)
    }
    for (const pid of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x) && Number(x) !== process.pid)) {
      let cmd = ''
      try {
        cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      } catch {
        continue
      }
      if (cmd.includes(this.dir) && !cmd.startsWith('fusermount')) out.push(`process ${pid}: ${cmd.replace(/\0/g, ' ').trim()}`)
    }
    return out
  }

  /**
   * Tear down everything, by what was recorded, without trusting the code under test: unmount, kill
   * servers, detach loop devices over our files, unmount FUSE, remove the directory. Returns what had
   * to be removed by force (a test that cleans up after itself leaves nothing).
   */
  async teardown(): Promise<string[]> {
    const found = this.leftovers()
    for (const m of this.mounts.reverse()) await run('umount', ['-l', m])
    for (const e of this.entries()) this.pids.push(e.pid)
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    await new Promise((r) => setTimeout(r, 200))
    for (const n of fs.readdirSync('/sys/block').filter((x) => x.startsWith('loop'))) {
      let back = ''
      try {
        back = fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim()
      } catch {
        continue
      }
      if (back.startsWith(this.dir)) await run('losetup', ['-d', `/dev/${n}`])
    }
    const mounts = fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4])
      .filter((m) => m?.startsWith(this.dir))
      .sort((a, b) => b.length - a.length)
    for (const m of mounts) await run('umount', ['-l', m])
    try {
      this.rm()
    } catch {
      // a lazily unmounted FUSE mount may linger a moment
    }
    return found
  }
}

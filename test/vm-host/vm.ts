/**
 * Boots the test VM and runs the in-VM mocha suite (dist/test/vm/**\/*.test.js, or the files asked for) in it.
 * qemu runs TCG (`-accel tcg -cpu max`: KVM crashes guests on our machines), shares the host root read-only and
 * a fresh writable folder over virtio-9p, and streams the guest console to a log file. The guest writes its
 * exit status and a JSON summary into the shared folder. qemu is killed on every path (timeout, error, exit of
 * this process).
 */
import {spawn, type ChildProcess} from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {buildAssets, CACHE_DIR, PROJECT_ROOT, type VmAssets} from './assets'
import type {GuestResults} from './guest-reporter'

/** Always the latest run's console (a symlink into .cache/vm/logs/, where each run has its own file). */
export const CONSOLE_LOG = path.join(CACHE_DIR, 'console.log')
const LOG_DIR = path.join(CACHE_DIR, 'logs')
const KEEP_LOGS = 20

/** A console log file of its own for this run (several runs may share the cache), linked as console.log. */
function newConsoleLog(): string {
  fs.mkdirSync(LOG_DIR, {recursive: true})
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const file = path.join(LOG_DIR, `console-${stamp}-${process.pid}.log`)
  fs.writeFileSync(file, '')
  const link = `${CONSOLE_LOG}.${process.pid}`
  fs.rmSync(link, {force: true})
  fs.symlinkSync(path.relative(CACHE_DIR, file), link)
  fs.renameSync(link, CONSOLE_LOG)
  const old = fs.readdirSync(LOG_DIR).sort()
  for (const f of old.slice(0, Math.max(0, old.length - KEEP_LOGS))) fs.rmSync(path.join(LOG_DIR, f), {force: true})
  return file
}
const DIST = path.join(PROJECT_ROOT, 'dist')

export interface VmRunOptions {
  /** In-VM test files (.ts under test/vm or .js under dist/test/vm); default: all of dist/test/vm. */
  files?: string[]
  grep?: string
  /**
   * Instead of the mocha suite, run this node script (absolute path + arguments) in the guest. It may write
   * a result to $VDEV_VM_OUT, which comes back as VmRun.out.
   */
  script?: string[]
  /** Whole-run limit (boot + suite); qemu is killed when it passes. */
  timeoutMs?: number
  memoryMiB?: number
  /** Where the guest console goes; default a new file in .cache/vm/logs/ (.cache/vm/console.log links to it). */
  consoleLog?: string
  /** Also copy the console to this stream (e.g. process.stderr) as it arrives. */
  echo?: NodeJS.WritableStream
  log?: (line: string) => void
}

export interface VmRun {
  assets: VmAssets
  /** mocha's exit status in the guest; null if the guest never reported one (crash, panic, timeout). */
  status: number | null
  results: GuestResults | null
  /** What a script (VmRunOptions.script) wrote to $VDEV_VM_OUT. */
  out: string | null
  timedOut: boolean
  /** Seconds from qemu start to the guest's /init, to the start of run.sh, and to qemu's exit. */
  initSeconds?: number
  suiteStartSeconds?: number
  totalSeconds: number
  consoleLog: string
  /** The last part of the console, for error messages. */
  consoleTail: string
}

/** All compiled in-VM test files. */
export function defaultVmFiles(): string[] {
  const dir = path.join(DIST, 'test', 'vm')
  const out: string[] = []
  const walk = (d: string): void => {
    if (!fs.existsSync(d)) return
    for (const e of fs.readdirSync(d, {withFileTypes: true})) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.test.js')) out.push(p)
    }
  }
  walk(dir)
  return out.sort()
}

/** test/vm/x.test.ts, dist/test/vm/x.test.js or plain x -> the compiled file. */
export function resolveVmFile(f: string): string {
  const abs = path.resolve(f)
  const rel = path.relative(PROJECT_ROOT, abs)
  let js = rel.startsWith('dist' + path.sep) ? abs : path.join(DIST, rel.replace(/\.ts$/, '.js'))
  if (!fs.existsSync(js) && !f.includes('/')) js = path.join(DIST, 'test', 'vm', f.replace(/(\.test)?(\.ts|\.js)?$/, '.test.js'))
  if (!fs.existsSync(js)) throw new Error(`VM harness: no compiled in-VM test file for ${f} (looked for ${js}; run npx tsc -p .)`)
  return js
}

const live = new Set<ChildProcess>()
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL')
})

const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`

export async function runInVm(opts: VmRunOptions = {}): Promise<VmRun> {
  const log = opts.log ?? (() => {})
  const assets = await buildAssets(log)
  const files = opts.script ? [] : opts.files?.length ? opts.files.map(resolveVmFile) : defaultVmFiles()
  if (!opts.script && files.length === 0) throw new Error('VM harness: no in-VM test files under dist/test/vm (run npx tsc -p .)')

  const share = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-vm-'))
  const guestShare = '/run/vdev-vm'
  const mocha = path.join(PROJECT_ROOT, 'node_modules', 'mocha', 'bin', 'mocha.js')
  const reporter = path.join(DIST, 'test', 'vm-host', 'guest-reporter.js')
  const argv = [process.execPath, mocha, '--reporter', reporter, '--timeout', '900000', '--no-color']
  if (opts.grep) argv.push('--grep', opts.grep)
  argv.push(...files)
  if (opts.script) argv.splice(0, argv.length, process.execPath, ...opts.script)
  // Paths the guest must see although its /tmp and /run are fresh tmpfs (init.sh binds them back).
  fs.writeFileSync(path.join(share, 'keep'), `${PROJECT_ROOT}\n`)
  fs.writeFileSync(
    path.join(share, 'run.sh'),
    [
      `cd ${shq(PROJECT_ROOT)}`,
      `export VDEV_VM_RESULTS=${guestShare}/results.json`,
      `export VDEV_VM_OUT=${guestShare}/out.json`,
      `${argv.map(shq).join(' ')} 2>&1`,
      `echo $? > ${guestShare}/status`,
      '',
    ].join('\n'),
  )

  const consoleLog = opts.consoleLog ?? newConsoleLog()
  fs.mkdirSync(path.dirname(consoleLog), {recursive: true})
  const out = fs.createWriteStream(consoleLog)
  const qemuArgs = [
    '-accel', 'tcg,thread=multi',
    '-cpu', 'max',
    '-smp', '2',
    '-m', String(opts.memoryMiB ?? 3072),
    '-nographic',
    '-no-reboot',
    '-nic', 'none',
    '-device', 'virtio-rng-pci',
    '-kernel', assets.kernel,
    '-initrd', assets.initrd,
    '-append', 'console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init',
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${share},mount_tag=vmshare,security_model=none`,
  ]
  log(`qemu-system-x86_64 ${qemuArgs.join(' ')}`)
  const started = Date.now()
  let initSeconds: number | undefined
  let suiteStartSeconds: number | undefined
  let tail = ''
  let timedOut = false
  const child = spawn('qemu-system-x86_64', qemuArgs, {stdio: ['pipe', 'pipe', 'pipe']})
  live.add(child)
  const onData = (chunk: Buffer): void => {
    out.write(chunk)
    opts.echo?.write(chunk)
    tail = (tail + chunk.toString('utf8')).slice(-16000)
    const t = (Date.now() - started) / 1000
    if (initSeconds === undefined && tail.includes('vdev-vm: init at')) initSeconds = t
    if (suiteStartSeconds === undefined && tail.includes('vdev-vm: running run.sh')) suiteStartSeconds = t
  }
  child.stdout!.on('data', onData)
  child.stderr!.on('data', onData)
  const timer = setTimeout(() => {
    timedOut = true
    out.write(`\n[host] VM run exceeded ${opts.timeoutMs} ms: killing qemu\n`)
    child.kill('SIGKILL')
  }, opts.timeoutMs ?? 30 * 60_000)
  try {
    await new Promise<void>((resolve, reject) => {
      child.once('error', (err) =>
        reject((err as NodeJS.ErrnoException).code === 'ENOENT' ? new Error('VM harness: qemu-system-x86_64 is not installed') : err),
      )
      child.once('exit', () => resolve())
    })
  } finally {
    clearTimeout(timer)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    live.delete(child)
    await new Promise<void>((r) => out.end(r))
  }
  const read = (f: string): string | null => {
    try {
      return fs.readFileSync(path.join(share, f), 'utf8')
    } catch {
      return null
    }
  }
  const statusText = read('status')
  const resultsText = read('results.json')
  const scriptOut = read('out.json')
  fs.rmSync(share, {recursive: true, force: true})
  return {
    assets,
    status: statusText === null ? null : Number(statusText.trim()),
    results: resultsText ? (JSON.parse(resultsText) as GuestResults) : null,
    out: scriptOut,
    timedOut,
    initSeconds,
    suiteStartSeconds,
    totalSeconds: (Date.now() - started) / 1000,
    consoleLog,
    consoleTail: tail.slice(-4000),
  }
}

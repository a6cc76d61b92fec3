/**
 * Builds what the real-kernel VM boots: the Debian bookworm 6.12 kernel package (resolved through apt at run
 * time, fetched with `apt-get download`, unpacked with `dpkg -x` into .cache/vm/) and a busybox initramfs that
 * carries the kernel modules the in-VM tests need (with their dependencies, from each module's .modinfo) and
 * our /init script. Everything is rebuilt from nothing on a clean clone; a missing tool or an unreachable
 * archive is an error, never a skip.
 */
import {execFile} from 'node:child_process'
import {createHash} from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import * as zlib from 'node:zlib'
import {cpioNewc, type CpioEntry} from './cpio'

const run = promisify(execFile)

export const PROJECT_ROOT = path.resolve(__dirname, '..', '..', '..')
export const CACHE_DIR = path.join(PROJECT_ROOT, '.cache', 'vm')

/** Modules the in-VM suites need, in load order (dependencies are added before each from its modinfo). */
export const WANTED_MODULES = [
  'virtio_rng', // entropy for node's getrandom() early after boot
  'loop',
  'fuse', // the FUSE + loop backend's partition test (this host's kernel has no partition parsers)
  'nbd',
  'ublk_drv',
  'netfs',
  '9pnet',
  '9pnet_virtio',
  '9p',
  'sunrpc',
  'grace',
  'lockd',
  'nfs_acl',
  'nfs',
  'nfsv3',
  'crc32c_generic', // the iSCSI initiator's digests: without it the login fails with ENOMEM
  'sd_mod',
  'iscsi_tcp', // the kernel iSCSI initiator (test/vm/iscsi.test.ts)
  'ext4', // file systems written through an overlay (test/vm/overlay.test.ts, test/vm/iscsi-overlay.test.ts)
]

/** Kernel package name pattern: the bookworm backport of 6.12, generic amd64 flavour, unsigned image. */
const KERNEL_PACKAGE = /^linux-image-(6\.12\.(\d+)\+deb12-amd64)-unsigned$/

export interface VmAssets {
  kernelRelease: string
  kernel: string
  initrd: string
  modules: string[]
}

type Log = (line: string) => void

async function tool(cmd: string, args: string[], opts: {cwd?: string} = {}): Promise<string> {
  try {
    const r = await run(cmd, args, {cwd: opts.cwd, maxBuffer: 64 << 20, encoding: 'utf8'})
    return r.stdout
  } catch (err) {
    const e = err as NodeJS.ErrnoException & {stderr?: string}
    if (e.code === 'ENOENT') throw new Error(`VM harness: ${cmd} is not installed (needed to build the VM)`)
    throw new Error(`VM harness: ${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim()}`)
  }
}

/** The newest linux-image-6.12.N+deb12-amd64-unsigned apt knows of. */
export async function resolveKernelPackage(): Promise<{pkg: string; release: string} | null> {
  const out = await tool('apt-cache', ['search', '--names-only', '^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64-unsigned$'])
  let best: {pkg: string; release: string; abi: number} | null = null
  for (const line of out.split('\n')) {
    const name = line.split(' ')[0]
    const m = KERNEL_PACKAGE.exec(name)
    if (m && (!best || Number(m[2]) > best.abi)) best = {pkg: name, release: m[1], abi: Number(m[2])}
  }
  return best && {pkg: best.pkg, release: best.release}
}

/** Download and unpack the kernel package unless this exact build is already unpacked in the cache. */
async function kernelTree(log: Log): Promise<{release: string; tree: string}> {
  fs.mkdirSync(CACHE_DIR, {recursive: true})
  const resolved = await resolveKernelPackage()
  if (!resolved) {
    const cached = fs.readdirSync(CACHE_DIR).filter((d) => fs.existsSync(path.join(CACHE_DIR, d, '.unpacked')))
    if (cached.length === 0)
      throw new Error('VM harness: apt knows no linux-image-6.12.*+deb12-amd64-unsigned package (run apt-get update)')
    log(`apt resolves no kernel package; using the cached ${cached[0]}`)
    return {release: cached[0], tree: path.join(CACHE_DIR, cached[0])}
  }
  const tree = path.join(CACHE_DIR, resolved.release)
  if (fs.existsSync(path.join(tree, '.unpacked'))) return {release: resolved.release, tree}
  log(`fetching ${resolved.pkg} with apt-get download`)
  const dl = fs.mkdtempSync(path.join(CACHE_DIR, 'download-'))
  try {
    await tool('apt-get', ['download', resolved.pkg], {cwd: dl})
    const deb = fs.readdirSync(dl).find((f) => f.endsWith('.deb'))
    if (!deb) throw new Error(`VM harness: apt-get download ${resolved.pkg} produced no .deb`)
    // Unpack beside, then rename: a concurrent run sees either nothing or the whole tree.
    const staging = path.join(dl, 'tree')
    await tool('dpkg', ['-x', path.join(dl, deb), staging])
    fs.writeFileSync(path.join(staging, '.unpacked'), `${deb}\n`)
    fs.rmSync(tree, {recursive: true, force: true})
    fs.renameSync(staging, tree)
  } finally {
    fs.rmSync(dl, {recursive: true, force: true})
  }
  // Older unpacked builds only take space.
  for (const d of fs.readdirSync(CACHE_DIR))
    if (d !== resolved.release && d !== `${resolved.release}-modules` && /^6\.12\./.test(d)) fs.rmSync(path.join(CACHE_DIR, d), {recursive: true, force: true})
  return {release: resolved.release, tree}
}

/** name -> path of every module file the package ships (names normalised: '-' -> '_'). */
function moduleIndex(modDir: string): Map<string, string> {
  const index = new Map<string, string>()
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else {
        const m = /^(.*)\.ko(\.xz|\.zst|\.gz)?$/.exec(e.name)
        if (m) index.set(m[1].replace(/-/g, '_'), p)
      }
    }
  }
  walk(path.join(modDir, 'kernel'))
  return index
}

/** The package ships .ko.xz (CONFIG_MODULE_COMPRESS_XZ); busybox insmod wants plain ELF, so decompress here. */
async function moduleBytes(file: string): Promise<Buffer> {
  if (file.endsWith('.ko')) return fs.readFileSync(file)
  if (file.endsWith('.xz')) {
    const r = await promisify(execFile)('busybox', ['xzcat', file], {encoding: 'buffer', maxBuffer: 256 << 20})
    return r.stdout
  }
  if (file.endsWith('.gz')) return zlib.gunzipSync(fs.readFileSync(file))
  throw new Error(`VM harness: cannot decompress ${file}`)
}

/** `depends=` from the module's .modinfo strings (what depmod reads into modules.dep). */
export function modinfoDepends(ko: Buffer): string[] {
  const key = Buffer.from('\0depends=')
  const at = ko.indexOf(key)
  if (at < 0) return []
  const start = at + key.length
  const end = ko.indexOf(0, start)
  const value = ko.subarray(start, end).toString('latin1')
  return value ? value.split(',').map((d) => d.replace(/-/g, '_')) : []
}

/** Decompressed modules in dependency order, cached per kernel build. */
async function modulesInOrder(tree: string, release: string, log: Log): Promise<Array<{name: string; file: string}>> {
  const modDir = path.join(tree, 'lib', 'modules', release)
  const builtin = new Set(
    fs
      .readFileSync(path.join(modDir, 'modules.builtin'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => path.basename(l).replace(/\.ko$/, '').replace(/-/g, '_')),
  )
  const index = moduleIndex(modDir)
  const outDir = path.join(CACHE_DIR, `${release}-modules`)
  fs.mkdirSync(outDir, {recursive: true})
  const order: Array<{name: string; file: string}> = []
  const seen = new Set<string>()
  const visit = async (name: string, chain: string[]): Promise<void> => {
    if (seen.has(name)) return
    if (builtin.has(name)) return
    const src = index.get(name)
    if (!src) throw new Error(`VM harness: module ${name} (${chain.join(' <- ')}) is not in ${release}`)
    seen.add(name)
    const out = path.join(outDir, `${name}.ko`)
    if (!fs.existsSync(out)) {
      const tmp = `${out}.${process.pid}.tmp`
      fs.writeFileSync(tmp, await moduleBytes(src))
      fs.renameSync(tmp, out)
    }
    for (const dep of modinfoDepends(fs.readFileSync(out))) await visit(dep, [name, ...chain])
    order.push({name, file: out})
  }
  for (const m of WANTED_MODULES) await visit(m, [])
  log(`modules: ${order.map((m) => m.name).join(' ')}`)
  return order
}

/** Build (or reuse) the kernel and the initramfs. */
export async function buildAssets(log: Log = () => {}): Promise<VmAssets> {
  const {release, tree} = await kernelTree(log)
  const kernel = path.join(tree, 'boot', `vmlinuz-${release}`)
  if (!fs.existsSync(kernel)) throw new Error(`VM harness: ${kernel} missing from the unpacked package`)
  const modules = await modulesInOrder(tree, release, log)

  const busybox = '/bin/busybox'
  if (!fs.existsSync(busybox)) throw new Error('VM harness: /bin/busybox missing (install busybox-static)')
  const init = fs.readFileSync(path.join(PROJECT_ROOT, 'test', 'vm-host', 'init.sh'))
  const entries: CpioEntry[] = [
    {name: 'bin', mode: 0o40755},
    {name: 'dev', mode: 0o40755},
    {name: 'proc', mode: 0o40755},
    {name: 'sys', mode: 0o40755},
    {name: 'host', mode: 0o40755},
    {name: 'modules', mode: 0o40755},
    {name: 'bin/busybox', mode: 0o100755, data: fs.readFileSync(busybox)},
    {name: 'init', mode: 0o100755, data: init},
    {name: 'modules/order', mode: 0o100644, data: Buffer.from(modules.map((m) => m.name).join('\n') + '\n')},
    ...modules.map((m) => ({name: `modules/${m.name}.ko`, mode: 0o100644, data: fs.readFileSync(m.file)})),
  ]
  const image = zlib.gzipSync(cpioNewc(entries), {level: 1})
  const hash = createHash('sha256').update(image).digest('hex').slice(0, 12)
  const initrd = path.join(CACHE_DIR, `initrd-${release}-${hash}.cpio.gz`)
  if (!fs.existsSync(initrd)) {
    // Older initramfs files are left for runs that may be booting them; a handful of MiB each, pruned by age.
    const dayAgo = Date.now() - 24 * 3600_000
    for (const f of fs.readdirSync(CACHE_DIR))
      if (/^initrd-.*\.cpio\.gz$/.test(f) && fs.statSync(path.join(CACHE_DIR, f)).mtimeMs < dayAgo) fs.rmSync(path.join(CACHE_DIR, f), {force: true})
    fs.writeFileSync(`${initrd}.${process.pid}`, image)
    fs.renameSync(`${initrd}.${process.pid}`, initrd)
  }
  return {kernelRelease: release, kernel, initrd, modules: modules.map((m) => m.name)}
}

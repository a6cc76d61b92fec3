#!/usr/bin/env node
// `npm run lint:deps`: checks the import rules in .dependency-cruiser.cjs on the compiled JavaScript
// (run `npm run build` first). Only the output of sources that exist is cruised: dist/ keeps the output
// of a deleted or renamed source until a clean build, and that must not fail the lint.
'use strict'
const {spawnSync} = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const root = path.resolve(__dirname, '..')

function compiled(dir) {
  const out = []
  for (const e of fs.readdirSync(path.join(root, dir), {withFileTypes: true})) {
    const rel = `${dir}/${e.name}`
    if (e.isDirectory()) out.push(...compiled(rel))
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(`dist/${rel.slice(0, -3)}.js`)
  }
  return out
}

const files = [...compiled('src'), ...compiled('backends')].filter((f) => fs.existsSync(path.join(root, f)))
const depcruise = path.join(root, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs')
const r = spawnSync(process.execPath, [depcruise, '--config', '.dependency-cruiser.cjs', ...process.argv.slice(2), ...files], {
  cwd: root,
  stdio: 'inherit',
})
process.exit(r.status ?? 1)

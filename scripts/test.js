#!/usr/bin/env node
// The test command the README names (`npm test` runs `npm run build` first, then this).
// First the import rules (scripts/lint-deps.js: a violation fails the run, listed), then the host
// suite: mocha over dist/test/**/*.test.js (excluding the in-VM suite).
'use strict'
const {spawnSync} = require('node:child_process')
const path = require('node:path')

const root = path.resolve(__dirname, '..')
const lint = spawnSync(process.execPath, [path.join(__dirname, 'lint-deps.js')], {cwd: root, stdio: 'inherit'})
if (lint.status !== 0) {
  console.error('npm test: the import rules failed (npm run lint:deps); see above')
  process.exit(lint.status ?? 1)
}
const mocha = path.join(root, 'node_modules', 'mocha', 'bin', 'mocha.js')
// Only *.test.js files are specs: helpers beside them (servers, drivers run as child processes) are not.
const r = spawnSync(process.execPath, [mocha, 'dist/test/**/*.test.js', '--ignore', 'dist/test/vm/**', ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
})
process.exit(r.status ?? 1)

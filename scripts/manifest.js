#!/usr/bin/env node
// Generates oclif.manifest.json from the compiled commands (what `oclif manifest` does, without the
// oclif dev CLI and its dependency tree). Run by `npm run build`.
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const {Config} = require('@oclif/core')

async function main() {
  const root = path.resolve(__dirname, '..')
  const target = path.join(root, 'oclif.manifest.json')
  fs.rmSync(target, {force: true}) // otherwise oclif would load the stale one
  const config = await Config.load(root)
  const plugin = config.getPluginsList().find((p) => p.root === root)
  const manifest = {...plugin.manifest, version: config.version}
  const sorted = {}
  for (const id of Object.keys(manifest.commands).sort()) sorted[id] = manifest.commands[id]
  manifest.commands = sorted
  fs.writeFileSync(target, JSON.stringify(manifest, null, 2) + '\n')
}
main().catch((err) => {
  console.error(`manifest: ${err.message}`)
  process.exit(1)
})

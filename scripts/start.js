#!/usr/bin/env node
// `npm start`: build the bundled sample image, show it, attach it (as root, when attach is available),
// and print what to try next.
'use strict'
const path = require('node:path')
const {spawnSync} = require('node:child_process')
const {buildSample, OUT} = require('./sample')

const ROOT = path.resolve(__dirname, '..')
const vdev = (args, opts = {}) => spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), ...args], {encoding: 'utf8', ...opts})

// A sample attached by an earlier `npm start` is detached first (the image is about to be rebuilt).
if (process.getuid && process.getuid() === 0 && require(path.join(ROOT, 'oclif.manifest.json')).commands.detach) {
  const img = path.join(OUT, 'sample.vdimg')
  const l = vdev(['list', '--json'])
  const attached = l.status === 0 ? JSON.parse(l.stdout).filter((d) => d.image === img) : []
  for (const d of attached) {
    const r = vdev(['detach', d.id])
    if (r.status !== 0) {
      process.stderr.write(`npm start: the sample is still attached as ${d.device} and could not be detached:\n${r.stderr}`)
      process.exit(r.status ?? 1)
    }
    console.log(`Detached the earlier sample device ${d.device}.`)
  }
}

let sample
try {
  sample = buildSample()
} catch (err) {
  console.error(`npm start: ${err.message}`)
  process.exit(1)
}
const rel = path.relative(process.cwd(), sample.img)
console.log(`Built ${rel} from samples/files/ (two unreadable sectors in docs/chapter-2.txt).\n`)
console.log(`$ vdev info ${rel}`)
vdev(['info', sample.img], {stdio: 'inherit'})
console.log()

const manifest = require(path.join(ROOT, 'oclif.manifest.json'))
if (!manifest.commands.attach) {
  console.log('Next: vdev verify ' + rel + '  ·  vdev extract ' + rel + ' sample.img --mapfile-out sample.map')
  process.exit(0)
}
if (process.getuid && process.getuid() !== 0) {
  console.log('Attaching a block device needs root: sudo ./bin/run.js attach ' + rel)
  process.exit(0)
}
console.log(`$ vdev attach ${rel}`)
const a = vdev(['attach', sample.img, '--json'])
if (a.status !== 0) {
  process.stderr.write(a.stderr)
  process.exit(a.status ?? 1)
}
const dev = JSON.parse(a.stdout)
console.log(`${dev.device}  (backend ${dev.backend}, read-only)\n`)
console.log('Try next:')
console.log(`  mkdir -p /mnt/sample && mount -o ro ${dev.device} /mnt/sample`)
console.log('  cat /mnt/sample/README.txt                # reads fine')
console.log('  cat /mnt/sample/docs/chapter-2.txt        # Input/output error: an unreadable sector')
console.log(`  dd if=${dev.device} of=/dev/null bs=512 skip=${sample.badSectors[0] / 512} count=1 iflag=direct   # EIO`)
console.log('  ./bin/run.js list')
console.log(`  umount /mnt/sample; ./bin/run.js detach ${dev.device}`)

/**
 * A/B of `vdev serve URL` builds on bench:remote's two hardest targets, alternating in one run (the machine's
 * load wanders; docs/remote.md "Benchmark" has what it measured):
 *   - random 4 KiB QD1 (bench:remote's python3-libnbd client, the same offsets) on `--cache none`,
 *   - a warm re-read: nbdcopy of the whole device through `--cache DIR` filled by a first read, and
 *     `vdev serve` of the local file,
 *   - (mode seq) a cold sequential read: nbdcopy of the whole device on `--cache none`, with the bytes nginx
 *     sent (MiB) beside it,
 * each with the server's CPU seconds (all threads, /proc) beside the time.
 *
 *   node dist/bench/remote-ab.js IMAGE.vdimg NAME=path/to/bin/run.js[,VAR=VALUE…] [NAME=…]
 * (each build with its own environment variables, e.g. `ahead=bin/run.js noahead=bin/run.js,VDEV_DECODE_AHEAD=0`)
 * Knobs: AB_ROUNDS (3), AB_QD1 (2000 reads), AB_MODES (qd1,warm,local), AB_ARGS (extra serve flags),
 * AB_RAW (the raw image the VDIMG was made from: nbdkit's curl plugin on it, QD1, as a reference row),
 * AB_NODE_ARGS (node flags for the servers, e.g. `--cpu-prof --cpu-prof-dir=DIR`), AB_LINK_MBIT (root: the
 * whole run in a network namespace whose loopback is capped, as bench:remote's BENCH_LINK_MBIT).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {createInterface} from 'node:readline'
import {cpuSeconds, freshSocket, randomReadRate, stop, waitForSocket, type Server} from './nbd-servers'
import {runCapped, timed} from './lib'
import {Nginx} from '../test/remote/nginx'

async function serve(bin: string, image: string, sock: string, extra: string[], env: Record<string, string>): Promise<Server> {
  const child = spawn(process.execPath, [...(process.env.AB_NODE_ARGS ?? '').split(' ').filter(Boolean), bin, 'serve', image, '--listen', `unix:${sock}`, '--json', ...extra], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: {...process.env, ...env},
  })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({input: child.stdout!}).once('line', resolve)
    child.once('exit', (c) => reject(new Error(`vdev serve exited (${c})`)))
  })
  const ready = JSON.parse(line) as {export: string}
  return {name: bin, uri: `nbd+unix:///${ready.export}?socket=${sock}`, child, file: image}
}

async function main(): Promise<void> {
  const mbit = Number(process.env.AB_LINK_MBIT ?? 0)
  if (mbit > 0 && !process.env.BENCH_LINK_INSIDE) runCapped(mbit)
  const [image, ...builds] = process.argv.slice(2)
  if (!image || !builds.length) throw new Error('usage: remote-ab IMAGE NAME=BIN [NAME=BIN…]')
  const rounds = Number(process.env.AB_ROUNDS ?? 3)
  const nQd1 = Number(process.env.AB_QD1 ?? 2000)
  const modes = (process.env.AB_MODES ?? 'qd1,warm,local').split(',')
  const extraArgs = (process.env.AB_ARGS ?? '').split(' ').filter(Boolean)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-remote-ab-'))
  const nginx = await Nginx.create(path.join(dir, 'nginx'))
  fs.symlinkSync(path.resolve(image), path.join(nginx.www, 'image.vdimg'))
  const raw = process.env.AB_RAW
  if (raw) fs.symlinkSync(path.resolve(raw), path.join(nginx.www, 'image.raw'))
  await nginx.start()
  const url = `${nginx.url}/image.vdimg`
  const sock = path.join(dir, 'nbd.sock')
  const run = async (b: {bin: string; env: Record<string, string>}, img: string, extra: string[], client: (uri: string) => Promise<number>, warmup?: (uri: string) => Promise<number>): Promise<{v: number; cpu: number}> => {
    const s = await serve(b.bin, img, freshSocket(sock), [...extra, ...extraArgs], b.env)
    try {
      if (warmup) await warmup(s.uri)
      const cpu0 = cpuSeconds(s.child.pid!)
      const v = await client(s.uri)
      return {v, cpu: cpuSeconds(s.child.pid!) - cpu0}
    } finally {
      await stop(s)
    }
  }
  const copy = (uri: string) => timed(['nbdcopy', '--no-extents', uri, 'null:']).then((r) => r.seconds)
  const out: Record<string, Record<string, Array<{v: number; cpu: number}>>> = {}
  try {
    const parsed = builds.map((b) => {
      const [spec, ...vars] = b.split(',')
      const [name, bin] = spec.split('=')
      const env = Object.fromEntries(vars.map((v) => [v.slice(0, v.indexOf('=')), v.slice(v.indexOf('=') + 1)]))
      return {name, bin: path.resolve(bin), env, cache: path.join(dir, `cache-${name}`)}
    })
    if (modes.includes('warm'))
      for (const b of parsed) await run(b, url, ['--cache', b.cache, '--cache-size', '4G'], copy) // fill
    for (let r = 0; r < rounds; r++) {
      if (raw && modes.includes('qd1')) {
        // The reference: nbdkit's curl plugin on the raw image from the same nginx, the same reads.
        const child = spawn('nbdkit', ['-f', '-r', '-U', freshSocket(sock), 'curl', `url=${nginx.url}/image.raw`], {stdio: 'ignore'})
        await waitForSocket(sock, child, 'nbdkit curl')
        const s: Server = {name: 'nbdkit curl', uri: `nbd+unix:///?socket=${sock}`, child, file: raw}
        try {
          await randomReadRate(s.uri, 100, 1)
          const cpu0 = cpuSeconds(child.pid!)
          const v = await randomReadRate(s.uri, nQd1, 1)
          const x = {v, cpu: cpuSeconds(child.pid!) - cpu0}
          ;((out['nbdkit-curl (raw)'] ??= {}).qd1 ??= []).push(x)
          process.stderr.write(`round ${r} nbdkit-curl qd1: ${v.toFixed(0)} (server CPU ${x.cpu.toFixed(2)} s) load ${os.loadavg()[0].toFixed(1)}\n`)
        } finally {
          await stop(s)
        }
      }
      for (const b of parsed) {
        const row = (out[b.name] ??= {})
        const add = (k: string, x: {v: number; cpu: number}) => {
          ;(row[k] ??= []).push(x)
          process.stderr.write(`round ${r} ${b.name} ${k}: ${x.v.toFixed(k === 'qd1' ? 0 : 2)} (server CPU ${x.cpu.toFixed(2)} s) load ${os.loadavg()[0].toFixed(1)}\n`)
        }
        // 100 reads first (other offsets' chunks: the same seed's first 100): the serving threads start and
        // load their code outside the CPU counted.
        if (modes.includes('qd1')) add('qd1', await run(b, url, ['--cache', 'none'], (u) => randomReadRate(u, nQd1, 1), (u) => randomReadRate(u, 100, 1)))
        if (modes.includes('seq')) {
          const mark = nginx.accessLog().length
          const x = await run(b, url, ['--cache', 'none'], copy)
          const lines = nginx
            .accessLog()
            .slice(mark)
            .filter((l) => l.includes('"GET /image.vdimg '))
          const mib = lines.reduce((n, l) => n + Number(l.split('" ')[1].split(' ')[1] || 0), 0) / 2 ** 20
          // Bytes GET more than once (the log's last field is the Range asked for).
          const ranges = nginx.ranges('image.vdimg', mark).sort((x, y) => x[0] - y[0])
          let twice = 0
          for (let i = 0, reach = 0; i < ranges.length; i++) {
            twice += Math.max(0, Math.min(reach, ranges[i][1]) - ranges[i][0])
            reach = Math.max(reach, ranges[i][1])
          }
          process.stderr.write(`round ${r} ${b.name} seq: ${mib.toFixed(1)} MiB sent, ${(twice / 2 ** 20).toFixed(1)} MiB of it GET more than once, ${lines.length} GETs\n`)
          add('seq', x)
        }
        if (modes.includes('warm')) add('warm', await run(b, url, ['--cache', b.cache, '--cache-size', '4G'], copy))
        if (modes.includes('local')) add('local', await run(b, path.resolve(image), [], copy))
      }
    }
    for (const [name, row] of Object.entries(out)) {
      const parts = Object.entries(row).map(([k, xs]) => {
        const best = k === 'qd1' ? xs.reduce((a, x) => (x.v > a.v ? x : a)) : xs.reduce((a, x) => (x.v < a.v ? x : a))
        const cpu = Math.min(...xs.map((x) => x.cpu))
        return `${k} best ${best.v.toFixed(k === 'qd1' ? 0 : 2)}${k === 'qd1' ? ' IOPS' : ' s'} (all: ${xs.map((x) => x.v.toFixed(k === 'qd1' ? 0 : 2)).join(' ')}; server CPU min ${cpu.toFixed(2)} s)`
      })
      console.log(`${name}: ${parts.join('; ')}`)
    }
    console.log(`load average: ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`)
  } finally {
    await nginx.stop()
    fs.rmSync(dir, {recursive: true, force: true})
  }
}

main().catch((err) => {
  console.error(`remote-ab: ${(err as Error).message}`)
  process.exit(1)
})

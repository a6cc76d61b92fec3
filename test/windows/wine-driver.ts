/**
 * Run under Windows Node in Wine by test/windows/wine.test.ts: drives the windows-iscsi backend as the
 * attach daemon does (loaded through src/core/backends, a BlockServer over the image), against the
 * stand-in iscsidsc.dll and MSiSCSI service. Prints one JSON line per step to stdout (a file).
 *
 *   wine-driver IMAGE RUNDIR flow   probe, attach, wait for RUNDIR/continue (the Linux side reads the
 *                                   target meanwhile), deviceGone, detach, deviceGone, cleanup again
 *   wine-driver IMAGE RUNDIR fail   attach that must fail (the knobs in the environment say how)
 *   wine-driver IMAGE RUNDIR busy   attach, then a detach that must fail busy, then cleanup (forced)
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {loadBackend} from '../../src/core/backends'
import {describeSource, openSource} from '../../src/sources'

const out = (step: string, v: Record<string, unknown>): void => {
  process.stdout.write(`${JSON.stringify({step, ...v})}\n`)
}

async function main(): Promise<void> {
  const [image, runDir, mode] = process.argv.slice(2)
  const b = loadBackend('windows-iscsi')
  if ('error' in b) throw new Error(b.error)
  out('probe', {probe: await b.probe(), platform: process.platform})
  const source = await openSource(describeSource(image), {})
  const server = new BlockServer(source, {})
  const logs: string[] = []
  const ctx = {id: 'vdev7', image, runDir, log: (l: string) => logs.push(l), threads: 0, pollMicroseconds: 0}
  if (mode === 'fail') {
    try {
      await b.attach(server, ctx)
      out('attach', {ok: true})
    } catch (err) {
      out('attach', {ok: false, code: (err as {code?: string}).code, message: (err as Error).message, logs})
    }
    await source.close()
    return
  }
  const dev = await b.attach(server, ctx)
  out('attach', {ok: true, device: dev.device, state: dev.state, logs: [...logs]})
  if (mode === 'busy') {
    try {
      await dev.detach()
      out('detach', {ok: true})
    } catch (err) {
      out('detach', {ok: false, code: (err as {code?: string}).code, message: (err as Error).message})
    }
    await b.cleanup(dev.state, (l) => logs.push(l)).catch((err) => out('cleanup', {ok: false, message: (err as Error).message}))
    out('end', {logs})
    process.exit(0)
  }
  const cont = path.join(runDir, 'continue')
  while (!fs.existsSync(cont)) await new Promise((r) => setTimeout(r, 100))
  out('gone-before', {gone: await b.deviceGone!(dev.state)})
  await dev.detach()
  out('detach', {ok: true})
  out('gone-after', {gone: await b.deviceGone!(dev.state)})
  await b.cleanup(dev.state, (l) => logs.push(l))
  out('end', {logs})
  await source.close()
  process.exit(0)
}

// Only when run as a script: loading this file (a test runner's glob) must do nothing.
if (require.main === module)
  main().catch((err) => {
    out('error', {message: (err as Error).stack ?? String(err)})
    process.exit(1)
  })

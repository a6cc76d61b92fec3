/**
 * A device served from a process of its own, for the in-VM tests that kill a server: what the attach daemon
 * does, without the lifecycle — open the source (src/sources), build a BlockServer, attach it through the
 * named backend with the threads its thread model and the environment give — then print one JSON line
 * {device, pid, state} once the device is up, and detach cleanly on SIGTERM.
 *   node dist/test/vm/attach-server.js BACKEND IMAGE [--mapfile MAP]
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import type {Backend} from '../../src/core/backend'
import {loadBackend} from '../../src/core/backends'
import {BlockServer} from '../../src/core/blockserver'
import {describeSource, openSource} from '../../src/sources'
import {pollMicroseconds, threadCount} from '../../src/threads/config'

export interface AttachServerInfo {
  device: string
  pid: number
  state: Record<string, unknown>
}

const log = (line: string): void => void process.stderr.write(`${line}\n`)

async function main(argv: string[]): Promise<void> {
  const [name, image, ...rest] = argv
  if (!name || !image || !(rest.length === 0 || (rest.length === 2 && rest[0] === '--mapfile')))
    throw new Error('usage: attach-server BACKEND IMAGE [--mapfile MAP]')
  const loaded = loadBackend(name)
  if ('error' in loaded) throw new Error(loaded.error)
  const backend: Backend = loaded
  const descriptor = describeSource(image, {mapfile: rest[1]})
  const source = await openSource(descriptor)
  const server = new BlockServer(source, {onFault: (offset, length, err) => log(`fault reading ${length} bytes at ${offset}: ${(err as Error)?.message ?? err}`)})
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdev-attach-server-'))
  const threads = source.descriptor ? threadCount(name, backend.threadModel) : 0
  const attached = await backend.attach(server, {
    id: `vdev-test-${process.pid}`,
    image: descriptor.path,
    runDir,
    log,
    threads,
    pollMicroseconds: pollMicroseconds(name, backend.threadModel),
  })
  const info: AttachServerInfo = {device: attached.device, pid: process.pid, state: attached.state}
  process.stdout.write(JSON.stringify(info) + '\n')
  process.once('SIGTERM', () => {
    void (async () => {
      await attached.detach()
      await server.drain()
      await source.close()
      fs.rmSync(runDir, {recursive: true, force: true})
    })().then(
      () => process.exit(0),
      (err: unknown) => {
        log(`attach-server: detach failed: ${(err as Error)?.message ?? err}`)
        process.exit(1)
      },
    )
  })
}

if (require.main === module)
  main(process.argv.slice(2)).catch((err) => {
    process.stderr.write(`attach-server: ${(err as Error)?.message ?? err}\n`)
    process.exit(1)
  })

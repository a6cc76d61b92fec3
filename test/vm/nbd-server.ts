/**
 * A kernel NBD device served from its own process, for the in-VM test that kills the server:
 * `node dist/test/vm/nbd-server.js IMAGE` prints {device, index, pid} once /dev/nbdN is up and stops
 * cleanly on SIGTERM.
 */
import {BlockServer} from '../../src/core/blockserver'
import {openImage} from '../../src/format/reader'
import {NbdKernelDevice} from '../../backends/linux/nbd/device'

async function main(): Promise<void> {
  const image = await openImage(process.argv[2])
  const dev = await NbdKernelDevice.attach(new BlockServer(image), {exportName: 'disk', log: (l) => process.stderr.write(`${l}\n`)})
  process.stdout.write(JSON.stringify({device: dev.device, index: dev.index, pid: process.pid}) + '\n')
  process.once('SIGTERM', () => {
    void dev.detach().then(() => process.exit(0))
  })
}

if (require.main === module)
  main().catch((err) => {
    process.stderr.write(`nbd-server: ${(err as Error).message}\n`)
    process.exit(1)
  })

/**
 * A ublk server in its own process, for the in-VM test that kills a server: serves IMAGE as a ublk device
 * (two queues, each on a serving thread),
 * prints one JSON line {devId, device, pid} when the device is up, and stops cleanly on SIGTERM.
 *   node dist/test/vm/ublk-server.js IMAGE
 */
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {openImage} from '../../src/format/reader'
import {UblkDevice} from '../../backends/linux/ublk/device'

async function main(): Promise<void> {
  const image = await openImage(process.argv[2])
  // Two queues on serving threads, as `vdev attach --backend ublk` serves a .vdimg.
  const threads = {count: 2, image: path.resolve(process.argv[2]), cacheBytes: 2 << 20}
  const dev = await UblkDevice.create(new BlockServer(image), {threads, log: (l) => process.stderr.write(`${l}\n`)})
  process.stdout.write(JSON.stringify({devId: dev.info.devId, device: dev.info.blockDevice, pid: process.pid}) + '\n')
  process.once('SIGTERM', () => {
    void dev.stop().then(() => process.exit(0))
  })
}

if (require.main === module)
  main().catch((err) => {
    process.stderr.write(`ublk-server: ${(err as Error).message}\n`)
    process.exit(1)
  })

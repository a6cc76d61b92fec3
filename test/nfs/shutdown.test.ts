/**
 * Shutting the NFS server down while a READ is inside the source: close() resolves only once that READ is
 * done, so the caller can close the source after it (the fuzzer found READs failing with "image is closed"
 * when close() resolved as soon as the sockets were gone: seed 1726358886, case 3354).
 */
import * as assert from 'node:assert/strict'
import {BlockServer} from '../../src/core/blockserver'
import type {BlockSource, ReadResult} from '../../src/core/source'
import {openImage} from '../../src/format/reader'
import {startNfsServer} from '../../src/serve/nfs'
import {makeImages, type Images} from './fixture'
import {RpcClient, opaque, str, u32, u64} from './rpcclient'

const NFS = 100003
const MOUNT = 100005

describe('nfs server shutdown', function () {
  this.timeout(20000)
  let img: Images
  before(async () => (img = await makeImages()))
  after(() => img?.cleanup())

  it('close() waits for a READ already in the source before it resolves; the source is closed after it', async () => {
    const image = await openImage(img.goodImage)
    // The real image, with its reads held at a gate the test opens: a read that is slow on purpose.
    let release!: () => void
    const gate = new Promise<void>((resolve) => (release = resolve))
    let entered!: () => void
    const inSource = new Promise<void>((resolve) => (entered = resolve))
    let closed = false
    const held: BlockSource = {
      size: image.size,
      sectorSize: image.sectorSize,
      async read(offset: number, length: number): Promise<ReadResult> {
        if (length > 4096) {
          entered()
          await gate
        }
        if (closed) throw new Error('image is closed')
        return image.read(offset, length)
      },
      close: () => image.close(),
    }
    const block = new BlockServer(held)
    const logs: string[] = []
    const nfs = await startNfsServer(block, {host: '127.0.0.1', port: 0, exportName: '/', fileName: 'disk.img', log: (l) => logs.push(l)})
    const c = await RpcClient.connect(nfs.port)
    try {
      let b = await c.call(MOUNT, 3, 1, str('/'))
      assert.equal(b.acceptStat, 0)
      const mnt = b.body
      const rootFh = mnt.subarray(8, 8 + mnt.readUInt32BE(4))
      b = await c.call(NFS, 3, 3, Buffer.concat([opaque(rootFh), str('disk.img')]))
      const fileFh = b.body.subarray(8, 8 + b.body.readUInt32BE(4))
      // A 64 KiB READ reaches the source and waits there.
      void c.call(NFS, 3, 6, Buffer.concat([opaque(fileFh), u64(0), u32(65536)])).catch(() => {})
      await inSource
      let closeDone = false
      const closing = nfs.close().then(() => (closeDone = true))
      await new Promise((r) => setTimeout(r, 200))
      assert.equal(closeDone, false, 'close() resolved while a READ was still in the source')
      release()
      await closing
      closed = true
      await block.drain()
      await held.close()
      assert.deepEqual(logs.filter((l) => /fail|closed|error/i.test(l)), [])
    } finally {
      release()
      c.close()
      await nfs.close()
    }
  })
})

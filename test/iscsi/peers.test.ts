/**
 * The iSCSI target against real initiators on this machine: qemu's iSCSI driver (qemu-img compare of the
 * whole LUN with the source, qemu-io reads failing exactly at the unreadable sectors), libiscsi's tools
 * (iscsi-inq, iscsi-readcapacity16, iscsi-ls discovery) and CHAP through libiscsi's URL form. The target
 * runs in this process; the tools run as child processes (never blocking its event loop).
 */
import * as assert from 'node:assert/strict'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {BlockServer} from '../../src/core/blockserver'
import {openInput} from '../../src/format/input'
import {openImage, type VdimgImage} from '../../src/format/reader'
import {createImage} from '../../src/format/writer'
import {startIscsiServer, type RunningIscsiTarget} from '../../src/serve/iscsi'
import {hasTool, makeFixture, run, SECTOR, type Fixture} from '../nbd/fixture'

describe('iscsi target with real initiators (qemu, libiscsi)', function () {
  this.timeout(120_000)
  let fx: Fixture
  const opened: VdimgImage[] = []
  const targets: RunningIscsiTarget[] = []
  const logs: string[] = []

  const serve = async (image: string, opts: {badPolicy?: 'error' | 'zero'; chap?: {user: string; secret: Buffer}} = {}) => {
    const img = await openImage(image)
    opened.push(img)
    const t = await startIscsiServer(new BlockServer(img, {badPolicy: opts.badPolicy}), {
      listen: {kind: 'tcp', host: '127.0.0.1', port: 0},
      image,
      chap: opts.chap,
      log: (l) => logs.push(l),
    })
    targets.push(t)
    return t
  }

  before(async function () {
    if (!hasTool('qemu-img') || !hasTool('iscsi-inq')) this.skip()
    fx = await makeFixture()
  })

  after(async () => {
    for (const t of targets) await t.close()
    for (const i of opened) await i.close()
    fx?.cleanup()
  })

  it('qemu-img compare: the LUN of an image without bad areas equals the raw source', async () => {
    const t = await serve(fx.goodImage)
    const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', t.uri, fx.goodRaw])
    assert.match(r.stdout, /Images are identical/)
  })

  it('an image whose size is not a whole number of sectors: ceil(size / sector) blocks, its last bytes then zeros (qemu-img compare, qemu-io)', async () => {
    for (const sectorSize of [512, 4096]) {
      const size = 3 * 1024 * 1024 + 1000 // 1000 bytes into a last sector, none of them zero
      const data = crypto.randomBytes(size)
      for (let i = size - 1000; i < size; i++) data[i] |= 1
      const raw = path.join(fx.dir, `odd-${sectorSize}.raw`)
      const image = path.join(fx.dir, `odd-${sectorSize}.vdimg`)
      fs.writeFileSync(raw, data)
      const input = openInput(raw)
      try {
        await createImage(input, image, {chunkSize: 64 * 1024, sectorSize, threads: 1})
      } finally {
        await input.close()
      }
      const t = await serve(image)
      const blocks = Math.ceil(size / sectorSize)
      const cap = await run('iscsi-readcapacity16', [t.uri])
      assert.match(cap.stdout, new RegExp(`RETURNED LOGICAL BLOCK ADDRESS:${blocks - 1}\\b`))
      assert.match(cap.stdout, new RegExp(`LOGICAL BLOCK LENGTH IN BYTES:${sectorSize}\\b`))
      // qemu sees the raw file rounded up to 512 bytes with zeros, and compares the rest of a longer LUN with zeros.
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', t.uri, raw])
      assert.match(cmp.stdout, /Images are identical/, `${sectorSize}-byte sectors: ${cmp.stdout}`)
      // The last block byte for byte: the image's 1000 bytes, then zeros.
      const last = (blocks - 1) * sectorSize
      const io = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -v ${last} ${sectorSize}`, t.uri])
      const got = Buffer.from(
        [...io.stdout.matchAll(/^[0-9a-f]+:\s+((?:[0-9a-f]{2} ){1,16})/gm)].map((m) => m[1].replace(/ /g, '')).join(''),
        'hex',
      )
      assert.equal(got.length, sectorSize, io.stdout.slice(0, 200))
      assert.ok(got.subarray(0, size - last).equals(data.subarray(last)), `${sectorSize}: the last bytes of the image`)
      assert.ok(got.subarray(size - last).every((b) => b === 0), `${sectorSize}: zeros past the image`)
    }
  })

  it('qemu-io -r: reads fail exactly at unreadable sectors (MEDIUM ERROR), the sectors around read exact bytes', async () => {
    const t = await serve(fx.image)
    const raw = fs.readFileSync(fx.raw)
    const bad = fx.bad[0].offset // a single bad sector
    const io = (offset: number, length: number) => run('qemu-io', ['-r', '-f', 'raw', '-c', `read -v ${offset} ${length}`, t.uri], {allowFail: true})
    const failed = await io(bad, SECTOR)
    assert.match(failed.stdout + failed.stderr, /read failed: Input\/output error/)
    const across = await io(bad - 4096, 8192)
    assert.match(across.stdout + across.stderr, /read failed: Input\/output error/)
    for (const off of [bad - SECTOR, bad + SECTOR]) {
      const ok = await io(off, SECTOR)
      assert.doesNotMatch(ok.stdout + ok.stderr, /failed/)
      // qemu-io -v dumps "offset:  hex bytes  ascii": compare the first 16 bytes
      const first = /^[0-9a-f]+:\s+((?:[0-9a-f]{2} ){16})/m.exec(ok.stdout)
      assert.ok(first, ok.stdout.slice(0, 200))
      assert.equal(first[1].trim().replace(/ /g, ''), raw.subarray(off, off + 16).toString('hex'))
    }
    // The last sector of the image is bad too (the fixture's last area).
    assert.match((await io(fx.size - SECTOR, SECTOR)).stderr + (await io(fx.size - SECTOR, SECTOR)).stdout, /Input\/output error/)
  })

  it('--bad-policy zero: the same sector reads as zeros', async () => {
    const t = await serve(fx.image, {badPolicy: 'zero'})
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0 ${fx.bad[0].offset} ${SECTOR}`, t.uri])
    assert.doesNotMatch(r.stdout + r.stderr, /failed|Pattern verification failed/)
  })

  it('libiscsi tools: iscsi-inq, iscsi-readcapacity16, iscsi-ls discovery (the address the initiator reached)', async () => {
    const t = await serve(fx.goodImage)
    const inq = await run('iscsi-inq', [t.uri])
    assert.match(inq.stdout, /Peripheral Device Type:DIRECT_ACCESS/)
    assert.match(inq.stdout, /Vendor:VDEV/)
    const vpd83 = await run('iscsi-inq', ['-e', '1', '-c', '131', t.uri])
    assert.match(vpd83.stdout, /NAA/)
    const vpdb1 = await run('iscsi-inq', ['-e', '1', '-c', '177', t.uri])
    assert.match(vpdb1.stdout, /Medium Rotation Rate:1/i)
    const cap = await run('iscsi-readcapacity16', [t.uri])
    assert.match(cap.stdout, new RegExp(`Total size:${fx.size}\\b`))
    assert.match(cap.stdout, /LOGICAL BLOCK LENGTH IN BYTES:512/)
    const ls = await run('iscsi-ls', ['-s', `iscsi://127.0.0.1:${t.address.port}`])
    assert.match(ls.stdout, new RegExp(`Target:${t.iqn.replace(/[.]/g, '\\.')} Portal:127\\.0\\.0\\.1:${t.address.port},1`))
    assert.match(ls.stdout, /Lun:0\s+Type:DIRECT_ACCESS/)
  })

  it('the IQN is stable for an image (its media hash) and differs between images', async () => {
    const a = await serve(fx.goodImage)
    const b = await serve(fx.goodImage)
    const c = await serve(fx.image)
    assert.equal(a.iqn, b.iqn)
    assert.notEqual(a.iqn, c.iqn)
    assert.match(a.iqn, /^iqn\.\d{4}-\d{2}\.[a-z0-9.-]+:[a-z0-9.-]+$/)
    assert.equal(a.uri, `iscsi://127.0.0.1:${a.address.port}/${a.iqn}/0`)
  })

  it('CHAP: the right user and secret log in, a wrong secret and no credentials are refused', async () => {
    const t = await serve(fx.goodImage, {chap: {user: 'vdev', secret: Buffer.from('s3cret-s3cret')}})
    const url = (cred: string) => `iscsi://${cred}127.0.0.1:${t.address.port}/${t.iqn}/0`
    const ok = await run('iscsi-readcapacity16', [url('vdev%s3cret-s3cret@')])
    assert.match(ok.stdout, new RegExp(`Total size:${fx.size}\\b`))
    const wrong = await run('iscsi-readcapacity16', [url('vdev%wrong-secret@')], {allowFail: true})
    assert.notEqual(wrong.code, 0)
    const none = await run('iscsi-readcapacity16', [url('')], {allowFail: true})
    assert.notEqual(none.code, 0)
    assert.ok(logs.some((l) => /CHAP authentication failed/.test(l)))
  })
})

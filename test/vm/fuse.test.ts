/**
 * Runs inside the test VM (Debian's 6.12 kernel): the FUSE + loop backend on a second, older kernel — FUSE
 * negotiated below 7.45, direct I/O of loop over FUSE — and partition tables, which the host's kernel cannot
 * read (it is built without partition parsers). Needs the fuse module in the VM's initramfs.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import {prng} from '../helpers'
import {Sandbox, attach, partitionsScenario, readSectors, run} from '../fuse/fixtures'

describe('FUSE + loop backend on the VM kernel', function () {
  this.timeout(600_000)
  let sb: Sandbox | undefined

  beforeEach(function () {
    if (!fs.existsSync('/dev/fuse')) {
      console.log('      (skipped: no /dev/fuse in the guest — the fuse module is not in the VM initramfs)')
      this.skip()
    }
    sb = new Sandbox()
  })
  afterEach(async function () {
    if (!sb) return
    const left = await sb.teardown()
    sb = undefined
    assert.deepEqual(left, [], 'the test left devices, mounts or processes behind')
  })

  it('attaches with the protocol this kernel speaks, direct I/O, and exact bytes', async () => {
    const data = prng(41, 6 << 20)
    fs.writeFileSync(sb!.p('d.raw'), data)
    const img = sb!.p('d.vdimg')
    const c = await sb!.vdev(['create', sb!.p('d.raw'), img])
    assert.equal(c.code, 0, c.stderr)
    const dev = await attach(sb!, img)
    const log = fs.readFileSync(`${sb!.stateDir}/logs/${dev.id}.log`, 'utf8')
    assert.match(log, /fuse: protocol 7\.\d+ \(kernel 7\.\d+\)/)
    assert.equal(fs.readFileSync(`/sys/block/${dev.device.slice(5)}/loop/dio`, 'utf8').trim(), '1', log)
    const r = await run('blockdev', ['--getro', dev.device])
    assert.equal(r.stdout.toString().trim(), '1')
    const all = await readSectors(dev.device, 0, 6, 1 << 20)
    assert.equal(all.code, 0, all.stderr)
    assert.ok(all.data.equals(data))
    const d = await sb!.vdev(['detach', dev.id])
    assert.equal(d.code, 0, d.stderr)
  })

  it('an image with an MBR partition table shows its partitions', async () => {
    await partitionsScenario(sb!)
  })
})

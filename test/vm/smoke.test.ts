/**
 * Runs inside the test VM (see docs/vm-harness.md): checks that the guest is the environment the other in-VM
 * suites rely on — the Debian 6.12 kernel with ublk, nbd, loop, 9p and the NFS client loaded, a writable tmpfs
 * /tmp, TCP on loopback, and root.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'

describe('VM environment', () => {
  it('is the guest, running the 6.12 kernel as root', () => {
    assert.equal(process.env.VDEV_IN_VM, '1')
    assert.match(os.release(), /^6\.12\./)
    assert.equal(process.getuid?.(), 0)
  })

  it('has the ublk, nbd, loop, 9p and NFS v3 client modules loaded', () => {
    assert.ok(fs.existsSync('/dev/ublk-control'), '/dev/ublk-control')
    for (const m of ['ublk_drv', 'nbd', 'loop', '9p', 'nfsv3', 'sunrpc']) assert.ok(fs.existsSync(`/sys/module/${m}`), m)
    assert.ok(fs.existsSync('/dev/nbd0'), '/dev/nbd0')
    const filesystems = fs.readFileSync('/proc/filesystems', 'utf8')
    assert.match(filesystems, /\tnfs\n/)
  })

  it('has a writable tmpfs /tmp', () => {
    const mounts = fs.readFileSync('/proc/mounts', 'utf8')
    assert.match(mounts, /^tmpfs \/tmp tmpfs /m)
    const f = `/tmp/smoke-${process.pid}`
    fs.writeFileSync(f, 'x')
    assert.equal(fs.readFileSync(f, 'utf8'), 'x')
    fs.rmSync(f)
  })

  it('talks TCP on 127.0.0.1', async () => {
    const server = net.createServer((s) => s.end('hello'))
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    try {
      const port = (server.address() as net.AddressInfo).port
      const got = await new Promise<string>((resolve, reject) => {
        let buf = ''
        net.connect(port, '127.0.0.1').on('data', (d) => (buf += d)).on('end', () => resolve(buf)).on('error', reject)
      })
      assert.equal(got, 'hello')
    } finally {
      server.close()
    }
  })
})

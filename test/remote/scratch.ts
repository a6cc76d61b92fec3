/**
 * One check that cli.test.ts (http://) and s3.test.ts (s3://) both make: `vdev serve URL --scratch` serves a
 * remote image read-write over NBD on two serving threads; a qemu-io write reads back through nbdcopy and
 * every other byte is the image's, and the server logs no internal failure.
 */
import * as assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {BIN} from '../helpers'
import {run, type Sandbox} from '../sandbox'

const MiB = 1 << 20

/** `want`: what the image reads as (bad areas as zeros: the server runs with --bad-policy zero); `extra`: more flags. */
export async function checkServeScratch(sb: Sandbox, url: string, want: Buffer, env: Record<string, string> = {}, extra: string[] = []): Promise<void> {
  const sock = sb.p('scratch.sock')
  const child = spawn(process.execPath, [BIN, 'serve', url, '--listen', `unix:${sock}`, '--json', '--bad-policy', 'zero', '--cache', 'none', '--threads', '2', '--scratch', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {...process.env, ...env},
  })
  sb.trackPid(child.pid)
  let err = ''
  child.stderr.on('data', (d) => (err += d))
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve())
      child.once('close', () => reject(new Error(`serve exited: ${err}`)))
    })
    const uri = `nbd+unix:///?socket=${sock}`
    const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x41 ${3 * MiB} 65536`, uri])
    assert.equal(w.code, 0, w.stderr + w.stdout.toString())
    const r = await run('nbdcopy', [uri, '-'], {timeoutMs: 120_000})
    assert.equal(r.code, 0, r.stderr)
    const expected = Buffer.from(want)
    expected.fill(0x41, 3 * MiB, 3 * MiB + 65536)
    assert.ok(r.stdout.equals(expected), 'bytes differ')
  } finally {
    const closed = new Promise((resolve) => child.once('close', resolve))
    child.kill('SIGTERM')
    await closed
  }
  assert.doesNotMatch(err, /internal error|could not start|thread .* failed/, err)
}

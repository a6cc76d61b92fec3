/**
 * The CPU cost of signing one S3 request (src/remote/sigv4.ts, through s3Target's sign: the date, the
 * canonical request, one SHA-256, one HMAC; the signing key derived once a day), beside what a fresh
 * signing key would add (four more HMACs) and a plain SHA-256 of 4 KiB (what reading a 4 KiB block costs
 * in checksums alone). Best of five runs of N signatures, in CPU time (process.cpuUsage) and wall time.
 * Run on its own (`node dist/bench/sigv4.js`) or from bench:remote.
 */
import {createHash, createHmac} from 'node:crypto'
import {s3Target} from '../src/remote/s3'

export interface SigningCost {
  /** Microseconds of CPU per signed request (best of runs). */
  signUs: number
  /** The same with the signing key derived every time. */
  freshKeyUs: number
  /** A SHA-256 of 4 KiB, for scale. */
  sha4kUs: number
}

function best(n: number, f: () => void): number {
  let min = Infinity
  for (let run = 0; run < 5; run++) {
    const t0 = process.cpuUsage()
    for (let i = 0; i < n; i++) f()
    const d = process.cpuUsage(t0)
    min = Math.min(min, (d.user + d.system) / n)
  }
  return min
}

export function signingCost(n = 20_000): SigningCost {
  const t = s3Target('s3://images/case 42/disk.vdimg', {AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', AWS_ENDPOINT_URL: 'http://127.0.0.1:7480', AWS_REGION: 'us-east-1'}, '/nonexistent')
  let pos = 0
  const signUs = best(n, () => {
    const h: Record<string, string> = {range: `bytes=${pos}-${pos + 4095}`, 'if-match': '"9b2cf535f27731c974343645a3985328"', 'accept-encoding': 'identity'}
    pos += 4096
    t.sign('GET', h)
  })
  const freshKeyUs =
    signUs +
    best(n, () => {
      const h = (key: string | Buffer, data: string): Buffer => createHmac('sha256', key).update(data).digest()
      h(h(h(h('AWS4secret', '20261202'), 'us-east-1'), 's3'), 'aws4_request')
    })
  const block = Buffer.alloc(4096, 7)
  const sha4kUs = best(n, () => createHash('sha256').update(block).digest())
  return {signUs, freshKeyUs, sha4kUs}
}

if (require.main === module) {
  const c = signingCost()
  console.log(`SigV4 signing, CPU per request (best of 5 × 20000): ${c.signUs.toFixed(1)} µs (a fresh signing key each time: ${c.freshKeyUs.toFixed(1)} µs); SHA-256 of 4 KiB for scale: ${c.sha4kUs.toFixed(1)} µs`)
}

/**
 * Target "http": the remote-image HTTP client (src/remote/http.ts, its Content-Range and ETag parsers and
 * read-ahead) against a hostile server written on a raw TCP socket, so that any answer can be sent: wrong
 * or missing status lines, every status code vdev treats specially, Content-Range values that lie (other
 * bytes, another total, malformed), Content-Length that lies, bodies cut short or too long, chunked
 * bodies, a changed ETag with other bytes, a connection reset or closed, an answer that never comes.
 * Each case serves one random object (0–200 KiB) and answers requests in the order the case's script
 * says (then correctly), opening the object and reading random ranges, some concurrently.
 *
 * A third of the cases read `s3://fuzz-bucket/objN` through AWS_ENDPOINT_URL (path-style, the same server,
 * which checks each request carries a well-formed SigV4 Authorization header) and S3 error documents.
 *
 * The contract: every read resolves with exactly the object's bytes for that range, or rejects with a
 * VdevError ('io', 'format' or 'unsupported') whose message is one line naming the URL; once a read saw a
 * changed object, no later read in turn succeeds; nothing takes longer than the timeout allows (no hang).
 *
 * With libcurl, the same reads are made again the way a serving thread GETs a random read itself
 * (src/remote/curl.ts, pinned to what the open found; s3:// cases signed with keys from a credential slot,
 * checked by the server as above), in a worker thread (a synchronous GET on this thread would block the
 * server), under the same contract — but that an s3:// error answer may be left to the owner (Delegate).
 */
import * as net from 'node:net'
import * as path from 'node:path'
import {Worker} from 'node:worker_threads'
import {curlAvailable} from '../../src/remote/curl'
import {CredentialSlot} from '../../src/remote/credential-slot'
import {VdevError, type ErrorCode} from '../../src/core/errors'
import {HttpObject} from '../../src/remote/http'
import type {Rng} from '../rng'
import {normalize, type CaseContext, type CaseResult, type Target} from '../harness'

type Answer =
  | 'ok'
  | 'status'
  | 'content-range'
  | 'content-length'
  | 'short'
  | 'long'
  | 'chunked'
  | 'changed'
  | 'reset'
  | 'close'
  | 'silent'
  | 'garbage'
  | 'no-etag'
  | 'whole'
  | 's3-error'

const ANSWERS: ReadonlyArray<readonly [number, Answer]> = [
  [6, 'ok'], [2, 'status'], [3, 'content-range'], [2, 'content-length'], [2, 'short'], [1, 'long'], [1, 'chunked'],
  [1, 'changed'], [1, 'reset'], [1, 'close'], [1, 'silent'], [1, 'garbage'], [1, 'no-etag'], [1, 'whole'], [1, 's3-error'],
]
/** S3 error codes, real and not: a client must show only a short well-formed one. */
const S3_CODES = ['NoSuchKey', 'NoSuchBucket', 'AccessDenied', 'SignatureDoesNotMatch', 'InvalidAccessKeyId', 'PermanentRedirect', 'AuthorizationHeaderMalformed', '', 'A\nB', 'x'.repeat(5000), '<Code>', '\u00e9t\u00e9']
const STATUSES = [204, 206, 301, 302, 304, 400, 401, 403, 404, 408, 410, 412, 416, 429, 500, 502, 503, 504, 999, 100]
const RANGES = ['', 'bytes', 'bytes */*', 'bytes 0-0/0', 'bytes 1-0/5', 'bytes -1-5/10', 'bytes 0-9007199254740993/9007199254740994', 'bytes=0-1/2', 'BYTES 0-0/1', 'bytes 0-0/1, bytes 1-1/2', 'bytes \u00a00-1/2']

const TIMEOUT_MS = 400

interface Script {
  answers: Answer[]
  rng: Rng
  object: Buffer
  etag: string
  other: Buffer
}

/** The hostile server: one script per case, requests answered in order of arrival. */
class Hostile {
  server: net.Server
  script: Script | undefined
  next = 0
  sockets = new Set<net.Socket>()
  log: string[] = []
  /** s3:// requests that came without a well-formed SigV4 Authorization header. */
  unsigned = 0

  constructor() {
    this.server = net.createServer((s) => this.connection(s))
  }

  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)))
  }

  private connection(s: net.Socket): void {
    this.sockets.add(s)
    s.on('close', () => this.sockets.delete(s))
    s.on('error', () => undefined)
    let buf = ''
    s.on('data', (d) => {
      buf += d.toString('latin1')
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.slice(0, end)
        buf = buf.slice(end + 4)
        this.answer(s, head)
      }
    })
  }

  private answer(s: net.Socket, head: string): void {
    const sc = this.script
    if (!sc || s.destroyed) return
    const range = /\r\nrange: bytes=(\d+)-(\d+)/i.exec(head)
    const ifMatch = /\r\nif-match: (.*)/i.exec(head)?.[1]
    if (/^GET \/fuzz-bucket\//.test(head) && !/\r\nauthorization: AWS4-HMAC-SHA256 Credential=FUZZKEY\/\d{8}\/us-east-1\/s3\/aws4_request, SignedHeaders=host;(if-match;)?range;x-amz-content-sha256;x-amz-date, Signature=[0-9a-f]{64}\r\n/i.test(head + '\r\n'))
      this.unsigned++
    let a = sc.answers[this.next++] ?? 'ok'
    // The object is what the open's answer was; another version can only be told from it by a client
    // that pinned it (If-Match): an object served without an ETag cannot be pinned (docs/remote.md).
    if (a === 'changed' && ifMatch === undefined) a = 'ok'
    const rng = sc.rng
    this.log.push(`${a} ${range ? `${range[1]}-${range[2]}` : 'no range'}`)
    const size = sc.object.length
    const first = range ? Number(range[1]) : 0
    const last = range ? Math.min(Number(range[2]), size - 1) : size - 1
    const send = (status: number, headers: Record<string, string | number>, body: Buffer = Buffer.alloc(0), raw?: string): void => {
      const lines = raw ?? [`HTTP/1.1 ${status} X`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)].join('\r\n') + '\r\n\r\n'
      s.write(Buffer.concat([Buffer.from(lines, 'latin1'), body]))
    }
    if (ifMatch !== undefined && ifMatch !== sc.etag && a === 'ok') return send(412, {'content-length': 0})
    if (first >= size && a === 'ok') return send(416, {'content-range': `bytes */${size}`, 'content-length': 0, etag: sc.etag})
    const body = sc.object.subarray(first, last + 1)
    const good = {'content-range': `bytes ${first}-${last}/${size}`, 'content-length': body.length, etag: sc.etag}
    switch (a) {
      case 'ok':
        return send(206, good, body)
      case 'status':
        // (An empty 200 is an empty object, and true: the 'whole' answer sends 200s.)
        return send(rng.pick(STATUSES), {...good, 'content-length': 0})
      case 'content-range': {
        const v = rng.chance(0.5)
          ? rng.pick(RANGES)
          : `bytes ${first + rng.pick([0, 1, -1])}-${last + rng.pick([0, 1, -1, 100])}/${size + rng.pick([0, 1, -1, 1 << 20])}`
        return send(206, {...good, 'content-range': v}, body)
      }
      case 'content-length':
        return send(206, {...good, 'content-length': rng.pick([0, body.length - 1, body.length + 1, -1])}, body)
      case 'short':
        send(206, good, body.subarray(0, rng.int(Math.max(1, body.length))))
        return void s.end()
      case 'long':
        return send(206, {'content-range': good['content-range'], etag: sc.etag, connection: 'close'}, Buffer.concat([body, Buffer.from('EXTRA')]), undefined)
      case 'chunked': {
        const h = `HTTP/1.1 206 X\r\ncontent-range: ${good['content-range']}\r\netag: ${sc.etag}\r\ntransfer-encoding: chunked\r\n\r\n`
        const n = body.length
        const cut = rng.int(n + 1)
        const parts = [body.subarray(0, cut), body.subarray(cut)].filter((p) => p.length > 0)
        return send(0, {}, Buffer.concat([...parts.flatMap((p) => [Buffer.from(`${p.length.toString(16)}\r\n`), p, Buffer.from('\r\n')]), Buffer.from('0\r\n\r\n')]), h)
      }
      case 'changed':
        return send(206, {...good, etag: '"changed"'}, sc.other.subarray(first, last + 1))
      case 'reset':
        return void s.resetAndDestroy()
      case 'close':
        return void s.destroy()
      case 'silent':
        return
      case 'garbage':
        s.write(rng.bytes(rng.range(1, 200)))
        return void s.end()
      case 'no-etag':
        return send(206, {'content-range': good['content-range'], 'content-length': body.length}, body)
      case 'whole':
        return send(200, {'content-length': size, etag: sc.etag}, sc.object)
      case 's3-error': {
        // An S3 error document (docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html), sometimes cut short.
        const xml = Buffer.from(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${rng.pick(S3_CODES)}</Code><Message>m</Message></Error>`.repeat(rng.pick([1, 1, 3])))
        const region = rng.pick(['', 'eu-west-1', 'bad region\u00ff', 'x'.repeat(300)])
        const cut = rng.chance(0.2) ? rng.int(xml.length) : xml.length
        send(rng.pick([301, 400, 403, 404, 409, 307]), {'content-length': xml.length, ...(region ? {'x-amz-bucket-region': region} : {})}, xml.subarray(0, cut))
        if (cut < xml.length) s.end()
        return
      }
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise((r) => this.server.close(r))
  }
}

/** A worker that reads ranges with CurlRanges, synchronously, as a serving thread does. */
const CURL_WORKER = `
const {parentPort} = require('node:worker_threads')
const {CurlRanges, Delegate} = require(${JSON.stringify(path.join(__dirname, '..', '..', 'src', 'remote', 'curl.js'))})
parentPort.on('message', (m) => {
  const changed = new Int32Array(new SharedArrayBuffer(4))
  const c = CurlRanges.open(m.target, {name: m.name, size: m.size, timeoutMs: m.timeoutMs, changed, onBytes() {}})
  const out = []
  for (const r of m.reads) {
    try {
      out.push({bytes: c.read(r.len, r.pos)})
    } catch (e) {
      if (e instanceof Delegate) out.push({delegated: true})
      else out.push({error: {name: e && e.name, code: e && e.code, message: String(e && e.message)}})
    }
  }
  c.close()
  parentPort.postMessage(out)
})`

type CurlOutcome = {bytes?: Uint8Array; delegated?: boolean; error?: {name: string; code: string; message: string}}

export const httpTarget: Target = {
  name: 'http',
  caseTimeoutMs: 15_000,
  async setup() {
    const srv = new Hostile()
    const port = await srv.listen()
    // s3:// cases reach the same server: path-style through AWS_ENDPOINT_URL, signed with these keys.
    const saved = {...process.env}
    Object.assign(process.env, {AWS_ENDPOINT_URL: `http://127.0.0.1:${port}`, AWS_ACCESS_KEY_ID: 'FUZZKEY', AWS_SECRET_ACCESS_KEY: 'fuzz', AWS_REGION: 'us-east-1'})
    for (const k of ['AWS_PROFILE', 'AWS_ENDPOINT_URL_S3', 'AWS_SESSION_TOKEN']) delete process.env[k]
    const curlWorker = curlAvailable() ? new Worker(CURL_WORKER, {eval: true}) : undefined
    // What a serving thread signs its own s3:// GETs with (http.ts publishes the owner's keys the same way).
    const slot = CredentialSlot.create()
    slot.publish({accessKeyId: 'FUZZKEY', secretAccessKey: 'fuzz'})
    const curlReads = (m: unknown): Promise<CurlOutcome[]> =>
      new Promise((resolve, reject) => {
        const fail = (err: Error): void => {
          curlWorker!.off('message', done)
          reject(err)
        }
        const done = (got: CurlOutcome[]): void => {
          curlWorker!.off('error', fail)
          resolve(got)
        }
        curlWorker!.once('message', done)
        curlWorker!.once('error', fail)
        curlWorker!.postMessage(m)
      })
    return {
      progress: () => srv.log.slice(-3).join(', '),
      async runCase(ctx: CaseContext): Promise<CaseResult> {
        const rng = ctx.rng
        const size = rng.pick([0, 1, 255, 4096, 65536, 65537, rng.range(1, 200 << 10)])
        const object = rng.bytes(size)
        const script: Script = {
          answers: Array.from({length: rng.range(0, 12)}, () => rng.weighted(ANSWERS)),
          rng,
          object,
          etag: `"${rng.u32().toString(16)}"`,
          other: rng.bytes(size),
        }
        // The sockets a previous case left are not this case's: close them first.
        for (const s of srv.sockets) s.destroy()
        srv.script = script
        srv.next = 0
        srv.log = []
        srv.unsigned = 0
        const url = rng.chance(0.3) ? `s3://fuzz-bucket/obj${ctx.iteration}` : `http://127.0.0.1:${port}/obj${ctx.iteration}`
        const failures: string[] = []
        const outcomes: string[] = []
        const check = (what: string, err: unknown): void => {
          if (!(err instanceof VdevError)) {
            failures.push(`${what}: threw ${(err as Error)?.name}: ${(err as Error)?.message} — not a VdevError`)
            outcomes.push(`threw:${(err as Error)?.name}`)
            return
          }
          if (!['io', 'format', 'unsupported'].includes(err.code)) failures.push(`${what}: error code '${err.code}': ${err.message}`)
          if (/[\r\n]/.test(err.message)) failures.push(`${what}: the message is not one line: ${JSON.stringify(err.message.slice(0, 200))}`)
          if (!err.message.startsWith(url)) failures.push(`${what}: the message does not name the URL: ${err.message}`)
          outcomes.push(`${err.code}:${normalize(err.message.slice(url.length + 2), 50)}`)
        }
        const t0 = Date.now()
        let obj: HttpObject | undefined
        try {
          obj = await HttpObject.open(url, {timeoutMs: TIMEOUT_MS, readAhead: rng.chance(0.5)})
          // A lie in the open's one answer (another total in Content-Range) cannot be told from the truth:
          // the client believes it, and must then fail reads past it or notice the size change.
          outcomes.push(obj.size === size ? 'open' : 'open:other-size')
        } catch (err) {
          check('open', err)
        }
        let changed = false
        if (obj && size > 0) {
          // Random reads, or a sequential stream of small ones (read-ahead starts windows on the third:
          // windows that stream in and are GET again from where a cut-off answer stopped).
          const seq = rng.chance(0.35)
          const piece = rng.pick([512, 4096, 65536])
          const start = rng.int(size)
          const reads = seq
            ? Array.from({length: rng.range(3, 12)}, (_, i) => ({pos: Math.min(size - 1, start + i * piece), len: Math.max(1, Math.min(piece, size - Math.min(size - 1, start + i * piece)))}))
            : Array.from({length: rng.range(1, 6)}, () => {
                const pos = rng.int(size)
                return {pos, len: Math.min(size - pos, rng.pick([1, 512, 4096, rng.range(1, size)]))}
              })
          const go = (r: {pos: number; len: number}, inOrder: boolean) =>
            obj!.read(r.len, r.pos).then(
              (b) => {
                if (!b.equals(object.subarray(r.pos, r.pos + r.len))) failures.push(`read ${r.len} at ${r.pos}: wrong bytes`)
                if (changed && inOrder) failures.push(`read ${r.len} at ${r.pos} succeeded after the object was seen changed`)
                outcomes.push('read')
              },
              (err) => {
                if (err instanceof VdevError && /the object changed/.test(err.message)) changed = true
                check(`read ${r.len} at ${r.pos}`, err)
              },
            )
          // Concurrent reads may finish after another saw the change (their GETs passed If-Match before it).
          if (rng.chance(0.5)) await Promise.all(reads.map((r) => go(r, false)))
          else for (const r of reads) await go(r, true)
          // The same reads as a serving thread's own GETs (curl.ts), pinned to what the open found.
          if (curlWorker && !changed && rng.chance(0.4)) {
            const pin = obj.reopen
            const tag = typeof pin.etag === 'string' ? pin.etag : undefined
            const s3Path = `/fuzz-bucket/obj${ctx.iteration}`
            const s3 = url.startsWith('s3:')
              ? {region: 'us-east-1', host: `127.0.0.1:${port}`, path: s3Path, versionId: typeof pin.versionId === 'string' ? pin.versionId : undefined, credentials: slot.buffer}
              : undefined
            const target = {
              url: s3 ? `http://127.0.0.1:${port}${s3Path}` : url,
              headers: {},
              ...(tag && !tag.startsWith('W/') ? {etag: tag} : {weakEtag: tag}),
              lastModified: typeof pin.lastModified === 'string' ? pin.lastModified : undefined,
              s3,
            }
            // The script again from its first answer: the thread's GETs meet the same lies.
            srv.next = 0
            srv.log.push('(curl reads)')
            const got = await curlReads({target, name: url, size: obj.size, timeoutMs: TIMEOUT_MS, reads: reads.filter((r) => r.pos + r.len <= obj!.size)})
            let curlChanged = false
            got.forEach((g, i) => {
              const r = reads.filter((x) => x.pos + x.len <= obj!.size)[i]
              if (g.bytes) {
                if (!Buffer.from(g.bytes).equals(object.subarray(r.pos, r.pos + r.len))) failures.push(`curl read ${r.len} at ${r.pos}: wrong bytes`)
                if (curlChanged) failures.push(`curl read ${r.len} at ${r.pos} succeeded after the object was seen changed`)
                outcomes.push(s3 ? 'curl:s3:read' : 'curl:read')
              } else if (g.delegated) {
                if (!s3) failures.push(`curl read ${r.len} at ${r.pos} of an http:// URL left to the owner`)
                outcomes.push('curl:delegated')
              } else {
                const e = g.error!
                if (/the object changed/.test(e.message)) curlChanged = true
                check(`curl read ${r.len} at ${r.pos}`, e.name === 'VdevError' ? new VdevError(e.code as ErrorCode, e.message) : Object.assign(new Error(e.message), {name: e.name}))
              }
            })
          }
        }
        await obj?.close()
        const ms = Date.now() - t0
        // Open and each read: TIMEOUT_MS each (plus a last idle wait and the machine's load).
        if (ms > 8000) failures.push(`the case took ${ms} ms`)
        if (srv.unsigned) failures.push(`${srv.unsigned} s3:// request(s) without a well-formed SigV4 Authorization header`)
        return {
          outcome: [...new Set(outcomes)].sort().join(' '),
          failures,
          steps: [`object ${size} bytes, answers: ${script.answers.join(', ') || '(all ok)'}`, ...srv.log],
        }
      },
      async close() {
        for (const k of ['AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION', 'AWS_PROFILE', 'AWS_ENDPOINT_URL_S3', 'AWS_SESSION_TOKEN'])
          if (saved[k] === undefined) delete process.env[k]
          else process.env[k] = saved[k]
        await curlWorker?.terminate()
        await srv.close()
      },
    }
  },
}

/**
 * An image on a web server, read with single-range GETs (what S3 and every static server answer): the
 * reader's ByteRanges over HTTP(S). docs/remote.md says what it promises; in short:
 *
 * - Opening sends one GET for the first bytes: it gives the object's size (Content-Range) and its ETag.
 *   Every later GET carries If-Match with that ETag (or If-Unmodified-Since with its Last-Modified when
 *   the server gives no strong ETag), and every answer's own ETag is compared: once the object has
 *   changed, every read fails with EIO — a read never mixes bytes of two versions.
 * - Concurrent reads of one range share one GET.
 * - Each GET has an idle timeout; a failed one (reset, refused, 5xx, 429, 408, timeout) is retried after
 *   a jittered exponential back-off until the read's deadline (`timeoutMs`, default 30 s), and then
 *   fails with EIO. The next read tries again: when the server is back, reads work again.
 * - 404/410, 401/403, TLS failures, a server that ignores Range: no retry, one line (exit code 3, or 4
 *   for a server that cannot serve ranges).
 * - Sequential reads grow a read-ahead window (readahead.ts).
 *
 * HTTPS trusts Node's CA store plus NODE_EXTRA_CA_CERTS (read by Node at start-up, in every thread).
 * Serving threads read through the instance their process opened (link.ts).
 */
import * as http from 'node:http'
import * as https from 'node:https'
import type {TransferListItem} from 'node:worker_threads'
import {VdevError, type ErrorCode} from '../core/errors'
import type {FetchStats} from '../core/source'
import type {ByteRanges} from '../format/ranges'
import {parseContentRange, parseEntityTag} from './content-range'
import {offerLink, RECENT_READS, type RangesLink} from './link'
import type {DirectTarget} from './curl'
import {ReadAhead} from './readahead'
import {uriEncode} from './sigv4'
import {isS3, openS3Target, type S3Target} from './s3'
import {CredentialSlot} from './credential-slot'
import {quickAck} from '../sys/quickack'
import {DEFAULT_CACHE_BYTES, RangeCache} from './cache'

export interface RemoteOptions {
  /** Extra request headers (a bearer token …), sent with every GET. */
  headers?: Record<string, string>
  /** How long one read may take, retries included, before it fails (ms; default 30 s). */
  timeoutMs?: number
  /** Pin to this object (a serving thread, or an image opened again): what the first open found. */
  etag?: string
  lastModified?: string
  size?: number
  /** s3:// in a versioned bucket: the version to read (the first answer's `x-amz-version-id`). */
  versionId?: string
  /** Read-ahead for sequential reads (default on). */
  readAhead?: boolean
  /** Keep fetched ranges in this directory (cache.ts); absent: no cache. */
  cacheDir?: string
  /** Bound of the whole cache directory, in bytes (default 10 GiB). */
  cacheBytes?: number
}

export const DEFAULT_TIMEOUT_MS = 30_000
/** The first GET asks for this much: the header and, for small images, more. */
const PROBE_BYTES = 64 << 10
/** Idle time allowed to one GET (no byte received) before it is abandoned and retried. */
const MAX_ATTEMPT_IDLE_MS = 10_000

/** What pins a remote object (HttpObject.identity). */
export interface RemoteIdentity {
  etag?: string
  lastModified?: string
  versionId?: string
}

/** An http://, https:// or s3:// location (s3.ts). */
export function isRemote(location: string): boolean {
  return /^(https?|s3):\/\//i.test(location)
}

/** The URL as messages show it: no user name, password or query string (a presigned URL's signature). */
export function displayUrl(u: URL): string {
  return `${u.protocol}//${u.host}${u.pathname}`
}

/** A failed GET: whether trying again may help. */
class Attempt extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
    readonly code: ErrorCode = 'io',
  ) {
    super(message)
  }
}

export class HttpObject implements ByteRanges {
  readonly synchronous = false
  private readonly fetched = {requests: 0, bytes: 0, retries: 0}
  private cache: RangeCache | undefined
  private readonly agent: http.Agent
  private readonly client: typeof http | typeof https
  private readonly timeoutMs: number
  private readonly headers: Record<string, string>
  private etag: string | undefined
  private weakEtag: string | undefined
  private lastModified: string | undefined
  /**
   * s3:// in a versioned bucket: the version the first answer gave (`x-amz-version-id`). Every later GET names
   * it (`?versionId=`): a new version put over the key is not what this image reads, so it is not a change.
   */
  private versionId: string | undefined
  /** Set once the object is seen to have changed: every read fails from then on. */
  private changed: string | undefined
  /** [0] = 1 once it has: serving threads check it before answering from their slices or the cache (link.ts). */
  private readonly changedFlag = new Int32Array(new SharedArrayBuffer(4))
  /** GETs, bytes and retries the serving threads made themselves (link.ts, curl.ts). */
  private readonly threadCounters = new BigInt64Array(new SharedArrayBuffer(3 * 8))
  /** Where the serving threads' recent reads ended (link.ts: a read near one goes through read-ahead). */
  private readonly recentReads = new Float64Array(new SharedArrayBuffer(RECENT_READS * 8)).fill(-Infinity)
  private readonly inflight = new Map<string, Promise<Buffer>>()
  private probe: {pos: number; data: Buffer} | undefined
  private readonly ahead: ReadAhead | undefined
  /** s3://: the keys the serving threads sign with (made on the first offerLink). */
  private slot: CredentialSlot | undefined
  private closed = false
  size = 0

  private constructor(
    readonly url: URL,
    readonly name: string,
    private readonly opts: RemoteOptions,
    /** An S3 object: the path its requests go to, and their signer. */
    private readonly s3?: S3Target,
  ) {
    this.client = url.protocol === 'https:' ? https : http
    this.agent = new this.client.Agent({keepAlive: true, maxSockets: 16})
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
    this.headers = {...(opts.headers ?? {})}
    if (url.username || url.password) {
      const user = decodeURIComponent(url.username)
      const pass = decodeURIComponent(url.password)
      this.headers.authorization ??= `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`
    }
    if (opts.etag) {
      const t = parseEntityTag(opts.etag)
      if (t && !t.weak) this.etag = t.value
      else this.weakEtag = opts.etag
    }
    this.lastModified = opts.lastModified
    if (s3) this.versionId = opts.versionId
    if (opts.readAhead ?? true) this.ahead = new ReadAhead((len, pos, window) => (window ? this.fetchWindow(len, pos, window) : this.fetch(len, pos)), () => this.size)
  }

  /** GETs, bytes and retries so far (serving threads' own GETs included); with a cache, its hits and misses. */
  get stats(): FetchStats {
    const c = this.cache?.stats
    const d = this.threadCounters
    const fetched = {requests: this.fetched.requests + Number(d[0]), bytes: this.fetched.bytes + Number(d[1]), retries: this.fetched.retries + Number(d[2])}
    return {...fetched, ...(c ? {cacheHits: c.hits, cacheMisses: c.misses} : {})}
  }

  /** What pins the object read (`vdev info`): its ETag, Last-Modified, and in a versioned bucket its version. */
  get identity(): RemoteIdentity {
    const o: RemoteIdentity = {}
    const tag = this.etag ?? this.weakEtag
    if (tag !== undefined) o.etag = tag
    if (this.lastModified) o.lastModified = this.lastModified
    if (this.versionId) o.versionId = this.versionId
    return o
  }

  /** s3:// with temporary keys: how many sets have been loaded (for tests). */
  get credentialLoads(): number {
    return this.s3?.loads ?? 0
  }

  /** What a serving thread needs to read this same object (src/sources, link.ts). */
  get reopen(): Record<string, string | number | boolean> {
    const o: Record<string, string | number | boolean> = {size: this.size, timeoutMs: this.timeoutMs}
    const tag = this.etag ?? this.weakEtag
    if (tag) o.etag = tag
    if (this.lastModified) o.lastModified = this.lastModified
    if (this.versionId) o.versionId = this.versionId
    if (this.opts.headers && Object.keys(this.opts.headers).length) o.headers = JSON.stringify(this.opts.headers)
    return o
  }

  /** Open `location`: one GET of its first bytes gives its size and identity. */
  static async open(location: string, opts: RemoteOptions = {}): Promise<HttpObject> {
    let obj: HttpObject
    if (isS3(location)) {
      const t = await openS3Target(location)
      obj = new HttpObject(t.url, t.name, opts, t)
    } else {
      let url: URL
      try {
        url = new URL(location)
      } catch {
        throw new VdevError('usage', `${location}: not a valid URL`)
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new VdevError('usage', `${location}: only http://, https:// and s3:// URLs are read`)
      obj = new HttpObject(url, displayUrl(url), opts)
    }
    try {
      await obj.open()
    } catch (err) {
      await obj.close()
      throw err
    }
    return obj
  }

  private async open(): Promise<void> {
    const r = await this.retrying(0, PROBE_BYTES - 1, true)
    this.size = r.size
    if (this.opts.size !== undefined && this.opts.size !== r.size)
      throw this.changedError(`its size is ${r.size} bytes, not the ${this.opts.size} it had when it was opened`)
    this.probe = {pos: 0, data: r.data}
    if (this.opts.cacheDir)
      this.cache = RangeCache.open(this.opts.cacheDir, {url: this.s3 ? displayUrl(this.url) + this.s3.path : this.name, tag: this.etag ?? this.weakEtag ?? this.lastModified, size: this.size}, this.opts.cacheBytes ?? DEFAULT_CACHE_BYTES)
  }

  read(len: number, pos: number, into?: Buffer): Promise<Buffer> {
    if (this.closed) return Promise.reject(new VdevError('io', `${this.name}: closed`))
    if (this.changed) return Promise.reject(this.changedError(this.changed))
    if (len === 0) return Promise.resolve(into ? into.subarray(0, 0) : Buffer.alloc(0))
    if (pos + len > this.size)
      return Promise.reject(new VdevError('format', `${this.name}: unexpected end of file at byte ${this.size} (truncated?)`))
    const p = this.probe
    if (p && pos >= p.pos && pos + len <= p.pos + p.data.length) return Promise.resolve(copyOut(Buffer.from(p.data.subarray(pos - p.pos, pos - p.pos + len)), into))
    const cache = this.cache
    const hit = cache?.get(pos, len)
    if (hit) return Promise.resolve(copyOut(hit, into))
    return (this.ahead ? this.ahead.read(len, pos) : this.fetch(len, pos)).then((b) => {
      cache?.put(pos, b)
      // A view of a read-ahead window (shared memory): the caller gets its own bytes.
      return copyOut(b.buffer instanceof SharedArrayBuffer && !(into && into.length >= b.length) ? Buffer.from(b) : b, into)
    })
  }

  /** Whether serving threads have a cache to decode ahead from (reader.ts threadLink). */
  get hasLocal(): boolean {
    return this.cache !== undefined
  }

  /** A serving thread's link: its reads are fetched here (link.ts); it reads and fills the cache itself. */
  offerLink(): {value: RangesLink; transfer: TransferListItem[]} {
    // The threads GET random reads themselves (curl.ts) with the same URL, headers and pin; s3:// signed
    // there too, with the keys this thread loads and publishes (credential-slot.ts).
    const pin = {etag: this.etag, weakEtag: this.weakEtag, lastModified: this.lastModified}
    const s3 = this.s3
    const direct: DirectTarget = s3
      ? {
          url: `${this.url.protocol}//${this.url.host}${s3.path}`,
          headers: this.headers,
          ...pin,
          s3: {region: s3.region, host: this.url.host, path: s3.path, versionId: this.versionId, credentials: this.credentialSlot(s3).buffer},
        }
      : {url: urlWithoutUser(this.url), headers: this.headers, ...pin}
    return offerLink(
      {
        name: this.name,
        size: this.size,
        timeoutMs: this.timeoutMs,
        changed: this.changedFlag.buffer as SharedArrayBuffer,
        cache: this.cache?.sharing,
        direct,
        counters: this.threadCounters.buffer as SharedArrayBuffer,
        recent: this.recentReads.buffer as SharedArrayBuffer,
        holders: this.ahead?.pool.holders.buffer as SharedArrayBuffer | undefined,
      },
      (len, pos, max) => this.readForLink(len, pos, max),
      this.ahead?.pool,
    )
  }

  /** The keys serving threads sign their own S3 GETs with: published now and each time they are loaded again. */
  private credentialSlot(s3: S3Target): CredentialSlot {
    if (!this.slot) {
      const slot = CredentialSlot.create()
      const publish = (): void => {
        if (!slot.publish(s3.credentials())) console.error(`vdev: ${this.name}: AWS credentials too long to share with the serving threads; their reads go through the main thread`)
      }
      s3.credentials(publish)
      publish()
      this.slot = slot
    }
    return this.slot
  }

  /**
   * A serving thread's read (link.ts), which has looked in the cache already: [pos, pos+len), or up to
   * `max` bytes from pos when a read-ahead window holds them.
   */
  private readForLink(len: number, pos: number, max: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(new VdevError('io', `${this.name}: closed`))
    if (this.changed) return Promise.reject(this.changedError(this.changed))
    if (len === 0) return Promise.resolve(Buffer.alloc(0))
    if (pos + len > this.size)
      return Promise.reject(new VdevError('format', `${this.name}: unexpected end of file at byte ${this.size} (truncated?)`))
    const p = this.probe
    if (p && pos >= p.pos && pos + len <= p.pos + p.data.length) return Promise.resolve(Buffer.from(p.data.subarray(pos - p.pos, pos - p.pos + len)))
    return this.ahead ? this.ahead.read(len, pos, max) : this.fetch(len, pos)
  }

  readSync(): Buffer {
    throw new VdevError('internal', `${this.name}: synchronous reads go through a link (src/remote/link.ts)`)
  }

  /** One GET of exactly [pos, pos+len), shared by concurrent reads of the same range. */
  fetch(len: number, pos: number): Promise<Buffer> {
    const key = `${pos}:${len}`
    const pending = this.inflight.get(key)
    // Joiners get their own copy: a caller may hand its buffer to a worker (transfer detaches it).
    if (pending) return pending.then((b) => Buffer.from(b))
    const p = this.retrying(pos, pos + len - 1, false).then((r) => r.data)
    this.inflight.set(key, p)
    void p.then(
      () => this.inflight.delete(key),
      () => this.inflight.delete(key),
    )
    return p
  }

  /**
   * A read-ahead window: [pos, pos+len) into `window.into`, `window.arrived` told how much has landed as it
   * streams in; a retry asks for the rest only (what landed stays as it is).
   */
  private async fetchWindow(len: number, pos: number, window: {into: Buffer; arrived: (n: number) => void}): Promise<Buffer> {
    let landed = 0
    await this.retrying(pos, pos + len - 1, false, () => ({
      into: window.into.subarray(landed),
      arrived: (n: number) => window.arrived(landed + n),
      // The attempt's bytes so far stay: the next one starts where it stopped.
      ended: (n: number) => (landed += n),
      first: pos + landed,
    }))
    return window.into
  }

  /**
   * GET [first, last] until it works, a failure that retrying cannot mend, or the deadline. With `target`,
   * each attempt GETs from `target().first` into `target().into` (a read-ahead window: fetchWindow).
   */
  private async retrying(first: number, last: number, probing: boolean, target?: () => Target): Promise<{data: Buffer; size: number}> {
    const deadline = Date.now() + this.timeoutMs
    for (let n = 0; ; n++) {
      if (this.closed) throw new VdevError('io', `${this.name}: closed`)
      const left = deadline - Date.now()
      try {
        const t = target?.()
        return await this.get(t ? t.first : first, last, probing, Math.max(1, Math.min(MAX_ATTEMPT_IDLE_MS, left)), t)
      } catch (err) {
        if (!(err instanceof Attempt)) throw err
        if (!err.retry) throw new VdevError(err.code, err.message)
        // Full jitter (AWS's back-off advice): a random wait up to 100 ms · 2^n, at most 2 s.
        const wait = Math.random() * Math.min(2000, 100 * 2 ** n)
        if (Date.now() + wait >= deadline)
          throw new VdevError('io', `${this.name}: bytes ${first}-${last}: no answer within ${this.timeoutMs / 1000} s (${err.message})`)
        this.fetched.retries++
        await new Promise((resolve) => setTimeout(resolve, wait))
      }
    }
  }

  private changedError(why: string): VdevError {
    return new VdevError('io', `${this.name}: the object changed since it was opened (${why}); reads fail rather than mix two versions`)
  }

  private markChanged(why: string): Attempt {
    this.changed ??= why
    Atomics.store(this.changedFlag, 0, 1)
    this.ahead?.clear()
    return new Attempt(this.changedError(this.changed).message, false)
  }

  /** One GET. Resolves with exactly the bytes asked for (clipped to the object when probing). */
  private get(first: number, last: number, probing: boolean, idleMs: number, target?: Target): Promise<{data: Buffer; size: number}> {
    const headers: Record<string, string> = {...this.headers, range: `bytes=${first}-${last}`, 'accept-encoding': 'identity'}
    if (this.etag) headers['if-match'] = this.etag
    else if (this.lastModified) headers['if-unmodified-since'] = this.lastModified
    // S3 takes the version in the query (signed with the request); uriEncode, as SigV4's canonical form has it.
    const query = this.s3 && this.versionId ? `versionId=${uriEncode(this.versionId)}` : ''
    this.s3?.sign('GET', headers, query)
    this.fetched.requests++
    return new Promise((resolve, reject) => {
      let settled = false
      // Bytes of the answer landed so far, of `expect`.
      let at = 0
      let expect = -1
      const fail = (e: Attempt): void => {
        if (settled) return
        settled = true
        req.destroy()
        if (target && at > 0) {
          target.ended(at)
          // Every byte landed before the failure (the connection closed before its end was seen).
          if (at === expect) return resolve({data: target.into, size: this.size})
        }
        reject(e)
      }
      const opts: http.RequestOptions = {method: 'GET', headers, agent: this.agent}
      if (this.s3) opts.path = query ? `${this.s3.path}?${query}` : this.s3.path
      const req = this.client.request(this.url, opts, (res) => {
        // The head is in: acknowledge it now, or a server without TCP_NODELAY holds a short body ~40 ms.
        quickAck(res.socket)
        const status = res.statusCode ?? 0
        const drop = (e: Attempt): void => {
          res.resume()
          fail(e)
        }
        if (status === 412) return drop(this.markChanged('HTTP 412: its ETag no longer matches'))
        if (this.s3 && status >= 300 && status < 500 && status !== 408 && status !== 416 && status !== 429) {
          // S3 says why in an XML body (<Code>NoSuchKey</Code>): read a little of it for the message.
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (d: string) => {
            if (body.length < 4096) body += d
          })
          res.on('error', () => fail(new Attempt(`${this.name}: HTTP ${status}`, true)))
          res.on('end', () => fail(this.s3Error(status, body, header(res.headers['x-amz-bucket-region']), query !== '')))
          return
        }
        if (status === 404 || status === 410) return drop(new Attempt(`${this.name}: not found (HTTP ${status})`, false))
        if (status === 401 || status === 403)
          return drop(new Attempt(`${this.name}: access denied (HTTP ${status})${status === 401 ? ': the server wants credentials (--header)' : ''}`, false))
        if (status === 408 || status === 429 || status >= 500) return drop(new Attempt(`HTTP ${status}`, true))
        const tag = parseEntityTag(header(res.headers.etag))
        const modified = header(res.headers['last-modified'])
        const pinned = this.etag ?? this.weakEtag
        if (pinned !== undefined && tag && tag.value !== pinned) return drop(this.markChanged(`ETag ${pinned} → ${tag.value}`))
        if (pinned === undefined && this.lastModified && modified && modified !== this.lastModified)
          return drop(this.markChanged(`Last-Modified ${this.lastModified} → ${modified}`))
        const cr = parseContentRange(header(res.headers['content-range']))
        if (status === 416) {
          // Past the end: on the first GET, an empty object ("bytes */0"); later, an object that shrank.
          if (probing && cr && cr.first === undefined && cr.complete !== undefined) {
            this.pin(tag, modified, header(res.headers['x-amz-version-id']))
            res.resume()
            settled = true
            return resolve({data: Buffer.alloc(0), size: cr.complete})
          }
          return drop(pinned !== undefined || this.lastModified ? this.markChanged('HTTP 416: it is shorter') : new Attempt(`${this.name}: HTTP 416 for bytes ${first}-${last}`, false))
        }
        if (status === 200 && probing && header(res.headers['content-length']) === '0') {
          // An empty object: some servers (nginx) answer a range of it with an empty 200.
          this.pin(tag, modified, header(res.headers['x-amz-version-id']))
          res.resume()
          settled = true
          return resolve({data: Buffer.alloc(0), size: 0})
        }
        if (status === 200)
          return drop(new Attempt(`${this.name}: the server ignores Range requests (HTTP 200 for bytes ${first}-${last}); vdev reads images only from servers that serve ranges`, false, 'unsupported'))
        if (status >= 300 && status < 400)
          return drop(new Attempt(`${this.name}: HTTP ${status} redirect${res.headers.location ? ' to ' + displayLocation(res.headers.location, this.url) : ''} (not followed: name the final URL)`, false))
        if (status !== 206) return drop(new Attempt(`${this.name}: HTTP ${status} ${res.statusMessage ?? ''}`.trim(), false))
        if (!cr || cr.first === undefined || cr.last === undefined || cr.complete === undefined)
          return drop(new Attempt(`${this.name}: HTTP 206 without a usable Content-Range (${JSON.stringify(header(res.headers['content-range']) ?? null).slice(0, 80)})`, true))
        const size = cr.complete
        if (!probing && size !== this.size) return drop(this.markChanged(`its size went from ${this.size} to ${size} bytes`))
        const want = probing ? Math.min(last, size - 1) : last
        if (cr.first !== first || cr.last !== want)
          return drop(new Attempt(`${this.name}: asked for bytes ${first}-${want}, the server sent ${cr.first}-${cr.last}`, true))
        const len = want - first + 1
        const declared = header(res.headers['content-length'])
        if (declared !== undefined && declared !== String(len)) return drop(new Attempt(`${this.name}: Content-Length ${declared} for ${len} bytes`, true))
        if (probing) this.pin(tag, modified, header(res.headers['x-amz-version-id']))
        const data = target ? target.into : Buffer.allocUnsafeSlow(len)
        expect = len
        res.on('data', (d: Buffer) => {
          if (settled) return
          if (at + d.length > len) {
            // Not an answer cut short but a wrong one: the next attempt starts over.
            at = 0
            return fail(new Attempt(`${this.name}: more bytes than the ${len} of bytes ${first}-${want}`, true))
          }
          d.copy(data, at)
          at += d.length
          this.fetched.bytes += d.length
          target?.arrived(at)
        })
        res.on('end', () => {
          if (settled) return
          if (at !== len) return fail(new Attempt(`${this.name}: the answer ended after ${at} of ${len} bytes`, true))
          settled = true
          resolve({data, size})
        })
        res.on('error', (err) => fail(new Attempt(`${this.name}: ${netWhy(err)}`, true)))
        res.on('aborted', () => fail(new Attempt(`${this.name}: the connection closed mid-answer`, true)))
      })
      req.setNoDelay(true)
      req.setTimeout(idleMs, () => fail(new Attempt(`no data for ${(idleMs / 1000).toFixed(1)} s`, true)))
      req.on('error', (err) => {
        const code = (err as NodeJS.ErrnoException).code ?? ''
        if (/CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO|ALTNAME/.test(code)) fail(new Attempt(`${this.name}: TLS: ${code} (${err.message})`, false))
        else fail(new Attempt(netWhy(err), true))
      })
      req.end()
    })
  }

  /** An S3 error answer as one line (no retry): the S3 code, and what to check. */
  private s3Error(status: number, body: string, bucketRegion: string | undefined, versioned: boolean): Attempt {
    const code = /<Code>([A-Za-z0-9.]{1,64})<\/Code>/.exec(body)?.[1]
    const what = `HTTP ${status}${code ? ' ' + code : ''}`
    // Once the first answer pinned the object's ETag: a GET of a version needs s3:GetObjectVersion, which a
    // policy granting s3:GetObject (a public-read bucket's too) does not give. The ETag is then the pin, as
    // in a bucket without versioning, and the read is tried again without the version (refused again, it
    // says so below). Not when opening a version the user named (--version-id): without it the newest would
    // be read, and nothing would pin the one asked for.
    const pinned = this.etag !== undefined || this.weakEtag !== undefined
    if (versioned && pinned && (status === 401 || status === 403)) {
      this.versionId = undefined
      return new Attempt(`${this.name}: a GET naming the version: ${what}`, true)
    }
    // The version this image reads was deleted (not merely superseded): every read fails from now on.
    if (this.versionId && (code === 'NoSuchVersion' || (status === 404 && code === 'NoSuchKey'))) {
      if (!pinned) return new Attempt(`${this.name}: no version ${JSON.stringify(this.versionId.slice(0, 80))} of it (${what})`, false)
      return this.markChanged(`its version ${this.versionId} is gone: ${what}`)
    }
    if (status === 404)
      return new Attempt(`${this.name}: ${code === 'NoSuchBucket' ? 'no such bucket' : 'not found'} (${what})`, false)
    if (status === 401 || status === 403) return new Attempt(`${this.name}: access denied (${what}): ${this.s3!.credentialsFrom}`, false)
    if (status === 301 || (status === 400 && code === 'AuthorizationHeaderMalformed'))
      return new Attempt(`${this.name}: the bucket is in another region (${what}${bucketRegion && /^[a-z0-9-]{1,40}$/.test(bucketRegion) ? `, it is in ${bucketRegion}` : ''}): set AWS_REGION`, false)
    return new Attempt(`${this.name}: ${what}`, false)
  }

  /** Remember the identity the first answer gave (unless pinned already): its ETag, date, S3 version. */
  private pin(tag: {value: string; weak: boolean} | undefined, modified: string | undefined, version: string | undefined): void {
    if (this.etag === undefined && this.weakEtag === undefined && tag) {
      if (tag.weak) this.weakEtag = tag.value
      else this.etag = tag.value
    }
    if (this.lastModified === undefined && modified) this.lastModified = modified
    // "null" is the version of an object put while versioning was off or suspended: the next put replaces
    // it, so it pins nothing the ETag does not.
    if (this.s3 && this.versionId === undefined && version && version !== 'null' && version.length <= 1024) this.versionId = version
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.ahead?.clear()
    this.s3?.close()
    this.agent.destroy()
  }
}

function urlWithoutUser(u: URL): string {
  const c = new URL(u.href)
  c.username = ''
  c.password = ''
  return c.href
}

function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}

function netWhy(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code
  return code ? `${code}` : err.message
}

function displayLocation(loc: string, base: URL): string {
  try {
    return displayUrl(new URL(loc, base))
  } catch {
    return '(unreadable Location)'
  }
}

/** Where an attempt of a read-ahead window's GET starts and lands (HttpObject.fetchWindow). */
interface Target {
  first: number
  into: Buffer
  arrived: (n: number) => void
  ended: (n: number) => void
}

function copyOut(b: Buffer, into: Buffer | undefined): Buffer {
  if (into && into.length >= b.length) {
    b.copy(into, 0)
    return into.subarray(0, b.length)
  }
  return b
}

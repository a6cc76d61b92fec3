/**
 * Synchronous range GETs on a serving thread, through libcurl (koffi FFI), as nbdkit's curl plugin does:
 * the thread blocks in curl_easy_perform on its own keep-alive connection, so a random read costs one GET
 * and no hop to the thread that opened the image (link.ts). s3:// too: each GET signed here (SigV4, s3.ts's
 * signS3) with the keys the owner publishes in shared memory (credential-slot.ts); an S3 error answer,
 * or no fresh keys, leaves the read to the owner (`Delegate`), whose GET says what went wrong. When
 * libcurl (libcurl.so.4: Debian's libcurl4; macOS's system libcurl.4.dylib; Windows has none) or one of
 * its entry points is missing, `CurlRanges.open` returns undefined and every read goes through the link
 * as before. VDEV_REMOTE_CURL=0 turns it off.
 *
 * It keeps what http.ts promises (docs/remote.md): If-Match with the pinned ETag (or If-Unmodified-Since),
 * each answer's ETag and size compared with the pin (a change → EIO from then on, the shared flag set), a
 * per-read deadline with jittered exponential back-off between retries, the same one-line errors, no
 * redirects followed, HTTPS trusting exactly Node's CA store plus NODE_EXTRA_CA_CERTS (handed to curl as
 * PEM, the system's directory unset).
 */
import * as fs from 'node:fs'
import * as tls from 'node:tls'
import type * as Koffi from 'koffi' with {'resolution-mode': 'import'}
import {VdevError, type ErrorCode} from '../core/errors'
import {parseContentRange, parseEntityTag} from './content-range'
import {CredentialSlot} from './credential-slot'
import {signS3} from './s3'
import {uriEncode} from './sigv4'
import {quickAckAvailable, quickAckFd} from '../sys/quickack'

/** What a thread needs to GET the object itself: the owner's URL, headers and pin. */
export interface DirectTarget {
  /** The URL without user name and password (those are in `headers` as Basic authentication). */
  url: string
  headers: Record<string, string>
  /** Strong ETag (sent as If-Match), or weak ETag / Last-Modified (compared, If-Unmodified-Since). */
  etag?: string
  weakEtag?: string
  lastModified?: string
  /** s3://: `url` is the endpoint and `path`; every GET is signed (the URL's query names `versionId`). */
  s3?: {region: string; host: string; path: string; versionId?: string; credentials: SharedArrayBuffer}
}

/**
 * Thrown by CurlRanges.read when the read is better left to the owner (link.ts): an S3 answer whose error
 * the owner's GET explains (and acts on: a deleted version, a refused one), or no fresh keys to sign with.
 */
export class Delegate extends Error {}

/** Keys this close to their expiration are not signed with (the owner loads new ones well before then). */
const EXPIRY_MARGIN_MS = 1000

/**
 * A GET of fewer than HELD_BELOW bytes that takes HELD_MS or more may have been held by the server's Nagle
 * and this kernel's delayed acknowledgement (src/sys/quickack.ts: Linux delays it 40 ms at least).
 */
const HELD_MS = 30
const HELD_BELOW = 64 << 10

/** Idle time allowed to one GET before it is abandoned and retried (as http.ts). */
const MAX_ATTEMPT_IDLE_MS = 10_000

// curl.h
const CURLOPT_URL = 10002
const CURLOPT_PROXY = 10004
const CURLOPT_RANGE = 10007
const CURLOPT_HTTPHEADER = 10023
const CURLOPT_WRITEFUNCTION = 20011
const CURLOPT_HEADERFUNCTION = 20079
const CURLOPT_SOCKOPTFUNCTION = 20148
const CURLOPT_PATH_AS_IS = 234
const CURLINFO_ACTIVESOCKET = 0x500000 + 44
const CURLOPT_NOSIGNAL = 99
const CURLOPT_LOW_SPEED_LIMIT = 19
const CURLOPT_LOW_SPEED_TIME = 20
const CURLOPT_TIMEOUT_MS = 155
const CURLOPT_CONNECTTIMEOUT_MS = 156
const CURLOPT_HTTP_VERSION = 84
const CURL_HTTP_VERSION_1_1 = 2
const CURLOPT_BUFFERSIZE = 98
const CURLOPT_CAINFO = 10065
const CURLOPT_CAPATH = 10097
const CURLOPT_CAINFO_BLOB = 40309
const CURL_BLOB_COPY = 1
const CURLOPT_PROTOCOLS_STR = 10318
const CURLINFO_RESPONSE_CODE = 0x200000 + 2
const CURLH_HEADER = 1
const CURLE_WRITE_ERROR = 23
/** curl errors that trying again cannot mend: TLS set-up and verification. */
const CURLE_TLS = new Set([35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91, 98])

interface Curl {
  koffi: typeof Koffi
  init: () => unknown
  setopt: (h: unknown, opt: number, ...typed: unknown[]) => number
  perform: (h: unknown) => number
  cleanup: (h: unknown) => void
  getinfoLong: (h: unknown, info: number, out: number[]) => number
  sockoptProto: Koffi.TypeObject
  /** CURLINFO_ACTIVESOCKET (curl_socket_t: an int here) — valid once a transfer is over. */
  getinfoSocket: (h: unknown, info: number, out: number[]) => number
  header: (h: unknown, name: string, index: number, origin: number, request: number, out: unknown[]) => number
  slistAppend: (l: unknown, s: string) => unknown
  slistFree: (l: unknown) => void
  strerror: (code: number) => string
  writeProto: Koffi.TypeObject
  /** memcpy(dst, src, n): a write callback's bytes into a Buffer without wrapping them in a JS view. */
  memcpy: ((dst: Uint8Array, src: unknown, n: number) => unknown) | undefined
  /** Where `value` is in struct curl_header. */
  headerValueOffset: number
}

let loaded: Curl | null | undefined

/** libcurl through koffi, once per thread; null when it cannot be loaded here. */
function curl(): Curl | null {
  if (loaded !== undefined) return loaded
  loaded = null
  if (process.env.VDEV_REMOTE_CURL === '0') return null
  const names = process.platform === 'darwin' ? ['libcurl.4.dylib'] : process.platform === 'win32' ? [] : ['libcurl.so.4']
  for (const name of names) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const koffi: typeof Koffi = require('koffi')
      const lib = koffi.load(name)
      const headerType = koffi.struct('vdev_curl_header', {name: 'const char *', value: 'const char *', amount: 'size_t', index: 'size_t', origin: 'unsigned int', anchor: 'void *'})
      koffi.struct('vdev_curl_blob', {data: 'void *', len: 'size_t', flags: 'unsigned int'})
      const globalInit = lib.func('int curl_global_init(long flags)')
      if (globalInit(3) !== 0) return null
      const getinfo = lib.func('int curl_easy_getinfo(void *curl, int info, _Out_ long *out)')
      const getinfoInt = lib.func('int curl_easy_getinfo(void *curl, int info, _Out_ int *out)')
      loaded = {
        koffi,
        init: lib.func('void *curl_easy_init()'),
        setopt: lib.func('int curl_easy_setopt(void *curl, int option, ...)'),
        perform: lib.func('int curl_easy_perform(void *curl)'),
        cleanup: lib.func('void curl_easy_cleanup(void *curl)'),
        getinfoLong: (h, info, out) => getinfo(h, info, out),
        sockoptProto: koffi.proto('int vdev_curl_sockopt(void *clientp, int fd, int purpose)'),
        getinfoSocket: (h, info, out) => getinfoInt(h, info, out),
        header: lib.func('int curl_easy_header(void *curl, const char *name, size_t index, unsigned int origin, int request, _Out_ void **hout)'),
        slistAppend: lib.func('void *curl_slist_append(void *list, const char *s)'),
        slistFree: lib.func('void curl_slist_free_all(void *list)'),
        strerror: lib.func('const char *curl_easy_strerror(int code)'),
        writeProto: koffi.proto('size_t vdev_curl_write(void *ptr, size_t size, size_t nmemb, void *userdata)'),
        memcpy: libcMemcpy(koffi),
        headerValueOffset: koffi.offsetof(headerType, 'value'),
      }
      return loaded
    } catch {
      loaded = null
    }
  }
  return loaded
}

/** The C library's memcpy, or undefined where it is not found under that name (then a view is copied). */
function libcMemcpy(koffi: typeof Koffi): Curl['memcpy'] {
  const names = process.platform === 'darwin' ? ['libSystem.B.dylib'] : ['libc.so.6']
  for (const name of names) {
    try {
      return koffi.load(name).func('void *memcpy(void *dst, void *src, size_t n)') as Curl['memcpy']
    } catch {
      // not here
    }
  }
  return undefined
}

/** Whether this thread can use libcurl (VDEV_REMOTE_CURL=0 says no). */
export function curlAvailable(): boolean {
  return curl() !== null
}

/** PEM of the CAs Node trusts: its bundled store plus NODE_EXTRA_CA_CERTS. */
function trustedPem(): Buffer {
  let pem = tls.rootCertificates.join('\n') + '\n'
  const extra = process.env.NODE_EXTRA_CA_CERTS
  if (extra) {
    try {
      pem += fs.readFileSync(extra, 'utf8') + '\n'
    } catch {
      // Node warns about an unreadable file at start-up and goes on without it; so does this.
    }
  }
  return Buffer.from(pem)
}

/** A failed GET: whether trying again may help. */
class Attempt extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
    readonly code: ErrorCode = 'io',
    readonly changed = false,
    /** Try again at once (no back-off): the request itself changed. */
    readonly now = false,
  ) {
    super(message)
  }
}

/** One serving thread's connection to the object. */
export class CurlRanges {
  private handle: unknown
  private headerList: unknown
  private readonly cb: bigint
  private readonly headerCb: bigint | undefined
  private readonly sockoptCb: bigint | undefined
  /** The socket curl made last: the one a transfer uses (one connection per handle). */
  private fd = -1
  /** Whether answers are acknowledged at once (headerLine): once a short one seemed held (HELD_MS). */
  private quick = false
  /** Whether this GET's answer has been acknowledged at once. */
  private acked = false
  private readonly sleeper = new Int32Array(new SharedArrayBuffer(4))
  /** The transfer being received: where its bytes go. */
  private data: Buffer = Buffer.alloc(0)
  private at = 0
  private status = 0
  private refused = ''
  private retries = 0
  /** The per-GET options as last set (a koffi call each: set only when they change, i.e. on retries). */
  private setTimeout = -1
  private setIdle = -1
  /** s3://: the owner's keys, the version this thread names (dropped when refused), the URL as last set. */
  private slot: CredentialSlot | undefined
  private versionId: string | undefined
  private setUrl = ''
  private closed = false

  private constructor(
    private readonly c: Curl,
    private readonly target: DirectTarget,
    private readonly name: string,
    private readonly size: number,
    private readonly timeoutMs: number,
    private readonly changed: Int32Array,
    private readonly onBytes: (requests: number, bytes: number, retries: number) => void,
  ) {
    this.cb = c.koffi.register((ptr: unknown, size: number, nmemb: number) => this.received(ptr, size * nmemb), c.koffi.pointer(c.writeProto))
    if (quickAckAvailable()) {
      this.headerCb = c.koffi.register((_ptr: unknown, size: number, nmemb: number) => this.headerLine(size * nmemb), c.koffi.pointer(c.writeProto))
      // The socket of a connection being made (curl's getinfo names the one in use only once a transfer is
      // over: after each GET in quick mode, that one is taken instead — with IPv4 and IPv6 tried at once,
      // the last socket made may be the one that lost).
      this.sockoptCb = c.koffi.register((_p: unknown, fd: number) => ((this.fd = fd), 0), c.koffi.pointer(c.sockoptProto))
    }
    try {
      this.setUp()
    } catch (err) {
      // Nothing registered or allocated is left behind (open() then reads through the link).
      this.close()
      throw err
    }
  }

  private setUp(): void {
    const c = this.c
    const target = this.target
    this.handle = c.init()
    if (!this.handle) throw new Error('curl_easy_init failed')
    const h = this.handle
    const set = (opt: number, type: string, v: unknown): void => {
      const rc = c.setopt(h, opt, type, v)
      if (rc !== 0) throw new Error(`curl_easy_setopt(${opt}): ${c.strerror(rc)}`)
    }
    set(CURLOPT_NOSIGNAL, 'long', 1)
    set(CURLOPT_HTTP_VERSION, 'long', CURL_HTTP_VERSION_1_1)
    set(CURLOPT_BUFFERSIZE, 'long', 256 << 10)
    set(CURLOPT_WRITEFUNCTION, 'void *', this.cb)
    if (this.sockoptCb !== undefined) set(CURLOPT_SOCKOPTFUNCTION, 'void *', this.sockoptCb)
    set(CURLOPT_URL, 'const char *', target.url)
    this.setUrl = target.url
    if (target.s3) {
      this.slot = CredentialSlot.attach(target.s3.credentials)
      this.versionId = target.s3.versionId
      // An S3 key may hold `.` and `..` segments: sent as signed, not collapsed (a WHATWG URL is already).
      set(CURLOPT_PATH_AS_IS, 'long', 1)
    }
    set(CURLOPT_PROTOCOLS_STR, 'const char *', 'http,https')
    // As Node's client: no proxy from http_proxy/HTTPS_PROXY/ALL_PROXY (libcurl would use them).
    set(CURLOPT_PROXY, 'const char *', '')
    // An idle GET (no byte for LOW_SPEED_TIME s) is abandoned: curl counts in whole seconds.
    set(CURLOPT_LOW_SPEED_LIMIT, 'long', 1)
    if (target.url.startsWith('https:')) {
      const pem = trustedPem()
      set(CURLOPT_CAINFO, 'const char *', null)
      set(CURLOPT_CAPATH, 'const char *', null)
      set(CURLOPT_CAINFO_BLOB, 'vdev_curl_blob *', {data: pem, len: pem.length, flags: CURL_BLOB_COPY})
    }
    // http(s): the same headers every GET. s3://: a new signed list each GET (s3Request).
    if (!target.s3) {
      this.headerList = this.slist(this.baseHeaders())
      if (this.headerList) set(CURLOPT_HTTPHEADER, 'void *', this.headerList)
    }
  }

  private baseHeaders(): Record<string, string> {
    const t = this.target
    const hdrs: Record<string, string> = {...t.headers, 'accept-encoding': 'identity'}
    if (t.etag) hdrs['if-match'] = t.etag
    else if (t.lastModified) hdrs['if-unmodified-since'] = t.lastModified
    return hdrs
  }

  private slist(hdrs: Record<string, string>): unknown {
    let list: unknown = null
    for (const [k, v] of Object.entries(hdrs)) {
      const next = this.c.slistAppend(list, `${k}: ${v}`)
      if (!next) {
        if (list) this.c.slistFree(list)
        throw new Error('curl_slist_append failed')
      }
      list = next
    }
    return list
  }

  /**
   * s3://: this GET's URL and signed headers (the range among them: it is signed), set on the handle; the
   * previous list freed. Delegate when there are no keys to sign with that will last the GET.
   */
  private s3Request(first: number, last: number): void {
    const s3 = this.target.s3!
    const cred = this.slot!.read()
    if (!cred) throw new Delegate('no AWS keys published for the serving threads')
    if (cred.keys && cred.expiresAt !== undefined && cred.expiresAt - EXPIRY_MARGIN_MS <= Date.now()) throw new Delegate('the AWS keys are about to expire')
    const query = this.versionId ? `versionId=${uriEncode(this.versionId)}` : ''
    const url = query ? `${this.target.url}?${query}` : this.target.url
    if (url !== this.setUrl) {
      const rc = this.c.setopt(this.handle, CURLOPT_URL, 'const char *', url)
      if (rc !== 0) throw new Delegate(`curl_easy_setopt(URL): ${this.c.strerror(rc)}`)
      this.setUrl = url
    }
    const hdrs = this.baseHeaders()
    hdrs.range = `bytes=${first}-${last}`
    if (cred.keys) signS3(hdrs, {method: 'GET', path: s3.path, query, region: s3.region, host: s3.host}, cred.keys)
    const list = this.slist(hdrs)
    this.c.setopt(this.handle, CURLOPT_HTTPHEADER, 'void *', list)
    if (this.headerList) this.c.slistFree(this.headerList)
    this.headerList = list
  }

  /**
   * A thread's direct client, or undefined where libcurl cannot be used (then reads go through the link).
   * `onBytes` adds to the owner's counters.
   */
  static open(
    target: DirectTarget,
    o: {name: string; size: number; timeoutMs: number; changed: Int32Array; onBytes: (requests: number, bytes: number, retries: number) => void},
  ): CurlRanges | undefined {
    const c = curl()
    if (!c) return undefined
    try {
      return new CurlRanges(c, target, o.name, o.size, o.timeoutMs, o.changed, o.onBytes)
    } catch {
      return undefined
    }
  }

  /**
   * libcurl's header callback, once per line of the answer's head: at the first, acknowledge what has
   * arrived at once (TCP_QUICKACK). A server that writes the head and the body separately without
   * TCP_NODELAY — Ceph RGW's default (beast `tcp_nodelay` off) — holds a body shorter than a segment until
   * the head is acknowledged, and Linux delays that acknowledgement up to 40 ms: ~42 ms for every random
   * read (docs/remote.md, "Delayed acknowledgements").
   */
  private headerLine(n: number): number {
    if (!this.acked) {
      this.acked = true
      quickAckFd(this.fd)
    }
    return n
  }

  /** libcurl's write callback: the body of the answer, piece by piece. Returning less than `n` aborts. */
  private received(ptr: unknown, n: number): number {
    if (this.status === 0) {
      const out = [0]
      this.c.getinfoLong(this.handle, CURLINFO_RESPONSE_CODE, out)
      this.status = out[0]
    }
    // Only a 206's body is wanted (the rest is a message vdev does not show): stop the transfer.
    if (this.status !== 206) return 0
    if (this.at + n > this.data.length) {
      this.refused = `more bytes than the ${this.data.length} asked for`
      return 0
    }
    if (n > 0) {
      // One native copy; wrapping curl's memory in an external ArrayBuffer per callback cost GC work.
      if (this.c.memcpy) this.c.memcpy(this.data.subarray(this.at, this.at + n), ptr, n)
      else Buffer.from(this.c.koffi.view(ptr, n)).copy(this.data, this.at)
    }
    this.at += n
    return n
  }

  private header(name: string): string | undefined {
    const out: unknown[] = [null]
    if (this.c.header(this.handle, name, 0, CURLH_HEADER, -1, out) !== 0 || !out[0]) return undefined
    // Only the value (struct curl_header's second field): no JS string for the name, no object.
    return this.c.koffi.decode(out[0], this.c.headerValueOffset, 'const char *') as string
  }

  /** [pos, pos+len) of the object (in `into` when it holds len bytes), retried until the read's deadline. */
  read(len: number, pos: number, into?: Buffer): Buffer {
    const deadline = Date.now() + this.timeoutMs
    const first = pos
    const last = pos + len - 1
    for (let n = 0; ; n++) {
      if (Atomics.load(this.changed, 0) !== 0) throw new VdevError('io', `${this.name}: the object changed since it was opened; reads fail rather than mix two versions`)
      // The first attempt has the whole timeout (the same value every time: no setopt for it).
      const left = n === 0 ? this.timeoutMs : deadline - Date.now()
      try {
        return this.get(first, last, Math.max(1, left), into)
      } catch (err) {
        if (!(err instanceof Attempt)) throw err
        if (err.changed) Atomics.store(this.changed, 0, 1)
        if (!err.retry) throw new VdevError(err.code, err.message)
        if (err.now) continue
        const wait = Math.random() * Math.min(2000, 100 * 2 ** n)
        if (Date.now() + wait >= deadline) throw new VdevError('io', `${this.name}: bytes ${first}-${last}: no answer within ${this.timeoutMs / 1000} s (${err.message})`)
        this.retries++
        Atomics.wait(this.sleeper, 0, 0, wait)
      }
    }
  }

  private get(first: number, last: number, leftMs: number, into: Buffer | undefined): Buffer {
    const c = this.c
    const h = this.handle
    const len = last - first + 1
    if (this.target.s3) this.s3Request(first, last)
    else c.setopt(h, CURLOPT_RANGE, 'const char *', `${first}-${last}`)
    const timeout = Math.ceil(leftMs)
    if (timeout !== this.setTimeout) {
      c.setopt(h, CURLOPT_TIMEOUT_MS, 'long', timeout)
      this.setTimeout = timeout
    }
    const idle = Math.ceil(Math.min(leftMs, MAX_ATTEMPT_IDLE_MS))
    if (idle !== this.setIdle) {
      c.setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 'long', idle)
      c.setopt(h, CURLOPT_LOW_SPEED_TIME, 'long', Math.max(1, Math.ceil(idle / 1000)))
      this.setIdle = idle
    }
    // Straight into the caller's buffer (the reader's stored-bytes scratch) when it has room: no
    // allocation per GET (a fresh ~50 KiB buffer each time cost malloc, mmap and page faults).
    this.data = into && into.length >= len ? into.subarray(0, len) : Buffer.allocUnsafeSlow(len)
    this.at = 0
    this.status = 0
    this.refused = ''
    this.acked = false
    const t0 = this.quick || this.headerCb === undefined ? 0 : performance.now()
    const rc = c.perform(h)
    // A short answer this slow may have been held for an acknowledgement (headerLine): from now on, every
    // answer's head is acknowledged at once. Not from the start: against a fast server that sets
    // TCP_NODELAY (nginx here) it would only cost a callback per header line and an extra packet per GET. A
    // server merely slower than HELD_MS (AWS S3's first byte often is) turns it on too: those costs are
    // then a few µs against tens of ms.
    if (t0 && len < HELD_BELOW && performance.now() - t0 >= HELD_MS) {
      this.quick = true
      c.setopt(h, CURLOPT_HEADERFUNCTION, 'void *', this.headerCb)
    }
    if (this.quick) {
      const fd = [-1]
      if (c.getinfoSocket(h, CURLINFO_ACTIVESOCKET, fd) === 0 && fd[0] >= 0) this.fd = fd[0]
    }
    const retries = this.retries
    this.retries = 0
    this.onBytes(1, this.status === 206 ? this.at : 0, retries)
    if (rc !== 0 && !(rc === CURLE_WRITE_ERROR && !this.refused)) {
      if (this.refused) throw new Attempt(`${this.name}: ${this.refused}`, true)
      if (CURLE_TLS.has(rc)) throw new Attempt(`${this.name}: TLS: ${c.strerror(rc)}`, false)
      if (rc === 28) throw new Attempt(`no data for ${(Math.min(leftMs, MAX_ATTEMPT_IDLE_MS) / 1000).toFixed(1)} s`, true)
      throw new Attempt(`${c.strerror(rc)} (curl ${rc})`, true)
    }
    if (this.status === 0) {
      const out = [0]
      c.getinfoLong(h, CURLINFO_RESPONSE_CODE, out)
      this.status = out[0]
    }
    const status = this.status
    const t = this.target
    const pinned = t.etag ?? t.weakEtag
    if (status === 412) throw this.changedAttempt('HTTP 412: its ETag no longer matches')
    if (this.target.s3 && status >= 300 && status < 500 && status !== 408 && status !== 416 && status !== 429) {
      // A GET naming the version needs s3:GetObjectVersion, which an s3:GetObject-only policy lacks: as the
      // owner does (http.ts s3Error), the ETag pins from then on; at once, without the version.
      if ((status === 401 || status === 403) && this.versionId && (t.etag ?? t.weakEtag) !== undefined) {
        this.versionId = undefined
        throw new Attempt(`${this.name}: a GET naming the version: HTTP ${status}`, true, 'io', false, true)
      }
      // S3 says why in its body, which this GET did not read: the owner's GET of the same bytes does.
      throw new Delegate(`HTTP ${status}`)
    }
    if (status === 404 || status === 410) throw new Attempt(`${this.name}: not found (HTTP ${status})`, false)
    if (status === 401 || status === 403)
      throw new Attempt(`${this.name}: access denied (HTTP ${status})${status === 401 ? ': the server wants credentials (--header)' : ''}`, false)
    if (status === 408 || status === 429 || status >= 500) throw new Attempt(`HTTP ${status}`, true)
    // Each header is a koffi call and a decode: only those that are checked are looked up.
    const tag = parseEntityTag(this.header('etag'))
    if (pinned !== undefined && tag && tag.value !== pinned) throw this.changedAttempt(`ETag ${pinned} → ${tag.value}`)
    if (pinned === undefined && t.lastModified) {
      const modified = this.header('last-modified')
      if (modified && modified !== t.lastModified) throw this.changedAttempt(`Last-Modified ${t.lastModified} → ${modified}`)
    }
    if (status === 416) {
      if (pinned !== undefined || t.lastModified) throw this.changedAttempt('HTTP 416: it is shorter')
      throw new Attempt(`${this.name}: HTTP 416 for bytes ${first}-${last}`, false)
    }
    if (status === 200)
      throw new Attempt(`${this.name}: the server ignores Range requests (HTTP 200 for bytes ${first}-${last}); vdev reads images only from servers that serve ranges`, false, 'unsupported')
    if (status >= 300 && status < 400) {
      const loc = this.header('location')
      throw new Attempt(`${this.name}: HTTP ${status} redirect${loc ? ' to ' + displayLocation(loc, t.url) : ''} (not followed: name the final URL)`, false)
    }
    if (status !== 206) throw new Attempt(`${this.name}: HTTP ${status}`, false)
    const raw = this.header('content-range')
    const cr = parseContentRange(raw)
    if (!cr || cr.first === undefined || cr.last === undefined || cr.complete === undefined)
      throw new Attempt(`${this.name}: HTTP 206 without a usable Content-Range (${JSON.stringify(raw ?? null).slice(0, 80)})`, true)
    if (cr.complete !== this.size) throw this.changedAttempt(`its size went from ${this.size} to ${cr.complete} bytes`)
    if (cr.first !== first || cr.last !== last) throw new Attempt(`${this.name}: asked for bytes ${first}-${last}, the server sent ${cr.first}-${cr.last}`, true)
    const declared = this.header('content-length')
    if (declared !== undefined && declared !== String(len)) throw new Attempt(`${this.name}: Content-Length ${declared} for ${len} bytes`, true)
    if (this.at !== len) throw new Attempt(`${this.name}: the answer ended after ${this.at} of ${len} bytes`, true)
    const data = this.data
    this.data = Buffer.alloc(0)
    return data
  }

  private changedAttempt(why: string): Attempt {
    return new Attempt(`${this.name}: the object changed since it was opened (${why}); reads fail rather than mix two versions`, false, 'io', true)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    if (this.handle) this.c.cleanup(this.handle)
    this.handle = undefined
    if (this.headerList) this.c.slistFree(this.headerList)
    this.headerList = undefined
    this.c.koffi.unregister(this.cb)
    if (this.headerCb !== undefined) this.c.koffi.unregister(this.headerCb)
    if (this.sockoptCb !== undefined) this.c.koffi.unregister(this.sockoptCb)
  }
}

function displayLocation(loc: string, base: string): string {
  try {
    const u = new URL(loc, base)
    return `${u.protocol}//${u.host}${u.pathname}`
  } catch {
    return '(unreadable Location)'
  }
}

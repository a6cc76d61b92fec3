/**
 * AWS Signature Version 4 over node:crypto: the Authorization header of one request
 * (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html, "Create a signed AWS API
 * request"; S3's variant: https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
 * Checked against AWS's published vectors (test/remote/sigv4.test.ts): the SigV4 test suite's get-vanilla,
 * get-vanilla-query-order-key-case, get-utf8 and post-vanilla, and the S3 guide's GET Object (Range),
 * PUT Object and GET Bucket Lifecycle examples.
 *
 * Per request it costs one SHA-256 of the canonical request and one HMAC; the signing key (four HMACs)
 * is derived once per day, region and service and kept (bench/sigv4.ts measures it).
 */
import {createHash, createHmac} from 'node:crypto'

/** SHA-256 of the empty string: the payload hash of every GET and HEAD. */
export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'

export interface AwsCredentials {
  accessKeyId: string
  secretAccessKey: string
  sessionToken?: string
}

export interface SigningRequest {
  method: string
  /** The request path as sent, already URI-encoded (S3: each key byte once, '/' kept: `uriEncode(key, false)`). */
  path: string
  /** The query as sent (`a=1&b`), or empty. */
  query?: string
  /** Header names in lower case; `host` included. Every one given is signed. */
  headers: Record<string, string>
  /** Hex SHA-256 of the body (EMPTY_SHA256 for none), or UNSIGNED-PAYLOAD. */
  payloadHash: string
  region: string
  service: string
  /** `YYYYMMDDTHHMMSSZ` (x-amz-date). */
  amzDate: string
}

/**
 * SigV4's URI encoding: every byte but A–Z a–z 0–9 - . _ ~ as %XY (upper-case hex), '/' kept unless
 * `slash` (query names and values encode it).
 */
export function uriEncode(s: string, slash = true): string {
  // encodeURIComponent leaves A–Z a–z 0–9 - _ . ! ~ * ' ( ): encode the five SigV4 does not keep.
  const e = encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase())
  return slash ? e : e.replace(/%2F/g, '/')
}

/** `YYYYMMDDTHHMMSSZ` for a time. */
export function amzDate(t: Date): string {
  return t.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '')
}

/** The query string in canonical form: names and values decoded, then encoded again, sorted by name then value. */
function canonicalQuery(q: string | undefined): string {
  if (!q) return ''
  const pairs = q
    .split('&')
    .filter((p) => p.length > 0)
    .map((p) => {
      const i = p.indexOf('=')
      const k = decodeURIComponent(i < 0 ? p : p.slice(0, i))
      const v = i < 0 ? '' : decodeURIComponent(p.slice(i + 1))
      return [uriEncode(k), uriEncode(v)]
    })
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
  return pairs.map(([k, v]) => `${k}=${v}`).join('&')
}

/** The parts of a signature, for the tests; `authorization` is what goes on the request. */
export interface Signature {
  canonicalRequest: string
  stringToSign: string
  signedHeaders: string
  signature: string
  authorization: string
}

/** Derived signing keys, by secret, day, region and service (a few entries in practice). */
const keys = new Map<string, Buffer>()

function signingKey(secret: string, day: string, region: string, service: string): Buffer {
  const id = `${day}/${region}/${service}/${secret}`
  let k = keys.get(id)
  if (!k) {
    const h = (key: string | Buffer, data: string): Buffer => createHmac('sha256', key).update(data).digest()
    k = h(h(h(h('AWS4' + secret, day), region), service), 'aws4_request')
    if (keys.size >= 16) keys.clear()
    keys.set(id, k)
  }
  return k
}

export function sign(r: SigningRequest, cred: AwsCredentials): Signature {
  const names = Object.keys(r.headers)
    .map((n) => n.toLowerCase())
    .sort()
  const lower: Record<string, string> = {}
  for (const [n, v] of Object.entries(r.headers)) lower[n.toLowerCase()] = v
  const canonicalHeaders = names.map((n) => `${n}:${lower[n].trim().replace(/\s+/g, ' ')}\n`).join('')
  const signedHeaders = names.join(';')
  const canonicalRequest = [r.method, r.path, canonicalQuery(r.query), canonicalHeaders, signedHeaders, r.payloadHash].join('\n')
  const day = r.amzDate.slice(0, 8)
  const scope = `${day}/${r.region}/${r.service}/aws4_request`
  const stringToSign = ['AWS4-HMAC-SHA256', r.amzDate, scope, createHash('sha256').update(canonicalRequest).digest('hex')].join('\n')
  const signature = createHmac('sha256', signingKey(cred.secretAccessKey, day, r.region, r.service))
    .update(stringToSign)
    .digest('hex')
  const authorization = `AWS4-HMAC-SHA256 Credential=${cred.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`
  return {canonicalRequest, stringToSign, signedHeaders, signature, authorization}
}

/**
 * `s3://BUCKET/KEY`: where the object is and how each request to it is signed, from the standard AWS
 * configuration — what the AWS SDK for JavaScript v3 and the AWS CLI read (docs/remote.md, "S3"):
 *
 *   credentials  The SDK's default chain: AWS_PROFILE set: that profile. Otherwise AWS_ACCESS_KEY_ID +
 *                AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), else the "default" profile, else web
 *                identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), the container endpoint, the EC2
 *                instance metadata (credentials.ts). A profile is read from the shared credentials file
 *                (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials: `[NAME]`) and then the config file
 *                (AWS_CONFIG_FILE, ~/.aws/config: `[profile NAME]`, `[default]`): keys, role_arn,
 *                web_identity_token_file, credential_process, SSO. None at all: requests go unsigned.
 *   region       AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`, else us-east-1.
 *   endpoint     AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's `endpoint_url`: an S3-compatible
 *                store (Ceph RGW, MinIO …), addressed path-style (ENDPOINT/BUCKET/KEY). Without one,
 *                AWS itself: https://BUCKET.s3.REGION.amazonaws.com/KEY (path-style for a bucket name
 *                with dots, which the wildcard certificate does not cover).
 *
 * Every request is signed with SigV4 (sigv4.ts); the HTTP behaviour (ranges, If-Match pinning, retries,
 * read-ahead, cache) is http.ts's, unchanged, but for one thing: in a versioned bucket every GET after the
 * first names the version the first answer gave (`?versionId=`), so a replaced object does not end the reads. Temporary credentials are loaded again before they
 * expire, for as long as the image is open (RefreshingCredentials).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {VdevError} from '../core/errors'
import {EMPTY_SHA256, amzDate, sign, uriEncode, type AwsCredentials} from './sigv4'
import {RefreshingCredentials, environmentProvider, profileProvider, type ChainContext, type CredentialProvider, type Credentials} from './credentials'

export function isS3(location: string): boolean {
  return /^s3:\/\//i.test(location)
}

/** `s3://BUCKET/KEY` → its parts; anything else is a usage error. */
export function parseS3Url(location: string): {bucket: string; key: string} {
  const m = /^s3:\/\/([^/?#]+)\/(.+)$/is.exec(location)
  if (!m) throw new VdevError('usage', `${location}: expected s3://BUCKET/KEY`)
  const bucket = m[1]
  // S3's bucket naming rules, loosely (older buckets may have upper case and underscores).
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$/.test(bucket)) throw new VdevError('usage', `${location}: "${bucket}" is not an S3 bucket name`)
  return {bucket, key: m[2]}
}

export interface AwsConfig {
  /** Long-term keys, known without running anything. */
  credentials: AwsCredentials | undefined
  /** Otherwise the source that gives (temporary) keys when loaded: a role, a process, SSO, metadata. */
  provider?: CredentialProvider
  /** Where the credentials came from, for messages: "environment", `profile "NAME"`, the provider's, or "none". */
  from: string
  region: string
  endpoint: string | undefined
}

type Env = Record<string, string | undefined>

/** An AWS shared file (INI): section → key → value. Indented lines (a nested `s3 =` block) are skipped. */
export function parseIni(text: string): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>()
  let cur: Map<string, string> | undefined
  for (const line of text.split(/\r?\n/)) {
    if (/^\s*([#;]|$)/.test(line)) continue
    const sec = /^\[\s*([^\]]*?)\s*\]/.exec(line)
    if (sec) {
      cur = out.get(sec[1]) ?? new Map()
      out.set(sec[1], cur)
      continue
    }
    if (/^\s/.test(line) || !cur) continue
    const kv = /^([^=]+?)\s*=\s*(.*?)\s*$/.exec(line)
    if (kv) cur.set(kv[1].toLowerCase(), kv[2])
  }
  return out
}

function readIni(file: string): Map<string, Map<string, string>> | undefined {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new VdevError('usage', `${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  return parseIni(text)
}

function expandHome(p: string, home: string): string {
  return p.startsWith('~/') ? path.join(home, p.slice(2)) : p
}

/** The AWS configuration as the environment and the shared files give it. */
export function resolveAwsConfig(env: Env = process.env, home: string = os.homedir()): AwsConfig {
  const credFile = expandHome(env.AWS_SHARED_CREDENTIALS_FILE || path.join(home, '.aws', 'credentials'), home)
  const confFile = expandHome(env.AWS_CONFIG_FILE || path.join(home, '.aws', 'config'), home)
  const named = env.AWS_PROFILE || env.AWS_DEFAULT_PROFILE
  const name = named || 'default'
  const credIni = readIni(credFile)
  const confIni = readIni(confFile)
  const profile = (n: string): Map<string, string> | undefined => {
    const c = credIni?.get(n)
    const f = confIni?.get(n === 'default' ? 'default' : `profile ${n}`)
    return c && f ? new Map([...f, ...c]) : (c ?? f)
  }
  const merged = profile(name)
  if (named && !merged) throw new VdevError('usage', `AWS_PROFILE ${name}: no such profile in ${credFile} or ${confFile}`)
  const setting = (k: string): string | undefined => merged?.get(k) || undefined
  const region = env.AWS_REGION || env.AWS_DEFAULT_REGION || setting('region') || 'us-east-1'
  if (!/^[a-z0-9-]{1,64}$/i.test(region)) throw new VdevError('usage', `AWS region ${JSON.stringify(region.slice(0, 40))}: not a region name`)
  const endpoint = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || setting('endpoint_url') || undefined
  const ctx: ChainContext = {env, home, region, profile, ssoSession: (n) => confIni?.get(`sso-session ${n}`)}

  const fromProfile = (): AwsConfig | undefined => {
    const id = setting('aws_access_key_id')
    const secret = setting('aws_secret_access_key')
    const provider = profileProvider(name, ctx)
    if (!provider) {
      if (named) throw new VdevError('usage', `AWS profile "${name}" has no aws_access_key_id and aws_secret_access_key, role_arn, credential_process or SSO settings`)
      return undefined
    }
    // Plain keys need no loading: kept as they are (and signed with as before).
    if (id && secret && provider.from === `profile "${name}"`) return {credentials: {accessKeyId: id, secretAccessKey: secret, sessionToken: setting('aws_session_token')}, from: provider.from, region, endpoint}
    return {credentials: undefined, provider, from: provider.from, region, endpoint}
  }
  if (named) return fromProfile()!
  if (env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY)
    return {credentials: {accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, sessionToken: env.AWS_SESSION_TOKEN || undefined}, from: 'environment', region, endpoint}
  if (env.AWS_ACCESS_KEY_ID || env.AWS_SECRET_ACCESS_KEY)
    throw new VdevError('usage', `${env.AWS_ACCESS_KEY_ID ? 'AWS_ACCESS_KEY_ID' : 'AWS_SECRET_ACCESS_KEY'} is set without ${env.AWS_ACCESS_KEY_ID ? 'AWS_SECRET_ACCESS_KEY' : 'AWS_ACCESS_KEY_ID'}`)
  const fromDefault = fromProfile()
  if (fromDefault) return fromDefault
  const provider = environmentProvider(ctx)
  return provider ? {credentials: undefined, provider, from: provider.from, region, endpoint} : {credentials: undefined, from: 'none', region, endpoint}
}

/** What http.ts needs to reach and sign for one S3 object. */
export interface S3Target {
  /** The endpoint (protocol, host, port) the requests go to. */
  url: URL
  /** The request path as sent and signed: the bucket (path-style) and the key, URI-encoded once. */
  path: string
  /** `s3://BUCKET/KEY`, for messages. */
  name: string
  /**
   * Add x-amz-date, x-amz-content-sha256, the session token and Authorization to a request's headers;
   * `query` is the query string as sent (`versionId=…`), signed with the rest.
   */
  sign(method: string, headers: Record<string, string>, query?: string): void
  /** The region requests are signed for. */
  readonly region: string
  /**
   * The keys requests are signed with now (undefined: unsigned), for a serving thread's own GETs
   * (credential-slot.ts); `changed` is called with each set loaded later. Expired keys are asked for again.
   */
  credentials(changed?: () => void): Credentials | undefined
  /** What a 403 should say about the credentials. */
  readonly credentialsFrom: string
  /** Sets of temporary keys loaded so far (0 for keys that need no loading). */
  readonly loads: number
  /** Load the keys of a source that must be asked (a role, a process, SSO, metadata); then kept fresh. */
  load(): Promise<void>
  /** Stop refreshing them. */
  close(): void
}

/** `s3Target` with its credentials loaded: what http.ts opens an object with. */
export async function openS3Target(location: string, env: Env = process.env, home?: string): Promise<S3Target> {
  const t = s3Target(location, env, home)
  await t.load()
  return t
}

export function s3Target(location: string, env: Env = process.env, home?: string): S3Target {
  const {bucket, key} = parseS3Url(location)
  const cfg = resolveAwsConfig(env, home)
  let url: URL
  let reqPath: string
  const keyPath = uriEncode(key, false)
  if (cfg.endpoint) {
    try {
      url = new URL(cfg.endpoint)
    } catch {
      throw new VdevError('usage', `AWS_ENDPOINT_URL ${JSON.stringify(cfg.endpoint.slice(0, 80))}: not a URL`)
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new VdevError('usage', `AWS_ENDPOINT_URL ${cfg.endpoint}: expected http:// or https://`)
    reqPath = `${url.pathname.replace(/\/+$/, '')}/${uriEncode(bucket)}/${keyPath}`
  } else if (/^[a-z0-9][a-z0-9-]*[a-z0-9]$/.test(bucket)) {
    url = new URL(`https://${bucket}.s3.${cfg.region}.amazonaws.com/`)
    reqPath = `/${keyPath}`
  } else {
    url = new URL(`https://s3.${cfg.region}.amazonaws.com/`)
    reqPath = `/${uriEncode(bucket)}/${keyPath}`
  }
  let refreshing: RefreshingCredentials | undefined
  const listeners: Array<() => void> = []
  const host = url.host
  return {
    url,
    path: reqPath,
    name: `s3://${bucket}/${key}`,
    region: cfg.region,
    credentials(changed) {
      if (changed) listeners.push(changed)
      refreshing?.kick()
      return refreshing?.current ?? cfg.credentials
    },
    get loads() {
      return refreshing?.loads ?? 0
    },
    get credentialsFrom() {
      if (cfg.from === 'none') return 'no AWS credentials were found, so the request was unsigned'
      const exp = refreshing?.current.expiration
      const late = exp && exp.getTime() <= Date.now() ? ` (expired at ${exp.toISOString()}${refreshing?.lastError ? `; refreshing failed: ${refreshing.lastError}` : ''})` : ''
      return `the AWS credentials from ${cfg.from}${late}`
    },
    async load() {
      if (cfg.provider && !refreshing) {
        refreshing = await RefreshingCredentials.start(cfg.provider)
        refreshing.onLoad = () => {
          for (const f of listeners) f()
        }
      }
    },
    close() {
      refreshing?.close()
    },
    sign(method, headers, query) {
      refreshing?.kick()
      const cred = refreshing?.current ?? cfg.credentials
      if (cred) signS3(headers, {method, path: reqPath, query, region: cfg.region, host}, cred)
    },
  }
}

/**
 * Sign one S3 request (no body) in place: host, x-amz-date, x-amz-content-sha256, the session token and
 * Authorization added to `headers` (lower-case names). The main thread's GETs (above) and the serving
 * threads' own (curl.ts) both sign here.
 */
export function signS3(headers: Record<string, string>, r: {method: string; path: string; query?: string; region: string; host: string}, cred: AwsCredentials): void {
  headers.host = r.host
  headers['x-amz-date'] = amzDate(new Date())
  headers['x-amz-content-sha256'] = EMPTY_SHA256
  if (cred.sessionToken) headers['x-amz-security-token'] = cred.sessionToken
  // Sign what S3 and proxies leave alone: not accept-encoding, user-agent or connection.
  const signed: Record<string, string> = {}
  for (const [n, v] of Object.entries(headers)) if (n === 'host' || n === 'range' || n.startsWith('if-') || n.startsWith('x-amz-')) signed[n] = v
  headers.authorization = sign({method: r.method, path: r.path, query: r.query, headers: signed, payloadHash: EMPTY_SHA256, region: r.region, service: 's3', amzDate: headers['x-amz-date']}, cred).authorization
}

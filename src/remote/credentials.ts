/**
 * The AWS credential sources beyond plain keys, in the order and with the semantics of the AWS SDK for
 * JavaScript v3's default chain (@aws-sdk/credential-provider-node: env → sso → ini → process →
 * token file → container / instance metadata), each a `CredentialProvider` whose `load()` returns keys
 * and, for temporary ones, their expiration. `RefreshingCredentials` keeps the current keys for the
 * synchronous signer (s3.ts) and loads new ones before they expire (docs/remote.md, "S3").
 *
 *   credential_process   https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-sourcing-external.html
 *   role profiles, STS   https://docs.aws.amazon.com/sdkref/latest/guide/feature-assume-role-credentials.html,
 *                        https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html
 *   web identity         https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html
 *   container            https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html
 *   instance metadata    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-metadata-security-credentials.html
 *   SSO                  https://docs.aws.amazon.com/sdkref/latest/guide/feature-sso-credentials.html,
 *                        https://docs.aws.amazon.com/singlesignon/latest/PortalAPIReference/API_GetRoleCredentials.html
 */
import * as fs from 'node:fs'
import * as http from 'node:http'
import * as https from 'node:https'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {createHash} from 'node:crypto'
import {VdevError} from '../core/errors'
import {amzDate, sign, type AwsCredentials} from './sigv4'

export interface Credentials extends AwsCredentials {
  /** When temporary keys stop working; none for long-term keys. */
  expiration?: Date
}

export interface CredentialProvider {
  /** For messages: `credential_process of profile "ci"`, `container credentials` … */
  readonly from: string
  load(): Promise<Credentials>
}

export type Env = Record<string, string | undefined>
type Section = Map<string, string>

/** What the providers read: the environment, the region, the profiles of both shared files. */
export interface ChainContext {
  env: Env
  home: string
  region: string
  /** A profile, the credentials file's section over the config file's (as the SDK merges them). */
  profile(name: string): Section | undefined
  /** A `[sso-session NAME]` section of the config file. */
  ssoSession(name: string): Section | undefined
}

/** Refresh this long before the expiration (the SDK's 5 minutes), or halfway for shorter lifetimes. */
export const REFRESH_EARLY_MS = 5 * 60_000
const HTTP_TIMEOUT_MS = 5_000
/** The SDK's timeout for the instance metadata and container endpoints. */
const METADATA_TIMEOUT_MS = 1_000

// ---------------------------------------------------------------------------------------------------
// Which source: the profile's, then (default profile only) web identity from the environment, the
// container endpoint, the instance metadata.

const hasStatic = (p: Section): boolean => !!(p.get('aws_access_key_id') && p.get('aws_secret_access_key'))
const isSso = (p: Section): boolean => !!(p.get('sso_session') || p.get('sso_start_url') || p.get('sso_account_id'))

export function staticProvider(p: Section, from: string): CredentialProvider {
  const c = {accessKeyId: p.get('aws_access_key_id')!, secretAccessKey: p.get('aws_secret_access_key')!, sessionToken: p.get('aws_session_token') || undefined}
  return {from, load: async () => c}
}

/**
 * The provider a profile names, or undefined when it names none (no keys, role, process or SSO).
 * As resolveProfileData in @aws-sdk/credential-provider-ini: role first for the profile asked for,
 * keys first for a source_profile (as the AWS CLI); then web identity, credential_process, SSO.
 * `top`: the profile asked for, where SSO comes first (fromSSO precedes fromIni in the chain).
 */
export function profileProvider(name: string, ctx: ChainContext, visited: string[] = []): CredentialProvider | undefined {
  const p = ctx.profile(name)
  if (!p) return undefined
  const label = `profile "${name}"`
  if (visited.length > 0 && hasStatic(p)) return staticProvider(p, label)
  if (visited.length === 0 && isSso(p)) return ssoProvider(name, p, ctx)
  const roleArn = p.get('role_arn')
  const source = p.get('source_profile')
  const credSource = p.get('credential_source')
  if (roleArn && (source || credSource)) {
    if (source && credSource) throw new VdevError('usage', `AWS ${label}: has both source_profile and credential_source; keep one`)
    if (p.get('mfa_serial')) throw new VdevError('usage', `AWS ${label}: its role needs an MFA code (mfa_serial), which vdev does not ask for: export keys from a session (aws configure export-credentials --profile ${name} --format env)`)
    let base: CredentialProvider
    if (source) {
      if (source === name || visited.includes(source)) throw new VdevError('usage', `AWS ${label}: source_profile "${source}" makes a cycle (${[...visited, name, source].join(' → ')})`)
      const src = profileProvider(source, ctx, [...visited, name])
      if (!src) throw new VdevError('usage', `AWS ${label}: source_profile "${source}" ${ctx.profile(source) ? 'gives no credentials' : 'is no profile'}`)
      base = src
    } else base = credentialSource(credSource!, label, ctx)
    const duration = p.get('duration_seconds')
    if (duration !== undefined && !/^\d{1,6}$/.test(duration)) throw new VdevError('usage', `AWS ${label}: duration_seconds ${JSON.stringify(duration)} is not a number of seconds`)
    return assumeRoleProvider(base, {roleArn, sessionName: p.get('role_session_name') || `vdev-${Date.now()}`, externalId: p.get('external_id'), durationSeconds: duration ? Number(duration) : 3600}, label, stsEndpoint(ctx, p), ctx.region)
  }
  if (hasStatic(p)) return staticProvider(p, label)
  // A source_profile's credential_source without a role of its own: its keys, for the caller's role.
  if (credSource && visited.length > 0) return credentialSource(credSource, label, ctx)
  const tokenFile = p.get('web_identity_token_file')
  if (tokenFile && roleArn) return webIdentityProvider(tokenFile, roleArn, p.get('role_session_name'), label, stsEndpoint(ctx, p), ctx.region, ctx.home)
  const proc = p.get('credential_process')
  if (proc) return processProvider(proc, name)
  if (isSso(p)) return ssoProvider(name, p, ctx)
  if (roleArn) throw new VdevError('usage', `AWS ${label}: role_arn without source_profile, credential_source or web_identity_token_file`)
  return undefined
}

/** `credential_source`: where a role profile's base keys come from (the SDK's three names). */
function credentialSource(name: string, label: string, ctx: ChainContext): CredentialProvider {
  switch (name) {
    case 'Environment': {
      const {AWS_ACCESS_KEY_ID: id, AWS_SECRET_ACCESS_KEY: secret, AWS_SESSION_TOKEN: token} = ctx.env
      if (!id || !secret) throw new VdevError('usage', `AWS ${label}: credential_source Environment, but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set`)
      return {from: 'environment', load: async () => ({accessKeyId: id, secretAccessKey: secret, sessionToken: token || undefined})}
    }
    case 'Ec2InstanceMetadata':
      return imdsProvider(ctx.env)
    case 'EcsContainer': {
      const c = containerProvider(ctx.env)
      if (!c) throw new VdevError('usage', `AWS ${label}: credential_source EcsContainer, but neither AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor _FULL_URI is set`)
      return c
    }
    default:
      throw new VdevError('usage', `AWS ${label}: credential_source ${JSON.stringify(name)}: expected Environment, Ec2InstanceMetadata or EcsContainer`)
  }
}

/**
 * After the default profile gave nothing: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, the container
 * endpoint, the instance metadata — or undefined (requests go unsigned).
 */
export function environmentProvider(ctx: ChainContext): CredentialProvider | undefined {
  const {env} = ctx
  if (env.AWS_WEB_IDENTITY_TOKEN_FILE && env.AWS_ROLE_ARN)
    return webIdentityProvider(env.AWS_WEB_IDENTITY_TOKEN_FILE, env.AWS_ROLE_ARN, env.AWS_ROLE_SESSION_NAME, 'AWS_WEB_IDENTITY_TOKEN_FILE', stsEndpoint(ctx, undefined), ctx.region, ctx.home)
  const c = containerProvider(env)
  if (c) return c
  if (imdsWanted(env)) return imdsProvider(env)
  return undefined
}

/**
 * The SDK asks the instance metadata whenever nothing else gave keys (1 s to fail off EC2). vdev asks
 * only where it can answer: AWS_EC2_METADATA_SERVICE_ENDPOINT set, or the machine's firmware saying
 * it is an EC2 instance (DMI vendor "Amazon EC2", a Xen instance's hypervisor UUID "ec2…"). Elsewhere
 * an object without credentials is read unsigned at once, and nothing is sent to 169.254.169.254.
 */
export function imdsWanted(env: Env, sys = '/sys'): boolean {
  if ((env.AWS_EC2_METADATA_DISABLED ?? '').toLowerCase() === 'true') return false
  if (env.AWS_EC2_METADATA_SERVICE_ENDPOINT) return true
  const read = (p: string): string => {
    try {
      return fs.readFileSync(path.join(sys, p), 'utf8').trim()
    } catch {
      return ''
    }
  }
  return read('class/dmi/id/sys_vendor') === 'Amazon EC2' || /^ec2/i.test(read('hypervisor/uuid')) || /^i-[0-9a-f]+$/.test(read('class/dmi/id/board_asset_tag'))
}

// ---------------------------------------------------------------------------------------------------
// credential_process

/**
 * The command line as the AWS CLI splits it (POSIX shell words, no shell run): whitespace separates,
 * "…" and '…' quote, a backslash escapes outside single quotes. Spawned with that argv, never a shell.
 */
export function splitCommandLine(s: string): string[] {
  const out: string[] = []
  let cur = ''
  let inWord = false
  let q: '"' | "'" | undefined
  for (let i = 0; i < s.length; i++) {
    const c = s[i]
    if (q === "'") {
      if (c === "'") q = undefined
      else cur += c
    } else if (q === '"') {
      if (c === '"') q = undefined
      else if (c === '\\' && i + 1 < s.length && '"\\$`'.includes(s[i + 1])) cur += s[++i]
      else cur += c
    } else if (/\s/.test(c)) {
      if (inWord) out.push(cur)
      cur = ''
      inWord = false
    } else {
      inWord = true
      if (c === '"' || c === "'") q = c
      else if (c === '\\' && i + 1 < s.length) cur += s[++i]
      else cur += c
    }
  }
  if (q) throw new Error(`unclosed ${q}`)
  if (inWord) out.push(cur)
  return out
}

const PROCESS_TIMEOUT_MS = 60_000

export function processProvider(command: string, profile: string): CredentialProvider {
  const from = `credential_process of profile "${profile}"`
  let argv: string[]
  try {
    argv = splitCommandLine(command)
  } catch (err) {
    throw new VdevError('usage', `AWS ${from}: cannot split ${JSON.stringify(command)}: ${(err as Error).message}`)
  }
  if (!argv.length) throw new VdevError('usage', `AWS ${from} is empty`)
  const fail = (why: string): VdevError => new VdevError('io', `AWS ${from} (${argv[0]}): ${why}`)
  return {
    from,
    load: () =>
      new Promise<Credentials>((resolve, reject) => {
        // stdin stays the terminal's, as the CLI's, so a tool may prompt; stdout is the JSON; stderr is shown.
        const child = spawn(argv[0], argv.slice(1), {stdio: ['inherit', 'pipe', 'pipe']})
        const out: Buffer[] = []
        let err = ''
        let size = 0
        child.stdout.on('data', (b: Buffer) => {
          size += b.length
          if (size <= 1 << 20) out.push(b)
        })
        child.stderr.setEncoding('utf8')
        child.stderr.on('data', (s: string) => (err = (err + s).slice(-2000)))
        const timer = setTimeout(() => child.kill('SIGKILL'), PROCESS_TIMEOUT_MS)
        child.on('error', (e: NodeJS.ErrnoException) => {
          clearTimeout(timer)
          reject(fail(e.code === 'ENOENT' ? 'no such program' : e.code ?? e.message))
        })
        child.on('close', (code, signal) => {
          clearTimeout(timer)
          const last = err.trim().split('\n').pop()
          if (code !== 0) return reject(fail(`${signal ? `killed by ${signal}` : `exit status ${code}`}${last ? `: ${last.slice(0, 300)}` : ''}`))
          let j: Record<string, unknown>
          try {
            j = JSON.parse(Buffer.concat(out).toString('utf8'))
          } catch {
            return reject(fail('its output is not JSON'))
          }
          if (j.Version !== 1) return reject(fail(`"Version" is ${JSON.stringify(j.Version)}, not 1`))
          try {
            resolve(credentialsFromJson(j, 'SessionToken'))
          } catch (e) {
            reject(fail((e as Error).message))
          }
        })
      }),
  }
}

/** AccessKeyId, SecretAccessKey, the token (SessionToken or Token) and an optional RFC 3339 Expiration. */
function credentialsFromJson(j: Record<string, unknown>, tokenField: string): Credentials {
  const str = (k: string): string | undefined => (typeof j[k] === 'string' && j[k] ? (j[k] as string) : undefined)
  const id = str('AccessKeyId')
  const secret = str('SecretAccessKey')
  if (!id || !secret) throw new Error('no AccessKeyId and SecretAccessKey in its answer')
  const c: Credentials = {accessKeyId: id, secretAccessKey: secret, sessionToken: str(tokenField)}
  if (j.Expiration !== undefined) c.expiration = parseTime(j.Expiration)
  return c
}

function parseTime(v: unknown): Date {
  const d = typeof v === 'number' ? new Date(v) : typeof v === 'string' ? new Date(v) : new Date(NaN)
  if (Number.isNaN(d.getTime())) throw new Error(`Expiration ${JSON.stringify(v)} is not a time`)
  return d
}

// ---------------------------------------------------------------------------------------------------
// STS: AssumeRole (signed with the base keys) and AssumeRoleWithWebIdentity (unsigned), the query API

/** AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL, the profile's endpoint_url, else sts.REGION.amazonaws.com. */
function stsEndpoint(ctx: ChainContext, p: Section | undefined): string {
  return ctx.env.AWS_ENDPOINT_URL_STS || ctx.env.AWS_ENDPOINT_URL || p?.get('endpoint_url') || ctx.profile(profileName(ctx.env))?.get('endpoint_url') || `https://sts.${ctx.region}.amazonaws.com`
}

export function profileName(env: Env): string {
  return env.AWS_PROFILE || env.AWS_DEFAULT_PROFILE || 'default'
}

interface RoleParams {
  roleArn: string
  sessionName: string
  externalId?: string
  durationSeconds: number
}

function assumeRoleProvider(base: CredentialProvider, r: RoleParams, label: string, endpoint: string, region: string): CredentialProvider {
  const from = `role ${r.roleArn} of ${label} (AssumeRole with the credentials from ${base.from})`
  return {
    from,
    async load() {
      const cred = await base.load()
      const q: Record<string, string> = {Action: 'AssumeRole', Version: '2011-06-15', RoleArn: r.roleArn, RoleSessionName: r.sessionName, DurationSeconds: String(r.durationSeconds)}
      if (r.externalId) q.ExternalId = r.externalId
      return stsCall(endpoint, region, q, cred, `AWS ${label}: AssumeRole ${r.roleArn}`)
    },
  }
}

function webIdentityProvider(tokenFile: string, roleArn: string, sessionName: string | undefined, label: string, endpoint: string, region: string, home: string): CredentialProvider {
  const file = tokenFile.startsWith('~/') ? path.join(home, tokenFile.slice(2)) : tokenFile
  const what = `AWS ${label === 'AWS_WEB_IDENTITY_TOKEN_FILE' ? 'web identity' : label}: AssumeRoleWithWebIdentity ${roleArn}`
  return {
    from: `role ${roleArn} (AssumeRoleWithWebIdentity, token ${file})`,
    async load() {
      let token: string
      try {
        // Read again at every refresh: the token is rotated in place (EKS: hourly).
        token = fs.readFileSync(file, 'utf8').trim()
      } catch (err) {
        throw new VdevError('io', `${what}: ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
      }
      const q = {Action: 'AssumeRoleWithWebIdentity', Version: '2011-06-15', RoleArn: roleArn, RoleSessionName: sessionName || `vdev-${Date.now()}`, WebIdentityToken: token}
      return stsCall(endpoint, region, q, undefined, what)
    },
  }
}

const formEncode = (q: Record<string, string>): string =>
  Object.entries(q)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&')

function xmlField(xml: string, name: string): string | undefined {
  const m = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml)
  return m ? m[1].replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&') : undefined
}

async function stsCall(endpoint: string, region: string, q: Record<string, string>, cred: AwsCredentials | undefined, what: string): Promise<Credentials> {
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw new VdevError('usage', `${what}: STS endpoint ${JSON.stringify(endpoint.slice(0, 80))} is not a URL`)
  }
  const body = formEncode(q)
  const headers: Record<string, string> = {host: url.host, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8'}
  if (cred) {
    const hash = createHash('sha256').update(body).digest('hex')
    headers['x-amz-date'] = amzDate(new Date())
    if (cred.sessionToken) headers['x-amz-security-token'] = cred.sessionToken
    const p = url.pathname || '/'
    headers.authorization = sign({method: 'POST', path: p, headers: {...headers}, payloadHash: hash, region, service: 'sts', amzDate: headers['x-amz-date']}, cred).authorization
  }
  const r = await request(url, {method: 'POST', headers, body, timeoutMs: HTTP_TIMEOUT_MS}, what)
  if (r.status !== 200) {
    const code = xmlField(r.body, 'Code')
    const msg = xmlField(r.body, 'Message')
    throw new VdevError('io', `${what}: HTTP ${r.status}${code ? ` ${code}` : ''}${msg ? `: ${msg.slice(0, 200)}` : ''}`)
  }
  const id = xmlField(r.body, 'AccessKeyId')
  const secret = xmlField(r.body, 'SecretAccessKey')
  const token = xmlField(r.body, 'SessionToken')
  const exp = xmlField(r.body, 'Expiration')
  if (!id || !secret || !token) throw new VdevError('io', `${what}: the answer has no Credentials`)
  const c: Credentials = {accessKeyId: id, secretAccessKey: secret, sessionToken: token}
  if (exp && !Number.isNaN(new Date(exp).getTime())) c.expiration = new Date(exp)
  return c
}

// ---------------------------------------------------------------------------------------------------
// Container credentials (ECS task roles, EKS Pod Identity)

/** Hosts a plain-http full URI may name (the SDK's list): loopback, ECS's and EKS's link-local agents. */
function allowedHttpHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase()
  return h === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '::1' || h === '169.254.170.2' || h === '169.254.170.23' || h === 'fd00:ec2::23'
}

export function containerProvider(env: Env): CredentialProvider | undefined {
  const rel = env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI
  const full = env.AWS_CONTAINER_CREDENTIALS_FULL_URI
  if (!rel && !full) return undefined
  let url: URL
  try {
    url = new URL(rel ? `http://169.254.170.2${rel.startsWith('/') ? '' : '/'}${rel}` : full!)
  } catch {
    throw new VdevError('usage', `AWS_CONTAINER_CREDENTIALS_${rel ? 'RELATIVE' : 'FULL'}_URI ${JSON.stringify((rel ?? full)!.slice(0, 80))}: not a URL`)
  }
  if (!rel && !(url.protocol === 'https:' || (url.protocol === 'http:' && allowedHttpHost(url.hostname))))
    throw new VdevError('usage', `AWS_CONTAINER_CREDENTIALS_FULL_URI ${url.origin}: must be https, or http to loopback, 169.254.170.2, 169.254.170.23 or fd00:ec2::23`)
  const what = `AWS container credentials (${url.origin}${url.pathname})`
  return {
    from: 'container credentials',
    async load() {
      const headers: Record<string, string> = {accept: 'application/json'}
      // The token file wins over the variable, and is read again each time (EKS rotates it).
      let token = env.AWS_CONTAINER_AUTHORIZATION_TOKEN
      if (env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)
        try {
          token = fs.readFileSync(env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, 'utf8').trim()
        } catch (err) {
          throw new VdevError('io', `${what}: AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE ${env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
        }
      if (token) {
        if (/[\r\n]/.test(token)) throw new VdevError('usage', `${what}: the authorization token has a line break`)
        headers.authorization = token
      }
      const r = await request(url, {method: 'GET', headers, timeoutMs: METADATA_TIMEOUT_MS}, what)
      if (r.status !== 200) throw new VdevError('io', `${what}: HTTP ${r.status}${r.body ? `: ${r.body.trim().slice(0, 200)}` : ''}`)
      return jsonCredentials(r.body, what)
    },
  }
}

function jsonCredentials(body: string, what: string): Credentials {
  let j: Record<string, unknown>
  try {
    j = JSON.parse(body)
  } catch {
    throw new VdevError('io', `${what}: the answer is not JSON`)
  }
  try {
    return credentialsFromJson(j, 'Token')
  } catch (err) {
    throw new VdevError('io', `${what}: ${(err as Error).message}`)
  }
}

// ---------------------------------------------------------------------------------------------------
// EC2 instance metadata, IMDSv2 only (a session token first, then the role, then its keys)

export function imdsProvider(env: Env): CredentialProvider {
  const mode = (env.AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE ?? 'IPv4').toLowerCase()
  const base = env.AWS_EC2_METADATA_SERVICE_ENDPOINT || (mode === 'ipv6' ? 'http://[fd00:ec2::254]' : 'http://169.254.169.254')
  let root: URL
  try {
    root = new URL(base)
  } catch {
    throw new VdevError('usage', `AWS_EC2_METADATA_SERVICE_ENDPOINT ${JSON.stringify(base.slice(0, 80))}: not a URL`)
  }
  const at = (p: string): URL => new URL(root.pathname.replace(/\/+$/, '') + p, root)
  const what = `AWS instance metadata (${root.origin})`
  return {
    from: 'the EC2 instance metadata',
    async load() {
      const t = await request(at('/latest/api/token'), {method: 'PUT', headers: {'x-aws-ec2-metadata-token-ttl-seconds': '21600'}, timeoutMs: METADATA_TIMEOUT_MS}, what)
      if (t.status !== 200 || !t.body) throw new VdevError('io', `${what}: PUT /latest/api/token: HTTP ${t.status}`)
      const headers = {'x-aws-ec2-metadata-token': t.body.trim()}
      const list = '/latest/meta-data/iam/security-credentials/'
      const r = await request(at(list), {method: 'GET', headers, timeoutMs: METADATA_TIMEOUT_MS}, what)
      if (r.status === 404) throw new VdevError('io', `${what}: the instance has no IAM role (GET ${list}: HTTP 404)`)
      if (r.status !== 200) throw new VdevError('io', `${what}: GET ${list}: HTTP ${r.status}`)
      const role = r.body.trim().split('\n')[0].trim()
      if (!role) throw new VdevError('io', `${what}: the instance has no IAM role`)
      const c = await request(at(list + encodeURIComponent(role)), {method: 'GET', headers, timeoutMs: METADATA_TIMEOUT_MS}, what)
      if (c.status !== 200) throw new VdevError('io', `${what}: GET ${list}${role}: HTTP ${c.status}`)
      const j = JSON.parse(c.body || '{}') as Record<string, unknown>
      if (j.Code !== undefined && j.Code !== 'Success') throw new VdevError('io', `${what}: role ${role}: Code ${JSON.stringify(j.Code)}${typeof j.Message === 'string' ? `: ${j.Message.slice(0, 200)}` : ''}`)
      return jsonCredentials(c.body, `${what}, role ${role}`)
    },
  }
}

// ---------------------------------------------------------------------------------------------------
// IAM Identity Center (SSO): the token `aws sso login` cached, then the portal's GetRoleCredentials

function ssoProvider(name: string, p: Section, ctx: ChainContext): CredentialProvider {
  const label = `profile "${name}"`
  const sessionName = p.get('sso_session')
  let startUrl = p.get('sso_start_url')
  let region = p.get('sso_region')
  let login = `aws sso login --profile ${name}`
  if (sessionName) {
    const s = ctx.ssoSession(sessionName)
    if (!s) throw new VdevError('usage', `AWS ${label}: sso_session "${sessionName}" has no [sso-session ${sessionName}] section in the config file`)
    startUrl = s.get('sso_start_url') ?? startUrl
    region = s.get('sso_region') ?? region
    login = `aws sso login --sso-session ${sessionName}`
  }
  const account = p.get('sso_account_id')
  const role = p.get('sso_role_name')
  const missing = [!startUrl && 'sso_start_url', !region && 'sso_region', !account && 'sso_account_id', !role && 'sso_role_name'].filter(Boolean)
  if (missing.length) throw new VdevError('usage', `AWS ${label}: an SSO profile without ${missing.join(', ')}`)
  // The cache file is named by the SHA-1 of the session name (sso_session) or of the start URL (legacy).
  const cacheFile = path.join(ctx.home, '.aws', 'sso', 'cache', `${createHash('sha1').update(sessionName ?? startUrl!).digest('hex')}.json`)
  const what = `AWS SSO ${label}`
  const endpoint = ctx.env.AWS_ENDPOINT_URL_SSO || ctx.env.AWS_ENDPOINT_URL || p.get('endpoint_url') || `https://portal.sso.${region}.amazonaws.com`
  return {
    from: `SSO ${label} (account ${account}, role ${role})`,
    async load() {
      let tok: {accessToken?: unknown; expiresAt?: unknown}
      try {
        tok = JSON.parse(fs.readFileSync(cacheFile, 'utf8'))
      } catch (err) {
        const c = (err as NodeJS.ErrnoException).code
        throw new VdevError('io', `${what}: no cached SSO token (${cacheFile}: ${c ?? 'not JSON'}): run \`${login}\``)
      }
      const exp = typeof tok.expiresAt === 'string' ? new Date(tok.expiresAt) : new Date(NaN)
      if (typeof tok.accessToken !== 'string' || Number.isNaN(exp.getTime())) throw new VdevError('io', `${what}: ${cacheFile} has no accessToken and expiresAt: run \`${login}\``)
      if (exp.getTime() <= Date.now()) throw new VdevError('io', `${what}: the SSO session expired at ${exp.toISOString()}: run \`${login}\``)
      let url: URL
      try {
        url = new URL(`${endpoint.replace(/\/+$/, '')}/federation/credentials`)
      } catch {
        throw new VdevError('usage', `${what}: SSO endpoint ${JSON.stringify(endpoint.slice(0, 80))} is not a URL`)
      }
      url.searchParams.set('account_id', account!)
      url.searchParams.set('role_name', role!)
      const r = await request(url, {method: 'GET', headers: {'x-amz-sso_bearer_token': tok.accessToken}, timeoutMs: HTTP_TIMEOUT_MS}, what)
      if (r.status === 401) throw new VdevError('io', `${what}: the portal refused the cached token (HTTP 401): run \`${login}\``)
      if (r.status !== 200) throw new VdevError('io', `${what}: GetRoleCredentials: HTTP ${r.status}${r.body ? `: ${r.body.trim().slice(0, 200)}` : ''}`)
      let rc: Record<string, unknown> | undefined
      try {
        rc = (JSON.parse(r.body) as {roleCredentials?: Record<string, unknown>}).roleCredentials
      } catch {
        rc = undefined
      }
      if (!rc || typeof rc.accessKeyId !== 'string' || typeof rc.secretAccessKey !== 'string') throw new VdevError('io', `${what}: GetRoleCredentials: no roleCredentials in the answer`)
      const c: Credentials = {accessKeyId: rc.accessKeyId, secretAccessKey: rc.secretAccessKey, sessionToken: typeof rc.sessionToken === 'string' ? rc.sessionToken : undefined}
      // `expiration`: milliseconds since the epoch.
      if (typeof rc.expiration === 'number') c.expiration = new Date(rc.expiration)
      return c
    },
  }
}

// ---------------------------------------------------------------------------------------------------

interface Answer {
  status: number
  body: string
}

/** One small request (credentials answers are a few KiB), no retry: the caller's error says what failed. */
function request(url: URL, o: {method: string; headers: Record<string, string>; body?: string; timeoutMs: number}, what: string): Promise<Answer> {
  const client = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : undefined
  if (!client) return Promise.reject(new VdevError('usage', `${what}: ${url.protocol} is not http or https`))
  return new Promise((resolve, reject) => {
    const headers = {...o.headers}
    if (o.body !== undefined) headers['content-length'] = String(Buffer.byteLength(o.body))
    const req = client.request(url, {method: o.method, headers}, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (s: string) => {
        if (body.length < 1 << 20) body += s
      })
      res.on('end', () => resolve({status: res.statusCode ?? 0, body}))
      res.on('error', (e) => reject(new VdevError('io', `${what}: ${(e as NodeJS.ErrnoException).code ?? e.message}`)))
    })
    req.setTimeout(o.timeoutMs, () => req.destroy(Object.assign(new Error(`no answer within ${o.timeoutMs / 1000} s`), {code: `no answer within ${o.timeoutMs / 1000} s`})))
    req.on('error', (e: NodeJS.ErrnoException) => reject(new VdevError('io', `${what}: ${e.code ?? e.message}`)))
    req.end(o.body)
  })
}

/** A load whose keys have not expired already (as the SDK refuses a credential_process's expired keys). */
async function loadFresh(p: CredentialProvider): Promise<Credentials> {
  const c = await p.load()
  if (c.expiration && c.expiration.getTime() <= Date.now()) throw new VdevError('io', `AWS ${p.from}: gave keys that expired at ${c.expiration.toISOString()}`)
  return c
}

/**
 * The keys a signer uses now, loaded again before they expire: at the expiration less 5 minutes (the
 * SDK's window), or halfway through a lifetime under 10 minutes; a failed load is tried again every
 * 30 s (or sooner near the end) and logged, the old keys kept until then. The timer never keeps the
 * process alive, and `close()` stops it.
 */
export class RefreshingCredentials {
  private timer: NodeJS.Timeout | undefined
  private closed = false
  private loading = false
  private lastTry = 0
  /** Loads so far (the first included), for tests. */
  loads = 1
  lastError: string | undefined
  /** Called with each set of keys loaded after the first (s3.ts: published to the serving threads). */
  onLoad: ((c: Credentials) => void) | undefined

  private constructor(
    readonly provider: CredentialProvider,
    public current: Credentials,
    private readonly log: (line: string) => void,
  ) {
    this.schedule(Date.now())
  }

  static async start(provider: CredentialProvider, log: (line: string) => void = (l) => console.error(l)): Promise<RefreshingCredentials> {
    return new RefreshingCredentials(provider, await loadFresh(provider), log)
  }

  /** Keys that are past their expiration: load now (a signer calls this; at most once a second). */
  kick(): void {
    const exp = this.current.expiration?.getTime()
    if (this.closed || this.loading || exp === undefined || exp > Date.now() || Date.now() - this.lastTry < 1000) return
    clearTimeout(this.timer)
    void this.refresh()
  }

  private schedule(loadedAt: number): void {
    const exp = this.current.expiration?.getTime()
    if (exp === undefined || this.closed) return
    const early = Math.min(REFRESH_EARLY_MS, Math.max(0, exp - loadedAt) / 2)
    this.arm(exp - early - Date.now())
  }

  private arm(ms: number): void {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => void this.refresh(), Math.max(1000, Math.min(ms, 2 ** 31 - 1)))
    this.timer.unref()
  }

  private async refresh(): Promise<void> {
    this.loading = true
    this.lastTry = Date.now()
    try {
      const c = await loadFresh(this.provider)
      if (this.closed) return
      this.loads++
      this.current = c
      this.lastError = undefined
      this.onLoad?.(c)
      this.schedule(Date.now())
    } catch (err) {
      if (this.closed) return
      this.lastError = (err as Error).message
      this.log(`vdev: refreshing the AWS credentials failed, trying again: ${this.lastError}`)
      // Sooner while the old keys still work; every 30 s once they have expired (and at the next request).
      const left = (this.current.expiration?.getTime() ?? Date.now()) - Date.now()
      this.arm(left > 0 ? Math.min(30_000, Math.max(1000, left / 4)) : 30_000)
    } finally {
      this.loading = false
    }
  }

  close(): void {
    this.closed = true
    clearTimeout(this.timer)
  }
}

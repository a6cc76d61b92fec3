/**
 * The AWS credential sources (src/remote/credentials.ts) and the order s3.ts takes them in (the AWS SDK
 * v3 default chain), over real shared files in a temporary HOME and real programs.
 *
 * The instance metadata service, the container credentials endpoint, the SSO portal and STS's
 * AssumeRoleWithWebIdentity exist only inside AWS (and STS AssumeRole runs against the real Ceph gateway
 * in s3.test.ts): here each is a small local HTTP server that checks the request and answers exactly as
 * AWS documents it — the paths, methods, headers and JSON/XML field names of:
 *   IMDSv2      https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html
 *               ("PUT /latest/api/token", X-aws-ec2-metadata-token-ttl-seconds, X-aws-ec2-metadata-token)
 *               https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-metadata-security-credentials.html
 *               (GET /latest/meta-data/iam/security-credentials/ROLE: Code, LastUpdated, Type, AccessKeyId,
 *               SecretAccessKey, Token, Expiration)
 *   container   https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html and
 *               https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html (AccessKeyId,
 *               Expiration, RoleArn, SecretAccessKey, Token; the Authorization header)
 *   SSO portal  https://docs.aws.amazon.com/singlesignon/latest/PortalAPIReference/API_GetRoleCredentials.html
 *               (GET /federation/credentials?account_id&role_name, x-amz-sso_bearer_token; roleCredentials
 *               with accessKeyId, secretAccessKey, sessionToken, expiration in ms)
 *   STS         https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html
 * These check vdev's side of each protocol as documented, not AWS's servers.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as http from 'node:http'
import * as path from 'node:path'
import {createHash} from 'node:crypto'
import type {AddressInfo} from 'node:net'
import {VdevError} from '../../src/core/errors'
import {RefreshingCredentials, containerProvider, imdsProvider, imdsWanted, processProvider, splitCommandLine, type Credentials} from '../../src/remote/credentials'
import {resolveAwsConfig, s3Target} from '../../src/remote/s3'
import {tmpDir} from '../helpers'

interface Seen {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: string
}

/** A loopback HTTP server answering with `answer`; every request it saw, in order. */
async function server(answer: (r: Seen) => {status?: number; body: string; type?: string}): Promise<{url: string; seen: Seen[]; close: () => Promise<void>}> {
  const seen: Seen[] = []
  const s = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => (body += c))
    req.on('end', () => {
      const r: Seen = {method: req.method ?? '', url: req.url ?? '', headers: req.headers, body}
      seen.push(r)
      const a = answer(r)
      res.writeHead(a.status ?? 200, {'content-type': a.type ?? 'application/json'})
      res.end(a.body)
    })
  })
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  return {url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, seen, close: () => new Promise((r) => s.close(() => r()))}
}

const errorOf = async (f: () => unknown): Promise<string> => {
  try {
    await f()
  } catch (err) {
    assert.ok(err instanceof VdevError, String(err))
    return `${err.code}: ${err.message}`
  }
  return 'no error'
}

const EXP = '2031-05-17T15:09:54Z'

describe('remote: AWS credential sources (credentials.ts)', function () {
  this.timeout(30_000)
  let t: {dir: string; cleanup: () => void}
  before(() => (t = tmpDir('vdev-creds-')))
  after(() => t?.cleanup())

  /** A HOME with these shared files. */
  const home = (name: string, config: string, credentials = ''): string => {
    const h = path.join(t.dir, name)
    fs.mkdirSync(path.join(h, '.aws'), {recursive: true})
    fs.writeFileSync(path.join(h, '.aws', 'config'), config)
    fs.writeFileSync(path.join(h, '.aws', 'credentials'), credentials)
    return h
  }

  it('credential_process: split as the AWS CLI documents (quotes, spaces), run without a shell', async () => {
    assert.deepEqual(splitCommandLine('/opt/bin/awscreds-custom --username helen'), ['/opt/bin/awscreds-custom', '--username', 'helen'])
    assert.deepEqual(splitCommandLine('"C:/Program Files/x.exe" --name "a b" \'c d\' e\\ f ""'), ['C:/Program Files/x.exe', '--name', 'a b', 'c d', 'e f', ''])
    assert.deepEqual(splitCommandLine('tool $HOME;rm `x`'), ['tool', '$HOME;rm', '`x`'])
    assert.throws(() => splitCommandLine('tool "open'), /unclosed "/)
    // The program sees its argv exactly, and no shell expands anything.
    const prog = path.join(t.dir, 'a dir', 'echo args.sh')
    fs.mkdirSync(path.dirname(prog))
    fs.writeFileSync(prog, '#!/bin/sh\nprintf \'{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","SessionToken":"tok","Expiration":"2031-01-02T03:04:05Z"}\' "$1" "$2"\n', {mode: 0o755})
    const c = await processProvider(`"${prog}" '$HOME' "two words"`, 'p').load()
    assert.deepEqual(c, {accessKeyId: '$HOME', secretAccessKey: 'two words', sessionToken: 'tok', expiration: new Date('2031-01-02T03:04:05Z')})
  })

  it("credential_process: a program's failure, bad JSON, another Version or no keys is one line naming the profile, exit 3", async () => {
    const script = (name: string, body: string) => {
      const p = path.join(t.dir, name)
      fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, {mode: 0o755})
      return p
    }
    const cases: Array<[string, RegExp]> = [
      [script('fails.sh', 'echo "first line" >&2; echo "please log in" >&2; exit 3'), /^io: AWS credential_process of profile "p" \(.*fails\.sh\): exit status 3: please log in$/],
      [script('notjson.sh', 'echo hello'), /: its output is not JSON$/],
      [script('v2.sh', 'echo \'{"Version":2,"AccessKeyId":"a","SecretAccessKey":"b"}\''), /: "Version" is 2, not 1$/],
      [script('nokeys.sh', 'echo \'{"Version":1,"AccessKeyId":"a"}\''), /: no AccessKeyId and SecretAccessKey in its answer$/],
      [script('badexp.sh', 'echo \'{"Version":1,"AccessKeyId":"a","SecretAccessKey":"b","Expiration":"soon"}\''), /: Expiration "soon" is not a time$/],
      [path.join(t.dir, 'no-such-program'), /: no such program$/],
    ]
    for (const [cmd, re] of cases) assert.match(await errorOf(() => processProvider(cmd, 'p').load()), re)
    assert.match(await errorOf(() => processProvider('  ', 'p')), /^usage: AWS credential_process of profile "p" is empty/)
    // Keys already expired are refused, not used (nor loaded again in a loop).
    const expired = script('expired.sh', 'echo \'{"Version":1,"AccessKeyId":"a","SecretAccessKey":"b","Expiration":"2020-01-01T00:00:00Z"}\'')
    assert.match(await errorOf(() => RefreshingCredentials.start(processProvider(expired, 'p'))), /^io: AWS credential_process of profile "p": gave keys that expired at 2020-01-01T00:00:00.000Z$/)
  })

  it('the chain, in the SDK\'s order: AWS_PROFILE, the environment\'s keys, the default profile (SSO, role, keys, web identity, process), web identity, container, instance metadata', () => {
    const h = home(
      'chain',
      '[default]\ncredential_process = /bin/true\n[profile sso]\nsso_session = corp\nsso_account_id = 111122223333\nsso_role_name = Reader\n[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\n' +
        '[profile keysandrole]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = base\n[profile base]\nrole_arn = arn:aws:iam::1:role/ignored\ncredential_source = Environment\n[profile webid]\nrole_arn = arn:aws:iam::1:role/w\nweb_identity_token_file = /t\n' +
        '[profile loop1]\nrole_arn = a\nsource_profile = loop2\n[profile loop2]\nrole_arn = b\nsource_profile = loop1\n[profile mfa]\nrole_arn = a\nsource_profile = base\nmfa_serial = arn:aws:iam::1:mfa/x\n[profile badsource]\nrole_arn = a\ncredential_source = Somewhere\n[profile nosession]\nsso_session = gone\nsso_account_id = 1\nsso_role_name = r\n',
      '[base]\naws_access_key_id = BASEKEY\naws_secret_access_key = basesecret\n',
    )
    const from = (env: Record<string, string>, at = h) => resolveAwsConfig(env, at).from
    assert.equal(from({}), 'credential_process of profile "default"')
    // The environment's keys come before the default profile; AWS_PROFILE before both.
    assert.equal(from({AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's'}), 'environment')
    assert.equal(from({AWS_PROFILE: 'sso', AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's'}), 'SSO profile "sso" (account 111122223333, role Reader)')
    // A source_profile's keys win over its own role (as the AWS CLI): one AssumeRole, not two.
    assert.equal(from({AWS_PROFILE: 'keysandrole'}), 'role arn:aws:iam::1:role/r of profile "keysandrole" (AssumeRole with the credentials from profile "base")')
    assert.equal(from({AWS_PROFILE: 'base', AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's'}), 'role arn:aws:iam::1:role/ignored of profile "base" (AssumeRole with the credentials from environment)')
    assert.equal(from({AWS_PROFILE: 'webid'}), 'role arn:aws:iam::1:role/w (AssumeRoleWithWebIdentity, token /t)')
    // The default profile before the environment's web identity; that before the container; that before IMDS.
    const wi = {AWS_WEB_IDENTITY_TOKEN_FILE: '/var/run/token', AWS_ROLE_ARN: 'arn:aws:iam::1:role/pod'}
    const ctr = {AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://127.0.0.1:1/creds'}
    const imds = {AWS_EC2_METADATA_SERVICE_ENDPOINT: 'http://127.0.0.1:2'}
    const empty = home('empty', '')
    assert.equal(from({...wi, ...ctr, ...imds}), 'credential_process of profile "default"')
    assert.equal(from({...wi, ...ctr, ...imds}, empty), 'role arn:aws:iam::1:role/pod (AssumeRoleWithWebIdentity, token /var/run/token)')
    assert.equal(from({...ctr, ...imds}, empty), 'container credentials')
    assert.equal(from(imds, empty), 'the EC2 instance metadata')
    assert.equal(from({...imds, AWS_EC2_METADATA_DISABLED: 'true'}, empty), 'none')
    // This machine is no EC2 instance: without an endpoint, nothing is sent to 169.254.169.254.
    assert.equal(from({}, empty), 'none')
    // Configuration errors: one line, exit 2.
    const usage = (env: Record<string, string>): string => {
      try {
        resolveAwsConfig(env, h)
      } catch (err) {
        assert.ok(err instanceof VdevError && err.exitCode === 2, String(err))
        return err.message
      }
      return 'no error'
    }
    assert.match(usage({AWS_PROFILE: 'loop1'}), /^AWS profile "loop2": source_profile "loop1" makes a cycle \(loop1 → loop2 → loop1\)$/)
    assert.match(usage({AWS_PROFILE: 'mfa'}), /needs an MFA code \(mfa_serial\), which vdev does not ask for/)
    assert.match(usage({AWS_PROFILE: 'badsource'}), /credential_source "Somewhere": expected Environment, Ec2InstanceMetadata or EcsContainer/)
    assert.match(usage({AWS_PROFILE: 'nosession'}), /sso_session "gone" has no \[sso-session gone\] section/)
    assert.match(usage({AWS_PROFILE: 'base'}), /credential_source Environment, but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set/)
    assert.throws(() => containerProvider({AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://example.com/creds'}), /must be https, or http to loopback/)
  })

  it('IMDSv2 (a local server as EC2 documents it): PUT a token, then the role, then its keys with the token; AWS_EC2_METADATA_DISABLED; EC2 detected from DMI', async () => {
    const s = await server((r) => {
      if (r.method === 'PUT' && r.url === '/latest/api/token') return r.headers['x-aws-ec2-metadata-token-ttl-seconds'] ? {body: 'TOKEN123', type: 'text/plain'} : {status: 400, body: ''}
      if (r.headers['x-aws-ec2-metadata-token'] !== 'TOKEN123') return {status: 401, body: ''}
      if (r.method === 'GET' && r.url === '/latest/meta-data/iam/security-credentials/') return {body: 'lab-instance-role', type: 'text/plain'}
      if (r.method === 'GET' && r.url === '/latest/meta-data/iam/security-credentials/lab-instance-role')
        return {body: JSON.stringify({Code: 'Success', LastUpdated: '2031-05-17T09:00:00Z', Type: 'AWS-HMAC', AccessKeyId: 'ASIAIMDS', SecretAccessKey: 'imds/secret', Token: 'imdstoken', Expiration: EXP})}
      return {status: 404, body: ''}
    })
    try {
      const c = await imdsProvider({AWS_EC2_METADATA_SERVICE_ENDPOINT: s.url}).load()
      assert.deepEqual(c, {accessKeyId: 'ASIAIMDS', secretAccessKey: 'imds/secret', sessionToken: 'imdstoken', expiration: new Date(EXP)})
      assert.deepEqual(
        s.seen.map((r) => `${r.method} ${r.url}`),
        ['PUT /latest/api/token', 'GET /latest/meta-data/iam/security-credentials/', 'GET /latest/meta-data/iam/security-credentials/lab-instance-role'],
      )
      assert.equal(s.seen[0].headers['x-aws-ec2-metadata-token-ttl-seconds'], '21600')
    } finally {
      await s.close()
    }
    const none = await server(() => ({status: 404, body: ''}))
    try {
      assert.match(await errorOf(() => imdsProvider({AWS_EC2_METADATA_SERVICE_ENDPOINT: none.url}).load()), /^io: AWS instance metadata \(http:\/\/127\.0\.0\.1:\d+\): PUT \/latest\/api\/token: HTTP 404$/)
    } finally {
      await none.close()
    }
    // Whether to ask at all: the endpoint variable, or the firmware's word (a fake /sys here).
    const sys = path.join(t.dir, 'sys')
    fs.mkdirSync(path.join(sys, 'class', 'dmi', 'id'), {recursive: true})
    assert.equal(imdsWanted({}, sys), false)
    fs.writeFileSync(path.join(sys, 'class', 'dmi', 'id', 'sys_vendor'), 'Amazon EC2\n')
    assert.equal(imdsWanted({}, sys), true)
    assert.equal(imdsWanted({AWS_EC2_METADATA_DISABLED: 'TRUE'}, sys), false)
  })

  it('container credentials (a local server as ECS documents it): the Authorization token, from the file first; refreshed before the Expiration, a failed refresh logged and retried', async () => {
    let n = 0
    let failing = false
    const s = await server((r) => {
      if (r.url !== '/v2/credentials/task-1' || r.method !== 'GET') return {status: 404, body: ''}
      if (r.headers.authorization !== 'Bearer from-file') return {status: 403, body: 'bad token'}
      if (failing) return {status: 500, body: 'agent restarting'}
      n++
      // Two seconds of life: loaded again halfway.
      return {body: JSON.stringify({AccessKeyId: `ASIACTR${n}`, Expiration: new Date(Date.now() + 2000).toISOString(), RoleArn: 'arn:aws:iam::1:role/task', SecretAccessKey: 's', Token: `t${n}`})}
    })
    const tokenFile = path.join(t.dir, 'ctr-token')
    fs.writeFileSync(tokenFile, 'Bearer from-file\n')
    const env = {AWS_CONTAINER_CREDENTIALS_FULL_URI: `${s.url}/v2/credentials/task-1`, AWS_CONTAINER_AUTHORIZATION_TOKEN: 'Bearer from-variable', AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: tokenFile}
    const logged: string[] = []
    const r = await RefreshingCredentials.start(containerProvider(env)!, (l) => logged.push(l))
    try {
      assert.equal(r.current.accessKeyId, 'ASIACTR1')
      const wait = async (ok: () => boolean) => {
        const t0 = Date.now()
        while (!ok() && Date.now() - t0 < 8000) await new Promise((res) => setTimeout(res, 50))
      }
      await wait(() => r.current.accessKeyId === 'ASIACTR2')
      assert.equal(r.current.accessKeyId, 'ASIACTR2')
      assert.equal(r.current.sessionToken, 't2')
      failing = true
      await wait(() => logged.length > 0)
      assert.match(logged[0], /^vdev: refreshing the AWS credentials failed, trying again: AWS container credentials \(http:\/\/127\.0\.0\.1:\d+\/v2\/credentials\/task-1\): HTTP 500: agent restarting$/)
      assert.equal(r.current.accessKeyId, 'ASIACTR2', 'the old keys are kept while refreshing fails')
      failing = false
      await wait(() => r.current.accessKeyId === 'ASIACTR3')
      assert.equal(r.current.accessKeyId, 'ASIACTR3')
    } finally {
      r.close()
    }
    const loads = n
    await new Promise((res) => setTimeout(res, 1500))
    assert.equal(n, loads, 'loaded again after close')
    await s.close()
    // Without the file: the variable.
    const v = await server((q) => ({body: JSON.stringify({AccessKeyId: String(q.headers.authorization), SecretAccessKey: 's', Token: 't', Expiration: EXP})}))
    try {
      const c: Credentials = await containerProvider({AWS_CONTAINER_CREDENTIALS_FULL_URI: `${v.url}/c`, AWS_CONTAINER_AUTHORIZATION_TOKEN: 'tok-var'})!.load()
      assert.equal(c.accessKeyId, 'tok-var')
    } finally {
      await v.close()
    }
  })

  it('SSO (a local portal as AWS documents it): the token `aws sso login` cached (SHA-1 of the session name) for GetRoleCredentials; an expired or missing token says to run aws sso login', async () => {
    const s = await server((r) => {
      const u = new URL(r.url, 'http://x')
      if (r.method !== 'GET' || u.pathname !== '/federation/credentials') return {status: 404, body: ''}
      if (r.headers['x-amz-sso_bearer_token'] !== 'cached-access-token') return {status: 401, body: '{"message":"Session token not found or invalid"}'}
      if (u.searchParams.get('account_id') !== '111122223333' || u.searchParams.get('role_name') !== 'Reader') return {status: 403, body: ''}
      return {body: JSON.stringify({roleCredentials: {accessKeyId: 'ASIASSO', secretAccessKey: 'sso/secret', sessionToken: 'ssotoken', expiration: Date.parse(EXP)}})}
    })
    try {
      const h = home('sso', `[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\nsso_role_name = Reader\nregion = eu-west-1\n[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\n`)
      const cache = path.join(h, '.aws', 'sso', 'cache')
      fs.mkdirSync(cache, {recursive: true})
      const file = path.join(cache, `${createHash('sha1').update('corp').digest('hex')}.json`)
      const env = {AWS_PROFILE: 'dev', AWS_ENDPOINT_URL_SSO: s.url}
      const load = async () => {
        const t0 = s3Target('s3://bucket/k', env, h)
        await t0.load()
        t0.close()
        const hd: Record<string, string> = {}
        t0.sign('GET', hd)
        return hd
      }
      assert.match(await errorOf(load), /^io: AWS SSO profile "dev": no cached SSO token \(.*: ENOENT\): run `aws sso login --sso-session corp`$/)
      fs.writeFileSync(file, JSON.stringify({startUrl: 'https://corp.awsapps.com/start', region: 'eu-west-1', accessToken: 'cached-access-token', expiresAt: '2020-01-01T00:00:00Z'}))
      assert.match(await errorOf(load), /^io: AWS SSO profile "dev": the SSO session expired at 2020-01-01T00:00:00.000Z: run `aws sso login --sso-session corp`$/)
      fs.writeFileSync(file, JSON.stringify({startUrl: 'https://corp.awsapps.com/start', region: 'eu-west-1', accessToken: 'cached-access-token', expiresAt: EXP}))
      const hd = await load()
      assert.match(hd.authorization, /^AWS4-HMAC-SHA256 Credential=ASIASSO\/\d{8}\/eu-west-1\/s3\/aws4_request/)
      assert.equal(hd['x-amz-security-token'], 'ssotoken')
      fs.writeFileSync(file, JSON.stringify({accessToken: 'revoked', expiresAt: EXP}))
      assert.match(await errorOf(load), /the portal refused the cached token \(HTTP 401\): run `aws sso login --sso-session corp`$/)
    } finally {
      await s.close()
    }
  })

  it('web identity (a local STS as AWS documents AssumeRoleWithWebIdentity): an unsigned POST with the token file\'s token; STS errors are one line', async () => {
    let refuse = false
    const s = await server((r) => {
      const q = new URLSearchParams(r.body)
      if (refuse) return {status: 403, type: 'text/xml', body: '<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Token expired</Message></Error></ErrorResponse>'}
      if (r.method !== 'POST' || r.headers.authorization || q.get('Action') !== 'AssumeRoleWithWebIdentity' || q.get('Version') !== '2011-06-15' || q.get('WebIdentityToken') !== 'eyJ.oidc.token' || q.get('RoleArn') !== 'arn:aws:iam::1:role/pod')
        return {status: 400, body: '<ErrorResponse><Error><Code>Bad</Code></Error></ErrorResponse>', type: 'text/xml'}
      return {
        type: 'text/xml',
        body: `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>webtoken</SessionToken><SecretAccessKey>web/secret</SecretAccessKey><Expiration>${EXP}</Expiration><AccessKeyId>ASIAWEB</AccessKeyId></Credentials><SubjectFromWebIdentityToken>system:serviceaccount:x</SubjectFromWebIdentityToken></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>`,
      }
    })
    try {
      const token = path.join(t.dir, 'web-token')
      fs.writeFileSync(token, 'eyJ.oidc.token\n')
      const empty = home('web', '')
      const env = {AWS_WEB_IDENTITY_TOKEN_FILE: token, AWS_ROLE_ARN: 'arn:aws:iam::1:role/pod', AWS_ROLE_SESSION_NAME: 'pod-a', AWS_ENDPOINT_URL_STS: s.url, AWS_ENDPOINT_URL: 'http://127.0.0.1:9/'}
      const tgt = s3Target('s3://bucket/k', env, empty)
      await tgt.load()
      tgt.close()
      const hd: Record<string, string> = {}
      tgt.sign('GET', hd)
      assert.match(hd.authorization, /Credential=ASIAWEB\//)
      assert.equal(hd['x-amz-security-token'], 'webtoken')
      assert.equal(new URLSearchParams(s.seen[0].body).get('RoleSessionName'), 'pod-a')
      refuse = true
      assert.match(await errorOf(() => s3Target('s3://bucket/k', env, empty).load()), /^io: AWS web identity: AssumeRoleWithWebIdentity arn:aws:iam::1:role\/pod: HTTP 403 InvalidIdentityToken: Token expired$/)
    } finally {
      await s.close()
    }
  })
})

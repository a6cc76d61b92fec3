/**
 * S3 (`s3://BUCKET/KEY`, docs/remote.md "S3") through the real CLI against a real S3 server this file
 * starts once and stops itself: Ceph's RADOS Gateway on a one-node cluster (test/remote/rgw.ts), with
 * AWS_ENDPOINT_URL (path-style) and SigV4 on every request. info, verify and extract give exactly what they
 * give for the local file; wrong keys (403), a missing object or bucket (404) and a non-VDIMG object are
 * one line and exit 3, 3 and 4; AWS_PROFILE picks keys and endpoint from the shared files; `vdev serve
 * s3:// --scratch` serves a writable overlay over the S3 base (NBD, serving threads). Credential sources
 * that run here for real: a role profile through the gateway's STS AssumeRole, a credential_process
 * script, and refresh (keys that live 2 s and 4 s, loaded again while the image is open and while attached);
 * container credentials from a local server. Serving threads' own GETs (libcurl, signed with the keys the
 * owner publishes in shared memory): no hop, a refused key or a deleted version left to the owner's GET,
 * a versioned public-read bucket, keys loaded again while a thread reads. The gateway keeps Ceph's default
 * frontend (no TCP_NODELAY): small GETs are not held by delayed ACKs (TCP_QUICKACK). As root, with
 * the FUSE backend (the kernel's FUSE client and loop driver): every MiB of the device against the medium,
 * EIO at exactly the unreadable sectors; two attaches of the object at once (two state directories: two
 * "machines", each its own daemon and cache) read the same bytes; the gateway stopped: EIO within the
 * timeout, and the same device reads again once it is back; the object replaced while attached: EIO
 * and a log line, never the new object's bytes. After the suite, no Ceph daemon is left (ps), nor its directory.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as http from 'node:http'
import type {AddressInfo} from 'node:net'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {BIN, have, prng, runCli, sha256, textish, writeTruthMap} from '../helpers'
import {IS_ROOT, Sandbox, readDirect, run} from '../sandbox'
import {checkServeScratch} from './scratch'
import {HAVE_RGW, Rgw} from './rgw'
import {Worker} from 'node:worker_threads'
import {HttpObject} from '../../src/remote/http'
import {curlAvailable} from '../../src/remote/curl'

const MiB = 1 << 20
const SIZE = 24 * MiB
const BAD = [
  {offset: MiB + 512, length: 512},
  {offset: 13 * MiB, length: 64 << 10},
]
const BUCKET = 'images'
/** A key that needs encoding (a space, a non-ASCII letter) and has a "directory". */
const KEY = 'case 42/disk-é.vdimg'

function medium(seed: number): Buffer {
  const b = Buffer.alloc(SIZE)
  textish(seed, 8 * MiB).copy(b, 0)
  prng(seed + 1, 6 * MiB).copy(b, 8 * MiB)
  textish(seed + 2, 6 * MiB).copy(b, 18 * MiB)
  return b
}

function logical(data: Buffer): Buffer {
  const b = Buffer.from(data)
  for (const r of BAD) b.fill(0, r.offset, r.offset + r.length)
  return b
}

const lines = (s: string) => s.trim().split('\n').filter(Boolean)

describe('remote images: S3 against a real Ceph RADOS Gateway', function () {
  this.timeout(240_000)
  let sb: Sandbox
  let rgw: Rgw
  let data: Buffer
  let url: string
  let image: Buffer
  let env: Record<string, string>

  before(async function () {
    if (!HAVE_RGW) this.skip()
    sb = new Sandbox('vdev-s3-')
    data = medium(21)
    fs.writeFileSync(sb.p('medium.raw'), data)
    writeTruthMap(sb.p('medium.map'), SIZE, BAD)
    const c = await runCli(['create', sb.p('medium.raw'), sb.p('disk.vdimg'), '--mapfile', sb.p('medium.map'), '--meta', 'case=s3'])
    assert.equal(c.code, 0, c.stderr)
    fs.writeFileSync(sb.p('other.raw'), medium(77))
    const o = await runCli(['create', sb.p('other.raw'), sb.p('other.vdimg'), '--mapfile', sb.p('medium.map')])
    assert.equal(o.code, 0, o.stderr)
    image = fs.readFileSync(sb.p('disk.vdimg'))
    rgw = await Rgw.start()
    console.log(`      (the Ceph cluster and radosgw came up in ${(rgw.startMs / 1000).toFixed(1)} s)`)
    await rgw.createBucket(BUCKET)
    await rgw.put(BUCKET, KEY, image)
    await rgw.put(BUCKET, 'notes.txt', Buffer.from('not an image\n'.repeat(100)))
    url = `s3://${BUCKET}/${KEY}`
    // Every command here reads the AWS configuration from this environment only: no ~/.aws of the host.
    env = {...rgw.env(), HOME: sb.p('home'), XDG_CACHE_HOME: sb.p('cache-home')}
  })

  after(async function () {
    if (!sb) return
    const left = await sb.teardown()
    if (rgw) {
      await rgw.stop()
      assert.deepEqual(rgw.leftovers(), [], 'Ceph daemons left running')
      assert.ok(!fs.existsSync(rgw.dir), `${rgw.dir} left behind`)
    }
    assert.deepEqual(left, [], `left behind: ${left.join(', ')}`)
  })

  const vdev = (args: string[], extra: Record<string, string | undefined> = {}) => runCli(args, {env: {...env, ...extra}})

  it('info, verify and extract of s3://BUCKET/KEY give exactly what the local file gives', async () => {
    const li = await runCli(['info', sb.p('disk.vdimg'), '--json'])
    const ri = await vdev(['info', url, '--json', '--cache', 'none'])
    assert.equal(ri.code, 0, ri.stderr)
    const strip = (s: string) => {
      const j = JSON.parse(s)
      delete j.path
      delete j.file
      delete j.remote
      return j
    }
    assert.deepEqual(strip(ri.stdout), strip(li.stdout))
    // What pins it: S3's ETag (an MD5 for a single-part upload), no version (versioning is off).
    assert.match(JSON.parse(ri.stdout).remote.etag, /^"[0-9a-f]{32}"$/)
    assert.equal(JSON.parse(ri.stdout).remote.versionId, undefined)
    const v = await vdev(['verify', url, '--cache', 'none'])
    assert.equal(v.code, 0, v.stderr)
    // Through the default cache: a second extract is answered from it, with the same bytes.
    const out = sb.p('extracted.raw')
    const e = await vdev(['extract', url, out, '--mapfile-out', sb.p('extracted.map')])
    assert.equal(e.code, 0, e.stderr)
    assert.equal(sha256(fs.readFileSync(out)), sha256(logical(data)))
    const le = await runCli(['extract', sb.p('disk.vdimg'), sb.p('local.raw'), '--mapfile-out', sb.p('local.map')])
    assert.equal(le.code, 0, le.stderr)
    assert.equal(fs.readFileSync(sb.p('extracted.map'), 'utf8').replace(/^#.*\n/gm, ''), fs.readFileSync(sb.p('local.map'), 'utf8').replace(/^#.*\n/gm, ''))
    const x = await vdev(['extract', url, '-'])
    assert.equal(x.code, 0, x.stderr)
    assert.ok(x.stdoutBuf.equals(logical(data)), 'extract through the cache')
  })

  it('wrong keys: exit 3 and one line naming the S3 error; the gateway really checks the signature', async () => {
    const secret = await vdev(['info', url, '--cache', 'none'], {AWS_SECRET_ACCESS_KEY: 'not-the-secret'})
    assert.equal(secret.code, 3, secret.stderr)
    assert.deepEqual(lines(secret.stderr), [`vdev: ${url}: access denied (HTTP 403 SignatureDoesNotMatch): the AWS credentials from environment`])
    const key = await vdev(['info', url, '--cache', 'none'], {AWS_ACCESS_KEY_ID: 'NOSUCHKEY'})
    assert.equal(key.code, 3, key.stderr)
    assert.match(key.stderr, /^vdev: s3:\/\/images\/case 42\/disk-é\.vdimg: access denied \(HTTP 403 InvalidAccessKeyId\)/)
    assert.equal(lines(key.stderr).length, 1)
    const none = await vdev(['info', url, '--cache', 'none'], {AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined})
    assert.equal(none.code, 3, none.stderr)
    assert.match(none.stderr, /access denied \(HTTP 403 AccessDenied\): no AWS credentials were found, so the request was unsigned/)
  })

  it('a missing object or bucket: exit 3, one line; a non-VDIMG object: exit 4', async () => {
    const key = await vdev(['info', `s3://${BUCKET}/no/such.vdimg`, '--cache', 'none'])
    assert.equal(key.code, 3, key.stderr)
    assert.deepEqual(lines(key.stderr), [`vdev: s3://${BUCKET}/no/such.vdimg: not found (HTTP 404 NoSuchKey)`])
    const bucket = await vdev(['verify', 's3://nosuchbucket/disk.vdimg', '--cache', 'none'])
    assert.equal(bucket.code, 3, bucket.stderr)
    assert.deepEqual(lines(bucket.stderr), ['vdev: s3://nosuchbucket/disk.vdimg: no such bucket (HTTP 404 NoSuchBucket)'])
    const notes = await vdev(['extract', `s3://${BUCKET}/notes.txt`, sb.p('notes.raw'), '--cache', 'none'])
    assert.equal(notes.code, 4, notes.stderr)
    assert.equal(lines(notes.stderr).length, 1, notes.stderr)
    assert.match(notes.stderr, /not a VDIMG image/)
    assert.ok(!fs.existsSync(sb.p('notes.raw')))
    const bad = await vdev(['info', 's3://bucket-only'])
    assert.equal(bad.code, 2, bad.stderr)
    assert.match(bad.stderr, /expected s3:\/\/BUCKET\/KEY/)
  })

  it('AWS_PROFILE: keys from the shared credentials file, endpoint and region from the config file', async () => {
    const home = sb.p('profile-home')
    fs.mkdirSync(path.join(home, '.aws'), {recursive: true})
    fs.writeFileSync(path.join(home, '.aws', 'credentials'), `[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n[lab]\naws_access_key_id = ${rgw.accessKey}\naws_secret_access_key = ${rgw.secretKey}\n`)
    fs.writeFileSync(path.join(home, '.aws', 'config'), `[default]\nregion = us-east-1\n\n[profile lab]\nregion = us-east-1\nendpoint_url = ${rgw.endpoint}\n`)
    const clean = {HOME: home, AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_ENDPOINT_URL: undefined, AWS_REGION: undefined}
    const r = await vdev(['extract', url, '-', '--cache', 'none'], {...clean, AWS_PROFILE: 'lab'})
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdoutBuf.equals(logical(data)))
    // The default profile's keys are wrong, and its config names no endpoint: AWS itself would be asked.
    const d = await vdev(['info', url, '--cache', 'none'], {...clean, AWS_ENDPOINT_URL: rgw.endpoint})
    assert.equal(d.code, 3)
    assert.match(d.stderr, /access denied \(HTTP 403 InvalidAccessKeyId\): the AWS credentials from profile "default"/)
    const missing = await vdev(['info', url], {...clean, AWS_PROFILE: 'nope'})
    assert.equal(missing.code, 2)
    assert.match(missing.stderr, /AWS_PROFILE nope: no such profile in /)
  })

  /** A home with these shared files, and an environment that reads only them (no keys, no endpoint variables). */
  const awsHome = (name: string, config: string, credentials = '') => {
    const home = sb.p(name)
    fs.mkdirSync(path.join(home, '.aws'), {recursive: true})
    fs.writeFileSync(path.join(home, '.aws', 'config'), config)
    fs.writeFileSync(path.join(home, '.aws', 'credentials'), credentials)
    return {HOME: home, AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_ENDPOINT_URL: undefined, AWS_REGION: undefined}
  }

  /** Run `f` in this process with the AWS environment `e` (as a daemon holding the image would have it). */
  const withEnv = async <T>(e: Record<string, string | undefined>, f: () => Promise<T>): Promise<T> => {
    const saved = {...process.env}
    for (const [k, v] of Object.entries({...env, ...e})) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
    try {
      return await f()
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k]
      Object.assign(process.env, saved)
    }
  }

  it('a role profile (role_arn + source_profile): STS AssumeRole at the gateway, and the image read with the role\'s temporary keys', async () => {
    // "analyst" owns nothing and has no access to the bucket by itself; the role it may assume can read it.
    rgw.admin(['user', 'create', '--uid', 'analyst', '--display-name', 'analyst', '--access-key', 'ANALYSTKEY', '--secret-key', 'analyst-secret'])
    const trust = {Version: '2012-10-17', Statement: [{Effect: 'Allow', Principal: {AWS: ['arn:aws:iam:::user/analyst']}, Action: ['sts:AssumeRole']}]}
    rgw.admin(['role', 'create', '--role-name', 'ImageReader', '--assume-role-policy-doc', JSON.stringify(trust)])
    const read = {Version: '2012-10-17', Statement: [{Effect: 'Allow', Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::images/*']}]}
    rgw.admin(['role-policy', 'put', '--role-name', 'ImageReader', '--policy-name', 'read-images', '--policy-doc', JSON.stringify(read)])
    const e = awsHome(
      'role-home',
      `[profile reader]\nrole_arn = arn:aws:iam:::role/ImageReader\nsource_profile = analyst\nrole_session_name = vdev-test\nduration_seconds = 900\nendpoint_url = ${rgw.endpoint}\nregion = us-east-1\n[profile analyst]\nendpoint_url = ${rgw.endpoint}\n[profile nobody]\nrole_arn = arn:aws:iam:::role/NoSuchRole\nsource_profile = analyst\nendpoint_url = ${rgw.endpoint}\n`,
      '[analyst]\naws_access_key_id = ANALYSTKEY\naws_secret_access_key = analyst-secret\n',
    )
    const t0 = Date.now()
    await rgw.restartGateway({sts: true})
    console.log(`      (radosgw restarted with STS on in ${((Date.now() - t0) / 1000).toFixed(1)} s)`)
    try {
      await assumeRole(e)
    } finally {
      await rgw.restartGateway()
    }
  })

  const assumeRole = async (e: Record<string, string | undefined>) => {
    // In this process (as the attach daemon or `vdev serve` opens it): the analyst's own keys are refused;
    // the role's temporary keys read the whole object.
    await withEnv({...e, AWS_PROFILE: 'analyst'}, async () => {
      await assert.rejects(HttpObject.open(url, {readAhead: false}), /access denied \(HTTP 403 AccessDenied\): the AWS credentials from profile "analyst"$/)
    })
    await withEnv({...e, AWS_PROFILE: 'reader'}, async () => {
      const obj = await HttpObject.open(url, {readAhead: false})
      try {
        assert.ok((await obj.read(image.length, 0)).equals(image), 'bytes read with the assumed role')
      } finally {
        await obj.close()
      }
    })
    // Through the CLI: a role that does not exist is one line, exit 3.
    const bad = await vdev(['info', url, '--cache', 'none'], {...e, AWS_PROFILE: 'nobody'})
    assert.equal(bad.code, 3, bad.stderr)
    assert.equal(lines(bad.stderr).length, 1, bad.stderr)
    assert.match(bad.stderr, /^vdev: AWS profile "nobody": AssumeRole arn:aws:iam:::role\/NoSuchRole: HTTP 404 NoSuchEntity/)
  }

  it('credential_process: a real program\'s JSON (Version 1) signs; its failure is one line, exit 3', async () => {
    const ok = sb.p('bin dir/creds ok.sh')
    fs.mkdirSync(path.dirname(ok), {recursive: true})
    fs.writeFileSync(ok, `#!/bin/sh\n[ "$1" = "--user" ] && [ "$2" = "lab user" ] || { echo "bad argv: $*" >&2; exit 2; }\nprintf '{"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "%s"}' '${rgw.accessKey}' '${rgw.secretKey}'\n`, {mode: 0o755})
    const fail = sb.p('creds-fail.sh')
    fs.writeFileSync(fail, '#!/bin/sh\necho "token for lab expired" >&2\nexit 7\n', {mode: 0o755})
    const e = awsHome('process-home', `[default]\ncredential_process = "${ok}" --user "lab user"\nendpoint_url = ${rgw.endpoint}\n[profile broken]\ncredential_process = ${fail}\nendpoint_url = ${rgw.endpoint}\n`)
    const r = await vdev(['info', url, '--json', '--cache', 'none'], e)
    assert.equal(r.code, 0, r.stderr)
    assert.equal(JSON.parse(r.stdout).metadata.case, 's3')
    const b = await vdev(['info', url, '--cache', 'none'], {...e, AWS_PROFILE: 'broken'})
    assert.equal(b.code, 3, b.stderr)
    assert.deepEqual(lines(b.stderr), [`vdev: AWS credential_process of profile "broken" (${fail}): exit status 7: token for lab expired`])
  })

  it('container credentials (a local server answering as ECS documents it: docs/remote.md) sign a real read', async () => {
    let asked = 0
    const ctr = http.createServer((req, res) => {
      asked++
      const ok = req.url === '/creds' && req.headers.authorization === 'Bearer task-token'
      res.writeHead(ok ? 200 : 403, {'content-type': 'application/json'})
      res.end(ok ? JSON.stringify({AccessKeyId: rgw.accessKey, SecretAccessKey: rgw.secretKey, Token: '', Expiration: new Date(Date.now() + 3600_000).toISOString(), RoleArn: 'arn:aws:iam::1:role/task'}) : '')
    })
    await new Promise<void>((r) => ctr.listen(0, '127.0.0.1', r))
    try {
      const e = awsHome('container-home', '')
      const r = await vdev(['info', url, '--json', '--cache', 'none'], {...e, AWS_ENDPOINT_URL: rgw.endpoint, AWS_CONTAINER_CREDENTIALS_FULL_URI: `http://127.0.0.1:${(ctr.address() as AddressInfo).port}/creds`, AWS_CONTAINER_AUTHORIZATION_TOKEN: 'Bearer task-token'})
      assert.equal(r.code, 0, r.stderr)
      const j = JSON.parse(r.stdout)
      assert.equal(j.metadata.case, 's3')
      assert.equal(j.size, SIZE)
      assert.ok(asked >= 1, 'the container endpoint was not asked')
    } finally {
      await new Promise((r) => ctr.close(r))
    }
  })

  /** A new bucket with versioning on. */
  const versionedBucket = async (bucket: string) => {
    await rgw.createBucket(bucket)
    await rgw.enableVersioning(bucket)
  }

  /**
   * Two keys of user vdev (`${NAME}ONE`, `${NAME}TWO`) and a credential_process in an AWS home of its own
   * that gives the first on its first run and the second on every later one, each expiring `seconds` later;
   * `count` is the file that counts its runs.
   */
  const rotatingKeys = (name: string, seconds: number) => {
    const id = name.toUpperCase()
    for (const n of ['ONE', 'TWO']) rgw.admin(['key', 'create', '--uid', 'vdev', '--key-type', 's3', '--access-key', id + n, '--secret-key', `${name}-${n.toLowerCase()}`])
    const count = sb.p(`${name}-process-runs`)
    const script = sb.p(`${name}-rotating.sh`)
    fs.writeFileSync(
      script,
      `#!/bin/sh\nn=$(( $(cat '${count}' 2>/dev/null || echo 0) + 1 ))\necho $n > '${count}'\nif [ $n = 1 ]; then k=${id}ONE s=${name}-one; else k=${id}TWO s=${name}-two; fi\nexp=$(date -u -d '+${seconds} seconds' +%Y-%m-%dT%H:%M:%S.%3NZ)\nprintf '{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","Expiration":"%s"}' $k $s $exp\n`,
      {mode: 0o755},
    )
    return {count, first: `${id}ONE`, env: awsHome(`${name}-home`, `[default]\ncredential_process = ${script}\nendpoint_url = ${rgw.endpoint}\n`)}
  }

  it('temporary keys are loaded again before they expire while the image is open: a second credential_process run, and reads signed with its keys', async () => {
    // Two keys of the same user; the program gives the first, then the second; the first is then deleted.
    const {count, first, env: e} = rotatingKeys('rotate', 2)
    await withEnv(e, async () => {
      const obj = await HttpObject.open(url, {readAhead: false})
      try {
        assert.ok((await obj.read(4096, 4096)).equals(image.subarray(4096, 8192)))
        assert.equal(fs.readFileSync(count, 'utf8').trim(), '1')
        // Two seconds of life: loaded again after one, and again one later. A third run starts only once
        // the second's keys are in use (the next load is scheduled from them).
        const t0 = Date.now()
        const runs = () => Number(fs.readFileSync(count, 'utf8'))
        while (runs() < 2 && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 50))
        assert.ok(runs() >= 2 && Date.now() - t0 < 2000, `credential_process was not run again before the expiration (${runs()} runs in ${Date.now() - t0} ms)`)
        while (runs() < 3 && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 50))
        assert.ok(runs() >= 3, `${runs()} runs`)
        rgw.admin(['key', 'rm', '--uid', 'vdev', '--key-type', 's3', '--access-key', first])
        assert.ok((await obj.read(4096, 3 * MiB)).equals(image.subarray(3 * MiB, 3 * MiB + 4096)), 'a read after the refresh')
      } finally {
        await obj.close()
      }
    })
    // Closed: no more runs (after one that may have been starting as it closed).
    await new Promise((r) => setTimeout(r, 500))
    const runs = fs.readFileSync(count, 'utf8').trim()
    await new Promise((r) => setTimeout(r, 1500))
    assert.equal(fs.readFileSync(count, 'utf8').trim(), runs, 'credential_process still run after close')
  })

  it('a versioned bucket: a new version put over the key while the image is open is not read — every later GET names the version opened; that version deleted: reads fail', async () => {
    const bucket = 'versioned'
    await versionedBucket(bucket)
    const v1 = await rgw.put(bucket, KEY, image)
    assert.ok(v1, 'the gateway gave no version id: versioning is not on')
    const vurl = `s3://${bucket}/${KEY}`
    const other = fs.readFileSync(sb.p('other.vdimg'))
    await withEnv({}, async () => {
      const obj = await HttpObject.open(vurl, {readAhead: false})
      try {
        assert.equal(obj.reopen.versionId, v1)
        const v2 = await rgw.put(bucket, KEY, other)
        assert.ok(v2 && v2 !== v1)
        // Never read before (past the first GET's 64 KiB): a GET of version v1, exactly the old bytes.
        const at = 5 * MiB + 12345
        const got = await obj.read(65536, at)
        assert.ok(got.equals(image.subarray(at, at + 65536)), 'the opened version\'s bytes after a new version was put')
        assert.ok(!got.equals(other.subarray(at, at + 65536)))
        // Opened now, the key is the new version.
        const fresh = await HttpObject.open(vurl, {readAhead: false})
        try {
          assert.equal(fresh.reopen.versionId, v2)
          assert.ok((await fresh.read(65536, at)).equals(other.subarray(at, at + 65536)), 'a fresh open reads the newest version')
        } finally {
          await fresh.close()
        }
        // The opened version deleted for good: the next GET fails, and so does every read after it.
        await rgw.remove(bucket, KEY, v1)
        await assert.rejects(obj.read(4096, 7 * MiB), new RegExp(`the object changed since it was opened \\(its version ${v1.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is gone: HTTP 404 NoSuch(Version|Key)\\)`))
        await assert.rejects(obj.read(4096, 0), /the object changed since it was opened/)
      } finally {
        await obj.close()
      }
    })
    // Through the CLI, the newest version is what a command reads (the other image: no "case" metadata).
    const r = await vdev(['info', vurl, '--json', '--cache', 'none'])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(JSON.parse(r.stdout).metadata.case, undefined)
    const first = await vdev(['info', url, '--json', '--cache', 'none'])
    assert.equal(JSON.parse(first.stdout).metadata.case, 's3')
  })

  it('a versioned bucket readable by a policy that grants s3:GetObject only (public-read, unsigned): a GET naming the version is refused, and the reads go on pinned by the ETag', async () => {
    const bucket = 'versioned-public'
    await versionedBucket(bucket)
    const v1 = await rgw.put(bucket, KEY, image)
    assert.ok(v1)
    const policy = {Version: '2012-10-17', Statement: [{Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: `arn:aws:s3:::${bucket}/*`}]}
    const p = await rgw.request('PUT', `/${bucket}?policy`, Buffer.from(JSON.stringify(policy)))
    assert.ok(p.status === 200 || p.status === 204, `PutBucketPolicy: HTTP ${p.status} ${p.body.slice(0, 200)}`)
    // What the gateway says to an anonymous GET, of the object and of its version.
    const keyPath = `/${bucket}/${encodeURIComponent(KEY).replace(/%2F/g, '/')}`
    assert.equal((await rgw.request('GET', keyPath, undefined, false)).status, 200)
    const refused = (await rgw.request('GET', `${keyPath}?versionId=${encodeURIComponent(v1)}`, undefined, false)).status
    assert.equal(refused, 403, 'the gateway let an anonymous GET name a version with s3:GetObject only')
    const vurl = `s3://${bucket}/${KEY}`
    // No credentials at all: unsigned requests.
    await withEnv({AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, HOME: sb.p('no-aws-home')}, async () => {
      const obj = await HttpObject.open(vurl, {readAhead: false})
      try {
        assert.equal(obj.reopen.versionId, v1, 'the first answer\'s version pinned')
        const at = 3 * MiB + 777
        assert.ok((await obj.read(65536, at)).equals(image.subarray(at, at + 65536)), 'read after the versioned GET was refused')
        assert.equal(obj.reopen.versionId, undefined, 'the version pin dropped')
        assert.equal(obj.reopen.etag !== undefined, true, 'the ETag still pins')
        // Without the version, a new upload is a change again: EIO rather than the new bytes.
        await rgw.put(bucket, KEY, fs.readFileSync(sb.p('other.vdimg')))
        await assert.rejects(obj.read(4096, 6 * MiB), /the object changed since it was opened/)
      } finally {
        await obj.close()
      }
    })
  })

  /**
   * A serving thread over `obj` (link.ts, as `vdev serve`'s and the daemon's threads are): it makes `reads`
   * one after another and gives, for each, whether the bytes equal `want`'s, the time, the error, and its
   * counters: own GETs (`direct`), those left to the owner after all (`delegated`), hops (`calls`).
   */
  type ThreadRead = {ok?: boolean; err?: string; ms: number}
  const threadReads = async (obj: HttpObject, want: Buffer, reads: Array<[number, number]>, threadEnv: Record<string, string> = {}) => {
    const link = obj.offerLink()
    const code = `
      const {workerData, parentPort} = require('node:worker_threads')
      const {LinkedRanges} = require(${JSON.stringify(path.join(__dirname, '..', '..', 'src', 'remote', 'link.js'))})
      const r = new LinkedRanges(workerData.link)
      const out = []
      for (const [len, pos] of workerData.reads) {
        const t0 = performance.now()
        try {
          const b = r.readSync(len, pos)
          out.push({ok: Buffer.from(b).equals(Buffer.from(workerData.want.subarray(pos, pos + len))), ms: performance.now() - t0})
        } catch (e) { out.push({err: e.code + ': ' + e.message, ms: performance.now() - t0}) }
      }
      r.close().then(() => parentPort.postMessage({out, calls: r.calls, direct: r.directCalls, delegated: r.delegated}))`
    const w = new Worker(code, {eval: true, env: {...process.env, ...threadEnv}, workerData: {link: link.value, want, reads}, transferList: link.transfer})
    try {
      return await new Promise<{out: ThreadRead[]; calls: number; direct: number; delegated: number}>((resolve, reject) => {
        w.once('message', resolve)
        w.once('error', reject)
      })
    } finally {
      await w.terminate()
    }
  }
  /**
   * `n` seeded reads of `len` bytes, each in its own 272 KiB slot with an empty slot either side: none
   * starts near where another ended (link.ts: a read near a recent one goes to the owner's read-ahead).
   */
  const scattered = (n: number, len: number, seed: number, size: number): Array<[number, number]> => {
    const SLOT = 272 << 10
    const slots = Math.floor(size / SLOT) - 1
    assert.ok(n <= slots / 3, `${n} reads do not fit in ${size} bytes`)
    const picked = new Set<number>()
    let x = seed
    const next = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0)
    while (picked.size < n) {
      const k = next() % slots
      if (!picked.has(k) && !picked.has(k - 1) && !picked.has(k + 1)) picked.add(k)
    }
    return [...picked].map((k) => [len, k * SLOT + (next() % (SLOT - len))])
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

  it('serving threads GET s3:// reads themselves (libcurl, each GET signed with the keys the owner published): exact bytes, no hop; the key deleted at the gateway: the thread\'s reads are left to the owner, whose error names the keys, and after four in a row the thread stops trying first', async () => {
    assert.ok(curlAvailable(), 'libcurl.so.4 cannot be loaded (scripts/install-deps.sh: libcurl4)')
    rgw.admin(['key', 'create', '--uid', 'vdev', '--key-type', 's3', '--access-key', 'THREADKEY', '--secret-key', 'thread-key'])
    const reads = scattered(10, 21000, 5, image.length)
    const refusedReads = reads.splice(5)
    await withEnv({AWS_ACCESS_KEY_ID: 'THREADKEY', AWS_SECRET_ACCESS_KEY: 'thread-key'}, async () => {
      const obj = await HttpObject.open(url, {readAhead: false})
      try {
        const before = obj.stats.requests
        const r = await threadReads(obj, image, reads)
        assert.deepEqual(r.out.map((x) => x.ok), reads.map(() => true), JSON.stringify(r.out))
        assert.deepEqual([r.direct, r.delegated, r.calls], [reads.length, 0, 0], 'a read went through the owner')
        // The threads' GETs count in the instance's stats (shared counters): one each.
        assert.equal(obj.stats.requests - before, reads.length)
        // The key deleted: the thread's GET is refused (403), the read left to the owner, whose GET is
        // refused too and says why (the S3 error code, where the keys came from).
        rgw.admin(['key', 'rm', '--uid', 'vdev', '--key-type', 's3', '--access-key', 'THREADKEY'])
        const refused = await threadReads(obj, image, refusedReads)
        for (const r of refused.out) assert.match(r.err ?? '', /access denied \(HTTP 403 InvalidAccessKeyId\): the AWS credentials from environment/, JSON.stringify(refused))
        // Four refused in a row: the thread stops trying its own GET first for a while (the fifth goes
        // straight to the owner).
        assert.deepEqual([refused.direct, refused.delegated, refused.calls], [4, 4, 5])
      } finally {
        await obj.close()
      }
    })
  })

  it('a key with `.` and `..` segments: a serving thread GETs the path it signed (libcurl would collapse them: a refused signature, or another object)', async () => {
    const key = 'case 42/../dots/./disk.vdimg'
    await rgw.put(BUCKET, key, image)
    const reads = scattered(2, 4096, 23, image.length)
    await withEnv({}, async () => {
      const obj = await HttpObject.open(`s3://${BUCKET}/${key}`, {readAhead: false})
      try {
        const r = await threadReads(obj, image, reads)
        assert.deepEqual(r.out.map((x) => x.ok), [true, true], JSON.stringify(r.out))
        assert.deepEqual([r.direct, r.delegated, r.calls], [2, 0, 0], 'the thread\'s own GETs were refused')
      } finally {
        await obj.close()
      }
    })
  })

  it('a serving thread in a versioned bucket reads the version opened (its GETs name it); that version deleted: the thread\'s read is left to the owner, which fails it (EIO); a public-read bucket: the refused versioned GET is retried unpinned', async () => {
    const bucket = 'versioned-threads'
    await versionedBucket(bucket)
    const v1 = await rgw.put(bucket, KEY, image)
    assert.ok(v1)
    const other = fs.readFileSync(sb.p('other.vdimg'))
    const reads = scattered(4, 65536, 9, image.length)
    const last = reads.pop()!
    await withEnv({}, async () => {
      const obj = await HttpObject.open(`s3://${bucket}/${KEY}`, {readAhead: false})
      try {
        assert.equal(obj.reopen.versionId, v1)
        await rgw.put(bucket, KEY, other)
        const r = await threadReads(obj, image, reads)
        assert.deepEqual(r.out.map((x) => x.ok), [true, true, true], `the opened version's bytes: ${JSON.stringify(r.out)}`)
        assert.deepEqual([r.direct, r.delegated, r.calls], [3, 0, 0])
        await rgw.remove(bucket, KEY, v1)
        const gone = await threadReads(obj, image, [last])
        assert.match(gone.out[0].err ?? '', /^io: .*the object changed since it was opened \(its version .* is gone: HTTP 404 NoSuch(Version|Key)\)/, JSON.stringify(gone))
        assert.deepEqual([gone.direct, gone.delegated, gone.calls], [1, 1, 1])
      } finally {
        await obj.close()
      }
    })
    // Anonymous s3:GetObject only: the thread's GET naming the version is refused (403), the thread drops
    // the version and GETs again at once, unsigned — its own GET still, the bytes exact.
    const pub = 'versioned-public-threads'
    await versionedBucket(pub)
    assert.ok(await rgw.put(pub, KEY, image))
    const policy = {Version: '2012-10-17', Statement: [{Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: `arn:aws:s3:::${pub}/*`}]}
    const p = await rgw.request('PUT', `/${pub}?policy`, Buffer.from(JSON.stringify(policy)))
    assert.ok(p.status === 200 || p.status === 204, `PutBucketPolicy: HTTP ${p.status}`)
    await withEnv({AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, HOME: sb.p('no-aws-home')}, async () => {
      const obj = await HttpObject.open(`s3://${pub}/${KEY}`, {readAhead: false})
      try {
        assert.ok(obj.reopen.versionId, 'the first answer\'s version pinned')
        const r = await threadReads(obj, image, reads)
        assert.deepEqual(r.out.map((x) => x.ok), [true, true, true], JSON.stringify(r.out))
        assert.deepEqual([r.direct, r.delegated, r.calls], [3, 0, 0])
      } finally {
        await obj.close()
      }
    })
  })

  it('keys that expire in 6 s, loaded again by the owner while a serving thread reads: the thread signs with the new ones (the old key deleted at the gateway), no hop', async () => {
    const {count, first: firstKey, env: e} = rotatingKeys('thread', 6)
    const reads = scattered(4, 4096, 13, image.length)
    await withEnv(e, async () => {
      const obj = await HttpObject.open(url, {readAhead: false})
      try {
        const first = await threadReads(obj, image, reads.slice(0, 2))
        assert.deepEqual(first.out.map((x) => x.ok), [true, true], JSON.stringify(first))
        assert.deepEqual([first.direct, first.delegated, first.calls], [2, 0, 0])
        // Loaded again ~3 s before the expiration; then the first key is no more.
        const t0 = Date.now()
        const runs = () => Number(fs.readFileSync(count, 'utf8'))
        while (obj.credentialLoads < 2 && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 50))
        assert.ok(runs() >= 2 && obj.credentialLoads >= 2, `credential_process was not run again (${runs()} runs, ${obj.credentialLoads} loads)`)
        rgw.admin(['key', 'rm', '--uid', 'vdev', '--key-type', 's3', '--access-key', firstKey])
        const later = await threadReads(obj, image, reads.slice(2))
        assert.deepEqual(later.out.map((x) => x.ok), [true, true], JSON.stringify(later))
        assert.deepEqual([later.direct, later.delegated, later.calls], [2, 0, 0], 'signed with the new keys by the thread itself')
      } finally {
        await obj.close()
      }
    })
  })

  it("a gateway with Ceph's default frontend (tcp_nodelay off) holds a short answer's body until its head is acknowledged: vdev acknowledges at once (TCP_QUICKACK), or every small GET would wait out Linux's 40 ms delayed ACK", async () => {
    const reads = scattered(7, 21000, 17, image.length)
    await withEnv({}, async () => {
      const obj = await HttpObject.open(url, {readAhead: false})
      try {
        // Without: each of a thread's GETs (after the connection's first) waits ≥ 40 ms — what the gateway does.
        const without = await threadReads(obj, image, reads, {VDEV_REMOTE_QUICKACK: '0'})
        assert.ok(without.out.every((x) => x.ok), JSON.stringify(without.out))
        assert.ok(median(without.out.map((x) => x.ms)) >= 38, `the gateway did not hold the bodies: ${without.out.map((x) => x.ms.toFixed(1)).join(' ')} ms`)
        // With: the first slow GET turns it on for the thread; the rest take a few ms.
        const withQa = await threadReads(obj, image, reads)
        assert.ok(withQa.out.every((x) => x.ok), JSON.stringify(withQa.out))
        assert.ok(median(withQa.out.map((x) => x.ms)) < 20, `a thread's GETs: ${withQa.out.map((x) => x.ms.toFixed(1)).join(' ')} ms`)
        // The owner's GETs (Node's HTTP client): every answer's head acknowledged at once.
        const ms: number[] = []
        for (const [len, pos] of reads) {
          const t0 = performance.now()
          assert.ok((await obj.read(len, pos + 65536)).equals(image.subarray(pos + 65536, pos + 65536 + len)))
          ms.push(performance.now() - t0)
        }
        assert.ok(median(ms) < 20, `the owner's GETs: ${ms.map((x) => x.toFixed(1)).join(' ')} ms`)
      } finally {
        await obj.close()
      }
    })
  })

  it('--version-id: info (which names the version it read), verify, extract and serve read the version named, not the newest; a version that does not exist: exit 3, one line; --version-id with an http:// URL or a file: exit 2', async () => {
    const bucket = 'versioned-named'
    await versionedBucket(bucket)
    const v1 = await rgw.put(bucket, KEY, image)
    const v2 = await rgw.put(bucket, KEY, fs.readFileSync(sb.p('other.vdimg')))
    assert.ok(v1 && v2 && v1 !== v2)
    const vurl = `s3://${bucket}/${KEY}`
    const local = await vdev(['info', sb.p('disk.vdimg'), '--json'])
    const info = async (extra: string[]) => {
      const r = await vdev(['info', vurl, '--json', '--cache', 'none', ...extra])
      assert.equal(r.code, 0, r.stderr)
      return JSON.parse(r.stdout) as {metadata: Record<string, unknown>; sha256: string; remote: {etag?: string; versionId?: string}}
    }
    // The newest is the other image; the one named is the first, with the local file's media hash. info
    // says which version it read (what --version-id takes to read it again).
    const newest = await info([])
    assert.equal(newest.metadata.case, undefined)
    assert.equal(newest.remote.versionId, v2)
    const named = await info(['--version-id', v1])
    assert.equal(named.metadata.case, 's3')
    assert.equal(named.sha256, JSON.parse(local.stdout).sha256)
    assert.equal(named.remote.versionId, v1)
    assert.match(named.remote.etag ?? '', /^"[0-9a-f]{32}"$/)
    const text = await vdev(['info', vurl, '--cache', 'none', '--version-id', v1])
    assert.match(text.stdout, new RegExp(`^remote: +ETag "[0-9a-f]{32}", Last-Modified [^,]+, [^,]+ GMT, version ${v1.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'))
    const v = await vdev(['verify', vurl, '--version-id', v1, '--cache', 'none'])
    assert.equal(v.code, 0, v.stderr)
    const x = await vdev(['extract', vurl, sb.p('named.raw'), '--version-id', v1, '--cache', 'none'])
    assert.equal(x.code, 0, x.stderr)
    assert.equal(sha256(fs.readFileSync(sb.p('named.raw'))), sha256(logical(data)))
    // A version the bucket does not have: one line, exit 3 — not the newest version read instead.
    const missing = await vdev(['info', vurl, '--version-id', 'NoSuchVersionHere1', '--cache', 'none'])
    assert.equal(missing.code, 3, missing.stderr)
    assert.equal(lines(missing.stderr).length, 1, missing.stderr)
    assert.match(missing.stderr, /^vdev: s3:\/\/versioned-named\/.*: (no version "NoSuchVersionHere1" of it \(HTTP 404 NoSuch(Version|Key)\)|HTTP 400 InvalidArgument)/)
    for (const image of ['http://127.0.0.1:9/disk.vdimg', sb.p('disk.vdimg')]) {
      const r = await vdev(['info', image, '--version-id', v1])
      assert.equal(r.code, 2, r.stderr)
      assert.match(r.stderr, /--version-id goes with an s3:\/\/ image/)
    }
    // Served (NBD, two serving threads, their own GETs naming the version): every byte the named version's.
    if (have('nbdcopy') && have('qemu-io')) await checkServeScratch(sb, vurl, logical(data), env, ['--version-id', v1])
  })

  it('vdev serve s3:// --scratch (a writable overlay over the S3 base, NBD on two serving threads): a write reads back, every other byte is the image\'s', async function () {
    if (!have('nbdcopy') || !have('qemu-io')) this.skip()
    await checkServeScratch(sb, url, logical(data), env)
  })

  describe("attached with the FUSE backend (the kernel's FUSE client and loop driver)", function () {
    let second: Sandbox | undefined
    const attached: Array<{sb: Sandbox; id: string; dev: string}> = []

    before(async function () {
      if (!IS_ROOT || !have('fusermount3')) this.skip()
      second = new Sandbox('vdev-s3-second-')
      // Two "machines": two state directories, two daemons, each its own cache; both at once.
      const rs = await Promise.all(
        [sb, second].map((s, i) => runCli(['attach', url, '--backend', 'fuse', '--json', '--remote-timeout', '2', '--cache', i ? 'none' : s.p('attach-cache')], {env: {...env, ...s.env()}})),
      )
      for (const [i, r] of rs.entries()) {
        const s = i ? second : sb
        assert.equal(r.code, 0, r.stderr)
        const j = JSON.parse(r.stdout)
        s.trackPid(j.pid)
        attached.push({sb: s, id: j.id, dev: j.device})
        assert.equal(j.image, url)
      }
    })

    after(async function () {
      for (const a of attached) {
        const r = await runCli(['detach', a.id], {env: a.sb.env()})
        assert.equal(r.code, 0, r.stderr)
      }
      if (second) {
        const left = await second.teardown()
        assert.deepEqual(left, [], `left behind: ${left.join(', ')}`)
      }
    })

    const touchesBad = (o: number, l: number) => BAD.some((b) => b.offset < o + l && o < b.offset + b.length)

    // First: the next tests kill the gateway, whose watches then delay radosgw-admin's key changes (rgw.ts).
    it('attached with keys from a credential_process that expire in 4 s: the attach daemon runs it again before then, and the device reads with the new keys', async () => {
      rgw.admin(['key', 'create', '--uid', 'vdev', '--key-type', 's3', '--access-key', 'ATTACHONE', '--secret-key', 'attach-one'])
      rgw.admin(['key', 'create', '--uid', 'vdev', '--key-type', 's3', '--access-key', 'ATTACHTWO', '--secret-key', 'attach-two'])
      const third = new Sandbox('vdev-s3-third-')
      // One count per calling process (the CLI may open the image before its daemon does): the first
      // run in a process gives the first key, later runs the second.
      const runs = third.p('runs')
      fs.mkdirSync(runs)
      const script = third.p('rotating.sh')
      fs.writeFileSync(
        script,
        `#!/bin/sh\nf='${runs}/'$PPID\nn=$(( $(cat "$f" 2>/dev/null || echo 0) + 1 ))\necho $n > "$f"\nif [ $n = 1 ]; then k=ATTACHONE s=attach-one; else k=ATTACHTWO s=attach-two; fi\nprintf '{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","Expiration":"%s"}' $k $s $(date -u -d '+4 seconds' +%Y-%m-%dT%H:%M:%SZ)\n`,
        {mode: 0o755},
      )
      const e = awsHome('attach-rotating-home', `[default]\ncredential_process = ${script}\nendpoint_url = ${rgw.endpoint}\n`)
      let id: string | undefined
      try {
        const r = await runCli(['attach', url, '--backend', 'fuse', '--json', '--cache', 'none'], {env: {...env, ...e, ...third.env()}})
        assert.equal(r.code, 0, r.stderr)
        const j = JSON.parse(r.stdout)
        third.trackPid(j.pid)
        id = j.id
        const most = () => Math.max(0, ...fs.readdirSync(runs).map((f) => Number(fs.readFileSync(path.join(runs, f), 'utf8'))))
        const t0 = Date.now()
        // A third run starts only once the second's keys are in use.
        while (most() < 3 && Date.now() - t0 < 15_000) await new Promise((res) => setTimeout(res, 100))
        assert.ok(most() >= 3, `the attach daemon did not run credential_process again before the expiration (${most()} runs)`)
        rgw.admin(['key', 'rm', '--uid', 'vdev', '--key-type', 's3', '--access-key', 'ATTACHONE'])
        // A place this device never read, no cache: the read reaches the gateway, signed with the second key.
        const o = 9 * MiB + 8192
        const rd = await readDirect(j.device, o, 65536)
        assert.equal(rd.code, 0, rd.stderr)
        assert.ok(rd.stdout.equals(data.subarray(o, o + 65536)))
      } finally {
        if (id) {
          const d = await runCli(['detach', id], {env: third.env()})
          assert.equal(d.code, 0, d.stderr)
        }
        const left = await third.teardown()
        assert.deepEqual(left, [], `left behind: ${left.join(', ')}`)
      }
    })

    it('attached with --version-id: the device reads the version named, a newer one put before the attach notwithstanding', async () => {
      await versionedBucket('versioned-attach')
      const v1 = await rgw.put('versioned-attach', KEY, image)
      assert.ok(v1)
      await rgw.put('versioned-attach', KEY, fs.readFileSync(sb.p('other.vdimg')))
      const s = new Sandbox('vdev-s3-version-')
      let id: string | undefined
      try {
        const r = await runCli(['attach', `s3://versioned-attach/${KEY}`, '--version-id', v1, '--backend', 'fuse', '--json', '--cache', 'none'], {env: {...env, ...s.env()}})
        assert.equal(r.code, 0, r.stderr)
        const j = JSON.parse(r.stdout)
        s.trackPid(j.pid)
        id = j.id
        for (const o of [2 * MiB + 8192, 5 * MiB + 4096, 20 * MiB + 8192]) {
          const rd = await readDirect(j.device, o, 65536)
          assert.equal(rd.code, 0, rd.stderr)
          assert.ok(rd.stdout.equals(data.subarray(o, o + 65536)), `bytes at ${o} are not the named version's`)
        }
      } finally {
        if (id) {
          const d = await runCli(['detach', id], {env: s.env()})
          assert.equal(d.code, 0, d.stderr)
        }
        const left = await s.teardown()
        assert.deepEqual(left, [], `left behind: ${left.join(', ')}`)
      }
    })

    it('two attaches at once: one device read whole, every MiB, EIO at exactly the unreadable sectors; the other at random places', async () => {
      const whole = async (dev: string) => {
        for (let o = 0; o < SIZE; o += MiB) {
          if (touchesBad(o, MiB)) continue
          const r = await readDirect(dev, o, MiB)
          assert.equal(r.code, 0, `${dev} read at ${o}: ${r.stderr}`)
          assert.ok(r.stdout.equals(data.subarray(o, o + MiB)), `${dev}: bytes at ${o}`)
        }
        for (const b of BAD) {
          const bad = await readDirect(dev, b.offset, 512)
          assert.notEqual(bad.code, 0, `${dev}: bad sector at ${b.offset} read`)
          assert.match(bad.stderr, /Input\/output error/)
          const before = await readDirect(dev, b.offset - 512, 512)
          assert.equal(before.code, 0, before.stderr)
          assert.ok(before.stdout.equals(data.subarray(b.offset - 512, b.offset)))
        }
      }
      // Random places (no read-ahead window starts), never in MiB 10-12: the next test reads there.
      const spots = async (dev: string) => {
        const rnd = prng(5, 64)
        for (let i = 0; i < 16; i++) {
          let o = (rnd.readUInt32LE(i * 4) % (SIZE / 65536)) * 65536
          if (touchesBad(o, 65536) || (o >= 10 * MiB && o < 12 * MiB)) o = 16 * MiB + i * 65536
          const r = await readDirect(dev, o, 65536)
          assert.equal(r.code, 0, `${dev} read at ${o}: ${r.stderr}`)
          assert.ok(r.stdout.equals(data.subarray(o, o + 65536)), `${dev}: bytes at ${o}`)
        }
      }
      await Promise.all([whole(attached[0].dev), spots(attached[1].dev)])
      const l = await runCli(['list', '--json'], {env: sb.env()})
      const e = JSON.parse(l.stdout)[0]
      assert.equal(e.image, url)
      assert.ok(e.stats.fetched.requests > 0 && e.stats.fetched.bytes > 0 && e.stats.fetched.bytes <= 2 * image.length, JSON.stringify(e.stats))
    })

    it('the gateway stopped: reads fail with EIO within --remote-timeout; once it is back, the same device reads again', async () => {
      const {dev, id} = attached[1]
      await rgw.stopGateway()
      const o = 10 * MiB + 4096
      try {
        const t0 = Date.now()
        const r = await readDirect(dev, o, 4096)
        const ms = Date.now() - t0
        assert.notEqual(r.code, 0, 'read with the gateway stopped succeeded')
        assert.match(r.stderr, /Input\/output error/)
        assert.ok(ms < 15_000, `the failed read took ${ms} ms`)
      } finally {
        await rgw.startGateway()
      }
      const again = await readDirect(dev, o, 4096)
      assert.equal(again.code, 0, again.stderr)
      assert.ok(again.stdout.equals(data.subarray(o, o + 4096)))
      assert.match(fs.readFileSync(path.join(second!.stateDir, 'logs', `${id}.log`), 'utf8'), /no answer within 2 s/)
    })

    it("the object replaced while attached: EIO and a log line, never the new object's bytes", async () => {
      await rgw.put(BUCKET, KEY, fs.readFileSync(sb.p('other.vdimg')))
      const other = fs.readFileSync(sb.p('other.raw'))
      for (const {dev} of attached)
        for (const o of [2 * MiB + 8192, 5 * MiB + 8192, 20 * MiB + 8192]) {
          const r = await readDirect(dev, o, 65536)
          if (r.code === 0) {
            // Only what a serving thread still had decoded from before may be served: the old object's bytes.
            assert.ok(r.stdout.equals(data.subarray(o, o + 65536)), `${dev}: read at ${o} served bytes of neither version`)
            assert.ok(!r.stdout.equals(other.subarray(o, o + 65536)), `${dev}: read at ${o} served the new object`)
          } else assert.match(r.stderr, /Input\/output error/)
        }
      // The second machine has no cache and never read near here: the read must reach the gateway, and fail.
      const {dev, id} = attached[1]
      const r = await readDirect(dev, 11 * MiB, 65536)
      assert.notEqual(r.code, 0, 'a read after the replacement succeeded')
      assert.match(fs.readFileSync(path.join(second!.stateDir, 'logs', `${id}.log`), 'utf8'), /the object changed since it was opened/)
      await rgw.put(BUCKET, KEY, image)
    })
  })
})

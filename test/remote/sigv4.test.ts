/**
 * The SigV4 signer (src/remote/sigv4.ts) against AWS's published vectors — the SigV4 test suite
 * (https://docs.aws.amazon.com/IAM/latest/UserGuide/signature-v4-test-suite.html: get-vanilla,
 * get-vanilla-query-order-key-case, get-utf8, post-vanilla) and the S3 guide's worked examples
 * (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html: GET Object with Range,
 * PUT Object, GET Bucket Lifecycle) — and the AWS configuration resolution (src/remote/s3.ts) over real
 * shared files in a temporary HOME.
 */
import * as assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {VdevError} from '../../src/core/errors'
import {EMPTY_SHA256, amzDate, sign, uriEncode} from '../../src/remote/sigv4'
import {parseIni, parseS3Url, resolveAwsConfig, s3Target} from '../../src/remote/s3'
import {tmpDir} from '../helpers'

const SUITE = {accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY'}
const S3DOC = {accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'}
const sha = (s: string) => createHash('sha256').update(s).digest('hex')

describe('remote: SigV4 against AWS published vectors', () => {
  const suite = (method: string, p: string, query = '') =>
    sign({method, path: p, query, headers: {host: 'example.amazonaws.com', 'x-amz-date': '20150830T123600Z'}, payloadHash: EMPTY_SHA256, region: 'us-east-1', service: 'service', amzDate: '20150830T123600Z'}, SUITE)

  it('the SigV4 test suite: get-vanilla, get-vanilla-query-order-key-case, get-utf8, post-vanilla', () => {
    const v = suite('GET', '/')
    assert.equal(v.canonicalRequest, 'GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n' + EMPTY_SHA256)
    assert.equal(
      v.authorization,
      'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31',
    )
    assert.equal(suite('GET', '/', 'Param2=value2&Param1=value1').signature, 'b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500')
    assert.equal(suite('GET', '/' + uriEncode('\u1234', false).slice(0)).signature, '8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85')
    assert.equal(suite('POST', '/').signature, '5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b')
  })

  it("the S3 guide's examples: GET Object with Range, PUT Object, GET Bucket Lifecycle", () => {
    const host = 'examplebucket.s3.amazonaws.com'
    const at = amzDate(new Date('2013-05-24T00:00:00Z'))
    assert.equal(at, '20130524T000000Z')
    const get = sign({method: 'GET', path: '/test.txt', headers: {host, range: 'bytes=0-9', 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': at}, payloadHash: EMPTY_SHA256, region: 'us-east-1', service: 's3', amzDate: at}, S3DOC)
    assert.equal(get.stringToSign, 'AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972')
    assert.equal(get.signedHeaders, 'host;range;x-amz-content-sha256;x-amz-date')
    assert.equal(get.signature, 'f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41')
    const body = sha('Welcome to Amazon S3.')
    assert.equal(body, '44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072')
    const put = sign(
      {
        method: 'PUT',
        path: '/' + uriEncode('test$file.text', false),
        headers: {Date: 'Fri, 24 May 2013 00:00:00 GMT', Host: host, 'x-amz-content-sha256': body, 'x-amz-date': at, 'x-amz-storage-class': 'REDUCED_REDUNDANCY'},
        payloadHash: body,
        region: 'us-east-1',
        service: 's3',
        amzDate: at,
      },
      S3DOC,
    )
    assert.equal(put.signature, '98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd')
    const lifecycle = sign({method: 'GET', path: '/', query: 'lifecycle', headers: {host, 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': at}, payloadHash: EMPTY_SHA256, region: 'us-east-1', service: 's3', amzDate: at}, S3DOC)
    assert.equal(lifecycle.signature, 'fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543')
  })

  it('URI-encodes as SigV4 says: unreserved bytes kept, the rest %XY, "/" kept in a key', () => {
    assert.equal(uriEncode("a b*(c)!'~-_.", true), "a%20b%2A%28c%29%21%27~-_.")
    assert.equal(uriEncode('dir/ä+x=1', false), 'dir/%C3%A4%2Bx%3D1')
    assert.equal(uriEncode('a/b', true), 'a%2Fb')
  })
})

describe('remote: the AWS configuration (s3.ts) over real shared files', () => {
  let t: {dir: string; cleanup: () => void}
  before(() => {
    t = tmpDir('vdev-awscfg-')
    fs.mkdirSync(path.join(t.dir, '.aws'))
    fs.writeFileSync(
      path.join(t.dir, '.aws', 'credentials'),
      '[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = defaultsecret\n\n# a comment\n[lab]\naws_access_key_id=LABKEY\naws_secret_access_key=labsecret\naws_session_token = labtoken\n',
    )
    fs.writeFileSync(
      path.join(t.dir, '.aws', 'config'),
      '[default]\nregion = eu-west-1\n[profile lab]\nregion = eu-central-1\nendpoint_url = http://127.0.0.1:7480\ns3 =\n  addressing_style = path\n[profile role]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n[profile onlyconfig]\naws_access_key_id = CFGKEY\naws_secret_access_key = cfgsecret\n',
    )
  })
  after(() => t?.cleanup())
  const code = (f: () => unknown): string => {
    try {
      f()
    } catch (err) {
      assert.ok(err instanceof VdevError, String(err))
      return `${err.code}: ${err.message}`
    }
    return 'no error'
  }

  it('takes the environment, then the default profile; AWS_PROFILE wins over the environment', () => {
    const home = t.dir
    const envOnly = resolveAwsConfig({AWS_ACCESS_KEY_ID: 'ENVKEY', AWS_SECRET_ACCESS_KEY: 's', AWS_SESSION_TOKEN: 'tok', AWS_DEFAULT_REGION: 'ap-south-1'}, home)
    assert.deepEqual(envOnly, {credentials: {accessKeyId: 'ENVKEY', secretAccessKey: 's', sessionToken: 'tok'}, from: 'environment', region: 'ap-south-1', endpoint: undefined})
    const def = resolveAwsConfig({}, home)
    assert.equal(def.credentials?.accessKeyId, 'DEFAULTKEY')
    assert.equal(def.region, 'eu-west-1')
    const lab = resolveAwsConfig({AWS_PROFILE: 'lab', AWS_ACCESS_KEY_ID: 'ENVKEY', AWS_SECRET_ACCESS_KEY: 's', AWS_REGION: 'us-west-2'}, home)
    assert.deepEqual(lab, {credentials: {accessKeyId: 'LABKEY', secretAccessKey: 'labsecret', sessionToken: 'labtoken'}, from: 'profile "lab"', region: 'us-west-2', endpoint: 'http://127.0.0.1:7480'})
    assert.equal(resolveAwsConfig({AWS_PROFILE: 'onlyconfig'}, home).credentials?.accessKeyId, 'CFGKEY')
    assert.equal(resolveAwsConfig({AWS_ENDPOINT_URL: 'http://e:1', AWS_ENDPOINT_URL_S3: 'http://s3:2'}, home).endpoint, 'http://s3:2')
    // The files' locations come from the environment too.
    const elsewhere = path.join(t.dir, 'creds-elsewhere')
    fs.writeFileSync(elsewhere, '[default]\naws_access_key_id = ELSEWHERE\naws_secret_access_key = x\n')
    assert.equal(resolveAwsConfig({AWS_SHARED_CREDENTIALS_FILE: elsewhere, AWS_CONFIG_FILE: path.join(t.dir, 'none')}, home).credentials?.accessKeyId, 'ELSEWHERE')
    assert.equal(resolveAwsConfig({}, path.join(t.dir, 'no-home')).credentials, undefined)
  })

  it('refuses a missing profile and half a key pair, in one line each; a role profile is a provider', () => {
    const home = t.dir
    assert.match(code(() => resolveAwsConfig({AWS_PROFILE: 'nope'}, home)), /^usage: AWS_PROFILE nope: no such profile in /)
    const role = resolveAwsConfig({AWS_PROFILE: 'role'}, home)
    assert.equal(role.credentials, undefined)
    assert.equal(role.from, 'role arn:aws:iam::1:role/x of profile "role" (AssumeRole with the credentials from profile "default")')
    assert.match(code(() => resolveAwsConfig({AWS_ACCESS_KEY_ID: 'x'}, home)), /^usage: AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY/)
    assert.match(code(() => parseS3Url('s3://bucket')), /^usage: s3:\/\/bucket: expected s3:\/\/BUCKET\/KEY/)
    assert.match(code(() => parseS3Url('s3://b!d/key')), /is not an S3 bucket name/)
    assert.match(code(() => s3Target('s3://bkt/k', {AWS_ENDPOINT_URL: 'ftp://x'}, home)), /expected http:\/\/ or https:\/\//)
  })

  it('addresses AWS virtual-hosted, a dotted bucket and an endpoint path-style; signs with the session token', () => {
    const home = t.dir
    const aws = s3Target('s3://my-bucket/dir/a b.vdimg', {AWS_REGION: 'eu-west-3'}, home)
    assert.equal(aws.url.host, 'my-bucket.s3.eu-west-3.amazonaws.com')
    assert.equal(aws.path, '/dir/a%20b.vdimg')
    assert.equal(s3Target('s3://my.bucket/k', {}, home).path, '/my.bucket/k')
    const rgw = s3Target('s3://images/case/disk.vdimg', {AWS_PROFILE: 'lab'}, home)
    assert.equal(rgw.url.host, '127.0.0.1:7480')
    assert.equal(rgw.path, '/images/case/disk.vdimg')
    assert.equal(rgw.name, 's3://images/case/disk.vdimg')
    const h: Record<string, string> = {range: 'bytes=0-9', 'if-match': '"abc"', 'accept-encoding': 'identity'}
    rgw.sign('GET', h)
    assert.equal(h.host, '127.0.0.1:7480')
    assert.equal(h['x-amz-security-token'], 'labtoken')
    assert.match(h.authorization, /^AWS4-HMAC-SHA256 Credential=LABKEY\/\d{8}\/eu-central-1\/s3\/aws4_request, SignedHeaders=host;if-match;range;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature=[0-9a-f]{64}$/)
    assert.deepEqual([...parseIni('[a]\nk = v\n  nested = no\n[b]\n;c\nx=1').entries()].map(([k, m]) => [k, [...m]]), [['a', [['k', 'v']]], ['b', [['x', '1']]]])
  })
})

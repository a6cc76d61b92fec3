/**
 * A real S3 server that a test starts and stops itself: Ceph's RADOS Gateway (Debian's ceph-mon,
 * ceph-osd and radosgw; scripts/install-deps.sh) over a single-node cluster — one mon, one OSD on
 * memstore (in memory), auth none, pools of size 1 — in a temporary directory (on
 * /dev/shm when it is there: never a 9p mount; admin sockets are off, so the daemons open no unix
 * socket), the mon and the gateway on loopback ports. A user with keys (radosgw-admin) and buckets; objects
 * are PUT over S3 itself (signed by src/remote/sigv4.ts, whose PUT is checked against AWS's vector in
 * sigv4.test.ts). `stop()` kills every daemon it started (and a process exit does too) and removes the
 * directory: `leftovers()` checks with ps.
 *
 * `restartGateway({sts: true})` turns STS on (`rgw sts key`, `rgw s3 auth use sts`): AssumeRole on the
 * same endpoint, roles made with `radosgw-admin role create`. Off by default: with it on, a bad signature
 * is answered AccessDenied (the STS engine's verdict) rather than SignatureDoesNotMatch.
 *
 * Under auth none, radosgw needs `ms mon client mode = crc` or it loops on EACCES. No ceph-mgr: the
 * gateway does not need one (pools are the mon's; PG statistics and the mgr modules go unused), and it
 * cost ~300 MB of memory and CPU at start-up (measured: the cluster comes up in ~15 s either way).
 */
import * as fs from 'node:fs'
import * as http from 'node:http'
import * as os from 'node:os'
import * as path from 'node:path'
import {createHash, randomUUID} from 'node:crypto'
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {EMPTY_SHA256, amzDate, sign, uriEncode} from '../../src/remote/sigv4'
import {freePort} from './nginx'

const TOOLS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'monmaptool', 'ceph']
/** All of Ceph's tools this fixture runs are installed. */
export const HAVE_RGW = TOOLS.every((t) => fs.existsSync(`/usr/bin/${t}`))

const live = new Set<ChildProcess>()
const dirs = new Set<string>()
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL')
  for (const d of dirs) fs.rmSync(d, {recursive: true, force: true})
})

export class Rgw {
  readonly accessKey = 'VDEVTESTACCESSKEY'
  readonly secretKey = 'vdev/test+secret/key'
  private readonly daemons = new Map<string, ChildProcess>()
  private readonly conf: string
  /** How long bringing the cluster up took (ms), for the report. */
  startMs = 0

  private constructor(
    readonly dir: string,
    readonly monPort: number,
    readonly port: number,
    private readonly deviceBytes: number,
  ) {
    this.conf = path.join(dir, 'ceph.conf')
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`
  }

  /** The environment an AWS tool needs for this server (keys, endpoint, region). */
  env(): Record<string, string> {
    // No instance metadata, even on an EC2 machine: a test without keys means "no credentials".
    return {AWS_ACCESS_KEY_ID: this.accessKey, AWS_SECRET_ACCESS_KEY: this.secretKey, AWS_ENDPOINT_URL: this.endpoint, AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true'}
  }

  /** `deviceBytes`: the OSD's memstore size (RAM), 1 GiB unless a benchmark needs more. */
  static async start(opts: {deviceBytes?: number} = {}): Promise<Rgw> {
    const t0 = Date.now()
    const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir()
    const dir = fs.mkdtempSync(path.join(base, 'vdev-rgw-'))
    dirs.add(dir)
    const rgw = new Rgw(dir, await freePort(), await freePort(), opts.deviceBytes ?? 1 << 30)
    try {
      await rgw.up()
    } catch (err) {
      await rgw.stop()
      throw err
    }
    rgw.startMs = Date.now() - t0
    return rgw
  }

  private config(fsid: string): string {
    const d = this.dir
    return `[global]
fsid = ${fsid}
mon host = v2:127.0.0.1:${this.monPort}
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms bind msgr1 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = ${this.deviceBytes}
run dir = ${d}/run
admin socket =
pid file =
log file = ${d}/log/$name.log
mon data = ${d}/mon/$id
osd data = ${d}/osd/$id
keyring = ${d}/keyring
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:${this.port}
rgw data = ${d}/rgw
rgw enable usage log = false
`
  }

  /** Run a Ceph tool to its end; its stdout, or an error with its stderr. */
  private tool(cmd: string, args: string[]): string {
    const r = spawnSync(cmd, ['-c', this.conf, ...args], {cwd: this.dir, encoding: 'utf8', timeout: 60_000})
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${(r.stderr || r.stdout || '').trim().slice(-500)}`)
    return r.stdout
  }

  private daemon(name: string, cmd: string, args: string[]): void {
    const log = fs.openSync(path.join(this.dir, 'log', `${name}.out`), 'a')
    const c = spawn(cmd, ['-c', this.conf, '-f', ...args], {cwd: this.dir, stdio: ['ignore', log, log]})
    fs.closeSync(log)
    live.add(c)
    c.once('exit', () => live.delete(c))
    this.daemons.set(name, c)
  }

  private async until(what: string, ms: number, ok: () => boolean | Promise<boolean>): Promise<void> {
    const end = Date.now() + ms
    for (;;) {
      if (await ok()) return
      for (const [name, c] of this.daemons)
        if (c.exitCode !== null || c.signalCode !== null) throw new Error(`${name} exited (${c.exitCode ?? c.signalCode}) while waiting for ${what}: ${this.tail(name)}`)
      if (Date.now() > end) throw new Error(`${what}: not within ${ms / 1000} s (logs in ${this.dir}/log)`)
      await new Promise((r) => setTimeout(r, 250))
    }
  }

  private tail(name: string): string {
    try {
      return fs.readFileSync(path.join(this.dir, 'log', `${name}.out`), 'utf8').trim().split('\n').slice(-3).join(' | ')
    } catch {
      return ''
    }
  }

  private async up(): Promise<void> {
    const d = this.dir
    for (const s of ['mon', 'osd', 'log', 'run', 'rgw']) fs.mkdirSync(path.join(d, s), {recursive: true})
    const fsid = randomUUID()
    fs.writeFileSync(this.conf, this.config(fsid))
    fs.writeFileSync(path.join(d, 'keyring'), '')
    spawnOk('monmaptool', ['--create', '--addv', 'a', `[v2:127.0.0.1:${this.monPort}]`, '--fsid', fsid, path.join(d, 'monmap')])
    this.tool('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', path.join(d, 'monmap')])
    this.daemon('mon', 'ceph-mon', ['-i', 'a'])
    const uuid = randomUUID()
    const id = this.tool('ceph', ['--connect-timeout', '20', 'osd', 'create', uuid]).trim()
    fs.mkdirSync(path.join(d, 'osd', id))
    this.tool('ceph-osd', ['-i', id, '--mkfs', '--osd-uuid', uuid])
    this.daemon('osd', 'ceph-osd', ['-i', id])
    await this.until('the OSD up', 60_000, () => /"num_up_osds":1\b/.test(this.tool('ceph', ['osd', 'stat', '-f', 'json'])))
    this.daemon('rgw', 'radosgw', ['-n', 'client.rgw'])
    await this.until('radosgw answering', 90_000, async () => (await this.request('GET', '/', undefined, false).catch(() => ({status: 0}))).status === 200)
    this.tool('radosgw-admin', ['-n', 'client.rgw', 'user', 'create', '--uid', 'vdev', '--display-name', 'vdev tests', '--access-key', this.accessKey, '--secret-key', this.secretKey])
  }

  /** radosgw-admin (users, keys, roles): its stdout. */
  admin(args: string[]): string {
    return this.tool('radosgw-admin', ['-n', 'client.rgw', ...args])
  }

  /** One S3 request (`p` may carry a query), signed with the test user's keys (unsigned when `signed` is false). */
  request(method: string, p: string, body: Buffer = Buffer.alloc(0), signed = true): Promise<{status: number; body: string; headers: http.IncomingHttpHeaders}> {
    const headers: Record<string, string> = {host: `127.0.0.1:${this.port}`}
    if (signed) {
      const at = amzDate(new Date())
      const hash = body.length ? createHash('sha256').update(body).digest('hex') : EMPTY_SHA256
      Object.assign(headers, {'x-amz-date': at, 'x-amz-content-sha256': hash})
      const q = p.indexOf('?')
      const [pathPart, query] = q < 0 ? [p, undefined] : [p.slice(0, q), p.slice(q + 1)]
      headers.authorization = sign({method, path: pathPart, query, headers: {...headers}, payloadHash: hash, region: 'us-east-1', service: 's3', amzDate: at}, {accessKeyId: this.accessKey, secretAccessKey: this.secretKey}).authorization
    }
    headers['content-length'] = String(body.length)
    return new Promise((resolve, reject) => {
      const req = http.request({host: '127.0.0.1', port: this.port, method, path: p, headers}, (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (text += c))
        res.on('end', () => resolve({status: res.statusCode ?? 0, body: text, headers: res.headers}))
        res.on('error', reject)
      })
      req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${p}: no answer in 30 s`)))
      req.on('error', reject)
      req.end(body)
    })
  }

  private async ok(method: string, p: string, body?: Buffer): Promise<http.IncomingHttpHeaders> {
    const r = await this.request(method, p, body)
    if (r.status !== 200 && r.status !== 204) throw new Error(`${method} ${p}: HTTP ${r.status} ${r.body.slice(0, 300)}`)
    return r.headers
  }

  async createBucket(bucket: string): Promise<void> {
    await this.ok('PUT', `/${bucket}`)
  }

  /** Turn versioning on for a bucket (PutBucketVersioning): every put then makes a new version. */
  async enableVersioning(bucket: string): Promise<void> {
    await this.ok('PUT', `/${bucket}?versioning`, Buffer.from('<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>'))
  }

  /** Put an object; its version id in a versioned bucket (else undefined). */
  async put(bucket: string, key: string, data: Buffer): Promise<string | undefined> {
    const h = await this.ok('PUT', `/${bucket}/${uriEncode(key, false)}`, data)
    const v = h['x-amz-version-id']
    return typeof v === 'string' && v !== 'null' ? v : undefined
  }

  /** Delete an object, or with `versionId` that version of it for good. */
  async remove(bucket: string, key: string, versionId?: string): Promise<void> {
    await this.ok('DELETE', `/${bucket}/${uriEncode(key, false)}${versionId ? `?versionId=${uriEncode(versionId)}` : ''}`)
  }

  /** Stop the gateway (the cluster stays); `startGateway` brings it back on the same port. */
  async stopGateway(): Promise<void> {
    await this.kill('rgw')
  }

  async startGateway(opts: {sts?: boolean} = {}): Promise<void> {
    this.daemon('rgw', 'radosgw', ['-n', 'client.rgw', ...(opts.sts ? ['--rgw_sts_key', 'vdevstskey012345', '--rgw_s3_auth_use_sts', 'true'] : [])])
    await this.until('radosgw answering', 90_000, async () => (await this.request('GET', '/', undefined, false).catch(() => ({status: 0}))).status === 200)
  }

  /**
   * The gateway again, with STS on or off. Stopped with SIGTERM: a killed gateway's watches on its
   * control objects stay registered for the OSD's watch timeout (30 s), and until then every
   * radosgw-admin change that notifies the gateways (a key, a user) waits for them.
   */
  async restartGateway(opts: {sts?: boolean} = {}): Promise<void> {
    await this.kill('rgw', 'SIGTERM')
    await this.startGateway(opts)
  }

  private async kill(name: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const c = this.daemons.get(name)
    this.daemons.delete(name)
    if (!c || c.exitCode !== null || c.signalCode !== null) return
    // SIGKILL: the data is in memory and thrown away anyway (an OSD takes seconds over SIGTERM).
    const gone = new Promise((r) => c.once('exit', r))
    c.kill(signal)
    const late = signal === 'SIGKILL' ? undefined : setTimeout(() => c.kill('SIGKILL'), 10_000)
    await gone
    clearTimeout(late)
  }

  /** Kill every daemon (gateway first) and remove the directory. */
  async stop(): Promise<void> {
    for (const n of ['rgw', 'osd', 'mon']) await this.kill(n)
    fs.rmSync(this.dir, {recursive: true, force: true})
    dirs.delete(this.dir)
  }

  /** Ceph daemons still running over this fixture's directory (ps): none after stop(). */
  leftovers(): string[] {
    const r = spawnSync('ps', ['-eo', 'pid=,args='], {encoding: 'utf8'})
    return r.stdout
      .split('\n')
      .filter((l) => l.includes(this.conf) || l.includes(this.dir))
      .map((l) => l.trim())
  }
}

function spawnOk(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, {encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`)
}

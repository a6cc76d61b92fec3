/**
 * A real nginx (Debian's nginx-light, scripts/install-deps.sh) that a test starts and stops itself: its
 * own prefix directory, config, logs and pid under a temporary directory, 127.0.0.1 on ephemeral ports,
 * plain HTTP and HTTPS with a throwaway CA made by openssl (the server certificate for 127.0.0.1 and
 * localhost, signed by that CA: clients trust it through NODE_EXTRA_CA_CERTS). `/private/` answers 401
 * without `Authorization: Bearer <token>`; `/slow/NAME` serves NAME at 512 KiB/s per connection; `/busy`
 * always answers 503.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'

export const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => fs.existsSync(p))

/** A free TCP port on 127.0.0.1 (the kernel's pick; nginx binds it a moment later). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, {cwd, encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`)
}

/** A CA and a server certificate for 127.0.0.1/localhost signed by it, in `dir`. */
export function makeCa(dir: string): {ca: string; cert: string; key: string} {
  fs.mkdirSync(dir, {recursive: true})
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=vdev test CA'], dir)
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1'], dir)
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n')
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf'], dir)
  return {ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key')}
}

export class Nginx {
  readonly www: string
  private child: ChildProcess | undefined
  readonly tls: {ca: string; cert: string; key: string}

  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly tlsPort: number,
    readonly token: string,
  ) {
    this.www = path.join(dir, 'www')
    fs.mkdirSync(path.join(this.www, 'private'), {recursive: true})
    fs.mkdirSync(path.join(dir, 'tmp'), {recursive: true})
    this.tls = makeCa(path.join(dir, 'tls'))
    fs.writeFileSync(path.join(dir, 'nginx.conf'), this.config())
  }

  /** Configure (not start) a server in `dir`. */
  static async create(dir: string, token = 'vdev-test-token'): Promise<Nginx> {
    if (!NGINX) throw new Error('nginx is not installed (scripts/install-deps.sh: nginx-light)')
    return new Nginx(dir, await freePort(), await freePort(), token)
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`
  }

  get tlsUrl(): string {
    return `https://127.0.0.1:${this.tlsPort}`
  }

  private config(): string {
    const d = this.dir
    const root = process.getuid?.() === 0 ? 'user root;\n' : ''
    const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${d}/tmp/${t};\n`).join('')
    const site = `    root ${this.www};
    location /private/ {
      if ($http_authorization != "Bearer ${this.token}") { return 401; }
    }
    location = /busy {
      return 503;
    }
    location /slow/ {
      alias ${this.www}/;
      limit_rate 512k;
    }
`
    return `${root}daemon off;
master_process on;
worker_processes 1;
pid ${d}/nginx.pid;
error_log ${d}/error.log warn;
events { worker_connections 256; }
http {
  # nginx's "combined" format and the request's Range header last.
  log_format ranges '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_range"';
  access_log ${d}/access.log ranges;
${temp}  default_type application/octet-stream;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:${this.port};
${site}  }
  server {
    listen 127.0.0.1:${this.tlsPort} ssl;
    ssl_certificate ${this.tls.cert};
    ssl_certificate_key ${this.tls.key};
${site}  }
}
`
  }

  /** Start nginx and wait until it accepts connections. */
  async start(): Promise<void> {
    if (this.child) return
    const child = spawn(NGINX!, ['-p', this.dir, '-c', path.join(this.dir, 'nginx.conf'), '-e', path.join(this.dir, 'error.log')], {stdio: ['ignore', 'ignore', 'pipe']})
    let err = ''
    child.stderr!.on('data', (b: Buffer) => (err += b))
    this.child = child
    const t0 = Date.now()
    for (;;) {
      if (child.exitCode !== null) throw new Error(`nginx exited (${child.exitCode}): ${err}${this.errorLog()}`)
      if ((await connects(this.port)) && (await connects(this.tlsPort))) return
      if (Date.now() - t0 > 10_000) throw new Error(`nginx did not listen within 10 s: ${err}${this.errorLog()}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  /** Stop nginx at once (SIGTERM: fast shutdown, open connections closed) and wait until it is gone. */
  async stop(): Promise<void> {
    const child = this.child
    if (!child) return
    this.child = undefined
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()))
      child.kill('SIGTERM')
      const t = setTimeout(() => child.kill('SIGKILL'), 5000)
      await gone
      clearTimeout(t)
    }
  }

  errorLog(): string {
    try {
      return fs.readFileSync(path.join(this.dir, 'error.log'), 'utf8')
    } catch {
      return ''
    }
  }

  /**
   * The ranges GET of `/name` (logged lines from index `from` on), each [first, end) from the Range header
   * the log's last field holds, in the order logged. nginx logs a GET once it has sent it all.
   */
  ranges(name: string, from = 0): Array<[number, number]> {
    return this.accessLog()
      .slice(from)
      .filter((l) => l.includes(`"GET /${name} `))
      .map((l) => /"bytes=(\d+)-(\d+)"$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [Number(m[1]), Number(m[2]) + 1])
  }

  /** Lines of the access log (nginx's combined format, then the Range header in quotes) since the start. */
  accessLog(): string[] {
    try {
      return fs.readFileSync(path.join(this.dir, 'access.log'), 'utf8').split('\n').filter(Boolean)
    } catch {
      return []
    }
  }
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

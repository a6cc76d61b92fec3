/**
 * Remote images (docs/remote.md) through the real CLI against a real nginx this suite starts and stops
 * (test/remote/nginx.ts): info, verify and extract over http:// and https:// give exactly what they give
 * for the local file; a throwaway CA is trusted through NODE_EXTRA_CA_CERTS and only then; --header;
 * 404, 401, a non-VDIMG object and an unreachable server are one line and a documented exit code; the
 * server stopped in the middle of an extract fails it within --remote-timeout and leaves nothing. As root,
 * an attach with the FUSE backend (the real kernel's FUSE client and loop driver) reads the local image's
 * bytes, EIO at unreadable sectors; with the server stopped, reads fail with EIO within the timeout and
 * work again once it is back; with the object replaced, reads fail with EIO (and a log line), never
 * serving the new object's bytes; `attach URL --overlay FILE` is writable, its writes read back after a
 * re-attach from the URL or from a local copy of the object, and the object never changes.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {BIN, have, prng, runCli, sha256, textish, writeTruthMap} from '../helpers'
import {IS_ROOT, Sandbox, readDirect, run} from '../sandbox'
import {checkServeScratch} from './scratch'
import {NGINX, Nginx} from './nginx'

const MiB = 1 << 20
const SIZE = 40 * MiB
/** Unreadable areas of the original medium: one bad sector, and 64 KiB never tried. */
const BAD = [
  {offset: MiB + 512, length: 512},
  {offset: 20 * MiB, length: 64 << 10},
]

/** The medium: compressible text (zstd chunks), random bytes (raw chunks), zeros, text. */
function medium(seed: number): Buffer {
  const b = Buffer.alloc(SIZE)
  textish(seed, 10 * MiB).copy(b, 0)
  prng(seed + 1, 10 * MiB).copy(b, 10 * MiB)
  textish(seed + 2, 10 * MiB).copy(b, 30 * MiB)
  return b
}

/** What the image reads as: the medium with its unreadable areas as zeros. */
function logical(data: Buffer): Buffer {
  const b = Buffer.from(data)
  for (const r of BAD) b.fill(0, r.offset, r.offset + r.length)
  return b
}

const lines = (s: string) => s.trim().split('\n').filter(Boolean)

describe('remote images: the CLI against a real nginx (http, https)', function () {
  this.timeout(180_000)
  let sb: Sandbox
  let nginx: Nginx
  let data: Buffer
  let local: string
  let url: string

  before(async function () {
    if (!NGINX) this.skip()
    sb = new Sandbox('vdev-remote-')
    data = medium(11)
    fs.writeFileSync(sb.p('medium.raw'), data)
    writeTruthMap(sb.p('medium.map'), SIZE, BAD)
    nginx = await Nginx.create(sb.p('nginx'))
    local = path.join(nginx.www, 'disk.vdimg')
    const c = await runCli(['create', sb.p('medium.raw'), local, '--mapfile', sb.p('medium.map'), '--meta', 'case=remote'])
    assert.equal(c.code, 0, c.stderr)
    fs.copyFileSync(local, path.join(nginx.www, 'private', 'disk.vdimg'))
    fs.copyFileSync(local, sb.p('disk.vdimg.orig'))
    fs.writeFileSync(path.join(nginx.www, 'notes.txt'), 'not an image\n'.repeat(100))
    fs.writeFileSync(sb.p('other.raw'), medium(99))
    const o = await runCli(['create', sb.p('other.raw'), sb.p('other.vdimg'), '--mapfile', sb.p('medium.map')])
    assert.equal(o.code, 0, o.stderr)
    await nginx.start()
    url = `${nginx.url}/disk.vdimg`
    // The default cache directory ($XDG_CACHE_HOME/vdev) of every command run here is the sandbox's.
    process.env.XDG_CACHE_HOME = sb.p('cache-home')
  })

  after(async function () {
    delete process.env.XDG_CACHE_HOME
    if (!sb) return
    await nginx?.stop()
    const left = await sb.teardown()
    assert.deepEqual(left, [], 'left behind')
  })

  it('info --json over http:// is the local file\'s, but for the path and what pins the object (nginx: its ETag and Last-Modified)', async () => {
    const [r, l] = await Promise.all([runCli(['info', url, '--json']), runCli(['info', local, '--json'])])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stderr, '')
    const remote = JSON.parse(r.stdout)
    const mine = JSON.parse(l.stdout)
    assert.equal(remote.path, url)
    // nginx's ETag is the file's mtime and size in hex; Last-Modified is the mtime.
    const st = fs.statSync(local)
    assert.equal(remote.remote.etag, `"${Math.floor(st.mtimeMs / 1000).toString(16)}-${st.size.toString(16)}"`)
    assert.equal(remote.remote.lastModified, new Date(Math.floor(st.mtimeMs / 1000) * 1000).toUTCString())
    assert.equal(remote.remote.versionId, undefined)
    delete remote.path
    delete mine.path
    delete remote.remote
    assert.deepEqual(remote, mine)
    assert.equal(remote.metadata.case, 'remote')
    assert.ok(remote.chunks.zstd > 0 && remote.chunks.raw > 0 && remote.chunks.zero > 0, JSON.stringify(remote.chunks))
    // Lazy opening: single-range GETs only, nothing like the whole object.
    const gets = nginx.accessLog().filter((x) => x.includes('GET /disk.vdimg'))
    assert.ok(gets.length > 0 && gets.every((x) => / 206 /.test(x)), gets.join('\n'))
  })

  it('verify over http:// checks every chunk and the media hash (exit 0); extract - gives the exact bytes', async () => {
    const v = await runCli(['verify', url, '--json'])
    assert.equal(v.code, 0, v.stderr)
    const j = JSON.parse(v.stdout)
    assert.equal(j.ok, true)
    assert.equal(j.sha256.match, true)
    const x = await runCli(['extract', url, '-'])
    assert.equal(x.code, 0, x.stderr)
    assert.ok(x.stdoutBuf.equals(logical(data)), 'extracted bytes differ from the medium')
    assert.equal(sha256(x.stdoutBuf), j.sha256.recorded)
  })

  it('extract to a file with --mapfile-out: the same file and mapfile as from the local image, each stored byte fetched about once', async () => {
    const mark = nginx.accessLog().length
    const r = await runCli(['extract', url, sb.p('r.img'), '--mapfile-out', sb.p('r.map'), '--cache', 'none'])
    assert.equal(r.code, 0, r.stderr)
    const fetched = nginx
      .accessLog()
      .slice(mark)
      .filter((x) => x.includes('GET /disk.vdimg'))
      .reduce((n, x) => n + Number(x.split('" ')[1].split(' ')[1]), 0)
    const stored = fs.statSync(local).size
    assert.ok(fetched >= stored * 0.9 && fetched <= stored * 1.1 + (64 << 10), `${fetched} bytes fetched for ${stored} stored`)
    const l = await runCli(['extract', local, sb.p('l.img'), '--mapfile-out', sb.p('l.map')])
    assert.equal(l.code, 0, l.stderr)
    assert.ok(fs.readFileSync(sb.p('r.img')).equals(fs.readFileSync(sb.p('l.img'))))
    const body = (f: string) => lines(fs.readFileSync(f, 'utf8')).filter((x) => !x.startsWith('#'))
    assert.deepEqual(body(sb.p('r.map')), body(sb.p('l.map')))
  })

  it('--cache DIR: a second extract fetches only the first 64 KiB; a damaged cache file is fetched again; --cache-size bounds it', async () => {
    const dir = sb.p('cache')
    const since = (mark: number) => nginx.accessLog().slice(mark).filter((x) => x.includes('GET /disk.vdimg')).map((x) => Number(x.split('" ')[1].split(' ')[1]))
    const want = logical(data)
    const first = await runCli(['extract', url, '-', '--cache', dir])
    assert.equal(first.code, 0, first.stderr)
    assert.ok(first.stdoutBuf.equals(want))
    let mark = nginx.accessLog().length
    const second = await runCli(['extract', url, '-', '--cache', dir])
    assert.equal(second.code, 0, second.stderr)
    assert.ok(second.stdoutBuf.equals(want))
    assert.deepEqual(since(mark), [64 << 10], 'the second extract fetched more than the first 64 KiB')
    // Damage the largest cached range: it is checked, thrown away and fetched again.
    const files = fs.readdirSync(dir).flatMap((d) => fs.readdirSync(path.join(dir, d)).map((f) => path.join(dir, d, f)))
    const big = files.sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]
    const b = fs.readFileSync(big)
    b[b.length >> 1] ^= 0x40
    fs.writeFileSync(big, b)
    mark = nginx.accessLog().length
    const third = await runCli(['extract', url, '-', '--cache', dir])
    assert.equal(third.code, 0, third.stderr)
    assert.ok(third.stdoutBuf.equals(want))
    const got = since(mark)
    assert.equal(got.length, 2, `GETs after damaging one cached range: ${got}`)
    assert.equal(got[1], b.length - 16)
    // A bound of 1 MiB: what stays in the directory is at most that.
    const small = sb.p('cache-small')
    const r = await runCli(['verify', url, '--quick', '--cache', small, '--cache-size', '1M'])
    assert.equal(r.code, 0, r.stderr)
    const held = fs.readdirSync(small).flatMap((d) => fs.readdirSync(path.join(small, d)).map((f) => fs.statSync(path.join(small, d, f)).size))
    assert.ok(held.length > 0 && held.reduce((x, y) => x + y, 0) <= MiB, `${held.length} files, ${held.reduce((x, y) => x + y, 0)} bytes`)
  })

  it('several readers of one object at once, sharing one new cache directory: every one gets the exact bytes', async () => {
    const dir = sb.p('cache-shared')
    const want = logical(data)
    const rs = await Promise.all([0, 1, 2].map(() => runCli(['extract', url, '-', '--cache', dir])))
    for (const r of rs) {
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stdoutBuf.equals(want))
    }
    const again = await runCli(['extract', url, '-', '--cache', dir])
    assert.ok(again.stdoutBuf.equals(want))
    const left = fs.readdirSync(dir).flatMap((d) => fs.readdirSync(path.join(dir, d)))
    assert.deepEqual(left.filter((f) => f.endsWith('.tmp')), [], 'temporary files left in the cache')
  })

  it('https:// with a throwaway CA: trusted through NODE_EXTRA_CA_CERTS, refused without it (exit 3, one line)', async () => {
    const tls = `${nginx.tlsUrl}/disk.vdimg`
    const ok = await runCli(['verify', tls, '--quick'], {env: {NODE_EXTRA_CA_CERTS: nginx.tls.ca}})
    assert.equal(ok.code, 0, ok.stderr)
    const no = await runCli(['info', tls], {env: {NODE_EXTRA_CA_CERTS: ''}})
    assert.equal(no.code, 3)
    assert.equal(lines(no.stderr).length, 1, no.stderr)
    assert.match(no.stderr, /^vdev: https:\/\/127\.0\.0\.1:\d+\/disk\.vdimg: TLS: /)
  })

  it('--header adds a header: 401 without the token (exit 3), the image with it', async () => {
    const priv = `${nginx.url}/private/disk.vdimg`
    const no = await runCli(['info', priv])
    assert.equal(no.code, 3)
    assert.equal(lines(no.stderr).length, 1, no.stderr)
    assert.match(no.stderr, /access denied \(HTTP 401\)/)
    const yes = await runCli(['verify', priv, '--quick', '--header', `Authorization: Bearer ${nginx.token}`])
    assert.equal(yes.code, 0, yes.stderr)
    const bad = await runCli(['info', priv, '--header', 'no colon here'])
    assert.equal(bad.code, 2)
  })

  it('a missing object (exit 3), a non-VDIMG object (exit 4), an unreachable server (exit 3 within --remote-timeout): one line each', async () => {
    const missing = await runCli(['info', `${nginx.url}/nope.vdimg`])
    assert.equal(missing.code, 3)
    assert.deepEqual(lines(missing.stderr), [`vdev: ${nginx.url}/nope.vdimg: not found (HTTP 404)`])
    const notImage = await runCli(['verify', `${nginx.url}/notes.txt`])
    assert.equal(notImage.code, 4)
    assert.equal(lines(notImage.stderr).length, 1, notImage.stderr)
    assert.match(notImage.stderr, /notes\.txt: not a VDIMG image \(bad magic\)/)
    const t0 = Date.now()
    const down = await runCli(['extract', 'http://127.0.0.1:9/x.vdimg', '-', '--remote-timeout', '2'])
    assert.equal(down.code, 3)
    assert.equal(lines(down.stderr).length, 1, down.stderr)
    assert.match(down.stderr, /no answer within 2 s \(ECONNREFUSED\)/)
    assert.ok(Date.now() - t0 < 15_000, `took ${Date.now() - t0} ms`)
  })

  it('the server stopped in the middle of an extract: exit 3 within --remote-timeout, nothing left behind', async () => {
    const out = sb.p('stopped')
    fs.mkdirSync(out)
    const x = runCli(['extract', `${nginx.url}/slow/disk.vdimg`, path.join(out, 'disk.img'), '--remote-timeout', '2'])
    await new Promise((r) => setTimeout(r, 2500))
    await nginx.stop()
    const t0 = Date.now()
    const r = await x
    const ms = Date.now() - t0
    await nginx.start()
    assert.equal(r.code, 3, r.stderr)
    assert.equal(lines(r.stderr).length, 1, r.stderr)
    assert.match(r.stderr, /no answer within 2 s/)
    // 2 s of retries, then the CLI winds down (its decode workers): bounded, however loaded the machine.
    assert.ok(ms < 25_000, `extract ended ${ms} ms after the server stopped`)
    assert.deepEqual(fs.readdirSync(out), [])
  })

  it('vdev serve https://… --header (NBD, two serving threads: their own GETs through libcurl, streams through the link): nbdcopy gets the exact bytes', async function () {
    if (!have('nbdcopy')) this.skip()
    const sock = sb.p('serve.sock')
    // https with the throwaway CA and a private path: the threads' libcurl trusts what Node trusts and sends --header.
    const priv = `${nginx.tlsUrl}/private/disk.vdimg`
    const args = [BIN, 'serve', priv, '--header', `Authorization: Bearer ${nginx.token}`, '--listen', `unix:${sock}`, '--json', '--bad-policy', 'zero', '--cache', 'none', '--threads', '2']
    const child = spawn(process.execPath, args, {stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, NODE_EXTRA_CA_CERTS: nginx.tls.ca}})
    sb.trackPid(child.pid)
    let err = ''
    child.stderr.on('data', (d) => (err += d))
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.once('data', () => resolve())
        child.once('close', () => reject(new Error(`serve exited: ${err}`)))
      })
      const r = await run('nbdcopy', [`nbd+unix:///?socket=${sock}`, '-'], {timeoutMs: 120_000})
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stdout.equals(logical(data)), 'nbdcopy bytes differ')
    } finally {
      const closed = new Promise((resolve) => child.once('close', resolve))
      child.kill('SIGTERM')
      await closed
    }
    assert.match(err, /served \d+ reads/)
  })

  it('vdev serve URL --cache: a second server reads the whole device from the cache with the web server stopped, its idle threads decoding ahead from the cache only', async function () {
    if (!have('nbdcopy')) this.skip()
    const cache = sb.p('serve-cache')
    /** A whole-device nbdcopy through `vdev serve URL --cache`; `ready` runs once the server is up. */
    const serveOnce = async (ready: () => Promise<void> = async () => undefined): Promise<{bytes: Buffer; code: number | null; stderr: string; err: string}> => {
      const sock = sb.p('serve-cache.sock')
      fs.rmSync(sock, {force: true})
      const child = spawn(process.execPath, [BIN, 'serve', url, '--listen', `unix:${sock}`, '--json', '--bad-policy', 'zero', '--cache', cache, '--threads', '2', '--remote-timeout', '2'], {stdio: ['ignore', 'pipe', 'pipe']})
      sb.trackPid(child.pid)
      let err = ''
      child.stderr.on('data', (d) => (err += d))
      let r: Awaited<ReturnType<typeof run>>
      try {
        await new Promise<void>((resolve, reject) => {
          child.stdout.once('data', () => resolve())
          child.once('close', () => reject(new Error(`serve exited: ${err}`)))
        })
        await ready()
        r = await run('nbdcopy', [`nbd+unix:///?socket=${sock}`, '-'], {timeoutMs: 120_000})
      } finally {
        const closed = new Promise((resolve) => child.once('close', resolve))
        child.kill('SIGTERM')
        await closed
      }
      // With the server's stop line (its decode-ahead counters).
      return {bytes: r.stdout, code: r.code, stderr: r.stderr, err}
    }
    const first = await serveOnce()
    assert.equal(first.code, 0, first.stderr)
    assert.ok(first.bytes.equals(logical(data)), 'first read: nbdcopy bytes differ')
    // Opening needs the web server (one GET: the ETag keys the cache); every later byte comes from the cache,
    // so the whole device reads with nginx stopped — and decoding ahead, which reads only the cache, finds it.
    let second: Awaited<ReturnType<typeof serveOnce>>
    try {
      second = await serveOnce(() => nginx.stop())
    } finally {
      await nginx.start()
    }
    assert.equal(second.code, 0, second.stderr)
    assert.ok(second.bytes.equals(logical(data)), 'second read: nbdcopy bytes differ')
    assert.match(second.err, /decode-ahead: [1-9]\d* chunks decoded ahead/)
  })

  it('vdev serve URL --scratch (writable, over the remote image, on serving threads): a write reads back, every other byte is the image\'s', async function () {
    if (!have('nbdcopy') || !have('qemu-io')) this.skip()
    await checkServeScratch(sb, url, logical(data))
  })

  it('vdev attach URL --overlay FILE (FUSE + loop, read-write): writes read back, persist across re-attach, work over the local copy of the same image; the object never changes', async function () {
    if (!IS_ROOT) this.skip()
    const ovl = sb.p('remote.vdovl')
    const objectHash = sha256(fs.readFileSync(local))
    const attachRw = async (image: string): Promise<{device: string; id: string; overlay?: string; readOnly: boolean}> => {
      const r = await sb.vdev(['attach', image, '--backend', 'fuse', '--json', '--overlay', ovl, '--cache', 'none'])
      assert.equal(r.code, 0, r.stderr)
      const j = JSON.parse(r.stdout)
      sb.trackPid(j.pid)
      return j
    }
    const detach = async (id: string) => {
      const r = await sb.vdev(['detach', id])
      assert.equal(r.code, 0, r.stderr)
    }
    // What the device holds after the writes: 1 MiB of new bytes at 5 MiB, and 4 KiB over the first bad
    // sector (a write makes an unreadable area readable: the overlay holds it).
    const written = prng(41, MiB)
    const overBad = prng(42, 4096)
    const badAt = BAD[0].offset - 512
    const want = logical(data)
    written.copy(want, 5 * MiB)
    overBad.copy(want, badAt)
    const whole = async (dev: string): Promise<Buffer> => {
      const parts: Buffer[] = []
      for (let o = 0; o < SIZE; o += 4 * MiB) {
        // The second bad area (64 KiB at 20 MiB) is still unreadable: read around it.
        const bad = BAD[1]
        if (o <= bad.offset && bad.offset < o + 4 * MiB) {
          const a = bad.offset > o ? await readDirect(dev, o, bad.offset - o) : {code: 0, stdout: Buffer.alloc(0), stderr: ''}
          assert.equal(a.code, 0, a.stderr)
          const e = await readDirect(dev, bad.offset, 4096)
          assert.notEqual(e.code, 0, 'the area no write touched still reads as unreadable')
          assert.match(e.stderr, /Input\/output error/)
          const b = await readDirect(dev, bad.offset + bad.length, o + 4 * MiB - bad.offset - bad.length)
          assert.equal(b.code, 0, b.stderr)
          parts.push(a.stdout, Buffer.alloc(bad.length), b.stdout)
          continue
        }
        const r = await readDirect(dev, o, 4 * MiB)
        assert.equal(r.code, 0, `read at ${o}: ${r.stderr}`)
        parts.push(r.stdout)
      }
      return Buffer.concat(parts)
    }
    /** Where two equal-length buffers first differ, for the failure message. */
    const firstDiff = (a: Buffer, b: Buffer): string => {
      if (a.length !== b.length) return `length ${a.length}, want ${b.length}`
      for (let i = 0; i < a.length; i += 512) if (!a.subarray(i, i + 512).equals(b.subarray(i, i + 512))) return `first differs in the sector at ${i}`
      return 'equal'
    }
    const same = (got: Buffer, what: string) => assert.ok(got.equals(want), `${what}: ${firstDiff(got, want)}`)

    /** Attach `image` with the overlay, run `check` on the device, detach even when it fails. */
    const attached = async (image: string, check: (dev: {device: string; overlay?: string; readOnly: boolean}) => Promise<void>) => {
      const dev = await attachRw(image)
      try {
        await check(dev)
      } finally {
        await detach(dev.id)
      }
    }

    await attached(url, async (first) => {
      assert.equal(first.readOnly, false)
      assert.equal(first.overlay, ovl)
      for (const [buf, at] of [[written, 5 * MiB], [overBad, badAt]] as const) {
        const w = await run('dd', [`of=${first.device}`, `bs=${buf.length}`, `seek=${at}`, 'count=1', 'iflag=fullblock', 'oflag=direct,seek_bytes', 'conv=notrunc,fsync', 'status=none'], {input: buf})
        assert.equal(w.code, 0, w.stderr)
      }
      same(await whole(first.device), 'the device after the writes')
    })
    // Again from the URL with the same overlay, then from the local copy of the object: the overlay names
    // its base by the image's identity, not by where it was read from.
    await attached(url, async (again) => same(await whole(again.device), 'the device re-attached from the URL'))
    await attached(sb.p('disk.vdimg.orig'), async (copy) => same(await whole(copy.device), 'the device attached from the local copy'))
    assert.equal(sha256(fs.readFileSync(local)), objectHash, 'the object on the server changed')

    // Another image's URL with this overlay: one line, exit 2, nothing registered.
    fs.copyFileSync(sb.p('other.vdimg'), path.join(nginx.www, 'other.vdimg'))
    const wrong = await sb.vdev(['attach', `${nginx.url}/other.vdimg`, '--backend', 'fuse', '--overlay', ovl, '--cache', 'none'])
    assert.equal(wrong.code, 2, wrong.stderr)
    assert.match(wrong.stderr.trim(), /belongs to another base/)
    assert.equal(lines(wrong.stderr).length, 1, wrong.stderr)
    assert.equal(sb.entries().length, 0, 'nothing stays registered')
  })

  describe('attached with the FUSE backend (the kernel\'s FUSE client and loop driver)', function () {
    let dev = ''
    let id = ''
    const signedUrl = () => `${url}?X-Amz-Signature=s3cr3t&X-Amz-Expires=3600`

    before(async function () {
      if (!IS_ROOT) this.skip()
      // No cache: the fault tests below need reads that reach the server. A presigned-style query string
      // (nginx ignores it): the server sends it, but its command line, which every user can read, does not show it.
      const mark = nginx.accessLog().length
      const r = await sb.vdev(['attach', signedUrl(), '--backend', 'fuse', '--json', '--remote-timeout', '2', '--cache', 'none'])
      assert.equal(r.code, 0, r.stderr)
      const j = JSON.parse(r.stdout)
      sb.trackPid(j.pid)
      dev = j.device
      id = j.id
      assert.equal(j.image, signedUrl())
      const cmdline = fs.readFileSync(`/proc/${j.pid}/cmdline`, 'utf8')
      assert.ok(cmdline.includes(url) && !cmdline.includes('s3cr3t'), cmdline)
      const gets = nginx.accessLog().slice(mark).filter((x) => x.includes('GET /disk.vdimg'))
      assert.ok(gets.length > 0 && gets.every((x) => x.includes('GET /disk.vdimg?X-Amz-Signature=s3cr3t')), gets.join('\n'))
    })

    after(async function () {
      if (!id) return
      const r = await sb.vdev(['detach', id])
      assert.equal(r.code, 0, r.stderr)
    })

    const log = () => fs.readFileSync(path.join(sb.stateDir, 'logs', `${id}.log`), 'utf8')
    const touchesBad = (o: number, l: number) => BAD.some((b) => b.offset < o + l && o < b.offset + b.length)

    it('reads the local image\'s bytes, every MiB of it; EIO at exactly the unreadable sectors', async () => {
      for (let o = 0; o < SIZE; o += MiB) {
        if (touchesBad(o, MiB)) continue
        const r = await readDirect(dev, o, MiB)
        assert.equal(r.code, 0, `read at ${o}: ${r.stderr}`)
        assert.ok(r.stdout.equals(data.subarray(o, o + MiB)), `bytes at ${o}`)
      }
      for (const b of BAD) {
        const bad = await readDirect(dev, b.offset, 512)
        assert.notEqual(bad.code, 0, `bad sector at ${b.offset} read`)
        assert.match(bad.stderr, /Input\/output error/)
        const before = await readDirect(dev, b.offset - 512, 512)
        assert.equal(before.code, 0, before.stderr)
        assert.ok(before.stdout.equals(data.subarray(b.offset - 512, b.offset)))
      }
      // The entry the registry keeps names the URL; list shows it, and what was fetched.
      const l = await sb.vdev(['list', '--json'])
      assert.equal(l.code, 0, l.stderr)
      const e = JSON.parse(l.stdout)[0]
      assert.equal(e.image, signedUrl())
      const stored = fs.statSync(local).size
      assert.ok(e.stats.fetched.requests > 0 && e.stats.fetched.bytes > 0 && e.stats.fetched.bytes <= 2 * stored, JSON.stringify(e.stats))
    })

    it('the server stopped: reads fail with EIO within --remote-timeout; once it is back, the same device reads again', async () => {
      await nginx.stop()
      const t0 = Date.now()
      // Far from anything read lately (no read-ahead window covers it), chunks no thread has cached.
      const r = await readDirect(dev, 12 * MiB + 4096, 4096)
      const ms = Date.now() - t0
      assert.notEqual(r.code, 0, 'read with the server stopped succeeded')
      assert.match(r.stderr, /Input\/output error/)
      assert.ok(ms < 15_000, `the failed read took ${ms} ms`)
      await nginx.start()
      const again = await readDirect(dev, 12 * MiB + 4096, 4096)
      assert.equal(again.code, 0, again.stderr)
      assert.ok(again.stdout.equals(data.subarray(12 * MiB + 4096, 12 * MiB + 8192)))
      assert.match(log(), /no answer within 2 s/)
    })

    it('the object replaced while attached: EIO and a log line, never the new object\'s bytes', async () => {
      const www = path.join(nginx.www, 'disk.vdimg')
      fs.copyFileSync(sb.p('other.vdimg'), www + '.new')
      const later = new Date(fs.statSync(www).mtimeMs + 100_000)
      fs.utimesSync(www + '.new', later, later)
      fs.renameSync(www + '.new', www)
      const other = fs.readFileSync(sb.p('other.raw'))
      for (const o of [2 * MiB, 6 * MiB, 33 * MiB]) {
        const r = await readDirect(dev, o, 65536)
        if (r.code === 0) {
          // Only what a thread still had cached from before may be served: the old object's bytes.
          assert.ok(r.stdout.equals(data.subarray(o, o + 65536)), `read at ${o} served bytes of neither version`)
          assert.ok(!r.stdout.equals(other.subarray(o, o + 65536)), `read at ${o} served the new object`)
        } else assert.match(r.stderr, /Input\/output error/)
      }
      const r = await readDirect(dev, 8 * MiB, 65536)
      assert.notEqual(r.code, 0, 'a read after the replacement succeeded')
      assert.match(log(), /the object changed since it was opened/)
      fs.copyFileSync(sb.p('disk.vdimg.orig'), www)
    })
  })
})

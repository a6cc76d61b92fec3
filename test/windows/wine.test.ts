/**
 * vdev as Windows code: the official Windows build of Node 22 under Wine 8 (test/windows/wine.ts).
 * - create | info | verify | extract of an image with bad areas (real files), against the Linux results;
 *   zstd-napi's binary is Linux-only here, so Windows Node compresses with node:zlib's zstd (the fallback).
 * - `vdev serve --protocol iscsi` in the Windows process, read from the Linux side with libiscsi and
 *   qemu-img compare (exact bytes).
 * - The windows-iscsi backend through its real FFI (koffi, advapi32 against Wine's service manager and a
 *   stand-in MSiSCSI service, a stand-in iscsidsc.dll that records every call): attach with a failed login
 *   retried and a disk that appears late, the target it started read from Linux, deviceGone before and
 *   after, detach; a login that never succeeds; a logout refused as busy.
 * Not Windows: no Microsoft initiator, no real disk. Wine is stopped (wineserver -k) at the end, pass or fail.
 */
import {strict as assert} from 'node:assert'
import {execFileSync} from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {have, prng, runCli, textish, tmpDir, writeTruthMap} from '../helpers'
import {PREFIX, killWine, runWin, setupWine, startWin, startWineServer, waitForLine} from './wine'

describe('Windows under Wine (Windows Node 22, stand-in iscsidsc.dll)', function () {
  this.timeout(180000)
  let t: ReturnType<typeof tmpDir>
  let raw: string
  let map: string
  let data: Buffer
  let image: string
  let shared: string | undefined
  /** A plain image of the source, made once by Linux vdev (the backend tests need no bad areas). */
  async function sharedImage(): Promise<string> {
    if (!shared) {
      const p = path.join(t.dir, 'shared.vdimg')
      const c = await runCli(['create', raw, p])
      assert.equal(c.code, 0, c.stderr)
      shared = p
    }
    return shared
  }

  before(function () {
    this.timeout(600000)
    const why = setupWine()
    if (why) {
      console.log(`      skipped: ${why}`)
      this.skip()
    }
    killWine()
    startWineServer()
    t = tmpDir('vdev-wine-')
    // 3 MiB (a whole number of sectors): text, noise, zeros; two bad areas in the map.
    data = Buffer.concat([textish(11, 1 << 20), prng(12, 1 << 20), Buffer.alloc(1 << 20)])
    raw = path.join(t.dir, 'disk.img')
    map = path.join(t.dir, 'disk.map')
    fs.writeFileSync(raw, data)
    writeTruthMap(map, data.length, [
      {offset: 4096, length: 1024},
      {offset: 2 << 20, length: 65536},
    ])
  })

  after(() => {
    killWine()
    t?.cleanup()
  })

  it('Windows Node falls back to node:zlib zstd (zstd-napi has no Windows binary here)', async () => {
    const r = await runWin(['-e', "console.log(process.platform, require('./dist/src/format/zstd').implementation)"], t.dir, 'zstd')
    assert.equal(r.stdout.trim(), 'win32 node:zlib', r.stderr)
  })

  it('create | info | verify | extract as Windows code give the Linux results', async () => {
    image = path.join(t.dir, 'win.vdimg')
    const c = await runWin(['bin/run.js', 'create', '--mapfile', map, raw, image, '--chunk-size', '64K', '--json'], t.dir, 'create')
    assert.equal(c.code, 0, c.stderr)
    const linuxImage = path.join(t.dir, 'linux.vdimg')
    const lc = await runCli(['create', '--mapfile', map, raw, linuxImage, '--chunk-size', '64K'])
    assert.equal(lc.code, 0, lc.stderr)

    const wi = await runWin(['bin/run.js', 'info', image, '--json', '--all'], t.dir, 'info')
    assert.equal(wi.code, 0, wi.stderr)
    const li = JSON.parse((await runCli(['info', linuxImage, '--json', '--all'])).stdout)
    const w = JSON.parse(wi.stdout)
    for (const k of ['size', 'sectorSize', 'chunkSize', 'sha256', 'badAreas', 'chunks']) assert.deepEqual(w[k], li[k], k)
    assert.equal(w.badAreas.length, 2)

    assert.equal((await runWin(['bin/run.js', 'verify', image], t.dir, 'verify')).code, 0)
    const wout = path.join(t.dir, 'win-out.img')
    const wmap = path.join(t.dir, 'win-out.map')
    const x = await runWin(['bin/run.js', 'extract', image, wout, '--mapfile-out', wmap], t.dir, 'extract')
    assert.equal(x.code, 0, x.stderr)
    const lout = path.join(t.dir, 'linux-out.img')
    const lmap = path.join(t.dir, 'linux-out.map')
    assert.equal((await runCli(['extract', linuxImage, lout, '--mapfile-out', lmap])).code, 0)
    assert.ok(fs.readFileSync(wout).equals(fs.readFileSync(lout)), 'extracted bytes differ')
    // The same map (comment lines name the image's path, which differs).
    const body = (f: string) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => !l.startsWith('#'))
    assert.deepEqual(body(wmap), body(lmap))
    assert.equal(body(wmap).filter((l) => / -$/.test(l)).length, 2)
    // The Windows-made image is a valid image for Linux vdev too.
    const lv = await runCli(['verify', image])
    assert.equal(lv.code, 0, lv.stderr + lv.stdout)
  })

  it('vdev serve --protocol iscsi as Windows code: libiscsi and qemu-img read it exactly from Linux', async function () {
    if (!have('iscsi-readcapacity16') || !have('qemu-img')) this.skip()
    const plain = path.join(t.dir, 'plain.vdimg')
    assert.equal((await runCli(['create', raw, plain])).code, 0)
    const s = startWin(['bin/run.js', 'serve', plain, '--protocol', 'iscsi', '--listen', '127.0.0.1:0', '--json'], t.dir, 'serve')
    let ended = false
    s.done.then(() => (ended = true))
    try {
      const line = await waitForLine(s.out, /"protocol":"iscsi"/, () => ended)
      assert.ok(line, `no ready line: ${fs.readFileSync(s.err, 'utf8')}`)
      const ready = JSON.parse(line!) as {uri: string; target: string}
      const cap = execFileSync('iscsi-readcapacity16', [ready.uri], {encoding: 'utf8', timeout: 30000})
      assert.match(cap, new RegExp(`RETURNED LOGICAL BLOCK ADDRESS:${data.length / 512 - 1}\\b`))
      assert.match(cap, /LOGICAL BLOCK LENGTH IN BYTES:512/)
      const inq = execFileSync('iscsi-inq', [ready.uri], {encoding: 'utf8', timeout: 30000})
      assert.match(inq, /Peripheral Device Type:DIRECT_ACCESS/)
      const cmp = execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, ready.uri], {encoding: 'utf8', timeout: 60000})
      assert.match(cmp, /Images are identical/)
    } finally {
      s.child.kill('SIGTERM')
      await Promise.race([s.done, new Promise((r) => setTimeout(r, 5000))])
    }
  })

  /** The stand-in's call log, and its state file (live sessions, static targets). */
  function standin(name: string): {env: NodeJS.ProcessEnv; calls: () => string[]; state: () => string} {
    const log = path.join(t.dir, `${name}.calls`)
    const state = path.join(t.dir, `${name}.state`)
    return {
      env: {STANDIN_LOG: log, STANDIN_STATE: state},
      calls: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n') : []),
      state: () => (fs.existsSync(state) ? fs.readFileSync(state, 'utf8') : ''),
    }
  }
  const parseSteps = (out: string): Record<string, any> =>
    Object.fromEntries(
      out
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l))
        .map((j) => [j.step, j]),
    )

  it('backend: attach (a failed login retried, the disk late), the target read from Linux, deviceGone, detach', async function () {
    const sd = standin('flow')
    const runDir = path.join(t.dir, 'run-flow')
    fs.mkdirSync(runDir)
    const plain = path.join(t.dir, 'flow.vdimg')
    assert.equal((await runCli(['create', raw, plain])).code, 0)
    const d = startWin(['dist/test/windows/wine-driver.js', plain, runDir, 'flow'], t.dir, 'driver-flow', {
      ...sd.env,
      STANDIN_LOGIN_FAILS: '1',
      STANDIN_DEVICE_DELAY: '2',
      STANDIN_DEVICE_NUMBER: '5',
    })
    let ended = false
    d.done.then(() => (ended = true))
    try {
      const line = await waitForLine(d.out, /"step":"(attach|error)"/, () => ended)
      assert.ok(line, `driver: ${fs.readFileSync(d.err, 'utf8')}`)
      const attach = JSON.parse(line!)
      assert.equal(attach.ok, true, line)
      assert.equal(attach.device, '\\\\.\\PhysicalDrive5')
      const st = attach.state as {iqn: string; port: number; sessionId: string; deviceNumber: number}
      assert.match(st.iqn, /^iqn\.2026-01\.dev\.vdev:flow-[0-9a-f]{12}\.vdev7\.[0-9a-f]{8}$/)
      assert.equal(st.deviceNumber, 5)
      // ISCSI_UNIQUE_SESSION_ID kept exact (both halves above 2^53), as the 16 bytes little-endian.
      const sid = Buffer.from(st.sessionId, 'hex')
      const uniq = sid.readBigUInt64LE(0).toString(16)
      const spec = sid.readBigUInt64LE(8).toString(16)
      assert.match(uniq, /^ffffa0001234[0-9a-f]{4}$/)
      assert.equal(spec, '4000000000000003')
      assert.ok(attach.logs.includes('started the MSiSCSI service'), attach.logs.join('\n'))
      assert.ok(attach.logs.some((l: string) => /LoginIScsiTargetW attempt 1: status 0xefff0003/.test(l)))

      // The calls and their arguments, as the stand-in saw them through the FFI.
      const calls = sd.calls()
      assert.equal(
        calls[0],
        `AddIScsiStaticTargetW target=${st.iqn} alias=(null) flags=0 persist=0 mappings=null options=null portals=1 address=127.0.0.1 symbolic= socket=${st.port}`,
      )
      const login = `LoginIScsiTargetW target=${st.iqn} informational=0 initiator=(null) port=0xffffffff portal=127.0.0.1:${st.port} security=0 mappings=null options=null keysize=0 key=null persistent=0`
      assert.deepEqual(calls.slice(1, 3), [login, login])
      assert.equal(calls[3], `  -> session ${uniq}-${spec}`)
      const getDevices = calls.filter((c) => c.startsWith('GetDevicesForIScsiSessionW'))
      assert.deepEqual(
        getDevices.map((c) => c.replace(/^.* count=/, 'count=')),
        ['count=0 devices=null', 'count=0 devices=null', 'count=0 devices=null', 'count=1 devices=set'],
      )
      assert.ok(getDevices.every((c) => c.includes(`session=${uniq}-${spec}`)))

      // The target the backend started inside the Windows process, read from Linux while attached.
      if (have('qemu-img')) {
        const uri = `iscsi://127.0.0.1:${st.port}/${st.iqn}/0`
        const cmp = execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, uri], {encoding: 'utf8', timeout: 60000})
        assert.match(cmp, /Images are identical/)
      }
      fs.writeFileSync(path.join(runDir, 'continue'), '')
      const r = await d.done
      assert.equal(r.code, 0, r.stderr)
      const steps = parseSteps(r.stdout)
      assert.equal(steps['gone-before'].gone, false)
      assert.equal(steps.detach.ok, true)
      assert.equal(steps['gone-after'].gone, true)
      const after = sd.calls()
      assert.ok(after.includes(`LogoutIScsiTarget session=${uniq}-${spec}`))
      assert.ok(after.includes(`RemoveIScsiStaticTargetW target=${st.iqn}`))
      assert.ok(after.some((c) => /^ReportIScsiSessionsW size=\d+ buffer=set sessions=1 /.test(c)))
      assert.equal(sd.state().trim(), '', 'the stand-in still has a session or a target')
    } finally {
      fs.writeFileSync(path.join(runDir, 'continue'), '')
      await Promise.race([d.done, new Promise((r) => setTimeout(r, 10000))])
    }
  })

  it('vdev attach | list | detach as Windows code: registry in %ProgramData%\\vdev, the session cross-checked', async () => {
    const sd = standin('cli')
    const plain = path.join(t.dir, 'cli.vdimg')
    assert.equal((await runCli(['create', raw, plain])).code, 0)
    const a = await runWin(['bin/run.js', 'attach', plain, '--backend', 'windows-iscsi', '--json'], t.dir, 'attach', sd.env, 90000)
    assert.equal(a.code, 0, a.stderr)
    const dev = JSON.parse(a.stdout)
    assert.equal(dev.device, '\\\\.\\PhysicalDrive5')
    assert.equal(dev.backend, 'windows-iscsi')
    assert.equal(dev.readOnly, true)
    const entry = path.join(PREFIX, 'drive_c', 'ProgramData', 'vdev', 'devices', `${dev.id}.json`)
    assert.ok(fs.existsSync(entry), `no registry entry at ${entry}`)
    const l = await runWin(['bin/run.js', 'list', '--json'], t.dir, 'list', sd.env)
    assert.equal(l.code, 0, l.stderr)
    const mine = (JSON.parse(l.stdout) as Array<{id: string; state: string}>).find((x) => x.id === dev.id)
    assert.equal(mine?.state, 'running')
    assert.ok(sd.calls().some((c) => c.startsWith('ReportIScsiSessionsW')), 'list did not cross-check the sessions')
    const d = await runWin(['bin/run.js', 'detach', dev.device], t.dir, 'detach', sd.env)
    assert.equal(d.code, 0, d.stderr)
    assert.ok(sd.calls().some((c) => c.startsWith('LogoutIScsiTarget')))
    assert.ok(sd.calls().some((c) => c.startsWith('RemoveIScsiStaticTargetW')))
    assert.equal(sd.state().trim(), '')
    assert.ok(!fs.existsSync(entry))
  })

  it('backend: a login that never succeeds fails the attach after 3 tries and removes the target', async () => {
    const sd = standin('fail')
    const runDir = path.join(t.dir, 'run-fail')
    fs.mkdirSync(runDir)
    const r = await runWin(['dist/test/windows/wine-driver.js', await sharedImage(), runDir, 'fail'], t.dir, 'driver-fail', {...sd.env, STANDIN_LOGIN_FAILS: '99'})
    assert.equal(r.code, 0, r.stderr)
    const a = parseSteps(r.stdout).attach
    assert.equal(a.ok, false)
    assert.equal(a.code, 'io')
    assert.match(a.message, /^LoginIScsiTargetW iqn\.[^ ]+ \(127\.0\.0\.1:\d+\) failed: status 0xefff0003$/)
    const calls = sd.calls()
    assert.equal(calls.filter((c) => c.startsWith('LoginIScsiTargetW')).length, 3)
    assert.ok(calls[calls.length - 1].startsWith('RemoveIScsiStaticTargetW target='))
    assert.equal(sd.state().trim(), '')
  })

  it('backend: a logout the initiator refuses is a busy detach, and a forced cleanup reports it', async () => {
    const sd = standin('busy')
    const runDir = path.join(t.dir, 'run-busy')
    fs.mkdirSync(runDir)
    const r = await runWin(['dist/test/windows/wine-driver.js', await sharedImage(), runDir, 'busy'], t.dir, 'driver-busy', {...sd.env, STANDIN_LOGOUT_BUSY: '1'})
    assert.equal(r.code, 0, r.stderr)
    const steps = parseSteps(r.stdout)
    assert.equal(steps.attach.ok, true)
    assert.equal(steps.detach.ok, false)
    assert.equal(steps.detach.code, 'busy')
    assert.match(steps.detach.message, /^LogoutIScsiTarget \\\\\.\\PhysicalDrive5 failed: status 0xefff0021 \(the disk may be in use; use --force\)$/)
    // The forced cleanup also meets a live session it cannot log out of, and says so.
    assert.match(steps.cleanup?.message ?? '', /LogoutIScsiTarget .* failed: status 0xefff0021$/)
  })
})

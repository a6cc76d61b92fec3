/**
 * The CLI as users and scripts meet it: real processes, real files, exit codes, one-line errors.
 */
import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {spawn} from 'node:child_process'
import {BIN, runCli, sha256, textish, prng, tmpDir} from '../helpers'
import {reseal} from '../format/reseal'

function oneLineError(stderr: string): void {
  const lines = stderr.split('\n').filter(Boolean)
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`)
  assert.match(lines[0], /^vdev: /)
  assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace')
}

describe('vdev create | info | verify | extract', function () {
  this.timeout(300_000)
  let t: ReturnType<typeof tmpDir>
  let raw: string
  let data: Buffer
  let img: string
  const p = (f: string) => path.join(t.dir, f)
  /** Files in the test dir other than the ones named (to prove nothing half-written is left). */
  const leftovers = (...known: string[]) => fs.readdirSync(t.dir).filter((f) => !known.includes(f))

  before(async () => {
    t = tmpDir()
    data = Buffer.concat([textish(1, 3 << 20), Buffer.alloc(1 << 20), prng(2, (1 << 20) + 1234)])
    raw = p('disk.raw')
    fs.writeFileSync(raw, data)
    fs.writeFileSync(p('disk.map'), `# Mapfile. Created by GNU ddrescue version 1.27\n0x10000 + 1\n0 0x10000 +\n0x10000 0x400 -\n0x10400 0x3F0000 ?\n0x400400 ${data.length - 0x400400} +\n`)
    img = p('disk.vdimg')
    const r = await runCli(['create', '--mapfile', p('disk.map'), raw, img, '--meta', 'model=WDC WD5000', '--meta', 'serial=WD-1', '--meta', 'case=42'])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /disk\.vdimg: 5\.00 MiB in/)
  })
  after(() => t.cleanup())

  it('info --json has the documented shape', async () => {
    const r = await runCli(['info', img, '--json'])
    assert.equal(r.code, 0, r.stderr)
    const j = JSON.parse(r.stdout)
    assert.equal(j.size, data.length)
    assert.equal(j.sectorSize, 512)
    assert.equal(j.chunkSize, 65536) // the default
    assert.equal(j.fileSize, fs.statSync(img).size)
    assert.match(j.sha256, /^[0-9a-f]{64}$/)
    assert.equal(j.metadata.model, 'WDC WD5000')
    assert.equal(j.metadata.serial, 'WD-1')
    assert.equal(j.metadata.case, '42')
    assert.equal(j.metadata.tool, 'GNU ddrescue 1.27')
    assert.deepEqual(j.badAreas, [
      {offset: 0x10000, length: 0x400, status: 'bad-sector'},
      {offset: 0x10400, length: 0x3f0000, status: 'non-tried'},
    ])
    assert.equal(j.badAreaSummary['non-tried'].bytes, 0x3f0000)
  })

  it('info prints a readable summary', async () => {
    const r = await runCli(['info', img])
    assert.equal(r.code, 0)
    assert.match(r.stdout, /bad areas: +2 \(3\.94 MiB\)/)
    assert.match(r.stdout, /bad-sector +1 areas/)
    assert.match(r.stdout, /model: WDC WD5000/)
  })

  it('verify passes an intact image (exit 0) and extract - reproduces the media hash', async () => {
    const v = await runCli(['verify', img, '--json'])
    assert.equal(v.code, 0, v.stderr)
    const j = JSON.parse(v.stdout)
    assert.equal(j.ok, true)
    assert.equal(j.sha256.match, true)
    const x = await runCli(['extract', img, '-'])
    assert.equal(x.code, 0)
    assert.equal(x.stdoutBuf.length, data.length)
    assert.equal(sha256(x.stdoutBuf), j.sha256.recorded)
    const expected = Buffer.from(data)
    expected.fill(0, 0x10000, 0x400400)
    assert.ok(x.stdoutBuf.equals(expected))
  })

  it('extract writes a sparse file, and --bad-fill pattern marks unreadable bytes', async () => {
    const r = await runCli(['extract', img, p('out.raw'), '--bad-fill', 'pattern'])
    assert.equal(r.code, 0, r.stderr)
    const out = fs.readFileSync(p('out.raw'))
    assert.equal(out.length, data.length)
    assert.equal(out.subarray(0x10000, 0x10010).toString('latin1'), 'VDEV-UNREADABLE!')
    assert.ok(out.subarray(0, 0x10000).equals(data.subarray(0, 0x10000)))
    fs.rmSync(p('out.raw'))
    const z = await runCli(['extract', img, p('out.raw')])
    assert.equal(z.code, 0, z.stderr)
    const st = fs.statSync(p('out.raw'))
    assert.equal(st.size, data.length)
    // The unreadable 4 MiB (zeros) are holes, not written blocks.
    assert.ok(st.blocks * 512 <= data.length - (3 << 20), `${st.blocks * 512} bytes allocated`)
    fs.rmSync(p('out.raw'))
  })

  it('create reads stdin (-)', async () => {
    const small = textish(5, 300_000)
    const r = await runCli(['create', '-', p('stdin.vdimg'), '--json'], {input: small})
    assert.equal(r.code, 0, r.stderr)
    const j = JSON.parse(r.stdout)
    assert.equal(j.size, small.length)
    assert.equal(j.sha256, sha256(small))
    fs.rmSync(p('stdin.vdimg'))
  })

  const cases: Array<{name: string; args: () => string[]; code: number; re: RegExp; setup?: () => void}> = [
    {name: 'a missing image', args: () => ['info', p('nope.vdimg')], code: 3, re: /nope\.vdimg: cannot open: no such file or directory/},
    {name: 'a missing source', args: () => ['create', p('nope.raw'), p('x.vdimg')], code: 3, re: /nope\.raw: cannot open: no such file/},
    {name: 'a directory as image', args: () => ['verify', t.dir], code: 3, re: /is a directory/},
    {name: 'wrong magic', args: () => ['info', raw], code: 4, re: /disk\.raw: not a VDIMG image \(bad magic\) \(at byte 0\)/},
    {
      name: 'a newer major version',
      setup: () => {
        const b = fs.readFileSync(img)
        b.writeUInt16LE(3, 8)
        // Sealed as a writer of version 3 would (header CRC and the 1.1 header copy), so the version is what
        // is read: an unsealed edit is a damaged header read from its copy (FORMAT.md §12).
        fs.writeFileSync(p('v3.vdimg'), reseal(b))
      },
      args: () => ['info', p('v3.vdimg')],
      code: 4,
      re: /v3\.vdimg: format version 3\.\d+ is not supported \(this reader reads 1\.x\) \(at byte 8\)/,
    },
    {
      name: 'a truncated image',
      setup: () => fs.writeFileSync(p('cut.vdimg'), fs.readFileSync(img).subarray(0, 5000)),
      args: () => ['verify', p('cut.vdimg')],
      code: 4,
      re: /cut\.vdimg: section table .* lies outside the file .*truncated/,
    },
    {
      name: 'a damaged chunk (verify names the chunk and its byte range)',
      setup: () => {
        const b = fs.readFileSync(img)
        b[300] ^= 0x40 // inside chunk 0's stored bytes
        fs.writeFileSync(p('flip.vdimg'), b)
      },
      args: () => ['verify', p('flip.vdimg')],
      code: 5,
      re: /flip\.vdimg: chunk 0 \(image bytes 0-65535\): .*checksum mismatch/,
    },
    {
      name: 'an existing output',
      args: () => ['create', raw, img],
      code: 6,
      re: /disk\.vdimg: already exists \(use --force to replace it\)/,
    },
    {
      name: 'a mapfile syntax error',
      setup: () => fs.writeFileSync(p('bad.map'), '0 +\n0 0x1000 +\n0x1000 0x1000 Q\n'),
      args: () => ['create', '--mapfile', p('bad.map'), raw, p('m.vdimg')],
      code: 4,
      re: /bad\.map:3: bad block status "Q"/,
    },
    {
      name: 'an overlapping mapfile',
      setup: () => fs.writeFileSync(p('ovl.map'), '0 +\n0 0x1000 +\n0x800 0x1000 -\n'),
      args: () => ['create', '--mapfile', p('ovl.map'), raw, p('m.vdimg')],
      code: 4,
      re: /ovl\.map:3: block at 2048 overlaps the previous block/,
    },
    {
      name: 'a source shorter than the rescued part of its mapfile',
      setup: () => fs.writeFileSync(p('long.map'), `0 +\n0 ${data.length * 2} +\n`),
      args: () => ['create', '--mapfile', p('long.map'), raw, p('m.vdimg')],
      code: 4,
      re: /disk\.raw: source is 5244114 bytes but the mapfile marks bytes up to 10488228 as rescued/,
    },
    {name: 'a bad chunk size', args: () => ['create', raw, p('m.vdimg'), '--chunk-size', '3000'], code: 2, re: /chunk size 3000 is not a power of two/},
    {name: 'an unknown flag', args: () => ['info', img, '--frobnicate'], code: 2, re: /Nonexistent flag: --frobnicate/},
    {name: 'a missing argument', args: () => ['create', raw], code: 2, re: /Missing 1 required arg/},
  ]
  for (const c of cases)
    it(`${c.name}: one line on stderr, exit ${c.code}, nothing half-written`, async () => {
      c.setup?.()
      const before = fs.readdirSync(t.dir).sort()
      const imgBefore = fs.readFileSync(img)
      const r = await runCli(c.args())
      assert.equal(r.code, c.code, `exit ${r.code}: ${r.stderr}`)
      oneLineError(r.stderr)
      assert.match(r.stderr, c.re)
      assert.deepEqual(fs.readdirSync(t.dir).sort(), before, 'no file was added or removed')
      assert.ok(fs.readFileSync(img).equals(imgBefore), 'the existing image is untouched')
    })

  it('errors in --json mode also print a JSON error object on stdout', async () => {
    const r = await runCli(['info', p('nope.vdimg'), '--json'])
    assert.equal(r.code, 3)
    oneLineError(r.stderr)
    assert.deepEqual(JSON.parse(r.stdout), {error: {code: 'io', message: `${p('nope.vdimg')}: cannot open: no such file or directory`}})
  })

  it('--force replaces an existing output', async () => {
    const r = await runCli(['create', raw, p('f.vdimg')])
    assert.equal(r.code, 0)
    const r2 = await runCli(['create', '--force', '--level', '1', raw, p('f.vdimg')])
    assert.equal(r2.code, 0, r2.stderr)
    assert.deepEqual(leftovers('disk.raw', 'disk.map', 'disk.vdimg', 'f.vdimg').filter((f) => f.startsWith('.')), [])
  })

  it('shows a progress bar (bytes, rate, ETA) on a terminal, and nothing when not a terminal', async () => {
    // A real pseudo-terminal via Python's pty module (argv, no shell).
    const r = await new Promise<{code: number; out: string}>((resolve) => {
      const c = spawn('/usr/bin/python3', ['-c', 'import pty,sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)', process.execPath, BIN, 'create', raw, p('tty.vdimg')])
      let out = ''
      c.stdout.on('data', (b) => (out += b))
      c.on('close', (code) => resolve({code: code ?? -1, out}))
    })
    assert.equal(r.code, 0, r.out)
    assert.match(r.out, /create \[#*\.*\] +\d+\.\d% .*\/s ETA \d+:\d\d/)
    fs.rmSync(p('tty.vdimg'))
    const plain = await runCli(['create', raw, p('plain.vdimg')])
    assert.equal(plain.code, 0)
    assert.equal(plain.stderr, '')
    fs.rmSync(p('plain.vdimg'))
  })

  it('an interrupted create (SIGTERM) leaves neither the output nor a temporary file', async () => {
    const child = spawn(process.execPath, [BIN, 'create', '-', p('int.vdimg')], {stdio: ['pipe', 'ignore', 'pipe']})
    child.stdin.on('error', () => undefined) // EPIPE once the child is gone
    child.stdin.write(textish(3, 8 << 20))
    // Wait until the temporary file exists (the stream is still open, so create is mid-way).
    for (let i = 0; i < 100 && !fs.readdirSync(t.dir).some((f) => f.startsWith('.int.vdimg.')); i++) await new Promise((r) => setTimeout(r, 50))
    assert.ok(fs.readdirSync(t.dir).some((f) => f.startsWith('.int.vdimg.')), 'create had started writing')
    const closed = new Promise<number | null>((r) => child.on('close', (code, sig) => r(code ?? (sig ? 128 : null))))
    child.kill('SIGTERM')
    const code = await closed
    assert.notEqual(code, 0)
    assert.deepEqual(fs.readdirSync(t.dir).filter((f) => f.includes('int.vdimg')), [])
  })
})

import {strict as assert} from 'node:assert'
import {formatMapfile, parseCInteger, parseMapfile} from '../../src/format/mapfile'
import {VdevError} from '../../src/core/errors'

const ranges = (m: ReturnType<typeof parseMapfile>) => [...m.bad]

describe('GNU ddrescue mapfile parser', () => {
  it('reads integers in C syntax: hex, octal, decimal', () => {
    assert.equal(parseCInteger('0x1F'), 31)
    assert.equal(parseCInteger('0X1f'), 31)
    assert.equal(parseCInteger('017'), 15)
    assert.equal(parseCInteger('0'), 0)
    assert.equal(parseCInteger('1234'), 1234)
    assert.equal(parseCInteger('08'), undefined) // not octal
    assert.equal(parseCInteger('0x'), undefined)
    assert.equal(parseCInteger('-1'), undefined)
    assert.equal(parseCInteger('0xFFFFFFFFFFFFFFFF'), undefined) // beyond 2^53
  })

  it('parses comments, trailing comments, a 3-field status line and all five block statuses', () => {
    const m = parseMapfile(
      [
        '# Mapfile. Created by GNU ddrescue version 1.27',
        '# Command line: ddrescue -d /dev/sdb disk.img disk.map',
        '# Start time:   2026-11-01 10:00:00',
        '# current_pos  current_status  current_pass',
        '0x00002000     ?               2   # still running',
        '#      pos        size  status',
        '0x00000000  0x00001000  +',
        '4096        512         ?  # non-tried, decimal',
        '011000      01000       *', // octal: 4608, 512
        '0x1400      0x200       /',
        '0x1600      0x200       -',
        '0x1800      0x800       +',
      ].join('\n'),
      'x.map',
    )
    assert.equal(m.currentPos, 0x2000)
    assert.equal(m.currentStatus, '?')
    assert.equal(m.currentPass, 2)
    assert.equal(m.extent, 0x2000)
    assert.equal(m.tool, 'GNU ddrescue 1.27')
    assert.equal(m.commandLine, 'ddrescue -d /dev/sdb disk.img disk.map')
    assert.equal(m.startTime, '2026-11-01 10:00:00')
    assert.deepEqual(ranges(m), [
      {offset: 4096, length: 512, status: 'non-tried'},
      {offset: 4608, length: 512, status: 'non-trimmed'},
      {offset: 5120, length: 512, status: 'non-scraped'},
      {offset: 5632, length: 512, status: 'bad-sector'},
    ])
  })

  it('accepts the old 2-field status line and a map with a leading gap (non-tried)', () => {
    const m = parseMapfile('0x0 +\n0x200 0x200 +\n0x400 0x200 -\n', 'old.map')
    assert.equal(m.currentPass, undefined)
    assert.deepEqual(ranges(m), [
      {offset: 0, length: 512, status: 'non-tried'},
      {offset: 1024, length: 512, status: 'bad-sector'},
    ])
    assert.equal(m.extent, 1536)
  })

  const bad: Array<[string, string, RegExp]> = [
    ['overlap', '0 +\n0 0x400 +\n0x200 0x400 -\n', /:3: block at 512 overlaps/],
    ['gap', '0 +\n0 0x200 +\n0x400 0x200 -\n', /:3: block at 1024 is not contiguous/],
    ['bad status char', '0 +\n0 0x200 X\n', /:2: bad block status "X"/],
    ['bad number', '0 +\n0 zz +\n', /:2: bad block size "zz"/],
    ['zero size', '0 +\n0 0 +\n', /:2: bad block size "0"/],
    ['too many fields', '0 +\n0 1 + extra\n', /:2: block line needs 3 fields/],
    ['bad status line', '0 + 1 9\n', /:1: status line needs 2 or 3 fields/],
    ['bad current status', '0 Z\n', /:1: bad current_status "Z"/],
    ['no status line', '# only comments\n\n', /no status line/],
  ]
  for (const [what, text, re] of bad)
    it(`rejects ${what} with the line number`, () => {
      assert.throws(
        () => parseMapfile(text, 'm.map'),
        (e: unknown) => e instanceof VdevError && e.code === 'format' && re.test(e.message) && e.message.startsWith('m.map:'),
      )
    })

  it('writes a mapfile that parses back to the same areas', () => {
    const m = parseMapfile('0x800 - 1\n0 0x400 +\n0x400 0x200 -\n0x600 0x200 ?\n0x800 0x1000 +\n', 'a.map')
    const text = formatMapfile(m.bad, 0x1800, {currentPos: 0x800, currentStatus: '-', currentPass: 1})
    const back = parseMapfile(text, 'b.map')
    assert.deepEqual(ranges(back), ranges(m))
    assert.equal(back.extent, 0x1800)
    assert.equal(back.currentPos, 0x800)
    assert.equal(back.currentStatus, '-')
  })
})

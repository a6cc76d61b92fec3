/**
 * The macOS backend's parsers against recorded real outputs of hdiutil (test/fixtures/macos/README.md
 * says where each came from), plus the XML plist parser's own rules.
 */
import * as assert from 'node:assert/strict'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {PlistError, parsePlist, isDict} from '../../backends/macos/nfs/plist'
import {
  ToolOutputError,
  findAttachedImage,
  parseAttachOutput,
  parseHdiutilInfo,
  samePath,
} from '../../backends/macos/nfs/parse'
import {isStillAttached} from '../../backends/macos/nfs'

const FIXTURES = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'macos')
const fixture = (name: string) => fs.readFileSync(path.join(FIXTURES, name), 'utf8')

describe('macOS backend: parsers of recorded hdiutil output', () => {
  it('hdiutil info -plist (macOS 15, three images): paths, types, whole disks and partitions', () => {
    const images = parseHdiutilInfo(fixture('hdiutil-info-macos15.plist'))
    assert.equal(images.length, 3)
    assert.deepEqual(
      images.map((i) => [i.imagePath, i.imageType, i.writeable]),
      [
        ['/Users/someone/build/Other_0.0.0_aarch64.dmg', 'read/write', true],
        ['/private/tmp/brdetect/demo.dmg', 'UDIF read-only compressed (zlib)', false],
        ['/private/tmp/brdetect/work.sparseimage', 'sparse disk image', true],
      ],
    )
    // A plain GPT image with one HFS+ partition.
    assert.equal(images[0].device, '/dev/disk4')
    assert.equal(images[0].rawDevice, '/dev/rdisk4')
    assert.deepEqual(images[0].partitions, ['/dev/disk4s1'])
    // An APFS image: its own disk is disk6, not the synthesized container disk9 listed with it.
    assert.equal(images[1].device, '/dev/disk6')
    assert.deepEqual(images[1].partitions, ['/dev/disk6s1'])
    assert.equal(images[1].entities.length, 4)
    assert.equal(images[1].entities.find((e) => e.mountPoint)?.devEntry, '/dev/disk9s1')
    // Attached with -nomount: five entities, no mount point; disk10 with two slices, container disk11.
    assert.equal(images[2].device, '/dev/disk10')
    assert.deepEqual(images[2].partitions, ['/dev/disk10s1', '/dev/disk10s2'])
    assert.ok(images[2].entities.every((e) => e.mountPoint === undefined))
  })

  it('finds an attached image by its file (also across /private/tmp ≡ /tmp) and device', () => {
    const images = parseHdiutilInfo(fixture('hdiutil-info-macos15.plist'))
    assert.equal(findAttachedImage(images, '/tmp/brdetect/work.sparseimage')?.device, '/dev/disk10')
    assert.equal(findAttachedImage(images, '/private/tmp/brdetect/demo.dmg', '/dev/disk6')?.imageType, 'UDIF read-only compressed (zlib)')
    assert.equal(findAttachedImage(images, '/private/tmp/brdetect/demo.dmg', '/dev/disk9'), undefined)
    assert.equal(findAttachedImage(images, '/private/tmp/brdetect/other.dmg'), undefined)
    assert.equal(isStillAttached({file: '/tmp/brdetect/work.sparseimage', device: '/dev/disk10'}, images), true)
    assert.equal(isStillAttached({file: '/tmp/brdetect/work.sparseimage', device: '/dev/disk12'}, images), false)
    assert.equal(isStillAttached({}, images), false)
    assert.ok(samePath('/private/var/run/x/', '/var/run/x'))
    assert.ok(!samePath('/private/Users/x', '/Users/x'))
  })

  it('hdiutil attach -plist (Apple partition map): the whole disk even though a partition is listed first', () => {
    const d = parseAttachOutput(fixture('hdiutil-attach-apm.plist'))
    assert.equal(d.device, '/dev/disk3')
    assert.equal(d.rawDevice, '/dev/rdisk3')
    assert.deepEqual(d.partitions, ['/dev/disk3s1', '/dev/disk3s2'])
    assert.deepEqual(
      d.entities.map((e) => [e.devEntry, e.contentHint, e.potentiallyMountable]),
      [
        ['/dev/disk3s1', 'Apple_partition_map', false],
        ['/dev/disk3', 'Apple_partition_scheme', false],
        ['/dev/disk3s2', 'Apple_HFS', true],
      ],
    )
    assert.equal(d.entities[2].mountPoint, '/private/tmp/dmg.BhfS2g')
    assert.equal(d.entities[2].volumeKind, 'hfs')
  })

  it('tolerates text around the plist, as hdiutil may print it on stdout', () => {
    const text = 'Checksumming…\nexpected CRC32 $12345678\n' + fixture('hdiutil-attach-apm.plist') + '\nfinished\n'
    assert.equal(parseAttachOutput(text).device, '/dev/disk3')
  })

  it('refuses outputs that are not an attach result, with one clear message', () => {
    assert.throws(() => parseAttachOutput('hdiutil: attach failed - no mountable file systems\n'), PlistError)
    assert.throws(() => parseAttachOutput(fixture('hdiutil-info-macos15.plist')), ToolOutputError) // no system-entities
    assert.throws(
      () => parseAttachOutput('<plist version="1.0"><dict><key>system-entities</key><array/></dict></plist>'),
      /no system entities/,
    )
    assert.throws(() => parseHdiutilInfo('<plist><array/></plist>'), /not a dict/)
  })
})

describe('macOS backend: XML plist parser', () => {
  it('reads every plist type, empty elements, comments, entities and big integers', () => {
    const v = parsePlist(`<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<!-- a comment -->
<dict>
	<key>s</key><string>a &lt;b&gt; &amp; &#233;&#x263A;</string>
	<key>empty</key><string/>
	<key>i</key><integer>-42</integer>
	<key>big</key><integer>18446744073709551615</integer>
	<key>r</key><real>1.5</real>
	<key>t</key><true/>
	<key>f</key><false/>
	<key>d</key><date>2024-01-02T03:04:05Z</date>
	<key>b</key><data>
		aGVs
		bG8=
	</data>
	<key>a</key><array><integer>1</integer><dict/><array/></array>
	<key>__proto__</key><string>not a prototype</string>
</dict>
</plist>`)
    assert.ok(isDict(v))
    assert.equal(v.s, 'a <b> & é☺')
    assert.equal(v.empty, '')
    assert.equal(v.i, -42)
    assert.equal(v.big, 18446744073709551615n)
    assert.equal(v.r, 1.5)
    assert.equal(v.t, true)
    assert.equal(v.f, false)
    assert.equal((v.d as Date).toISOString(), '2024-01-02T03:04:05.000Z')
    assert.equal((v.b as Buffer).toString(), 'hello')
    assert.deepEqual(v.a, [1, {}, []])
    assert.equal(Object.getPrototypeOf(v), null)
    assert.equal(v['__proto__'], 'not a prototype')
  })

  it('names the offset of what is wrong', () => {
    const bad: Array<[string, RegExp]> = [
      ['no plist here', /no <plist> found/],
      ['<plist><dict><key>a</key></dict></plist>', /unexpected <\/dict>/],
      ['<plist><dict><string>x</string></dict></plist>', /expected <key>/],
      ['<plist><dict><key>a</key><string>x</dict></plist>', /missing <\/string>|markup inside/],
      ['<plist><integer>12a</integer></plist>', /bad integer/],
      ['<plist><bogus/></plist>', /unknown element <bogus>/],
      ['<plist><string>a &foo; b</string></plist>', /unknown entity &foo;/],
      ['<plist><string>fish & chips</string></plist>', /stray/],
      ['<plist><array>text<true/></array></plist>', /unexpected text/],
      ['<plist><string>x</string><string>y</string></plist>', /expected <\/plist>/],
      ['<plist><array><true/>', /no <\/plist> found/],
      ['<plist><date>yesterday</date></plist>', /bad date/],
      ['<plist><data>!!</data></plist>', /bad base64/],
    ]
    for (const [text, re] of bad) assert.throws(() => parsePlist(text), re, text)
    assert.throws(() => parsePlist('<plist><dict><key>a</key></dict></plist>'), /at offset \d+/)
  })
})

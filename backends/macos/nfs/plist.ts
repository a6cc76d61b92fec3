/**
 * A small XML property list parser (Apple's PropertyList-1.0 DTD): dict, array, key, string, integer,
 * real, true, false, date, data — enough for what hdiutil and diskutil print with -plist. Pure TypeScript,
 * no dependency. Text before `<plist` and after `</plist>` is ignored (hdiutil can print progress or
 * warnings around the plist on stdout); anything malformed inside is a PlistError naming the offset.
 */

export type PlistValue = string | number | bigint | boolean | Date | Buffer | PlistValue[] | {[key: string]: PlistValue}
export type PlistDict = {[key: string]: PlistValue}

export class PlistError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(`${message} at offset ${offset}`)
    this.name = 'PlistError'
  }
}

/** XML 1.0 §4.6 predefined entities and §4.1 character references; any other "&" is an error. */
function decodeEntities(s: string, at: number): string {
  return s.replace(/&([^;<&\s]*)(;?)/g, (m, e: string, semi: string) => {
    if (!semi) throw new PlistError(`stray "&" or unterminated entity ${m}`, at)
    switch (e) {
      case 'lt':
        return '<'
      case 'gt':
        return '>'
      case 'amp':
        return '&'
      case 'quot':
        return '"'
      case 'apos':
        return "'"
    }
    const code = /^#x[0-9a-fA-F]+$/.test(e) ? parseInt(e.slice(2), 16) : /^#[0-9]+$/.test(e) ? parseInt(e.slice(1), 10) : NaN
    if (!(code >= 0 && code <= 0x10ffff)) throw new PlistError(`unknown entity ${m}`, at)
    return String.fromCodePoint(code)
  })
}

interface Tag {
  name: string
  /** <name/> */
  selfClosing: boolean
  closing: boolean
  start: number
  end: number
}

class Parser {
  private pos: number

  constructor(
    private readonly text: string,
    start: number,
    private readonly limit: number,
  ) {
    this.pos = start
  }

  /** The next tag, skipping whitespace, comments and processing instructions. Text before it must be blank. */
  private nextTag(): Tag {
    for (;;) {
      const lt = this.text.indexOf('<', this.pos)
      if (lt < 0 || lt >= this.limit) throw new PlistError('unexpected end of plist', this.pos)
      if (this.text.slice(this.pos, lt).trim() !== '') throw new PlistError('unexpected text', this.pos)
      if (this.text.startsWith('<!--', lt)) {
        const end = this.text.indexOf('-->', lt + 4)
        if (end < 0) throw new PlistError('unterminated comment', lt)
        this.pos = end + 3
        continue
      }
      if (this.text.startsWith('<?', lt) || this.text.startsWith('<!', lt)) {
        const end = this.text.indexOf('>', lt)
        if (end < 0) throw new PlistError('unterminated declaration', lt)
        this.pos = end + 1
        continue
      }
      const gt = this.text.indexOf('>', lt)
      if (gt < 0 || gt >= this.limit) throw new PlistError('unterminated tag', lt)
      let inner = this.text.slice(lt + 1, gt).trim()
      const closing = inner.startsWith('/')
      const selfClosing = inner.endsWith('/')
      if (closing) inner = inner.slice(1)
      if (selfClosing) inner = inner.slice(0, -1)
      const name = inner.split(/\s/, 1)[0]
      if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(name)) throw new PlistError(`bad tag <${inner}>`, lt)
      this.pos = gt + 1
      return {name, selfClosing, closing, start: lt, end: gt + 1}
    }
  }

  /** Character data up to `</name>`. */
  private textUntilClose(name: string): string {
    const close = `</${name}>`
    const end = this.text.indexOf(close, this.pos)
    if (end < 0 || end >= this.limit) throw new PlistError(`missing ${close}`, this.pos)
    const raw = this.text.slice(this.pos, end)
    if (raw.includes('<')) throw new PlistError(`markup inside <${name}>`, this.pos)
    const at = this.pos
    this.pos = end + close.length
    return decodeEntities(raw, at)
  }

  parseDocument(): PlistValue {
    const open = this.nextTag()
    if (open.name !== 'plist' || open.closing) throw new PlistError('expected <plist>', open.start)
    if (open.selfClosing) throw new PlistError('empty <plist/>', open.start)
    const value = this.parseValue(this.nextTag())
    const close = this.nextTag()
    if (close.name !== 'plist' || !close.closing) throw new PlistError('expected </plist>', close.start)
    return value
  }

  private parseValue(tag: Tag): PlistValue {
    if (tag.closing) throw new PlistError(`unexpected </${tag.name}>`, tag.start)
    switch (tag.name) {
      case 'dict':
        return tag.selfClosing ? {} : this.parseDict()
      case 'array':
        return tag.selfClosing ? [] : this.parseArray()
      case 'true':
      case 'false':
        if (!tag.selfClosing) this.expectClose(tag.name)
        return tag.name === 'true'
      case 'string':
        return tag.selfClosing ? '' : this.textUntilClose('string')
      case 'integer': {
        const t = tag.selfClosing ? '' : this.textUntilClose('integer').trim()
        if (!/^[+-]?(0x[0-9a-fA-F]+|[0-9]+)$/.test(t)) throw new PlistError(`bad integer "${t}"`, tag.start)
        const neg = t.startsWith('-')
        const digits = t.replace(/^[+-]/, '')
        const big = BigInt(digits)
        const v = neg ? -big : big
        return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v
      }
      case 'real': {
        const t = tag.selfClosing ? '' : this.textUntilClose('real').trim()
        const v = Number(t)
        if (t === '' || Number.isNaN(v)) throw new PlistError(`bad real "${t}"`, tag.start)
        return v
      }
      case 'date': {
        const t = tag.selfClosing ? '' : this.textUntilClose('date').trim()
        const d = new Date(t)
        if (Number.isNaN(d.getTime())) throw new PlistError(`bad date "${t}"`, tag.start)
        return d
      }
      case 'data': {
        const t = tag.selfClosing ? '' : this.textUntilClose('data').replace(/\s+/g, '')
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(t)) throw new PlistError('bad base64 in <data>', tag.start)
        return Buffer.from(t, 'base64')
      }
      default:
        throw new PlistError(`unknown element <${tag.name}>`, tag.start)
    }
  }

  private expectClose(name: string): void {
    const t = this.nextTag()
    if (t.name !== name || !t.closing) throw new PlistError(`expected </${name}>`, t.start)
  }

  private parseDict(): PlistDict {
    const out: PlistDict = Object.create(null) as PlistDict
    for (;;) {
      const t = this.nextTag()
      if (t.name === 'dict' && t.closing) return out
      if (t.name !== 'key' || t.closing) throw new PlistError('expected <key> in <dict>', t.start)
      const key = t.selfClosing ? '' : this.textUntilClose('key')
      out[key] = this.parseValue(this.nextTag())
    }
  }

  private parseArray(): PlistValue[] {
    const out: PlistValue[] = []
    for (;;) {
      const t = this.nextTag()
      if (t.name === 'array' && t.closing) return out
      out.push(this.parseValue(t))
    }
  }
}

/** Parse the XML plist found in `text` (surrounding non-plist text is ignored). */
export function parsePlist(text: string): PlistValue {
  const start = text.search(/<(\?xml|!DOCTYPE plist|plist[\s>])/)
  if (start < 0) throw new PlistError('no <plist> found', 0)
  const endTag = text.lastIndexOf('</plist>')
  if (endTag < start) throw new PlistError('no </plist> found', text.length)
  return new Parser(text, start, endTag + '</plist>'.length).parseDocument()
}

export function isDict(v: PlistValue | undefined): v is PlistDict {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date) && !Buffer.isBuffer(v)
}

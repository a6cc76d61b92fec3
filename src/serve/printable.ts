/**
 * Text a client sent (an export name, a mount path), made fit for a log line: quoted, cut to `max`
 * characters, with control, format and line-separator characters, quotes and backslashes escaped
 * (\xNN, \uNNNN). A client can then neither forge log lines, drive the terminal the log goes to, nor
 * fill the log with one 4 KiB name.
 */
export function printable(text: string, max = 64): string {
  let out = ''
  let n = 0
  for (const ch of text) {
    if (n++ === max) return `"${out}"… (${[...text].length} characters)`
    out += /[\p{C}\p{Zl}\p{Zp}"\\]/u.test(ch) ? escape(ch) : ch
  }
  return `"${out}"`
}

function escape(ch: string): string {
  const c = ch.codePointAt(0)!
  if (c < 0x100) return `\\x${c.toString(16).padStart(2, '0')}`
  if (c < 0x10000) return `\\u${c.toString(16).padStart(4, '0')}`
  return `\\u{${c.toString(16)}}`
}

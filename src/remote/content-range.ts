/**
 * The few HTTP header values the remote reader trusts, parsed strictly (RFC 9110): Content-Range of a 206
 * or 416 answer (§14.4) and an entity tag (§8.8.3). Anything else is "not understood", never a guess: a
 * server whose answer cannot be matched to the bytes asked for is treated as a failed read.
 * Fuzzed by fuzz/targets/content-range.ts.
 */

/** Largest byte position accepted: a JavaScript number stays exact up to 2^53. */
const MAX_POS = Number.MAX_SAFE_INTEGER

export interface ContentRange {
  /** First and last byte of the part sent (inclusive), absent in an unsatisfied range ("bytes *\/N"). */
  first?: number
  last?: number
  /** Size of the whole object, when the server says it. */
  complete?: number
}

function decimal(s: string): number | undefined {
  if (!/^[0-9]{1,16}$/.test(s)) return undefined
  const n = Number(s)
  return n <= MAX_POS ? n : undefined
}

/** Parse `bytes FIRST-LAST/COMPLETE`, `bytes FIRST-LAST/*` or `bytes *\/COMPLETE`; undefined when malformed. */
export function parseContentRange(value: string | undefined): ContentRange | undefined {
  if (value === undefined || value.length > 100) return undefined
  const m = /^bytes[ ]+(?:([0-9]+)-([0-9]+)|(\*))\/([0-9]+|\*)$/i.exec(value.trim())
  if (!m) return undefined
  const complete = m[4] === '*' ? undefined : decimal(m[4])
  if (m[4] !== '*' && complete === undefined) return undefined
  if (m[3] === '*') return complete === undefined ? undefined : {complete}
  const first = decimal(m[1])
  const last = decimal(m[2])
  if (first === undefined || last === undefined || last < first) return undefined
  if (complete !== undefined && last >= complete) return undefined
  return {first, last, complete}
}

export interface EntityTag {
  /** The tag as sent, quotes included (what If-Match repeats). */
  value: string
  weak: boolean
}

/** Parse an ETag header value (`"xyz"` or `W/"xyz"`); undefined when absent or malformed. */
export function parseEntityTag(value: string | undefined): EntityTag | undefined {
  if (value === undefined || value.length > 1024) return undefined
  const v = value.trim()
  const m = /^(W\/)?"([\x21\x23-\x7e\x80-\xff]*)"$/.exec(v)
  if (!m) return undefined
  return {value: v, weak: m[1] !== undefined}
}

/**
 * /proc/<pid>/mountinfo, parsed (proc(5)): "id parent major:minor root mountpoint options [optional…] -
 * fstype source superoptions". Reading it never touches the mounted file systems, so it is safe even
 * when a FUSE server is dead or is this very process.
 */
import * as fs from 'node:fs'

export interface MountEntry {
  id: number
  parent: number
  major: number
  minor: number
  root: string
  mountpoint: string
  fstype: string
  source: string
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
export function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = []
  for (const line of text.split('\n')) {
    const f = line.split(' ')
    if (f.length < 10) continue
    const sep = f.indexOf('-', 6)
    if (sep < 0 || sep + 2 >= f.length) continue
    const [major, minor] = f[2].split(':').map(Number)
    out.push({
      id: Number(f[0]),
      parent: Number(f[1]),
      major,
      minor,
      root: unescapeMount(f[3]),
      mountpoint: unescapeMount(f[4]),
      fstype: f[sep + 1],
      source: unescapeMount(f[sep + 2]),
    })
  }
  return out
}

export function readMountinfo(pid: number | 'self' = 'self'): MountEntry[] {
  try {
    return parseMountinfo(fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8'))
  } catch {
    return []
  }
}

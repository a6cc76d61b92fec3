/**
 * A one-line progress bar on stderr: bytes, throughput, ETA. Only on a TTY and never with --json.
 */
export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let u = 0
  let v = n
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[u]}`
}

function hms(s: number): string {
  if (!Number.isFinite(s)) return '--:--'
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const sec = Math.floor(s % 60)
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`
}

export class Progress {
  private readonly start = Date.now()
  private last = 0
  private shown = false

  constructor(
    private readonly label: string,
    private readonly enabled: boolean,
  ) {}

  static for(label: string, json: boolean): Progress {
    return new Progress(label, !json && Boolean(process.stderr.isTTY))
  }

  update(done: number, total: number | undefined): void {
    if (!this.enabled) return
    const now = Date.now()
    if (now - this.last < 100 && done !== total) return
    this.last = now
    const secs = (now - this.start) / 1000
    const rate = secs > 0 ? done / secs : 0
    const width = Math.max(10, Math.min(40, (process.stderr.columns ?? 80) - 60))
    let line: string
    if (total) {
      const frac = Math.min(1, done / total)
      const fillLen = Math.round(frac * width)
      const eta = rate > 0 ? (total - done) / rate : Infinity
      line = `${this.label} [${'#'.repeat(fillLen)}${'.'.repeat(width - fillLen)}] ${(frac * 100).toFixed(1)}% ${humanBytes(done)} ${humanBytes(rate)}/s ETA ${hms(eta)}`
    } else line = `${this.label} ${humanBytes(done)} ${humanBytes(rate)}/s ${hms(secs)}`
    process.stderr.write(`\r${line}\x1b[K`)
    this.shown = true
  }

  done(): void {
    if (this.shown) process.stderr.write('\r\x1b[K')
    this.shown = false
  }
}

const W = 8 << 20, n = 64
for (const kind of ['sab', 'heap']) {
  const t0 = process.hrtime.bigint(); let keep = []
  for (let i = 0; i < n; i++) { const b = kind === 'sab' ? Buffer.from(new SharedArrayBuffer(W)) : Buffer.allocUnsafeSlow(W); b.fill(1); keep.push(b); if (keep.length > 4) keep.shift() }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  console.log(kind, 'alloc+fill', (n * W / 2 ** 20 / ms * 1000).toFixed(0), 'MiB/s')
}
const b = Buffer.allocUnsafeSlow(W); let t0 = process.hrtime.bigint(); for (let i = 0; i < 64; i++) b.fill(i); console.log('fill only', (64 * 8 / (Number(process.hrtime.bigint() - t0) / 1e9)).toFixed(0), 'MiB/s')

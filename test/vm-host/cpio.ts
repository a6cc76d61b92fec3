/**
 * A minimal writer of the "newc" cpio format the kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII header of 13 eight-digit hex
 * fields after the magic "070701", the NUL-terminated name, then the data; name and data each padded to 4 bytes.
 */
export interface CpioEntry {
  name: string
  /** Full st_mode: 0o40755 for a directory, 0o100644 for a file, 0o120777 for a symlink (data = target). */
  mode: number
  data?: Buffer
}

const hex8 = (n: number): string => n.toString(16).padStart(8, '0')
const pad4 = (n: number): number => (4 - (n % 4)) % 4

export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = []
  const push = (ino: number, e: CpioEntry): void => {
    const data = e.data ?? Buffer.alloc(0)
    const name = Buffer.from(`${e.name}\0`)
    const fields = [ino, e.mode, 0, 0, (e.mode & 0o170000) === 0o40000 ? 2 : 1, 0, data.length, 0, 0, 0, 0, name.length, 0]
    const header = Buffer.from('070701' + fields.map(hex8).join(''), 'latin1')
    parts.push(header, name, Buffer.alloc(pad4(header.length + name.length)), data, Buffer.alloc(pad4(data.length)))
  }
  entries.forEach((e, i) => push(i + 1, e))
  push(0, {name: 'TRAILER!!!', mode: 0})
  return Buffer.concat(parts)
}

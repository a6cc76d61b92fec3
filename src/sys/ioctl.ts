/**
 * Linux ioctl request numbers, encoded as include/uapi/asm-generic/ioctl.h does (the layout x86-64 and
 * arm64 use): dir<<30 | size<<16 | type<<8 | nr. Pure arithmetic, no FFI, so interface files that use it
 * load (and their tests run) on any OS. Checked against the kernel headers in test/sys/ioctl.test.ts.
 */

/** _IOC_NONE, _IOC_WRITE, _IOC_READ: the direction, as seen from userspace. */
export const IOC_NONE = 0
export const IOC_WRITE = 1
export const IOC_READ = 2

/** _IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS, _IOC_DIRBITS */
const NR_BITS = 8
const TYPE_BITS = 8
const SIZE_BITS = 14
const DIR_BITS = 2

function field(name: string, value: number, bits: number): number {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) throw new RangeError(`ioctl ${name} ${value} does not fit in ${bits} bits`)
  return value
}

/** _IOC(dir, type, nr, size) */
export function IOC(dir: number, type: number, nr: number, size: number): number {
  field('dir', dir, DIR_BITS)
  field('type', type, TYPE_BITS)
  field('nr', nr, NR_BITS)
  field('size', size, SIZE_BITS)
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0
}

/** _IO(type, nr): no argument data. */
export const IO = (type: number, nr: number): number => IOC(IOC_NONE, type, nr, 0)
/** _IOR(type, nr, sizeof(arg)): the kernel writes the argument. */
export const IOR = (type: number, nr: number, size: number): number => IOC(IOC_READ, type, nr, size)
/** _IOW(type, nr, sizeof(arg)): the kernel reads the argument. */
export const IOW = (type: number, nr: number, size: number): number => IOC(IOC_WRITE, type, nr, size)
/** _IOWR(type, nr, sizeof(arg)) */
export const IOWR = (type: number, nr: number, size: number): number => IOC(IOC_READ | IOC_WRITE, type, nr, size)

/** _IOC_NR(request) */
export const iocNr = (request: number): number => request & (2 ** NR_BITS - 1)

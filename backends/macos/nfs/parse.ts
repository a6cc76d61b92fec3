/**
 * Parsers for what hdiutil and diskutil print with -plist / --plist:
 *  - `hdiutil attach -plist` and `diskutil image attach --plist`: a dict whose `system-entities` array has
 *    one dict per device node (`dev-entry`, `content-hint`, optionally `mount-point` …);
 *  - `hdiutil info -plist`: a dict whose `images` array has one dict per attached image (`image-path`,
 *    `system-entities` …; the key is absent when nothing is attached).
 * The entities are not ordered (a partition may come before its whole disk), an APFS image adds a
 * synthesized container disk of its own, and dev-entry is read with or without its "/dev/" prefix.
 */
import {isDict, parsePlist, type PlistDict, type PlistValue} from './plist'
import {rawDeviceOf} from './commands'

export interface SystemEntity {
  devEntry: string
  contentHint?: string
  mountPoint?: string
  volumeKind?: string
  potentiallyMountable?: boolean
}

export interface AttachedDisk {
  /** The image's whole disk, e.g. /dev/disk4. */
  device: string
  /** Its raw node, e.g. /dev/rdisk4. */
  rawDevice: string
  /** Partitions of that disk in slice order, e.g. /dev/disk4s1. */
  partitions: string[]
  /** Every entity as reported (including synthesized APFS containers and their volumes). */
  entities: SystemEntity[]
}

export interface InfoImage extends Partial<AttachedDisk> {
  imagePath: string
  imageType?: string
  writeable?: boolean
  entities: SystemEntity[]
}

/** A plist that is not what the tool should have printed. */
export class ToolOutputError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ToolOutputError'
  }
}

/**
 * Content hints of the disks the APFS driver synthesizes for a container (not the image's own disk):
 * the APFS container partition-type GUID as hdiutil reports it, and diskutil's name for it.
 */
const SYNTHESIZED_CONTAINER_HINTS = new Set(['EF57347C-0000-11AA-AA11-00306543ECAC', 'Apple_APFS_Container'])

const WHOLE = /^\/dev\/disk(\d+)$/
const SLICE = /^\/dev\/disk(\d+)s(\d+)$/

function str(d: PlistDict, k: string): string | undefined {
  const v = d[k]
  return typeof v === 'string' ? v : undefined
}

function bool(d: PlistDict, k: string): boolean | undefined {
  const v = d[k]
  return typeof v === 'boolean' ? v : typeof v === 'number' ? v !== 0 : undefined
}

function normalizeDev(dev: string): string {
  return dev.startsWith('/dev/') ? dev : `/dev/${dev}`
}

function readEntities(v: PlistValue | undefined, where: string): SystemEntity[] {
  if (v === undefined) return []
  if (!Array.isArray(v)) throw new ToolOutputError(`${where}: system-entities is not an array`)
  const out: SystemEntity[] = []
  for (const e of v) {
    if (!isDict(e)) throw new ToolOutputError(`${where}: a system entity is not a dict`)
    const dev = str(e, 'dev-entry')
    if (!dev) continue // entities without a device node (some tools list a bare mount point) are not disks
    out.push({
      devEntry: normalizeDev(dev),
      contentHint: str(e, 'content-hint'),
      mountPoint: str(e, 'mount-point'),
      volumeKind: str(e, 'volume-kind'),
      potentiallyMountable: bool(e, 'potentially-mountable'),
    })
  }
  return out
}

/** Choose the image's own whole disk among the entities, and its partitions. */
export function diskOf(entities: SystemEntity[], where: string): AttachedDisk {
  const wholes = entities.filter((e) => WHOLE.test(e.devEntry))
  const own = wholes.find((e) => !SYNTHESIZED_CONTAINER_HINTS.has(e.contentHint ?? '')) ?? wholes[0]
  let device = own?.devEntry
  if (!device) {
    // Only slices reported: their whole disk is implied by the name.
    const s = entities.map((e) => SLICE.exec(e.devEntry)).find((m) => m)
    if (!s) throw new ToolOutputError(`${where}: no /dev/diskN among the system entities`)
    device = `/dev/disk${s[1]}`
  }
  const n = WHOLE.exec(device)![1]
  const partitions = entities
    .map((e) => SLICE.exec(e.devEntry))
    .filter((m): m is RegExpExecArray => m !== null && m[1] === n)
    .sort((a, b) => Number(a[2]) - Number(b[2]))
    .map((m) => m[0])
  return {device, rawDevice: rawDeviceOf(device), partitions: [...new Set(partitions)], entities}
}

/** `hdiutil attach -plist …` or `diskutil image attach --plist …` stdout → the attached disk. */
export function parseAttachOutput(stdout: string): AttachedDisk {
  const root = parsePlist(stdout)
  if (!isDict(root)) throw new ToolOutputError('attach output: the plist is not a dict')
  const entities = readEntities(root['system-entities'], 'attach output')
  if (entities.length === 0) throw new ToolOutputError('attach output: no system entities with a device')
  return diskOf(entities, 'attach output')
}

/** `hdiutil info -plist` stdout → every attached image. */
export function parseHdiutilInfo(stdout: string): InfoImage[] {
  const root = parsePlist(stdout)
  if (!isDict(root)) throw new ToolOutputError('hdiutil info: the plist is not a dict')
  const images = root['images']
  if (images === undefined) return []
  if (!Array.isArray(images)) throw new ToolOutputError('hdiutil info: images is not an array')
  return images.map((img, i) => {
    if (!isDict(img)) throw new ToolOutputError(`hdiutil info: image ${i} is not a dict`)
    const imagePath = str(img, 'image-path')
    if (!imagePath) throw new ToolOutputError(`hdiutil info: image ${i} has no image-path`)
    const entities = readEntities(img['system-entities'], `hdiutil info image ${i}`)
    const disk = entities.length > 0 ? diskOf(entities, `hdiutil info image ${i}`) : {}
    return {...disk, imagePath, imageType: str(img, 'image-type'), writeable: bool(img, 'writeable'), entities}
  })
}

/** /private/var/x and /var/x (and /private/tmp, /tmp) name the same file on macOS. */
export function samePath(a: string, b: string): boolean {
  const norm = (p: string) => p.replace(/\/+$/, '').replace(/^\/private(?=\/(var|tmp|etc)\/)/, '')
  return norm(a) === norm(b)
}

/**
 * For `vdev list`: is the disk a registry entry recorded still attached, from the file the entry served?
 * Returns the matching image, or undefined (the registry is stale for this entry).
 */
export function findAttachedImage(images: InfoImage[], file: string, device?: string): InfoImage | undefined {
  return images.find((img) => samePath(img.imagePath, file) && (device === undefined || img.device === device))
}

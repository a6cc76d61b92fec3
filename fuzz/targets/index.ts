/** Every fuzz target, by name (the order `npm run fuzz` runs them in). */
import type {Target} from '../harness'
import {fuseTarget} from './fuse'
import {httpTarget} from './http'
import {imageTarget} from './image'
import {iscsiTarget} from './iscsi'
import {mapfileTarget} from './mapfile'
import {nbdTarget} from './nbd'
import {nfsTarget} from './nfs'
import {overlayTarget} from './overlay'
import {recoveryTarget} from './recovery'

export const TARGETS: Record<string, Target> = {
  image: imageTarget,
  mapfile: mapfileTarget,
  nbd: nbdTarget,
  nfs: nfsTarget,
  iscsi: iscsiTarget,
  fuse: fuseTarget,
  overlay: overlayTarget,
  http: httpTarget,
  recovery: recoveryTarget,
}

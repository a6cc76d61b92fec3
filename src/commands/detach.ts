import {Args, Flags} from '@oclif/core'
import {VdevCommand} from '../cli/base'
import {VdevError} from '../core/errors'
import {detachEntry, findTarget, type DetachResult} from '../lifecycle/detach'
import {readEntries} from '../lifecycle/registry'

export default class Detach extends VdevCommand {
  static override summary = 'Detach an attached device (by device path, id or image path)'
  static override description = `Asks the device's server to stop: it releases the device, finishes the reads in flight and exits. A device that is mounted or open (also through a partition) is refused unless --force. With --force a busy device is detached anyway (its users get I/O errors; the kernel frees it on their last close), and a server that does not stop within --timeout is killed. A device whose server is dead is cleaned up.`
  static override examples = [
    '<%= config.bin %> detach /dev/loop3',
    '<%= config.bin %> detach vdev0',
    '<%= config.bin %> detach disk.vdimg',
    '<%= config.bin %> detach --all',
    '<%= config.bin %> detach vdev0 --force   # also when mounted, or after the server was killed',
  ]
  static override args = {target: Args.string({description: 'device path (/dev/loop3), id (vdev0) or image path'})}
  static override flags = {
    all: Flags.boolean({description: 'detach every attached device'}),
    force: Flags.boolean({char: 'f', description: 'detach even if mounted or open; kill a server that does not stop'}),
    timeout: Flags.integer({description: 'seconds to wait for a server to stop', default: 30, min: 1}),
  }

  async run(): Promise<{detached: DetachResult[]}> {
    const {args, flags} = await this.parse(Detach)
    if (Boolean(flags.all) === (args.target !== undefined)) throw new VdevError('usage', 'give either a TARGET or --all')
    const targets = flags.all ? readEntries() : [findTarget(args.target!)]
    const detached: DetachResult[] = []
    const failures: VdevError[] = []
    for (const e of targets) {
      try {
        // Quiet like losetup -d; with --force, say what had to be done.
        const log = flags.force && !this.jsonEnabled() ? (l: string) => process.stderr.write(`vdev: ${l}\n`) : undefined
        detached.push(await detachEntry(e, {force: flags.force, timeoutMs: flags.timeout * 1000, log}))
      } catch (err) {
        if (!(err instanceof VdevError) || targets.length === 1) throw err
        process.stderr.write(`vdev: ${err.message}\n`)
        failures.push(err)
      }
    }
    if (failures.length > 0) throw new VdevError(failures[0].code, `${failures.length} of ${targets.length} devices could not be detached`)
    return {detached}
  }
}

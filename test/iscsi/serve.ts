/** `vdev serve --protocol iscsi --json` as a child process, resolved once its ready line is printed. */
import * as path from 'node:path'
import {spawn, type ChildProcess} from 'node:child_process'

const ROOT = path.resolve(__dirname, '..', '..', '..')
const BIN = path.join(ROOT, 'bin', 'run.js')

export interface Served {
  child: ChildProcess
  ready: {protocol: string; listen: string; target: string; lun: number; uri: string}
  stderr: () => string
  exited: Promise<number | null>
}

export function serveIscsi(args: string[]): Promise<Served> {
  const child = spawn(process.execPath, [BIN, 'serve', '--protocol', 'iscsi', '--json', ...args], {stdio: ['ignore', 'pipe', 'pipe']})
  let out = ''
  let err = ''
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line within 20 s: ${err}`)), 20_000)
    child.stderr!.on('data', (d) => (err += d))
    child.stdout!.on('data', (d) => {
      out += d
      const nl = out.indexOf('\n')
      if (nl >= 0) {
        clearTimeout(timer)
        resolve({child, ready: JSON.parse(out.slice(0, nl)), stderr: () => err, exited})
      }
    })
    void exited.then((code) => {
      clearTimeout(timer)
      reject(new Error(`vdev serve exited (${code}) before it was ready: ${err}`))
    })
  })
}


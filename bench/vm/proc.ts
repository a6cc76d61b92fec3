/**
 * Spawning tools from in-VM benchmark scripts: always asynchronous (argv, no shell), because the device
 * or mount being measured may be served by this very process, whose event loop must keep running.
 */
import {spawn} from 'node:child_process'

export function run(cmd: string, args: string[]): Promise<{code: number | null; stdout: string; stderr: string}> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, {stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (b) => (stdout += b))
    c.stderr.on('data', (b) => (stderr += b))
    c.on('error', reject)
    c.on('close', (code) => resolve({code, stdout, stderr}))
  })
}

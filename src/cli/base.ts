/**
 * The base of every vdev command: JSON output through oclif's --json flag, errors left to main.ts so
 * that they all look the same. Commands stay thin: parse, call the core, format.
 */
import {Command} from '@oclif/core'

export abstract class VdevCommand extends Command {
  static override enableJsonFlag = true

  /** Let errors propagate to main.ts, which prints one line and sets the exit code. */
  protected override async catch(err: Error & {exitCode?: number}): Promise<unknown> {
    throw err
  }

  /** Damage the command works around (a non-critical section): one line each on stderr, in any mode. */
  protected warnAll(lines: readonly string[]): void {
    for (const l of lines) process.stderr.write(`vdev: warning: ${l}\n`)
  }

  /** Human output goes to stdout only when not in --json mode. */
  protected say(line = ''): void {
    if (!this.jsonEnabled()) process.stdout.write(line + '\n')
  }
}

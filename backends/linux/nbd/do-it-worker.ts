/**
 * The thread that owns the /dev/nbdN file descriptor: it configures the device (block size, size, timeout,
 * flags, socket) and then sits in NBD_DO_IT, which blocks until the connection ends. The kernel ties the
 * socket to the task that set it up, so every configuring ioctl is made here, by this one thread.
 * Messages to the parent: {type:'ready', device, fd} once NBD_SET_SOCK succeeded (NBD_DO_IT follows at once),
 * {type:'error', message, errno}, {type:'done', rc} when NBD_DO_IT returns (rc = -errno or 0).
 */
import * as fs from 'node:fs'
import {parentPort, workerData} from 'node:worker_threads'
import * as libc from '../../../src/sys/libc'
import * as U from './abi'

export interface DoItWorkerData {
  /** Free-looking devices to try, in order (/dev/nbdN). */
  candidates: string[]
  /** The kernel's end of the socketpair. */
  sockFd: number
  blockSize: number
  size: number
  flags: number
  timeout: number
}

const data = workerData as DoItWorkerData
const port = parentPort!

function configure(fd: number): {call: string; rc: number} | undefined {
  const steps: Array<[string, number, number | bigint]> = [
    ['NBD_SET_BLKSIZE', U.NBD_SET_BLKSIZE, data.blockSize],
    ['NBD_SET_SIZE', U.NBD_SET_SIZE, BigInt(data.size)],
    ['NBD_SET_TIMEOUT', U.NBD_SET_TIMEOUT, data.timeout],
    ['NBD_SET_FLAGS', U.NBD_SET_FLAGS, data.flags],
    ['NBD_SET_SOCK', U.NBD_SET_SOCK, data.sockFd],
  ]
  for (const [call, req, arg] of steps) {
    const rc = libc.tryIoctl(fd, req, arg)
    if (rc < 0) return {call, rc}
  }
  return undefined
}

let lastError = 'no nbd device to try'
let lastErrno = 0
for (const device of data.candidates) {
  let fd: number
  try {
    fd = fs.openSync(device, fs.constants.O_RDWR)
  } catch (err) {
    lastError = `${device}: ${(err as Error).message}`
    continue
  }
  const failed = configure(fd)
  if (failed) {
    // EBUSY: another task is setting this device up (or it is connected); try the next one.
    libc.tryIoctl(fd, U.NBD_CLEAR_SOCK, 0)
    fs.closeSync(fd)
    lastErrno = -failed.rc
    lastError = `${device}: ${failed.call} failed (errno ${-failed.rc})`
    continue
  }
  port.postMessage({type: 'ready', device, fd})
  const rc = libc.tryIoctl(fd, U.NBD_DO_IT, 0)
  port.postMessage({type: 'done', rc})
  // What nbd-client does after NBD_DO_IT; the last close of the device releases its configuration.
  libc.tryIoctl(fd, U.NBD_CLEAR_QUE, 0)
  libc.tryIoctl(fd, U.NBD_CLEAR_SOCK, 0)
  fs.closeSync(fd)
  process.exit(0)
}
port.postMessage({type: 'error', message: lastError, errno: lastErrno})

/** Loop devices (loop(4)) for any backend that has a file to expose as a block device. */
export * from './device'

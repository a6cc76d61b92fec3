/**
 * What is left of a gather list after writev(2) wrote `n` of its bytes (a partial write: a signal, a full
 * pipe or socket buffer): the buffers not yet written, the first one cut where the write stopped. The
 * callers loop until nothing is left — the overlay log's positional appends (src/layers/overlay-log.ts)
 * and the NBD serving threads' replies (src/serve/nbd/thread.ts).
 */
export function afterWritten(bufs: readonly Buffer[], n: number): Buffer[] {
  const rest: Buffer[] = []
  let skip = n
  for (const b of bufs) {
    if (skip >= b.length) skip -= b.length
    else {
      rest.push(skip > 0 ? b.subarray(skip) : b)
      skip = 0
    }
  }
  return rest
}

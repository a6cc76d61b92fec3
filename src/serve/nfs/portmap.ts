/**
 * The portmapper, program 100000 version 2 (RFC 1833 §3), answered on the NFS port itself so that a client
 * which asks "where is MOUNT / NFS?" there is told "right here". We never register other services:
 * SET and UNSET answer false; CALLIT is not offered.
 */
import {PROC_UNAVAIL, type CallContext, type ProcOutcome, type RpcCall, type RpcProgram} from './rpc'
import {XdrWriter} from './xdr'

/** RFC 1833 §3: PMAP_PROG, version 2. */
export const PMAP_PROG = 100000
export const PMAP_VERS = 2

/** RFC 1833 §3 procedures. */
export const PmapProc = {NULL: 0, SET: 1, UNSET: 2, GETPORT: 3, DUMP: 4, CALLIT: 5} as const

/** RFC 1833 §3: IPPROTO_TCP and IPPROTO_UDP. */
export const IPPROTO_TCP = 6
export const IPPROTO_UDP = 17

export interface Mapping {
  prog: number
  vers: number
  prot: number
  port: number
}

export class PortmapProgram implements RpcProgram {
  readonly prog = PMAP_PROG
  readonly name = 'portmap'
  readonly low = PMAP_VERS
  readonly high = PMAP_VERS

  /** `mappings()` is read at call time: the port is known only once the server listens. */
  constructor(private readonly mappings: () => Mapping[]) {}

  dispatch(call: RpcCall, _ctx: CallContext): ProcOutcome {
    const a = call.args
    switch (call.proc) {
      case PmapProc.NULL:
        return new XdrWriter()
      case PmapProc.SET:
      case PmapProc.UNSET: {
        // mapping args decoded so that garbage is still GARBAGE_ARGS; registration is refused.
        a.uint32('prog')
        a.uint32('vers')
        a.uint32('prot')
        a.uint32('port')
        return new XdrWriter().bool(false)
      }
      case PmapProc.GETPORT: {
        const prog = a.uint32('prog')
        const vers = a.uint32('vers')
        const prot = a.uint32('prot')
        a.uint32('port')
        const m = this.mappings().find((x) => x.prog === prog && x.vers === vers && x.prot === prot)
        return new XdrWriter().uint32(m ? m.port : 0) // 0: "not registered" (RFC 1833 §3)
      }
      case PmapProc.DUMP: {
        const w = new XdrWriter()
        for (const m of this.mappings()) w.bool(true).uint32(m.prog).uint32(m.vers).uint32(m.prot).uint32(m.port)
        return w.bool(false)
      }
      default:
        return PROC_UNAVAIL
    }
  }
}

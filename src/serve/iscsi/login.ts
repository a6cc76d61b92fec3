/**
 * The login phase of one connection (RFC 7143 §6.3, §13): the security stage (AuthMethod None or CHAP,
 * §12.1.3 and RFC 1994), the operational stage's key negotiation, and the stage transitions, for both
 * starts initiators use: CSG=0 (Windows, iscsid with or without CHAP) and CSG=1 (Linux's iscsistart,
 * libiscsi without a password). What the target offers is fixed: ImmediateData=No, InitialR2T=Yes,
 * MaxConnections=1, ErrorRecoveryLevel=0, digests None or CRC32C, TargetPortalGroupTag=1.
 * Login requests spanning PDUs (C bit) are gathered before they are answered.
 */
import * as crypto from 'node:crypto'
import {LOGIN_STATUS, STAGE_FULL_FEATURE, STAGE_OPERATIONAL, STAGE_SECURITY} from './pdu'
import {printable} from '../printable'

/** The one target portal group (RFC 7143 §13.9); open-iscsi's `iscsistart -g 1` and UEFI clients expect it. */
export const PORTAL_GROUP_TAG = 1

/** What this target declares it can receive in one PDU (MaxRecvDataSegmentLength, §13.12). */
export const TARGET_MAX_RECV_DATA_SEGMENT = 262144
/** The largest burst the target accepts (MaxBurstLength, §13.13: min(offer, this)). */
export const TARGET_MAX_BURST = 16776192

export interface ChapConfig {
  user: string
  secret: Buffer
}

export interface TargetConfig {
  iqn: string
  alias?: string
  /** When set, every login must authenticate with CHAP as this user. */
  chap?: ChapConfig
}

/** What the login settled for the session and connection. */
export interface Negotiated {
  sessionType: 'Normal' | 'Discovery'
  initiatorName: string
  initiatorAlias?: string
  targetName?: string
  headerDigest: boolean
  dataDigest: boolean
  /** The initiator's MaxRecvDataSegmentLength: the largest data segment we may send it. */
  initiatorMaxRecv: number
  maxBurstLength: number
  firstBurstLength: number
  immediateData: boolean
  initialR2T: boolean
}

export interface LoginStep {
  /** The request's stage fields. */
  csg: number
  nsg: number
  transit: boolean
  /** Its key=value pairs (a request spanning PDUs: all of them). */
  keys: Array<[string, string]>
  /** First request of the connection. */
  first: boolean
}

export interface LoginAnswer {
  status: number
  keys: Array<[string, string]>
  transit: boolean
  csg: number
  nsg: number
  /** A one-line reason for the log when the login fails. */
  reason?: string
}

export class LoginFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

type ChapState = {phase: 'none'} | {phase: 'offered'} | {phase: 'challenged'; id: number; challenge: Buffer} | {phase: 'done'}

export class LoginNegotiation {
  readonly result: Negotiated = {
    sessionType: 'Normal',
    initiatorName: '',
    headerDigest: false,
    dataDigest: false,
    initiatorMaxRecv: 8192, // default until declared (§13.12)
    maxBurstLength: 262144,
    firstBurstLength: 65536,
    immediateData: false,
    initialR2T: true,
  }
  private authMethod: 'None' | 'CHAP' | undefined
  private chap: ChapState = {phase: 'none'}
  private declaredMaxRecv = false
  private sentGroupTag = false
  private stage = -1

  constructor(private readonly config: TargetConfig) {}

  get authenticated(): boolean {
    return !this.config.chap || this.chap.phase === 'done'
  }

  /** Answer one login request (throws LoginFailure to end the login with that status). */
  step(req: LoginStep): LoginAnswer {
    if (req.csg === 2 || req.csg > STAGE_FULL_FEATURE) throw new LoginFailure(LOGIN_STATUS.initiatorError, `invalid current stage ${req.csg}`)
    if (req.transit && (req.nsg <= req.csg || req.nsg === 2)) throw new LoginFailure(LOGIN_STATUS.initiatorError, `invalid transition ${req.csg}→${req.nsg}`)
    if (this.stage >= 0 && req.csg < this.stage) throw new LoginFailure(LOGIN_STATUS.initiatorError, `stage went back from ${this.stage} to ${req.csg}`)
    this.stage = req.csg
    const out: Array<[string, string]> = []
    const seen = new Set<string>()
    for (const [key, value] of req.keys) {
      if (seen.has(key)) throw new LoginFailure(LOGIN_STATUS.initiatorError, `key ${key} sent twice`)
      seen.add(key)
      this.key(key, value, req, out)
    }
    if (req.first) {
      if (!this.result.initiatorName) throw new LoginFailure(LOGIN_STATUS.missingParameter, 'the first login request has no InitiatorName')
      if (this.result.sessionType === 'Normal') {
        if (!this.result.targetName) throw new LoginFailure(LOGIN_STATUS.missingParameter, 'a normal session needs TargetName')
        if (this.result.targetName !== this.config.iqn) throw new LoginFailure(LOGIN_STATUS.notFound, `no target named ${printable(this.result.targetName)}`)
      }
    }
    if (this.result.sessionType === 'Normal' && !this.sentGroupTag) {
      out.push(['TargetPortalGroupTag', String(PORTAL_GROUP_TAG)])
      this.sentGroupTag = true
    }

    let transit = req.transit
    if (req.csg === STAGE_SECURITY) {
      if (this.authMethod === undefined && this.config.chap && transit)
        throw new LoginFailure(LOGIN_STATUS.authFailure, 'this target requires CHAP, and the initiator offered no AuthMethod')
      // Stay in the security stage until CHAP is finished.
      if (this.authMethod === 'CHAP' && this.chap.phase !== 'done') transit = false
    } else if (!this.authenticated) {
      throw new LoginFailure(LOGIN_STATUS.authFailure, 'this target requires CHAP authentication (start the login in the security stage)')
    }
    // Our MaxRecvDataSegmentLength is declared once we are past security (or leaving it for full feature).
    if (!this.declaredMaxRecv && (req.csg === STAGE_OPERATIONAL || (transit && req.nsg === STAGE_FULL_FEATURE))) {
      out.push(['MaxRecvDataSegmentLength', String(TARGET_MAX_RECV_DATA_SEGMENT)])
      this.declaredMaxRecv = true
    }
    return {status: LOGIN_STATUS.success, keys: out, transit, csg: req.csg, nsg: transit ? req.nsg : 0}
  }

  private key(key: string, value: string, req: LoginStep, out: Array<[string, string]>): void {
    const r = this.result
    const num = (min: number, max: number): number => {
      if (!/^\d+$/.test(value)) throw new LoginFailure(LOGIN_STATUS.initiatorError, `${key}=${printable(value, 20)} is not a number`)
      const n = Number(value)
      if (n < min || n > max) throw new LoginFailure(LOGIN_STATUS.initiatorError, `${key}=${n} is out of range ${min}..${max}`)
      return n
    }
    const bool = (): boolean => {
      if (value !== 'Yes' && value !== 'No') throw new LoginFailure(LOGIN_STATUS.initiatorError, `${key}=${printable(value, 20)} is not Yes or No`)
      return value === 'Yes'
    }
    switch (key) {
      // ---- declarations ----
      case 'InitiatorName':
        if (!value) throw new LoginFailure(LOGIN_STATUS.initiatorError, 'empty InitiatorName')
        r.initiatorName = value
        return
      case 'InitiatorAlias':
        r.initiatorAlias = value
        return
      case 'TargetName':
        r.targetName = value
        return
      case 'SessionType':
        if (value !== 'Normal' && value !== 'Discovery') throw new LoginFailure(LOGIN_STATUS.sessionTypeUnsupported, `SessionType=${printable(value, 20)}`)
        if (!req.first) throw new LoginFailure(LOGIN_STATUS.initiatorError, 'SessionType after the first login request')
        r.sessionType = value
        return
      case 'MaxRecvDataSegmentLength':
        r.initiatorMaxRecv = num(512, 16777215)
        return
      // ---- security ----
      case 'AuthMethod': {
        if (req.csg !== STAGE_SECURITY) throw new LoginFailure(LOGIN_STATUS.initiatorError, 'AuthMethod outside the security stage')
        const offered = value.split(',')
        const want = this.config.chap ? 'CHAP' : 'None'
        if (!offered.includes(want)) {
          out.push([key, 'Reject'])
          throw new LoginFailure(LOGIN_STATUS.authFailure, `the initiator offered AuthMethod=${printable(value, 40)}, the target requires ${want}`)
        }
        this.authMethod = want
        if (want === 'CHAP') this.chap = {phase: 'offered'}
        out.push([key, want])
        return
      }
      case 'CHAP_A': {
        if (this.chap.phase !== 'offered') throw new LoginFailure(LOGIN_STATUS.initiatorError, 'CHAP_A out of order')
        if (!value.split(',').includes('5')) {
          out.push([key, 'Reject'])
          throw new LoginFailure(LOGIN_STATUS.authFailure, `CHAP_A=${printable(value, 20)}: only MD5 (5) is supported`)
        }
        const id = crypto.randomInt(256)
        const challenge = crypto.randomBytes(16)
        this.chap = {phase: 'challenged', id, challenge}
        out.push(['CHAP_A', '5'], ['CHAP_I', String(id)], ['CHAP_C', '0x' + challenge.toString('hex')])
        return
      }
      case 'CHAP_N':
      case 'CHAP_R':
        if (this.chap.phase !== 'challenged') throw new LoginFailure(LOGIN_STATUS.initiatorError, `${key} out of order`)
        if (key === 'CHAP_N') this.chapUser = value
        else this.chapResponse = value
        if (this.chapUser !== undefined && this.chapResponse !== undefined) this.checkChap()
        return
      case 'CHAP_I':
      case 'CHAP_C':
        // Mutual CHAP: the target has no secret of its own to answer with.
        throw new LoginFailure(LOGIN_STATUS.authFailure, 'mutual CHAP is not supported')
      // ---- operational ----
      case 'HeaderDigest':
      case 'DataDigest': {
        const pick = value.split(',').find((v) => v === 'None' || v === 'CRC32C')
        out.push([key, pick ?? 'Reject'])
        if (!pick) throw new LoginFailure(LOGIN_STATUS.initiatorError, `${key}=${printable(value, 40)}: only None and CRC32C`)
        if (key === 'HeaderDigest') r.headerDigest = pick === 'CRC32C'
        else r.dataDigest = pick === 'CRC32C'
        return
      }
      case 'MaxConnections':
        num(1, 65535)
        out.push([key, '1'])
        return
      case 'InitialR2T':
        bool()
        r.initialR2T = true
        out.push([key, 'Yes'])
        return
      case 'ImmediateData':
        bool()
        r.immediateData = false
        out.push([key, 'No'])
        return
      case 'MaxBurstLength':
        r.maxBurstLength = Math.min(num(512, 16777215), TARGET_MAX_BURST)
        out.push([key, String(r.maxBurstLength)])
        return
      case 'FirstBurstLength':
        r.firstBurstLength = Math.min(num(512, 16777215), TARGET_MAX_BURST)
        out.push([key, String(r.firstBurstLength)])
        return
      case 'DefaultTime2Wait':
        out.push([key, String(Math.max(num(0, 3600), 2))])
        return
      case 'DefaultTime2Retain':
        num(0, 3600)
        out.push([key, '0'])
        return
      case 'MaxOutstandingR2T':
        num(1, 65535)
        out.push([key, '1'])
        return
      case 'DataPDUInOrder':
      case 'DataSequenceInOrder':
        bool()
        out.push([key, 'Yes'])
        return
      case 'ErrorRecoveryLevel':
        num(0, 2)
        out.push([key, '0'])
        return
      case 'OFMarker':
      case 'IFMarker':
        out.push([key, 'No'])
        return
      case 'OFMarkInt':
      case 'IFMarkInt':
      case 'SendTargets':
      case 'TargetAddress':
      case 'TargetPortalGroupTag':
      case 'TargetAlias':
        out.push([key, 'Irrelevant'])
        return
      default:
        out.push([key, 'NotUnderstood'])
    }
  }

  private chapUser: string | undefined
  private chapResponse: string | undefined

  private checkChap(): void {
    const chap = this.config.chap!
    const state = this.chap as {phase: 'challenged'; id: number; challenge: Buffer}
    const got = decodeBinary(this.chapResponse!)
    const want = crypto.createHash('md5').update(Buffer.from([state.id])).update(chap.secret).update(state.challenge).digest()
    const userOk = this.chapUser === chap.user
    if (!userOk || !got || got.length !== want.length || !crypto.timingSafeEqual(got, want))
      throw new LoginFailure(LOGIN_STATUS.authFailure, `CHAP authentication failed for user ${printable(this.chapUser ?? '', 40)}`)
    this.chap = {phase: 'done'}
  }
}

/** A binary value of RFC 7143 §6.1: 0x… (hex) or 0b… (base64). */
function decodeBinary(v: string): Buffer | undefined {
  if (/^0[xX][0-9a-fA-F]+$/.test(v) && v.length % 2 === 0) return Buffer.from(v.slice(2), 'hex')
  if (/^0[bB][A-Za-z0-9+/=]+$/.test(v)) return Buffer.from(v.slice(2), 'base64')
  return undefined
}

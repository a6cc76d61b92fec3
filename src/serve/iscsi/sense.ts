/**
 * The one place SCSI errors are built, as tgt's `sense_data_build` and LIO's `transport_send_check_condition_and_sense`
 * do: a sense key, an additional sense code and qualifier, and (for medium errors) the INFORMATION field
 * naming the first bad LBA. Fixed-format sense (SPC-4 §4.5.3) unless the LBA does not fit its 32-bit
 * INFORMATION field, then descriptor format (§4.5.2) with an Information descriptor (§4.5.2.2).
 * Every handler in scsi.ts fails by throwing a ScsiError made here.
 */

/** SAM-5 status codes. */
export const STATUS = {good: 0x00, checkCondition: 0x02, busy: 0x08, taskAborted: 0x40} as const

/** SPC-4 Table 28: sense keys. */
export const SENSE_KEY = {
  noSense: 0x0,
  notReady: 0x2,
  mediumError: 0x3,
  hardwareError: 0x4,
  illegalRequest: 0x5,
  unitAttention: 0x6,
  dataProtect: 0x7,
  abortedCommand: 0xb,
  miscompare: 0xe,
} as const

/** SPC-4 Table 30: additional sense code and qualifier, as (ASC << 8) | ASCQ. */
export const ASC = {
  none: 0x0000,
  writeError: 0x0c00,
  /** RFC 7143 §11.4.7.2: Data-Out that does not add up (ABORTED COMMAND). */
  incorrectAmountOfData: 0x0c0d,
  /** SPC-4: INVALID FIELD IN COMMAND INFORMATION UNIT (an expected data transfer length the CDB does not match). */
  invalidFieldInIu: 0x0e03,
  unrecoveredReadError: 0x1100,
  miscompareDuringVerify: 0x1d00,
  parameterListLengthError: 0x1a00,
  invalidOpcode: 0x2000,
  lbaOutOfRange: 0x2100,
  invalidFieldInCdb: 0x2400,
  lunNotSupported: 0x2500,
  invalidFieldInParameterList: 0x2600,
  writeProtected: 0x2700,
  /** SBC-3 §4.7.3 (thin provisioning): a write the device has no space for; Linux completes it as BLK_STS_NOSPC (ENOSPC). */
  spaceAllocationFailedWriteProtect: 0x2707,
  powerOnReset: 0x2900,
  internalTargetFailure: 0x4400,
  /** RFC 7143 §11.4.7.2: PROTOCOL SERVICE CRC ERROR (ABORTED COMMAND), also for Data-Out out of sequence (§7.9, an implied digest error). */
  protocolServiceCrcError: 0x4705,
  /** SPC-4: DATA OFFSET ERROR (ABORTED COMMAND). */
  dataOffsetError: 0x4b05,
  reportedLunsChanged: 0x3f0e,
} as const

export interface SenseSpec {
  key: number
  asc: number
  /** The INFORMATION field (an LBA for medium errors); absent: VALID is 0. */
  information?: number
  /** Sense-key specific: the CDB byte (and bit) found invalid, for INVALID FIELD IN CDB. */
  field?: {byte: number; bit?: number}
}

/** A SCSI command's failure: CHECK CONDITION with this sense. */
export class ScsiError extends Error {
  constructor(
    readonly sense: SenseSpec,
    message: string,
  ) {
    super(message)
    this.name = 'ScsiError'
  }
}

export const illegalRequest = (asc: number, message: string, field?: {byte: number; bit?: number}): ScsiError =>
  new ScsiError({key: SENSE_KEY.illegalRequest, asc, field}, message)
export const invalidField = (byte: number, message: string, bit?: number): ScsiError => illegalRequest(ASC.invalidFieldInCdb, message, {byte, bit})
export const outOfRange = (message: string): ScsiError => illegalRequest(ASC.lbaOutOfRange, message)
export const writeProtected = (): ScsiError => new ScsiError({key: SENSE_KEY.dataProtect, asc: ASC.writeProtected}, 'the logical unit is read-only')
export const mediumError = (lba: number): ScsiError =>
  new ScsiError({key: SENSE_KEY.mediumError, asc: ASC.unrecoveredReadError, information: lba}, `unrecovered read error at LBA ${lba}`)

/** Fixed format (0x70) when INFORMATION fits in 32 bits, else descriptor format (0x72). */
export function buildSense(s: SenseSpec, descriptor = false): Buffer {
  if (descriptor || (s.information !== undefined && s.information > 0xffffffff)) return descriptorSense(s)
  const b = Buffer.alloc(18)
  b[0] = 0x70 | (s.information !== undefined ? 0x80 : 0)
  b[2] = s.key & 0x0f
  if (s.information !== undefined) b.writeUInt32BE(s.information >>> 0, 3)
  b[7] = 10 // additional sense length: bytes 8..17
  b[12] = s.asc >> 8
  b[13] = s.asc & 0xff
  if (s.field) {
    // SKSV, C/D = 1 (the error is in the CDB), BPV and bit pointer, then the field pointer (SPC-4 §4.5.2.4.2).
    b[15] = 0x80 | 0x40 | (s.field.bit !== undefined ? 0x08 | (s.field.bit & 7) : 0)
    b.writeUInt16BE(s.field.byte, 16)
  }
  return b
}

function descriptorSense(s: SenseSpec): Buffer {
  const descriptors: Buffer[] = []
  if (s.information !== undefined) {
    const d = Buffer.alloc(12)
    d[0] = 0x00 // Information descriptor
    d[1] = 0x0a
    d[2] = 0x80 // VALID
    d.writeBigUInt64BE(BigInt(s.information), 4)
    descriptors.push(d)
  }
  if (s.field) {
    const d = Buffer.alloc(8)
    d[0] = 0x02 // Sense key specific descriptor
    d[1] = 0x06
    d[4] = 0x80 | 0x40 | (s.field.bit !== undefined ? 0x08 | (s.field.bit & 7) : 0)
    d.writeUInt16BE(s.field.byte, 5)
    descriptors.push(d)
  }
  const body = Buffer.concat(descriptors)
  const h = Buffer.alloc(8)
  h[0] = 0x72
  h[1] = s.key & 0x0f
  h[2] = s.asc >> 8
  h[3] = s.asc & 0xff
  h[7] = body.length
  return Buffer.concat([h, body])
}

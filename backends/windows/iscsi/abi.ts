/**
 * The Windows interfaces the iSCSI backend calls, as Microsoft documents them (learn.microsoft.com,
 * Win32 API reference, x64). Every struct and constant is here, with its documentation page beside it;
 * test/windows/abi.test.ts checks each size and field offset against the x64 layout worked out by hand
 * from those pages. mingw-w64's iscsidsc.h is incomplete and wrong in places, so nothing here comes from it.
 *
 * Types: WCHAR = 2 bytes (UTF-16LE), USHORT = 2, ULONG/DWORD/BOOL/enums = 4, ULONGLONG = 8, pointers = 8
 * (x64); BOOLEAN = 1 byte. Structs follow MSVC's default packing (each field at its own alignment).
 */
import {CStruct} from '../../../src/sys/cstruct'

const DOCS = 'https://learn.microsoft.com/en-us/windows/win32/api'

/** iscsidsc.h lengths (https://learn.microsoft.com/en-us/windows/win32/api/iscsidsc/ : MAX_ISCSI_* in the struct pages). */
export const MAX_ISCSI_PORTAL_NAME_LEN = 256
export const MAX_ISCSI_PORTAL_ADDRESS_LEN = 256
export const MAX_ISCSI_HBANAME_LEN = 256
export const MAX_ISCSI_NAME_LEN = 223
/** minwindef.h MAX_PATH. */
export const MAX_PATH = 260

/** ISCSI_TARGET_PORTALW — ${DOCS}/iscsidsc/ns-iscsidsc-iscsi_target_portalw */
export const ISCSI_TARGET_PORTALW = new CStruct('ISCSI_TARGET_PORTALW', [
  {name: 'SymbolicName', type: 'bytes', count: 2 * MAX_ISCSI_PORTAL_NAME_LEN},
  {name: 'Address', type: 'bytes', count: 2 * MAX_ISCSI_PORTAL_ADDRESS_LEN},
  {name: 'Socket', type: 'u16'},
])

/** ISCSI_TARGET_PORTAL_GROUPW — ${DOCS}/iscsidsc/ns-iscsidsc-iscsi_target_portal_groupw (Portals[1]: one portal). */
export const ISCSI_TARGET_PORTAL_GROUPW = new CStruct('ISCSI_TARGET_PORTAL_GROUPW', [
  {name: 'Count', type: 'u32'},
  {name: 'Portals', type: ISCSI_TARGET_PORTALW},
])

/** ISCSI_LOGIN_OPTIONS — ${DOCS}/iscsidsc/ns-iscsidsc-iscsi_login_options */
export const ISCSI_LOGIN_OPTIONS = new CStruct('ISCSI_LOGIN_OPTIONS', [
  {name: 'Version', type: 'u32'},
  {name: 'InformationSpecified', type: 'u32'},
  {name: 'LoginFlags', type: 'u32'},
  {name: 'AuthType', type: 'u32'},
  {name: 'HeaderDigest', type: 'u32'},
  {name: 'DataDigest', type: 'u32'},
  {name: 'MaximumConnections', type: 'u32'},
  {name: 'DefaultTime2Wait', type: 'u32'},
  {name: 'DefaultTime2Retain', type: 'u32'},
  {name: 'UsernameLength', type: 'u32'},
  {name: 'PasswordLength', type: 'u32'},
  /** PUCHAR */
  {name: 'Username', type: 'u64'},
  /** PUCHAR */
  {name: 'Password', type: 'u64'},
])

/** ISCSI_UNIQUE_SESSION_ID (also ISCSI_UNIQUE_CONNECTION_ID) — ${DOCS}/iscsidsc/ns-iscsidsc-iscsi_unique_session_id */
export const ISCSI_UNIQUE_SESSION_ID = new CStruct('ISCSI_UNIQUE_SESSION_ID', [
  {name: 'AdapterUnique', type: 'u64'},
  {name: 'AdapterSpecific', type: 'u64'},
])

/** ISCSI_SESSION_INFOW — ${DOCS}/iscsidsc/ns-iscsidsc-iscsi_session_infow (the strings point into the caller's buffer). */
export const ISCSI_SESSION_INFOW = new CStruct('ISCSI_SESSION_INFOW', [
  {name: 'SessionId', type: ISCSI_UNIQUE_SESSION_ID},
  /** PWCHAR */
  {name: 'InitiatorName', type: 'u64'},
  /** PWCHAR */
  {name: 'TargetNodeName', type: 'u64'},
  /** PWCHAR */
  {name: 'TargetName', type: 'u64'},
  {name: 'ISID', type: 'bytes', count: 6},
  {name: 'TSID', type: 'bytes', count: 2},
  {name: 'ConnectionCount', type: 'u32'},
  /** PISCSI_CONNECTION_INFOW */
  {name: 'Connections', type: 'u64'},
])

/** SCSI_ADDRESS — https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddscsi/ns-ntddscsi-_scsi_address */
export const SCSI_ADDRESS = new CStruct('SCSI_ADDRESS', [
  {name: 'Length', type: 'u32'},
  {name: 'PortNumber', type: 'u8'},
  {name: 'PathId', type: 'u8'},
  {name: 'TargetId', type: 'u8'},
  {name: 'Lun', type: 'u8'},
])

/** GUID — https://learn.microsoft.com/en-us/windows/win32/api/guiddef/ns-guiddef-guid */
export const GUID = new CStruct('GUID', [
  {name: 'Data1', type: 'u32'},
  {name: 'Data2', type: 'u16'},
  {name: 'Data3', type: 'u16'},
  {name: 'Data4', type: 'bytes', count: 8},
])

/** STORAGE_DEVICE_NUMBER — ${DOCS}/winioctl/ns-winioctl-storage_device_number */
export const STORAGE_DEVICE_NUMBER = new CStruct('STORAGE_DEVICE_NUMBER', [
  /** DEVICE_TYPE (FILE_DEVICE_DISK for a disk) */
  {name: 'DeviceType', type: 'u32'},
  {name: 'DeviceNumber', type: 'u32'},
  {name: 'PartitionNumber', type: 'u32'},
])

/** ISCSI_DEVICE_ON_SESSIONW — ${DOCS}/iscsidsc/ns-iscsidsc-iscsi_device_on_sessionw */
export const ISCSI_DEVICE_ON_SESSIONW = new CStruct('ISCSI_DEVICE_ON_SESSIONW', [
  {name: 'InitiatorName', type: 'bytes', count: 2 * MAX_ISCSI_HBANAME_LEN},
  {name: 'TargetName', type: 'bytes', count: 2 * (MAX_ISCSI_NAME_LEN + 1)},
  {name: 'ScsiAddress', type: SCSI_ADDRESS},
  {name: 'DeviceInterfaceType', type: GUID},
  {name: 'DeviceInterfaceName', type: 'bytes', count: 2 * MAX_PATH},
  {name: 'LegacyName', type: 'bytes', count: 2 * MAX_PATH},
  {name: 'StorageDeviceNumber', type: STORAGE_DEVICE_NUMBER},
  {name: 'DeviceInstance', type: 'u32'},
])

/** SET_DISK_ATTRIBUTES — ${DOCS}/winioctl/ns-winioctl-set_disk_attributes (Version = sizeof the struct). */
export const SET_DISK_ATTRIBUTES = new CStruct('SET_DISK_ATTRIBUTES', [
  {name: 'Version', type: 'u32'},
  /** BOOLEAN */
  {name: 'Persist', type: 'u8'},
  {name: 'Reserved1', type: 'bytes', count: 3},
  {name: 'Attributes', type: 'u64'},
  {name: 'AttributesMask', type: 'u64'},
  {name: 'Reserved2', type: 'u32', count: 4},
])

/** GET_DISK_ATTRIBUTES — ${DOCS}/winioctl/ns-winioctl-get_disk_attributes */
export const GET_DISK_ATTRIBUTES = new CStruct('GET_DISK_ATTRIBUTES', [
  {name: 'Version', type: 'u32'},
  {name: 'Reserved1', type: 'u32'},
  {name: 'Attributes', type: 'u64'},
])

/** SERVICE_STATUS — ${DOCS}/winsvc/ns-winsvc-service_status */
export const SERVICE_STATUS = new CStruct('SERVICE_STATUS', [
  {name: 'dwServiceType', type: 'u32'},
  {name: 'dwCurrentState', type: 'u32'},
  {name: 'dwControlsAccepted', type: 'u32'},
  {name: 'dwWin32ExitCode', type: 'u32'},
  {name: 'dwServiceSpecificExitCode', type: 'u32'},
  {name: 'dwCheckPoint', type: 'u32'},
  {name: 'dwWaitHint', type: 'u32'},
])

/**
 * CTL_CODE(DeviceType, Function, Method, Access) — https://learn.microsoft.com/en-us/windows-hardware/drivers/kernel/defining-i-o-control-codes
 * = (DeviceType << 16) | (Access << 14) | (Function << 2) | Method.
 */
export function CTL_CODE(deviceType: number, fn: number, method: number, access: number): number {
  return ((deviceType << 16) | (access << 14) | (fn << 2) | method) >>> 0
}
export const IOCTL_DISK_BASE = 0x00000007 // FILE_DEVICE_DISK
export const METHOD_BUFFERED = 0
export const FILE_ANY_ACCESS = 0
export const FILE_READ_ACCESS = 0x0001
export const FILE_WRITE_ACCESS = 0x0002
/** ${DOCS}/winioctl/ni-winioctl-ioctl_disk_get_disk_attributes */
export const IOCTL_DISK_GET_DISK_ATTRIBUTES = CTL_CODE(IOCTL_DISK_BASE, 0x003c, METHOD_BUFFERED, FILE_ANY_ACCESS)
/** ${DOCS}/winioctl/ni-winioctl-ioctl_disk_set_disk_attributes */
export const IOCTL_DISK_SET_DISK_ATTRIBUTES = CTL_CODE(IOCTL_DISK_BASE, 0x003d, METHOD_BUFFERED, FILE_READ_ACCESS | FILE_WRITE_ACCESS)
/** winioctl.h, on the SET_DISK_ATTRIBUTES page. */
export const DISK_ATTRIBUTE_OFFLINE = 0x1n
export const DISK_ATTRIBUTE_READ_ONLY = 0x2n
/** winioctl.h DEVICE_TYPE of a disk (STORAGE_DEVICE_NUMBER.DeviceType). */
export const FILE_DEVICE_DISK = 0x00000007

/** LoginIScsiTargetW's InitiatorPortNumber for "any port" — ${DOCS}/iscsidsc/nf-iscsidsc-loginiscsitargetw */
export const ISCSI_ALL_INITIATOR_PORTS = 0xffffffff

/** Win32 error codes — https://learn.microsoft.com/en-us/windows/win32/debug/system-error-codes--0-499- and --1000-1299- */
export const ERROR_SUCCESS = 0
export const ERROR_FILE_NOT_FOUND = 2
export const ERROR_ACCESS_DENIED = 5
export const ERROR_NOT_SUPPORTED = 50
export const ERROR_INSUFFICIENT_BUFFER = 122
export const ERROR_MORE_DATA = 234
export const ERROR_SERVICE_ALREADY_RUNNING = 1056
export const ERROR_SERVICE_DISABLED = 1058
export const ERROR_SERVICE_DOES_NOT_EXIST = 1060

/** advapi32 access rights and states — ${DOCS}/winsvc/nf-winsvc-openscmanagerw, .../nf-winsvc-openservicew, SERVICE_STATUS. */
export const SC_MANAGER_CONNECT = 0x0001
export const SERVICE_QUERY_STATUS = 0x0004
export const SERVICE_START = 0x0010
export const SERVICE_STOPPED = 1
export const SERVICE_START_PENDING = 2
export const SERVICE_RUNNING = 4
/** The Microsoft iSCSI Initiator Service. */
export const MSISCSI_SERVICE = 'MSiSCSI'

/** CreateFileW — ${DOCS}/fileapi/nf-fileapi-createfilew */
export const GENERIC_READ = 0x80000000
export const GENERIC_WRITE = 0x40000000
export const FILE_SHARE_READ = 0x1
export const FILE_SHARE_WRITE = 0x2
export const OPEN_EXISTING = 3

/** A NUL-terminated UTF-16LE string (a WCHAR array field, or a PWSTR argument). */
export function wide(s: string): Buffer {
  return Buffer.from(`${s}\0`, 'utf16le')
}

/** The UTF-16LE string at the start of `b`, up to its first NUL (WCHAR) or the end. */
export function readWide(b: Buffer, at = 0, end = b.length): string {
  let i = at
  while (i + 1 < end && (b[i] !== 0 || b[i + 1] !== 0)) i += 2
  return b.toString('utf16le', at, i)
}

/** `\\.\PhysicalDriveN` for a disk's STORAGE_DEVICE_NUMBER.DeviceNumber. */
export function physicalDrive(n: number): string {
  return `\\\\.\\PhysicalDrive${n}`
}

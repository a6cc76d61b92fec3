/**
 * The Win32 calls the iSCSI backend makes, through koffi (no compiler, no native addon of our own):
 * iscsidsc.dll (the Microsoft iSCSI Initiator's discovery API), advapi32.dll (the service manager) and
 * kernel32.dll (CreateFileW, DeviceIoControl). Structs travel as Buffers laid out by ./abi; this file only
 * declares the prototypes, as the Microsoft pages named in ./abi give them. Loaded on Windows only (and
 * under Wine, where a stand-in iscsidsc.dll answers — test/windows).
 */
import type * as Koffi from 'koffi' with {'resolution-mode': 'import'}
import type {Win32Api, Handle} from './api'

export function loadWin32Api(): Win32Api {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const koffi: typeof Koffi = require('koffi')
  const iscsi = koffi.load('iscsidsc.dll')
  const advapi = koffi.load('advapi32.dll')
  const kernel = koffi.load('kernel32.dll')

  const Add = iscsi.func(
    'uint32 __stdcall AddIScsiStaticTargetW(str16 TargetName, str16 TargetAlias, uint32 TargetFlags, uint8 Persist, void *Mappings, void *LoginOptions, void *PortalGroup)',
  )
  const Login = iscsi.func(
    'uint32 __stdcall LoginIScsiTargetW(str16 TargetName, uint8 IsInformationalSession, str16 InitiatorInstance, uint32 InitiatorPortNumber, void *TargetPortal, uint64 SecurityFlags, void *Mappings, void *LoginOptions, uint32 KeySize, void *Key, uint8 IsPersistent, void *UniqueSessionId, void *UniqueConnectionId)',
  )
  const GetDevices = iscsi.func('uint32 __stdcall GetDevicesForIScsiSessionW(void *UniqueSessionId, void *DeviceCount, void *Devices)')
  const Report = iscsi.func('uint32 __stdcall ReportIScsiSessionsW(void *BufferSize, void *SessionCount, void *SessionInfo)')
  const Logout = iscsi.func('uint32 __stdcall LogoutIScsiTarget(void *UniqueSessionId)')
  const Remove = iscsi.func('uint32 __stdcall RemoveIScsiStaticTargetW(str16 TargetName)')

  const OpenSCManagerW = advapi.func('void * __stdcall OpenSCManagerW(str16 lpMachineName, str16 lpDatabaseName, uint32 dwDesiredAccess)')
  const OpenServiceW = advapi.func('void * __stdcall OpenServiceW(void *hSCManager, str16 lpServiceName, uint32 dwDesiredAccess)')
  const StartServiceW = advapi.func('int __stdcall StartServiceW(void *hService, uint32 dwNumServiceArgs, void *lpServiceArgVectors)')
  const QueryServiceStatus = advapi.func('int __stdcall QueryServiceStatus(void *hService, void *lpServiceStatus)')
  const CloseServiceHandle = advapi.func('int __stdcall CloseServiceHandle(void *hSCObject)')

  const CreateFileW = kernel.func(
    'void * __stdcall CreateFileW(str16 lpFileName, uint32 dwDesiredAccess, uint32 dwShareMode, void *lpSecurityAttributes, uint32 dwCreationDisposition, uint32 dwFlagsAndAttributes, void *hTemplateFile)',
  )
  const DeviceIoControl = kernel.func(
    'int __stdcall DeviceIoControl(void *hDevice, uint32 dwIoControlCode, void *lpInBuffer, uint32 nInBufferSize, void *lpOutBuffer, uint32 nOutBufferSize, void *lpBytesReturned, void *lpOverlapped)',
  )
  const CloseHandle = kernel.func('int __stdcall CloseHandle(void *hObject)')
  const GetLastError = kernel.func('uint32 __stdcall GetLastError()')

  /** A handle, or null for NULL and INVALID_HANDLE_VALUE ((HANDLE)-1), with the error read at once. */
  const handle = (h: unknown): Handle | null => {
    if (h === null) return null
    const a = koffi.address(h)
    return a === 0n || a === 0xffffffffffffffffn ? null : (h as Handle)
  }
  let lastError = 0
  const withError = <T>(v: T): T => {
    lastError = GetLastError() as number
    return v
  }

  return {
    AddIScsiStaticTargetW: (name, flags, persist, portalGroup) => Add(name, null, flags, persist ? 1 : 0, null, null, portalGroup) as number,
    LoginIScsiTargetW: (name, portNumber, portal, persistent, sessionId, connectionId) =>
      Login(name, 0, null, portNumber, portal, 0n, null, null, 0, null, persistent ? 1 : 0, sessionId, connectionId) as number,
    GetDevicesForIScsiSessionW: (sessionId, count, devices) => GetDevices(sessionId, count, devices) as number,
    ReportIScsiSessionsW: (bufferSize, count, info) => Report(bufferSize, count, info) as number,
    LogoutIScsiTarget: (sessionId) => Logout(sessionId) as number,
    RemoveIScsiStaticTargetW: (name) => Remove(name) as number,
    OpenSCManagerW: (access) => handle(withError(OpenSCManagerW(null, null, access))),
    OpenServiceW: (scm, name, access) => handle(withError(OpenServiceW(scm, name, access))),
    StartServiceW: (svc) => withError(StartServiceW(svc, 0, null)) !== 0,
    QueryServiceStatus: (svc, status) => withError(QueryServiceStatus(svc, status)) !== 0,
    CloseServiceHandle: (h) => void CloseServiceHandle(h),
    CreateFileW: (name, access, share, disposition) => handle(withError(CreateFileW(name, access, share, null, disposition, 0, null))),
    DeviceIoControl: (h, code, input, output, returned) =>
      withError(DeviceIoControl(h, code, input, input?.length ?? 0, output, output?.length ?? 0, returned, null)) !== 0,
    CloseHandle: (h) => void CloseHandle(h),
    lastError: () => lastError,
    address: (b) => koffi.address(b),
  }
}

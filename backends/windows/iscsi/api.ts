/**
 * The Win32 calls the backend makes, one method per function, with struct arguments as Buffers laid out by
 * ./abi. ./win32 binds them to the real DLLs through koffi; tests on Linux pass a fake that reads and writes
 * the same buffers as the DLLs' documentation says they do.
 */

/** An opaque Win32 handle (a koffi pointer). */
export type Handle = {readonly __handle: unique symbol} | object

export interface Win32Api {
  /** AddIScsiStaticTargetW(TargetName, NULL alias, TargetFlags, Persist, NULL mappings, NULL options, PortalGroup). */
  AddIScsiStaticTargetW(target: string, flags: number, persist: boolean, portalGroup: Buffer): number
  /**
   * LoginIScsiTargetW(TargetName, FALSE informational, NULL initiator, InitiatorPortNumber, TargetPortal,
   * 0 security flags, NULL mappings, NULL options, 0 key, IsPersistent, UniqueSessionId, UniqueConnectionId).
   */
  LoginIScsiTargetW(target: string, initiatorPort: number, portal: Buffer, persistent: boolean, sessionId: Buffer, connectionId: Buffer): number
  /** GetDevicesForIScsiSessionW(UniqueSessionId, *DeviceCount (in: room, out: count), Devices). */
  GetDevicesForIScsiSessionW(sessionId: Buffer, count: Buffer, devices: Buffer | null): number
  /** ReportIScsiSessionsW(*BufferSize (bytes), *SessionCount, SessionInfo). */
  ReportIScsiSessionsW(bufferSize: Buffer, count: Buffer, info: Buffer | null): number
  LogoutIScsiTarget(sessionId: Buffer): number
  RemoveIScsiStaticTargetW(target: string): number

  /** OpenSCManagerW(NULL, NULL, access): null on failure (lastError()). */
  OpenSCManagerW(access: number): Handle | null
  OpenServiceW(scm: Handle, name: string, access: number): Handle | null
  /** StartServiceW(service, 0, NULL). */
  StartServiceW(service: Handle): boolean
  QueryServiceStatus(service: Handle, status: Buffer): boolean
  CloseServiceHandle(h: Handle): void

  /** CreateFileW(name, access, share, NULL, disposition, 0, NULL): null for INVALID_HANDLE_VALUE. */
  CreateFileW(name: string, access: number, share: number, disposition: number): Handle | null
  DeviceIoControl(h: Handle, code: number, input: Buffer | null, output: Buffer | null, bytesReturned: Buffer): boolean
  CloseHandle(h: Handle): void

  /** GetLastError() as read right after the last advapi32/kernel32 call. */
  lastError(): number
  /** The address of a buffer's first byte (pointers that ReportIScsiSessionsW writes point into it). */
  address(b: Buffer): bigint
}

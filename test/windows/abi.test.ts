/**
 * The Windows structs of backends/windows/iscsi/abi.ts against their x64 layouts, worked out by hand from
 * the Microsoft documentation pages named in abi.ts (MSVC default packing: each field at a multiple of its
 * own alignment, the struct padded to its largest; WCHAR 2, USHORT 2, ULONG/DWORD/enum 4, ULONGLONG 8,
 * pointers 8, BOOLEAN 1). The reasoning for each number is written beside it. Also the IOCTL codes, which
 * are CTL_CODE arithmetic, and the wide-string helpers.
 */
import {strict as assert} from 'node:assert'
import * as abi from '../../backends/windows/iscsi/abi'
import type {CStruct} from '../../src/sys/cstruct'

const EXPECTED: Array<[CStruct, number, Record<string, number>]> = [
  // WCHAR SymbolicName[256] = 512 bytes at 0; WCHAR Address[256] = 512 at 512; USHORT Socket at 1024;
  // 1026 is a multiple of the largest alignment (2): size 1026.
  [abi.ISCSI_TARGET_PORTALW, 1026, {SymbolicName: 0, Address: 512, Socket: 1024}],
  // ULONG Count at 0; ISCSI_TARGET_PORTALW Portals[1] (alignment 2) at 4, 1026 bytes → 1030; padded to 4: 1032.
  [abi.ISCSI_TARGET_PORTAL_GROUPW, 1032, {Count: 0, Portals: 4}],
  // Eleven 4-byte members (Version … PasswordLength) at 0, 4, … 40 end at 44; the pointer Username needs 8:
  // 48; Password 56; size 64.
  [
    abi.ISCSI_LOGIN_OPTIONS,
    64,
    {
      Version: 0,
      InformationSpecified: 4,
      LoginFlags: 8,
      AuthType: 12,
      HeaderDigest: 16,
      DataDigest: 20,
      MaximumConnections: 24,
      DefaultTime2Wait: 28,
      DefaultTime2Retain: 32,
      UsernameLength: 36,
      PasswordLength: 40,
      Username: 48,
      Password: 56,
    },
  ],
  // Two ULONGLONGs.
  [abi.ISCSI_UNIQUE_SESSION_ID, 16, {AdapterUnique: 0, AdapterSpecific: 8}],
  // SessionId (16, alignment 8) at 0; three PWCHARs at 16, 24, 32; UCHAR ISID[6] at 40; UCHAR TSID[2] at 46;
  // ULONG ConnectionCount at 48; the pointer Connections rounds 52 up to 56; size 64.
  [
    abi.ISCSI_SESSION_INFOW,
    64,
    {SessionId: 0, InitiatorName: 16, TargetNodeName: 24, TargetName: 32, ISID: 40, TSID: 46, ConnectionCount: 48, Connections: 56},
  ],
  // ULONG Length, then four UCHARs: 8 bytes, alignment 4.
  [abi.SCSI_ADDRESS, 8, {Length: 0, PortNumber: 4, PathId: 5, TargetId: 6, Lun: 7}],
  // unsigned long, two unsigned shorts, unsigned char[8]: 16 bytes, alignment 4.
  [abi.GUID, 16, {Data1: 0, Data2: 4, Data3: 6, Data4: 8}],
  // Three 4-byte members.
  [abi.STORAGE_DEVICE_NUMBER, 12, {DeviceType: 0, DeviceNumber: 4, PartitionNumber: 8}],
  // WCHAR InitiatorName[MAX_ISCSI_HBANAME_LEN = 256] = 512 bytes at 0; WCHAR TargetName[MAX_ISCSI_NAME_LEN + 1
  // = 224] = 448 bytes at 512 → 960; SCSI_ADDRESS (alignment 4) at 960 → 968; GUID (alignment 4) at 968 → 984;
  // WCHAR DeviceInterfaceName[MAX_PATH = 260] = 520 bytes at 984 → 1504; LegacyName 520 at 1504 → 2024;
  // STORAGE_DEVICE_NUMBER at 2024 → 2036; DWORD DeviceInstance at 2036 → 2040, a multiple of 4: size 2040.
  [
    abi.ISCSI_DEVICE_ON_SESSIONW,
    2040,
    {
      InitiatorName: 0,
      TargetName: 512,
      ScsiAddress: 960,
      DeviceInterfaceType: 968,
      DeviceInterfaceName: 984,
      LegacyName: 1504,
      StorageDeviceNumber: 2024,
      DeviceInstance: 2036,
    },
  ],
  // DWORD Version at 0; BOOLEAN Persist at 4; BYTE Reserved1[3] at 5 → 8; DWORDLONG Attributes at 8;
  // AttributesMask at 16; DWORD Reserved2[4] at 24 → 40, a multiple of 8: size 40.
  [abi.SET_DISK_ATTRIBUTES, 40, {Version: 0, Persist: 4, Reserved1: 5, Attributes: 8, AttributesMask: 16, Reserved2: 24}],
  // DWORD Version, DWORD Reserved1, DWORDLONG Attributes.
  [abi.GET_DISK_ATTRIBUTES, 16, {Version: 0, Reserved1: 4, Attributes: 8}],
  // Seven DWORDs.
  [
    abi.SERVICE_STATUS,
    28,
    {dwServiceType: 0, dwCurrentState: 4, dwControlsAccepted: 8, dwWin32ExitCode: 12, dwServiceSpecificExitCode: 16, dwCheckPoint: 20, dwWaitHint: 24},
  ],
]

describe('windows/iscsi abi: struct layouts (x64, from the Microsoft documentation)', () => {
  for (const [s, size, offsets] of EXPECTED) {
    it(`${s.name}: ${size} bytes, every field where the documentation puts it`, () => {
      assert.equal(s.size, size, `${s.name} size`)
      for (const [field, off] of Object.entries(offsets)) assert.equal(s.offsets[field], off, `${s.name}.${field}`)
      assert.deepEqual(Object.keys(s.offsets).sort(), Object.keys(offsets).sort(), `${s.name}: no field left unchecked`)
    })
  }

  it('the IOCTL codes: CTL_CODE(FILE_DEVICE_DISK = 7, function, METHOD_BUFFERED, access)', () => {
    // (7 << 16) | (0 << 14) | (0x3c << 2) | 0 = 0x70000 + 0xf0
    assert.equal(abi.IOCTL_DISK_GET_DISK_ATTRIBUTES, 0x000700f0)
    // (7 << 16) | ((FILE_READ_ACCESS | FILE_WRITE_ACCESS = 3) << 14) | (0x3d << 2) = 0x70000 + 0xc000 + 0xf4
    assert.equal(abi.IOCTL_DISK_SET_DISK_ATTRIBUTES, 0x0007c0f4)
  })

  it('wide strings: NUL-terminated UTF-16LE, read back up to the first NUL WCHAR', () => {
    const w = abi.wide('iqn.x:é')
    assert.equal(w.length, 2 * 8)
    assert.equal(w.readUInt16LE(14), 0)
    assert.equal(abi.readWide(w), 'iqn.x:é')
    // A WCHAR whose low byte is 0 (U+0100) is not a terminator.
    assert.equal(abi.readWide(abi.wide('\u0100a')), '\u0100a')
    assert.equal(abi.physicalDrive(3), '\\\\.\\PhysicalDrive3')
  })

  it('a portal encodes its address as WCHARs and the port as USHORT at 1024', () => {
    const p = abi.ISCSI_TARGET_PORTALW.encode({SymbolicName: abi.wide(''), Address: abi.wide('127.0.0.1'), Socket: 53260})
    assert.equal(abi.readWide(p, 512), '127.0.0.1')
    assert.equal(p.readUInt16LE(1024), 53260)
  })
})

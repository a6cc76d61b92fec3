/**
 * The windows-iscsi backend's logic on Linux, with a fake Win32Api answering as the documentation says:
 * the service checks (not elevated → exit 7 'unavailable'; stopped → started and waited for), the online /
 * read-only ioctl, the decoding of GetDevicesForIScsiSessionW and ReportIScsiSessionsW buffers, and that the
 * backend is registered and reports itself unavailable off Windows. The real FFI runs in wine.test.ts.
 */
import {strict as assert} from 'node:assert'
import * as abi from '../../backends/windows/iscsi/abi'
import type {Handle, Win32Api} from '../../backends/windows/iscsi/api'
import {decodeDevices, decodeSessions, ensureInitiatorService, onlineReadOnly, statusText} from '../../backends/windows/iscsi/index'
import {loadBackend, probeBackends} from '../../src/core/backends'
import {EXIT_CODES, VdevError} from '../../src/core/errors'

const H = {} as Handle

function fakeApi(opts: Partial<Win32Api> & {states?: number[]; error?: number}): Win32Api & {calls: string[]} {
  const {states: st, error, ...over} = opts
  const calls: string[] = []
  const states = st ?? [abi.SERVICE_RUNNING]
  const last = error ?? 0
  const base: Win32Api = {
    AddIScsiStaticTargetW: () => 0,
    LoginIScsiTargetW: () => 0,
    GetDevicesForIScsiSessionW: () => 0,
    ReportIScsiSessionsW: () => 0,
    LogoutIScsiTarget: () => 0,
    RemoveIScsiStaticTargetW: () => 0,
    OpenSCManagerW: () => (calls.push('OpenSCManagerW'), H),
    OpenServiceW: (_s, name, access) => (calls.push(`OpenServiceW ${name} 0x${access.toString(16)}`), H),
    StartServiceW: () => (calls.push('StartServiceW'), true),
    QueryServiceStatus: (_h, status) => {
      status.writeUInt32LE(states.length > 1 ? states.shift()! : states[0], abi.SERVICE_STATUS.offsets.dwCurrentState)
      calls.push('QueryServiceStatus')
      return true
    },
    CloseServiceHandle: () => void calls.push('CloseServiceHandle'),
    CreateFileW: () => H,
    DeviceIoControl: () => true,
    CloseHandle: () => void calls.push('CloseHandle'),
    lastError: () => last,
    address: () => 0x10000n,
  }
  const api = {...base, ...over, calls} as Win32Api & {calls: string[]}
  return api
}
const quick = {pollMs: 1, timeoutMs: 2000, sleep: () => Promise.resolve()}

describe('windows/iscsi backend (fake Win32 API)', () => {
  it('is registered, and off Windows says it needs Windows', async () => {
    const b = loadBackend('windows-iscsi')
    assert.ok(!('error' in b), JSON.stringify(b))
    assert.equal(b.platform, 'win32')
    const st = (await probeBackends()).find((s) => s.name === 'windows-iscsi')
    assert.ok(st && !st.probe.available)
    if (process.platform !== 'win32') assert.match((st.probe as {reason: string}).reason, /needs win32/)
  })

  it('not elevated: OpenServiceW access denied is exit 7 with a clear message', async () => {
    const api = fakeApi({OpenServiceW: () => null, error: abi.ERROR_ACCESS_DENIED})
    await assert.rejects(ensureInitiatorService(api, quick, () => {}), (err: unknown) => {
      assert.ok(err instanceof VdevError)
      assert.equal(err.code, 'unavailable')
      assert.equal(EXIT_CODES[err.code], 7)
      assert.match(err.message, /access denied \(vdev attach on Windows needs an elevated prompt: "Run as administrator"\)/)
      return true
    })
    assert.deepEqual(api.calls, ['OpenSCManagerW', 'CloseServiceHandle'])
  })

  it('no MSiSCSI service: exit 7 naming it', async () => {
    const api = fakeApi({OpenServiceW: () => null, error: abi.ERROR_SERVICE_DOES_NOT_EXIST})
    await assert.rejects(ensureInitiatorService(api, quick, () => {}), /Microsoft iSCSI Initiator service \(MSiSCSI\) cannot be opened: error 1060 \(service does not exist\)/)
  })

  it('a stopped service is started and waited for; a running one is left alone', async () => {
    const logs: string[] = []
    const api = fakeApi({states: [abi.SERVICE_STOPPED, abi.SERVICE_START_PENDING, abi.SERVICE_START_PENDING, abi.SERVICE_RUNNING]})
    await ensureInitiatorService(api, quick, (l) => logs.push(l))
    assert.deepEqual(api.calls, [
      'OpenSCManagerW',
      `OpenServiceW MSiSCSI 0x${(abi.SERVICE_START | abi.SERVICE_QUERY_STATUS).toString(16)}`,
      'QueryServiceStatus',
      'StartServiceW',
      'QueryServiceStatus',
      'QueryServiceStatus',
      'QueryServiceStatus',
      'CloseServiceHandle',
      'CloseServiceHandle',
    ])
    assert.deepEqual(logs, ['started the MSiSCSI service'])
    const running = fakeApi({})
    await ensureInitiatorService(running, quick, () => {})
    assert.ok(!running.calls.includes('StartServiceW'))
  })

  it('an offline disk is set online and read-only (not persistent); one already so is left alone', () => {
    const sent: Buffer[] = []
    const io = (attrs: bigint): Partial<Win32Api> => ({
      DeviceIoControl: (_h, code, input, output) => {
        if (code === abi.IOCTL_DISK_GET_DISK_ATTRIBUTES) output!.writeBigUInt64LE(attrs, abi.GET_DISK_ATTRIBUTES.offsets.Attributes)
        if (code === abi.IOCTL_DISK_SET_DISK_ATTRIBUTES) sent.push(Buffer.from(input!))
        return true
      },
    })
    assert.equal(onlineReadOnly(fakeApi(io(abi.DISK_ATTRIBUTE_OFFLINE)), '\\\\.\\PhysicalDrive3'), 'changed')
    const s = abi.SET_DISK_ATTRIBUTES.decode(sent[0])
    assert.equal(s.Version, 40)
    assert.equal(s.Persist, 0)
    assert.equal(sent[0].readBigUInt64LE(8), abi.DISK_ATTRIBUTE_READ_ONLY)
    assert.equal(sent[0].readBigUInt64LE(16), abi.DISK_ATTRIBUTE_OFFLINE | abi.DISK_ATTRIBUTE_READ_ONLY)
    assert.equal(onlineReadOnly(fakeApi(io(abi.DISK_ATTRIBUTE_READ_ONLY)), '\\\\.\\PhysicalDrive3'), 'already')
    assert.equal(sent.length, 1)
    // Wine answers most disk ioctls with error 50: reported, not fatal.
    const wine = fakeApi({DeviceIoControl: () => false, error: abi.ERROR_NOT_SUPPORTED})
    assert.deepEqual(onlineReadOnly(wine, 'x'), {failed: 'IOCTL_DISK_GET_DISK_ATTRIBUTES: error 50 (not supported)'})
  })

  it('decodes ISCSI_DEVICE_ON_SESSIONW arrays and ISCSI_SESSION_INFOW with strings inside the buffer', () => {
    const D = abi.ISCSI_DEVICE_ON_SESSIONW
    const devs = Buffer.alloc(2 * D.size)
    abi.wide('iqn.a').copy(devs, D.size + D.offsets.TargetName)
    devs.writeUInt32LE(abi.FILE_DEVICE_DISK, D.size + D.offsets.StorageDeviceNumber)
    devs.writeUInt32LE(9, D.size + D.offsets.StorageDeviceNumber + 4)
    abi.wide('\\\\.\\PhysicalDrive9').copy(devs, D.size + D.offsets.LegacyName)
    const d = decodeDevices(devs, 2)
    assert.deepEqual(d[1], {targetName: 'iqn.a', deviceType: 7, deviceNumber: 9, legacyName: '\\\\.\\PhysicalDrive9'})

    const S = abi.ISCSI_SESSION_INFOW
    const base = 0x7ff000000000n
    const buf = Buffer.alloc(S.size + 64)
    buf.writeBigUInt64LE(0xffffa00012345678n, 0)
    buf.writeBigUInt64LE(0x4000000000000001n, 8)
    abi.wide('iqn.b').copy(buf, S.size)
    buf.writeBigUInt64LE(base + BigInt(S.size), S.offsets.TargetName)
    const s = decodeSessions(buf, 1, base)
    assert.deepEqual(s, [{sessionId: '78563412 00a0ffff 0100000000000040'.replace(/ /g, ''), targetName: 'iqn.b'}])
    assert.equal(statusText(0xefff0021), 'status 0xefff0021')
  })
})

/*
 * A stand-in iscsidsc.dll for Wine (which has none), so that the Windows backend's FFI runs for real: the
 * struct layouts, wide strings, 64-bit session ids, sizing retries and error paths. Each call is appended
 * to the file named by STANDIN_LOG, one line each; live sessions and static targets are kept in the file
 * named by STANDIN_STATE, so that `vdev list` in another process sees them. It answers what Microsoft's
 * documentation says the real one answers (ERROR_INSUFFICIENT_BUFFER with the size needed, a session id,
 * a disk with a STORAGE_DEVICE_NUMBER). No iSCSI is spoken: there is no initiator under Wine.
 *
 * Layouts are written here from the documentation pages (cited in backends/windows/iscsi/abi.ts), not taken
 * from mingw-w64's iscsidsc.h, and checked with static asserts against the same hand-computed sizes.
 *
 * Knobs (environment): STANDIN_LOGIN_FAILS=n (the first n logins of a process fail with 0xEFFF0003),
 * STANDIN_DEVICE_DELAY=n (the first n GetDevicesForIScsiSessionW calls of a process report no device yet),
 * STANDIN_DEVICE_NUMBER (default 5), STANDIN_LOGOUT_BUSY=1 (logout fails with 0xEFFF0021).
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>

typedef struct { ULONGLONG AdapterUnique; ULONGLONG AdapterSpecific; } SESSION_ID;
typedef struct { WCHAR SymbolicName[256]; WCHAR Address[256]; USHORT Socket; } PORTAL;
typedef struct { ULONG Count; PORTAL Portals[1]; } PORTAL_GROUP;
typedef struct { ULONG Length; UCHAR PortNumber, PathId, TargetId, Lun; } SCSI_ADDR;
typedef struct { ULONG DeviceType, DeviceNumber, PartitionNumber; } DEVICE_NUMBER;
typedef struct {
  WCHAR InitiatorName[256]; WCHAR TargetName[224]; SCSI_ADDR ScsiAddress; GUID DeviceInterfaceType;
  WCHAR DeviceInterfaceName[260]; WCHAR LegacyName[260]; DEVICE_NUMBER StorageDeviceNumber; DWORD DeviceInstance;
} DEVICE_ON_SESSION;
typedef struct {
  SESSION_ID SessionId; PWCHAR InitiatorName; PWCHAR TargetNodeName; PWCHAR TargetName;
  UCHAR ISID[6]; UCHAR TSID[2]; ULONG ConnectionCount; void *Connections;
} SESSION_INFO;
_Static_assert(sizeof(PORTAL) == 1026, "ISCSI_TARGET_PORTALW");
_Static_assert(sizeof(PORTAL_GROUP) == 1032, "ISCSI_TARGET_PORTAL_GROUPW");
_Static_assert(sizeof(DEVICE_ON_SESSION) == 2040, "ISCSI_DEVICE_ON_SESSIONW");
_Static_assert(offsetof(DEVICE_ON_SESSION, StorageDeviceNumber) == 2024, "StorageDeviceNumber");
_Static_assert(sizeof(SESSION_INFO) == 64, "ISCSI_SESSION_INFOW");
_Static_assert(offsetof(SESSION_INFO, TargetName) == 32, "TargetName");

#define ISDSC_CONNECTION_FAILED 0xEFFF0003u
#define ISDSC_SESSION_NOT_FOUND 0xEFFF001Cu
#define ISDSC_DEVICE_BUSY_ON_SESSION 0xEFFF0021u
#define MAX_ENTRIES 32

static int loginCalls, deviceCalls;

static void utf8(const WCHAR *w, char *out, int size) {
  if (!w) { snprintf(out, size, "(null)"); return; }
  if (!WideCharToMultiByte(CP_UTF8, 0, w, -1, out, size, NULL, NULL)) snprintf(out, size, "(bad)");
}

static void logLine(const char *fmt, ...) {
  const char *path = getenv("STANDIN_LOG");
  if (!path) return;
  FILE *f = fopen(path, "ab");
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
}

static int envInt(const char *name, int def) {
  const char *v = getenv(name);
  return v && *v ? atoi(v) : def;
}

/* State: lines "T <target> <port>" and "S <unique hex> <specific hex> <target>". */
typedef struct { char kind; char target[256]; unsigned port; ULONGLONG unique, specific; } ENTRY;

static int loadState(ENTRY *e) {
  const char *path = getenv("STANDIN_STATE");
  int n = 0;
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) return 0;
  char line[600];
  while (n < MAX_ENTRIES && fgets(line, sizeof line, f)) {
    memset(&e[n], 0, sizeof e[n]);
    if (line[0] == 'T' && sscanf(line, "T %255s %u", e[n].target, &e[n].port) == 2) e[n++].kind = 'T';
    else if (line[0] == 'S' && sscanf(line, "S %llx %llx %255s", &e[n].unique, &e[n].specific, e[n].target) == 3) e[n++].kind = 'S';
  }
  fclose(f);
  return n;
}

static void saveState(ENTRY *e, int n) {
  const char *path = getenv("STANDIN_STATE");
  FILE *f = path ? fopen(path, "wb") : NULL;
  if (!f) return;
  for (int i = 0; i < n; i++) {
    if (e[i].kind == 'T') fprintf(f, "T %s %u\n", e[i].target, e[i].port);
    if (e[i].kind == 'S') fprintf(f, "S %llx %llx %s\n", e[i].unique, e[i].specific, e[i].target);
  }
  fclose(f);
}

static int findSession(ENTRY *e, int n, const SESSION_ID *id) {
  for (int i = 0; i < n; i++)
    if (e[i].kind == 'S' && e[i].unique == id->AdapterUnique && e[i].specific == id->AdapterSpecific) return i;
  return -1;
}

__declspec(dllexport) ULONG WINAPI AddIScsiStaticTargetW(PWSTR TargetName, PWSTR TargetAlias, ULONG TargetFlags, BOOLEAN Persist,
                                                         void *Mappings, void *LoginOptions, PORTAL_GROUP *PortalGroup) {
  char name[700], alias[700], addr[700] = "", sym[700] = "";
  utf8(TargetName, name, sizeof name);
  utf8(TargetAlias, alias, sizeof alias);
  unsigned count = PortalGroup ? PortalGroup->Count : 0, port = 0;
  if (PortalGroup && count > 0) {
    utf8(PortalGroup->Portals[0].Address, addr, sizeof addr);
    utf8(PortalGroup->Portals[0].SymbolicName, sym, sizeof sym);
    port = PortalGroup->Portals[0].Socket;
  }
  logLine("AddIScsiStaticTargetW target=%s alias=%s flags=%lu persist=%u mappings=%s options=%s portals=%u address=%s symbolic=%s socket=%u",
          name, alias, TargetFlags, Persist, Mappings ? "set" : "null", LoginOptions ? "set" : "null", count, addr, sym, port);
  if (!TargetName || !PortalGroup || count != 1) return ERROR_INVALID_PARAMETER;
  ENTRY e[MAX_ENTRIES];
  int n = loadState(e);
  if (n < MAX_ENTRIES) {
    memset(&e[n], 0, sizeof e[n]);
    e[n].kind = 'T';
    snprintf(e[n].target, sizeof e[n].target, "%s", name);
    e[n].port = port;
    saveState(e, n + 1);
  }
  return ERROR_SUCCESS;
}

__declspec(dllexport) ULONG WINAPI LoginIScsiTargetW(PWSTR TargetName, BOOLEAN IsInformationalSession, PWSTR InitiatorInstance,
                                                     ULONG InitiatorPortNumber, PORTAL *TargetPortal, ULONGLONG SecurityFlags,
                                                     void *Mappings, void *LoginOptions, ULONG KeySize, PCHAR Key, BOOLEAN IsPersistent,
                                                     SESSION_ID *UniqueSessionId, SESSION_ID *UniqueConnectionId) {
  char name[700], initiator[700], addr[700] = "";
  utf8(TargetName, name, sizeof name);
  utf8(InitiatorInstance, initiator, sizeof initiator);
  if (TargetPortal) utf8(TargetPortal->Address, addr, sizeof addr);
  loginCalls++;
  logLine("LoginIScsiTargetW target=%s informational=%u initiator=%s port=0x%lx portal=%s:%u security=%llu mappings=%s options=%s keysize=%lu key=%s persistent=%u",
          name, IsInformationalSession, initiator, InitiatorPortNumber, addr, TargetPortal ? TargetPortal->Socket : 0, SecurityFlags,
          Mappings ? "set" : "null", LoginOptions ? "set" : "null", KeySize, Key ? "set" : "null", IsPersistent);
  if (loginCalls <= envInt("STANDIN_LOGIN_FAILS", 0)) return ISDSC_CONNECTION_FAILED;
  ENTRY e[MAX_ENTRIES];
  int n = loadState(e), known = 0;
  for (int i = 0; i < n; i++) if (e[i].kind == 'T' && !strcmp(e[i].target, name)) known = 1;
  if (!known || !UniqueSessionId || !UniqueConnectionId) return ERROR_INVALID_PARAMETER;
  /* Above 2^53 on purpose: the caller must keep the id exact. */
  UniqueSessionId->AdapterUnique = 0xffffa00012345600ull + (ULONGLONG)GetCurrentProcessId();
  UniqueSessionId->AdapterSpecific = 0x4000000000000001ull + (ULONGLONG)loginCalls;
  UniqueConnectionId->AdapterUnique = UniqueSessionId->AdapterUnique;
  UniqueConnectionId->AdapterSpecific = 0x7000000000000000ull;
  if (n < MAX_ENTRIES) {
    memset(&e[n], 0, sizeof e[n]);
    e[n].kind = 'S';
    e[n].unique = UniqueSessionId->AdapterUnique;
    e[n].specific = UniqueSessionId->AdapterSpecific;
    snprintf(e[n].target, sizeof e[n].target, "%s", name);
    saveState(e, n + 1);
  }
  logLine("  -> session %016llx-%016llx", UniqueSessionId->AdapterUnique, UniqueSessionId->AdapterSpecific);
  return ERROR_SUCCESS;
}

__declspec(dllexport) ULONG WINAPI GetDevicesForIScsiSessionW(SESSION_ID *UniqueSessionId, ULONG *DeviceCount, DEVICE_ON_SESSION *Devices) {
  deviceCalls++;
  logLine("GetDevicesForIScsiSessionW session=%016llx-%016llx count=%lu devices=%s", UniqueSessionId ? UniqueSessionId->AdapterUnique : 0,
          UniqueSessionId ? UniqueSessionId->AdapterSpecific : 0, DeviceCount ? *DeviceCount : 0, Devices ? "set" : "null");
  ENTRY e[MAX_ENTRIES];
  int n = loadState(e);
  if (!UniqueSessionId || !DeviceCount) return ERROR_INVALID_PARAMETER;
  int s = findSession(e, n, UniqueSessionId);
  if (s < 0) return ISDSC_SESSION_NOT_FOUND;
  if (deviceCalls <= envInt("STANDIN_DEVICE_DELAY", 0)) {
    *DeviceCount = 0;
    return ERROR_SUCCESS;
  }
  if (*DeviceCount < 1 || !Devices) {
    *DeviceCount = 1;
    return ERROR_INSUFFICIENT_BUFFER;
  }
  memset(Devices, 0, sizeof *Devices);
  ULONG number = (ULONG)envInt("STANDIN_DEVICE_NUMBER", 5);
  MultiByteToWideChar(CP_UTF8, 0, "ROOT\\ISCSIPRT\\0000_0", -1, Devices->InitiatorName, 256);
  MultiByteToWideChar(CP_UTF8, 0, e[s].target, -1, Devices->TargetName, 224);
  Devices->ScsiAddress.Length = sizeof(SCSI_ADDR);
  Devices->ScsiAddress.PortNumber = 2;
  swprintf(Devices->LegacyName, 260, L"\\\\.\\PhysicalDrive%lu", number);
  Devices->StorageDeviceNumber.DeviceType = 7; /* FILE_DEVICE_DISK */
  Devices->StorageDeviceNumber.DeviceNumber = number;
  Devices->StorageDeviceNumber.PartitionNumber = 0;
  Devices->DeviceInstance = 1;
  *DeviceCount = 1;
  return ERROR_SUCCESS;
}

__declspec(dllexport) ULONG WINAPI ReportIScsiSessionsW(ULONG *BufferSize, ULONG *SessionCount, SESSION_INFO *SessionInfo) {
  ENTRY e[MAX_ENTRIES];
  int n = loadState(e), sessions = 0;
  size_t strings = 0;
  for (int i = 0; i < n; i++)
    if (e[i].kind == 'S') { sessions++; strings += 2 * (strlen(e[i].target) + 1) * 2 + 2 * 32; }
  ULONG need = (ULONG)(sessions * sizeof(SESSION_INFO) + strings);
  logLine("ReportIScsiSessionsW size=%lu buffer=%s sessions=%d need=%lu", BufferSize ? *BufferSize : 0, SessionInfo ? "set" : "null", sessions, need);
  if (!BufferSize || !SessionCount) return ERROR_INVALID_PARAMETER;
  if (*BufferSize < need || (!SessionInfo && need > 0)) {
    *BufferSize = need;
    return ERROR_INSUFFICIENT_BUFFER;
  }
  WCHAR *str = (WCHAR *)((char *)SessionInfo + sessions * sizeof(SESSION_INFO));
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (e[i].kind != 'S') continue;
    SESSION_INFO *s = &SessionInfo[k++];
    memset(s, 0, sizeof *s);
    s->SessionId.AdapterUnique = e[i].unique;
    s->SessionId.AdapterSpecific = e[i].specific;
    s->InitiatorName = str;
    str += MultiByteToWideChar(CP_UTF8, 0, "ROOT\\ISCSIPRT\\0000_0", -1, str, 32);
    s->TargetNodeName = str;
    str += MultiByteToWideChar(CP_UTF8, 0, e[i].target, -1, str, 256);
    s->TargetName = str;
    str += MultiByteToWideChar(CP_UTF8, 0, e[i].target, -1, str, 256);
    s->ConnectionCount = 1;
  }
  *SessionCount = (ULONG)sessions;
  *BufferSize = need;
  return ERROR_SUCCESS;
}

__declspec(dllexport) ULONG WINAPI LogoutIScsiTarget(SESSION_ID *UniqueSessionId) {
  logLine("LogoutIScsiTarget session=%016llx-%016llx", UniqueSessionId ? UniqueSessionId->AdapterUnique : 0,
          UniqueSessionId ? UniqueSessionId->AdapterSpecific : 0);
  if (!UniqueSessionId) return ERROR_INVALID_PARAMETER;
  if (envInt("STANDIN_LOGOUT_BUSY", 0)) return ISDSC_DEVICE_BUSY_ON_SESSION;
  ENTRY e[MAX_ENTRIES];
  int n = loadState(e);
  int s = findSession(e, n, UniqueSessionId);
  if (s < 0) return ISDSC_SESSION_NOT_FOUND;
  e[s] = e[n - 1];
  saveState(e, n - 1);
  return ERROR_SUCCESS;
}

__declspec(dllexport) ULONG WINAPI RemoveIScsiStaticTargetW(PWSTR TargetName) {
  char name[700];
  utf8(TargetName, name, sizeof name);
  logLine("RemoveIScsiStaticTargetW target=%s", name);
  ENTRY e[MAX_ENTRIES];
  int n = loadState(e);
  for (int i = 0; i < n; i++)
    if (e[i].kind == 'T' && !strcmp(e[i].target, name)) {
      e[i] = e[n - 1];
      saveState(e, n - 1);
      return ERROR_SUCCESS;
    }
  return ERROR_FILE_NOT_FOUND;
}

/*
 * A stand-in for the MSiSCSI service under Wine (which has none): a service that reports RUNNING until it
 * is stopped, so that the backend's advapi32 calls (OpenSCManagerW, OpenServiceW, QueryServiceStatus,
 * StartServiceW) run for real against Wine's service manager. Test-only.
 */
#include <windows.h>

static SERVICE_STATUS_HANDLE handle;
static SERVICE_STATUS status;
static HANDLE stopEvent;

static DWORD WINAPI control(DWORD code, DWORD type, void *data, void *ctx) {
  if (code == SERVICE_CONTROL_STOP || code == SERVICE_CONTROL_SHUTDOWN) {
    status.dwCurrentState = SERVICE_STOP_PENDING;
    SetServiceStatus(handle, &status);
    SetEvent(stopEvent);
  }
  return NO_ERROR;
}

static void WINAPI serviceMain(DWORD argc, LPWSTR *argv) {
  handle = RegisterServiceCtrlHandlerExW(L"MSiSCSI", control, NULL);
  stopEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
  status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
  status.dwControlsAccepted = SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN;
  status.dwCurrentState = SERVICE_RUNNING;
  SetServiceStatus(handle, &status);
  WaitForSingleObject(stopEvent, INFINITE);
  status.dwCurrentState = SERVICE_STOPPED;
  SetServiceStatus(handle, &status);
}

int main(void) {
  SERVICE_TABLE_ENTRYW table[] = {{L"MSiSCSI", serviceMain}, {NULL, NULL}};
  return StartServiceCtrlDispatcherW(table) ? 0 : 1;
}

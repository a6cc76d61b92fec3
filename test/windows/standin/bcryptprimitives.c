/*
 * Stand-in for bcryptprimitives.dll, which Wine 8 lacks: Rust's standard library (in @node-rs/crc32's
 * Windows binary) imports ProcessPrng from it. Test-only; Windows has the real one.
 * BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData) — always TRUE, per
 * https://learn.microsoft.com/en-us/windows/win32/seccng/processprng
 */
#include <windows.h>
#include <ntsecapi.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
  while (len > 0) {
    ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
    if (!RtlGenRandom(data, n)) return FALSE;
    data += n;
    len -= n;
  }
  return TRUE;
}

/*
 * A stand-in for Windows' bcryptprimitives.dll, for the tests that run the
 * Windows client under wine: Rust's standard library takes its randomness
 * from ProcessPrng, which Windows 10 and later export and wine 8 does not.
 * This one fills the buffer from RtlGenRandom (advapi32's
 * SystemFunction036), the system's own generator. Test-only: never shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

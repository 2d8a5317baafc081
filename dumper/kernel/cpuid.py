"""The CPUID instruction (x86_64), for the XSAVE layout (Intel SDM vol. 1,
13.4 "XSAVE Area"; leaf 0xD) and feature bits CRIU records.

CPUID is unprivileged, but Python cannot issue it: it is run from a
13-instruction function mapped executable in this process (never in a
target), or read from /dev/cpu/N/cpuid (the cpuid module, root) where
mapping code is not allowed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct

from .libc import MAP_FAILED, libc
from .mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE

__all__ = ["cpuid"]

# void cpuid(u32 leaf, u32 subleaf, u32 out[4]): rdi, rsi, rdx (SysV ABI)
_CODE = bytes.fromhex(
    "53"          # push rbx (callee-saved; cpuid writes it)
    "4989d0"      # mov r8, rdx
    "89f8"        # mov eax, edi
    "89f1"        # mov ecx, esi
    "0fa2"        # cpuid
    "418900"      # mov [r8], eax
    "41895804"    # mov [r8+4], ebx
    "41894808"    # mov [r8+8], ecx
    "4189500c"    # mov [r8+12], edx
    "5b"          # pop rbx
    "c3"          # ret
)


@functools.cache
def _native():
    addr = libc.mmap(None, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr in (None, MAP_FAILED):
        return None
    ctypes.memmove(addr, _CODE, len(_CODE))
    if libc.mprotect(addr, 4096, PROT_READ | PROT_EXEC) != 0:
        libc.munmap(addr, 4096)
        return None
    return ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(addr)


@functools.cache
def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """``(eax, ebx, ecx, edx)`` of CPUID ``leaf``/``subleaf`` on this CPU.

    Raises OSError when neither way works (not x86, no exec mappings and
    no /dev/cpu/0/cpuid).
    """
    fn = _native()
    if fn is not None:
        out = (ctypes.c_uint32 * 4)()
        fn(leaf, subleaf, out)
        return tuple(out)
    fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return struct.unpack("<4I", os.pread(fd, 16, leaf | (subleaf << 32)))
    finally:
        os.close(fd)

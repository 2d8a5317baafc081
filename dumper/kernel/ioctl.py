"""ioctl request numbers, derived as include/uapi/asm-generic/ioctl.h does.

This is the asm-generic layout used by x86_64, arm64 and riscv64 (not
powerpc, mips, sparc, which have their own _IOC_* widths).
"""

from __future__ import annotations

import ctypes

__all__ = ["IOC", "IO", "IOR", "IOW", "IOWR", "IOC_NONE", "IOC_WRITE", "IOC_READ"]

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2


def IOC(direction: int, type_: int | str, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``; ``type_`` may be a one-character string."""
    if isinstance(type_, str):
        type_ = ord(type_)
    assert 0 <= direction < (1 << _IOC_DIRBITS)
    assert 0 <= type_ < (1 << _IOC_TYPEBITS)
    assert 0 <= nr < (1 << _IOC_NRBITS)
    assert 0 <= size < (1 << _IOC_SIZEBITS)
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def IO(type_: int | str, nr: int) -> int:
    return IOC(IOC_NONE, type_, nr, 0)


def IOR(type_: int | str, nr: int, ctype: type) -> int:
    return IOC(IOC_READ, type_, nr, ctypes.sizeof(ctype))


def IOW(type_: int | str, nr: int, ctype: type) -> int:
    return IOC(IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


def IOWR(type_: int | str, nr: int, ctype: type) -> int:
    return IOC(IOC_READ | IOC_WRITE, type_, nr, ctypes.sizeof(ctype))

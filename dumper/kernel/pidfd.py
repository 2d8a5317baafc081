"""pidfd_open(2) (Linux 5.3) and pidfd_getfd(2) (Linux 5.6).

``pidfd_getfd(pidfd, fd)`` installs, in the caller, a new descriptor for
the *same open file description* the target has at ``fd`` (like a dup
across processes; close-on-exec set). It needs PTRACE_MODE_ATTACH_REALCREDS
on the target and does not change the target's descriptor table. Reading
through it shares the file position with the target, so callers use pread,
tee or fcntl/ioctl queries only.
"""

from __future__ import annotations

import os

import ctypes

from .libc import check, libc
from .x86_64 import NR_pidfd_getfd

__all__ = ["pidfd_open", "pidfd_getfd"]


def pidfd_open(pid: int, flags: int = 0) -> int:
    """A pidfd for ``pid`` (O_CLOEXEC); OSError (ESRCH...) on failure."""
    return os.pidfd_open(pid, flags)


def pidfd_getfd(pidfd: int, targetfd: int, flags: int = 0) -> int:
    """Our own descriptor for the target's ``targetfd``; OSError on failure
    (EBADF: no such descriptor; EPERM: ptrace access denied; ENOSYS: < 5.6)."""
    return check(libc.syscall(NR_pidfd_getfd, ctypes.c_int(pidfd), ctypes.c_int(targetfd), ctypes.c_uint(flags)),
                 "pidfd_getfd")

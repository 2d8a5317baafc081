"""kcmp(2): mirror of include/uapi/linux/kcmp.h (Linux 3.5, CONFIG_KCMP).

``kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)`` tells whether two descriptors
name the same open file description (dup(2), fork(2), SCM_RIGHTS). The
answer is an ordering of the kernel objects (0 equal, 1 less, 2 greater),
consistent for one boot, so it can sort. Needs PTRACE_MODE_READ on both
processes.
"""

from __future__ import annotations

from .libc import syscall
from .x86_64 import NR_kcmp

__all__ = ["KCMP_FILE", "KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND", "KCMP_IO", "KCMP_SYSVSEM",
           "KCMP_EQ", "KCMP_LT", "KCMP_GT", "kcmp"]

# enum kcmp_type
KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6

# Results (kernel/kcmp.c kcmp_ptr): 3 only for unordered, never for KCMP_FILE.
KCMP_EQ = 0
KCMP_LT = 1
KCMP_GT = 2


def kcmp(pid1: int, pid2: int, type_: int, idx1: int = 0, idx2: int = 0) -> int:
    """Raw kcmp; OSError (EBADF: no such descriptor, ESRCH, EPERM) on failure."""
    return syscall(NR_kcmp, pid1, pid2, type_, idx1, idx2)

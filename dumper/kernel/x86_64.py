"""x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).

The one architecture-specific module: anything that names a syscall number or
a register layout lives here.
"""

from __future__ import annotations

import platform

ARCH = platform.machine()

NR_mmap = 9
NR_munmap = 11
NR_ioctl = 16
NR_userfaultfd = 323
NR_pidfd_open = 434
NR_pidfd_getfd = 438
NR_process_madvise = 440

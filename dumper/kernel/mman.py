"""Memory-mapping constants: include/uapi/asm-generic/mman-common.h and
include/uapi/linux/mman.h (x86_64 values)."""

from __future__ import annotations

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000
MAP_DROPPABLE = 0x08  # 6.12

MADV_DONTNEED = 4
MADV_DONTFORK = 10  # 2.6.16: a child of fork() does not inherit the range
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_PAGEOUT = 21  # 5.4
MADV_GUARD_INSTALL = 102  # 6.13
MADV_GUARD_REMOVE = 103  # 6.13
MADV_POPULATE_WRITE = 23  # 5.14: fault pages in writable, as a write would

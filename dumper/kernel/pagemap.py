"""Bits of a /proc/PID/pagemap entry (Documentation/admin-guide/mm/pagemap.rst,
fs/proc/task_mmu.c ``PM_*``). One little-endian u64 per virtual page at file
offset ``vaddr // PAGE_SIZE * 8``.
"""

from __future__ import annotations

__all__ = [
    "PM_ENTRY_BYTES",
    "PM_PFRAME_BITS",
    "PM_PFRAME_MASK",
    "PM_SOFT_DIRTY",
    "PM_MMAP_EXCLUSIVE",
    "PM_UFFD_WP",
    "PM_GUARD_REGION",
    "PM_FILE",
    "PM_SWAP",
    "PM_PRESENT",
    "KPF_ZERO_PAGE",
]

PM_ENTRY_BYTES = 8
PM_PFRAME_BITS = 55
PM_PFRAME_MASK = (1 << PM_PFRAME_BITS) - 1  # PFN if present (0 without CAP_SYS_ADMIN, 4.2+)
PM_SOFT_DIRTY = 1 << 55  # 3.11
PM_MMAP_EXCLUSIVE = 1 << 56  # 4.2
PM_UFFD_WP = 1 << 57  # 5.13: PTE (or marker) is uffd write-protected
PM_GUARD_REGION = 1 << 58  # 6.15: MADV_GUARD_INSTALL marker
PM_FILE = 1 << 61  # 3.5: file page or shared anon
PM_SWAP = 1 << 62  # any non-present entry: swap, migration, pte markers
PM_PRESENT = 1 << 63

# /proc/kpageflags bit (include/uapi/linux/kernel-page-flags.h, 4.0):
# the zero page or the huge zero folio.
KPF_ZERO_PAGE = 24

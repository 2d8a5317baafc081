"""PAGEMAP_SCAN and renameat2 flags: mirror of include/uapi/linux/fs.h.

PAGEMAP_SCAN is Linux >= 6.7; RENAME_* are Linux >= 3.15.

Category bits SOFT_DIRTY (bit 7) arrived in 6.8 and GUARD (bit 8) in 6.16;
an older kernel answers EINVAL for a bit it does not know, which is how
support is probed.
"""

from __future__ import annotations

import ctypes

from .ioctl import IOWR

__all__ = [
    "page_region",
    "pm_scan_arg",
    "PAGEMAP_SCAN",
    "PM_SCAN_WP_MATCHING",
    "PM_SCAN_CHECK_WPASYNC",
    "PAGE_IS_WPALLOWED",
    "PAGE_IS_WRITTEN",
    "PAGE_IS_FILE",
    "PAGE_IS_PRESENT",
    "PAGE_IS_SWAPPED",
    "PAGE_IS_PFNZERO",
    "PAGE_IS_HUGE",
    "PAGE_IS_SOFT_DIRTY",
    "PAGE_IS_GUARD",
    "RENAME_NOREPLACE",
    "RENAME_EXCHANGE",
]

# Page categories (struct page_region.categories, and the four masks).
PAGE_IS_WPALLOWED = 1 << 0  # 6.7: VMA has uffd WP-async with markers
PAGE_IS_WRITTEN = 1 << 1  # 6.7: not uffd write-protected
PAGE_IS_FILE = 1 << 2  # 6.7: page cache / shmem page, not anonymous
PAGE_IS_PRESENT = 1 << 3  # 6.7
PAGE_IS_SWAPPED = 1 << 4  # 6.7: any non-present, non-none PTE (swap, markers)
PAGE_IS_PFNZERO = 1 << 5  # 6.7: the shared zero page
PAGE_IS_HUGE = 1 << 6  # 6.7: PMD-mapped THP or hugetlb
PAGE_IS_SOFT_DIRTY = 1 << 7  # 6.8
PAGE_IS_GUARD = 1 << 8  # 6.16: MADV_GUARD_INSTALL marker

# pm_scan_arg.flags
PM_SCAN_WP_MATCHING = 1 << 0  # write-protect the pages that matched
PM_SCAN_CHECK_WPASYNC = 1 << 1  # EPERM if a VMA lacks uffd WP-async


class page_region(ctypes.Structure):
    """One output run: ``[start, end)`` byte addresses with ``categories``."""

    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("categories", ctypes.c_uint64),
    ]


class pm_scan_arg(ctypes.Structure):
    """Argument of ``ioctl(pagemap_fd, PAGEMAP_SCAN, &arg)``; 96 bytes."""

    _fields_ = [
        ("size", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("walk_end", ctypes.c_uint64),
        ("vec", ctypes.c_uint64),
        ("vec_len", ctypes.c_uint64),
        ("max_pages", ctypes.c_uint64),
        ("category_inverted", ctypes.c_uint64),
        ("category_mask", ctypes.c_uint64),
        ("category_anyof_mask", ctypes.c_uint64),
        ("return_mask", ctypes.c_uint64),
    ]


PAGEMAP_SCAN = IOWR("f", 16, pm_scan_arg)


# renameat2(2) flags (3.15). Each file system opts in: ext4, xfs, btrfs, tmpfs
# and overlayfs have both; others (NFS, older FUSE) answer EINVAL.
RENAME_NOREPLACE = 1 << 0  # fail with EEXIST instead of replacing the target
RENAME_EXCHANGE = 1 << 1  # swap the two entries atomically; both must exist

"""userfaultfd: mirror of include/uapi/linux/userfaultfd.h.

WP_ASYNC (with PAGEMAP_SCAN reporting PAGE_IS_WRITTEN) is Linux >= 6.7;
WP_UNPOPULATED is 6.4; write-protect mode itself is 5.7.
"""

from __future__ import annotations

import ctypes

from .ioctl import IOR, IOWR

UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1  # 5.11: flag to userfaultfd(2)

UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2

UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0

_UFFDIO_REGISTER = 0x00
_UFFDIO_UNREGISTER = 0x01
_UFFDIO_WRITEPROTECT = 0x06
_UFFDIO_API = 0x3F


class uffdio_api(ctypes.Structure):
    _fields_ = [
        ("api", ctypes.c_uint64),
        ("features", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    ]


class uffdio_range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):
    _fields_ = [
        ("range", uffdio_range),
        ("mode", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    ]


class uffdio_writeprotect(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64)]


UFFDIO_API = IOWR(UFFD_API, _UFFDIO_API, uffdio_api)
UFFDIO_REGISTER = IOWR(UFFD_API, _UFFDIO_REGISTER, uffdio_register)
UFFDIO_UNREGISTER = IOR(UFFD_API, _UFFDIO_UNREGISTER, uffdio_range)
UFFDIO_WRITEPROTECT = IOWR(UFFD_API, _UFFDIO_WRITEPROTECT, uffdio_writeprotect)

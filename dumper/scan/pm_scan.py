"""One ``ioctl(PAGEMAP_SCAN)`` call (include/uapi/linux/fs.h, Linux 6.7).

Apart from the backend (:mod:`dumper.scan.ioctl`) so that the kernel probes
and ``dumper check`` use it without loading numpy.
"""

from __future__ import annotations

import ctypes
import errno

from ..kernel import fs
from ..kernel.libc import libc
from .categories import KernelMasks

__all__ = ["pagemap_scan"]


def pagemap_scan(
    fd: int,
    start: int,
    end: int,
    masks: KernelMasks,
    vec: ctypes.Array | None,
    max_pages: int = 0,
    flags: int = 0,
) -> tuple[int, int]:
    """Issue one ``ioctl(fd, PAGEMAP_SCAN)``; returns (regions written, walk_end).

    Raises OSError with the kernel's errno (EINVAL for unknown category bits
    or flags, EFAULT for a range past the address space, EPERM for
    PM_SCAN_CHECK_WPASYNC over a VMA without WP-async).
    """
    arg = fs.pm_scan_arg(
        size=ctypes.sizeof(fs.pm_scan_arg),
        flags=flags,
        start=start,
        end=end,
        vec=ctypes.addressof(vec) if vec is not None else 0,
        vec_len=len(vec) if vec is not None else 0,
        max_pages=max_pages,
        category_inverted=masks.category_inverted,
        category_mask=masks.category_mask,
        category_anyof_mask=masks.category_anyof_mask,
        return_mask=masks.return_mask,
    )
    ret = libc.ioctl(fd, fs.PAGEMAP_SCAN, ctypes.byref(arg))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioctl(PAGEMAP_SCAN): {errno.errorcode.get(err, err)}")
    return ret, arg.walk_end

"""Scanner backend: the PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux >= 6.7).

The walk happens in the kernel and skips unpopulated page tables, so a hole in
a sparse reservation costs O(1) whatever its size. The output vector is a
fixed 512 regions (12 KiB), refilled from ``walk_end``.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from ..errors import KernelError, ScanError, UnsupportedKernel
from ..kernel import fs
from ..proc.process import Process
from .base import REGION_DTYPE, Backend
from .categories import Category
from .pm_scan import pagemap_scan

__all__ = ["IoctlBackend", "pagemap_scan"]

# The kernel bounces regions through a 512-entry buffer (PAGEMAP_WALK_SIZE >>
# PAGE_SHIFT); asking for more per call buys nothing and exposes a stale
# walk_end (see scan_range).
VEC_LEN_MAX = 512


class IoctlBackend(Backend):
    """PAGEMAP_SCAN on one process's pagemap file.

    Raises UnsupportedKernel on kernels without the ioctl (ENOTTY before 6.7,
    EINVAL for the command itself), ZombieProcess / NoMemoryMap for a process
    without an mm, AccessDenied without PTRACE_MODE_READ.
    """

    name = "ioctl"

    def __init__(self, process: Process, supported: Category | None = None) -> None:
        from .features import probe_scan_categories  # late: features imports us

        self.process = process
        process.check_has_mm()
        self.supported = supported if supported is not None else probe_scan_categories()
        if not self.supported:
            raise UnsupportedKernel("PAGEMAP_SCAN", "the ioctl is missing (needs Linux 6.7)")
        self.fd = process.open("pagemap")
        self._vec = (fs.page_region * VEC_LEN_MAX)()
        self._view = np.frombuffer(self._vec, dtype=REGION_DTYPE)

    def why_unsupported(self, missing: Category) -> str:
        notes = []
        if missing & Category.SOFT_DIRTY:
            notes.append("SOFT_DIRTY needs Linux 6.8")
        if missing & Category.GUARD:
            notes.append("GUARD needs Linux 6.16")
        return "; ".join(notes) or "the kernel rejects these bits (EINVAL)"

    def scan_once(self, start, end, masks, vec_len, max_pages):
        vec = self._vec if vec_len >= VEC_LEN_MAX else (fs.page_region * vec_len).from_buffer(self._vec)
        try:
            n, walk_end = pagemap_scan(self.fd, start, end, masks, vec, max_pages)
        except OSError as err:
            if err.errno == errno.EFAULT:
                raise ScanError(f"range [{start:#x}, {end:#x}) is outside the user address space") from err
            if err.errno in (errno.ENOTTY,):
                raise UnsupportedKernel("PAGEMAP_SCAN", "needs Linux 6.7") from err
            raise KernelError(err.errno, "ioctl(PAGEMAP_SCAN)", f"pid {self.process.pid}") from err
        return self._view[:n].copy(), walk_end

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

"""uffd-wp write tracking armed inside the target (include/uapi/linux/userfaultfd.h,
Documentation/admin-guide/mm/userfaultfd.rst "Write Protect Notifications",
fs/proc/task_mmu.c PAGEMAP_SCAN; Linux >= 6.7 for WP_ASYNC).

A userfaultfd is bound to the mm of the process that creates it, so the
frozen target is made to create one (syscalls injected with ptrace, see
:mod:`dumper.proc.inject`), in WP_ASYNC + WP_UNPOPULATED mode, and to
register its private VMAs with UFFDIO_REGISTER_MODE_WP. From then on the
kernel clears the uffd-wp bit of a page on its first write, without any
fault reaching a reader: PAGEMAP_SCAN reports the page as WRITTEN.

Resetting ("write-protect everything again") is one PAGEMAP_SCAN call with
PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC over the pages that exist
(any-of PRESENT|SWAPPED): restricting the match keeps the kernel from
installing uffd-wp markers into unpopulated page tables, which for a 16 TiB
sparse reservation would allocate gigabytes of page tables.

What a tracked page can be, as PAGEMAP_SCAN sees it:

* PRESENT|WRITTEN or SWAPPED|WRITTEN — written since the last reset: dump it;
* PRESENT or SWAPPED without WRITTEN — unchanged: its data is in the parent;
* a uffd-wp *marker* (an unpopulated PTE kept write-protected, e.g. after
  MADV_DONTNEED of a protected page) reads SWAPPED without WRITTEN too, but
  holds no data: it reads as zeros. Markers are told apart from real swap
  entries by their pagemap entry (the kernel's pte-marker swap type).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import KernelError, UnsupportedKernel
from ..kernel import fs, mman, userfaultfd as uffd
from ..kernel.libc import PAGE_SIZE
from ..kernel.pagemap import PM_PFRAME_MASK, PM_SWAP, PM_UFFD_WP
from ..kernel.x86_64 import NR_close, NR_ioctl, NR_mmap, NR_munmap, NR_userfaultfd
from ..proc.freeze import Freezer
from ..proc.inject import Injector
from ..scan.categories import Category, KernelMasks
from ..scan.ioctl import pagemap_scan

__all__ = ["UffdTracking", "arm", "register", "reset", "disarm", "find_uffd", "marker_mask"]

# PTE_MARKER_UFFD_WP encoded as a swap entry in pagemap: swap type bits 0-4
# all set (SWP_PTE_MARKER, the last swap type), offset 1 (include/linux/
# swapops.h). Measured on 6.18; checked again by tests.
_SWP_TYPE_BITS = 5
_MARKER_TYPE = (1 << _SWP_TYPE_BITS) - 1
_PTE_MARKER_UFFD_WP = 1


@dataclass(slots=True)
class UffdTracking:
    """What was armed: the target's fd number and the ranges registered.

    ``ranges`` are ``(start, end)`` byte pairs, end-exclusive; ``failed``
    the VMAs the kernel refused to register (they are always dumped whole).
    """

    fd: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    failed: list[tuple[int, int, int]] = field(default_factory=list)  # start, end, errno


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise KernelError(-ret, what, "inside the target")
    return ret


def _poke(freezer: Freezer, addr: int, data: bytes) -> None:
    fd = freezer.process.open("mem", os.O_RDWR)
    try:
        with freezer.process.translate("mem"):
            os.pwrite(fd, data, addr)
    finally:
        os.close(fd)


def _peek(freezer: Freezer, addr: int, size: int) -> bytes:
    fd = freezer.process.open("mem")
    try:
        with freezer.process.translate("mem"):
            return os.pread(fd, size, addr)
    finally:
        os.close(fd)


def _scratch(inj: Injector) -> int:
    return _check(inj.syscall(NR_mmap, 0, PAGE_SIZE, mman.PROT_READ | mman.PROT_WRITE,
                              mman.MAP_PRIVATE | mman.MAP_ANONYMOUS, -1, 0), "mmap(scratch)")


def _register(freezer: Freezer, inj: Injector, scratch: int, state: UffdTracking,
              ranges: list[tuple[int, int]]) -> None:
    for start, end in ranges:
        reg = uffd.uffdio_register(range=uffd.uffdio_range(start, end - start), mode=uffd.UFFDIO_REGISTER_MODE_WP)
        _poke(freezer, scratch, bytes(reg))
        ret = inj.syscall(NR_ioctl, state.fd, uffd.UFFDIO_REGISTER, scratch)
        if ret < 0:
            state.failed.append((start, end, -ret))
        else:
            state.ranges.append((start, end))


def arm(freezer: Freezer, ranges: list[tuple[int, int]], *, protect: bool = True) -> UffdTracking:
    """Make the frozen target create a WP_ASYNC userfaultfd and register ``ranges``.

    Then, with ``protect``, write-protects every existing page (:func:`reset`).
    The injected calls let the thread back into user mode for an instant,
    where the kernel may update its rseq area: a dump injects *before* it
    scans and reads, and protects after. Raises
    UnsupportedKernel when userfaultfd or WP_ASYNC is missing, KernelError
    for other failures inside the target. The scratch page used for the
    ioctl arguments is unmapped again before returning.
    """
    with Injector(freezer) as inj:
        fd = inj.syscall(NR_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
        if fd < 0:
            raise UnsupportedKernel("userfaultfd", os.strerror(-fd))
        scratch = _scratch(inj)
        try:
            want = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED
            _poke(freezer, scratch, bytes(uffd.uffdio_api(api=uffd.UFFD_API, features=want)))
            ret = inj.syscall(NR_ioctl, fd, uffd.UFFDIO_API, scratch)
            if ret < 0:
                inj.syscall(NR_close, fd)
                raise UnsupportedKernel("userfaultfd WP_ASYNC", f"UFFDIO_API: {os.strerror(-ret)} (needs Linux 6.7)")
            state = UffdTracking(fd)
            _register(freezer, inj, scratch, state, ranges)
        finally:
            inj.syscall(NR_munmap, scratch, PAGE_SIZE)
    if protect:
        reset(freezer.pid, state.ranges)
    return state


def register(freezer: Freezer, state: UffdTracking, ranges: list[tuple[int, int]], *,
             protect: bool = True) -> None:
    """Register more ranges (new VMAs) with the target's existing userfaultfd
    and, with ``protect``, write-protect them; ``state`` is updated."""
    if not ranges:
        return
    with Injector(freezer) as inj:
        scratch = _scratch(inj)
        try:
            before = len(state.ranges)
            _register(freezer, inj, scratch, state, ranges)
        finally:
            inj.syscall(NR_munmap, scratch, PAGE_SIZE)
    if protect:
        reset(freezer.pid, state.ranges[before:])


def reset(pid: int, ranges: list[tuple[int, int]]) -> None:
    """Write-protect every existing page of ``ranges`` again.

    PAGEMAP_SCAN with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, matching
    WRITTEN pages that are PRESENT or SWAPPED. An output vector is passed on
    purpose: without one the kernel takes a fast path that ignores the masks
    and puts a uffd-wp marker into every empty PTE of the page tables it
    walks (fs/proc/task_mmu.c ``pagemap_scan_pmd_entry``), and markers read as
    SWAPPED pages. EPERM -> a range is no longer registered (KernelError).
    """
    masks = KernelMasks(category_mask=int(Category.WRITTEN), category_inverted=0,
                        category_anyof_mask=int(Category.PRESENT | Category.SWAPPED), return_mask=0)
    vec = (fs.page_region * 512)()
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, end in ranges:
            pos = start
            while pos < end:
                try:
                    n, walk_end = pagemap_scan(fd, pos, end, masks, vec, 0,
                                               fs.PM_SCAN_WP_MATCHING | fs.PM_SCAN_CHECK_WPASYNC)
                except OSError as err:
                    raise KernelError(err.errno, "ioctl(PAGEMAP_SCAN, WP_MATCHING)",
                                      f"[{start:#x}, {end:#x}) of pid {pid}") from err
                if n:
                    walk_end = max(walk_end, vec[n - 1].end)
                if walk_end <= pos:
                    raise KernelError(errno.EAGAIN, "ioctl(PAGEMAP_SCAN, WP_MATCHING)", "no progress")
                pos = walk_end
    finally:
        os.close(fd)


def disarm(freezer: Freezer, tracking: UffdTracking) -> None:
    """Unregister the ranges and close the target's userfaultfd."""
    with Injector(freezer) as inj:
        scratch = _scratch(inj)
        try:
            for start, end in tracking.ranges:
                _poke(freezer, scratch, bytes(uffd.uffdio_range(start, end - start)))
                inj.syscall(NR_ioctl, tracking.fd, uffd.UFFDIO_UNREGISTER, scratch)
        finally:
            inj.syscall(NR_munmap, scratch, PAGE_SIZE)
        inj.syscall(NR_close, tracking.fd)


def find_uffd(pid: int, fd: int) -> bool:
    """True if the target's descriptor ``fd`` is still a userfaultfd."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]"
    except OSError:
        return False


def marker_mask(pid: int, runs: list[tuple[int, int]]) -> list[np.ndarray]:
    """For each ``(vaddr, nr_pages)`` run, a bool array: True where the page
    is only a uffd-wp marker (no data). Reads pagemap entries of those runs
    only (they are the few SWAPPED pages a scan returned)."""
    out = []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for vaddr, n in runs:
            e = np.frombuffer(os.pread(fd, n * 8, vaddr // PAGE_SIZE * 8), dtype="<u8")
            frame = e & np.uint64(PM_PFRAME_MASK)
            out.append(((e & np.uint64(PM_SWAP)) != 0)
                       & ((frame & np.uint64(_MARKER_TYPE)) == _MARKER_TYPE)
                       & ((frame >> np.uint64(_SWP_TYPE_BITS)) == _PTE_MARKER_UFFD_WP))
    finally:
        os.close(fd)
    return out

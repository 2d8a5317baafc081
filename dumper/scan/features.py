"""Probe, for real, what the running kernel offers (like ``criu check``).

Every probe works on scratch memory of the dumper's own process and cleans
up after itself; results are cached for the life of the process.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from dataclasses import asdict, dataclass

from ..kernel import fs, mman, userfaultfd as uffd
from ..kernel.libc import PAGE_SIZE, libc
from ..kernel.pagemap import KPF_ZERO_PAGE, PM_GUARD_REGION, PM_PFRAME_MASK, PM_PRESENT, PM_SOFT_DIRTY
from ..kernel.x86_64 import NR_userfaultfd
from .categories import Category, KernelMasks

__all__ = [
    "probe_scan_categories",
    "PagemapInfo",
    "probe_pagemap",
    "probe_soft_dirty",
    "probe_guard_vmflag",
    "probe_uffd_wp_async",
    "kernel_features",
    "ScanCosts",
    "probe_scan_costs",
]

HPAGE_PMD_SIZE = 2 << 20


class _Scratch:
    """An anonymous private mapping in our own process, unmapped on exit."""

    def __init__(self, size: int, align: int = PAGE_SIZE) -> None:
        self.map_size = size + align
        raw = libc.mmap(None, self.map_size, mman.PROT_READ | mman.PROT_WRITE,
                        mman.MAP_PRIVATE | mman.MAP_ANONYMOUS | mman.MAP_NORESERVE, -1, 0)
        if raw in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap scratch")
        self.raw = raw
        self.addr = -(-raw // align) * align
        self.size = size

    def touch_read(self, offset: int = 0) -> None:
        ctypes.c_char.from_address(self.addr + offset).value  # noqa: B018 - fault in

    def touch_write(self, offset: int = 0, value: bytes = b"\x01") -> None:
        ctypes.memmove(self.addr + offset, value, len(value))

    def madvise(self, advice: int, offset: int = 0, length: int | None = None) -> int:
        return libc.madvise(self.addr + offset, length or self.size, advice)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        libc.munmap(self.raw, self.map_size)


def _own_pagemap_entry(addr: int) -> int:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int.from_bytes(os.pread(fd, 8, addr // PAGE_SIZE * 8), "little")
    finally:
        os.close(fd)


@functools.cache
def probe_scan_categories() -> Category:
    """Category bits PAGEMAP_SCAN accepts here; 0 when the ioctl is missing.

    Each bit is tried alone as ``return_mask``: unknown bits give EINVAL
    (SOFT_DIRTY arrived in 6.8, GUARD in 6.16); a kernel before 6.7 gives
    ENOTTY (or EINVAL) for the command itself.
    """
    from .pm_scan import pagemap_scan

    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        vec = (fs.page_region * 1)()
        try:
            pagemap_scan(fd, 0, 0, KernelMasks(0, 0, 0, int(Category.PRESENT)), vec)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOTTY):
                return Category(0)
            raise
        accepted = Category(0)
        for cat in Category:
            try:
                pagemap_scan(fd, 0, 0, KernelMasks(0, 0, 0, int(cat)), vec)
                accepted |= cat
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
        return accepted
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class PagemapInfo:
    """What /proc/PID/pagemap entries reveal on this kernel.

    ``zero_pfn`` is the PFN of the shared zero page and ``huge_zero_pfn`` the
    first PFN of the huge zero folio (HPAGE_PMD_SIZE long), or None when not
    seen. ``guard`` is "reported" (bit 58, 6.15+), "absent" (the kernel has no
    guard regions, so none can exist) or "unreported" (guards exist but
    pagemap cannot show them).
    """

    pfn_visible: bool
    zero_pfn: int | None
    huge_zero_pfn: int | None
    guard: str


def _kpageflags_has_zero(pfn: int) -> bool:
    try:
        fd = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        flags = int.from_bytes(os.pread(fd, 8, pfn * 8), "little")
    finally:
        os.close(fd)
    return bool(flags >> KPF_ZERO_PAGE & 1)


@functools.cache
def probe_pagemap() -> PagemapInfo:
    """Probe PFN visibility, the zero page PFNs, and guard reporting."""
    with _Scratch(PAGE_SIZE) as s:
        s.touch_read()
        e = _own_pagemap_entry(s.addr)
    pfn_visible = bool(e & PM_PRESENT) and bool(e & PM_PFRAME_MASK)
    zero_pfn = (e & PM_PFRAME_MASK) if pfn_visible else None

    huge_zero = None
    if pfn_visible:
        with _Scratch(HPAGE_PMD_SIZE, align=HPAGE_PMD_SIZE) as s:
            if s.madvise(mman.MADV_HUGEPAGE) == 0:
                s.touch_read()
                e = _own_pagemap_entry(s.addr)
                pfn = e & PM_PFRAME_MASK
                if e & PM_PRESENT and pfn != zero_pfn and _kpageflags_has_zero(pfn):
                    huge_zero = pfn

    with _Scratch(PAGE_SIZE) as s:
        if s.madvise(mman.MADV_GUARD_INSTALL) != 0:
            guard = "absent"
        else:
            guard = "reported" if _own_pagemap_entry(s.addr) & PM_GUARD_REGION else "unreported"
    return PagemapInfo(pfn_visible, zero_pfn, huge_zero, guard)


@functools.cache
def probe_guard_vmflag() -> bool:
    """True if smaps names the VMAs that ever held a guard marker (VmFlags
    ``gu``, VM_MAYBE_GUARD): then a VMA without it holds none. False where
    the kernel has no guard regions or does not say (6.13 to 6.17)."""
    with _Scratch(2 * PAGE_SIZE) as s:
        if s.madvise(mman.MADV_GUARD_INSTALL, 0, PAGE_SIZE) != 0:
            return False
        with open("/proc/self/smaps", "rb") as f:
            inside = False
            for line in f:
                if line[:1] in b"0123456789abcdef" and b"-" in line.split(b" ", 1)[0]:
                    lo, _, hi = line.split(b" ", 1)[0].partition(b"-")
                    inside = int(lo, 16) <= s.addr < int(hi, 16)
                elif inside and line.startswith(b"VmFlags:"):
                    return b"gu" in line.split()[1:]
    return False


@functools.cache
def probe_soft_dirty() -> bool:
    """True if soft-dirty tracking really works (clear_refs "4", write, bit 55).

    Needs CONFIG_MEM_SOFT_DIRTY (x86_64, ppc64, s390; never arm64).
    """
    with _Scratch(PAGE_SIZE) as s:
        s.touch_write()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("4")
        except OSError:
            return False
        if _own_pagemap_entry(s.addr) & PM_SOFT_DIRTY:
            return False  # clearing did nothing
        s.touch_write(0, b"\x02")
        return bool(_own_pagemap_entry(s.addr) & PM_SOFT_DIRTY)


@functools.cache
def probe_uffd_wp_async() -> bool:
    """True if userfaultfd offers WP_ASYNC + WP_UNPOPULATED (6.7+)."""
    try:
        fd = libc.syscall(NR_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
    except OSError:
        return False
    if fd < 0:
        return False
    try:
        api = uffd.uffdio_api(api=uffd.UFFD_API,
                              features=uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED)
        return libc.ioctl(fd, uffd.UFFDIO_API, ctypes.byref(api)) == 0
    finally:
        os.close(fd)


def _swap_devices() -> list[dict]:
    out = []
    try:
        with open("/proc/swaps", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 4:
            out.append({"name": os.fsdecode(parts[0]), "type": parts[1].decode(),
                        "size_kib": int(parts[2]), "used_kib": int(parts[3])})
    return out


def _read_sys(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def kernel_features() -> dict:
    """Everything ``dumper check`` reports, as a JSON-ready dict."""
    scan = probe_scan_categories()
    pm = probe_pagemap()
    return {
        "kernel": os.uname().release,
        "machine": os.uname().machine,
        "page_size": PAGE_SIZE,
        "pagemap_scan": bool(scan),
        "pagemap_scan_categories": Category.names(scan),
        "pagemap": asdict(pm),
        "soft_dirty": probe_soft_dirty(),
        "uffd_wp_async": probe_uffd_wp_async(),
        "swap": {"devices": _swap_devices(), "swapon_possible": os.geteuid() == 0},
        "thp": {
            "enabled": _read_sys("/sys/kernel/mm/transparent_hugepage/enabled"),
            "use_zero_page": _read_sys("/sys/kernel/mm/transparent_hugepage/use_zero_page"),
        },
    }


@dataclass(frozen=True, slots=True)
class ScanCosts:
    """Seconds a scanner backend was measured to spend here: per scan
    (setting up the walk), per VMA of the target (beyond listing it), per
    page of a hole, and per populated page (the kernel's walk and our
    decoding); for the pagemap reader also per page of a VMA it pre-filters
    with mincore (:mod:`dumper.proc.residency`; 0: not measured)."""

    per_scan: float
    per_vma: float
    per_hole_page: float
    per_present_page: float
    per_mincore_page: float = 0.0


@functools.cache
def _per_unit(times: tuple[float, float], sizes: tuple[int, int], fixed: float) -> float:
    """Seconds per unit from two walks of ``sizes`` units taking ``times``.
    Their difference frees the figure of fixed costs; when a busy machine
    makes the larger walk no slower (the figure came out 0 and no long freeze
    was announced), the larger walk alone, less ``fixed``: an over- rather
    than an under-estimate."""
    if times[1] > times[0]:
        return (times[1] - times[0]) / (sizes[1] - sizes[0])
    return max(times[1] - fixed, times[1] / 2) / sizes[1]


def probe_scan_costs(backend: str) -> ScanCosts:
    """Time ``backend`` ("ioctl" or "pagemap") on scratch memory of our own
    process: holes of 2 and 8 GiB, and 4 and 16 MiB written (the
    differences give per-page costs free of the fixed ones), one page, and
    128 one-page VMAs. Each figure is the best of two, so a busy machine
    inflates it least; the probe takes 30-100 ms for the pagemap reader (it
    walks 40 MiB of entries; ~10x that on a TCG guest), once per process.
    """
    import time

    from ..proc.maps import Vma
    from ..proc.process import Process
    from .categories import ScanMasks

    if backend == "ioctl":
        from .ioctl import IoctlBackend

        def open_be():
            return IoctlBackend(Process(os.getpid()))
    else:
        from .pagemap import PagemapBackend

        def open_be():
            return PagemapBackend(Process(os.getpid()), progress=False)

    small_hole, big_hole, small_present, present_bytes, small = 2 << 30, 8 << 30, 4 << 20, 16 << 20, 64
    kmasks = ScanMasks(anyof=Category.PRESENT | Category.SWAPPED, returned=Category(0)).to_kernel()

    def walk(be, start: int, end: int, vmas: list) -> float:
        best = float("inf")
        for _ in range(2):
            be.prepare(vmas)
            try:
                t0 = time.perf_counter()
                pos = start
                while pos < end:
                    arr, pos = be.scan_once(pos, end, kmasks, 512, 0)
                best = min(best, time.perf_counter() - t0)
            finally:
                be.finish()
        return best

    def mincore(addr: int, size: int) -> float:
        """Best of two mincore passes over ``size`` bytes, 1 MiB of vector at a
        time, each scanned for resident pages as the residency pre-filter does."""
        import numpy as np

        from ..proc.residency import _runs

        vec = np.zeros(1 << 20, np.uint8)
        step = len(vec) * PAGE_SIZE
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            for pos in range(addr, addr + size, step):
                n = min(len(vec), (addr + size - pos) // PAGE_SIZE)
                if libc.mincore(ctypes.c_void_p(pos), ctypes.c_size_t(n * PAGE_SIZE),
                                ctypes.c_void_p(vec.ctypes.data)) != 0:
                    return 0.0
                _runs(vec[:n], pos)
            best = min(best, time.perf_counter() - t0)
        return best

    with _Scratch(present_bytes + big_hole + 2 * small * PAGE_SIZE, align=HPAGE_PMD_SIZE) as s:
        s.madvise(mman.MADV_NOHUGEPAGE)  # 4 KiB pages, as the estimate counts them
        for off in range(0, present_bytes, PAGE_SIZE):
            s.touch_write(off)
        hole_at, vmas_at = s.addr + present_bytes, s.addr + present_bytes + big_hole
        for i in range(small):  # every other page read-only: 2 * small VMAs
            libc.mprotect(vmas_at + 2 * i * PAGE_SIZE, PAGE_SIZE, mman.PROT_READ)
        # The VMAs as smaps would list them (reading our own smaps costs more than the probe).
        whole = [Vma(s.addr, vmas_at, "rw-p", 0, 0, 0, 0, "")]
        pieces = [Vma(a, a + PAGE_SIZE, "rw-p", 0, 0, 0, 0, "")
                  for a in range(vmas_at, vmas_at + 2 * small * PAGE_SIZE, PAGE_SIZE)]
        with open_be() as be:
            walk(be, s.addr, s.addr + PAGE_SIZE, whole)  # warm up: reader threads, buffers
            one = walk(be, s.addr, s.addr + PAGE_SIZE, whole)
            present = walk(be, s.addr, s.addr + small_present, whole), walk(be, s.addr, s.addr + present_bytes, whole)
            holes = walk(be, hole_at, hole_at + small_hole, whole), walk(be, hole_at, hole_at + big_hole, whole)
            many = walk(be, vmas_at, vmas_at + 2 * small * PAGE_SIZE, pieces)
        resident = mincore(hole_at, big_hole) if backend == "pagemap" else 0.0
    return ScanCosts(
        per_scan=one,
        per_vma=max(0.0, many - one) / (2 * small),
        per_hole_page=_per_unit(holes, (small_hole // PAGE_SIZE, big_hole // PAGE_SIZE), one),
        per_present_page=_per_unit(present, (small_present // PAGE_SIZE, present_bytes // PAGE_SIZE), one),
        # Injected into the target, the calls cost a ptrace round trip each
        # and the vector a copy back: measured 1.1-1.3x the in-process pass.
        per_mincore_page=resident * 1.3 / (big_hole // PAGE_SIZE),
    )

"""The mask scanner: which pages of a process are in which categories.

``scan(pid, start, end, masks)`` answers ``page_region`` runs exactly as the
``PAGEMAP_SCAN`` ioctl does (include/uapi/linux/fs.h, Linux 6.7), using the
ioctl where the kernel has it and an emulation over /proc/PID/pagemap
entries elsewhere. See :mod:`dumper.scan.categories` for the four masks.
"""

from __future__ import annotations

from ..errors import ScanError, UnsupportedKernel
from ..proc.process import Process
from ..kernel.libc import PAGE_SIZE
from .base import Backend, PageRegion, ScanResult, scan_range
from .categories import ALL_CATEGORIES, Category, KernelMasks, ScanMasks, parse_categories
from .features import probe_scan_categories

__all__ = [
    "Category",
    "ScanMasks",
    "KernelMasks",
    "PageRegion",
    "ScanResult",
    "Backend",
    "open_backend",
    "scan",
    "scan_range",
    "parse_categories",
    "default_range",
    "BACKENDS",
]

BACKENDS = ("auto", "ioctl", "pagemap")


def open_backend(process: Process | int, backend: str = "auto") -> Backend:
    """A scanner backend for ``process``: "ioctl", "pagemap" or "auto".

    "auto" picks the ioctl when the kernel has PAGEMAP_SCAN. Raises
    UnsupportedKernel for "ioctl" on kernels before 6.7, ScanError for an
    unknown name, and the ProcessError kinds for a bad pid.
    """
    if backend not in BACKENDS:
        raise ScanError(f"unknown scanner backend {backend!r} (choose from {', '.join(BACKENDS)})")
    proc = process if isinstance(process, Process) else Process(process)
    if backend == "auto":
        backend = "ioctl" if probe_scan_categories() else "pagemap"
    if backend == "ioctl":
        from .ioctl import IoctlBackend

        if not probe_scan_categories():
            raise UnsupportedKernel("PAGEMAP_SCAN", "the ioctl needs Linux 6.7; use --backend pagemap")
        return IoctlBackend(proc)
    from .pagemap import PagemapBackend

    return PagemapBackend(proc)


def default_range(process: Process) -> tuple[int, int]:
    """``[first VMA start, last user VMA end)``: every VMA of the process."""
    vmas = [v for v in process.vmas(smaps=False) if v.user]
    if not vmas:
        return 0, 0
    return vmas[0].start, vmas[-1].end


def scan(
    pid: int | Process,
    start: int | None = None,
    end: int | None = None,
    *,
    required: Category | str | int = 0,
    anyof: Category | str | int = 0,
    excluded: Category | str | int = 0,
    returned: Category | str | int | None = None,
    max_pages: int = 0,
    backend: str = "auto",
) -> ScanResult:
    """Scan ``[start, end)`` (bytes, end-exclusive; default: all VMAs).

    ``returned`` defaults to every category the chosen backend computes.
    Raises ScanError (bad range or names), UnsupportedCategory,
    UnsupportedKernel, and NoSuchProcess / ZombieProcess / NoMemoryMap /
    AccessDenied for the process.
    """
    proc = pid if isinstance(pid, Process) else Process(pid)
    with open_backend(proc, backend) as be:
        if start is None or end is None:
            lo, hi = default_range(proc)
            start = lo if start is None else start
            end = hi if end is None else end
        masks = ScanMasks(
            required=parse_categories(required),
            anyof=parse_categories(anyof),
            excluded=parse_categories(excluded),
            returned=be.supported if returned is None else parse_categories(returned),
        )
        return scan_range(be, start, end, masks, max_pages=max_pages)


def estimate_scan_seconds(backend: str, vmas) -> float:
    """Rough seconds a scan of ``vmas`` (objects with ``start``/``end``,
    bytes) takes: the PAGEMAP_SCAN ioctl follows populated page tables
    (close to nothing); the pagemap fallback reads 8 bytes per page of the
    whole span (measured here at about 1 GB/s of entries)."""
    if backend == "auto":
        backend = "ioctl" if probe_scan_categories() else "pagemap"
    if backend == "ioctl" or not vmas:
        return 0.0
    pages = sum((v.end - v.start) // PAGE_SIZE for v in vmas)
    return pages * 8 / 1e9

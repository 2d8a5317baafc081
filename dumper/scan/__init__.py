"""The mask scanner: which pages of a process are in which categories.

``scan(pid, start, end, masks)`` answers ``page_region`` runs exactly as the
``PAGEMAP_SCAN`` ioctl does (include/uapi/linux/fs.h, Linux 6.7), using the
ioctl where the kernel has it and an emulation over /proc/PID/pagemap
entries elsewhere. See :mod:`dumper.scan.categories` for the four masks.
Before a scan that may be long (the fallback reads 8 bytes per page of every
VMA, holes included): :func:`estimate_scan_seconds`, :func:`long_scan_note`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .. import lazy_exports
from ..errors import ScanError, UnsupportedKernel
from ..proc.process import Process
from .categories import ALL_CATEGORIES, Category, KernelMasks, ScanMasks, parse_categories
from .features import probe_scan_categories

if TYPE_CHECKING:
    from .base import Backend, PageRegion, ScanResult, scan_range
    from .estimate import estimate_scan_seconds, long_scan_note

__all__ = [
    "Category",
    "ScanMasks",
    "KernelMasks",
    "PageRegion",
    "ScanResult",
    "Backend",
    "open_backend",
    "backend_class",
    "scan",
    "scan_range",
    "parse_categories",
    "default_range",
    "BACKENDS",
    "estimate_scan_seconds",
    "long_scan_note",
]

BACKENDS = ("auto", "ioctl", "pagemap")

# Loaded on first use: they need numpy, which `dumper check` does not.
__getattr__ = lazy_exports(__name__, {"Backend": "base", "PageRegion": "base", "ScanResult": "base",
                                      "scan_range": "base", "estimate_scan_seconds": "estimate",
                                      "long_scan_note": "estimate"})


def open_backend(process: Process | int, backend: str = "auto", *, progress: bool | None = None,
                 residency: Callable | None = None) -> Backend:
    """A scanner backend for ``process``: "ioctl", "pagemap" or "auto".

    "auto" picks the ioctl when the kernel has PAGEMAP_SCAN. ``progress``
    is for the pagemap reader, whose scans can take minutes: True shows a
    bar on stderr, False none, None one only when stderr is a terminal and
    the scan lasts over a second. ``residency`` (pagemap reader only; see
    :data:`dumper.scan.pagemap.Residency`) tells it which pages of large
    anonymous VMAs are resident, so it reads only their entries: for a
    target frozen by a warden, ``functools.partial(warden.call,
    dumper.proc.residency.resident_runs, pid)``. Raises UnsupportedKernel
    for "ioctl" on kernels before 6.7, ScanError for an unknown name, and
    the ProcessError kinds for a bad pid.
    """
    cls = backend_class(backend)
    proc = process if isinstance(process, Process) else Process(process)
    if cls.name == "ioctl":
        return cls(proc)
    return cls(proc, progress=progress, residency=residency)


def backend_class(backend: str = "auto") -> type[Backend]:
    """The class :func:`open_backend` would use for ``backend``, its module
    loaded (a dump calls it before the freeze: an import costs milliseconds
    of frozen time). Raises as :func:`open_backend` does."""
    if backend not in BACKENDS:
        raise ScanError(f"unknown scanner backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        backend = "ioctl" if probe_scan_categories() else "pagemap"
    if backend == "ioctl":
        if not probe_scan_categories():
            raise UnsupportedKernel("PAGEMAP_SCAN", "the ioctl needs Linux 6.7; use --backend pagemap")
        from .ioctl import IoctlBackend

        return IoctlBackend
    from .pagemap import PagemapBackend

    return PagemapBackend


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
    progress: bool | None = None,
) -> ScanResult:
    """Scan ``[start, end)`` (bytes, end-exclusive; default: all VMAs).

    ``returned`` defaults to every category the chosen backend computes;
    ``progress``: see :func:`open_backend`.
    Raises ScanError (bad range or names), UnsupportedCategory,
    UnsupportedKernel, and NoSuchProcess / ZombieProcess / NoMemoryMap /
    AccessDenied for the process.
    """
    proc = pid if isinstance(pid, Process) else Process(pid)
    with open_backend(proc, backend, progress=progress) as be:
        if start is None or end is None:
            lo, hi = default_range(proc)
            start = lo if start is None else start
            end = hi if end is None else end
        from .base import scan_range

        masks = ScanMasks(
            required=parse_categories(required),
            anyof=parse_categories(anyof),
            excluded=parse_categories(excluded),
            returned=be.supported if returned is None else parse_categories(returned),
        )
        return scan_range(be, start, end, masks, max_pages=max_pages)


"""How long a scan will take, before it starts (to warn before a long freeze).

The pagemap reader's time follows the VMAs' length: the kernel emits an
entry for every page, holes included, at 1-2 GB/s of entries per core here
(a 16 TiB reservation is 32 GiB of entries). The ioctl skips unpopulated
page tables, so its time follows the populated pages.
"""

from __future__ import annotations

from typing import Iterable

from ..kernel.libc import PAGE_SIZE
from .base import Backend
from .features import ScanCosts, probe_scan_categories, probe_scan_costs

__all__ = ["estimate_scan_seconds", "IOCTL_COSTS"]

#: The ioctl's costs, measured with probe_scan_costs("ioctl") on an idle
#: 2-core x86-64 VM under 6.18 (rounded up); fixed, so estimating an ioctl
#: scan costs no probe.
IOCTL_COSTS = ScanCosts(per_vma=1e-6, per_hole_page=1e-10, per_present_page=2e-8)


def estimate_scan_seconds(backend: str | Backend, vmas: Iterable) -> float:
    """Expected seconds for one scan of ``vmas`` with ``backend``.

    ``backend`` is "pagemap", "ioctl", "auto" (what :func:`dumper.scan.open_backend`
    would pick) or an open :class:`Backend`. ``vmas`` are objects with
    ``start``/``end`` (bytes, end-exclusive) and, when read from smaps,
    ``rss``/``swap`` (bytes): those pages count as populated, the rest as
    holes; without them every page counts as a hole (a lower bound).

    For the pagemap reader the costs are measured here once per process
    (:func:`dumper.scan.features.probe_scan_costs`: 20-100 ms); for the
    ioctl they are :data:`IOCTL_COSTS`. Expect the right order of magnitude
    (within ~2x on an idle machine); a busy machine is slower.
    """
    name = backend.name if isinstance(backend, Backend) else backend
    if name == "auto":
        name = "ioctl" if probe_scan_categories() else "pagemap"
    costs = IOCTL_COSTS if name == "ioctl" else probe_scan_costs("pagemap")
    n = pages = populated = 0
    for v in vmas:
        n += 1
        pages += (v.end - v.start) // PAGE_SIZE
        populated += (getattr(v, "rss", 0) + getattr(v, "swap", 0)) // PAGE_SIZE
    populated = min(populated, pages)
    return n * costs.per_vma + (pages - populated) * costs.per_hole_page + populated * costs.per_present_page

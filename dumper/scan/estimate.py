"""How long a scan will take, before it starts (to warn before a long freeze).

The pagemap reader's time follows the VMAs' length: the kernel emits an
entry for every page, holes included, at 1-2 GB/s of entries per core here
(a 16 TiB reservation is 32 GiB of entries). With a residency pre-filter (a
dump: mincore run in the frozen target, :mod:`dumper.scan.pagemap`) the
large anonymous VMAs it applies to cost one mincore byte per page instead,
about a third. The ioctl skips unpopulated page tables, so its time follows
the populated pages.
"""

from __future__ import annotations

from typing import Iterable

from ..kernel.libc import PAGE_SIZE
from .base import Backend
from .features import ScanCosts, probe_scan_categories, probe_scan_costs

__all__ = ["estimate_scan_seconds", "long_scan_note", "IOCTL_COSTS", "NO_PROBE_BELOW"]

#: The ioctl's costs, measured with probe_scan_costs("ioctl") on an idle
#: 2-core x86-64 VM under 6.18 (rounded up); fixed, so estimating an ioctl
#: scan costs no probe.
IOCTL_COSTS = ScanCosts(per_scan=1e-4, per_vma=1e-6, per_hole_page=1e-10, per_present_page=2e-8)


#: Upper bounds of the pagemap reader's costs: 5x what a TCG-emulated 6.1
#: guest measured (160 ns per hole page; mincore, pre-filtering, walks 8x
#: fewer steps); a scan short even at these needs no probe.
_PAGEMAP_WORST = ScanCosts(per_scan=0.05, per_vma=2e-4, per_hole_page=1e-6, per_present_page=2e-5,
                           per_mincore_page=4e-7)
#: Seconds under which a scan needs no warning, so no probe either.
NO_PROBE_BELOW = 0.25


def estimate_scan_seconds(backend: str | Backend, vmas: Iterable, *, residency: bool = False) -> float:
    """Expected seconds for one scan of ``vmas`` with ``backend``.

    ``backend`` is "pagemap", "ioctl", "auto" (what :func:`dumper.scan.open_backend`
    would pick) or an open :class:`Backend`. ``vmas`` are objects with
    ``start``/``end`` (bytes, end-exclusive) and, when read from smaps,
    ``rss``/``swap`` (bytes): those pages count as populated, the rest as
    holes; without them every page counts as a hole (a lower bound).
    ``residency``: the scan will have a residency pre-filter (a dump's,
    target frozen by the warden): VMAs read from smaps that it applies to
    (:func:`dumper.scan.pagemap.why_full_read`, the dump's selection, no
    swap in smaps) cost mincore's pass instead of their holes' entries.

    For the pagemap reader the costs are measured here once per process
    (:func:`dumper.scan.features.probe_scan_costs`: 30-150 ms), unless even
    worst-case costs keep the scan under :data:`NO_PROBE_BELOW` seconds:
    that bound is returned then. For the ioctl they are :data:`IOCTL_COSTS`.
    Expect the right order of magnitude (within ~2x on an idle machine); a
    busy machine is slower.
    """
    name = backend.name if isinstance(backend, Backend) else backend
    if name == "auto":
        name = "ioctl" if probe_scan_categories() else "pagemap"
    if name == "ioctl":
        return _estimate(IOCTL_COSTS, vmas)
    vmas = list(vmas)
    filtered = _prefiltered(vmas) if residency else set()
    worst = _estimate(_PAGEMAP_WORST, vmas, filtered)
    if worst < NO_PROBE_BELOW:
        return worst  # short whatever the machine: not worth a probe
    return _estimate(probe_scan_costs("pagemap"), vmas, filtered)


def _prefiltered(vmas: list) -> set[int]:
    """Indexes of the VMAs a dump's residency pre-filter will apply to."""
    from ..proc.maps import Vma
    from .features import probe_pagemap
    from .pagemap import why_full_read

    info = probe_pagemap()
    return {i for i, v in enumerate(vmas)
            if isinstance(v, Vma) and not v.swap and why_full_read(v, info) is None}


def _estimate(costs: ScanCosts, vmas: Iterable, prefiltered: set[int] = frozenset()) -> float:
    n = holes = populated = resident = 0
    for i, v in enumerate(vmas):
        n += 1
        size = (v.end - v.start) // PAGE_SIZE
        used = min((getattr(v, "rss", 0) + getattr(v, "swap", 0)) // PAGE_SIZE, size)
        populated += used
        if i in prefiltered and costs.per_mincore_page:
            resident += size  # one mincore byte per page, then the populated pages' entries
        else:
            holes += size - used
    return (costs.per_scan + n * costs.per_vma + holes * costs.per_hole_page
            + populated * costs.per_present_page + resident * costs.per_mincore_page)


def _iec(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def long_scan_note(backend: str | Backend, vmas: Iterable, *, threshold: float = 1.0,
                   residency: bool = False) -> str | None:
    """One line to print before a scan expected to last over ``threshold``
    seconds, or None: "scanning 16.0 TiB of mappings with the pagemap
    fallback: about 25 s frozen". Arguments as :func:`estimate_scan_seconds`;
    no probe is run when even the worst costs stay under the threshold.
    """
    vmas = list(vmas)
    name = backend.name if isinstance(backend, Backend) else backend
    if name == "auto":
        name = "ioctl" if probe_scan_categories() else "pagemap"
    if name == "pagemap" and _estimate(_PAGEMAP_WORST, vmas, _prefiltered(vmas) if residency else set()) < threshold:
        return None  # no probe needed to know
    seconds = estimate_scan_seconds(name, vmas, residency=residency)
    if seconds < threshold:
        return None
    size = sum(v.end - v.start for v in vmas)
    how = "the pagemap fallback" if name == "pagemap" else "PAGEMAP_SCAN"
    return f"scanning {_iec(size)} of mappings with {how}: about {seconds:.0f} s frozen"

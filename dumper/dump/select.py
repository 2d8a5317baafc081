"""Which VMAs and which pages a dump saves (CRIU's rules, criu/mem.c).

VMA rules: private anonymous and private file-backed VMAs are dumped page by
page; ``[vdso]`` is dumped whole (its pages are not anonymous, so the page
rule would skip them); ``[vvar]``/``[vvar_vclock]``, ``[vsyscall]``, VM_IO
and VM_PFNMAP VMAs and MAP_DROPPABLE memory are skipped; shared mappings
(MAP_SHARED files, shared anonymous, memfd, SysV shm) are recorded but their
contents are not dumped yet.

Page rule: PRESENT or SWAPPED, and not FILE (still the page cache's), not
PFNZERO (the zero page), not GUARD (a marker; reading it fails).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..image import format as fmt
from ..kernel.libc import PAGE_SIZE
from ..proc.maps import Vma
from ..scan import Category, ScanMasks

__all__ = ["VmaPlan", "classify", "dump_masks", "runs_in_vmas"]

@dataclass(slots=True)
class VmaPlan:
    """A VMA with its CRIU status bits and what the dump does with it.

    ``mode`` is "pages" (select pages with the scanner), "whole" (every
    page, e.g. [vdso]) or "skip"; ``reason`` says why contents are skipped.
    """

    vma: Vma
    status: int
    mode: str
    reason: str = ""


def classify(vma: Vma) -> VmaPlan:
    """CRIU status bits and the dump mode for one VMA."""
    name = vma.special
    st = 0
    if name in ("[vvar]", "[vvar_vclock]"):
        return VmaPlan(vma, fmt.VMA_AREA_REGULAR | fmt.VMA_AREA_VVAR, "skip", "vvar: provided by the kernel")
    if name == "[vsyscall]" or not vma.user:
        return VmaPlan(vma, fmt.VMA_AREA_VSYSCALL, "skip", "vsyscall: provided by the kernel")
    if name == "[uprobes]":
        return VmaPlan(vma, fmt.VMA_AREA_UPROBES, "skip", "uprobes: provided by the kernel")
    st |= fmt.VMA_AREA_REGULAR
    if name == "[vdso]":
        return VmaPlan(vma, st | fmt.VMA_AREA_VDSO | fmt.VMA_ANON_PRIVATE, "whole")
    if name == "[stack]" or "gd" in vma.vmflags:
        st |= fmt.VMA_AREA_STACK
    if name == "[heap]":
        st |= fmt.VMA_AREA_HEAP
    if vma.shared:
        if vma.path.startswith("/memfd:"):
            st |= fmt.VMA_AREA_MEMFD
        elif vma.path.startswith("/SYSV"):
            st |= fmt.VMA_AREA_SYSVIPC
        elif vma.path.startswith("/dev/zero") or (not vma.file_backed) or vma.path.startswith("[anon_shmem"):
            st |= fmt.VMA_ANON_SHARED
        else:
            st |= fmt.VMA_FILE_SHARED
        return VmaPlan(vma, st, "skip", "shared mapping: contents are not dumped yet")
    st |= fmt.VMA_FILE_PRIVATE if vma.file_backed else fmt.VMA_ANON_PRIVATE
    if vma.io or vma.pfnmap:
        return VmaPlan(vma, st, "skip", "VM_IO/VM_PFNMAP: device memory")
    if "dp" in vma.vmflags:
        return VmaPlan(vma, st, "skip", "MAP_DROPPABLE: contents may be dropped anyway")
    return VmaPlan(vma, st, "pages")


def dump_masks(supported: Category) -> ScanMasks:
    """anyof PRESENT|SWAPPED, excluded FILE|PFNZERO|GUARD as far as supported.

    Without PFNZERO (PFNs hidden) zero pages are dumped as data, like CRIU;
    without GUARD, guard markers look SWAPPED and are caught at read time.
    """
    excluded = (Category.FILE | Category.PFNZERO | Category.GUARD) & supported
    return ScanMasks(anyof=Category.PRESENT | Category.SWAPPED, excluded=excluded, returned=Category(0))


def runs_in_vmas(regions: np.ndarray, plans: list[VmaPlan], *, with_categories: bool = False):
    """Cut scan regions at VMA boundaries: for each plan, its runs.

    Runs are ``(vaddr, nr_pages)``, or ``(start, end, categories)`` with
    ``with_categories``. ``regions`` is the scanner's REGION_DTYPE array
    (sorted, disjoint); regions merge across VMA boundaries, so this splits
    them per VMA. Work is O(len(regions) + len(plans)).
    """
    out = []
    starts = regions["start"] if len(regions) else np.empty(0, np.uint64)
    ends = regions["end"] if len(regions) else np.empty(0, np.uint64)
    cats = regions["categories"] if len(regions) else np.empty(0, np.uint64)
    for plan in plans:
        v = plan.vma
        if plan.mode == "skip":
            out.append((plan, []))
            continue
        if plan.mode == "whole":
            whole = (v.start, v.end, 0) if with_categories else (v.start, v.size // PAGE_SIZE)
            out.append((plan, [whole]))
            continue
        lo = int(np.searchsorted(ends, v.start, side="right"))
        hi = int(np.searchsorted(starts, v.end, side="left"))
        runs = []
        for s, e, c in zip(starts[lo:hi].tolist(), ends[lo:hi].tolist(), cats[lo:hi].tolist()):
            s, e = max(s, v.start), min(e, v.end)
            if e > s:
                runs.append((s, e, c) if with_categories else (s, (e - s) // PAGE_SIZE))
        out.append((plan, runs))
    return out

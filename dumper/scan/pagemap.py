"""Scanner backend for kernels without PAGEMAP_SCAN: /proc/PID/pagemap reads.

Reads the 64-bit pagemap entry of every page of every VMA in the range and
applies the kernel's matching and merging rule (fs/proc/task_mmu.c
``pagemap_scan_pmd_entry``/``pagemap_scan_output``), so the answer,
``walk_end`` included, is the ioctl's. Time is proportional to the VMAs'
total length (that is what the ioctl exists to avoid), except in large
anonymous VMAs of a frozen target (the residency pre-filter below);
memory is not.

How it keeps up with the kernel
-------------------------------

The kernel emits pagemap entries one by one, even for a hole without page
tables (``pagemap_pte_hole``): about 1-2 GB/s of entries per core on current
hardware, and that is the ceiling (``benchmarks/scan_sparse.py`` measures it
beside us). So:

* reader threads (``os.preadv`` releases the GIL) fill a ring of reused
  1 MiB buffers ahead of the consumer, in address order;
* a chunk whose entries are all equal (a hole, soft-dirty hole or zero-page
  run) is recognised by one ``memcmp`` of the buffer against itself shifted
  by one entry and handled as one run, with no per-entry work;
* otherwise only the entries that are not holes (any bit beside soft-dirty)
  are decoded, unless the masks select holes, which needs every entry;
* a chunk's runs are kept, so a call that stops at ``vec_len`` regions
  resumes in the same chunk without reading it again.

The residency pre-filter (large anonymous VMAs of a frozen target)
-----------------------------------------------------------------

Even at the kernel's pace a 16 TiB reservation is 32 GiB of entries (9-15 s
here). Given a ``residency`` callable (:data:`Residency`; the dump passes
:func:`dumper.proc.residency.resident_runs` run by its warden), the backend
asks mincore(2), run inside the target, which pages of each private
anonymous VMA of at least :data:`RESIDENCY_MIN_BYTES` are resident, and
reads the entries of those pages only (runs closer than ``_MAX_GAP`` pages
merged); categories and runs are then derived exactly as for a full read.
mincore walks 16 MiB of address space per step for one byte per page
(mm/mincore.c ``do_mincore``, a page-sized bounce buffer): the 16 TiB
reservation takes ~4.5 s instead of ~14 s.

Why the answer is the full read's. In an anonymous VMA (``vma_is_anonymous``,
so ``can_do_mincore`` lets the walk run) mincore writes 0 only for
(mm/mincore.c ``mincore_pte_range``, ``__mincore_unmapped_range``, Linux
4.x to 6.19):

* page-table holes and ``pte_none`` entries: pagemap reads them as 0, or
  PM_SOFT_DIRTY alone in a VM_SOFTDIRTY VMA (fs/proc/task_mmu.c
  ``pagemap_pte_hole``, ``pte_to_pagemap_entry``);
* PTE markers (5.19+: ``pte_none_mostly``, later ``pte_is_marker``):
  uffd-wp markers and guard markers (6.13+), which pagemap reports as
  PM_SWAP (with PM_UFFD_WP, PM_GUARD_REGION);
* swap entries whose page is not in the swap cache, or not uptodate.

Present PTEs, PMD-mapped THPs (``pmd_trans_huge_lock``: the whole 2 MiB,
the huge zero page too), migration, hwpoison and device entries read 1.
So the pre-filter is exact when no page of the first kind can match the
masks and no page of the other two exists, and a VMA is read whole
otherwise (:meth:`PagemapBackend.why_full_read`):

* the masks must not match an entry of 0 or PM_SOFT_DIRTY alone (the
  dump's PRESENT-or-SWAPPED selection never does; ``dumper scan`` asking for
  unpopulated pages does);
* no userfaultfd registration (VmFlags ``um``, ``uw``, ``ui``): uffd-wp
  markers, and PTE_MARKER_POISONED from UFFDIO_POISON;
* no guard marker the masks could match: kernels without guard regions
  (before 6.13) have none; where smaps names the VMAs that ever had one
  (VmFlags ``gu``, :func:`~dumper.scan.features.probe_guard_vmflag`), a VMA
  without it has none; elsewhere (6.13-6.17) the masks must not match a
  guard marker's categories;
* no swap entry: the VMA's ``Swap:`` in smaps (every swap PTE counts,
  ``smaps_pte_entry``; smaps_rollup first, one line) is read *after* the
  mincore pass, so a page the kernel swaps out of the frozen target
  meanwhile (it can: reclaim does not ask) is seen, and the VMA is read
  whole.

What stays open: a page that is swapped out (and out of the swap cache)
when mincore looks, then brought back by ``swapoff`` before smaps is read:
present again, with ``Swap:`` down to 0, it is missed. Also missed, as by
a scan that ran just before: holes populated after the pass by someone
other than the frozen target (khugepaged collapsing a range fills its holes
with zeroed pages: zeros, as a restored hole reads; a debugger writing
/proc/PID/mem), and the PTE_MARKER_POISONED a swapoff leaves for a page it
could not read (an I/O error). Before 6.5, mincore's ``pmd_trans_unstable``
branch can report a THP being split at that instant as absent (pagemap's
own walk has the same branch).

Derivation (Documentation/admin-guide/mm/pagemap.rst):

=============  =============================================================
PRESENT        bit 63
SWAPPED        bit 62 (swap, migration, uffd-wp and guard markers)
FILE           bit 61, cleared for the zero pages (the kernel's
               ``vm_normal_page`` gives no page for them)
WRITTEN        PRESENT or SWAPPED, and not uffd-wp (bit 57)
SOFT_DIRTY     bit 55 (the kernel also sets it on holes of VM_SOFTDIRTY VMAs,
               as PAGEMAP_SCAN reports the VMA category there)
GUARD          bit 58 (6.15+); always 0 where the kernel has no guard regions
PFNZERO        PRESENT and PFN is the zero page or inside the huge zero folio
               (needs CAP_SYS_ADMIN: PFNs read as 0 otherwise)
WPALLOWED      a VMA property (uffd WP-async) pagemap cannot show: computed
               only on kernels without WP-async, where it is always 0
HUGE           not derivable from pagemap: refused
=============  =============================================================
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import DumperError
from ..kernel.libc import PAGE_SIZE, libc
from ..kernel.pagemap import (PM_ENTRY_BYTES, PM_FILE, PM_GUARD_REGION, PM_PFRAME_MASK, PM_PRESENT, PM_SOFT_DIRTY,
                              PM_SWAP, PM_UFFD_WP)
from ..proc.maps import Vma
from ..proc.process import Process
from .base import REGION_DTYPE, Backend
from .categories import Category, KernelMasks
from .features import HPAGE_PMD_SIZE, PagemapInfo, probe_guard_vmflag, probe_pagemap, probe_uffd_wp_async

__all__ = ["PagemapBackend", "derive_categories", "CHUNK_PAGES", "default_threads", "Residency",
           "RESIDENCY_MIN_BYTES", "why_full_read"]

#: Entries per read: 1 MiB of entries, 512 MiB of address space with 4 KiB
#: pages. Larger reads gain nothing (the kernel copies 4 KiB at a time) and
#: fall out of the cache.
CHUNK_PAGES = 1 << 17
U = np.uint64
_NOT_SOFT_DIRTY = U(~PM_SOFT_DIRTY & ((1 << 64) - 1))
_EMPTY = np.empty(0, dtype=U)
_NO_INDEX = np.empty(0, dtype=np.intp)
_MAX_GAP = 64  # pages between two VMAs read (as holes) to save a separate read
_FEW = 48  # candidate entries below which plain Python beats numpy's per-call cost
_BLOCK = 512  # entries: one page of entries, 2 MiB of address space (one kernel walk step)
#: VMAs at least this long are pre-filtered by residency when the backend
#: has a ``residency`` callable: below it the pagemap read costs too little
#: (1 GiB: ~2 MiB of entries, 1 ms) to pay for an injected call.
RESIDENCY_MIN_BYTES = 1 << 30
_UFFD_FLAGS = frozenset({"um", "uw", "ui"})  # VM_UFFD_MISSING, VM_UFFD_WP, VM_UFFD_MINOR

#: ``residency(ranges) -> (starts, ends) | None``: the pages of ``ranges``
#: (``[(start, end), ...]``, bytes, end-exclusive, each inside one VMA) that
#: mincore(2) reports resident, as runs (uint64 arrays of bytes, address
#: order), or None when it cannot tell (every page is read then). See
#: :func:`dumper.proc.residency.resident_runs`.
Residency = Callable[[list[tuple[int, int]]], "tuple[np.ndarray, np.ndarray] | None"]

# Our own function pointer (libc["..."] is not cached), so setting argtypes
# does not change libc.memcmp for anybody else. ctypes releases the GIL.
_memcmp = libc["memcmp"]
_memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_memcmp.restype = ctypes.c_int


def default_threads() -> int:
    """Reader threads: one per CPU we may run on, at most 4 (the kernel's
    entry generation scales with cores, not beyond them); none with a single
    CPU, where a reader thread only adds hand-offs (measured: 5% slower in
    a 1-vCPU guest)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return 0 if cpus <= 1 else min(4, cpus)


def _flag_categories(top: int) -> int:
    """The categories told by an entry's flag bits 55-63 (``top`` = entry >> 55)."""
    e = top << 55
    present, swapped = e & PM_PRESENT, e & PM_SWAP
    cats = Category(0)
    cats |= Category.PRESENT if present else 0
    cats |= Category.SWAPPED if swapped else 0
    cats |= Category.FILE if e & PM_FILE else 0
    cats |= Category.SOFT_DIRTY if e & PM_SOFT_DIRTY else 0
    cats |= Category.GUARD if e & PM_GUARD_REGION else 0
    cats |= Category.WRITTEN if (present or swapped) and not e & PM_UFFD_WP else 0
    return int(cats)


# Categories by the top 9 bits: one table lookup per entry instead of a dozen
# shifts and masks; only PFNZERO needs the PFN.
_FLAG_CATEGORIES = [_flag_categories(t) for t in range(1 << (64 - 55))]
_FLAG_LUT = np.array(_FLAG_CATEGORIES, dtype=U)
_HUGE_ZERO_PAGES = HPAGE_PMD_SIZE // PAGE_SIZE


def derive_categories(entries: np.ndarray, info: PagemapInfo) -> np.ndarray:
    """Map pagemap entries (uint64 array) to PAGE_IS_* category bits."""
    cats = _FLAG_LUT[entries >> U(55)]
    if info.pfn_visible and info.zero_pfn is not None:
        pfn = entries & U(PM_PFRAME_MASK)
        zero = pfn == U(info.zero_pfn)
        if info.huge_zero_pfn is not None:
            zero |= (pfn - U(info.huge_zero_pfn)) < U(_HUGE_ZERO_PAGES)
        zero &= entries >= U(PM_PRESENT)
        if zero.any():
            cats[zero] = (cats[zero] | U(Category.PFNZERO)) & ~U(Category.FILE)
    return cats


def derive_one(entry: int, info: PagemapInfo) -> int:
    """:func:`derive_categories` of one entry, in plain ints (for a few entries
    a numpy call costs more than the work)."""
    cats = _FLAG_CATEGORIES[entry >> 55]
    if info.pfn_visible and info.zero_pfn is not None and entry & PM_PRESENT:
        pfn = entry & PM_PFRAME_MASK
        if pfn == info.zero_pfn or (info.huge_zero_pfn is not None
                                    and 0 <= pfn - info.huge_zero_pfn < _HUGE_ZERO_PAGES):
            cats = (cats | Category.PFNZERO) & ~Category.FILE
    return int(cats)


def _close_gaps(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs with gaps of up to ``_MAX_GAP`` pages between them merged: the
    gap pages are holes (see the module docstring), and one read of a few
    more entries costs less than a read of its own."""
    if len(starts) < 2:
        return starts, ends
    new = np.ones(len(starts), bool)
    new[1:] = starts[1:] - ends[:-1] > U(_MAX_GAP * PAGE_SIZE)
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(starts)) - 1
    return starts[first], ends[last]


def why_full_read(vma: Vma, info: PagemapInfo, residency_min: int = RESIDENCY_MIN_BYTES,
                  plan: _Plan | None = None) -> str | None:
    """Why every pagemap entry of ``vma`` must be read, or None when the
    residency pre-filter is exact for it (see the module docstring): a
    private anonymous VMA of at least ``residency_min`` bytes, no
    userfaultfd registration, no possible guard marker the masks could
    match, masks (``plan``; None: the dump's selection, PRESENT or SWAPPED
    and guard markers) that cannot match an unpopulated page. ``vma`` must
    come from smaps (VmFlags). Swapped pages are checked after the pass."""
    if not vma.anonymous_private or vma.special not in (None, "[heap]", "[stack]"):
        return "not private anonymous memory"
    if vma.size < residency_min:
        return "small"
    if not vma.vmflags:
        return "VmFlags unknown (VMAs read from maps)"
    if vma.vmflags & _UFFD_FLAGS:
        return "registered with userfaultfd"
    hidden = [0, PM_SOFT_DIRTY]
    if info.guard != "absent" and ("gu" in vma.vmflags or not probe_guard_vmflag()):
        guard = PM_SWAP | (PM_GUARD_REGION if info.guard == "reported" else 0)
        hidden += [guard, guard | PM_SOFT_DIRTY]
    if plan is None:
        return "guard regions possible" if len(hidden) > 2 else None
    if any(plan.match(derive_one(e, info)) for e in hidden):
        return "the masks select pages mincore reports as absent"
    return None


class _Plan:
    """The masks, and what follows from them, for every chunk of a walk."""

    __slots__ = ("masks", "mask", "inv", "anyof", "ret", "holes_match")

    def __init__(self, masks: KernelMasks) -> None:
        self.masks = masks
        self.mask, self.inv, self.anyof, self.ret = (int(m) for m in masks)
        # Holes read as 0, or as soft-dirty alone in a VM_SOFTDIRTY VMA.
        self.holes_match = masks.match(0) or masks.match(int(Category.SOFT_DIRTY))

    def match(self, cats: int) -> bool:
        c = cats ^ self.inv
        return c & self.mask == self.mask and (not self.anyof or bool(c & self.anyof))


def _uniform(entries: np.ndarray) -> bool:
    """All entries equal: one memcmp of the array against itself, one entry on."""
    n = entries.nbytes
    if n <= PM_ENTRY_BYTES:
        return True
    addr = entries.ctypes.data
    return _memcmp(addr, addr + PM_ENTRY_BYTES, n - PM_ENTRY_BYTES) == 0


def _not_holes(entries: np.ndarray) -> np.ndarray | None:
    """Indexes of the entries with a bit beside soft-dirty (None if none).

    One OR-reduction per block of ``_BLOCK`` entries first: the blocks
    that are all holes, in a sparse mapping nearly all of them, cost no
    more than that pass.
    """
    n = len(entries)
    nb = n // _BLOCK
    blocks = entries[: nb * _BLOCK].reshape(nb, _BLOCK)
    busy = np.flatnonzero(np.bitwise_or.reduce(blocks, axis=1) & _NOT_SOFT_DIRTY) if nb else _NO_INDEX
    if busy.size > nb // 4:
        idx = np.flatnonzero(entries & _NOT_SOFT_DIRTY)
    else:
        i = np.flatnonzero(blocks[busy] & _NOT_SOFT_DIRTY)
        idx = busy[i // _BLOCK] * _BLOCK + i % _BLOCK
        if nb * _BLOCK < n:
            idx = np.concatenate((idx, np.flatnonzero(entries[nb * _BLOCK :] & _NOT_SOFT_DIRTY) + nb * _BLOCK))
    return idx if idx.size else None


def _inside(idx: np.ndarray, pieces: list[tuple[int, int]], lo: int) -> np.ndarray:
    """The page indexes (from ``lo``) of ``idx`` that lie in one of ``pieces``."""
    starts = np.array([(a - lo) // PAGE_SIZE for a, _ in pieces])
    ends = np.array([(b - lo) // PAGE_SIZE for _, b in pieces])
    k = np.searchsorted(starts, idx, side="right") - 1
    return idx[(k >= 0) & (idx < ends[np.maximum(k, 0)])]


class _Runs:
    """The matching runs of one chunk ``[lo, hi)`` (bytes): maximal runs of
    contiguous matching pages with equal reported categories, as arrays of
    start, end (bytes, end-exclusive) and categories."""

    __slots__ = ("lo", "hi", "start", "end", "cats")

    def __init__(self, lo: int, hi: int, start: np.ndarray, end: np.ndarray, cats: np.ndarray) -> None:
        self.lo, self.hi, self.start, self.end, self.cats = lo, hi, start, end, cats

    def clipped(self, pos: int, count: int) -> tuple[list[int], list[int], list[int]]:
        """At most ``count`` runs at or after ``pos``, the first one cut at ``pos``."""
        k = int(np.searchsorted(self.end, pos, side="right"))
        start = self.start[k : k + count].tolist()
        if start and start[0] < pos:
            start[0] = pos
        return start, self.end[k : k + count].tolist(), self.cats[k : k + count].tolist()


class _Walk:
    """One pass over ``[start, end)``: chunks read ahead by threads, in order.

    ``front`` is the chunk being consumed (its runs derived), kept until a
    later call moves past it, so resuming at a ``walk_end`` inside it costs
    no read.
    """

    def __init__(self, be: PagemapBackend, start: int, end: int, masks: KernelMasks, progress) -> None:
        self.be, self.end, self.masks, self.progress = be, end, masks, progress
        self.plan = _Plan(masks)
        self._chunks = self._chunk_ranges(be.units_in(start, end, self.plan), start, end, be.chunk_pages * PAGE_SIZE)
        self._inflight: collections.deque[tuple[int, int, list | None, int, Future | np.ndarray]] = \
            collections.deque()
        self._free = list(range(len(be.buffers)))
        self.front: _Runs | None = None
        self.done = False
        self._fill()

    @staticmethod
    def _chunk_ranges(units: Iterable[tuple[int, int]], start: int, end: int,
                      size: int) -> Iterator[tuple[int, int, list | None]]:
        """``(lo, hi, pieces)``: chunks on a fixed grid of ``size`` bytes, so a
        resumed walk meets the same chunks. ``units`` are the ranges to read
        (``(start, end)``, address order: VMAs, or a pre-filtered VMA's
        candidate runs). Nearby units (gaps up to ``_MAX_GAP`` pages) share
        a chunk, so many small VMAs cost one read; ``pieces`` then lists the
        unit parts ``[(lo, hi), ...]`` (None when the chunk lies in one unit)."""
        cur_lo = cur_hi = -1
        pieces: list[tuple[int, int]] = []
        for u_start, u_end in units:
            lo, hi = max(start, u_start), min(end, u_end)
            while lo < hi:
                nxt = min(hi, (lo // size + 1) * size)
                if pieces and lo // size == (cur_hi - 1) // size and lo - cur_hi <= _MAX_GAP * PAGE_SIZE:
                    pieces.append((lo, nxt))
                else:
                    if pieces:
                        yield cur_lo, cur_hi, pieces if len(pieces) > 1 else None
                    cur_lo, pieces = lo, [(lo, nxt)]
                cur_hi = nxt
                lo = nxt
        if pieces:
            yield cur_lo, cur_hi, pieces if len(pieces) > 1 else None

    def _fill(self) -> None:
        while self._free:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            lo, hi, pieces = chunk
            slot = self._free.pop()
            pending = self.be.submit_read(slot, lo // PAGE_SIZE, (hi - lo) // PAGE_SIZE)
            self._inflight.append((lo, hi, pieces, slot, pending))

    def resumable(self, start: int, end: int, masks: KernelMasks) -> bool:
        return (not self.done and self.front is not None and end == self.end and masks == self.masks
                and self.front.lo <= start < self.front.hi)

    def _advance(self) -> _Runs | None:
        """Derive the next chunk's runs (or None at the end)."""
        if self.front is not None and self.progress is not None:
            self.progress.update(self.front.hi - self.front.lo)
        if not self._inflight:
            self.front = None
            self.done = True
            return None
        lo, hi, pieces, slot, pending = self._inflight.popleft()
        try:
            entries = self.be.wait_read(pending)
            self.front = self.be.runs(entries, lo, hi, self.plan, pieces)
        finally:
            self._free.append(slot)
            self._fill()
        return self.front

    def runs_from(self, pos: int, batch: int) -> Iterator[tuple[list[int], list[int], list[int]]]:
        """Runs at or after ``pos``, in batches of at most ``batch`` runs."""
        runs = self.front
        if runs is None or runs.hi <= pos:
            runs = self._advance()
        while runs is not None:
            while len(runs.end) and pos < runs.end[-1]:
                got = runs.clipped(pos, batch)
                yield got
                pos = got[1][-1]
            runs = self._advance()

    def close(self) -> None:
        # Let reads in flight finish: their buffers are about to be reused.
        for *_, pending in self._inflight:
            if isinstance(pending, Future):
                pending.cancel() or pending.exception()
        self._inflight.clear()
        self.done = True


class PagemapBackend(Backend):
    """Emulates PAGEMAP_SCAN from /proc/PID/pagemap entries.

    ``threads`` reader threads (default :func:`default_threads`; 0 reads in
    the calling thread). ``progress``: True shows a bar (tqdm, on stderr) of
    the address space walked, False none, None (default) shows one only when
    stderr is a terminal and the scan lasts over a second.
    """

    name = "pagemap"

    def __init__(self, process: Process, info: PagemapInfo | None = None, *,
                 threads: int | None = None, progress: bool | None = None,
                 chunk_pages: int = CHUNK_PAGES, residency: Residency | None = None,
                 residency_min: int = RESIDENCY_MIN_BYTES) -> None:
        self.process = process
        self.residency = residency
        self.residency_min = residency_min
        #: How the last scan read each VMA the pre-filter considered (VMA
        #: start -> "resident pages" or why every entry was read).
        self.vma_reads: dict[int, str] = {}
        self._candidates: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        process.check_has_mm()
        self.info = info or probe_pagemap()
        sup = Category.PRESENT | Category.SWAPPED | Category.FILE | Category.WRITTEN | Category.SOFT_DIRTY
        if self.info.pfn_visible and self.info.zero_pfn is not None:
            sup |= Category.PFNZERO
        if self.info.guard in ("reported", "absent"):
            sup |= Category.GUARD
        self._wp_async = probe_uffd_wp_async()
        if not self._wp_async:
            sup |= Category.WPALLOWED
        self.supported = sup
        self.threads = default_threads() if threads is None else max(0, threads)
        self.progress = progress
        self.fd = process.open("pagemap")
        # Ring of read buffers: one per reader thread in flight, plus the one
        # being decoded and one more queued.
        self.chunk_pages = chunk_pages
        self.buffers = [np.empty(chunk_pages, dtype=U) for _ in range(max(2, self.threads + 2))]
        self._pool: ThreadPoolExecutor | None = None
        self._vmas: list[Vma] | None = None
        self._walk: _Walk | None = None
        self._bar = None
        self._in_scan = False

    def why_unsupported(self, missing: Category) -> str:
        notes = []
        if missing & Category.HUGE:
            notes.append("HUGE is not visible in pagemap entries")
        if missing & Category.PFNZERO:
            notes.append("PFNZERO needs PFNs, which pagemap hides without CAP_SYS_ADMIN")
        if missing & Category.GUARD:
            notes.append("GUARD needs pagemap bit 58 (Linux 6.15)")
        if missing & Category.WPALLOWED:
            notes.append("WPALLOWED (uffd WP-async) is not visible in pagemap")
        return "; ".join(notes)

    # -- the VMAs and the reads ------------------------------------------

    def _load_vmas(self, vmas: Sequence[Vma] | None = None) -> None:
        # The kernel walk skips VM_PFNMAP VMAs (smaps VmFlags "pf") and never sees [vsyscall].
        self._vmas = [v for v in (self.process.vmas() if vmas is None else vmas) if v.user and not v.pfnmap]

    def prepare(self, vmas: Sequence[Vma] | None = None) -> None:
        """Read the VMAs from smaps, unless given ``vmas`` (read from smaps,
        with the target frozen: maps lacks the VmFlags that name VM_PFNMAP
        and userfaultfd registrations)."""
        self._close_walk()
        self._load_vmas(vmas)
        self._candidates.clear()
        self.vma_reads.clear()
        self._in_scan = True

    def finish(self) -> None:
        self._close_walk()
        self._candidates.clear()
        self._in_scan = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        """The scanned VMAs overlapping ``[start, end)``."""
        if self._vmas is None:
            self._load_vmas()
        return [v for v in self._vmas if v.end > start and v.start < end]

    # -- the residency pre-filter (see the module docstring) ---------------------

    def units_in(self, start: int, end: int, plan: _Plan) -> list[tuple[int, int]]:
        """The ranges whose entries a walk of ``[start, end)`` reads: each
        VMA, or a pre-filtered VMA's candidate runs (only inside a scan:
        between :meth:`prepare` and :meth:`finish`)."""
        vmas = self.vmas_in(start, end)
        if not self._in_scan or self.residency is None:
            return [(v.start, v.end) for v in vmas]
        self._resolve_candidates(vmas, start, end, plan)
        units: list[tuple[int, int]] = []
        for v in vmas:
            runs = self._candidates.get(v.start)
            if runs is None:
                units.append((v.start, v.end))
                continue
            s, e = runs
            i, j = np.searchsorted(e, start, side="right"), np.searchsorted(s, end, side="left")
            units.extend(zip(s[i:j].tolist(), e[i:j].tolist()))
        return units

    def why_full_read(self, vma: Vma, plan: _Plan | None = None) -> str | None:
        """:func:`why_full_read` for this backend's kernel and threshold."""
        return why_full_read(vma, self.info, self.residency_min, plan)

    def _resolve_candidates(self, vmas: list[Vma], start: int, end: int, plan: _Plan) -> None:
        """Candidate runs in ``[start, end)`` of the pre-filtered VMAs among
        ``vmas`` not seen yet in this scan (None for the others). A scan's
        later walks resume inside that range (scan_range)."""
        todo = [v for v in vmas if v.start not in self._candidates]
        ask = []
        for v in todo:
            why = self.why_full_read(v, plan)
            self._candidates[v.start] = None
            if why is None:
                ask.append(v)
            elif why not in ("small", "not private anonymous memory"):
                self.vma_reads[v.start] = why
        if not ask:
            return
        got = self.residency([(max(v.start, start), min(v.end, end)) for v in ask])
        if got is None:
            self.vma_reads.update((v.start, "no residency (mincore could not run in the target)") for v in ask)
            return
        swapped = self._swapped_vmas()  # after the pass: what was swapped out meanwhile counts too
        s, e = np.asarray(got[0], U), np.asarray(got[1], U)
        for v in ask:
            if v.start in swapped:
                self.vma_reads[v.start] = "swapped pages (mincore does not see them)"
                continue
            i, j = np.searchsorted(e, v.start, side="right"), np.searchsorted(s, v.end, side="left")
            self._candidates[v.start] = _close_gaps(np.maximum(s[i:j], U(v.start)), np.minimum(e[i:j], U(v.end)))
            self.vma_reads[v.start] = "resident pages"

    def _swapped_vmas(self) -> set[int]:
        """Starts of the VMAs holding swap entries now: smaps_rollup first
        (one line), smaps only when the process has any."""
        try:
            rollup = self.process.read_file("smaps_rollup")
            line = next((ln for ln in rollup.splitlines() if ln.startswith(b"Swap:")), None)
            if line is not None and int(line.split()[1]) == 0:
                return set()
        except (OSError, DumperError, ValueError, IndexError):
            pass  # no smaps_rollup (< 4.14): smaps says
        return {v.start for v in self.process.vmas() if v.swap}

    def read_entries(self, buf: np.ndarray, first_page: int, n: int) -> np.ndarray:
        """Read ``n`` entries from page ``first_page`` into ``buf``; returns the
        filled view. Entries past the end of the address space read as 0."""
        out = buf[:n]
        mv = memoryview(out).cast("B")
        got = 0
        while got < len(mv):
            k = os.preadv(self.fd, [mv[got:]], first_page * PM_ENTRY_BYTES + got)
            if k <= 0:
                break
            got += k
        if got < len(mv):
            out[got // PM_ENTRY_BYTES:] = 0
        return out

    def submit_read(self, slot: int, first_page: int, n: int) -> Future | np.ndarray:
        buf = self.buffers[slot]
        if self.threads == 0:
            return self.read_entries(buf, first_page, n)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dumper-pagemap")
        return self._pool.submit(self.read_entries, buf, first_page, n)

    def wait_read(self, pending: Future | np.ndarray) -> np.ndarray:
        with self.process.translate("pagemap"):
            return pending.result() if isinstance(pending, Future) else pending

    # -- one chunk's runs ---------------------------------------------------

    def runs(self, entries: np.ndarray, lo: int, hi: int, plan: _Plan,
             pieces: list[tuple[int, int]] | None = None) -> _Runs:
        """The matching runs of the entries of ``[lo, hi)`` (see :class:`_Runs`);
        with ``pieces``, only pages inside them (VMAs) count."""
        if pieces is None and _uniform(entries):
            # One memcmp: in a sparse reservation nearly every chunk is holes.
            cat = derive_one(int(entries[0]), self.info)
            if plan.match(cat):
                return _Runs(lo, hi, np.array([lo], U), np.array([hi], U), np.array([cat & plan.ret], U))
            return _Runs(lo, hi, _EMPTY, _EMPTY, _EMPTY)
        idx = None
        if plan.holes_match and pieces is not None:
            # Entries between VMAs read as 0, which matches: decode only the VMAs' pages.
            idx = np.concatenate([np.arange((a - lo) // PAGE_SIZE, (b - lo) // PAGE_SIZE) for a, b in pieces])
        elif not plan.holes_match:
            # Holes (0, or soft-dirty alone) cannot match: find the entries
            # with another bit, a block of 512 at a time.
            idx = _not_holes(entries)
            if idx is not None and pieces is not None:
                idx = _inside(idx, pieces, lo)
            if idx is None or not idx.size:
                return _Runs(lo, hi, _EMPTY, _EMPTY, _EMPTY)
            if idx.size <= _FEW:
                return self._few_runs(entries, idx, lo, hi, plan)
        cats = derive_categories(entries if idx is None else entries[idx], self.info)
        c = cats ^ U(plan.inv)
        hit = (c & U(plan.mask)) == U(plan.mask)
        if plan.anyof:
            hit &= (c & U(plan.anyof)) != 0
        sel = np.flatnonzero(hit)
        page = sel if idx is None else idx[sel]
        rcat = cats[sel] & U(plan.ret)
        if not page.size:
            return _Runs(lo, hi, _EMPTY, _EMPTY, _EMPTY)
        cut = np.flatnonzero((np.diff(page) != 1) | (np.diff(rcat) != 0)) + 1
        first = np.concatenate(([0], cut))
        last = np.concatenate((cut, [page.size])) - 1
        start = U(lo) + page[first].astype(U) * U(PAGE_SIZE)
        end = U(lo) + (page[last].astype(U) + U(1)) * U(PAGE_SIZE)
        return _Runs(lo, hi, start, end, rcat[first])

    def _few_runs(self, entries: np.ndarray, idx: np.ndarray, lo: int, hi: int, plan: _Plan) -> _Runs:
        """:meth:`runs` for a few candidate entries, in plain Python."""
        start: list[int] = []
        end: list[int] = []
        cats: list[int] = []
        for i, e in zip(idx.tolist(), entries[idx].tolist()):
            cat = derive_one(e, self.info)
            if not plan.match(cat):
                continue
            cat &= plan.ret
            addr = lo + i * PAGE_SIZE
            if end and end[-1] == addr and cats[-1] == cat:
                end[-1] = addr + PAGE_SIZE
            else:
                start.append(addr)
                end.append(addr + PAGE_SIZE)
                cats.append(cat)
        return _Runs(lo, hi, np.array(start, U), np.array(end, U), np.array(cats, U))

    # -- the PAGEMAP_SCAN call ---------------------------------------------

    def _close_walk(self) -> None:
        if self._walk is not None:
            self._walk.close()
            self._walk = None

    def _progress_bar(self, start: int, end: int):
        if self.progress is False or (self.progress is None and not _stderr_is_tty()):
            return None
        if self._bar is not None:
            return self._bar
        from ..progress import byte_bar

        total = sum(min(end, v.end) - max(start, v.start) for v in self.vmas_in(start, end))
        self._bar = byte_bar(total, "scanning pagemap", delay=0 if self.progress else 1.0)
        return self._bar

    def scan_once(self, start: int, end: int, masks: KernelMasks, vec_len: int, max_pages: int):
        limit = max_pages or (1 << 64) - 1
        regions: list[list[int]] = []
        found = 0
        walk_end = end

        def result():
            return np.array([tuple(r) for r in regions], dtype=REGION_DTYPE), walk_end

        # VMA-level pre-filter (pagemap_scan_is_interesting_vma): only
        # WPALLOWED, which is always 0 here.
        if masks.category_mask & ~masks.category_inverted & Category.WPALLOWED:
            return result()

        walk = self._walk
        if walk is None or not walk.resumable(start, end, masks):
            self._close_walk()
            walk = _Walk(self, start, end, masks, self._progress_bar(start, end) if self._in_scan else None)
        # Outside scan_range nothing says when the target may change: read afresh every call.
        self._walk = walk if self._in_scan else None
        try:
            for run_start, run_end, run_cat in walk.runs_from(start, vec_len + 1):
                # Bounded by vec_len: every run but a merge adds a region.
                for s, e, cat in zip(run_start, run_end, run_cat):
                    npg = (e - s) // PAGE_SIZE
                    allowed = min(npg, limit - found)
                    if allowed == 0:
                        walk_end = s
                        return result()
                    cur = regions[-1] if regions else None
                    if cur is not None and cur[1] == s and cur[2] == cat:
                        cur[1] = s + allowed * PAGE_SIZE
                    elif len(regions) >= vec_len:
                        walk_end = s
                        return result()
                    else:
                        regions.append([s, s + allowed * PAGE_SIZE, cat])
                    found += allowed
                    if allowed < npg:
                        walk_end = s + allowed * PAGE_SIZE
                        return result()
            return result()
        finally:
            if not self._in_scan:
                walk.close()

    def close(self) -> None:
        self.finish()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False

"""Scanner backend for kernels without PAGEMAP_SCAN: /proc/PID/pagemap reads.

Reads the 64-bit pagemap entry of every page of every VMA in the range, in
bounded chunks into one reused buffer, derives the PAGE_IS_* categories with
numpy, and applies the kernel's matching and merging rule
(fs/proc/task_mmu.c ``pagemap_scan_pmd_entry``/``pagemap_scan_output``) so
the answer, ``walk_end`` included, is the ioctl's. Time is proportional to the
VMAs' total length (that is what the ioctl exists to avoid); memory is not.

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

import os

import numpy as np

from ..kernel.libc import PAGE_SIZE
from ..proc.maps import Vma
from ..proc.process import Process
from .base import REGION_DTYPE, Backend
from .categories import Category, KernelMasks
from .features import HPAGE_PMD_SIZE, PagemapInfo, probe_pagemap, probe_uffd_wp_async

__all__ = ["PagemapBackend", "derive_categories"]

CHUNK_PAGES = 1 << 16  # 512 KiB of entries per pread
U = np.uint64


def derive_categories(entries: np.ndarray, info: PagemapInfo) -> np.ndarray:
    """Map pagemap entries (uint64 array) to PAGE_IS_* category bits."""
    e = entries
    present = (e >> U(63)) & U(1)
    swapped = (e >> U(62)) & U(1)
    cats = present << U(3)
    cats |= swapped << U(4)
    cats |= ((e >> U(61)) & U(1)) << U(2)
    cats |= ((e >> U(55)) & U(1)) << U(7)
    cats |= ((e >> U(58)) & U(1)) << U(8)
    cats |= ((present | swapped) & ~(e >> U(57)) & U(1)) << U(1)
    if info.pfn_visible and info.zero_pfn is not None:
        pfn = e & U((1 << 55) - 1)
        zero = pfn == U(info.zero_pfn)
        if info.huge_zero_pfn is not None:
            zero |= (pfn - U(info.huge_zero_pfn)) < U(HPAGE_PMD_SIZE // PAGE_SIZE)
        zero &= present.astype(bool)
        cats[zero] = (cats[zero] | U(Category.PFNZERO)) & ~U(Category.FILE)
    return cats


class PagemapBackend(Backend):
    """Emulates PAGEMAP_SCAN from /proc/PID/pagemap entries."""

    name = "pagemap"

    def __init__(self, process: Process, info: PagemapInfo | None = None) -> None:
        self.process = process
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
        self.fd = process.open("pagemap")
        self._buf = np.empty(CHUNK_PAGES, dtype="<u8")
        self._vmas: list[Vma] | None = None

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

    def prepare(self) -> None:
        # The kernel walk skips VM_PFNMAP VMAs and never sees [vsyscall].
        self._vmas = [v for v in self.process.vmas() if v.user and not v.pfnmap]

    def _read(self, first_page: int, n: int) -> np.ndarray:
        buf = self._buf[:n]
        mv = memoryview(buf).cast("B")
        got = 0
        with self.process.translate("pagemap"):
            while got < len(mv):
                k = os.preadv(self.fd, [mv[got:]], first_page * 8 + got)
                if k <= 0:
                    break
                got += k
        if got < len(mv):  # past the end of the address space: no entries
            buf[got // 8 :] = 0
        return buf

    def scan_once(self, start: int, end: int, masks: KernelMasks, vec_len: int, max_pages: int):
        if self._vmas is None:
            self.prepare()
        limit = max_pages or (1 << 64) - 1
        mask, inv, anyof, ret = (U(m) for m in masks)
        regions: list[list[int]] = []
        found = 0
        walk_end = end

        def result():
            return np.array([tuple(r) for r in regions], dtype=REGION_DTYPE), walk_end

        for vma in self._vmas:
            if vma.end <= start or vma.start >= end:
                continue
            # VMA-level pre-filter (pagemap_scan_is_interesting_vma): only
            # WPALLOWED, which is always 0 here.
            if masks.category_mask & ~masks.category_inverted & Category.WPALLOWED:
                continue
            lo, hi = max(start, vma.start), min(end, vma.end)
            for chunk in range(lo, hi, CHUNK_PAGES * PAGE_SIZE):
                n = min(CHUNK_PAGES, (hi - chunk) // PAGE_SIZE)
                cats = derive_categories(self._read(chunk // PAGE_SIZE, n), self.info)
                c = cats ^ inv
                hit = (c & mask) == mask
                if anyof:
                    hit &= (c & anyof) != 0
                idx = np.flatnonzero(hit)
                if not idx.size:
                    continue
                rcat = cats[idx] & ret
                cut = np.flatnonzero((np.diff(idx) != 1) | (np.diff(rcat) != 0)) + 1
                first = np.concatenate(([0], cut))
                last = np.concatenate((cut, [idx.size])) - 1
                run_start = (chunk + idx[first] * PAGE_SIZE).tolist()
                run_pages = (idx[last] - idx[first] + 1).tolist()
                run_cat = rcat[first].tolist()
                # Bounded by vec_len: every iteration but merges adds a region.
                for s, npg, cat in zip(run_start, run_pages, run_cat):
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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

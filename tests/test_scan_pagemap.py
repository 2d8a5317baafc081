"""The pagemap fallback's fast paths against a page-by-page reference.

The fallback skips hole blocks, handles uniform chunks as one run, reads
ahead in threads and resumes inside a chunk. Here it reads synthetic
entries (holes, soft-dirty holes, zero-page runs, swap and uffd-wp markers,
file pages...) with small chunks, so every path and every chunk boundary is
crossed, and must give exactly what a per-page loop following the kernel's
``pagemap_scan_output`` gives. tests/test_scan_real.py compares it with the
ioctl on real memory.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dumper.kernel.libc import PAGE_SIZE
from dumper.kernel.pagemap import (PM_FILE, PM_GUARD_REGION, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP,
                                   PM_UFFD_WP)
from dumper.proc import Process
from dumper.proc.maps import Vma
from dumper.scan import Category, ScanMasks, scan_range
from dumper.scan.features import PagemapInfo
from dumper.scan.pagemap import HPAGE_PMD_SIZE, PagemapBackend, derive_categories, derive_one

P = PAGE_SIZE
ZERO_PFN = 0x1234
HUGE_ZERO_PFN = 0x40000
INFO = PagemapInfo(pfn_visible=True, zero_pfn=ZERO_PFN, huge_zero_pfn=HUGE_ZERO_PFN, guard="reported")
BASE = 0x7F0000000000  # first page of the synthetic address space
CHUNK = 1024  # pages: two blocks of 512 per chunk

KINDS = {
    "hole": lambda i: 0,
    "sd_hole": lambda i: PM_SOFT_DIRTY,
    "anon": lambda i: PM_PRESENT | (0x100000 + i),
    "anon_sd": lambda i: PM_PRESENT | PM_SOFT_DIRTY | (0x100000 + i),
    "zero": lambda i: PM_PRESENT | ZERO_PFN,
    "huge_zero": lambda i: PM_PRESENT | PM_FILE | (HUGE_ZERO_PFN + i % 512),
    "file": lambda i: PM_PRESENT | PM_FILE | (0x200000 + i),
    "swap": lambda i: PM_SWAP | (i << 5),
    "uffd_marker": lambda i: PM_SWAP | PM_UFFD_WP,
    "uffd_present": lambda i: PM_PRESENT | PM_UFFD_WP | (0x300000 + i),
    "guard": lambda i: PM_SWAP | PM_GUARD_REGION,
}


class SyntheticPagemap(PagemapBackend):
    """The fallback reading ``entries`` (one per page from BASE) within ``vmas``."""

    def __init__(self, entries: np.ndarray, vmas: list[tuple[int, int]], **kw) -> None:
        super().__init__(Process(os.getpid()), INFO, chunk_pages=kw.pop("chunk_pages", CHUNK), **kw)
        self.entries = entries
        self.fake_vmas = [Vma(s, e, "rw-p", 0, 0, 0, 0, "") for s, e in vmas]
        self.reads = 0

    def _load_vmas(self, vmas=None) -> None:
        self._vmas = self.fake_vmas if vmas is None else vmas

    def read_entries(self, buf, first_page, n):
        self.reads += 1
        i = first_page - BASE // P
        out = buf[:n]
        out[:] = 0
        have = self.entries[max(i, 0) : max(i + n, 0)]
        out[max(-i, 0) : max(-i, 0) + len(have)] = have
        return out


def reference_categories(e: np.ndarray, info: PagemapInfo) -> np.ndarray:
    """Categories bit by bit, as Documentation/admin-guide/mm/pagemap.rst
    describes the entry (the fallback uses a lookup table)."""
    U = np.uint64
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


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.one_of(st.integers(0, 2**64 - 1),
                                  st.sampled_from([0, ZERO_PFN, HUGE_ZERO_PFN, HUGE_ZERO_PFN + 511,
                                                   HUGE_ZERO_PFN + 512]).flatmap(
                                      lambda pfn: st.integers(0, 511).map(lambda top: (top << 55) | pfn))),
                        min_size=1, max_size=40),
       pfn_visible=st.booleans())
def test_derived_categories_follow_the_entry_bits(entries, pfn_visible):
    info = INFO if pfn_visible else PagemapInfo(False, None, None, "reported")
    e = np.array(entries, dtype=np.uint64)
    want = reference_categories(e, info).tolist()
    assert derive_categories(e, info).tolist() == want
    assert [derive_one(x, info) for x in entries] == want


def reference_scan_once(cats, vmas, start, end, masks, vec_len, max_pages):
    """PAGEMAP_SCAN, one page at a time (fs/proc/task_mmu.c pagemap_scan_output);
    ``cats`` holds each page's categories, from BASE."""
    limit = max_pages or float("inf")
    regions, found = [], 0
    if masks.category_mask & ~masks.category_inverted & Category.WPALLOWED:
        return regions, end
    for vs, ve in vmas:
        for addr in range(max(start, vs), min(end, ve), P):
            i = (addr - BASE) // P
            cat = cats[i] if 0 <= i < len(cats) else 0
            if not masks.match(cat):
                continue
            rc = cat & masks.return_mask
            if found >= limit:
                return regions, addr
            if regions and regions[-1][1] == addr and regions[-1][2] == rc:
                regions[-1][1] += P
            elif len(regions) >= vec_len:
                return regions, addr
            else:
                regions.append([addr, addr + P, rc])
            found += 1
    return regions, end


def reference_scan_range(cats, vmas, start, end, masks, vec_len, max_pages):
    out, pos, left = [], start, max_pages
    while pos < end:
        regs, w_end = reference_scan_once(cats, vmas, pos, end, masks, vec_len, left)
        out += regs
        if regs:
            w_end = max(w_end, regs[-1][1])
            if max_pages:
                left -= sum(e - s for s, e, _ in regs) // P
        if w_end >= end or (max_pages and left <= 0):
            return out, (end if w_end >= end else w_end)
        pos = w_end
    return out, end


@st.composite
def layouts(draw):
    """Entries made of runs of one kind, and VMAs over them (with gaps)."""
    pieces, n = [], 0
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(sorted(KINDS)))
        length = draw(st.sampled_from([1, 2, 3, 511, 512, 513, 1023, 1024, 1500, 3000]))
        pieces.append(np.array([KINDS[kind](n + i) for i in range(length)], dtype=np.uint64))
        n += length
    entries = np.concatenate(pieces)
    # sprinkle single pages into the holes
    for i in draw(st.lists(st.integers(0, n - 1), max_size=8)):
        entries[i] = PM_PRESENT | (0x500000 + i)
    cuts = sorted(set(draw(st.lists(st.integers(0, n), min_size=2, max_size=8))))
    vmas = []
    for a, b in zip(cuts[::2], cuts[1::2]):
        if a < b:
            vmas.append((BASE + a * P, BASE + b * P))
    if not vmas:
        vmas = [(BASE, BASE + n * P)]
    return entries, vmas


CATS = [c for c in Category if c not in (Category.HUGE, Category.WPALLOWED)]


@st.composite
def masks(draw):
    sub = st.sets(st.sampled_from(CATS)).map(lambda s: Category(sum(s)))
    req, anyof, exc, ret = (draw(sub) for _ in range(4))
    if draw(st.booleans()):  # a dump's selection, the common case
        return ScanMasks(anyof="PRESENT,SWAPPED", returned=ret)
    return ScanMasks(required=req & ~exc, anyof=anyof & ~exc, excluded=exc, returned=ret)


@settings(max_examples=150, deadline=None)
@given(layout=layouts(), m=masks(), vec_len=st.sampled_from([1, 2, 7, 512]),
       max_pages=st.sampled_from([0, 0, 1, 5, 700]), threads=st.sampled_from([0, 2]))
def test_fallback_equals_the_page_by_page_rule(layout, m, vec_len, max_pages, threads):
    entries, vmas = layout
    start, end = BASE, BASE + (len(entries) + 3) * P  # past the last entry: reads as holes
    cats = reference_categories(entries, INFO).tolist()
    with SyntheticPagemap(entries, vmas, threads=threads, progress=False) as be:
        got = scan_range(be, start, end, m, vec_len=vec_len, max_pages=max_pages)
        want, walk_end = reference_scan_range(cats, vmas, start, end, m.to_kernel(), vec_len, max_pages)
        assert got.array.tolist() == [tuple(r) for r in want]
        assert got.walk_end == walk_end
        # One call alone, from inside the range, outside any scan_range.
        mid = BASE + (len(entries) // 3) * P
        arr, w_end = be.scan_once(mid, end, m.to_kernel(), vec_len, max_pages)
        regs, w_want = reference_scan_once(cats, vmas, mid, end, m.to_kernel(), vec_len, max_pages)
        assert (arr.tolist(), w_end) == ([tuple(r) for r in regs], w_want)


def test_resuming_reads_each_chunk_once():
    # Every other page present: 512 regions per call, 4 calls per chunk.
    n = 8 * CHUNK
    entries = np.zeros(n, dtype=np.uint64)
    entries[::2] = PM_PRESENT | 0x100000
    with SyntheticPagemap(entries, [(BASE, BASE + n * P)], threads=0, progress=False) as be:
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(anyof="PRESENT", returned="PRESENT"))
        assert len(r) == n // 2 and r.walk_end == BASE + n * P
        assert be.reads == 8


def test_hole_chunks_cost_no_per_entry_work(monkeypatch):
    # A chunk of holes, or of soft-dirty holes, is never decoded entry by entry.
    import dumper.scan.pagemap as pm

    n = 16 * CHUNK
    entries = np.zeros(n, dtype=np.uint64)
    entries[8 * CHUNK :] = PM_SOFT_DIRTY
    entries[5 * CHUNK + 7] = PM_PRESENT | 0x100000
    decoded = []
    many, one = pm.derive_categories, pm.derive_one
    monkeypatch.setattr(pm, "derive_categories", lambda e, info: decoded.append(len(e)) or many(e, info))
    monkeypatch.setattr(pm, "derive_one", lambda e, info: decoded.append(1) or one(e, info))
    with SyntheticPagemap(entries, [(BASE, BASE + n * P)], threads=0, progress=False) as be:
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(anyof="PRESENT,SWAPPED", returned="PRESENT"))
    assert [(x.start, x.end) for x in r] == [(BASE + (5 * CHUNK + 7) * P, BASE + (5 * CHUNK + 8) * P)]
    # one entry per uniform chunk (15 of them), the one candidate of the other: never the 16384 entries
    assert decoded == [1] * 16


def test_progress_bar_counts_the_address_space(monkeypatch):
    import tqdm

    closed = []

    class Recording(tqdm.tqdm):
        def close(self):
            closed.append((self.n, self.total, self.fp))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    n = 4 * CHUNK
    entries = np.zeros(n, dtype=np.uint64)
    entries[5] = PM_PRESENT | 0x100000
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    with SyntheticPagemap(entries, [(BASE, BASE + n * P)], threads=0, progress=True) as be:
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(anyof="PRESENT", returned="PRESENT"), vec_len=1)
    assert len(r) == 1
    assert "scanning pagemap" in buf.getvalue()
    # bytes of address space, all walked (tqdm's own __del__ may close it again)
    assert closed and closed[0][:2] == (n * P, n * P)


def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    entries = np.zeros(4 * CHUNK, dtype=np.uint64)
    with SyntheticPagemap(entries, [(BASE, BASE + len(entries) * P)], threads=0) as be:
        scan_range(be, BASE, BASE + len(entries) * P, ScanMasks(anyof="PRESENT", returned="PRESENT"))
    assert buf.getvalue() == ""


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_reader_threads_are_released(threads):
    entries = np.zeros(4 * CHUNK, dtype=np.uint64)
    be = SyntheticPagemap(entries, [(BASE, BASE + len(entries) * P)], threads=threads, progress=False)
    scan_range(be, BASE, BASE + len(entries) * P, ScanMasks(anyof="PRESENT", returned="PRESENT"))
    be.close()
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("dumper-pagemap")]
    assert be.fd == -1


def test_many_small_vmas_share_reads():
    # 1000 one-page VMAs, one page apart: a read per chunk, not per VMA.
    n = 2000
    entries = np.zeros(n, dtype=np.uint64)
    entries[::2] = PM_PRESENT | 0x100000
    vmas = [(BASE + i * P, BASE + (i + 1) * P) for i in range(0, n, 2)]
    with SyntheticPagemap(entries, vmas, threads=0, progress=False) as be:
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(anyof="PRESENT", returned="PRESENT"))
        assert [(x.start, x.end) for x in r] == vmas
        assert be.reads == 2  # 2000 pages in chunks of 1024
        # Masks that select holes: the gaps between VMAs are still not reported.
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(excluded="SWAPPED", returned=""))
        assert [(x.start, x.end) for x in r] == vmas


def test_given_vmas_are_not_read_again(monkeypatch):
    entries = np.zeros(CHUNK, dtype=np.uint64)
    entries[3] = PM_PRESENT | 0x100000
    with SyntheticPagemap(entries, [], threads=0, progress=False) as be:
        given_vmas = [Vma(BASE, BASE + CHUNK * P, "rw-p", 0, 0, 0, 0, "")]
        r = scan_range(be, BASE, BASE + CHUNK * P, ScanMasks(anyof="PRESENT", returned=""), vmas=given_vmas)
        assert [(x.start, x.end) for x in r] == [(BASE + 3 * P, BASE + 4 * P)]
        # without them: the (empty) list the backend reads itself
        assert len(scan_range(be, BASE, BASE + CHUNK * P, ScanMasks(anyof="PRESENT", returned=""))) == 0


@pytest.mark.parametrize("tty, progress, shown", [(True, None, True), (False, None, False), (False, True, True),
                                                   (True, False, False)])
def test_progress_bar_by_default_only_on_a_terminal(monkeypatch, tty, progress, shown):
    import tqdm

    import dumper.scan.pagemap as pm

    made = []

    class Recording(tqdm.tqdm):
        def __init__(self, *a, **kw):
            made.append(kw)
            super().__init__(*a, **kw)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    monkeypatch.setattr(pm, "_stderr_is_tty", lambda: tty)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    entries = np.zeros(2 * CHUNK, dtype=np.uint64)
    with SyntheticPagemap(entries, [(BASE, BASE + len(entries) * P)], threads=0, progress=progress) as be:
        scan_range(be, BASE, BASE + len(entries) * P, ScanMasks(anyof="PRESENT", returned=""))
    assert bool(made) == shown
    if made:
        # automatic: only scans over a second; asked for: at once
        assert made[0]["delay"] == (1.0 if progress is None else 0) and made[0]["total"] == len(entries) * P


# --- the residency pre-filter ----------------------------------------------------

_MARKERS = PM_UFFD_WP | PM_GUARD_REGION


class ResidentSynthetic(SyntheticPagemap):
    """The fallback with a residency pre-filter over synthetic entries, as
    the kernel would answer (dumper/scan/pagemap.py's docstring): mincore
    says 1 for present pages and for ``cached`` pages (swap entries in the
    swap cache, or any page: a superset is allowed), 0 for holes, markers
    and other swap entries; VmFlags name uffd-wp and guard VMAs; smaps
    counts swap entries."""

    def __init__(self, entries, vmas, cached=(), **kw) -> None:
        super().__init__(entries, vmas, residency=self.mincore, residency_min=0, **kw)
        self.cached = set(cached)
        self.asked: list[list[tuple[int, int]]] = []
        self.swapped = set()
        for i, v in enumerate(self.fake_vmas):
            e = self._entries(v.start, v.end)
            flags = {"rd", "wr", "mr", "mw", "me", "ac"}
            flags |= {"uw"} if (e & np.uint64(PM_UFFD_WP)).any() else set()
            flags |= {"gu"} if (e & np.uint64(PM_GUARD_REGION)).any() else set()
            self.fake_vmas[i] = Vma(v.start, v.end, "rw-p", 0, 0, 0, 0, "", vmflags=frozenset(flags))
            if ((e & np.uint64(PM_SWAP)).astype(bool) & ~(e & np.uint64(_MARKERS)).astype(bool)).any():
                self.swapped.add(v.start)

    def _entries(self, lo, hi):
        i, j = (lo - BASE) // P, (hi - BASE) // P
        out = np.zeros(j - i, dtype=np.uint64)
        have = self.entries[max(i, 0) : max(j, 0)]
        out[max(-i, 0) : max(-i, 0) + len(have)] = have
        return out

    def mincore(self, ranges):
        self.asked.append(list(ranges))
        starts, ends = [], []
        for lo, hi in ranges:
            e = self._entries(lo, hi)
            resident = (e & np.uint64(PM_PRESENT)) != 0
            for k in self.cached:
                if lo <= BASE + k * P < hi:
                    resident[(BASE + k * P - lo) // P] = True
            edges = np.diff(np.concatenate(([0], resident.astype(np.int8), [0])))
            starts += [lo + int(k) * P for k in np.flatnonzero(edges == 1)]
            ends += [lo + int(k) * P for k in np.flatnonzero(edges == -1)]
        return np.array(starts, np.uint64), np.array(ends, np.uint64)

    def _swapped_vmas(self):
        return self.swapped


@settings(max_examples=150, deadline=None)
@given(layout=layouts(), m=masks(), vec_len=st.sampled_from([1, 2, 7, 512]),
       max_pages=st.sampled_from([0, 0, 1, 5, 700]), threads=st.sampled_from([0, 2]),
       cached=st.lists(st.integers(0, 12000), max_size=6))
def test_prefiltered_fallback_equals_the_page_by_page_rule(layout, m, vec_len, max_pages, threads, cached):
    entries, vmas = layout
    start, end = BASE, BASE + (len(entries) + 3) * P
    cats = reference_categories(entries, INFO).tolist()
    with ResidentSynthetic(entries, vmas, cached, threads=threads, progress=False) as be:
        got = scan_range(be, start, end, m, vec_len=vec_len, max_pages=max_pages)
        want, walk_end = reference_scan_range(cats, vmas, start, end, m.to_kernel(), vec_len, max_pages)
        assert got.array.tolist() == [tuple(r) for r in want]
        assert got.walk_end == walk_end
        # The pre-filter was used exactly where it is exact.
        for v in be.fake_vmas:
            why = be.vma_reads.get(v.start)
            if v.start in be.swapped:
                assert why in ("swapped pages (mincore does not see them)",
                               "the masks select pages mincore reports as absent", "registered with userfaultfd")
            elif "uw" in v.vmflags:
                assert why == "registered with userfaultfd"


def test_prefilter_reads_only_the_resident_pages():
    # 64 chunks, two present pages far apart: 2 reads instead of 64.
    n = 64 * CHUNK
    entries = np.zeros(n, dtype=np.uint64)
    entries[[5, 40 * CHUNK + 9]] = PM_PRESENT | 0x100000
    with ResidentSynthetic(entries, [(BASE, BASE + n * P)], threads=0, progress=False) as be:
        dump = ScanMasks(anyof="PRESENT,SWAPPED", excluded="FILE,PFNZERO", returned="PRESENT")
        r = scan_range(be, BASE, BASE + n * P, dump)
        assert [(x.start, x.end) for x in r] == [(BASE + 5 * P, BASE + 6 * P),
                                                 (BASE + (40 * CHUNK + 9) * P, BASE + (40 * CHUNK + 10) * P)]
        assert be.reads == 2 and be.asked == [[(BASE, BASE + n * P)]]
        assert be.vma_reads == {BASE: "resident pages"}
        # Masks that select holes: every entry is read, mincore is not asked.
        be.reads = 0
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(excluded="PRESENT", returned=""))
        assert r.nr_pages == n - 2 and be.reads == 64 and len(be.asked) == 1
        assert be.vma_reads == {BASE: "the masks select pages mincore reports as absent"}
        # A VMA under the size threshold is read whole.
        be.reads, be.residency_min = 0, (n + 1) * P
        assert len(scan_range(be, BASE, BASE + n * P, dump)) == 2 and be.reads == 64 and be.vma_reads == {}


def test_prefilter_falls_back_when_mincore_cannot_run():
    n = 8 * CHUNK
    entries = np.zeros(n, dtype=np.uint64)
    entries[7] = PM_PRESENT | 0x100000
    with ResidentSynthetic(entries, [(BASE, BASE + n * P)], threads=0, progress=False) as be:
        be.residency = lambda ranges: None
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(anyof="PRESENT", returned=""))
        assert r.nr_pages == 1 and be.reads == 8
        assert be.vma_reads == {BASE: "no residency (mincore could not run in the target)"}


def test_swap_is_checked_after_the_mincore_pass():
    # A page swapped out between mincore and the smaps read: mincore saw it
    # present, smaps now counts it: the VMA is read whole.
    n = 8 * CHUNK
    entries = np.zeros(n, dtype=np.uint64)
    entries[7] = PM_PRESENT | 0x100000
    with ResidentSynthetic(entries, [(BASE, BASE + n * P)], threads=0, progress=False) as be:
        order = []
        mincore = be.mincore
        be.residency = lambda ranges: order.append("mincore") or mincore(ranges)
        be._swapped_vmas = lambda: order.append("smaps") or {BASE}
        r = scan_range(be, BASE, BASE + n * P, ScanMasks(anyof="PRESENT,SWAPPED", returned=""))
        assert r.nr_pages == 1 and be.reads == 8 and order == ["mincore", "smaps"]
        assert be.vma_reads == {BASE: "swapped pages (mincore does not see them)"}

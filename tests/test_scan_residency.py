"""The pagemap fallback's residency pre-filter on real, frozen processes.

mincore(2), injected into the frozen target by the warden, tells the
fallback which pages of a large anonymous VMA to read (dumper/scan/pagemap.py
explains when that is exact). Every test here compares with the
PAGEMAP_SCAN ioctl on the same frozen state (before 6.7, with the
fallback reading every entry), on layouts where a missing
check would change the answer: uffd-wp and guard markers and swapped-out
pages are invisible to mincore. The size threshold is lowered to 0 so the
small layouts go through the pre-filter too.
"""

from __future__ import annotations

import ctypes
import functools
import os
from contextlib import contextmanager

import pytest

from dumper.dump import dump
from dumper.dump.select import dump_masks
from dumper.image.dumpfacts import with_guards
from dumper.kernel import ptrace, x86_64
from dumper.kernel.libc import PAGE_SIZE, libc
from dumper.proc import Process
from dumper.proc.residency import resident_runs
from dumper.proc.warden import Warden
from dumper.scan import Category, ScanMasks, open_backend, scan_range
from dumper.scan.features import probe_pagemap, probe_scan_categories
from dumper.scan.pagemap import PagemapBackend

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(x86_64.ARCH != "x86_64", reason="syscall injection is x86_64 only")]

P = PAGE_SIZE
RESIDENT = "resident pages"
MADV_PAGEOUT = 21


# -- run in the warden (module level: pickled by reference) -------------------

def leader_regs(ctx, pid):
    r = x86_64.user_regs_struct()
    ptrace.getregs(ctx.freezer(pid).main_tid, r)
    return bytes(r)


# -- helpers -------------------------------------------------------------------

def common_bits() -> Category:
    with open_backend(os.getpid(), "pagemap") as pm:
        return pm.supported & (probe_scan_categories() or pm.supported)


def the_dumps_masks(supported: Category) -> ScanMasks:
    """What dumper dump asks the scanner (dumper/dump/session.py _scan_one)."""
    m = dump_masks(supported)
    m = ScanMasks(anyof=m.anyof, excluded=m.excluded, returned=(Category.WRITTEN | Category.SWAPPED) & supported)
    return with_guards(m, supported)


@contextmanager
def frozen(pid: int):
    """The target frozen by a warden, left as found: its maps and leader
    registers are compared before and after."""
    with open(f"/proc/{pid}/maps") as f:
        maps_before = f.read()
    with Warden() as w:
        w.freeze(pid, tree=False)
        regs = w.call(leader_regs, pid)
        yield w
        assert w.call(leader_regs, pid) == regs  # registers as found
        with open(f"/proc/{pid}/maps") as f:
            assert f.read() == maps_before  # no scratch mapping left while frozen
        w.keep()
    with open(f"/proc/{pid}/maps") as f:
        assert f.read() == maps_before


def whole_range(pid: int) -> tuple[int, int, list]:
    vmas = [v for v in Process(pid).vmas() if v.user]
    return vmas[0].start, vmas[-1].end, vmas


def prefiltered(w, pid, masks, residency=None, lo=None, hi=None):
    """The fallback with the pre-filter on every anonymous VMA; (result, vma_reads)."""
    start, end, vmas = whole_range(pid)
    residency = residency or functools.partial(w.call, resident_runs, pid)
    with PagemapBackend(Process(pid), progress=False, residency=residency, residency_min=0) as be:
        r = scan_range(be, start if lo is None else lo, end if hi is None else hi, masks, vmas=vmas)
        return r, dict(be.vma_reads)


def reference(pid, masks, lo=None, hi=None):
    """The answer to compare with: PAGEMAP_SCAN where the kernel has it, else
    (before 6.7) the fallback reading every entry, which tests/test_scan_real.py
    holds to the ioctl on newer kernels."""
    start, end, vmas = whole_range(pid)
    lo, hi = start if lo is None else lo, end if hi is None else hi
    if probe_scan_categories():
        with open_backend(Process(pid), "ioctl") as be:
            return scan_range(be, lo, hi, masks)
    with PagemapBackend(Process(pid), progress=False) as be:
        return scan_range(be, lo, hi, masks, vmas=vmas)


def assert_same(a, b):
    assert a.walk_end == b.walk_end
    assert a.array.tolist() == b.array.tolist()


def pages_of(runs) -> set[int]:
    s, e = runs
    return {a for x, y in zip(s.tolist(), e.tolist()) for a in range(x, y, P)}


def region_pages(result, lo, hi) -> set[int]:
    return {a for r in result for a in range(max(r.start, lo), min(r.end, hi), P)}


# -- the tests ---------------------------------------------------------------------

def test_prefiltered_scan_equals_the_ioctl_on_every_layout(spawn_target):
    t = spawn_target("dense,sparse,zero,file,shared,thp,guard,uffd,alt")
    r = t.regions
    guard_kernel = probe_pagemap().guard != "absent"
    with frozen(t.pid) as w:
        for masks in (the_dumps_masks(common_bits()),
                      ScanMasks(anyof="PRESENT,SWAPPED", returned=common_bits()),
                      ScanMasks(anyof="PRESENT,SWAPPED", excluded="GUARD" if guard_kernel else "", returned="")):
            got, reads = prefiltered(w, t.pid, masks)
            assert_same(got, reference(t.pid, masks))
            for name in ("dense", "sparse", "zero", "thp", "alt"):
                if name in r:
                    assert reads[r[name][0]] == RESIDENT, name
            if "uffd" in r:
                assert reads[r["uffd"][0]] == "registered with userfaultfd"
            assert r["file"][0] not in reads and r["shared"][0] not in reads  # not private anonymous
            if guard_kernel:
                guard = reads[r["guard"][0]]
                assert guard == (RESIDENT if "GUARD" in Category.names(masks.excluded)
                                 else "the masks select pages mincore reports as absent")
        # What makes the checks load-bearing: mincore misses the markers the ioctl reports.
        if "uffd" in r:
            a, n = r["uffd"]
            runs = w.call(resident_runs, t.pid, [(a, a + n)])
            markers = region_pages(reference(t.pid, ScanMasks(anyof="SWAPPED", returned=""), a, a + n), a, a + n)
            assert markers and not markers & pages_of(runs)
        if guard_kernel:
            a, n = r["guard"]
            runs = w.call(resident_runs, t.pid, [(a, a + n)])
            assert pages_of(runs) == {a + p * P for p in range(16) if p not in (4, 5, 6, 12)}


def test_a_sparse_reservation_reads_only_its_resident_pages(spawn_target):
    t = spawn_target("sparse,thp,zero")
    a, n = t.regions["sparse"]  # 64 GiB, 100 pages written
    with frozen(t.pid) as w:
        runs = w.call(resident_runs, t.pid, [(a, a + n)])
        assert len(pages_of(runs)) == 100
        masks = the_dumps_masks(common_bits())
        got, reads = prefiltered(w, t.pid, masks)
        assert reads[a] == RESIDENT and got.nr_pages > 100
        assert_same(got, reference(t.pid, masks))
        # A part of the range only (the resumed walk clips the candidate runs).
        lo, hi = a + n // 3 // P * P, a + n // 2
        got, _ = prefiltered(w, t.pid, masks, lo=lo, hi=hi)
        assert_same(got, reference(t.pid, masks, lo, hi))
        assert got.nr_pages > 0
        # THP (its huge zero page too, where THP is on), the small zero page:
        # mincore sees exactly the pages the scanner calls present.
        present = ScanMasks(anyof="PRESENT,SWAPPED", returned="")
        for name in ("thp", "zero"):
            lo, n = t.regions[name]
            want = region_pages(reference(t.pid, present, lo, lo + n), lo, lo + n)
            assert want and pages_of(w.call(resident_runs, t.pid, [(lo, lo + n)])) == want, name


def _swapped_out(pid: int, addr: int, length: int) -> int:
    """Swap bytes of the VMA at ``addr`` now (smaps)."""
    return next(v.swap for v in Process(pid).vmas() if v.start <= addr < v.end)


def test_swapped_pages_make_the_vma_read_whole(spawn_target, swapfile):
    t = spawn_target("swap,sparse")
    a, n = t.regions["swap"]
    t.command("pageout swap")
    if not _swapped_out(t.pid, a, n):
        pytest.skip("MADV_PAGEOUT swapped nothing out (memory cgroup or zswap policy)")
    with frozen(t.pid) as w:
        masks = the_dumps_masks(common_bits())
        got, reads = prefiltered(w, t.pid, masks)
        assert reads[a] == "swapped pages (mincore does not see them)"
        assert reads[t.regions["sparse"][0]] == RESIDENT
        want = reference(t.pid, masks)
        assert_same(got, want)
        # Here (6.18, no memory pressure) MADV_PAGEOUT leaves the pages in the
        # swap cache, where mincore sees them; under pressure they leave it
        # and only the Swap: check keeps them (tests/test_scan_pagemap.py
        # models that case).
        assert len(region_pages(got, a, a + n)) == 64


def _pidfd_pageout(pid: int, addr: int, length: int) -> None:
    """MADV_PAGEOUT on another process's range (process_madvise, 5.10)."""
    L = ctypes.c_long
    pidfd = libc.syscall(L(x86_64.NR_pidfd_open), L(pid), L(0))
    if pidfd < 0:
        pytest.skip("pidfd_open refused")
    try:
        iov = (ctypes.c_uint64 * 2)(addr, length)
        if libc.syscall(L(x86_64.NR_process_madvise), L(pidfd), L(ctypes.addressof(iov)), L(1), L(MADV_PAGEOUT),
                        L(0)) < 0:
            pytest.skip(f"process_madvise(MADV_PAGEOUT) refused: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pidfd)


def test_pages_swapped_out_during_the_pass_are_not_missed(spawn_target, swapfile):
    """The kernel may swap pages of a frozen target out at any time: smaps is
    read after the mincore pass, so pages that mincore saw present and that
    are swapped (and out of the swap cache) by then still make the VMA read whole."""
    t = spawn_target("swap")
    a, n = t.regions["swap"]
    calls = []

    def then_pageout(w, ranges):
        runs = w.call(resident_runs, t.pid, ranges)
        calls.append(None if runs is None else len({x for x in pages_of(runs) if a <= x < a + n}))
        _pidfd_pageout(t.pid, a, n)
        return runs

    with frozen(t.pid) as w:
        masks = the_dumps_masks(common_bits())
        got, reads = prefiltered(w, t.pid, masks, residency=functools.partial(then_pageout, w))
        if not _swapped_out(t.pid, a, n):
            pytest.skip("MADV_PAGEOUT swapped nothing out (memory cgroup or zswap policy)")
        assert calls == [64]  # mincore saw every page present
        assert reads[a] == "swapped pages (mincore does not see them)"
        assert_same(got, reference(t.pid, masks))
        assert len(region_pages(got, a, a + n)) == 64


def test_no_residency_without_a_frozen_target(spawn_target):
    """``dumper scan`` (no warden): the fallback reads every entry, as before."""
    t = spawn_target("sparse")
    a, n = t.regions["sparse"]
    with open_backend(Process(t.pid), "pagemap", progress=False) as be:
        r = scan_range(be, a, a + n, ScanMasks(anyof="PRESENT", returned=""), vmas=whole_range(t.pid)[2])
        assert r.nr_pages == 100 and be.vma_reads == {}


@pytest.mark.parametrize("backend", ["pagemap", "ioctl"])
def test_dump_with_the_fallback_holds_the_same_pages(spawn_target, tmp_path, monkeypatch, backend):
    """dumper dump --backend pagemap goes through the pre-filter for a VMA of
    1 GiB or more (the 64 GiB reservation) and dumps what the ioctl dump does."""
    if backend == "ioctl" and not probe_scan_categories():
        pytest.skip("kernel has no PAGEMAP_SCAN (< 6.7)")
    from test_dump import image_pages

    t = spawn_target("dense,zero,guard,thp,sparse,alt")
    seen = {}
    finish = PagemapBackend.finish

    def record(self):
        seen.update(self.vma_reads)
        finish(self)

    monkeypatch.setattr(PagemapBackend, "finish", record)
    dump(t.pid, tmp_path / "ck", backend=backend, thaw="leave-stopped")
    pages = image_pages(tmp_path / "ck", t.pid)
    a, n = t.regions["sparse"]
    assert len([x for x in pages if a <= x < a + n]) == 100
    if backend == "pagemap":
        assert seen == {a: RESIDENT}  # the only anonymous VMA of 1 GiB or more
        dump(t.pid, tmp_path / "ck2", backend="ioctl" if probe_scan_categories() else "pagemap",
             thaw="leave-stopped")
        other = image_pages(tmp_path / "ck2", t.pid)
        assert sorted(pages) == sorted(other)  # the target stayed stopped in between
        # The layouts' bytes (elsewhere the kernel may write while it is stopped:
        # the rseq area's cpu_id, updated when an injected call ran on another CPU).
        ours = [x for x in pages if any(lo <= x < lo + n for lo, n in t.regions.values())]
        assert len(ours) > 1000 and [hex(x) for x in ours if pages[x] != other[x]] == []

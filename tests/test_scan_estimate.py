"""estimate_scan_seconds: what the dump warns with before a long freeze."""

from __future__ import annotations

import os
import time

import pytest

from dumper.kernel.libc import PAGE_SIZE
from dumper.proc import Process
from dumper.proc.maps import Vma
from dumper.scan import ScanMasks, estimate, open_backend, scan_range
from dumper.scan.estimate import IOCTL_COSTS, estimate_scan_seconds
from dumper.scan.features import ScanCosts, probe_scan_categories, probe_scan_costs

P = PAGE_SIZE
TiB = 1 << 40


def vma(size: int, rss: int = 0, swap: int = 0) -> Vma:
    return Vma(0x10000000, 0x10000000 + size, "rw-p", 0, 0, 0, 0, "", rss=rss, swap=swap)


def test_the_estimate_follows_length_and_populated_pages(monkeypatch):
    costs = ScanCosts(per_scan=1e-3, per_vma=1e-5, per_hole_page=1e-8, per_present_page=1e-7)
    monkeypatch.setattr(estimate, "probe_scan_costs", lambda name: costs)
    # 16 TiB reservation, 4 MiB populated (1024 pages), 1 MiB swapped (256 pages), in one VMA
    got = estimate_scan_seconds("pagemap", [vma(16 * TiB, rss=4 << 20, swap=1 << 20)])
    pages = 16 * TiB // P
    assert got == pytest.approx(1e-3 + 1e-5 + (pages - 1280) * 1e-8 + 1280 * 1e-7)
    # from maps (no rss): every page a hole
    assert estimate_scan_seconds("pagemap", [vma(16 * TiB)]) == pytest.approx(1e-3 + 1e-5 + pages * 1e-8)
    # an open backend names itself; 5000 VMAs of one page
    with open_backend(os.getpid(), "pagemap", progress=False) as be:
        assert estimate_scan_seconds(be, [vma(P)] * 5000) == pytest.approx(1e-3 + 5000 * (1e-5 + 1e-8))


def test_a_scan_short_at_worst_costs_needs_no_probe(monkeypatch):
    def no_probe(name):
        raise AssertionError("probed for a scan that cannot be long")

    monkeypatch.setattr(estimate, "probe_scan_costs", no_probe)
    got = estimate_scan_seconds("pagemap", [vma(64 << 20, rss=1 << 20)])  # 64 MiB, 256 pages written
    assert got == pytest.approx(0.05 + 2e-4 + (16384 - 256) * 1e-6 + 256 * 2e-5) and got < estimate.NO_PROBE_BELOW


def test_the_ioctl_estimate_ignores_holes():
    big = estimate_scan_seconds("ioctl", [vma(16 * TiB, rss=4 << 20)])
    assert big == pytest.approx(IOCTL_COSTS.per_scan + IOCTL_COSTS.per_vma + (16 * TiB // P - 1024) * IOCTL_COSTS.per_hole_page
                                + 1024 * IOCTL_COSTS.per_present_page)
    assert big < 1.0
    want = "ioctl" if probe_scan_categories() else "pagemap"
    if want == "ioctl":
        assert estimate_scan_seconds("auto", [vma(16 * TiB, rss=4 << 20)]) == big


def test_probed_costs_are_plausible():
    c = probe_scan_costs("pagemap")
    # The kernel emits an entry per page: at least a few ns each, holes cheaper than populated pages
    # by far on any machine; under 1 us per hole even on a TCG guest.
    assert 1e-10 < c.per_hole_page < 1e-6
    assert c.per_present_page > c.per_hole_page
    assert c.per_vma >= 0 and c.per_scan > 0


@pytest.mark.kernel
def test_the_pagemap_estimate_is_the_right_order(spawn_target):
    # A real scan of a 64 GiB reservation with a few pages, against the estimate.
    t = spawn_target("sparse")
    addr, length = t.regions["sparse"]
    proc = Process(t.pid)
    vmas = [v for v in proc.vmas() if v.start <= addr < v.end]
    est = estimate_scan_seconds("pagemap", vmas)
    with open_backend(proc, "pagemap", progress=False) as be:
        t0 = time.perf_counter()
        scan_range(be, vmas[0].start, vmas[0].end, ScanMasks(anyof="PRESENT,SWAPPED", returned=""))
        took = time.perf_counter() - t0
    # The right order of magnitude, with room for a loaded machine either way.
    assert est / 10 < took < est * 20, (est, took)


def test_long_scan_note(monkeypatch):
    from dumper.scan import long_scan_note

    def no_probe(name):
        raise AssertionError("probed for a scan that cannot be long")

    monkeypatch.setattr(estimate, "probe_scan_costs", no_probe)
    assert long_scan_note("pagemap", [vma(64 << 20)] * 10) is None  # 640 MiB: under a second even at worst
    costs = ScanCosts(per_scan=1e-3, per_vma=1e-5, per_hole_page=6e-9, per_present_page=3e-7)
    monkeypatch.setattr(estimate, "probe_scan_costs", lambda name: costs)
    assert (long_scan_note("pagemap", [vma(16 * TiB, rss=4 << 20), vma(64 << 20)])
            == "scanning 16.0 TiB of mappings with the pagemap fallback: about 26 s frozen")
    assert long_scan_note("pagemap", [vma(16 * TiB)], threshold=60) is None
    assert long_scan_note("ioctl", [vma(16 * TiB, rss=4 << 20)]) is None  # holes cost the ioctl nothing


def test_a_noisy_probe_never_makes_a_cost_zero():
    """On a busy machine the 8 GiB hole walk once took no longer than the
    2 GiB one: the per-hole cost came out 0 and a long fallback scan would
    have gone unannounced. The larger walk alone then gives the figure."""
    from dumper.scan.features import _per_unit

    assert _per_unit((0.002, 0.008), (1000, 4000), 0.0001) == pytest.approx(0.006 / 3000)
    assert _per_unit((0.008, 0.007), (1000, 4000), 0.001) == pytest.approx(0.006 / 4000)
    assert _per_unit((0.008, 0.008), (1000, 4000), 0.1) == pytest.approx(0.004 / 4000)


def test_the_estimate_counts_mincore_where_the_dump_prefilters(monkeypatch):
    """A dump's fallback reads only the resident pages of large anonymous
    VMAs (mincore in the frozen target): their length costs a mincore byte
    per page, not a pagemap entry; VMAs it cannot pre-filter (userfaultfd,
    swap, file-backed, small) cost what they did."""
    import dumper.scan.pagemap as pm

    costs = ScanCosts(per_scan=1e-3, per_vma=1e-5, per_hole_page=8e-9, per_present_page=1e-7, per_mincore_page=2e-9)
    monkeypatch.setattr(estimate, "probe_scan_costs", lambda name: costs)
    monkeypatch.setattr(pm, "probe_guard_vmflag", lambda: True)  # "gu" tells the guard VMAs
    pages = 16 * TiB // P

    def anon(flags="rd wr mr mw me ac", swap=0, path=""):
        return Vma(0x10000000, 0x10000000 + 16 * TiB, "rw-p", 0, 0, 0, 0, path, vmflags=frozenset(flags.split()),
                   rss=4 << 20, swap=swap)

    full = 1e-3 + 1e-5 + (pages - 1024) * 8e-9 + 1024 * 1e-7
    filtered = 1e-3 + 1e-5 + pages * 2e-9 + 1024 * 1e-7
    assert estimate_scan_seconds("pagemap", [anon()]) == pytest.approx(full)  # no residency: the scan CLI
    assert estimate_scan_seconds("pagemap", [anon()], residency=True) == pytest.approx(filtered)
    assert estimate_scan_seconds("pagemap", [anon("rd wr uw")], residency=True) == pytest.approx(full)
    assert estimate_scan_seconds("pagemap", [anon(swap=P)], residency=True) == pytest.approx(
        1e-3 + 1e-5 + (pages - 1025) * 8e-9 + 1025 * 1e-7)  # one page swapped: read whole
    assert estimate_scan_seconds("pagemap", [anon(path="/data/file")], residency=True) == pytest.approx(full)
    assert filtered < full / 3
    from dumper.scan import long_scan_note

    assert long_scan_note("pagemap", [anon()], residency=True) == (
        "scanning 16.0 TiB of mappings with the pagemap fallback: about 9 s frozen")
    assert long_scan_note("pagemap", [anon()]) == (
        "scanning 16.0 TiB of mappings with the pagemap fallback: about 34 s frozen")

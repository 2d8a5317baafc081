"""Scanner behaviour that only some kernels can show.

- Without PAGEMAP_SCAN (6.1) the pagemap reader is the only scanner:
  ``--backend auto`` picks it, ``--backend ioctl`` is refused.
- With soft-dirty (6.1, 6.12) both scanners report exactly the written
  pages as SOFT_DIRTY, and where the ioctl has PAGE_IS_SOFT_DIRTY (6.12) the
  two backends agree on every mask that uses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dumper.dump import dump
from dumper.errors import UnsupportedKernel
from dumper.image import format as fmt
from dumper.image import load_inventory
from dumper.kernel.libc import PAGE_SIZE
from dumper.proc import Process
from dumper.scan import Category, ScanMasks, open_backend, scan, scan_range
from dumper.scan.features import probe_scan_categories, probe_soft_dirty

pytestmark = pytest.mark.kernel

P = PAGE_SIZE
has_ioctl = bool(probe_scan_categories())
sd_in_ioctl = bool(probe_scan_categories() & Category.SOFT_DIRTY)
needs_soft_dirty = pytest.mark.skipif(not probe_soft_dirty(),
                                      reason="soft-dirty is compiled out of this kernel (CONFIG_MEM_SOFT_DIRTY)")


def dumper_cli(*args):
    return subprocess.run([sys.executable, "-m", "dumper", *args], capture_output=True, text=True)


@pytest.mark.skipif(has_ioctl, reason="this kernel has PAGEMAP_SCAN: the pagemap reader is not the only scanner")
def test_without_the_ioctl_the_pagemap_reader_is_the_scanner(spawn_target, tmp_path):
    t = spawn_target("dense,zero")
    addr, length = t.regions["dense"]
    with open_backend(t.pid, "auto") as be:
        assert be.name == "pagemap"
    with pytest.raises(UnsupportedKernel, match="PAGEMAP_SCAN"):
        open_backend(t.pid, "ioctl")
    with pytest.raises(UnsupportedKernel, match="PAGEMAP_SCAN"):
        scan(t.pid, addr, addr + length, backend="ioctl")
    r = scan(t.pid, addr, addr + length, anyof="PRESENT", returned="PRESENT")
    assert r.backend == "pagemap"
    assert [(x.start, x.end) for x in r] == [(addr, addr + length)]

    cli = dumper_cli("scan", str(t.pid), "--start", hex(addr), "--end", hex(addr + length), "--backend", "ioctl")
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert "PAGEMAP_SCAN" in cli.stderr.strip().splitlines()[-1]
    cli = dumper_cli("scan", str(t.pid), "--start", hex(addr), "--end", hex(addr + length), "--anyof", "PRESENT",
                     "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["backend"] == "pagemap"

    with pytest.raises(UnsupportedKernel):
        dump(t.pid, tmp_path / "refused", backend="ioctl")
    assert not (tmp_path / "refused").exists()
    res = dump(t.pid, tmp_path / "ck")
    assert res.backend == "pagemap" and res.pages_written >= 256 + 8
    assert load_inventory(tmp_path / "ck" / fmt.INVENTORY_NAME).scanner == "pagemap"


def clear_soft_dirty(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("4")


def pages_of(result, addr) -> list[int]:
    return [p for r in result for p in range((r.start - addr) // P, (r.end - addr) // P)]


@pytest.fixture
def dirtied(spawn_target):
    """A stopped target whose soft-dirty bits were cleared, then some pages written."""
    t = spawn_target("dense,zero,alt,file")
    clear_soft_dirty(t.pid)
    t.command("write dense 3 4 200")
    t.command("write alt 10 11 12 3999")  # 10, 12 were present; 11, 3999 new
    t.command("write file 0 2")  # COW of page-cache pages
    t.command("read zero 9")
    fresh = json.loads(t.command("mmap fresh 4")[0])["fresh"]
    t.stop()
    return t, fresh


@needs_soft_dirty
@pytest.mark.parametrize("backend", ["pagemap", "ioctl"])
def test_soft_dirty_is_exactly_the_written_pages(dirtied, backend):
    if backend == "ioctl" and not sd_in_ioctl:
        pytest.skip("no PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY here (the ioctl needs Linux 6.7, the category 6.8)")
    t, (fresh, fresh_len) = dirtied
    want = {"dense": [3, 4, 200], "alt": [10, 11, 12, 3999], "file": [0, 2], "zero": []}
    for name, pages in want.items():
        addr, length = t.regions[name]
        r = scan(t.pid, addr, addr + length, required="SOFT_DIRTY", anyof="PRESENT,SWAPPED",
                 returned="SOFT_DIRTY", backend=backend)
        assert pages_of(r, addr) == pages, name
    # A new VMA is VM_SOFTDIRTY as a whole.
    r = scan(t.pid, fresh, fresh + fresh_len, required="SOFT_DIRTY", backend=backend)
    assert pages_of(r, fresh) == list(range(fresh_len // P))


def both(pid, start, end, masks, **kw):
    proc = Process(pid)
    with open_backend(proc, "ioctl") as io, open_backend(proc, "pagemap") as pm:
        return scan_range(io, start, end, masks, **kw), scan_range(pm, start, end, masks, **kw)


def common_bits() -> Category:
    with open_backend(os.getpid(), "pagemap") as pm:
        return pm.supported & probe_scan_categories()


@pytest.mark.skipif(not (sd_in_ioctl and probe_soft_dirty()),
                    reason="needs soft-dirty and PAGEMAP_SCAN's SOFT_DIRTY category (Linux 6.8 with "
                           "CONFIG_MEM_SOFT_DIRTY)")
def test_both_backends_agree_on_soft_dirty(dirtied):
    t, (fresh, fresh_len) = dirtied
    common = common_bits()
    assert common & Category.SOFT_DIRTY
    regions = dict(t.regions, fresh=(fresh, fresh_len))
    for masks in (
        ScanMasks(required="SOFT_DIRTY", anyof="PRESENT,SWAPPED", returned=common),
        ScanMasks(anyof="PRESENT,SWAPPED", excluded="SOFT_DIRTY", returned=common),
        ScanMasks(anyof="PRESENT,SWAPPED", excluded="FILE,PFNZERO", returned="SOFT_DIRTY"),
        ScanMasks(required="SOFT_DIRTY", returned="SOFT_DIRTY"),  # holes of VM_SOFTDIRTY VMAs too
    ):
        for name, (addr, length) in regions.items():
            io, pm = both(t.pid, addr, addr + length, masks)
            assert (io.walk_end, io.array.tolist()) == (pm.walk_end, pm.array.tolist()), (name, masks)
    proc = Process(t.pid)
    vmas = [v for v in proc.vmas(smaps=False) if v.user]
    masks = ScanMasks(anyof="PRESENT,SWAPPED", excluded="PFNZERO", returned=common)
    io, pm = both(t.pid, vmas[0].start, vmas[-1].end, masks)
    assert (io.walk_end, io.array.tolist()) == (pm.walk_end, pm.array.tolist())
    assert any(c & Category.SOFT_DIRTY for *_, c in io.array.tolist())


_COMMON = [c for c in Category if c & common_bits()] if sd_in_ioctl and probe_soft_dirty() else []


def _masks():
    sub = st.sets(st.sampled_from(_COMMON)).map(lambda s: Category(sum(s)))
    return st.tuples(sub, sub, sub, sub)


@pytest.mark.skipif(not _COMMON, reason="needs soft-dirty and PAGEMAP_SCAN's SOFT_DIRTY category")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=_masks() if _COMMON else st.nothing(), max_pages=st.sampled_from([0, 0, 1, 7, 300]))
def test_random_masks_with_soft_dirty_agree(dirtied, m, max_pages):
    t, (fresh, fresh_len) = dirtied
    req, anyof, exc, ret = m
    masks = ScanMasks(required=req & ~exc, anyof=anyof & ~exc, excluded=exc, returned=ret)
    k = masks.to_kernel()
    # WRITTEN over never-populated pages differs by page-table state (see
    # tests/test_scan_real.py); those masks are compared over populated pages.
    assume(not (Category.WRITTEN & masks.used and (k.match(0) or k.match(int(Category.WRITTEN)))))
    for addr, length in [t.regions[n] for n in ("dense", "zero", "alt", "file")] + [(fresh, fresh_len)]:
        io, pm = both(t.pid, addr, addr + length, masks, max_pages=max_pages)
        assert (io.walk_end, io.array.tolist()) == (pm.walk_end, pm.array.tolist())

"""`dumper scan` output and the scan() result as a user meets them.

Field reports (issue 13, item 14): a soft-dirty note on every run, even
before argument errors; "1 regions"; a result that supports len() but not
indexing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dumper.kernel.libc import PAGE_SIZE
from dumper.scan import Category, PageRegion, scan
from dumper.scan.features import probe_soft_dirty

P = PAGE_SIZE
NOTE = "soft-dirty tracking does not work"


def dumper_cli(*args):
    return subprocess.run([sys.executable, "-m", "dumper", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from conftest import Target

    t = Target("dense,alt", tmp_path_factory.mktemp("scan-cli"))
    yield t
    t.close()


@pytest.mark.parametrize("backend", ["auto", "pagemap"])
def test_one_region_one_page_is_singular(dense, backend):
    addr, _ = dense.regions["dense"]
    r = dumper_cli("scan", str(dense.pid), "--start", hex(addr), "--end", hex(addr + P),
                   "--anyof", "PRESENT", "--return", "PRESENT", "--backend", backend)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "1 region, 1 page (4.0 KiB)"
    assert r.stderr == ""


def test_two_regions_are_plural(dense):
    addr, _ = dense.regions["dense"]
    r = dumper_cli("scan", str(dense.pid), "--start", hex(addr), "--end", hex(addr + 2 * P),
                   "--anyof", "PRESENT", "--return", "PRESENT")
    assert r.stdout.splitlines()[-1] == "1 region, 2 pages (8.0 KiB)"
    r = dumper_cli("scan", str(dense.pid), "--start", "0x10000", "--end", "0x20000", "--anyof", "PRESENT")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 regions, 0 pages (0 B)"


def test_no_soft_dirty_note_unless_asked(dense):
    addr, length = dense.regions["dense"]
    r = dumper_cli("scan", str(dense.pid), "--start", hex(addr), "--end", hex(addr + length))
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.parametrize("args, error", [
    (["--start", "0x1001", "--end", "0x3000"], "not page aligned"),
    (["--start", "0x3000", "--end", "0x1000"], "below start"),
    (["--anyof", "PRESENT,BOGUS"], "unknown page category 'BOGUS'"),
    (["--required", "SOFT_DIRTY", "--excluded", "SOFT_DIRTY"], "both required and excluded"),
    (["--backend", "pagemap", "--return", "SOFT_DIRTY,HUGE"], "cannot compute HUGE"),
])
def test_argument_errors_come_alone(args, error):
    r = dumper_cli("scan", str(os.getpid()), "--return", "SOFT_DIRTY", *args)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[-1]]  # one line
    assert error in r.stderr and NOTE not in r.stderr


def test_soft_dirty_note_when_asked_and_it_does_not_work(dense):
    addr, _ = dense.regions["dense"]
    r = dumper_cli("scan", str(dense.pid), "--start", hex(addr), "--end", hex(addr + P),
                   "--anyof", "SOFT_DIRTY,PRESENT", "--return", "PRESENT")
    assert r.returncode == 0, r.stderr
    if probe_soft_dirty():
        assert r.stderr == ""
    else:
        assert r.stderr.strip() == ("dumper: note: soft-dirty tracking does not work on this kernel: "
                                    "SOFT_DIRTY is never set")


def test_scan_result_is_a_sequence_of_page_regions(dense):
    addr, _ = dense.regions["alt"]  # every other page written
    r = scan(dense.pid, addr, addr + 6 * P, anyof="PRESENT", returned="PRESENT")
    want = [PageRegion(addr + i * P, addr + (i + 1) * P, Category.PRESENT) for i in (0, 2, 4)]
    assert len(r) == 3 and list(r) == want and r.regions == want
    assert (r[0], r[1], r[2], r[-1], r[-3]) == (want[0], want[1], want[2], want[2], want[0])
    assert r[1:] == want[1:] and r[::2] == want[::2] and r[:10] == want and r[5:] == []
    assert want[1] in r and r.index(want[2]) == 2 and list(reversed(r)) == want[::-1]
    assert isinstance(r[0].categories, Category) and r[1].nr_pages == 1
    with pytest.raises(IndexError):
        r[3]
    with pytest.raises(IndexError):
        r[-4]
    with pytest.raises(TypeError):
        r["0"]
    again = scan(dense.pid, addr, addr + 6 * P, anyof="PRESENT", returned="PRESENT")
    assert again == r and not (again != r)
    assert scan(dense.pid, addr, addr + 4 * P, anyof="PRESENT", returned="PRESENT") != r

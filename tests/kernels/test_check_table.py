"""``dumper check --json`` against the measured table, once per kernel.

The expected rows are the table "Which kernel proves what" of
shared/reference/guest-kernels.md (measured on these machines). Each row is
its own test; on any one kernel the row of that kernel runs and the others
skip, so the matrix proves every row on the kernel it describes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel

ALL = ["WPALLOWED", "WRITTEN", "FILE", "PRESENT", "SWAPPED", "PFNZERO", "HUGE", "SOFT_DIRTY", "GUARD"]

# series -> what `dumper check --json` must say there
EXPECTED = {
    "6.1": {  # Debian bookworm: soft-dirty, no PAGEMAP_SCAN (ENOTTY), no WP_ASYNC
        "soft_dirty": True,
        "pagemap_scan": False,
        "pagemap_scan_categories": [],
        "uffd_wp_async": False,
    },
    "6.12": {  # Debian bookworm-backports: soft-dirty and the ioctl with SOFT_DIRTY, GUARD is EINVAL
        "soft_dirty": True,
        "pagemap_scan": True,
        "pagemap_scan_categories": [c for c in ALL if c != "GUARD"],
        "uffd_wp_async": True,
    },
    "6.18": {  # these machines: no soft-dirty (bit 55 always 0), everything else
        "soft_dirty": False,
        "pagemap_scan": True,
        "pagemap_scan_categories": ALL,
        "uffd_wp_async": True,
    },
}


def series(release: str) -> str:
    m = re.match(r"(\d+)\.(\d+)", release)
    return f"{m[1]}.{m[2]}" if m else release


@pytest.mark.parametrize("kernel", list(EXPECTED))
def test_check_matches_the_table(kernel):
    release = os.uname().release
    if series(release) != kernel:
        pytest.skip(f"row {kernel}: this is {release}")
    r = subprocess.run([sys.executable, "-m", "dumper", "check", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["kernel"] == release
    assert {k: got[k] for k in EXPECTED[kernel]} == EXPECTED[kernel]
    # Guard regions came with 6.13 and their pagemap bit with 6.15.
    assert got["pagemap"]["guard"] == ("reported" if kernel == "6.18" else "absent")

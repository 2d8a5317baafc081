"""pytest plugin for the kernel matrix: ``@pytest.mark.kernel(needs=...)``.

A kernel-marked test may name kernel features it cannot do without; where
the running kernel lacks one, the test is skipped with the reason instead of
failing on a layout the target could not set up. The matrix loads this
plugin (``-p kernel_needs``) in every guest and on the host.

    @pytest.mark.kernel(needs="guard")        # or needs=("guard", "ioctl")
"""

from __future__ import annotations

import os

import pytest


def _guard_regions() -> bool:
    from dumper.scan.features import probe_pagemap

    return probe_pagemap().guard != "absent"


def _guard_bit() -> bool:
    from dumper.scan import Category
    from dumper.scan.features import probe_scan_categories

    return bool(probe_scan_categories() & Category.GUARD)


def _ioctl() -> bool:
    from dumper.scan.features import probe_scan_categories

    return bool(probe_scan_categories())


def _soft_dirty() -> bool:
    from dumper.scan.features import probe_soft_dirty

    return probe_soft_dirty()


def _uffd_wp() -> bool:
    from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

    return bool(probe_scan_categories()) and probe_uffd_wp_async()


# name -> (probe, what is missing when the probe says no)
NEEDS = {
    "guard": (_guard_regions, "guard regions (MADV_GUARD_INSTALL, Linux 6.13)"),
    "guard-bit": (_guard_bit, "PAGEMAP_SCAN's GUARD category (Linux 6.16)"),
    "ioctl": (_ioctl, "the PAGEMAP_SCAN ioctl (Linux 6.7)"),
    "soft-dirty": (_soft_dirty, "soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY)"),
    "uffd-wp": (_uffd_wp, "userfaultfd WP_ASYNC with PAGEMAP_SCAN (Linux 6.7)"),
}


def needs_of(item) -> list[str]:
    out: list[str] = []
    for mark in item.iter_markers("kernel"):
        needs = mark.kwargs.get("needs", ())
        out += [needs] if isinstance(needs, str) else list(needs)
    return out


def pytest_collection_modifyitems(config, items):
    cache: dict[str, bool] = {}
    for item in items:
        for need in needs_of(item):
            if need not in NEEDS:
                raise pytest.UsageError(f"{item.nodeid}: unknown kernel need {need!r} (known: {', '.join(NEEDS)})")
            probe, what = NEEDS[need]
            if need not in cache:
                cache[need] = probe()
            if not cache[need]:
                item.add_marker(pytest.mark.skip(reason=f"needs {what}; {os.uname().release} has none"))
                break

"""Scanner pieces that need no target: ABI mirrors, masks, the matching rule."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dumper.errors import ScanError
from dumper.kernel import fs, ioctl, userfaultfd
from dumper.scan import Category, KernelMasks, ScanMasks, parse_categories
from dumper.scan.base import validate_range


def test_struct_sizes_match_the_uapi_header():
    assert ctypes.sizeof(fs.pm_scan_arg) == 96
    assert ctypes.sizeof(fs.page_region) == 24
    assert fs.pm_scan_arg.return_mask.offset == 88
    assert fs.pm_scan_arg.walk_end.offset == 32


def test_ioctl_numbers_are_derived_and_pinned():
    # _IOWR('f', 16, struct pm_scan_arg) on asm-generic layouts.
    assert fs.PAGEMAP_SCAN == (3 << 30) | (96 << 16) | (ord("f") << 8) | 16
    assert fs.PAGEMAP_SCAN == 0xC0606610
    assert userfaultfd.UFFDIO_API == 0xC018AA3F
    assert userfaultfd.UFFDIO_REGISTER == 0xC020AA00
    assert userfaultfd.UFFDIO_WRITEPROTECT == 0xC018AA06
    assert userfaultfd.UFFDIO_UNREGISTER == 0x8010AA01
    assert ioctl.IO("f", 1) == 0x6601


def test_category_bits_follow_the_kernel():
    assert [c.name for c in Category] == [
        "WPALLOWED", "WRITTEN", "FILE", "PRESENT", "SWAPPED", "PFNZERO", "HUGE", "SOFT_DIRTY", "GUARD",
    ]
    assert [int(c) for c in Category] == [1 << i for i in range(9)]


def test_parse_categories():
    assert parse_categories("present, page_is_swapped") == Category.PRESENT | Category.SWAPPED
    assert parse_categories("") == Category(0)
    assert parse_categories(None) == Category(0)
    with pytest.raises(ScanError, match="unknown page category 'DIRTY'"):
        parse_categories("PRESENT,DIRTY")
    with pytest.raises(ScanError, match="unknown category bits"):
        parse_categories(1 << 12)


def test_mask_translation():
    m = ScanMasks(required="PRESENT", anyof="WRITTEN,SOFT_DIRTY", excluded="FILE,PFNZERO", returned="PRESENT")
    k = m.to_kernel()
    assert k.category_mask == Category.PRESENT | Category.FILE | Category.PFNZERO
    assert k.category_inverted == Category.FILE | Category.PFNZERO
    assert k.category_anyof_mask == Category.WRITTEN | Category.SOFT_DIRTY
    assert k.return_mask == Category.PRESENT


def test_excluded_overlap_is_refused():
    with pytest.raises(ScanError, match="both anyof and excluded: FILE"):
        ScanMasks(anyof="FILE,PRESENT", excluded="FILE")
    with pytest.raises(ScanError, match="both required and excluded: PRESENT"):
        ScanMasks(required="PRESENT", excluded="PRESENT,FILE")


@pytest.mark.parametrize(
    "cats, expected",
    [
        (Category.PRESENT, True),
        (Category.SWAPPED, True),
        (Category.PRESENT | Category.FILE, False),  # excluded
        (Category.PRESENT | Category.PFNZERO, False),
        (Category(0), False),  # none of the any-of
        (Category.WRITTEN, False),
        (Category.SWAPPED | Category.GUARD | Category.WRITTEN, False),
    ],
)
def test_matching_rule_on_hand_made_sets(cats, expected):
    dump_masks = ScanMasks(anyof="PRESENT,SWAPPED", excluded="FILE,PFNZERO,GUARD")
    assert dump_masks.matches(int(cats)) is expected


bits = st.integers(0, (1 << 9) - 1)


@given(bits, bits, bits, bits)
def test_matching_rule_is_the_four_mask_definition(req, anyof, exc, cats):
    anyof &= ~exc
    req &= ~exc
    m = ScanMasks(required=req, anyof=anyof, excluded=exc)
    expected = (cats & req) == req and (cats & exc) == 0 and (anyof == 0 or bool(cats & anyof))
    assert m.matches(cats) == expected
    assert KernelMasks(*m.to_kernel()).match(cats) == expected


def test_validate_range():
    assert validate_range(0x1000, 0x1001) == (0x1000, 0x2000)
    with pytest.raises(ScanError, match="not page aligned"):
        validate_range(0x1001, 0x2000)
    with pytest.raises(ScanError, match="below start"):
        validate_range(0x2000, 0x1000)

"""Checkpoints written by an earlier dumper still read the same.

tests/data/tiny-zst and tiny-raw were dumped (tests/data/make_tiny.py) from
tests/data/tiny.c: a libc-free process with one private anonymous mapping of
TINY_PAGES pages at TINY_ADDR holding known bytes. They are checked in and
never rewritten: a change of the format, the framing or the readers that
stops them from reading, or reads them differently, fails here. When the
format version is bumped, add directories made by the new version next to
these (and a MADE_WITH entry) instead of replacing them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dumper.image import format as fmt
from dumper.image import iter_present, load_inventory, load_pagemap, open_pages, read_image

DATA = Path(__file__).parent / "data"
# dumper_format_version each checked-in directory was written with
MADE_WITH = {"tiny-zst": 1, "tiny-raw": 1}
TINY_ADDR, TINY_PAGES, PS = 0x10000000, 4, 4096
# pages dumped in all: the mapping (4), [vdso] (2), [stack] (1)
TINY_PAGES_TOTAL = 7


def tiny_content() -> bytes:
    """Page k, byte j: (k * 64 + j % 61) & 0xff (tiny.c)."""
    return bytes((k * 64 + j % 61) & 0xFF for k in range(TINY_PAGES) for j in range(PS))


def _pid(d: Path) -> int:
    (mm,) = d.glob("mm-*.img")
    return int(mm.stem.split("-")[1])


@pytest.fixture(params=sorted(MADE_WITH))
def ckpt(request):
    return request.param, DATA / request.param


def test_inventory(ckpt):
    name, d = ckpt
    inv = load_inventory(d / fmt.INVENTORY_NAME)
    assert inv.img_version == fmt.CRTOOLS_IMAGES_V1_1
    assert inv.dumper_format_version == MADE_WITH[name] <= fmt.DUMPER_FORMAT_VERSION
    assert inv.page_size == PS and inv.machine == "x86_64"
    assert list(inv.pids) == [_pid(d)] and inv.root_pid == _pid(d)
    compressed = name.endswith("zst")
    assert inv.compression == (fmt.COMPRESSION_ZSTD if compressed else fmt.COMPRESSION_NONE)
    assert inv.dump_start_ns <= inv.dump_end_ns
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [fmt.INVENTORY_NAME, fmt.STATS_DUMP_NAME, fmt.mm_name(_pid(d)), fmt.pagemap_name(_pid(d)),
         fmt.zpages_name(1) if compressed else fmt.pages_name(1)]
    )


def test_vmas(ckpt):
    _, d = ckpt
    name, (mm,) = read_image(d / fmt.mm_name(_pid(d)))
    assert name == "MM"
    starts = [v.start for v in mm.vmas]
    assert starts == sorted(starts) and all(v.start < v.end for v in mm.vmas)
    (tiny,) = [v for v in mm.vmas if v.start == TINY_ADDR]
    assert tiny.end == TINY_ADDR + TINY_PAGES * PS
    assert (tiny.prot, tiny.flags) == (0x1 | 0x2, 0x02 | 0x20)  # rw-, MAP_PRIVATE | MAP_ANONYMOUS
    assert tiny.status == fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_PRIVATE
    assert (tiny.pgoff, tiny.fd, tiny.path) == (0, -1, "")
    assert tiny.dumped and tiny.nr_pages_dumped == TINY_PAGES
    kinds = {v.status & ~fmt.VMA_AREA_REGULAR for v in mm.vmas}
    assert fmt.VMA_AREA_VDSO | fmt.VMA_ANON_PRIVATE in kinds
    assert fmt.VMA_AREA_STACK | fmt.VMA_ANON_PRIVATE in kinds
    assert sum(v.nr_pages_dumped for v in mm.vmas) == TINY_PAGES_TOTAL


def test_pages(ckpt):
    name, d = ckpt
    head, entries = load_pagemap(d / fmt.pagemap_name(_pid(d)))
    assert head.pages_id == 1 and head.page_size == PS and head.nr_present_pages == TINY_PAGES_TOTAL
    assert entries[0].vaddr == TINY_ADDR and entries[0].nr_pages == TINY_PAGES and entries[0].present
    assert all(e.present for e in entries) and sum(e.nr_pages for e in entries) == TINY_PAGES_TOTAL
    with open_pages(d, head) as pages:
        assert pages.compressed == name.endswith("zst")
        got = {}
        for vaddr, data in iter_present(entries, pages, max_pages=3):
            got[vaddr] = data
        assert b"".join(got[TINY_ADDR + i * PS] for i in range(0, TINY_PAGES, 3)) == tiny_content()
        # random access straight into the middle of the mapping
        assert pages.read_pages(1, 2) == tiny_content()[PS : 3 * PS]


def test_raw_is_the_uncompressed_stream():
    # both dumps are of the same stopped process: same entries, same bytes
    streams = []
    for name in sorted(MADE_WITH):
        d = DATA / name
        head, entries = load_pagemap(d / fmt.pagemap_name(_pid(d)))
        with open_pages(d, head) as pages:
            streams.append(([(e.vaddr, e.nr_pages, e.flags) for e in entries], pages.read_pages(0, pages.nr_pages)))
    assert streams[0] == streams[1]
    # and the raw file is CRIU's layout: the stream itself, no header
    assert (DATA / "tiny-raw" / fmt.pages_name(1)).read_bytes() == streams[0][1]


def test_stats(ckpt):
    _, d = ckpt
    name, (stats,) = read_image(d / fmt.STATS_DUMP_NAME)
    assert name == "STATS"
    assert stats.dump.pages_written == TINY_PAGES_TOTAL and stats.dump.bytes_raw == TINY_PAGES_TOTAL * PS

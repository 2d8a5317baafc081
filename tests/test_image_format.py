"""Framing of image files: magics, entries, and refusal of bad input."""

from __future__ import annotations

import io
import os
import struct

import pytest

from dumper.errors import BadMagic, CorruptImage, ImageError
from dumper.image import format as fmt
from dumper.image.pb import inventory_pb2, mm_pb2, pagemap_pb2, stats_pb2
from dumper.image.reader import read_image


def _pagemap_bytes(n=3):
    msgs = [pagemap_pb2.pagemap_head(pages_id=1)]
    msgs += [
        pagemap_pb2.pagemap_entry(vaddr=0x1000 * (2 * i + 1), compat_nr_pages=1, nr_pages=1, flags=4)
        for i in range(n)
    ]
    return fmt.encode_image("PAGEMAP", msgs)


def test_headers_follow_criu():
    # inventory: its magic alone; others: common magic first; stats: service magic first
    inv = fmt.encode_image("INVENTORY", [inventory_pb2.inventory_entry(img_version=2)])
    assert inv[:4] == struct.pack("<I", 0x58313116)
    pm = _pagemap_bytes(0)
    assert pm[:8] == struct.pack("<II", 0x54564319, 0x56084025)
    st = fmt.encode_image("STATS", [stats_pb2.stats_entry()])
    assert st[:8] == struct.pack("<II", 0x55105940, 0x57093306)
    mm = fmt.encode_image("MM", [])
    assert mm == struct.pack("<II", 0x54564319, 0x57492820)


def test_entry_framing_is_u32_size_then_payload():
    e = pagemap_pb2.pagemap_head(pages_id=300)
    buf = io.BytesIO()
    assert fmt.write_entry(buf, e) == 4 + e.ByteSize()
    assert buf.getvalue() == struct.pack("<I", e.ByteSize()) + e.SerializeToString()


@pytest.mark.parametrize("magic", ["INVENTORY", "PAGEMAP", "MM", "STATS"])
def test_read_image_round_trip(tmp_path, magic):
    msgs = {
        "INVENTORY": [inventory_pb2.inventory_entry(img_version=2, root_pid=5, pids=[5, 6])],
        "PAGEMAP": [pagemap_pb2.pagemap_head(pages_id=2), pagemap_pb2.pagemap_entry(vaddr=4096, compat_nr_pages=1)],
        "MM": [mm_pb2.mm_entry(**{f.name: 0 for f in mm_pb2.mm_entry.DESCRIPTOR.fields if f.is_required})],
        "STATS": [stats_pb2.stats_entry()],
    }[magic]
    p = tmp_path / "x.img"
    p.write_bytes(fmt.encode_image(magic, msgs))
    name, got = read_image(p)
    assert name == magic
    assert got == msgs


def test_empty_entry_list_ends_at_boundary(tmp_path):
    p = tmp_path / "mm-1.img"
    p.write_bytes(fmt.encode_image("MM", []))
    assert read_image(p) == ("MM", [])


def test_wrong_magic_is_bad_magic(tmp_path):
    p = tmp_path / "pagemap-1.img"
    data = bytearray(_pagemap_bytes())
    data[4:8] = struct.pack("<I", 0x12345678)
    p.write_bytes(bytes(data))
    with pytest.raises(BadMagic) as ei:
        read_image(p)
    assert ei.value.path == str(p) and ei.value.offset == 4
    assert str(p) in str(ei.value) and "offset 4" in str(ei.value)


def test_raw_pages_are_bad_magic_with_a_hint(tmp_path):
    p = tmp_path / "pages-1.img"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(BadMagic, match="pages-N.img"):
        read_image(p)


def test_service_magic_mismatch(tmp_path):
    p = tmp_path / "stats-dump"
    p.write_bytes(struct.pack("<II", fmt.IMG_COMMON_MAGIC, fmt.STATS_MAGIC))
    with pytest.raises(BadMagic, match="common magic"):
        read_image(p)


def test_known_criu_type_we_do_not_read(tmp_path):
    # sockets have no schema in proto/ (CRIU's inetsk.img)
    p = tmp_path / "inetsk.img"
    p.write_bytes(struct.pack("<II", fmt.IMG_COMMON_MAGIC, fmt.INETSK_MAGIC))
    with pytest.raises(ImageError, match="INETSK"):
        read_image(p)


@pytest.mark.parametrize("cut", [0, 2, 6, 10, -1])
def test_truncation_is_corrupt_with_offset(tmp_path, cut):
    data = _pagemap_bytes()
    p = tmp_path / "pagemap-9.img"
    p.write_bytes(data[:cut] if cut >= 0 else data[:-1])
    with pytest.raises(CorruptImage) as ei:
        read_image(p)
    assert ei.value.path == str(p)
    assert ei.value.offset is not None and 0 <= ei.value.offset <= len(data)
    assert "truncated" in ei.value.msg or "past the end" in ei.value.msg


def test_short_entry_size_field(tmp_path):
    p = tmp_path / "pagemap-1.img"
    p.write_bytes(_pagemap_bytes(0) + b"\x01\x00")
    with pytest.raises(CorruptImage, match="truncated entry size") as ei:
        read_image(p)
    assert ei.value.offset == len(_pagemap_bytes(0))


@pytest.mark.parametrize("size", [fmt.MAX_ENTRY_SIZE + 1, 0xFFFFFFFF])
def test_absurd_length_is_refused_before_reading(tmp_path, size):
    head = _pagemap_bytes(0)
    p = tmp_path / "pagemap-1.img"
    p.write_bytes(head + struct.pack("<I", size) + b"x" * 16)
    with pytest.raises(CorruptImage, match="limit") as ei:
        read_image(p)
    assert ei.value.offset == len(head) and str(p) in str(ei.value)


def test_length_past_end_of_file(tmp_path):
    head = _pagemap_bytes(0)
    p = tmp_path / "pagemap-1.img"
    p.write_bytes(head + struct.pack("<I", 1000) + b"x" * 16)
    with pytest.raises(CorruptImage, match="past the end of the file") as ei:
        read_image(p)
    assert ei.value.offset == len(head)


def test_garbage_payload_and_missing_required_fields(tmp_path):
    p = tmp_path / "pagemap-1.img"
    hdr = fmt.encode_image("PAGEMAP", [pagemap_pb2.pagemap_head(pages_id=1)])
    p.write_bytes(hdr + struct.pack("<I", 2) + b"\xff\xff")
    with pytest.raises(CorruptImage, match="bad pagemap_entry"):
        read_image(p)
    # vaddr only: compat_nr_pages (required) missing
    payload = b"\x08\x01"
    p.write_bytes(hdr + struct.pack("<I", len(payload)) + payload)
    with pytest.raises(CorruptImage, match="compat_nr_pages") as ei:
        read_image(p)
    assert ei.value.offset == len(hdr)


def test_format_flags():
    assert fmt.format_flags(fmt.PE_PRESENT | fmt.PE_LAZY, "pmap.flags") == "PE_LAZY | PE_PRESENT"
    assert fmt.format_flags(0, "pmap.flags") == "0"
    assert fmt.format_flags(0x100 | fmt.PE_PARENT, "pmap.flags") == "PE_PARENT | 0x100"
    assert fmt.format_flags(fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_PRIVATE, "mmap.status") == (
        "VMA_AREA_REGULAR | VMA_ANON_PRIVATE"
    )


def test_names():
    assert fmt.pages_name(3) == "pages-3.img"
    assert fmt.zpages_name(3) != fmt.pages_name(3)
    assert fmt.pagemap_name(42) == "pagemap-42.img" and fmt.mm_name(42) == "mm-42.img"


def test_check_inventory_versions():
    from dumper.errors import UnsupportedVersion

    fmt.check_inventory(inventory_pb2.inventory_entry(img_version=2))
    fmt.check_inventory(inventory_pb2.inventory_entry(img_version=2, dumper_format_version=1))
    with pytest.raises(UnsupportedVersion):
        fmt.check_inventory(inventory_pb2.inventory_entry(img_version=1))
    with pytest.raises(UnsupportedVersion, match="newer"):
        fmt.check_inventory(inventory_pb2.inventory_entry(img_version=2, dumper_format_version=99))

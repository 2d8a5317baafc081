"""Round trips writer -> reader, CRIU compat rules, and corrupt pages files."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dumper.errors import BadMagic, CorruptImage, UnsupportedVersion
from dumper.image import format as fmt
from dumper.image.pb import pagemap_pb2, zpages_pb2
from dumper.image.reader import PagesReader, iter_present, load_pagemap, open_pages, read_image
from dumper.image.writer import CheckpointWriter

PS = 4096

# A run: (gap pages before it, number of pages, present?)
runs_st = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 40), st.booleans()), min_size=0, max_size=12
)


def _build(tmp_path, runs, *, compress, frame_pages=8, threads=2, seed=0):
    """Write one pid from ``runs``; return (dest, [(vaddr, bytes)] of present runs)."""
    dest = Path(tempfile.mkdtemp(dir=tmp_path)) / "c"
    rnd = __import__("random").Random(seed)
    present = []
    with CheckpointWriter(dest, page_size=PS) as w:
        with w.pages_writer(1, 1, compress=compress, frame_pages=frame_pages, threads=threads, merge=False) as pw:
            vaddr = 0x400000
            for gap, n, is_present in runs:
                vaddr += gap * PS
                if is_present:
                    # half random, half zeros: compressible and not
                    data = rnd.randbytes(n * PS // 2) + bytes(n * PS - n * PS // 2)
                    pw.add_present(vaddr, data)
                    present.append((vaddr, data))
                else:
                    pw.add_parent(vaddr, n)
                vaddr += n * PS
        w.commit()
    return dest, present


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=runs_st, compress=st.booleans(), frame_pages=st.integers(1, 20), seed=st.integers(0, 1 << 16))
def test_round_trip(tmp_path, runs, compress, frame_pages, seed):
    dest, present = _build(tmp_path, runs, compress=compress, frame_pages=frame_pages, seed=seed)
    head, entries = load_pagemap(dest / "pagemap-1.img")
    stream = b"".join(d for _, d in present)
    with open_pages(dest, head) as r:
        assert r.compressed == compress and r.nr_pages * PS == len(stream)
        # whole entries, in chunks
        got = {}
        for vaddr, data in iter_present(entries, r, max_pages=7):
            got[vaddr] = data
        rebuilt = b"".join(got[v] for v in sorted(got))
        assert rebuilt == stream
        # arbitrary slices match the flat stream
        n = r.nr_pages
        for start in range(0, n, max(1, n // 5)):
            for count in (0, 1, frame_pages, frame_pages + 1, n - start):
                count = min(count, n - start)
                assert r.read_pages(start, count) == stream[start * PS : (start + count) * PS]
    if not compress:
        assert (dest / "pages-1.img").read_bytes() == stream


def test_reader_decompresses_only_needed_frames(tmp_path, monkeypatch):
    dest, present = _build(tmp_path, [(0, 100, True)], compress=True, frame_pages=10)
    calls = []
    r = PagesReader(dest / "pages-1.zst.img")
    orig = r._pread
    monkeypatch.setattr(r, "_pread", lambda n, off, what: calls.append(what) or orig(n, off, what))
    assert r.read_pages(35, 10) == present[0][1][35 * PS : 45 * PS]
    assert calls == ["frame 3", "frame 4"]
    r.close()


def test_compat_rules(tmp_path):
    # GIVEN entries as old and new CRIU versions write them
    E = pagemap_pb2.pagemap_entry
    msgs = [
        pagemap_pb2.pagemap_head(pages_id=1),
        E(vaddr=0x1000, compat_nr_pages=2),  # pre-flags image: PRESENT
        E(vaddr=0x3000, compat_nr_pages=1, in_parent=True),  # legacy hole
        E(vaddr=0x4000, compat_nr_pages=0, nr_pages=3, flags=fmt.PE_PRESENT | fmt.PE_LAZY),  # 4.2
        E(vaddr=0x7000, compat_nr_pages=9, nr_pages=1, flags=fmt.PE_LAZY),  # field 5 wins
    ]
    p = tmp_path / "pagemap-1.img"
    p.write_bytes(fmt.encode_image("PAGEMAP", msgs))
    head, entries = load_pagemap(p, page_size=PS)
    assert [(e.vaddr, e.nr_pages, e.flags, e.pages_off) for e in entries] == [
        (0x1000, 2, fmt.PE_PRESENT, 0),
        (0x3000, 1, fmt.PE_PARENT, -1),
        (0x4000, 3, fmt.PE_PRESENT | fmt.PE_LAZY, 2),
        (0x7000, 1, fmt.PE_LAZY, -1),
    ]
    # a CRIU image (no compression field) opens the raw pages file
    (tmp_path / "pages-1.img").write_bytes(bytes(5 * PS))
    with open_pages(tmp_path, head) as r:
        assert not r.compressed and r.nr_pages == 5
        assert [v for v, _ in iter_present(entries, r)] == [0x1000, 0x4000]


@pytest.mark.parametrize(
    "entries, match",
    [
        ([(0x2000, 1, 4), (0x1000, 1, 4)], "precedes"),
        ([(0x1000, 2, 4), (0x2000, 1, 4)], "overlaps"),
        ([(0x1800, 1, 4)], "bad range"),
        ([(0x1000, 0, 4)], "bad range"),
        ([(0x1000, 1, 5)], "bad flags"),
        ([(0x1000, 1, 0x40)], "bad flags"),
    ],
)
def test_bad_pagemaps(tmp_path, entries, match):
    msgs = [pagemap_pb2.pagemap_head(pages_id=1, page_size=PS)]
    msgs += [pagemap_pb2.pagemap_entry(vaddr=v, compat_nr_pages=n, nr_pages=n, flags=f) for v, n, f in entries]
    p = tmp_path / "pagemap-1.img"
    p.write_bytes(fmt.encode_image("PAGEMAP", msgs))
    with pytest.raises(CorruptImage, match=match):
        load_pagemap(p)


def test_pages_off_and_totals_are_checked(tmp_path):
    p = tmp_path / "pagemap-1.img"
    E = pagemap_pb2.pagemap_entry
    head = pagemap_pb2.pagemap_head(pages_id=1, page_size=PS)
    p.write_bytes(fmt.encode_image("PAGEMAP", [head, E(vaddr=0, compat_nr_pages=1, flags=4, pages_off=1)]))
    with pytest.raises(CorruptImage, match="pages_off"):
        load_pagemap(p)
    head.nr_present_pages = 2
    p.write_bytes(fmt.encode_image("PAGEMAP", [head, E(vaddr=0, compat_nr_pages=1, flags=4)]))
    with pytest.raises(CorruptImage, match="present pages"):
        load_pagemap(p)


def test_pages_file_cannot_escape(tmp_path):
    p = tmp_path / "pagemap-1.img"
    head = pagemap_pb2.pagemap_head(pages_id=1, pages_file="../../etc/passwd")
    p.write_bytes(fmt.encode_image("PAGEMAP", [head]))
    with pytest.raises(CorruptImage, match="pages_file"):
        load_pagemap(p)


def test_unknown_compression_is_refused_not_read_as_raw(tmp_path):
    # GIVEN a head from a newer dumper: compression (field 33) = 7, unknown here
    p = tmp_path / "pagemap-1.img"
    payload = pagemap_pb2.pagemap_head(pages_id=1).SerializeToString() + b"\x88\x02\x07"
    p.write_bytes(fmt.encode_image("PAGEMAP", []) + struct.pack("<I", len(payload)) + payload)
    with pytest.raises(UnsupportedVersion, match="compression 7"):
        load_pagemap(p)


def test_iter_present_checks_stream_length(tmp_path):
    dest, _ = _build(tmp_path, [(0, 3, True)], compress=False)
    head, entries = load_pagemap(dest / "pagemap-1.img")
    with open(dest / "pages-1.img", "ab") as f:
        f.write(bytes(PS))
    with open_pages(dest, head) as r, pytest.raises(CorruptImage, match="present pages"):
        list(iter_present(entries, r))


def test_raw_pages_not_whole_pages(tmp_path):
    p = tmp_path / "pages-1.img"
    p.write_bytes(bytes(PS + 10))
    with pytest.raises(CorruptImage, match="whole number") as ei:
        PagesReader(p, page_size=PS)
    assert ei.value.offset == PS


def test_read_past_end(tmp_path):
    p = tmp_path / "pages-1.img"
    p.write_bytes(bytes(2 * PS))
    with PagesReader(p, page_size=PS) as r:
        with pytest.raises(CorruptImage, match="beyond"):
            r.read_pages(1, 2)
        with pytest.raises(ValueError):
            r.read_pages(-1, 1)


def test_read_image_zpages(tmp_path):
    dest, _ = _build(tmp_path, [(0, 30, True)], compress=True, frame_pages=8)
    name, (head, index) = read_image(dest / "pages-1.zst.img")
    assert name == "ZPAGES"
    assert (head.page_size, head.frame_pages, head.compression, head.pages_id) == (PS, 8, fmt.COMPRESSION_ZSTD, 1)
    assert index.nr_pages == 30 and len(index.frame_size) == 4


# --- corrupt compressed files


@pytest.fixture
def zfile(tmp_path):
    dest, present = _build(tmp_path, [(0, 40, True)], compress=True, frame_pages=8)
    p = dest / "pages-1.zst.img"
    with PagesReader(p) as r:
        lay = r.layout
    return p, lay, present[0][1]


def _mutate(p, offset, data):
    b = bytearray(p.read_bytes())
    b[offset : offset + len(data)] = data
    p.write_bytes(bytes(b))


def test_zpages_bad_magic(zfile):
    p, _, _ = zfile
    _mutate(p, 4, b"\0\0\0\0")
    with pytest.raises(BadMagic) as ei:
        PagesReader(p)
    assert ei.value.path == str(p) and ei.value.offset == 4


def test_zpages_raw_name_mismatch(zfile):
    # a raw pages file handed over as compressed
    p, _, _ = zfile
    raw = p.with_name("x.zst.img")
    raw.write_bytes(bytes(PS))
    with pytest.raises(BadMagic):
        PagesReader(raw)


@pytest.mark.parametrize("cut", [1, 10, 100, 5000])
def test_zpages_truncated(zfile, cut):
    p, _, _ = zfile
    data = p.read_bytes()
    p.write_bytes(data[:-cut])
    with pytest.raises(CorruptImage) as ei:
        PagesReader(p)
    assert ei.value.path == str(p)


def test_zpages_truncated_to_header(zfile):
    p, lay, _ = zfile
    p.write_bytes(p.read_bytes()[: lay.data_offset])
    with pytest.raises(CorruptImage, match="no room"):
        PagesReader(p)


def test_zpages_flipped_frame_byte(zfile):
    # GIVEN a bit flip inside frame 2's payload
    p, lay, data = zfile
    off = int(lay.offsets[2]) + int(lay.sizes[2]) // 2
    b = bytearray(p.read_bytes())
    b[off] ^= 0x40
    p.write_bytes(bytes(b))
    with PagesReader(p) as r:
        # frames 0-1 still read; frame 2 is refused with its offset
        assert r.read_pages(0, 16) == data[: 16 * PS]
        with pytest.raises(CorruptImage) as ei:
            r.read_pages(16, 1)
        assert ei.value.offset == int(lay.offsets[2]) and "frame 2" in ei.value.msg


def test_zpages_index_checksum(zfile):
    p, lay, _ = zfile
    _mutate(p, lay.index_offset + 5, b"\x7f")
    with pytest.raises(CorruptImage, match="checksum") as ei:
        PagesReader(p)
    assert ei.value.offset == lay.index_offset


def _rewrite_index(p, lay, index, *, footer_offset=None):
    """Replace the index (keeping a valid CRC) to test semantic checks."""
    data = p.read_bytes()[: lay.index_offset]
    payload = index.SerializeToString()
    tail = struct.pack("<I", len(payload)) + payload
    off = lay.index_offset if footer_offset is None else footer_offset
    p.write_bytes(data + tail + fmt.ZPAGES_FOOTER.pack(off, zlib.crc32(payload), fmt.ZPAGES_MAGIC))


def _shift_size(index, i, delta):
    """Move ``delta`` bytes from frame i+1's size to frame i's (sum unchanged)."""
    index.frame_size[i] += delta
    index.frame_size[i + 1] -= delta


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda ix: ix.frame_size.append(10), "frames for"),
        (lambda ix: setattr(ix, "nr_pages", ix.nr_pages + 8), "frames for"),
        (lambda ix: _shift_size(ix, 0, 1), None),
        (lambda ix: ix.frame_size.__setitem__(0, ix.frame_size[0] + 1), "add up"),
        (lambda ix: ix.frame_size.__setitem__(0, 1 << 40), "outside"),
        (lambda ix: ix.frame_size.__setitem__(0, 0), "outside"),
    ],
)
def test_zpages_index_lies(zfile, change, match):
    p, lay, _ = zfile
    index = zpages_pb2.zpages_index()
    index.CopyFrom(lay.index)
    change(index)
    _rewrite_index(p, lay, index)
    if match is None:
        # sizes shifted between frames: the layout passes, reading must not
        with PagesReader(p) as r, pytest.raises(CorruptImage) as ei:
            r.read_pages(0, 8)
        assert ei.value.offset == lay.data_offset
    else:
        with pytest.raises(CorruptImage, match=match):
            PagesReader(p)


def test_zpages_footer_offset_lies(zfile):
    p, lay, _ = zfile
    _rewrite_index(p, lay, lay.index, footer_offset=lay.data_offset - 4)
    with pytest.raises(CorruptImage, match="index offset"):
        PagesReader(p)
    _rewrite_index(p, lay, lay.index, footer_offset=lay.data_offset)
    with pytest.raises(CorruptImage):
        PagesReader(p)


def _zframe(pages, checksum=True):
    return zstandard.ZstdCompressor(write_checksum=checksum).compress(bytes(pages * PS))


def _swap_frame(p, lay, i, frame):
    """Replace frame ``i`` with ``frame`` bytes and fix the index to match."""
    data = p.read_bytes()
    off, size = int(lay.offsets[i]), int(lay.sizes[i])
    body = data[: off] + frame + data[off + size : lay.index_offset]
    index = zpages_pb2.zpages_index()
    index.CopyFrom(lay.index)
    index.frame_size[i] = len(frame)
    payload = index.SerializeToString()
    index_offset = len(body)
    p.write_bytes(
        body + struct.pack("<I", len(payload)) + payload
        + fmt.ZPAGES_FOOTER.pack(index_offset, zlib.crc32(payload), fmt.ZPAGES_MAGIC)
    )


@pytest.mark.parametrize(
    "make, match",
    [
        # zstd magic followed by garbage
        (lambda: _zframe(8)[:4] + b"garbage", "bad zstd header|content size"),
        (lambda: _zframe(8, checksum=False), "checksum absent"),
        (lambda: _zframe(7), "content size"),
        (lambda: _zframe(8) + b"\0" * 3, "index expected"),
    ],
)
def test_zpages_frame_lies(zfile, make, match):
    p, lay, _ = zfile
    _swap_frame(p, lay, 1, make())
    with PagesReader(p) as r:
        r.read_pages(0, 8)
        with pytest.raises(CorruptImage, match=match) as ei:
            r.read_pages(8, 8)
        assert ei.value.offset == int(lay.offsets[1])


def test_zpages_content_size_bomb_not_allocated(zfile):
    # GIVEN frame 0 replaced by a frame whose header declares 1 TiB of content
    p, lay, _ = zfile
    frame = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(bytes(8 * PS)))
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size == 8 * PS
    # Frame_Header_Descriptor: FCS_Field_Size flag = 3 (8 bytes) -> rebuild the header
    fhd = frame[4]
    hsize = zstandard.frame_header_size(bytes(frame))
    fcs_len = {0: 1 if fhd & 0x20 else 0, 1: 2, 2: 4, 3: 8}[fhd >> 6]
    body = frame[hsize:]
    new_fhd = (fhd & 0x3F) | 0xC0
    head = frame[:4] + bytes([new_fhd]) + frame[5 : hsize - fcs_len] + struct.pack("<Q", 1 << 40)
    bomb = bytes(head + body)
    assert zstandard.get_frame_parameters(bomb).content_size == 1 << 40
    _swap_frame(p, lay, 0, bomb)
    # THEN the reader refuses it from the header alone
    with PagesReader(p) as r, pytest.raises(CorruptImage, match="content size 1099511627776"):
        r.read_pages(0, 1)


@pytest.mark.parametrize("value", [0, 9])
def test_unknown_zpages_compression(zfile, value):
    # GIVEN the head's compression (field 3, varint) set to NONE or an unknown codec
    p, lay, _ = zfile
    payload = lay.head.SerializeToString()
    i = payload.index(b"\x18\x01")  # tag of field 3 (varint), value ZSTD
    _mutate(p, 12 + i + 1, bytes([value]))
    with pytest.raises(UnsupportedVersion, match=f"compression {value}") as ei:
        PagesReader(p)
    assert ei.value.offset == 8


@pytest.mark.parametrize("kind", ["zeros", "random", "mixed"])
def test_default_frame_size_multi_block(tmp_path, kind):
    # 256 KiB frames span two zstd blocks (128 KiB max): raw, RLE or compressed
    n = fmt.FRAME_PAGES * 3 + 5
    data = {
        "zeros": bytes(n * PS),
        "random": os.urandom(n * PS),
        "mixed": b"".join(os.urandom(PS) if i % 3 else bytes([i & 0xFF]) * PS for i in range(n)),
    }[kind]
    with CheckpointWriter(tmp_path / "c", page_size=PS) as w:
        with w.pages_writer(1, 1) as pw:
            pw.add_present(0x10000, data)
        w.commit()
    with PagesReader(tmp_path / "c" / "pages-1.zst.img") as r:
        assert r.frame_pages == fmt.FRAME_PAGES and r.layout.nr_frames == 4
        assert r.read_pages(0, n) == data


# --- vectorised pagemap decoding (dumper.image.wire) against protobuf, the reference


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# One field of a pagemap_entry as bytes: mostly well-formed varint fields of
# pagemap_entry (values of any size, sometimes too large for the field),
# sometimes what the bulk decoder must leave to protobuf: unknown numbers,
# other wire types, overlong varints, a tag without a value.
_field_st = st.one_of(
    st.tuples(st.sampled_from([1, 2, 3, 4, 5, 32, 33]),
              st.one_of(st.integers(0, 300), st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 32) + 5))).map(
        lambda t: _varint(t[0] << 3) + _varint(t[1])),
    st.tuples(st.integers(0, 40), st.integers(0, 7), st.integers(0, 1 << 20)).map(
        lambda t: _varint(t[0] << 3 | t[1]) + _varint(t[2])),
    st.tuples(st.sampled_from([1, 2, 4, 5]), st.integers(1, 4)).map(  # overlong (non-minimal) varints
        lambda t: _varint(t[0] << 3) + b"\x81" + b"\x80" * t[1] + b"\x00"),
    st.sampled_from([b"\x08", b"\x08\xff", b"\x0a\x02\x01\x02", b"\x12\x00", b"\x88\x80\x80\x80\x80\x00\x01",
                     b"\x08" + b"\xff" * 9 + b"\x01", b"\x08" + b"\xff" * 9 + b"\x02", b"\x08" + b"\xff" * 10 + b"\x00"]),
)


def _ordinary_entry(v, n, flags, off, crc):
    pe = pagemap_pb2.pagemap_entry(vaddr=v, compat_nr_pages=n & 0xFFFFFFFF)
    if flags is not None:
        pe.flags = flags
    if off is not None:
        pe.pages_off = off
    if crc is not None:
        pe.pages_crc32 = crc
    return pe.SerializeToString()


_entry_st = st.one_of(
    st.builds(_ordinary_entry, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 32) - 1),
              st.one_of(st.none(), st.integers(0, 7)), st.one_of(st.none(), st.integers(0, 1 << 40)),
              st.one_of(st.none(), st.integers(0, (1 << 32) - 1))),
    st.lists(_field_st, max_size=8).map(b"".join),
)


def _frame(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in payloads)


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(_entry_st, min_size=1, max_size=30))
def test_bulk_decoder_agrees_with_protobuf(payloads):
    """Where decode_flat decodes a block, every field equals what protobuf
    parses; where protobuf would fail or keep something unknown, decode_flat
    gives the block back (None)."""
    from google.protobuf.message import DecodeError
    from google.protobuf.unknown_fields import UnknownFieldSet

    from dumper.image import wire

    buf = _frame(payloads)
    starts, sizes, pos, bad = wire.entry_spans(buf, 0, 0, len(buf), fmt.MAX_ENTRY_SIZE)
    assert bad is None and pos == len(buf) and sizes.tolist() == [len(p) for p in payloads]
    fields = (1, 2, 3, 4, 5, 32, 33)
    names = ("vaddr", "compat_nr_pages", "in_parent", "flags", "nr_pages", "pages_off", "pages_crc32")
    got = wire.decode_flat(buf, starts, sizes, fields, u32=(2, 4, 33))
    parsed = []
    for p in payloads:
        pe = pagemap_pb2.pagemap_entry()
        try:
            pe.ParseFromString(p)
        except DecodeError:
            assert got is None, f"decoded {p.hex()}, which protobuf refuses"
            return
        parsed.append(pe)
    if got is None:
        return  # protobuf's turn: nothing to compare
    for i, pe in enumerate(parsed):
        assert len(UnknownFieldSet(pe)) == 0, f"decoded {payloads[i].hex()}, which has unknown fields"
        for k, name in enumerate(names):
            assert bool(got.has[k][i]) == pe.HasField(name), (i, name, payloads[i].hex())
            if pe.HasField(name):
                want = int(getattr(pe, name))
                have = int(got.values[k][i])
                assert (bool(have) if name == "in_parent" else have) == want, (i, name, payloads[i].hex())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(_entry_st, min_size=0, max_size=20), ordered=st.booleans())
def test_load_pagemap_fast_equals_protobuf(tmp_path, payloads, ordered):
    """The whole of load_pagemap, both ways: the same entries, or the same error."""
    if ordered:  # mostly valid pagemaps: ascending, aligned, present pages counted
        payloads = [_ordinary_entry(0x10000 + i * 2 * PS, 1, fmt.PE_PRESENT, None, i) for i in range(len(payloads))]
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "pagemap-1.img"
    head = pagemap_pb2.pagemap_head(pages_id=1).SerializeToString()
    path.write_bytes(fmt._magic_words("PAGEMAP") + _frame([head, *payloads]))

    def load(fast):
        try:
            h, e = load_pagemap(path, page_size=PS, fast=fast)
            crc = None if e.crc32 is None else e.crc32.tolist()
            return "ok", list(e), crc
        except CorruptImage as err:
            return "error", str(err), None

    assert load(True) == load(False)

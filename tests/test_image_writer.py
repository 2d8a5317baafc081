"""CheckpointWriter and PagesWriter: atomicity, permissions, layout."""

from __future__ import annotations

import os
import zlib
import stat

import pytest

from dumper.errors import DumpError
from dumper.image import format as fmt
from dumper.image.pb import inventory_pb2, mm_pb2, stats_pb2
from dumper.image.reader import load_pagemap, read_image
from dumper.image.writer import CheckpointWriter, vma_entry_from
from dumper.proc.maps import Vma

PS = 4096


def _pages(n: int, seed: int = 0) -> bytes:
    # Distinct, partly compressible content per page.
    return b"".join(bytes([(seed + i) & 0xFF]) * 64 + os.urandom(PS - 64) for i in range(n))


def _leftovers(parent, name):
    return sorted(p for p in os.listdir(parent) if name in p)


def _write_small(dest, **kw):
    with CheckpointWriter(dest, page_size=PS, **kw) as w:
        w.write_inventory(inventory_pb2.inventory_entry(root_pid=1))
        with w.pages_writer(1, 1, compress=True, threads=2) as pw:
            pw.add_present(0x10000, _pages(3))
        w.commit()


def test_modes_and_names(tmp_path):
    dest = tmp_path / "ckpt"
    with CheckpointWriter(dest, page_size=PS) as w:
        # GIVEN a tmp dir while writing
        assert stat.S_IMODE(os.stat(w.tmpdir).st_mode) == 0o700
        stage = w.tmpdir.parent
        assert stat.S_IMODE(os.stat(stage).st_mode) == 0o700
        assert stage.parent == tmp_path and stage.name.startswith(f".ckpt.tmp-{os.getpid()}-")
        assert w.tmpdir.name == "ckpt"
        assert not dest.exists()
        w.write_inventory(inventory_pb2.inventory_entry())
        w.write_mm(1, mm_pb2.mm_entry())
        w.write_stats(stats_pb2.dump_stats_entry(pages_written=3))
        with w.pages_writer(1, 1, compress=True) as pw:
            pw.add_present(0x1000, _pages(2))
        with w.pages_writer(2, 2, compress=False) as pw:
            pw.add_present(0x1000, _pages(2))
        w.link_parent("../0")
        assert w.commit() == dest
    # THEN the directory is 0700 and every file 0600, whatever the umask
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    names = sorted(os.listdir(dest))
    assert names == sorted(
        ["inventory.img", "mm-1.img", "stats-dump", "pagemap-1.img", "pages-1.zst.img", "pagemap-2.img",
         "pages-2.img", "parent"]
    )
    for n in names:
        st = os.lstat(dest / n)
        if n == "parent":
            assert stat.S_ISLNK(st.st_mode) and os.readlink(dest / n) == "../0"
        else:
            assert stat.S_IMODE(st.st_mode) == 0o600, n
    assert _leftovers(tmp_path, ".ckpt") == []
    # and the service/singleton images decode
    assert read_image(dest / "stats-dump")[1][0].dump.pages_written == 3
    inv = read_image(dest / "inventory.img")[1][0]
    assert (inv.img_version, inv.fdinfo_per_id, inv.dumper_format_version, inv.page_size) == (2, True, 1, PS)


def test_umask_does_not_loosen_or_tighten_modes(tmp_path):
    old = os.umask(0o077 if os.getuid() else 0o022)
    try:
        _write_small(tmp_path / "c")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c" / "pages-1.zst.img").st_mode) == 0o600


def test_abort_leaves_nothing(tmp_path):
    dest = tmp_path / "ckpt"
    w = CheckpointWriter(dest, page_size=PS)
    pw = w.pages_writer(1, 1, threads=2)
    pw.add_present(0, _pages(200))
    w.abort()
    assert os.listdir(tmp_path) == []
    w.abort()  # idempotent


def test_exception_in_context_aborts(tmp_path):
    dest = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with CheckpointWriter(dest, page_size=PS) as w:
            w.write_inventory(inventory_pb2.inventory_entry())
            pw = w.pages_writer(1, 1)
            pw.add_present(0, _pages(70))
            raise RuntimeError("dump failed")
    assert os.listdir(tmp_path) == []


def test_no_commit_means_no_checkpoint(tmp_path):
    with CheckpointWriter(tmp_path / "ckpt", page_size=PS) as w:
        w.write_inventory(inventory_pb2.inventory_entry())
    assert os.listdir(tmp_path) == []


def test_commit_refuses_open_pages_writer(tmp_path):
    with CheckpointWriter(tmp_path / "ckpt", page_size=PS) as w:
        w.pages_writer(1, 1).add_present(0, _pages(1))
        with pytest.raises(DumpError, match="still open"):
            w.commit()
    assert os.listdir(tmp_path) == []


def test_existing_dest_refused_without_force(tmp_path):
    dest = tmp_path / "ckpt"
    _write_small(dest)
    before = {n: (dest / n).read_bytes() for n in os.listdir(dest)}
    with pytest.raises(DumpError, match="exists"):
        CheckpointWriter(dest, page_size=PS)
    # nothing was written next to it
    assert _leftovers(tmp_path, "ckpt") == ["ckpt"]
    assert {n: (dest / n).read_bytes() for n in os.listdir(dest)} == before


def test_force_replaces_a_checkpoint(tmp_path):
    dest = tmp_path / "ckpt"
    _write_small(dest)
    (dest / "stale-file").write_bytes(b"x")
    with CheckpointWriter(dest, force=True, page_size=PS) as w:
        w.write_inventory(inventory_pb2.inventory_entry(root_pid=2))
        w.commit()
    assert os.listdir(dest) == ["inventory.img"]
    assert read_image(dest / "inventory.img")[1][0].root_pid == 2
    assert _leftovers(tmp_path, "ckpt") == ["ckpt"]


def test_force_refuses_a_foreign_directory(tmp_path):
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "precious").write_text("data")
    with pytest.raises(DumpError, match="not a checkpoint"):
        CheckpointWriter(dest, force=True, page_size=PS)
    assert (dest / "precious").read_text() == "data"


@pytest.mark.parametrize("kind", ["non-empty dir", "checkpoint", "file", "symlink"])
def test_dest_appearing_during_dump_is_not_clobbered(tmp_path, kind):
    dest = tmp_path / "ckpt"
    with CheckpointWriter(dest, page_size=PS) as w:
        w.write_inventory(inventory_pb2.inventory_entry(root_pid=7))
        if kind == "non-empty dir":
            dest.mkdir()
            (dest / "precious").write_text("data")
        elif kind == "checkpoint":
            _write_small(dest)
        elif kind == "file":
            dest.write_text("data")
        else:
            dest.symlink_to(tmp_path / "elsewhere")
        before = os.lstat(dest)
        with pytest.raises(DumpError, match="exists|refusing to replace"):
            w.commit()
    # THEN what appeared is untouched and nothing of ours is left beside it
    after = os.lstat(dest)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_empty_dir_appearing_during_dump_is_filled(tmp_path):
    dest = tmp_path / "ckpt"
    with CheckpointWriter(dest, page_size=PS) as w:
        w.write_inventory(inventory_pb2.inventory_entry(root_pid=7))
        dest.mkdir()
        w.commit()
    assert read_image(dest / "inventory.img")[1][0].root_pid == 7
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_missing_parent_dir(tmp_path):
    with pytest.raises(DumpError, match="no such directory"):
        CheckpointWriter(tmp_path / "a" / "b")


def test_raw_layout_is_concatenation_in_entry_order(tmp_path):
    # GIVEN present runs interleaved with parent holes
    runs = [(0x1000, _pages(2, 1)), (0x5000, _pages(1, 2)), (0x100000, _pages(5, 3))]
    dest = tmp_path / "c"
    with CheckpointWriter(dest, page_size=PS) as w:
        with w.pages_writer(9, 4, compress=False, merge=False) as pw:
            pw.add_present(*runs[0])
            pw.add_parent(0x3000, 2)
            pw.add_present(*runs[1])
            pw.add_present(*runs[2])
        w.commit()
    # THEN pages-4.img is exactly the PE_PRESENT data in order, nothing else
    assert (dest / "pages-4.img").read_bytes() == b"".join(d for _, d in runs)
    head, entries = load_pagemap(dest / "pagemap-9.img")
    assert head.pages_id == 4 and head.compression == fmt.COMPRESSION_NONE and head.pages_file == "pages-4.img"
    assert [(e.vaddr, e.nr_pages, e.flags, e.pages_off) for e in entries] == [
        (0x1000, 2, fmt.PE_PRESENT, 0),
        (0x3000, 2, fmt.PE_PARENT, -1),
        (0x5000, 1, fmt.PE_PRESENT, 2),
        (0x100000, 5, fmt.PE_PRESENT, 3),
    ]
    # both CRIU count fields are written
    _, msgs = read_image(dest / "pagemap-9.img")
    assert all(m.HasField("nr_pages") and m.compat_nr_pages == m.nr_pages for m in msgs[1:])


def test_merge_contiguous_runs(tmp_path):
    dest = tmp_path / "c"
    with CheckpointWriter(dest, page_size=PS) as w:
        with w.pages_writer(1, 1, compress=False) as pw:
            pw.add_present(0x1000, _pages(1))
            pw.add_present(0x2000, _pages(2))
            pw.add_parent(0x4000, 1)
            pw.add_parent(0x5000, 1)
            pw.add_present(0x7000, _pages(1))
        w.commit()
    _, entries = load_pagemap(dest / "pagemap-1.img")
    assert [(e.vaddr, e.nr_pages, e.flags) for e in entries] == [
        (0x1000, 3, fmt.PE_PRESENT),
        (0x4000, 2, fmt.PE_PARENT),
        (0x7000, 1, fmt.PE_PRESENT),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        lambda pw: pw.add_present(0x1800, bytes(PS)),  # unaligned vaddr
        lambda pw: pw.add_present(0x1000, bytes(100)),  # partial page
        lambda pw: pw.add_present(0x1000, b""),  # empty
        lambda pw: pw.add_parent(0x1000, 0),  # empty
        lambda pw: pw.add_present(0x9000, bytes(PS)),  # descending
        lambda pw: pw.add_parent(0xB000, 1),  # overlapping the previous entry
        lambda pw: pw.add_parent((1 << 64) - PS, 2),  # past 2**64
    ],
)
def test_misuse_raises_value_error(tmp_path, bad):
    with CheckpointWriter(tmp_path / "c", page_size=PS) as w:
        pw = w.pages_writer(1, 1, compress=False)
        pw.add_present(0xA000, bytes(2 * PS))
        with pytest.raises(ValueError):
            bad(pw)


def test_add_present_copies_the_callers_buffer(tmp_path):
    # GIVEN one buffer reused for every read, as the dumper's reader does
    buf = bytearray(PS * 100)
    expected = []
    dest = tmp_path / "c"
    with CheckpointWriter(dest, page_size=PS) as w:
        with w.pages_writer(1, 1, threads=4, frame_pages=8) as pw:
            for i in range(20):
                chunk = _pages(100, i)
                buf[:] = chunk
                pw.add_present(i * 0x1000000, memoryview(buf))
                expected.append(chunk)
                buf[:] = b"\xee" * len(buf)  # scribble right after the call
        w.commit()
    from dumper.image.reader import PagesReader

    with PagesReader(dest / "pages-1.zst.img") as r:
        assert r.read_pages(0, r.nr_pages) == b"".join(expected)


def test_in_flight_frames_are_bounded(tmp_path, monkeypatch):
    from dumper.image import writer as wmod

    seen, buffers = [], set()
    orig = wmod.PagesWriter._submit_frame

    def spy(self):
        buffers.add(id(self._cur))
        orig(self)
        seen.append(self._out.qsize())

    monkeypatch.setattr(wmod.PagesWriter, "_submit_frame", spy)
    with CheckpointWriter(tmp_path / "c", page_size=PS) as w:
        with w.pages_writer(1, 1, threads=3, frame_pages=4) as pw:
            pw.add_present(0, os.urandom(PS * 4000))
        w.commit()
    pool = 2 * 3 + 2  # batches of wmod.BATCH_FRAMES frames
    assert len(seen) >= 1000 // wmod.BATCH_FRAMES and max(seen) <= pool
    assert len(buffers) <= pool  # buffers are recycled, never allocated per batch


@pytest.mark.parametrize("compress", [True, False])
def test_add_present_from_reads_into_the_writer_and_stops_short(tmp_path, compress):
    memory = _pages(50, 3)
    bad_page = 37

    def readinto(view, addr):
        # pages 0..49 at address 0; page 37 cannot be read
        first = addr // PS
        n = len(view) // PS
        ok = min(n, max(0, bad_page - first)) if first <= bad_page else n
        view[: ok * PS] = memory[first * PS : (first + ok) * PS]
        return ok * PS

    dest = tmp_path / "c"
    with CheckpointWriter(dest, page_size=PS) as w:
        with w.pages_writer(1, 1, compress=compress, frame_pages=8) as pw:
            assert pw.add_present_from(0, 50, readinto) == bad_page
            assert pw.add_present_from((bad_page + 1) * PS, 50 - bad_page - 1, readinto) == 50 - bad_page - 1
        w.commit()
    from dumper.image.reader import iter_present, load_pagemap, open_pages

    head, entries = load_pagemap(dest / "pagemap-1.img")
    assert [(e.vaddr, e.nr_pages) for e in entries] == [(0, bad_page), ((bad_page + 1) * PS, 12)]
    with open_pages(dest, head) as pages:
        got = b"".join(bytes(d) for _, d in iter_present(entries, pages))
    assert got == memory[: bad_page * PS] + memory[(bad_page + 1) * PS :]


@pytest.mark.parametrize("compress", [True, False])
def test_add_present_read_workers_read_on_the_frame_grid(tmp_path, compress):
    """Runs read by the workers themselves, between pages added by the
    caller (partial frames on both sides): the stream is the pages in order,
    a page that cannot be read is stored as zeros and reported."""
    memory = _pages(300, 5)
    bad = {37, 201}
    reported = []

    def readinto(view, addr):
        first, n = addr // PS, len(view) // PS
        ok = next((i for i in range(n) if first + i in bad), n)
        view[: ok * PS] = memory[first * PS:(first + ok) * PS]
        return ok * PS

    dest = tmp_path / "c"
    with CheckpointWriter(dest, page_size=PS) as w:
        with w.pages_writer(1, 1, compress=compress, frame_pages=8, threads=3) as pw:
            pw.add_present(0, memory[: 3 * PS])  # a partial frame first
            pw.add_present_read(3 * PS, 250, readinto, reported.append)  # finishes it, whole frames, a tail
            pw.add_present(253 * PS, memory[253 * PS: 260 * PS])
            pw.add_present_read(260 * PS, 40, readinto, reported.append)
        w.commit()
    from dumper.image.reader import iter_present, load_pagemap, open_pages

    head, entries = load_pagemap(dest / "pagemap-1.img")
    assert [(e.vaddr, e.nr_pages) for e in entries] == [(0, 300)]
    expected = bytearray(memory)
    for b in bad:
        expected[b * PS:(b + 1) * PS] = bytes(PS)
    with open_pages(dest, head) as pages:
        got = b"".join(bytes(d) for _, d in iter_present(entries, pages))
    assert got == bytes(expected)
    assert sorted(reported) == [b * PS for b in sorted(bad)]
    if not compress:  # the recorded crc32 covers the zeros
        assert entries[0].crc32 == zlib.crc32(bytes(expected))


def test_add_present_read_error_in_a_worker_reaches_the_caller(tmp_path):
    from dumper.errors import DumpError

    def readinto(view, addr):
        raise DumpError("the snapshot process was killed")

    with CheckpointWriter(tmp_path / "c", page_size=PS) as w:
        pw = w.pages_writer(1, 1, threads=2, frame_pages=4)
        with pytest.raises(DumpError, match="snapshot process was killed"):
            pw.add_present_read(0, 400, readinto, lambda a: None)
            pw.close()
    assert not (tmp_path / "c").exists()


def test_write_error_in_the_writer_thread_reaches_the_caller(tmp_path, monkeypatch):
    from dumper.errors import DumpError
    from dumper.image import writer as wmod

    def failing(self, data):
        raise DumpError("writing pages-1.zst.img: No space left on device")

    with CheckpointWriter(tmp_path / "c", page_size=PS) as w:
        pw = w.pages_writer(1, 1, threads=2, frame_pages=4)
        monkeypatch.setattr(wmod.PagesWriter, "_write", failing)
        with pytest.raises(DumpError, match="No space left"):
            for i in range(200):
                pw.add_present(i * 16 * PS, os.urandom(PS * 16))
            pw.close()
    assert not (tmp_path / "c").exists()


def test_stats(tmp_path):
    with CheckpointWriter(tmp_path / "c", page_size=PS) as w:
        with w.pages_writer(1, 1, threads=2, frame_pages=16) as pw:
            pw.add_present(0, bytes(PS * 40))
            pw.add_parent(0x100000, 7)
        w.commit()
    s = pw.stats
    assert (s.entries, s.pages_present, s.pages_parent, s.frames) == (2, 40, 7, 3)
    assert s.bytes_raw == 40 * PS and 0 < s.bytes_compressed < 2000
    assert s.bytes_file == os.path.getsize(tmp_path / "c" / "pages-1.zst.img")
    assert s.compress_ns > 0 and s.write_ns > 0
    d = stats_pb2.dump_stats_entry()
    s.add_to(d)
    assert (d.pages_written, d.pages_skipped_parent, d.bytes_raw) == (40, 7, 40 * PS)


def test_empty_pages_writers(tmp_path):
    dest = tmp_path / "c"
    with CheckpointWriter(dest, page_size=PS) as w:
        w.pages_writer(1, 1, compress=True).close()
        w.pages_writer(2, 2, compress=False).close()
        w.commit()
    assert (dest / "pages-2.img").read_bytes() == b""
    from dumper.image.reader import PagesReader

    with PagesReader(dest / "pages-1.zst.img") as r:
        assert r.nr_pages == 0 and r.read_pages(0, 0) == b""


def test_duplicate_pid_is_refused(tmp_path):
    with CheckpointWriter(tmp_path / "c", page_size=PS) as w:
        w.pages_writer(1, 1).close()
        with pytest.raises(DumpError, match="pagemap-1.img"):
            w.pages_writer(1, 2)


def test_vma_entry_from():
    vma = Vma(0x7F0000, 0x7F4000, "rw-p", 0, 0, 0, 0, "[stack]", frozenset({"rd", "wr", "gd", "dd", "hg"}))
    e = vma_entry_from(vma, status=fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_PRIVATE | fmt.VMA_AREA_STACK, dumped=True)
    assert (e.start, e.end, e.prot, e.fd) == (0x7F0000, 0x7F4000, 3, -1)
    assert fmt.format_flags(e.flags, "mmap.flags") == "MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN"
    assert e.madv == (1 << 16) | (1 << 14)
    assert e.path == "[stack]" and e.vmflags == "dd gd hg rd wr" and e.dumped
    assert e.IsInitialized()
    shared = Vma(0x1000, 0x2000, "rw-s", 0x3000, 8, 1, 77, "/tmp/f", frozenset({"dp"}))
    e = vma_entry_from(shared, status=fmt.VMA_AREA_REGULAR | fmt.VMA_FILE_SHARED, dumped=False,
                       contents_skipped_reason="shared mapping")
    assert fmt.format_flags(e.flags, "mmap.flags") == "MAP_SHARED | MAP_DROPPABLE"
    assert (e.pgoff, e.inode, e.dev_major, e.dev_minor) == (0x3000, 77, 8, 1)
    assert not e.HasField("madv") and e.contents_skipped_reason == "shared mapping"

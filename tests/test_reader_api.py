"""open_checkpoint / Checkpoint: memory as it was at dump time, lazily."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

import dumper
from dumper.dump import dump
from dumper.errors import CorruptImage, ImageError
from dumper.image import format as fmt
from dumper.image.checkpoint import Checkpoint, open_checkpoint, resolve_parent_chain
from dumper.image.pb import inventory_pb2, mm_pb2, pagemap_pb2, vma_pb2
from dumper.image.reader import read_zpages_layout
from dumper.image.writer import CheckpointWriter, fill_required
from dumper.cli.verify import only_kernel_written
from dumper.kernel.libc import PAGE_SIZE

P = PAGE_SIZE


def live(pid: int, addr: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        out = b""
        while len(out) < size:
            chunk = os.pread(fd, size - len(out), addr + len(out))
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(fd)


@pytest.fixture
def stopped(spawn_target, tmp_path):
    """(target, checkpoint dir) of a layouts target dumped with leave-stopped."""

    def make(layouts: str, **kw):
        t = spawn_target(layouts)
        ck = tmp_path / "ck"
        dump(t.pid, ck, thaw="leave-stopped", **kw)
        return t, ck

    return make


# --- real processes


@pytest.mark.parametrize("compress", [True, False])
def test_read_equals_the_stopped_memory(stopped, compress):
    t, d = stopped("dense,zero,file,sparse", compress=compress)
    rng = random.Random(5)
    with open_checkpoint(d) as ck:
        assert ck.pids == (t.pid,) and ck.root_pid == t.pid
        # random unaligned ranges inside each layout: dumped pages, zero-page
        # pages, written pages, untouched file pages, never-touched pages
        for name in ("dense", "zero", "file", "sparse"):
            base, length = t.regions[name]
            for _ in range(40):
                off = rng.randrange(0, length - 1)
                size = rng.randrange(1, min(length - off, 9 * P))
                assert ck.read(t.pid, base + off, size) == live(t.pid, base + off, size), (name, off, size)
            if length <= 64 << 20:
                assert ck.read(t.pid, base, length) == live(t.pid, base, length), name
        # the file layout mixes all three sources within a few pages
        fbase, flen = t.regions["file"]
        assert ck.read(None, fbase + 100, flen - 200) == live(t.pid, fbase + 100, flen - 200)
        # the sparse reservation: never-touched pages around the touched ones
        sbase, slen = t.regions["sparse"]
        entry = next(e for e in ck.iter_entries() if sbase + 3 * P <= e.vaddr < sbase + slen - 8 * P)
        lo = entry.vaddr - 3 * P - 7
        assert ck.read(t.pid, lo, 7 * P + 20) == live(t.pid, lo, 7 * P + 20)

        # every other VMA whose contents were dumped: libraries (untouched
        # private file pages), heap, stack, vdso
        checked = 0
        for v in ck.process().vmas:
            if not v.dumped or v.end - v.start > 64 << 20:
                continue
            mem = live(t.pid, v.start, v.end - v.start)
            if len(mem) != v.end - v.start:
                continue  # a file mapping reaching past its file's end
            got = ck.read(t.pid, v.start, v.end - v.start)  # rseq cpu ids aside (tests/live_memory.py)
            assert got == mem or only_kernel_written(got, mem, v.start, ck.rseq_areas(t.pid)), (hex(v.start), v.path)
            checked += 1
        assert checked > 10


def test_read_errors(stopped):
    t, d = stopped("dense,shared")
    with open_checkpoint(d) as ck:
        vmas = ck.process().vmas
        hole = next(a.end for a, b in zip(vmas, vmas[1:]) if a.end < b.start)
        with pytest.raises(ImageError, match=f"address {hole + 5:#x} is outside any recorded VMA"):
            ck.read(t.pid, hole + 5, 10)
        # a range running off the end of a VMA into a hole
        with pytest.raises(ImageError, match=f"{hole:#x} is outside"):
            ck.read(t.pid, hole - 10, 20)
        sh, n = t.regions["shared"]
        assert ck.read(t.pid, sh, n) == live(t.pid, sh, n)  # shared memory: its object's bytes
        with pytest.raises(ImageError, match="no process 1 in this checkpoint"):
            ck.read(1, t.regions["dense"][0], 1)
        with pytest.raises(ValueError):
            ck.read(t.pid, 10, -1)
        assert ck.read(t.pid, t.regions["dense"][0], 0) == b""
    with pytest.raises(ValueError, match="closed"):
        ck.read(t.pid, t.regions["dense"][0], 1)


def test_replaced_or_deleted_mapped_file(stopped, tmp_path):
    t, d = stopped("file")
    base, length = t.regions["file"]
    path = tmp_path / "mapped.bin"
    with open_checkpoint(d) as ck:
        untouched = base + 3 * P  # never read nor written: the file's
        written = base + 1 * P  # COWed: dumped
        expect = live(t.pid, untouched, P)
        assert ck.read(t.pid, untouched, P) == expect
    # same name, new inode: the recorded identity no longer matches
    new = tmp_path / "mapped.new"
    new.write_bytes(path.read_bytes())
    os.replace(new, path)
    with open_checkpoint(d) as ck:
        assert ck.read(t.pid, written, P) == live(t.pid, written, P)  # dumped: no file needed
        with pytest.raises(ImageError, match="is not the file that was mapped") as ei:
            ck.read(t.pid, untouched, P)
        assert ei.value.path == str(path)
    path.unlink()
    with open_checkpoint(d) as ck:
        with pytest.raises(ImageError, match="is gone") as ei:
            ck.read(t.pid, untouched, 10)
        assert ei.value.path == str(path)


def test_open_reads_metadata_only(spawn_target, tmp_path):
    t = spawn_target("dense,zero")
    d = tmp_path / "ck"
    dump(t.pid, d)
    zp = d / fmt.zpages_name(1)
    with open(zp, "rb") as f:
        lay = read_zpages_layout(f, zp)

    def rchar() -> int:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))

    before = rchar()
    with open_checkpoint(d) as ck:
        read = rchar() - before
        assert read < (lay.index_offset - lay.data_offset) // 4, read
        # wreck every frame: opening cannot notice, reading does
        with open(zp, "r+b") as f:
            f.seek(lay.data_offset)
            f.write(b"\xa5" * (lay.index_offset - lay.data_offset))
    with open_checkpoint(d) as ck:
        assert ck.process().nr_pages_present == lay.nr_pages
        with pytest.raises(CorruptImage, match="frame"):
            ck.read(None, t.regions["dense"][0], 1)


def test_iterators(stopped):
    t, d = stopped("dense,zero")
    ck = dumper.open_checkpoint(d)
    with ck:
        assert isinstance(ck, Checkpoint)
        entries = list(ck.iter_entries())
        assert entries == list(ck.iter_entries(t.pid)) == ck.process().entries
        total = 0
        prev_end = 0
        for vaddr, data in ck.iter_pages(max_pages=3):
            assert len(data) % P == 0 and 0 < len(data) <= 3 * P
            assert vaddr >= prev_end
            mem = live(t.pid, vaddr, len(data))
            assert data == mem or only_kernel_written(data, mem, vaddr, ck.rseq_areas(t.pid))
            prev_end = vaddr + len(data)
            total += len(data) // P
        assert total == ck.process().nr_pages_present == ck.stats.pages_written
        with pytest.raises(ImageError, match="no process 424242"):
            list(ck.iter_pages(424242))
        with pytest.raises(ImageError):
            list(ck.iter_entries(424242))


# --- parent chains (built with the writer: PE_PARENT entries)

VBASE = 0x10000000


def _mm(vmas) -> mm_pb2.mm_entry:
    mm = mm_pb2.mm_entry(exe_file_id=0)
    for start, end in vmas:
        mm.vmas.append(vma_pb2.vma_entry(
            start=start, end=end, pgoff=0, shmid=0, prot=3, flags=0x22, fd=-1,
            status=fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_PRIVATE))
    return mm


def write_ckpt(dest: Path, runs, *, pid=100, compress=True, parent=None, vmas=((VBASE, VBASE + 64 * P),)):
    """A checkpoint of one process: ``runs`` = [(page, count, bytes | "parent")]."""
    with CheckpointWriter(dest, page_size=P) as w:
        with w.pages_writer(pid, 1, compress=compress, frame_pages=4, threads=1, merge=False) as pw:
            for page, n, data in runs:
                if data == "parent":
                    pw.add_parent(VBASE + page * P, n)
                else:
                    pw.add_present(VBASE + page * P, data)
        w.write_mm(pid, _mm(vmas))
        w.write_inventory(inventory_pb2.inventory_entry(root_pid=pid, pids=[pid]))
        if parent is not None:
            w.link_parent(parent)
        w.commit()
    return dest


def _fill(byte: int, pages: int) -> bytes:
    return bytes([byte]) * (pages * P)


def _vma(start: int, end: int) -> vma_pb2.vma_entry:
    return _mm([(start, end)]).vmas[0]


def _read_mm(d: Path) -> mm_pb2.mm_entry:
    from dumper.image.reader import read_image

    (name,) = [n for n in os.listdir(d) if n.startswith("mm-")]
    return read_image(d / name)[1][0]


def _write_mm(d: Path, mm: mm_pb2.mm_entry) -> None:
    (name,) = [n for n in os.listdir(d) if n.startswith("mm-")]
    (d / name).write_bytes(fmt.encode_image("MM", [mm]))


@pytest.fixture
def chain(tmp_path):
    """grand (pages 0-9 = 0x11) <- mid (2-3 = 0x22, 0-1/4-9 parent) <- top
    (5 = 0x33; 0-4 and 6-7 parent; 8-9 untouched -> zero... no: parent 8-9)."""
    root = tmp_path / "ckpts"
    root.mkdir()
    write_ckpt(root / "0", [(0, 10, _fill(0x11, 10))])
    write_ckpt(root / "1", [(0, 2, "parent"), (2, 2, _fill(0x22, 2)), (4, 6, "parent")], parent="../0")
    write_ckpt(root / "2", [(0, 5, "parent"), (5, 1, _fill(0x33, 1)), (6, 4, "parent")], parent="../1")
    return root


def test_parent_chain_read(chain):
    with open_checkpoint(chain / "2") as ck:
        assert ck.parent_paths == (chain / "1", chain / "0")
        assert ck._parent is None  # opened lazily
        got = ck.read(100, VBASE, 12 * P)
        expect = _fill(0x11, 2) + _fill(0x22, 2) + _fill(0x11, 1) + _fill(0x33, 1) + _fill(0x11, 4) + bytes(2 * P)
        assert got == expect
        assert ck.read(100, VBASE + 3 * P + 5, 3 * P) == expect[3 * P + 5 : 6 * P + 5]
        pages = dict(ck.iter_pages(100, max_pages=1))
        assert sorted(pages) == [VBASE + i * P for i in range(10)]
        assert b"".join(pages[k] for k in sorted(pages)) == expect[: 10 * P]
        assert [e.flags for e in ck.iter_entries()] == [fmt.PE_PARENT, fmt.PE_PRESENT, fmt.PE_PARENT]
        assert [c.path for c in ck.chain()] == [chain / "2", chain / "1", chain / "0"]
        chunks = list(ck.iter_chunks(100, VBASE, 12 * P))
        assert b"".join(c for _, c in chunks) == expect
        assert [v for v, _ in chunks] == sorted(v for v, _ in chunks) and chunks[0][0] == VBASE
        with pytest.raises(ValueError, match="not page aligned"):
            next(ck.iter_chunks(100, VBASE + 1, P))
        with pytest.raises(ImageError, match="no pagemap entry"):
            list(ck.iter_chunks(100, VBASE, 12 * P, recorded_only=True))
        assert ck.recorded_ranges() == [(VBASE, VBASE + 10 * P)]
        assert list(ck.verify()) == []
        parent = ck.parent
    assert parent.closed  # closed with its child


def test_parent_hole_not_in_parent(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    write_ckpt(root / "0", [(0, 2, _fill(1, 2))])
    write_ckpt(root / "1", [(0, 4, "parent")], parent="../0")
    with open_checkpoint(root / "1") as ck:
        assert ck.read(100, VBASE, 2 * P) == _fill(1, 2)
        with pytest.raises(ImageError, match=r"no pagemap entry for \[0x10002000, 0x10004000\)") as ei:
            ck.read(100, VBASE, 4 * P)
        assert ei.value.path == str(root / "0" / fmt.pagemap_name(100))
        problems = [str(p) for p in ck.verify()]
        assert len(problems) == 1 and "PE_PARENT pages [0x10002000, 0x10004000) are not in the parent" in problems[0]
    # PE_PARENT with no parent link at all
    write_ckpt(root / "2", [(0, 1, "parent")])
    with open_checkpoint(root / "2") as ck:
        with pytest.raises(ImageError, match="no parent checkpoint"):
            ck.read(100, VBASE, 1)
        assert any("no parent checkpoint" in str(p) for p in ck.verify())


def test_parent_chain_loops_and_escapes(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    write_ckpt(root / "a", [(0, 1, _fill(1, 1))], parent="../b")
    write_ckpt(root / "b", [(0, 1, _fill(1, 1))], parent="../a")
    # One rule for broken chains: the checkpoint opens, its own pages read,
    # and what needs the parent fails naming the broken link.
    with open_checkpoint(root / "a") as ck:
        assert ck.read(100, VBASE, P) == _fill(1, 1)
        with pytest.raises(ImageError, match="loops") as ei:
            ck.parent.parent
        assert ei.value.path == str(root / "b" / "parent")
    write_ckpt(root / "self", [(0, 1, _fill(1, 1))], parent=".")
    with open_checkpoint(root / "self") as ck:
        with pytest.raises(ImageError, match="loops") as ei:
            ck.parent
        assert ei.value.path == str(root / "self" / "parent")
        assert ck.chain_status()[-1]["ok"] is False

    outside = tmp_path / "elsewhere"
    write_ckpt(outside, [(0, 1, _fill(1, 1))])
    write_ckpt(root / "out", [(0, 1, "parent")], parent=str(outside))
    with open_checkpoint(root / "out") as ck:
        with pytest.raises(ImageError, match="outside") as ei:
            ck.parent
        assert ei.value.path == str(root / "out" / "parent")
        with pytest.raises(ImageError, match=r"in the parent checkpoint, which cannot be used: .*outside") as ei:
            ck.read(100, VBASE, P)
    write_ckpt(root / "up", [(0, 1, "parent")], parent="..")
    with open_checkpoint(root / "up") as ck, pytest.raises(ImageError, match="outside"):
        ck.read(100, VBASE, P)
    # a chain that leaves the directory further up is refused too
    write_ckpt(root / "mid", [(0, 1, "parent")], parent="../out")
    with pytest.raises(ImageError, match="outside") as ei:
        resolve_parent_chain(root / "mid")
    assert ei.value.path == str(root / "out" / "parent")

    write_ckpt(root / "dangling", [(0, 1, "parent")], parent="../nothing")
    with open_checkpoint(root / "dangling") as ck, pytest.raises(ImageError, match="does not resolve") as ei:
        ck.parent
    assert ei.value.path == str(root / "dangling" / "parent")
    os.symlink("link2", root / "link1")
    os.symlink("link1", root / "link2")
    write_ckpt(root / "symloop", [(0, 1, "parent")], parent="../link1")
    with open_checkpoint(root / "symloop") as ck, pytest.raises(ImageError, match="does not resolve"):
        ck.read(100, VBASE, P)


# --- CRIU image directories (raw pages, no dumper fields)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pstree_entry(pid: int, ppid: int, threads: list[int]) -> bytes:
    """CRIU pstree_entry, hand-encoded: pid=1, ppid=2, pgid=3, sid=4, threads=5."""
    msg = b""
    for number, value in ((1, pid), (2, ppid), (3, pid), (4, ppid or pid)):
        msg += _varint(number << 3) + _varint(value)
    for tid in threads:
        msg += _varint(5 << 3) + _varint(tid)
    return msg


def write_criu_images(d: Path, procs: dict, *, pstree: bool = True) -> None:
    """A CRIU-style image set: inventory without dumper fields, pstree.img,
    mm-PID.img with CRIU-only vma fields, pagemap-PID.img with field 2 only
    (no nr_pages, no pages_off, no head extras) and raw pages-N.img.

    ``procs``: pid -> dict(ppid, pages_id, vmas=[(start, end, status)],
    runs=[(vaddr, bytes, style)]) with style "flags" (flags=PE_PRESENT),
    "noflags" (absent flags: present) or "v42" (field 5, field 2 = 0).
    """
    d.mkdir()
    inv = inventory_pb2.inventory_entry(img_version=2, fdinfo_per_id=True)
    (d / fmt.INVENTORY_NAME).write_bytes(fmt.encode_image("INVENTORY", [inv]))
    if pstree:
        data = struct.pack("<II", fmt.IMG_COMMON_MAGIC, fmt.PSTREE_MAGIC)
        for pid, p in procs.items():
            e = _pstree_entry(pid, p["ppid"], [pid])
            data += struct.pack("<I", len(e)) + e
        (d / "pstree.img").write_bytes(data)
    for pid, p in procs.items():
        mm = mm_pb2.mm_entry(exe_file_id=0)
        for start, end, status in p["vmas"]:
            mm.vmas.append(vma_pb2.vma_entry(start=start, end=end, pgoff=0, shmid=0, prot=3, flags=0x22,
                                             status=fmt.VMA_AREA_REGULAR | status, fd=-1))
        fill_required(mm)
        (d / fmt.mm_name(pid)).write_bytes(fmt.encode_image("MM", [mm]))
        msgs = [pagemap_pb2.pagemap_head(pages_id=p["pages_id"])]
        raw = b""
        for vaddr, data, style in p["runs"]:
            n = len(data) // P
            if style == "flags":
                msgs.append(pagemap_pb2.pagemap_entry(vaddr=vaddr, compat_nr_pages=n, flags=fmt.PE_PRESENT))
            elif style == "noflags":
                msgs.append(pagemap_pb2.pagemap_entry(vaddr=vaddr, compat_nr_pages=n))
            else:
                msgs.append(pagemap_pb2.pagemap_entry(vaddr=vaddr, compat_nr_pages=0, nr_pages=n,
                                                      flags=fmt.PE_PRESENT))
            raw += data
        (d / fmt.pagemap_name(pid)).write_bytes(fmt.encode_image("PAGEMAP", msgs))
        (d / fmt.pages_name(p["pages_id"])).write_bytes(raw)


def _criu_procs():
    r = random.Random(3)
    a = [r.randbytes(2 * P), r.randbytes(P), r.randbytes(3 * P)]
    b = [r.randbytes(P), r.randbytes(4 * P)]
    return {
        # the root, listed first in pstree, has the larger pid
        700: dict(ppid=0, pages_id=1, vmas=[(0x400000, 0x410000, fmt.VMA_ANON_PRIVATE),
                                             (0x410000, 0x420000, fmt.VMA_FILE_PRIVATE)],
                  runs=[(0x400000, a[0], "flags"), (0x404000, a[1], "noflags"), (0x410000, a[2], "v42")]),
        12: dict(ppid=700, pages_id=2, vmas=[(0x800000, 0x808000, fmt.VMA_ANON_PRIVATE)],
                 runs=[(0x801000, b[0], "noflags"), (0x803000, b[1], "flags")]),
    }


def test_criu_image_set(tmp_path):
    procs = _criu_procs()
    d = tmp_path / "criu"
    write_criu_images(d, procs)
    with open_checkpoint(d) as ck:
        assert ck.is_criu and ck.stats is None and ck.parent is None
        assert ck.pids == (700, 12) and ck.root_pid == 700
        assert ck.processes[12].ppid == 700 and ck.processes[12].threads == (12,)
        a = procs[700]["runs"]
        assert ck.read(None, 0x400000, 2 * P) == a[0][1]
        assert ck.read(700, 0x400000, 5 * P) == a[0][1] + bytes(2 * P) + a[1][1]
        assert ck.read(700, 0x410000, 3 * P) == a[2][1]
        with pytest.raises(ImageError, match="reg-files.img"):
            ck.read(700, 0x413000, P)  # untouched private file page: CRIU keeps the file elsewhere
        b = procs[12]["runs"]
        assert ck.read(12, 0x800000, 8 * P) == bytes(P) + b[0][1] + bytes(P) + b[1][1] + bytes(P)
        assert [(v, len(x)) for v, x in ck.iter_pages(12)] == [(0x801000, P), (0x803000, 4 * P)]
        assert [e.nr_pages for e in ck.iter_entries()] == [2, 1, 3]
        assert list(ck.verify()) == []
        with pytest.raises(ImageError, match="outside any recorded VMA"):
            ck.read(12, 0x808000, 1)


def test_criu_image_set_without_pstree(tmp_path):
    d = tmp_path / "criu"
    write_criu_images(d, _criu_procs(), pstree=False)
    with open_checkpoint(d) as ck:
        assert ck.pids == (12, 700)  # from the pagemap file names
        assert ck.read(700, 0x404000, P) == _criu_procs()[700]["runs"][1][1]


def test_criu_raw_pages_file_shorter_than_pagemap(tmp_path):
    d = tmp_path / "criu"
    write_criu_images(d, _criu_procs())
    p = d / fmt.pages_name(2)
    p.write_bytes(p.read_bytes()[:-P])
    with pytest.raises(CorruptImage, match="holds 4 pages, pagemap-12.img has 5 PE_PRESENT pages") as ei:
        open_checkpoint(d)
    assert ei.value.path == str(p)


def test_real_incremental_dump(spawn_target, tmp_path):
    """A child dump written by dumper itself (write tracking + --parent):
    read() resolves its PE_PARENT pages to the stopped process's memory."""
    from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

    if not (probe_scan_categories() and probe_uffd_wp_async()):
        pytest.skip("uffd-wp tracking needs userfaultfd WP_ASYNC and PAGEMAP_SCAN (Linux 6.7)")
    t = spawn_target("dense,zero")
    root = tmp_path / "chain"
    root.mkdir()
    dump(t.pid, root / "0", track_mem=True)
    t.command("write dense 3 4 200")
    t.stop()
    dump(t.pid, root / "1", parent=root / "0", thaw="leave-stopped")
    with open_checkpoint(root / "1") as ck:
        assert ck.parent_paths == (root / "0",)
        assert ck.process().nr_pages_parent > 0
        for name in ("dense", "zero"):
            base, length = t.regions[name]
            assert ck.read(t.pid, base, length) == live(t.pid, base, length), name
        assert list(ck.verify()) == []


def test_without_mm_only_recorded_pages_read(tmp_path):
    d = write_ckpt(tmp_path / "c", [(2, 2, _fill(7, 2))])
    (d / fmt.mm_name(100)).unlink()
    with open_checkpoint(d) as ck:
        assert ck.process().mm is None and ck.process().vmas == []
        assert ck.read(100, VBASE + 2 * P + 1, P) == _fill(7, 2)[1 : P + 1]
        with pytest.raises(ImageError, match="no mm image"):
            ck.read(100, VBASE, P)
        assert list(ck.verify()) == []


def test_bad_mm_images(tmp_path):
    d = write_ckpt(tmp_path / "c", [(0, 1, _fill(7, 1))])
    mm = fill_required(_mm([(VBASE, VBASE + 64 * P)]))
    mm.vmas[0].path = "SENTINEL"
    raw = fmt.encode_image("MM", [mm]).replace(b"SENTINEL", b"SENT\xffNEL")
    (d / fmt.mm_name(100)).write_bytes(raw)
    with pytest.raises(CorruptImage, match="VMA 0: path is not valid UTF-8"):
        open_checkpoint(d)
    mm = fill_required(_mm([(VBASE, VBASE + 64 * P), (VBASE + 63 * P, VBASE + 70 * P)]))
    (d / fmt.mm_name(100)).write_bytes(fmt.encode_image("MM", [mm]))
    with pytest.raises(CorruptImage, match="VMA 1 at 0x1003f000 overlaps"):
        open_checkpoint(d)
    (d / fmt.mm_name(100)).write_bytes(fmt.encode_image("PAGEMAP", [pagemap_pb2.pagemap_head(pages_id=1)]))
    with pytest.raises(ImageError, match="expected an MM image"):
        open_checkpoint(d)


def test_private_file_pages_at_end_of_file(tmp_path):
    """Untouched pages of a private file mapping come from the file; the page
    holding end-of-file is zero past it, pages beyond it do not exist."""
    f = tmp_path / "data.bin"
    content = random.Random(9).randbytes(5 * P + 100)
    f.write_bytes(content)
    st = f.stat()
    d = tmp_path / "c"
    with CheckpointWriter(d, page_size=P) as w:
        with w.pages_writer(100, 1, threads=1) as pw:
            pw.add_present(VBASE + 2 * P, b"\x77" * P)  # page 2 was written (COW)
        mm = fill_required(mm_pb2.mm_entry())
        mm.vmas.append(vma_pb2.vma_entry(
            start=VBASE, end=VBASE + 8 * P, pgoff=P, shmid=0, prot=3, flags=0x02, fd=-1,
            status=fmt.VMA_AREA_REGULAR | fmt.VMA_FILE_PRIVATE, path=str(f),
            dev_major=os.major(st.st_dev), dev_minor=os.minor(st.st_dev), inode=st.st_ino))
        w.write_mm(100, mm)
        w.write_inventory(inventory_pb2.inventory_entry(root_pid=100, pids=[100]))
        w.commit()
    with open_checkpoint(d) as ck:
        # mapping page k holds file page k + 1 (pgoff = one page)
        expect = content[P : 2 * P] + content[2 * P : 3 * P] + b"\x77" * P + content[4 * P :] + bytes(P - 100)
        assert ck.read(100, VBASE, 5 * P) == expect
        assert ck.read(100, VBASE + 4 * P + 50, 100) == content[5 * P + 50 : 5 * P + 100] + bytes(50)
        with pytest.raises(ImageError, match=r"\[0x10005000, 0x10006000\) lies past the end of the mapped file"):
            ck.read(100, VBASE + 4 * P, 2 * P)


# --- issue 13 item 5: a mapped file written after the dump is refused, not read


def _dd_notrunc(path: Path, offset: int, data: bytes) -> None:
    """``dd conv=notrunc``: same inode, same size, new bytes."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_file_edited_in_place_after_the_dump_is_refused(stopped, tmp_path, capfd):
    t, d = stopped("file")
    base, _ = t.regions["file"]
    path = tmp_path / "mapped.bin"
    untouched = base + 3 * P
    with open_checkpoint(d) as ck:
        vma = ck.process().vma_at(base)
        st = os.stat(path)
        assert (vma.file_size, vma.file_mtime_ns, vma.file_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        expect = ck.read(t.pid, untouched, P)
        assert expect == path.read_bytes()[3 * P: 4 * P]
    _dd_notrunc(path, 3 * P, b"\xee" * P)
    assert os.stat(path).st_size == 32 * P  # same size, same inode
    with open_checkpoint(d) as ck:
        written = base + P
        assert ck.read(t.pid, written, P) == live(t.pid, written, P)  # dumped pages need no file
        with pytest.raises(ImageError, match=r"modified since the dump \(mtime changed\)") as ei:
            ck.read(t.pid, untouched, P)
        assert ei.value.path == str(path)
        problems = [str(p) for p in ck.verify()]
        assert len(problems) == 1 and "mapped.bin: modified since the dump" in problems[0]
    from dumper.cli import main

    assert main(["cat", str(d), "--addr", hex(untouched), "--size", "16"]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "mapped.bin: modified since the dump" in err
    assert main(["verify", str(d)]) == 1
    assert "mapped.bin: modified since the dump" in capfd.readouterr().out


def test_file_truncated_and_re_extended_is_refused(stopped, tmp_path):
    t, d = stopped("file")
    base, _ = t.regions["file"]
    path = tmp_path / "mapped.bin"
    with open(path, "r+b") as f:
        f.truncate(2 * P)
        f.truncate(32 * P)  # same size again, zeros where data was
    with open_checkpoint(d) as ck, pytest.raises(ImageError, match="changed since the dump|modified since"):
        ck.read(t.pid, base + 3 * P, P)


# --- issue 13 item 9: the past-EOF message names the file's real size


def test_past_eof_message_gives_the_file_size(tmp_path):
    f = tmp_path / "small.bin"
    f.write_bytes(b"x" * (2 * P))
    st = os.stat(f)
    d = tmp_path / "c"
    write_ckpt(d, [(0, 1, _fill(1, 1))])
    # an 8-page private mapping of the 2-page file, right after the page
    mm = _read_mm(d)
    v = mm.vmas.add()
    v.CopyFrom(_vma(VBASE + 64 * P, VBASE + 72 * P))
    v.status = fmt.VMA_AREA_REGULAR | fmt.VMA_FILE_PRIVATE
    v.path, v.inode, v.dev_major, v.dev_minor = str(f), st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)
    _write_mm(d, mm)
    with open_checkpoint(d) as ck:
        assert ck.read(100, VBASE + 65 * P, P) == b"x" * P
        with pytest.raises(ImageError, match=rf"lies past the end of the mapped file \({2 * P} bytes\)"):
            ck.read(100, VBASE + 71 * P, P)


# --- issue 13 item 6: guard regions


@pytest.mark.kernel(needs=("guard", "guard-bit"))
def test_guard_regions_recorded_and_refused(spawn_target, tmp_path, capfd):
    t = spawn_target("file,guard")
    fbase, _ = t.regions["file"]
    gbase, _ = t.regions["guard"]
    t.command("guard file 6")  # a page read, never written: the file's
    d = tmp_path / "ck"
    dump(t.pid, d, thaw="leave-stopped")
    with open_checkpoint(d) as ck:
        guards = [(g.start, g.end) for g in ck.process().guards]
        assert (fbase + 6 * P, fbase + 7 * P) in guards
        assert (gbase + 4 * P, gbase + 7 * P) in guards and (gbase + 12 * P, gbase + 13 * P) in guards
        for addr in (fbase + 6 * P, gbase + 5 * P, gbase + 12 * P + 100):
            with pytest.raises(ImageError, match="is a guard region"):
                ck.read(t.pid, addr, 1)
            with pytest.raises(OSError):  # the live process faults there too
                live_strict(t.pid, addr)
        assert ck.read(t.pid, fbase + 5 * P, P) == live(t.pid, fbase + 5 * P, P)
        assert ck.read(t.pid, gbase + 7 * P, P) == live(t.pid, gbase + 7 * P, P)
        assert list(ck.verify()) == []
    from dumper.cli import main

    assert main(["mems", str(d)]) == 0
    out = capfd.readouterr().out
    assert f"\t{fbase + 6 * P:08x}-{fbase + 7 * P:08x}" in out and "[guard]" in out
    assert main(["show", str(d), "--json"]) == 0
    import json

    shown = json.loads(capfd.readouterr().out)
    kinds = {(v["start"], v["kind"]) for v in shown["processes"][0]["vmas"]}
    assert (gbase + 4 * P, "guard") in kinds
    assert main(["cat", str(d), "--addr", hex(gbase + 4 * P), "--size", "1"]) == 1
    assert "guard region" in capfd.readouterr().err
    from dumper.export.criu import export_criu

    export_criu(d, tmp_path / "out")
    with open_checkpoint(tmp_path / "out") as ck:
        assert (gbase + 4 * P, gbase + 7 * P) in [(g.start, g.end) for g in ck.process().guards]
        with pytest.raises(ImageError, match="is a guard region"):
            ck.read(t.pid, gbase + 4 * P, 1)


def live_strict(pid: int, addr: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, 1, addr) or b""
    finally:
        os.close(fd)


# --- issue 13 item 10 / issue 15 item 8: broken chains, replaced parents


def test_broken_chain_one_rule(chain, capfd):
    from dumper.cli import main

    top = chain / "2"
    own = VBASE + 5 * P  # the child's own page
    needs_parent = VBASE
    for damage in ("pages", "dir", "inventory"):
        import shutil

        shutil.rmtree(chain / "1", ignore_errors=True)
        write_ckpt(chain / "1", [(0, 2, "parent"), (2, 2, _fill(0x22, 2)), (4, 6, "parent")], parent="../0")
        if damage == "pages":
            (chain / "1" / fmt.zpages_name(1)).unlink()
        elif damage == "dir":
            shutil.rmtree(chain / "1")
        else:
            (chain / "1" / fmt.INVENTORY_NAME).write_bytes(b"garbage!")
        with open_checkpoint(top) as ck:
            assert ck.read(100, own, P) == _fill(0x33, 1)
            with pytest.raises(ImageError, match="in the parent checkpoint, which cannot be used") as ei:
                ck.read(100, needs_parent, P)
            assert str(chain / "1") in str(ei.value)
            status = ck.chain_status()
            assert status[-1]["ok"] is False and str(chain / "1") in status[-1]["error"]
            problems = [str(e) for e in ck.verify()]  # once, not once per check that meets it
            assert len(problems) == len(set(problems)) >= 1 and str(chain / "1") in problems[0], problems
        assert main(["cat", str(top), "--addr", hex(own), "--size", "4"]) == 0
        assert capfd.readouterr().out == "3333"
        assert main(["verify", str(top), "--no-parents"]) == 0, damage
        capfd.readouterr()
        assert main(["verify", str(top)]) == 1
        assert str(chain / "1") in capfd.readouterr().out
        assert main(["show", str(top)]) == 0
        out = capfd.readouterr().out
        assert "BROKEN" in out and str(chain / "1") in out
        assert main(["show", str(top), "--json"]) == 0
        import json

        s = json.loads(capfd.readouterr().out)
        assert s["chain"][-1]["ok"] is False and s["parent_chain_error"]


def _set_ids(d: Path, ck_id: str, parent_id: str | None) -> None:
    inv = _read_inv(d)
    inv.checkpoint_id = ck_id
    if parent_id is not None:
        inv.parent_checkpoint_id = parent_id
    (d / fmt.INVENTORY_NAME).write_bytes(fmt.encode_image("INVENTORY", [inv]))


def _read_inv(d: Path):
    from dumper.image.reader import load_inventory

    return load_inventory(d / fmt.INVENTORY_NAME)


def test_replaced_parent_is_refused_naming_both(chain):
    _set_ids(chain / "0", "a0", None)
    _set_ids(chain / "1", "a1", "a0")
    _set_ids(chain / "2", "a2", "a1")
    with open_checkpoint(chain / "2") as ck:
        assert ck.read(100, VBASE, P) == _fill(0x11, 1)
    _set_ids(chain / "1", "b1", "a0")  # "dump -D 1 --force" again
    with open_checkpoint(chain / "2") as ck:
        assert ck.read(100, VBASE + 5 * P, P) == _fill(0x33, 1)
        with pytest.raises(ImageError, match="is not the parent .* its checkpoint id is b1, .* records parent id a1"):
            ck.read(100, VBASE + 2 * P, P)
        assert any("is not the parent" in str(p) for p in ck.verify())


def test_force_refuses_to_replace_a_parent(chain):
    from dumper.errors import DumpError

    with pytest.raises(DumpError, match=rf"refusing to replace .*1: it is the parent of .*2"):
        CheckpointWriter(chain / "1", force=True)
    w = CheckpointWriter(chain / "2", force=True)  # nobody's parent
    w.abort()


def test_real_replaced_parent(spawn_target, tmp_path):
    """pre-dump into 1, write page 3, dump -D 2 --parent 1, dump -D 1 --force:
    refused (1 is 2's parent); re-pointing 2's parent at another checkpoint of
    the same process is caught by the checkpoint id."""
    from dumper.errors import DumpError

    t = spawn_target("dense")
    a, _ = t.regions["dense"]
    root = tmp_path / "c"
    root.mkdir()
    dump(t.pid, root / "1", pre_dump=True)
    t.command("write dense 3")
    dump(t.pid, root / "2", parent=root / "1")
    with pytest.raises(DumpError, match="it is the parent of"):
        dump(t.pid, root / "1", force=True)
    dump(t.pid, root / "other")
    os.unlink(root / "2" / "parent")
    os.symlink("../other", root / "2" / "parent")
    with open_checkpoint(root / "2") as ck:
        parent_pages = [e for e in ck.process().entries if e.in_parent]
        assert parent_pages
        with pytest.raises(ImageError, match="is not the parent"):
            ck.read(t.pid, parent_pages[0].vaddr, P)
        assert any("is not the parent" in str(p) for p in ck.verify())


# --- compact VMAs and pstree (dumper.image.tables)


def _vmas_for_table():
    from dumper.image.pb import vma_pb2

    out = []
    for i in range(10000):  # more than one parse batch
        v = vma_pb2.vma_entry(start=0x10000 + i * 0x2000, end=0x11000 + i * 0x2000, pgoff=i * 4096, shmid=i, prot=3,
                              flags=2, status=fmt.VMA_AREA_REGULAR | fmt.VMA_FILE_PRIVATE, fd=-1, path=f"/lib/{i}.so")
        if i % 3 == 0:
            v.dumped = bool(i % 2)
        if i % 5 == 0:
            v.nr_pages_dumped = i
        out.append(v)
    return out


def test_vma_table_is_the_vma_list():
    import numpy as np

    from dumper.image.tables import VmaTable

    vmas = _vmas_for_table()
    t = VmaTable.from_messages(vmas)
    assert len(t) == len(vmas) and list(t) == vmas and t[-1] == vmas[-1] and t[4097] == vmas[4097]
    assert t.start.tolist() == [v.start for v in vmas] and t.pgoff.tolist() == [v.pgoff for v in vmas]
    assert t.dumped.tolist() == [int(v.dumped) if v.HasField("dumped") else -1 for v in vmas]
    assert t.nr_pages_dumped.tolist() == [v.nr_pages_dumped if v.HasField("nr_pages_dumped") else -1 for v in vmas]
    assert t.at(vmas[77].start + 5) == vmas[77] and t.at(vmas[77].end) is None and t.at(0) is None
    odd = t.take(np.arange(1, len(vmas), 2))
    assert list(odd) == vmas[1::2] and VmaTable.merged(t.take(np.arange(0, len(vmas), 2)), odd) == t
    assert t.nbytes() < 200 * len(vmas)


def test_mm_entry_reads_as_the_message_and_refuses_the_rest(tmp_path):
    from dumper.image.pb import mm_pb2
    from dumper.image.tables import load_mm

    mm = mm_pb2.mm_entry(mm_start_code=1, mm_end_code=2, mm_start_data=3, mm_end_data=4, mm_start_stack=5,
                         mm_start_brk=6, mm_brk=7, mm_arg_start=8, mm_arg_end=9, mm_env_start=10, mm_env_end=11,
                         exe_file_id=12, mm_saved_auxv=[1, 2, 0, 0], exe_path="/bin/x", vmas=_vmas_for_table()[:50])
    p = tmp_path / "mm-1.img"
    # an unknown field and a group (wire types the walk leaves to protobuf) between the VMAs
    payload = mm.SerializeToString()
    payload += b"\xf8\x3f\x05" + b"\xfb\x3f\xfc\x3f"
    p.write_bytes(fmt._magic_words("MM") + fmt.U32.pack(len(payload)) + payload)
    got = load_mm(p, open(p, "rb"))
    assert got.exe_path == "/bin/x" and got.HasField("exe_path") and list(got.mm_saved_auxv) == [1, 2, 0, 0]
    assert list(got.vmas) == list(mm.vmas)
    whole = got.to_message()
    whole.DiscardUnknownFields()
    assert whole == mm
    for name in ("ListFields", "SerializeToString", "CopyFrom"):
        with pytest.raises(AttributeError, match="to_message"):
            getattr(got, name)


def test_pstree_table_packed_threads_and_repeated_pids(tmp_path):
    from dumper.image.checkpoint import read_pstree
    from dumper.image.pb import pstree_pb2

    def entry(pid, ppid, threads, packed=False):
        e = pstree_pb2.pstree_entry(pid=pid, ppid=ppid, pgid=pid, sid=1)
        raw = e.SerializeToString()
        if packed:  # threads as one packed field: protobuf's job, the bulk decoder leaves it
            body = b"".join(bytes([t]) for t in threads)
            return raw + b"\x2a" + bytes([len(body)]) + body
        e.threads.extend(threads)
        return e.SerializeToString()

    payloads = [entry(10, 0, [10, 11]), entry(20, 10, [20], packed=True), entry(10, 99, [10]), entry(30, 10, [])]
    p = tmp_path / "pstree.img"
    p.write_bytes(fmt._magic_words("PSTREE") + b"".join(fmt.U32.pack(len(x)) + x for x in payloads))
    t = read_pstree(p)
    assert len(t) == 4 and t.unique_pids() == [10, 20, 30] and t.unique_pids(among={30, 10}) == [10, 30]
    assert t.find(10) == 0 and int(t.ppid[t.find(10)]) == 0  # the first entry of a pid counts
    assert t.threads(t.find(20)) == (20,) and t.threads(0) == (10, 11) and t.threads(3) == ()
    assert t.find(40) == -1 and t.find(-1) == -1 and t.find(1 << 40) == -1
    assert [e.pid for e in t] == [10, 20, 10, 30] and t[1].threads == [20]

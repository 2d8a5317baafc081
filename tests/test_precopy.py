"""dump --pre-copy: rounds of copying while the target runs, then a short
final freeze. The result must read back exactly as the process was at the
final freeze, whatever it wrote during the rounds (issue 14 item 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dumper.cli.verify import only_kernel_written
from dumper.dump import dump
from dumper.image.checkpoint import open_checkpoint
from dumper.image import format as fmt
from dumper.image import load_inventory
from dumper.kernel.libc import PAGE_SIZE as P
from dumper.scan.features import probe_uffd_wp_async

needs_uffd = pytest.mark.skipif(not probe_uffd_wp_async(), reason="needs userfaultfd WP_ASYNC (Linux 6.7)")

# Writes a counter into pages all over a 64 MiB private mapping, as fast as
# it can, and keeps rewriting a small hot set: rounds keep finding work.
WRITER = textwrap.dedent("""
    import ctypes, mmap, sys
    n = 16384
    m = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(0, n * 4096, 4096):
        m[i:i + 8] = (i + 1).to_bytes(8, "little")
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    print(base, flush=True)
    k = 0
    while True:
        k += 1
        page = (k * 7919) % n if k % 4 else k % 64
        m[page * 4096 + 8:page * 4096 + 16] = k.to_bytes(8, "little")
""")


def _image(ck, pid) -> dict[int, bytes]:
    with open_checkpoint(ck) as c:
        out = {}
        for vaddr, data in c.iter_pages(pid):
            for i in range(0, len(data), P):
                out[vaddr + i] = bytes(data[i:i + P])
        return out, c.rseq_areas(pid)


def _live(pid: int, addrs) -> dict[int, bytes]:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return {a: os.pread(fd, P, a) for a in addrs}
    finally:
        os.close(fd)


@needs_uffd
def test_writes_during_rounds_are_never_lost(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True)
    try:
        base = int(p.stdout.readline())
        time.sleep(0.2)
        r = dump(p.pid, tmp_path / "ck", pre_copy=4, thaw="leave-stopped")
        # Stopped at the final freeze: its memory now is what the image must hold.
        assert r.thaw == "leave-stopped"
        image, rseq = _image(tmp_path / "ck", p.pid)
        live = _live(p.pid, image)
        wrong = [hex(a) for a in image if image[a] != live[a] and not only_kernel_written(image[a], live[a], a, rseq)]
        assert wrong == []
        mapping = [base + i * P for i in range(16384)]
        assert all(a in image for a in mapping)  # every page of the mapping is there
        assert any("pre-copy:" in n for n in r.notes)
        # the tracking armed for the rounds is gone again (no --track-mem)
        inv = load_inventory(tmp_path / "ck" / fmt.INVENTORY_NAME)
        assert inv.tracker == "none" and not inv.HasField("uffd_fd")
        fds = [os.readlink(f"/proc/{p.pid}/fd/{f}") for f in os.listdir(f"/proc/{p.pid}/fd")]
        assert "anon_inode:[userfaultfd]" not in fds
        with open(f"/proc/{p.pid}/smaps") as f:
            assert " uw" not in f.read()
    finally:
        p.kill()
        p.wait()


@needs_uffd
def test_pre_copy_equals_a_plain_dump(spawn_target, tmp_path):
    """Same page set and bytes as a plain dump of the same stopped process."""
    t = spawn_target("dense,zero,alt,guard,file")
    r = dump(t.pid, tmp_path / "pc", pre_copy=2, thaw="leave-stopped")
    dump(t.pid, tmp_path / "plain", thaw="leave-stopped")
    a, rseq = _image(tmp_path / "pc", t.pid)
    b, _ = _image(tmp_path / "plain", t.pid)
    assert a.keys() == b.keys()
    assert [hex(x) for x in a if a[x] != b[x] and not only_kernel_written(a[x], b[x], x, rseq)] == []
    assert r.pages_written == len(a)
    os.kill(t.pid, signal.SIGCONT)


@needs_uffd
def test_pre_copy_keeps_tracking_with_track_mem(spawn_target, tmp_path):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "0", pre_copy=2, track_mem=True)
    t.command("write dense 5")
    r = dump(t.pid, tmp_path / "1", parent=tmp_path / "0")
    assert r.pages_parent > 0  # the next dump is incremental over the pre-copied one


def test_pre_copy_refuses_parent_and_pre_dump(spawn_target, tmp_path):
    from dumper.errors import DumpError

    t = spawn_target("dense")
    with pytest.raises(DumpError, match="pre-copy"):
        dump(t.pid, tmp_path / "a", pre_copy=2, pre_dump=True)
    assert not (tmp_path / "a").exists()

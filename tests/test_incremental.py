"""Incremental dumps with write tracking, on real targets.

The oracle here is independent of dumper's reader: pages are resolved
through the ``parent`` links by reading each pagemap and pages file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dumper.cli.verify import only_kernel_written
from dumper.dump import dump
from dumper.image.checkpoint import open_checkpoint
from dumper.errors import DumpError
from dumper.image import format as fmt
from dumper.image import load_inventory, load_pagemap, open_pages
from dumper.image.reader import iter_present
from dumper.kernel.libc import PAGE_SIZE
from dumper.scan.features import probe_scan_categories, probe_soft_dirty, probe_uffd_wp_async
from live_memory import differing_pages

P = PAGE_SIZE
needs_uffd = pytest.mark.skipif(not (probe_scan_categories() and probe_uffd_wp_async()),
                                reason="uffd-wp tracking needs userfaultfd WP_ASYNC and PAGEMAP_SCAN (Linux 6.7)")
needs_soft_dirty = pytest.mark.skipif(not probe_soft_dirty(), reason="soft-dirty is compiled out of this kernel "
                                      "(CONFIG_MEM_SOFT_DIRTY); the kernel-matrix run covers it")
# The chain tests run once per write tracker.
TRACKERS = [pytest.param("uffd-wp", marks=needs_uffd), pytest.param("soft-dirty", marks=needs_soft_dirty)]


def own_pages(ckpt: Path, pid: int) -> tuple[dict[int, bytes], list[tuple[int, int]]]:
    """(vaddr -> bytes of PE_PRESENT pages, PE_PARENT runs) of one checkpoint."""
    head, entries = load_pagemap(ckpt / fmt.pagemap_name(pid))
    pages = {}
    with open_pages(ckpt, head) as pr:
        for vaddr, data in iter_present(entries, pr):
            for i in range(0, len(data), P):
                pages[vaddr + i] = bytes(data[i : i + P])
    return pages, [(e.vaddr, e.nr_pages) for e in entries if e.flags & fmt.PE_PARENT]


def chain_pages(ckpt: Path, pid: int) -> dict[int, bytes]:
    """Memory as of ``ckpt``, PE_PARENT pages resolved through the chain."""
    pages, holes = own_pages(ckpt, pid)
    if holes:
        parent = chain_pages((ckpt / "parent").resolve(), pid)
        for vaddr, n in holes:
            for a in range(vaddr, vaddr + n * P, P):
                assert a in parent, f"{a:#x} marked in parent but the parent has no such page"
                pages[a] = parent[a]
    return pages


def stop(t) -> None:
    os.kill(t.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{t.pid}/stat", "rb") as f:
            d = f.read()
        if d[d.rindex(b")") + 2 :].split()[0] == b"T":
            return
        time.sleep(0.005)


@pytest.mark.kernel(needs="guard")
def mutate_and_stop(t, unmap: str):
    """After a tracked dump: write known pages of "dense", map a new 8-page
    VMA, unmap layout ``unmap``, move "alt", zap dense pages 10-11, read a
    zero page; then stop the target. Returns (written pages, new VMA
    address, alt's old and new address)."""
    written = [3, 4, 5, 100, 255]
    t.command("write dense " + " ".join(map(str, written)))
    new = json.loads(t.command("mmap fresh 8")[0])["fresh"][0]  # a new VMA, 8 pages
    t.command(f"munmap {unmap}")
    moved_from = t.regions["alt"][0]
    moved_to = json.loads(t.command("mremap alt")[0])["alt"][0]
    t.command("dontneed dense 10")
    t.command("dontneed dense 11")
    t.command("read zero 3")
    stop(t)
    return written, new, moved_from, moved_to


@needs_uffd
def test_incremental_chain_equals_a_fresh_full_dump(spawn_target, tmp_path):
    t = spawn_target("dense,zero,alt,guard")
    full0 = tmp_path / "0"
    r0 = dump(t.pid, full0, track_mem=True)
    assert r0.tracker == "uffd-wp"
    inv = load_inventory(full0 / fmt.INVENTORY_NAME)
    assert inv.HasField("uffd_fd") and len(inv.tracked_ranges) > 0

    dense, _ = t.regions["dense"]
    written, new, moved_from, moved_to = mutate_and_stop(t, unmap="guard")

    inc = tmp_path / "1"
    r1 = dump(t.pid, inc, parent=full0, thaw="leave-stopped")
    fresh = tmp_path / "fresh"
    dump(t.pid, fresh, thaw="leave-stopped")

    via_chain = chain_pages(inc, t.pid)
    expected, _ = own_pages(fresh, t.pid)
    assert via_chain.keys() == expected.keys()
    differ = [a for a in expected if via_chain[a] != expected[a]]
    with open_checkpoint(fresh) as ck:  # the kernel rewrites rseq fields when a thread moves CPU
        rseq = ck.rseq_areas()
    assert all(only_kernel_written(via_chain[a], expected[a], a, rseq) for a in differ), [hex(a) for a in differ]

    own, holes = own_pages(inc, t.pid)
    assert os.readlink(inc / "parent") == "../0"  # relative, like CRIU's
    # The payload: the written pages, the new VMA, the moved VMA (its pages
    # are not in the parent at their new address) and whatever the Python
    # interpreter itself wrote; never the untouched bulk of "dense".
    assert all(dense + p * P in own for p in written)
    assert all(new + p * P in own for p in range(8))
    untouched = [dense + p * P for p in range(256) if p not in written and p not in (10, 11)]
    assert not any(a in own for a in untouched)
    assert all(a in via_chain for a in untouched)
    assert dense + 10 * P not in via_chain  # MADV_DONTNEED: zero now
    assert moved_to != moved_from
    assert all(moved_to + p * P in own for p in range(0, 4000, 2))  # not at this address in the parent
    # 5 written + 8 new + 2000 moved, plus what the interpreter touched itself
    assert 2013 <= r1.pages_written < 2013 + 300
    assert r1.pages_parent >= 256 - 7


@pytest.mark.kernel
@pytest.mark.parametrize("copy", ["frozen", "fork"])
@pytest.mark.parametrize("tracker", TRACKERS)
def test_ten_dump_chain_matches_the_live_process(spawn_target, tmp_path, tracker, copy):
    """With ``fork`` the first dump's tracking is armed in the freeze that
    forks, and what the process writes after is found by the next dumps."""
    t = spawn_target("dense,alt")
    prev = tmp_path / "d0"
    first = dump(t.pid, prev, track_mem=True, tracker=tracker, copy=copy)
    assert (first.tracker, first.copy) == (tracker, copy)
    for i in range(1, 11):
        t.command(f"write dense {i} {i * 20 % 256} {(i * 37) % 256}")
        t.command(f"write alt {(i * 2) % 4000} {(i * 400) % 4000}")
        cur = tmp_path / f"d{i}"
        res = dump(t.pid, cur, parent=prev, thaw="leave-stopped", tracker=tracker, copy=copy)
        pages = chain_pages(cur, t.pid)
        bad = differing_pages(cur, t.pid, pages)
        assert not bad, f"dump {i}: {len(bad)} pages differ from the live process"
        assert res.pages_parent > 0
        os.kill(t.pid, signal.SIGCONT)
        prev = cur


@pytest.mark.kernel
@pytest.mark.parametrize("tracker", TRACKERS)
def test_pre_dump_then_final_dump(tmp_path, tracker):
    code = """
import ctypes, mmap, os, sys, threading, time
buf = mmap.mmap(-1, 512 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for p in range(512): buf[p * 4096] = 1
print(ctypes.addressof(ctypes.c_char.from_buffer(buf)), flush=True)
i = 0
while True:                      # keeps writing while it is pre-dumped
    i += 1
    p = (i * 7919) % 512
    buf[p * 4096 : p * 4096 + 8] = i.to_bytes(8, "little")
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        base = int(p.stdout.readline())
        pre = tmp_path / "pre"
        r = dump(p.pid, pre, pre_dump=True, tracker=tracker)
        assert r.pre_dump and load_inventory(pre / fmt.INVENTORY_NAME).pre_dump
        assert r.tracker == tracker
        time.sleep(0.2)
        final = tmp_path / "final"
        rf = dump(p.pid, final, parent=pre, thaw="leave-stopped", tracker=tracker)
        pages = chain_pages(final, p.pid)
        assert not differing_pages(final, p.pid, pages)
        assert all(base + q * P in pages for q in range(512))
        assert rf.pages_parent > 0
    finally:
        p.kill()
        p.wait()


@needs_uffd
def test_target_unchanged_by_tracking(tmp_path):
    # A target that checksums its own memory continuously: tracked and dumped
    # ten times, it never sees its memory change behind its back.
    code = """
import mmap, os, sys, zlib
buf = mmap.mmap(-1, 256 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for p in range(256): buf[p * 4096 : p * 4096 + 64] = os.urandom(64)
expect = zlib.crc32(buf)
print("READY", flush=True)
n = 0
while True:
    n += 1
    if zlib.crc32(buf) != expect:
        print("CORRUPT", n, flush=True); sys.exit(1)
    q = n % 256
    buf[q * 4096] = (buf[q * 4096] + 1) % 256
    expect = zlib.crc32(buf)
    if n % 200 == 0:
        print("ok", n, flush=True)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        prev = tmp_path / "t0"
        dump(p.pid, prev, track_mem=True)
        for i in range(1, 10):
            cur = tmp_path / f"t{i}"
            dump(p.pid, cur, parent=prev)
            prev = cur
        line = p.stdout.readline().strip()
        assert line.startswith("ok"), line
        time.sleep(0.2)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


@needs_uffd
def test_untracked_parent_gives_a_full_dump(spawn_target, tmp_path):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "a")  # no tracking armed
    r = dump(t.pid, tmp_path / "b", parent=tmp_path / "a")
    assert r.pages_parent == 0 and r.notes and "full dump" in r.notes[0]
    assert not (tmp_path / "b" / "parent").exists()


@pytest.mark.kernel
def test_parent_of_another_process_is_refused(spawn_target, tmp_path):
    a = spawn_target("dense")
    b = spawn_target("dense")
    dump(a.pid, tmp_path / "a")
    if not (probe_uffd_wp_async() or probe_soft_dirty()):
        pytest.skip("no write tracker on this kernel")
    with pytest.raises(DumpError, match="not"):
        dump(b.pid, tmp_path / "b", parent=tmp_path / "a")
    with pytest.raises(DumpError, match="not a checkpoint"):
        dump(b.pid, tmp_path / "c", parent=tmp_path)


@pytest.mark.kernel
@needs_soft_dirty
def test_soft_dirty_chain(spawn_target, tmp_path):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "0", track_mem=True, tracker="soft-dirty")
    t.command("write dense 7")
    stop(t)
    r = dump(t.pid, tmp_path / "1", parent=tmp_path / "0", tracker="soft-dirty", thaw="leave-stopped")
    own, _ = own_pages(tmp_path / "1", t.pid)
    assert t.regions["dense"][0] + 7 * P in own and r.pages_parent > 200


@pytest.mark.kernel
@needs_soft_dirty
def test_soft_dirty_chain_equals_a_fresh_full_dump(spawn_target, tmp_path):
    # The uffd-wp test above, tracked with soft-dirty: clear_refs "4" after
    # the parent, pagemap bit 55 (or PAGE_IS_SOFT_DIRTY) for what changed.
    # New VMAs are born VM_SOFTDIRTY, so they are dumped whole.
    t = spawn_target("dense,zero,alt,file")
    full0 = tmp_path / "0"
    r0 = dump(t.pid, full0, track_mem=True, tracker="soft-dirty")
    assert r0.tracker == "soft-dirty"
    inv = load_inventory(full0 / fmt.INVENTORY_NAME)
    assert inv.tracker == "soft-dirty" and not inv.HasField("uffd_fd")

    dense, _ = t.regions["dense"]
    written, new, moved_from, moved_to = mutate_and_stop(t, unmap="file")

    inc = tmp_path / "1"
    r1 = dump(t.pid, inc, parent=full0, tracker="soft-dirty", thaw="leave-stopped")
    assert r1.tracker == "soft-dirty" and not r1.notes
    fresh = tmp_path / "fresh"
    dump(t.pid, fresh, thaw="leave-stopped")

    via_chain = chain_pages(inc, t.pid)
    expected, _ = own_pages(fresh, t.pid)
    assert via_chain.keys() == expected.keys()
    differ = [a for a in expected if via_chain[a] != expected[a]]
    with open_checkpoint(fresh) as ck:  # the kernel rewrites rseq fields when a thread moves CPU
        rseq = ck.rseq_areas()
    assert all(only_kernel_written(via_chain[a], expected[a], a, rseq) for a in differ), [hex(a) for a in differ]

    own, holes = own_pages(inc, t.pid)
    assert os.readlink(inc / "parent") == "../0"
    assert all(dense + p * P in own for p in written)
    assert all(new + p * P in own for p in range(8))
    untouched = [dense + p * P for p in range(256) if p not in written and p not in (10, 11)]
    assert not any(a in own for a in untouched)
    assert all(a in via_chain for a in untouched)
    assert dense + 10 * P not in via_chain
    assert moved_to != moved_from
    assert all(moved_to + p * P in own for p in range(0, 4000, 2))
    # The interpreter dirties more than uffd-wp would see (a grown heap VMA
    # is VM_SOFTDIRTY as a whole), but far less than a full dump.
    assert 2013 <= r1.pages_written < r0.pages_written
    assert r1.pages_parent >= 256 - 7


def _vmpte_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmPTE:")[1].split()[0])


@needs_uffd
def test_arming_neither_populates_page_tables_nor_leaves_markers(spawn_target, tmp_path):
    # Regressions: WP_MATCHING over holes would allocate page tables for the
    # whole 64 GiB reservation; the mask-less fast path would put a marker
    # (read back as a SWAPPED page) into every empty PTE.
    from dumper.scan import scan

    t = spawn_target("dense,sparse")
    t.stop()
    before = dump(t.pid, tmp_path / "a", thaw="leave-stopped").pages_written
    pte = _vmpte_kib(t.pid)
    dump(t.pid, tmp_path / "b", track_mem=True, thaw="leave-stopped")
    assert _vmpte_kib(t.pid) <= pte + 16
    assert scan(t.pid, anyof="SWAPPED").nr_pages == 0
    assert dump(t.pid, tmp_path / "c", thaw="leave-stopped").pages_written == before


@needs_uffd
def test_uffd_wp_markers_are_never_dumped(spawn_target, tmp_path):
    # The "uffd" layout registered its own WP_ASYNC userfaultfd and
    # write-protected 32 pages: the odd ones were never populated, so they
    # are markers (SWAPPED, not WRITTEN, no data), but for 5, 15 and 25,
    # written after the protection.
    from dumper.scan import scan

    t = spawn_target("uffd")
    a, n = t.regions["uffd"]
    markers = [p for p in range(1, 32, 2) if p % 5]
    assert scan(t.pid, a, a + n, anyof="SWAPPED").nr_pages == len(markers)
    dump(t.pid, tmp_path / "full", thaw="leave-stopped")
    own, _ = own_pages(tmp_path / "full", t.pid)
    assert [p for p in range(32) if a + p * P in own] == [p for p in range(32) if p not in markers]


@needs_uffd
def test_flatten_a_chain(spawn_target, tmp_path):
    from dumper.dump.flatten import flatten

    t = spawn_target("dense,alt")
    dump(t.pid, tmp_path / "0", track_mem=True)
    t.command("write dense 1 2 3")
    dump(t.pid, tmp_path / "1", parent=tmp_path / "0")
    t.command("write alt 4 6")
    stop(t)
    dump(t.pid, tmp_path / "2", parent=tmp_path / "1", thaw="leave-stopped")
    r = flatten(tmp_path / "2", tmp_path / "flat")
    assert r.chain_length == 3
    flat, holes = own_pages(tmp_path / "flat", t.pid)
    assert holes == [] and not (tmp_path / "flat" / "parent").exists()
    assert flat == chain_pages(tmp_path / "2", t.pid)
    # the flattened checkpoint carries the tracking record: it can be a parent
    os.kill(t.pid, signal.SIGCONT)
    t.command("write dense 9")
    r3 = dump(t.pid, tmp_path / "3", parent=tmp_path / "flat")
    assert r3.pages_parent > 0
    # pre-dumps are not complete checkpoints
    dump(t.pid, tmp_path / "pre", pre_dump=True)
    with pytest.raises(DumpError, match="pre-dump"):
        flatten(tmp_path / "pre", tmp_path / "nope")


@needs_uffd
def test_cli_pre_dump_dump_parent_untrack(spawn_target, tmp_path):
    t = spawn_target("dense")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dumper", *args], capture_output=True, text=True)

    r = cli("pre-dump", str(t.pid), "-D", str(tmp_path / "pre"))
    assert r.returncode == 0, r.stderr
    assert "PRE-DUMP" in r.stdout and "uffd-wp armed" in r.stdout
    t.command("write dense 5")
    r = cli("dump", str(t.pid), "-D", str(tmp_path / "final"), "--parent", str(tmp_path / "pre"))
    assert r.returncode == 0, r.stderr
    assert "in parent ../pre" in r.stdout
    fd = load_inventory(tmp_path / "final" / fmt.INVENTORY_NAME).uffd_fd
    assert os.readlink(f"/proc/{t.pid}/fd/{fd}") == "anon_inode:[userfaultfd]"
    r = cli("untrack", str(t.pid), "-D", str(tmp_path / "final"))
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"/proc/{t.pid}/fd/{fd}")
    with open(f"/proc/{t.pid}/smaps") as f:
        assert " uw" not in f.read()
    assert t.command("checksum dense")  # still fine
    # a second untrack has nothing to remove: one clear line
    r = cli("untrack", str(t.pid), "-D", str(tmp_path / "final"))
    assert r.returncode == 1 and "is not a userfaultfd" in r.stderr
    # and a dump --parent now falls back to a full dump, saying why
    r = cli("dump", str(t.pid), "-D", str(tmp_path / "again"), "--parent", str(tmp_path / "final"))
    assert r.returncode == 0 and "full dump" in r.stdout


# --- regressions from a first-user trial of incremental dumps ---------------


@needs_uffd
def test_parent_must_be_the_last_reset_or_the_dump_is_full(spawn_target, tmp_path):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "x", pre_dump=True)
    t.command("write dense 1 2 3")
    dump(t.pid, tmp_path / "a", parent=tmp_path / "x")  # resets tracking
    t.command("write dense 4")
    stop(t)
    # x is no longer the last reset: pages 1-3 (written before a) would be missed
    r = dump(t.pid, tmp_path / "b", parent=tmp_path / "x", thaw="leave-stopped")
    assert r.pages_parent == 0 and any("last reset" in n for n in r.notes)
    pages = chain_pages(tmp_path / "b", t.pid)
    assert not differing_pages(tmp_path / "b", t.pid, pages)


@needs_uffd
def test_a_second_pre_dump_reuses_the_tracking(spawn_target, tmp_path):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "a", pre_dump=True)
    dump(t.pid, tmp_path / "b", pre_dump=True)  # no --parent: a full pre-dump, same uffd
    uffds = [f for f in os.listdir(f"/proc/{t.pid}/fd")
             if os.readlink(f"/proc/{t.pid}/fd/{f}") == "anon_inode:[userfaultfd]"]
    assert len(uffds) == 1
    t.command("write dense 9")
    r = dump(t.pid, tmp_path / "c", parent=tmp_path / "b")
    assert r.pages_parent > 200 and not r.notes


def test_pre_dump_cannot_kill(spawn_target, tmp_path):
    t = spawn_target("dense")
    with pytest.raises(DumpError, match="cannot --kill"):
        dump(t.pid, tmp_path / "a", pre_dump=True, thaw="kill")
    assert t.proc.poll() is None


@needs_uffd
def test_force_cannot_replace_the_chain_and_parents_stay_alongside(spawn_target, tmp_path):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "a", track_mem=True)
    dump(t.pid, tmp_path / "b", parent=tmp_path / "a")
    for dest in ("a", "b"):
        with pytest.raises(DumpError, match="ancestors"):
            dump(t.pid, tmp_path / dest, parent=tmp_path / "b", force=True)
    assert (tmp_path / "a" / "inventory.img").exists() and (tmp_path / "b" / "parent").is_symlink()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DumpError, match="same directory"):
        dump(t.pid, tmp_path / "elsewhere" / "c", parent=tmp_path / "b")


@needs_uffd
def test_untrack_checks_the_checkpoint_belongs_to_the_process(spawn_target, tmp_path):
    a = spawn_target("dense")
    b = spawn_target("uffd")  # holds its own userfaultfd
    dump(a.pid, tmp_path / "a", track_mem=True)
    r = subprocess.run([sys.executable, "-m", "dumper", "untrack", str(b.pid), "-D", str(tmp_path / "a")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not" in r.stderr and "Traceback" not in r.stderr
    fds = [os.readlink(f"/proc/{b.pid}/fd/{f}") for f in os.listdir(f"/proc/{b.pid}/fd")]
    assert "anon_inode:[userfaultfd]" in fds  # its own uffd untouched
    # and uffd-wp tracking refuses to take over memory registered elsewhere
    with pytest.raises(DumpError, match="did not arm"):
        dump(b.pid, tmp_path / "b", track_mem=True)


@needs_uffd
def test_flatten_and_export_never_overwrite_the_chain(spawn_target, tmp_path):
    from dumper.dump.flatten import flatten
    from dumper.export import ExportError, export

    t = spawn_target("dense")
    dump(t.pid, tmp_path / "a", track_mem=True)
    dump(t.pid, tmp_path / "b", parent=tmp_path / "a")
    with pytest.raises(DumpError, match="would overwrite .*a checkpoint it reads"):
        flatten(tmp_path / "b", tmp_path / "a", force=True)
    with pytest.raises(ExportError, match="would overwrite .*a checkpoint it reads"):
        export(tmp_path / "b", tmp_path / "a", force=True)
    assert chain_pages(tmp_path / "b", t.pid)  # still readable


# --- tracking left behind (issue 13 items 1-2 and 14, issue 15 items 2 and 5) -----------

from dumper.errors import DumperError  # noqa: E402
from dumper.track import state as tracking_state  # noqa: E402


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A private state directory for dumper and its subprocesses."""
    d = tmp_path / "state"
    monkeypatch.setenv("DUMPER_STATE_DIR", str(d))
    return d


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dumper", *args], capture_output=True, text=True, timeout=timeout)


def uffds(pid: int) -> list[int]:
    return [int(f) for f in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{f}") == "anon_inode:[userfaultfd]"]


def uw_vmas(pid: int) -> int:
    with open(f"/proc/{pid}/smaps") as f:
        return sum(1 for line in f if line.startswith("VmFlags:") and " uw" in line)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        d = f.read()
    return int(d[d.rindex(b")") + 2 :].split()[19])


def assert_untracked(t) -> None:
    assert uffds(t.pid) == [] and uw_vmas(t.pid) == 0
    assert tracking_state.load(t.pid, start_time(t.pid)) is None
    assert t.command("checksum dense")  # alive and answering


def test_plain_dump_writes_no_state_file(spawn_target, tmp_path, state_dir):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "a")
    assert not state_dir.exists() or os.listdir(state_dir) == []


@needs_uffd
def test_state_file_while_armed_only(spawn_target, tmp_path, state_dir):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "a", track_mem=True)
    rec = tracking_state.load(t.pid, start_time(t.pid))
    assert rec is not None and rec.armed and rec.uffd_fd in uffds(t.pid)
    assert rec.uffd_ino == os.stat(f"/proc/{t.pid}/fd/{rec.uffd_fd}").st_ino
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    assert [os.stat(state_dir / n).st_mode & 0o777 for n in os.listdir(state_dir)] == [0o600]
    r = cli("untrack", str(t.pid))  # no -D, no --fd: the record says which
    assert r.returncode == 0, r.stderr
    assert f"descriptor {rec.uffd_fd} closed" in r.stdout
    assert_untracked(t)
    assert os.listdir(state_dir) == []


@needs_uffd
def test_a_record_under_an_older_dumpers_name_is_still_ours(spawn_target, tmp_path, state_dir):
    """Records written before pid namespaces were in the name
    (track-PID-START.json): an incremental dump builds on it and renames it,
    untrack finds it (a fresh-user trial: both refused the userfaultfd as
    "not armed by dumper" after an upgrade)."""
    t = spawn_target("dense")
    st = start_time(t.pid)
    ns = os.stat("/proc/self/ns/pid").st_ino
    dump(t.pid, tmp_path / "a", track_mem=True)
    os.rename(state_dir / f"track-{ns}-{t.pid}-{st}.json", state_dir / f"track-{t.pid}-{st}.json")
    r = dump(t.pid, tmp_path / "b", parent=tmp_path / "a", track_mem=True)
    assert r.pages_parent > 0  # built on the record: an incremental dump, not a refusal or a full one
    assert os.listdir(state_dir) == [f"track-{ns}-{t.pid}-{st}.json"]
    os.rename(state_dir / f"track-{ns}-{t.pid}-{st}.json", state_dir / f"track-{t.pid}-{st}.json")
    r = cli("untrack", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert_untracked(t)
    assert os.listdir(state_dir) == []


def test_stale_state_files_are_cleaned(spawn_target, tmp_path, state_dir):
    t = spawn_target("dense")
    state_dir.mkdir(mode=0o700)
    live = tracking_state.TrackingState("id", "uffd-wp", "/x", 3, 1)
    tracking_state.save(t.pid, start_time(t.pid), live)
    tracking_state.save(t.pid, start_time(t.pid) + 1, live)  # the pid was reused since
    tracking_state.save(2**22 + 4321, 5, live)  # the process is gone
    ns = os.stat("/proc/self/ns/pid").st_ino
    (state_dir / f".track-{ns}-1-1.json.999999999.abc.tmp").write_text("{}")  # a dead writer's temp file
    (state_dir / f"track-{2**22 + 4321}-5.json").write_text("{}")  # an older dumper's name, process gone
    # Another pid namespace's dumper shares the directory: its numbers mean
    # other processes here (one of them a live pid of ours), so its files stay.
    theirs = [f"track-{ns + 1}-{t.pid}-{start_time(t.pid) + 7}.json", f".track-{ns + 1}-1-1.json.999999999.abc.tmp"]
    for name in theirs:
        (state_dir / name).write_text("{}")
    dump(t.pid, tmp_path / "a")  # any dump cleans up
    assert sorted(os.listdir(state_dir)) == sorted([f"track-{ns}-{t.pid}-{start_time(t.pid)}.json", *theirs])
    assert [pid for pid, _, _ in tracking_state.records()] == [t.pid]


@needs_uffd
@pytest.mark.parametrize("kind", ["other-owner", "group-writable", "symlink", "file"])
def test_unsafe_or_unusable_state_dir_is_one_line_and_arms_nothing(spawn_target, tmp_path, monkeypatch, kind):
    t = spawn_target("dense")
    d = tmp_path / "state"
    if kind == "other-owner":
        d.mkdir(mode=0o700)
        os.chown(d, 65534, 65534)
        why = "belongs to uid 65534"
    elif kind == "group-writable":
        d.mkdir()
        os.chmod(d, 0o770)
        why = "mode is 0770"
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        d.symlink_to(tmp_path / "elsewhere")
        why = "symbolic link"
    else:
        d.write_text("")
        why = "not a directory"
    monkeypatch.setenv("DUMPER_STATE_DIR", str(d))
    for args in (["pre-dump", str(t.pid), "-D", str(tmp_path / "p")],
                 ["dump", str(t.pid), "-D", str(tmp_path / "q"), "--track-mem"]):
        r = cli(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "tracking state directory" in lines[0] and why in lines[0], r.stderr
        assert uffds(t.pid) == [] and uw_vmas(t.pid) == 0
        assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()
    if kind == "symlink":
        assert os.listdir(tmp_path / "elsewhere") == []


def test_state_file_write_follows_no_symlink(spawn_target, tmp_path, state_dir):
    t = spawn_target("dense")
    state_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    name = f"track-{os.stat('/proc/self/ns/pid').st_ino}-{t.pid}-{start_time(t.pid)}.json"
    (state_dir / name).symlink_to(victim)
    tracking_state.save(t.pid, start_time(t.pid), tracking_state.TrackingState("id", "uffd-wp", "/x"))
    assert victim.read_text() == "precious"
    assert not (state_dir / name).is_symlink()
    assert sorted(os.listdir(state_dir)) == [name]  # no temporary file left


def test_default_state_dir_for_a_user_is_created_0700(tmp_path, monkeypatch):
    monkeypatch.delenv("DUMPER_STATE_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(os, "getuid", lambda: 4242)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    assert tracking_state.state_dir() == str(tmp_path / "run" / "dumper")
    with pytest.raises(tracking_state.StateDirError, match="belongs to uid 0, not 4242"):
        tracking_state.save(1, 1, tracking_state.TrackingState("id", "uffd-wp", "/x"))
    assert os.stat(tmp_path / "run" / "dumper").st_mode & 0o777 == 0o700


@needs_uffd
@pytest.mark.parametrize("command", ["pre-dump", "dump"])
def test_tracking_dump_that_runs_out_of_space_removes_what_it_armed(spawn_target, tmp_path, state_dir, command):
    """ENOSPC on a small tmpfs: pre-dump fails after the thaw (it copies then),
    dump --track-mem before it; both leave no tracking behind."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.strip()}")
    try:
        t = spawn_target("dense")
        args = [command, str(t.pid), "-D", str(mnt / "ck"), "--no-compress"]
        r = cli(*(args + (["--track-mem"] if command == "dump" else [])))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "No space left" in r.stderr or "ENOSPC" in r.stderr, r.stderr
        assert_untracked(t)
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@needs_uffd
def test_untrack_recognises_a_userfaultfd_without_record(spawn_target, tmp_path, state_dir):
    """What an older dumper (or a lost state file) leaves: untrack names it
    and --fd removes it; a target's own userfaultfd is never taken."""
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "a", pre_dump=True)
    fd = uffds(t.pid)[0]
    for name in os.listdir(state_dir):
        os.unlink(state_dir / name)
    r = cli("untrack", str(t.pid))
    assert r.returncode == 1 and f"`dumper untrack {t.pid} --fd {fd}` removes it" in r.stderr
    assert uffds(t.pid) == [fd]
    with pytest.raises(DumpError, match=f"did not arm by any record.*untrack {t.pid} --fd {fd}"):
        dump(t.pid, tmp_path / "b", track_mem=True)
    r = cli("untrack", str(t.pid), "--fd", str(fd))
    assert r.returncode == 0, r.stderr
    assert_untracked(t)
    # A target's own userfaultfd (this one is set up exactly as dumper's are)
    # is never removed without a record or the user naming it.
    own = spawn_target("uffd")
    r = cli("untrack", str(own.pid))
    assert r.returncode == 1 and "no record says dumper armed tracking" in r.stderr
    assert len(uffds(own.pid)) == 1


@needs_uffd
def test_dump_parent_after_untrack_says_why(spawn_target, tmp_path, state_dir):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "pre", pre_dump=True)
    assert cli("untrack", str(t.pid)).returncode == 0
    r = dump(t.pid, tmp_path / "full", parent=tmp_path / "pre")
    assert r.parent is None and r.pages_parent == 0
    assert r.notes == [f"pid {t.pid} has no write tracking armed by dumper any more (removed by "
                       "`dumper untrack`, or never armed): full dump"]


@pytest.mark.parametrize("args", [["pre-dump", "--tracker", "none"], ["dump", "--track-mem", "--tracker", "none"]])
def test_tracking_commands_refuse_tracker_none(spawn_target, tmp_path, state_dir, args):
    t = spawn_target("dense")
    r = cli(args[0], str(t.pid), "-D", str(tmp_path / "ck"), *args[1:])
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs write tracking, and --tracker none arms none" in lines[0]
    assert not (tmp_path / "ck").exists() and uffds(t.pid) == []


@needs_uffd
def test_tracking_half_armed_by_a_killed_warden_is_named_and_removable(spawn_target, tmp_path, state_dir):
    """The one case the warden cannot undo: the warden itself killed between
    creating the userfaultfd and finishing. The record written first names it."""
    from dumper.proc.warden import Warden
    from dumper.track import uffd

    t = spawn_target("dense")
    st = start_time(t.pid)
    from dumper.proc.process import Process

    ranges = [(v.start, v.end) for v in Process(t.pid).vmas() if v.path == "" and "w" in v.perms][:2]
    with Warden() as w:
        w.freeze(t.pid, tree=False)
        w.call(uffd.arm_call, t.pid, ranges, start_time=st, checkpoint=str(tmp_path / "x"))
        rec = tracking_state.load(t.pid, st)
        rec.armed = False  # as if the warden died before it could say "armed"
        tracking_state.save(t.pid, st, rec)
        w.keep()  # keep it (what a killed warden would leave)
    assert uffds(t.pid) == [rec.uffd_fd]
    with pytest.raises(DumpError, match=f"cut off while it armed .*descriptor {rec.uffd_fd}.*dumper untrack {t.pid}"):
        dump(t.pid, tmp_path / "b", track_mem=True)
    r = cli("untrack", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert_untracked(t)

"""dumper cat / verify / diff on real checkpoints."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dumper.cli import main
from dumper.cli.cat import hexdump_lines
from dumper.cli.diff import diff_checkpoints
from dumper.dump import dump
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint
from dumper.image.reader import read_image, read_zpages_layout
from dumper.kernel.libc import PAGE_SIZE

P = PAGE_SIZE
ROOT = Path(__file__).resolve().parents[1]


def run_cli(capfdbinary, *argv) -> tuple[int, bytes, str]:
    rc = main([str(a) for a in argv])
    out, err = capfdbinary.readouterr()
    return rc, out, err.decode()


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def settles_stopped(pid: int, timeout: float = 5.0) -> bool:
    """A job-stopped tracee re-enters the stop on detach asynchronously
    (state R for a moment, no user code): wait for T."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state(pid) == "T":
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def dumped(spawn_target, tmp_path):
    """A stopped layouts target and its checkpoint."""

    def make(layouts="dense,zero,file", **kw):
        t = spawn_target(layouts)
        d = tmp_path / f"ck-{len(list(tmp_path.glob('ck-*')))}"
        dump(t.pid, d, thaw="leave-stopped", **kw)
        return t, d

    return make


# --- cat


def test_cat_equals_read(dumped, capfdbinary, tmp_path):
    t, d = dumped()
    base, length = t.regions["file"]
    addr, size = base + 123, 5 * P + 7
    with open_checkpoint(d) as ck:
        expect = ck.read(t.pid, addr, size)
    rc, out, err = run_cli(capfdbinary, "cat", d, "--addr", hex(addr), "--size", size)
    assert (rc, err) == (0, "") and out == expect
    rc, out, _ = run_cli(capfdbinary, "cat", d, "--addr", addr, "--size", size, "--pid", t.pid, "--hexdump")
    assert rc == 0 and out.decode().splitlines() == hexdump_lines(expect, addr)
    assert out.decode().splitlines()[0].startswith(f"{addr:08x}: ")
    dest = tmp_path / "mem.bin"
    rc, out, _ = run_cli(capfdbinary, "cat", d, "--addr", hex(addr), "--size", size, "-o", dest)
    assert rc == 0 and out == b"" and dest.read_bytes() == expect
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    # the CLI as a program, streaming a range larger than one chunk is covered by read()
    r = subprocess.run([sys.executable, "-m", "dumper", "cat", str(d), "--addr", hex(addr), "--size", str(size)],
                       capture_output=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout == expect


def test_cat_streams_large_ranges_in_chunks(dumped, capfdbinary, monkeypatch):
    import dumper.cli.cat as cat

    t, d = dumped("dense")
    base, length = t.regions["dense"]
    monkeypatch.setattr(cat, "CHUNK", 3 * P + 5)
    with open_checkpoint(d) as ck:
        expect = ck.read(None, base + 7, length - 20)
    rc, out, _ = run_cli(capfdbinary, "cat", d, "--addr", base + 7, "--size", length - 20)
    assert rc == 0 and out == expect
    rc, out, _ = run_cli(capfdbinary, "cat", d, "--addr", base + 7, "--size", 100, "--hexdump")
    assert out.decode().splitlines() == hexdump_lines(expect[:100], base + 7)


def test_cat_errors(dumped, capfdbinary, tmp_path):
    t, d = dumped("dense")
    rc, out, err = run_cli(capfdbinary, "cat", d, "--addr", "0x1000", "--size", 10)
    assert rc == 1 and out == b""
    assert err.startswith("dumper: error: ") and "0x1000 is outside any recorded VMA" in err and err.count("\n") == 1
    rc, _, err = run_cli(capfdbinary, "cat", d, "--addr", "0x1000", "--size", 10, "--pid", 1, "-o", tmp_path / "x")
    assert rc == 1 and "no process 1" in err and not (tmp_path / "x").exists()
    rc, _, err = run_cli(capfdbinary, "cat", tmp_path / "nothing", "--addr", "0", "--size", 1)
    assert rc == 1 and "not a checkpoint directory" in err
    rc, _, err = run_cli(capfdbinary, "cat", d, "--addr", "0x1000", "--size", 2 * P, "-o", tmp_path / "y")
    assert rc == 1 and "outside any recorded VMA" in err and not (tmp_path / "y").exists()
    rc, _, err = run_cli(capfdbinary, "cat", d, "--addr", hex((1 << 64) - 10), "--size", 20)
    assert rc == 1 and "past the end of the address space" in err


def test_hexdump_format():
    lines = hexdump_lines(b"hello world, this is a test of xxd!", 0x10)
    assert lines == [
        "00000010: 6865 6c6c 6f20 776f 726c 642c 2074 6869  hello world, thi",
        "00000020: 7320 6973 2061 2074 6573 7420 6f66 2078  s is a test of x",
        "00000030: 7864 21                                  xd!",
    ]


# --- verify


def test_verify_good(dumped, capfdbinary):
    t, d = dumped()
    rc, out, err = run_cli(capfdbinary, "verify", d)
    assert rc == 0 and out.decode().startswith(f"OK: {d}: 1 process, "), (out, err)
    with open_checkpoint(d) as ck:
        assert list(ck.verify(threads=1)) == []


def test_verify_flipped_frame_byte(dumped, capfdbinary):
    t, d = dumped()
    zp = d / fmt.zpages_name(1)
    with open(zp, "rb") as f:
        lay = read_zpages_layout(f, zp)
    frame = lay.nr_frames // 2
    # A byte of the frame's XXH64 checksum (its last 4 bytes): a flip there
    # is always caught. (A flip elsewhere can, rarely, leave the decoded
    # bytes unchanged: then nothing of the memory is wrong.)
    at = int(lay.offsets[frame]) + int(lay.sizes[frame]) - 2
    data = bytearray(zp.read_bytes())
    data[at] ^= 0x40
    zp.write_bytes(bytes(data))
    rc, out, err = run_cli(capfdbinary, "verify", d)
    lines = out.decode().splitlines()
    assert rc == 1 and "FAILED" in err
    assert len(lines) == 1 and lines[0].startswith(f"{zp} at offset {int(lay.offsets[frame])}: frame {frame}:"), lines
    assert "checksum" in lines[0]


def test_verify_truncated_pages_file(dumped, capfdbinary):
    t, d = dumped()
    zp = d / fmt.zpages_name(1)
    os.truncate(zp, zp.stat().st_size // 2)
    rc, out, _ = run_cli(capfdbinary, "verify", d)
    assert rc == 1 and str(zp) in out.decode() and "truncated" in out.decode()


def test_verify_truncated_raw_pages_file(dumped, capfdbinary):
    t, d = dumped(compress=False)
    rp = d / fmt.pages_name(1)
    os.truncate(rp, rp.stat().st_size - 2 * P)
    rc, out, _ = run_cli(capfdbinary, "verify", d)
    assert rc == 1 and str(rp) in out.decode() and "PE_PRESENT pages" in out.decode()


def _flip_raw_bits(d: Path, n: int = 3) -> list[tuple[int, int]]:
    """Flip one bit in ``n`` pages of the raw pages file spread over it;
    ``[(file offset, vaddr of the page)]``."""
    rp = d / fmt.pages_name(1)
    with open_checkpoint(d) as ck:
        ent = ck.process().entries
        present = [e for e in ent if e.flags & fmt.PE_PRESENT]
    data = bytearray(rp.read_bytes())
    total = len(data) // P
    out = []
    for k in range(n):
        page = (k * 2 + 1) * total // (2 * n)
        at = page * P + 1234
        data[at] ^= 0x10
        e = next(e for e in present if e.pages_off <= page < e.pages_off + e.nr_pages)
        out.append((at, e.vaddr + (page - e.pages_off) * P))
    rp.write_bytes(bytes(data))
    return out


def test_verify_raw_bit_flips(dumped, capfdbinary, tmp_path):
    """Issue 15 item 10: a raw set dumper wrote passed verify after bit flips
    ("6097 pages verified"). Each entry's crc32 is in its pagemap entry."""
    t, d = dumped(compress=False)
    rc, out, err = run_cli(capfdbinary, "verify", d)
    assert rc == 0 and "without checksums" not in out.decode() + err, (out, err)
    flips = _flip_raw_bits(d)
    rc, out, err = run_cli(capfdbinary, "verify", "--json", d)
    doc = json.loads(out)
    assert rc == 1 and not doc["ok"] and doc["pages_unchecked"] == 0
    bad = [p for p in doc["problems"] if "do not match their checksum" in p]
    assert 1 <= len(bad) <= 3 and all(str(d / fmt.pages_name(1)) in p for p in bad), doc["problems"]
    # cat of a whole entry holding a flipped page refuses; export refuses and leaves nothing
    with open_checkpoint(d) as ck:
        for at, vaddr in flips:
            e = ck.process().entry_at(vaddr)
            rc, out, err = run_cli(capfdbinary, "cat", d, "--addr", hex(e.vaddr), "--size", e.nr_pages * P)
            assert (rc, out) == (1, b"") and "do not match their checksum" in err and err.count("\n") == 1, (rc, len(out), err, e)
    # an entry merged across two VMAs (cat cuts the range at VMA boundaries) is checked whole too
    with open_checkpoint(d) as ck:
        proc = ck.process()
        spans = [e for e in proc.entries if e.present and proc.vma_at(e.vaddr) is not None
                 and proc.vma_at(e.vaddr).end < e.vaddr + e.nr_pages * P]
    assert spans, "the dump merges entries of adjacent VMAs"
    rp = d / fmt.pages_name(1)
    data = bytearray(rp.read_bytes())
    e = spans[0]
    data[(e.pages_off + e.nr_pages - 1) * P + 7] ^= 1  # its last page: in the second VMA
    rp.write_bytes(bytes(data))
    rc, out, err = run_cli(capfdbinary, "cat", d, "--addr", hex(e.vaddr), "--size", e.nr_pages * P)
    assert (rc, out) == (1, b"") and "do not match their checksum" in err, (rc, len(out), err, e)
    rc, out, err = run_cli(capfdbinary, "export", d, tmp_path / "exp")
    assert rc == 1 and "do not match their checksum" in err and not (tmp_path / "exp").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]
    rc, out, err = run_cli(capfdbinary, "flatten", d, tmp_path / "flat")
    assert rc == 1 and "do not match their checksum" in err and not (tmp_path / "flat").exists()


def test_verify_criu_raw_set_says_contents_unchecked(tmp_path, capfdbinary):
    """A raw set without checksums (CRIU's): verify says plainly what it
    could not check, in the summary, a note and --json."""
    from test_cli_decode_mems_rss import build_criu_dir

    d = build_criu_dir(tmp_path / "criu")  # (it has PE_PARENT entries and no parent: --no-parents)
    rc, out, err = run_cli(capfdbinary, "verify", "--no-parents", d)
    text = out.decode()
    assert rc == 0 and "cannot be checked: a raw pages file without checksums" in text, text
    assert "contents not checked" in text
    rc, out, err = run_cli(capfdbinary, "verify", "--json", "--no-parents", d)
    doc = json.loads(out)
    with open_checkpoint(d) as ck:
        assert doc["pages_unchecked"] == sum(p.nr_pages_present for p in ck.processes.values()) > 0


def _delete_entry(d: Path, pid: int, which: int) -> None:
    path = d / fmt.pagemap_name(pid)
    _, msgs = read_image(path)
    del msgs[1 + which]
    path.write_bytes(fmt.encode_image("PAGEMAP", msgs))


@pytest.mark.parametrize("compress", [True, False])
def test_verify_deleted_entry(dumped, capfdbinary, compress):
    t, d = dumped(compress=compress)
    _delete_entry(d, t.pid, 3)
    rc, out, _ = run_cli(capfdbinary, "verify", d)
    assert rc == 1 and str(d / fmt.pagemap_name(t.pid)) in out.decode()


def test_verify_deleted_entry_criu_style(tmp_path, capfdbinary):
    """Without pages_off or head counts (CRIU images), a deleted entry still
    shows: the page stream is longer than the pagemap says."""
    from test_reader_api import _criu_procs, write_criu_images

    d = tmp_path / "criu"
    write_criu_images(d, _criu_procs())
    assert run_cli(capfdbinary, "verify", d)[0] == 0
    _delete_entry(d, 700, 0)
    rc, out, _ = run_cli(capfdbinary, "verify", d)
    assert rc == 1 and "PE_PRESENT" in out.decode()


def test_verify_deleted_last_entry_is_seen_per_vma(dumped, capfdbinary):
    """pages_off cannot catch the last entry going, nor can the stream length
    once the pages are cut off too: the per-VMA page counts do."""
    t, d = dumped(compress=False)
    path = d / fmt.pagemap_name(t.pid)
    _, msgs = read_image(path)
    last = msgs.pop()
    msgs[0].nr_present_pages -= last.nr_pages
    path.write_bytes(fmt.encode_image("PAGEMAP", msgs))
    rp = d / fmt.pages_name(1)
    os.truncate(rp, rp.stat().st_size - last.nr_pages * P)
    rc, out, _ = run_cli(capfdbinary, "verify", d)
    assert rc == 1 and "pages dumped, the pagemap has" in out.decode()


def test_verify_lists_a_bounded_number(dumped, capfdbinary):
    t, d = dumped()
    zp = d / fmt.zpages_name(1)
    with open(zp, "rb") as f:
        lay = read_zpages_layout(f, zp)
    data = bytearray(zp.read_bytes())
    for i in range(lay.nr_frames):
        data[int(lay.offsets[i]) + int(lay.sizes[i]) - 3] ^= 1  # in each frame's checksum
    zp.write_bytes(bytes(data))
    rc, out, _ = run_cli(capfdbinary, "verify", d, "--max-problems", 3)
    lines = out.decode().splitlines()
    assert rc == 1 and len(lines) == 4 and lines[-1] == f"... and {lay.nr_frames - 3} more problems"


def _ranges(text: str) -> list[tuple[int, int]]:
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\[(0x[0-9a-f]+), (0x[0-9a-f]+)\)", text)]


def test_verify_against_the_live_process(dumped, capfdbinary):
    t, d = dumped("dense,zero")
    rc, out, err = run_cli(capfdbinary, "verify", d, "--pid", t.pid)
    assert rc == 0 and "compared with live pid" in out.decode(), (out, err)
    assert settles_stopped(t.pid)  # given back stopped, as found
    base, _ = t.regions["dense"]
    t.cont()
    t.command("write dense 3 4 9")
    t.stop()
    rc, out, err = run_cli(capfdbinary, "verify", d, "--pid", t.pid, "--max-problems", 1000)
    assert rc == 1, (out, err)
    diffs = [r for line in out.decode().splitlines() if "differ" in line for r in _ranges(line)]
    dense = [r for r in diffs if base <= r[0] < base + 256 * P]
    assert dense == [(base + 3 * P, base + 5 * P), (base + 9 * P, base + 10 * P)]
    assert settles_stopped(t.pid)


# --- diff


def _write_mem(pid: int, addr: int, data: bytes) -> None:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        assert os.pwrite(fd, data, addr) == len(data)
    finally:
        os.close(fd)


def test_diff_lists_exactly_the_written_pages(dumped, capfdbinary, tmp_path):
    """The target stays stopped between the dumps; only our writes (through
    /proc/PID/mem) change its memory."""
    t, a = dumped("dense,zero")
    dense, _ = t.regions["dense"]
    zero, _ = t.regions["zero"]
    _write_mem(t.pid, dense + 5 * P + 100, b"changed")
    _write_mem(t.pid, dense + 6 * P, b"X" * 2 * P)  # pages 6 and 7
    _write_mem(t.pid, zero + 1 * P, b"new")  # was the zero page: now dumped
    b = tmp_path / "b"
    dump(t.pid, b, thaw="leave-stopped")
    rc, out, _ = run_cli(capfdbinary, "diff", a, b, "--json")
    res = json.loads(out)
    assert rc == 1 and not res["same"] and res["notes"] == []
    (p,) = res["processes"]
    assert p["differ"] == {"pages": 3, "ranges": [[dense + 5 * P, dense + 8 * P]]}
    assert p["only-in-B"] == {"pages": 1, "ranges": [[zero + P, zero + 2 * P]]}
    assert p["only-in-A"] == {"pages": 0, "ranges": []}
    rc, out, _ = run_cli(capfdbinary, "diff", a, b)
    text = out.decode()
    assert rc == 1 and f"pid {t.pid}: 3 pages differ, 0 pages only-in-A, 1 page only-in-B" in text
    assert f"differ     {dense + 5 * P:#x}-{dense + 8 * P:#x} " in text
    rc, out, _ = run_cli(capfdbinary, "diff", a, a)
    assert rc == 0 and "no differences" in out.decode()


def test_diff_after_the_process_ran(dumped, tmp_path):
    """The target writes and drops pages itself; inside its dense layout the
    diff names exactly those (elsewhere the interpreter changed things too)."""
    t, a = dumped("dense")
    base, length = t.regions["dense"]
    t.cont()
    t.command("write dense 3 200")
    t.command("dontneed dense 10")
    t.stop()
    b = tmp_path / "b"
    dump(t.pid, b, thaw="leave-stopped")
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        (d,), notes = diff_checkpoints(ca, cb)
    inside = {k: [r for r in v if base <= r[0] < base + length] for k, v in d.ranges.items()}
    assert inside == {
        "differ": [(base + 3 * P, base + 4 * P), (base + 200 * P, base + 201 * P)],
        "only-in-A": [(base + 10 * P, base + 11 * P)],
        "only-in-B": [],
        "kernel-written": [],
    }
    assert notes == []


_IDLE_C = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static void on_usr1(int s) { (void)s; }
int main(void) {
    signal(SIGUSR1, on_usr1);
    printf("READY\n");
    fflush(stdout);
    for (;;) pause();
}
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs to move the thread between them")
def test_diff_of_an_idle_process_sets_rseq_fields_apart(tmp_path, capfdbinary):
    """Issue 13 item 7: an idle process moved to another CPU between two
    dumps differs only in its rseq cpu_id fields, which the kernel rewrites:
    diff says so in a note and reports no difference."""
    exe = tmp_path / "idle"
    src = tmp_path / "idle.c"
    src.write_text(_IDLE_C)
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    p = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        cpus = sorted(os.sched_getaffinity(0))[:2]
        os.sched_setaffinity(p.pid, {cpus[0]})
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(0.1)
        dump(p.pid, tmp_path / "a")
        os.sched_setaffinity(p.pid, {cpus[1]})
        os.kill(p.pid, signal.SIGUSR1)  # wakes on the other CPU: the kernel updates rseq
        time.sleep(0.1)
        dump(p.pid, tmp_path / "b")
        with open_checkpoint(tmp_path / "a") as ca, open_checkpoint(tmp_path / "b") as cb:
            (d,), _ = diff_checkpoints(ca, cb)
            areas = ca.rseq_areas()
        assert areas, "glibc registered no rseq area (core image lacks rseq_entry)"
        page = areas[0][0] // P * P
        assert d.ranges["kernel-written"] == [(page, page + P)]
        assert not any(s <= page < e for s, e in d.ranges["differ"])
        rc, out, _ = run_cli(capfdbinary, "diff", tmp_path / "a", tmp_path / "b")
        assert "differs only in rseq fields the kernel rewrites" in out.decode()
    finally:
        p.kill()
        p.wait()


def test_diff_different_pids_and_processes(tmp_path, capfdbinary):
    from test_reader_api import _fill, write_ckpt

    a = write_ckpt(tmp_path / "a", [(0, 2, _fill(1, 2))], pid=100)
    b = write_ckpt(tmp_path / "b", [(0, 1, _fill(1, 1)), (1, 1, _fill(2, 1))], pid=200)
    rc, out, _ = run_cli(capfdbinary, "diff", a, b, "--json")
    res = json.loads(out)
    assert rc == 1 and res["notes"] == ["comparing pid 100 of A with pid 200 of B"]
    assert res["processes"][0]["differ"]["pages"] == 1
    rc, out, err = run_cli(capfdbinary, "diff", a, b, "--pid", 100)
    assert rc == 1 and "no process 100" in err


def test_subcommand_mains(dumped, capfdbinary):
    from dumper.cli import cat, diff, verify

    t, d = dumped("dense")
    assert verify.main([str(d), "-q"]) == 0
    assert diff.main([str(d), str(d)]) == 0
    base, _ = t.regions["dense"]
    assert cat.main([str(d), "--addr", str(base), "--size", "3"]) == 0
    out, _ = capfdbinary.readouterr()
    assert out.endswith(bytes([1, 1, 1]))


def test_cat_checks_the_whole_range_before_writing(spawn_target, tmp_path):
    # Regression: a range running past its VMA used to leave 16 MiB of output
    # behind before failing.
    from dumper.dump import dump

    t = spawn_target("dense")
    dump(t.pid, tmp_path / "ck", thaw="leave-stopped")
    addr, length = t.regions["dense"]
    out = tmp_path / "out.bin"
    r = subprocess.run([sys.executable, "-m", "dumper", "cat", str(tmp_path / "ck"), "--addr", hex(addr),
                        "--size", str(64 << 30), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert not out.exists()


# --- issue 13 item 7 (rseq) and item 14 (verify --pid OTHER, --json)


def test_verify_pid_other_process_is_one_line(spawn_target, tmp_path, capfdbinary):
    from dumper.dump import dump

    a = spawn_target("dense")
    b = spawn_target("dense")
    d = tmp_path / "ck"
    dump(a.pid, d)
    rc, out, err = run_cli(capfdbinary, "verify", d, "--pid", str(b.pid))
    assert rc == 1 and out == b""
    assert err.count("\n") == 1 and f"pid {b.pid} is not in" in err


def test_verify_json(spawn_target, tmp_path, capfdbinary):
    import json

    from dumper.dump import dump

    t = spawn_target("dense")
    d = tmp_path / "ck"
    dump(t.pid, d, thaw="leave-stopped")
    rc, out, _ = run_cli(capfdbinary, "verify", d, "--json", "--pid", str(t.pid))
    s = json.loads(out)
    assert rc == 0 and s["ok"] is True and s["problems"] == [] and s["compared_pid"] == t.pid and s["pages"] > 0


def test_verify_pid_tells_rseq_fields_apart(spawn_target, tmp_path, capfdbinary):
    """A page that differs only in the rseq fields the kernel rewrites is a
    note, not a problem; a byte changed elsewhere on it is a problem."""
    import json

    from dumper.dump import dump
    from dumper.image.checkpoint import open_checkpoint
    from dumper.proc.freeze import Freezer
    from dumper.cli.verify import rseq_areas

    t = spawn_target("dense")
    with Freezer(t.pid) as fz:
        areas = rseq_areas(fz.threads)
    if not areas:
        pytest.skip("the target registered no rseq area (glibc without rseq, or GLIBC_TUNABLES)")
    d = tmp_path / "ck"
    dump(t.pid, d, thaw="leave-stopped", compress=False)
    rseq = areas[0][0]
    with open_checkpoint(d) as ck:
        e = ck.process().entry_at(rseq)
        assert e is not None and e.present, "the rseq area's page is recorded"
        original = ck.read(None, rseq, 16)
    # The stopped process's memory changes, as the kernel would change it
    # (the checkpoint's raw pages carry checksums: editing them is damage).
    _write_mem(t.pid, rseq + 4, bytes([(original[4] + 1) % 256]))  # cpu_id
    rc, out, _ = run_cli(capfdbinary, "verify", d, "--pid", str(t.pid), "--json")
    s = json.loads(out)
    assert rc == 0 and s["problems"] == [] and any("rseq fields" in n for n in s["notes"])
    _write_mem(t.pid, rseq + 12, bytes([(original[12] + 1) % 256]))  # rseq_cs: the thread's own, a real difference
    rc, out, _ = run_cli(capfdbinary, "verify", d, "--pid", str(t.pid), "--json")
    s = json.loads(out)
    assert rc == 1 and len(s["problems"]) == 1 and "differ from the checkpoint" in s["problems"][0]


# --- issue 13 item 11: what flatten and export say about what they wrote


def test_flatten_and_export_stats_describe_what_they_wrote(spawn_target, tmp_path, capfdbinary):
    """flatten's checkpoint said "16413 pages written (52.0 KiB) ... raw /
    image = 2.58x" (the newest incremental's bytes with the full page
    count) and "tracking uffd-wp armed by this dump"; its stats now
    describe its own pages file, and export's counts its own set."""
    from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

    t = spawn_target("dense,alt")
    track = bool(probe_scan_categories() and probe_uffd_wp_async())
    dump(t.pid, tmp_path / "0", track_mem=track)
    t.command("write dense 1 2 3")
    dump(t.pid, tmp_path / "1", parent=tmp_path / "0" if track else None, thaw="leave-stopped")
    rc, out, err = run_cli(capfdbinary, "flatten", tmp_path / "1", tmp_path / "flat")
    assert rc == 0, err
    with open_checkpoint(tmp_path / "flat") as ck:
        pages = sum(p.nr_pages_present for p in ck.processes.values())
        file_bytes = sum(p.pages_path.stat().st_size for p in ck.processes.values())
        st = ck.stats
        assert ck.inventory.derived_by == "flatten" and not ck.inventory.parent_checkpoint_id
    m = re.search(r": (\d+) pages, ", out.decode())
    assert m and int(m.group(1)) == pages, out
    assert st.pages_written == pages and st.bytes_raw == pages * P and st.pages_skipped_parent == 0
    assert st.bytes_compressed <= file_bytes and st.frozen_time == st.freezing_time == 0
    rc, out, err = run_cli(capfdbinary, "show", tmp_path / "flat")
    text = out.decode()
    from dumper.cli.options import human_bytes

    assert f"{pages} pages written ({human_bytes(pages * P)}) by flatten" in text, text
    assert f"raw / image = {pages * P / file_bytes:.2f}x" in text
    assert "frozen" not in text and "armed by this dump" not in text and "derived    by flatten" in text
    if track:
        assert "armed by the newest dump it was made from" in text
    rc, out, err = run_cli(capfdbinary, "show", "--json", tmp_path / "flat")
    doc = json.loads(out)
    assert doc["derived_by"] == "flatten" and doc["stats"]["pages_written"] == pages
    assert doc["stats"]["bytes_raw"] == pages * P and doc["parent_checkpoint_id"] is None
    # verify agrees with the per-VMA counts flatten wrote
    assert run_cli(capfdbinary, "verify", tmp_path / "flat")[0] == 0
    # export: the counts and bytes it prints are those of the set it wrote
    rc, out, err = run_cli(capfdbinary, "export", "--json", tmp_path / "1", tmp_path / "exp")
    doc = json.loads(out)
    (s,) = doc["sets"]
    with open_checkpoint(tmp_path / "exp") as ck:
        assert s["pages_present"] == {str(p): ck.process(p).nr_pages_present for p in ck.pids}
        assert sum(s["pages_present"].values()) == pages
    on_disk = sum((tmp_path / "exp" / f).stat().st_size for f in s["files"])
    assert s["bytes"] == doc["bytes"] == on_disk


def test_read_errors_on_image_files_are_one_line(tmp_path, capfdbinary, monkeypatch):
    """A failing read (EIO from a bad disk) of a pages file or an image is
    one line naming the file, not "writing output" nor a traceback."""
    import errno
    import shutil

    from dumper.image import reader

    d = tmp_path / "ck"
    shutil.copytree(ROOT / "tests" / "data" / "tiny-zst", d)
    with open_checkpoint(d) as ck:
        e = ck.process().entries[0]
    real_pread = os.pread

    def failing_pread(fd, n, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".zst.img"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(reader.os, "pread", failing_pread)
    rc, out, err = run_cli(capfdbinary, "cat", d, "--addr", hex(e.vaddr), "--size", "16")
    assert (rc, out) == (1, b"") and err.count("\n") == 1
    assert f"{d / fmt.zpages_name(1)} at offset " in err and "Input/output error" in err, err
    monkeypatch.undo()

    class FailingFile:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    from dumper.image import mapped

    real_open = mapped.ImageDir.open
    monkeypatch.setattr(mapped.ImageDir, "open",
                        lambda self, name: FailingFile(real_open(self, name)) if name.startswith("mm-") else
                        real_open(self, name))
    rc, out, err = run_cli(capfdbinary, "mems", d)
    assert (rc, out) == (1, b"") and err.count("\n") == 1 and "mm-" in err and "Input/output error" in err, err


def test_verify_pid_later_start_time_restored_layout_or_refused(spawn_target, tmp_path, capfd):
    """verify --pid of a process that started after the dump: accepted with a
    note when its mappings are the checkpoint's (criu restore recreates them:
    it was refused as "the pid was reused"), refused when they are not."""
    from dumper.cli import main
    from dumper.image.reader import load_inventory

    t = spawn_target("dense")
    t.stop()
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="leave-stopped")
    inv = load_inventory(ck / fmt.INVENTORY_NAME)
    inv.task_start_time -= 100  # as if this process started after the dump
    (ck / fmt.INVENTORY_NAME).write_bytes(fmt.encode_image("INVENTORY", [inv]))
    assert main(["verify", str(ck), "--pid", str(t.pid)]) == 0
    out = capfd.readouterr().out
    assert f"note: pid {t.pid} started after the dump (tick {inv.task_start_time + 100}, the checkpoint's " \
           f"{inv.task_start_time}) with the checkpoint's memory layout: a restored process" in out
    t.cont()
    # Another process at this pid would have other mappings: one of the
    # checkpoint's is gone (extra anonymous maps may merge into one VMA).
    t.command("munmap dense")
    t.stop()
    assert main(["verify", str(ck), "--pid", str(t.pid)]) == 1
    out, err = capfd.readouterr()
    assert out == "" and err.startswith(f"dumper: error: pid {t.pid} is not the process {ck} was taken of")

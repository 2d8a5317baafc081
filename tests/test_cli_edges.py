"""CLI behaviour a new user hits first: one-line errors, exit codes, safe defaults.

Each test here is a regression for something a first-time user found.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dumper.errors import DumpError
from dumper.image.writer import CheckpointWriter

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "target.py"


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dumper", *args], capture_output=True, text=True, **kw)


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        d = f.read()
    return d[d.rindex(b")") + 2 :].split()[0].decode()


def test_top_level_traceback_flag_is_honoured():
    r = cli("--traceback", "scan", "4194000")
    assert r.returncode == 1 and "Traceback" in r.stderr and "no such process" in r.stderr
    r = cli("scan", "4194000")
    assert "Traceback" not in r.stderr


def test_threads_are_bounded_before_anything_is_allocated(spawn_target, tmp_path):
    t = spawn_target("dense")
    r = cli("dump", str(t.pid), "-D", str(tmp_path / "ck"), "--threads", "100000")
    assert r.returncode == 2 and "threads must be between 1 and 256" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_to_a_full_device_is_one_line():
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "dumper", "check"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "dumper: error: writing output: No space left on device"


def test_force_never_replaces_a_plain_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    with pytest.raises(DumpError, match="is a regular file: refusing to replace it"):
        CheckpointWriter(f, force=True)
    assert f.read_text() == "keep me"


def _starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def test_stale_temporary_directories_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ck.tmp-{dead.pid}-{_starttime(os.getpid())}-abcd1234"
    (stale / "ck").mkdir(parents=True)
    (stale / "ck" / "pages-1.zst.img").write_bytes(b"secret memory")
    live = tmp_path / f".ck.tmp-{os.getpid()}-{_starttime(os.getpid())}-abcd1234"  # a run still going: kept
    live.mkdir()
    w = CheckpointWriter(tmp_path / "ck")
    w.abort()
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signals_restore_the_target(tmp_path, sig):
    p = subprocess.Popen([sys.executable, str(EXAMPLE), "--dense-mib", "512", "--threads", "1"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("READY")
        child = subprocess.Popen(
            [sys.executable, "-m", "dumper", "dump", str(p.pid), "-D", str(tmp_path / "ck"),
             "--threads", "1", "--compress-level", "19"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while state(p.pid) != "t" and time.monotonic() < deadline:
            time.sleep(0.001)
        assert state(p.pid) == "t"
        child.send_signal(sig)
        _, err = child.communicate(timeout=30)
        assert child.returncode == 128 + sig, err
        assert f"stopped by signal {int(sig)}" in err and "Traceback" not in err
        time.sleep(0.05)
        assert state(p.pid) in ("S", "R")
        assert [x.name for x in tmp_path.iterdir()] == []
    finally:
        p.kill()
        p.wait()


def test_dump_summary_says_what_became_of_the_process(spawn_target, tmp_path):
    t = spawn_target("dense")
    r = cli("dump", str(t.pid), "-D", str(tmp_path / "a"), "--leave-stopped")
    assert r.returncode == 0 and "the process was left stopped" in r.stdout
    os.kill(t.pid, signal.SIGCONT)
    r = cli("dump", str(t.pid), "-D", str(tmp_path / "b"))
    assert "the process was running again" in r.stdout


def test_demo_rejects_an_empty_example():
    r = cli("demo", "--dense-mib", "0")
    assert r.returncode == 2 and "must be at least 1" in r.stderr


def test_progress_moves_while_compressing_on_a_terminal(tmp_path):
    """Issue 13 item 12: on a terminal, a long dump shows progress by bytes,
    also while it compresses after the thaw (one run of slow compression).
    The pty is left at a 0x0 size, as a new one is: tqdm alone prints nothing
    there, so dumper gives it a width."""
    import pty

    p = subprocess.Popen([sys.executable, str(EXAMPLE), "--dense-mib", "96", "--threads", "1"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("READY")
        pid, fd = pty.fork()
        if pid == 0:  # the dumper, on the pty (a new pty reports 0 columns)
            os.execv(sys.executable, [sys.executable, "-m", "dumper", "dump", str(p.pid), "-D",
                                      str(tmp_path / "ck"), "--compress-level", "19", "--threads", "1"])
        out = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
        text = out.decode(errors="replace")
        assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
        assert "writing:" in text and "MiB" in text, text[-2000:]
    finally:
        p.kill()
        p.wait()


RESERVATION = r"""
import mmap, sys
NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # <linux/mman.h>; Python 3.11's mmap lacks the name
m = mmap.mmap(-1, int(sys.argv[1]) << 40, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | NORESERVE)
for i in range(0, len(m), 1 << 30):
    m[i] = 1
print("READY", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("backend, warned", [("pagemap", True), ("ioctl", False)])
def test_a_long_freeze_is_announced_before_it_starts(tmp_path, backend, warned):
    """Issue 13/14: with the pagemap fallback a 16 TiB reservation means
    seconds frozen (a mincore byte per page in the target, then the resident
    pages' entries; 8 bytes per page, holes included, where mincore cannot
    be used): one warning line with the estimate and the cause comes before
    the freeze. The ioctl scans the same holes in O(1): no warning."""
    p = subprocess.Popen([sys.executable, "-c", RESERVATION, "16"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline() == "READY\n"
        r = cli("dump", str(p.pid), "-D", str(tmp_path / "ck"), "--backend", backend, timeout=300)
        assert r.returncode == 0, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if "will stay frozen" in ln]
        if not warned:
            assert lines == []
            return
        assert len(lines) == 1, r.stderr
        m = re.fullmatch(r"dumper: warning: the process will stay frozen for about (\d+) s: scanning (\d+\.\d) TiB "
                         r"of mappings with the pagemap fallback \(no PAGEMAP_SCAN before Linux 6\.7\)", lines[0])
        assert m, lines[0]
        assert float(m.group(2)) >= 16.0 and int(m.group(1)) >= 2
    finally:
        p.kill()
        p.wait()

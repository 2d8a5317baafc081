"""CLI behaviour a new user hits first: one-line errors, exit codes, safe defaults.

Each test here is a regression for something a first-time user found.
"""

from __future__ import annotations

import os
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

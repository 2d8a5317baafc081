"""Differential with CRIU 4.2 (issue 10): for the same stopped process,
the images `dumper dump` writes decode, field by field, to what `criu dump
--leave-running` writes — core, ids, pstree, mm, fs, files, fdinfo,
seccomp and the CRIU fields of the inventory — except the short list of
fields that differ by nature, each with its reason.

The target (tests/targets/criu_diff_state.c) has three threads (one in
pause with a custom sigaltstack and a blocked signal, one in nanosleep), a
custom SIGUSR1 handler with flags and a mask, an ignored SIGPIPE, a nice
value, an RLIMIT_NOFILE, a running ITIMER_VIRTUAL, a umask, and a blocked
pending SIGUSR2; it is SIGSTOPped before both dumps, so nothing moves
between them.
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
from google.protobuf import json_format

from dumper.errors import CriuNotFound
from dumper.image import read_image
from dumper.restore.criu import find_criu

TARGET = Path(__file__).parent / "targets" / "criu_diff_state.c"

# (image name pattern, flattened field pattern, why they differ by nature)
BY_NATURE = [
    (r"^inventory\.img$", r"^\[0\]\.(dumper_format_version|dumper_version|kernel_release|machine|page_size|"
     r"scanner|tracker|dump_start_ns|dump_end_ns|root_pid|pids\[\d+\]|pre_dump|task_start_time|compression|"
     r"checkpoint_id|shell_job)$", "dumper's own fields (numbered from 32), which CRIU ignores"),
    (r"^inventory\.img$", r"^\[0\]\.dump_criu_run_id$", "a random id per dump"),
    (r"^timens-0\.img$", r"\.tv_(sec|nsec)$", "the clocks are read at the moment of each dump"),
    (r"^mm-\d+\.img$", r"^\[0\]\.vmas\[\d+\]\.(path|dev_major|dev_minor|inode|vmflags|dumped|"
     r"contents_skipped_reason|nr_pages_dumped|nr_pages_parent|file_size|file_mtime_ns|file_ctime_ns)$",
     "dumper's own VMA fields (numbered from 32)"),
    (r"^mm-\d+\.img$", r"^\[0\]\.coredump_filter$", "dumper's own field 33: the filter ELF cores follow"),
    (r"^core-\d+\.img$", r"^\[0\]\.thread_info\.captured_gpregs\.",
     "dumper's own field 32: the registers as captured, which ELF cores show"),
]
COMPARED = re.compile(r"^(core-\d+|ids-\d+|mm-\d+|fs-\d+|fdinfo-\d+|pstree|files|seccomp|inventory|timens-\d+)\.img$")


def _criu():
    try:
        return find_criu()
    except CriuNotFound as err:
        pytest.skip(f"CRIU 4.x is needed: {err} (.ci/build-criu builds it)")


def _flat(value, prefix: str = "") -> dict:
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_flat(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def _fields(path: Path) -> dict:
    _, msgs = read_image(path)
    return _flat([json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs])


def test_images_equal_criu_dump_field_by_field(tmp_path):
    criu = _criu()
    exe = tmp_path / "state"
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(TARGET)], check=True)
    p = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.1)
        os.kill(p.pid, signal.SIGUSR2)  # blocked everywhere: stays pending
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ours, theirs = tmp_path / "ours", tmp_path / "criu"
        r = subprocess.run([sys.executable, "-m", "dumper", "dump", str(p.pid), "-D", str(ours), "--no-compress"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        theirs.mkdir()
        r = subprocess.run([criu.path, "dump", "-t", str(p.pid), "-D", str(theirs), "--leave-running",
                            "--shell-job", "-o", "dump.log"], capture_output=True, text=True)
        assert r.returncode == 0, (theirs / "dump.log").read_text()[-2000:]
    finally:
        p.kill()
        p.wait()
    names = sorted(n.name for n in theirs.iterdir() if COMPARED.match(n.name))
    assert {"pstree.img", "files.img", f"core-{p.pid}.img", f"ids-{p.pid}.img", f"mm-{p.pid}.img",
            f"fs-{p.pid}.img"} <= set(names)
    missing = [n for n in names if not (ours / n).exists()]
    assert missing == [], f"images criu dump writes and dumper does not: {missing}"
    assert len([n for n in names if n.startswith("core-")]) == 3  # one per thread
    problems = []
    for name in names:
        a, b = _fields(theirs / name), _fields(ours / name)
        for key in sorted(set(a) | set(b)):
            if a.get(key) == b.get(key):
                continue
            if any(re.search(img, name) and re.search(field, key) for img, field, _ in BY_NATURE):
                continue
            problems.append(f"{name}{key}: criu {a.get(key)!r}, dumper {b.get(key)!r}")
    assert problems == [], "\n".join(problems[:50])

"""Helpers shared by the benchmarks: targets, child measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spawn_sparse(reservation: int, touched: int = 1000) -> subprocess.Popen:
    """A process with one MAP_NORESERVE reservation and ``touched`` pages written."""
    code = textwrap.dedent(f"""
        import ctypes, ctypes.util, os, random, sys
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        size = {reservation}
        a = libc.mmap(None, size, 3, 0x02 | 0x20 | 0x4000, -1, 0)
        if a in (None, ctypes.c_void_p(-1).value):
            sys.exit("mmap failed: " + os.strerror(ctypes.get_errno()))
        rng = random.Random(7)
        for page in rng.sample(range(size // 4096), {touched}):
            ctypes.memmove(a + page * 4096, b"x", 1)
        print(a, flush=True)
        sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.strip():
        p.kill()
        raise RuntimeError(f"sparse target of {reservation} bytes did not start")
    p.addr = int(line)  # type: ignore[attr-defined]
    return p


def run_child(code: str, timeout: float = 900) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object.

    Adds ``max_rss_kib`` (the child's peak RSS, from wait4) to the result.
    """
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    t0 = time.monotonic()
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"benchmark child failed ({p.returncode}): {err.strip()[-500:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["max_rss_kib"] = usage.ru_maxrss
    result["child_wall_s"] = time.monotonic() - t0
    return result


def stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f:
            f.close()

"""The warden (dumper.proc.warden): start-up and round-trip cost.

Measured in a fresh interpreter that has imported what ``dumper dump`` imports
(numpy, zstandard, protobuf), so the fork copies a realistic process:

* start: ``Warden().start()`` until the warden answers, by fork and by spawn;
* close: ending a session with nothing frozen;
* call: one ``Warden.call`` of a function that does nothing (median of many);
* freeze/thaw: a 5-thread target, through the warden and with a Freezer in
  the process itself.

Expected: a forked start is a small fraction of a spawned one (the reason to
fork), and a call costs well under a millisecond.
"""

from __future__ import annotations

from ._util import run_child

CODE = r"""
import json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "tests")
import dumper.dump, dumper.image.writer  # what `dumper dump` has loaded when it starts the warden
from dumper.proc.freeze import Freezer
from dumper.proc.warden import Warden
from freeze_helpers import CounterTarget
import benchmarks.warden as bw

def starts(method, n):
    out, closes = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        w = Warden(start=method).start()
        t1 = time.perf_counter()
        w.close()
        closes.append(time.perf_counter() - t1)
        out.append(t1 - t0)
    return statistics.median(out), statistics.median(closes)

fork_start, fork_close = starts("fork", 20)
spawn_start, spawn_close = starts("spawn", 5)
t = CounterTarget(Path(tempfile.mkdtemp()), 4)
try:
    with Warden() as w:
        laps = []
        for _ in range(2000):
            t0 = time.perf_counter()
            w.call(bw.nothing)
            laps.append(time.perf_counter() - t0)
        call = statistics.median(laps)
        ft = []
        for _ in range(20):
            t0 = time.perf_counter()
            w.freeze(t.pid, tree=False)
            w.thaw()
            ft.append(time.perf_counter() - t0)
    local = []
    for _ in range(20):
        t0 = time.perf_counter()
        with Freezer(t.pid):
            pass
        local.append(time.perf_counter() - t0)
finally:
    t.close()
print(json.dumps({"fork_start_ms": fork_start * 1e3, "fork_close_ms": fork_close * 1e3,
                  "spawn_start_ms": spawn_start * 1e3, "spawn_close_ms": spawn_close * 1e3,
                  "call_us": call * 1e6, "freeze_thaw_warden_ms": statistics.median(ft) * 1e3,
                  "freeze_thaw_local_ms": statistics.median(local) * 1e3}))
"""


def nothing(ctx) -> None:
    """The function the round-trip measurement calls in the warden."""


def run() -> dict:
    r = run_child(CODE)
    r["spawn_over_fork"] = r["spawn_start_ms"] / r["fork_start_ms"]
    return r


def table(r: dict) -> list[str]:
    return [
        f"warden start   fork {r['fork_start_ms']:.2f} ms, spawn {r['spawn_start_ms']:.1f} ms "
        f"(spawn / fork = {r['spawn_over_fork']:.0f}x); close {r['fork_close_ms']:.2f} ms",
        f"warden call    {r['call_us']:.0f} us per round trip (median of 2000)",
        f"freeze+thaw    {r['freeze_thaw_warden_ms']:.2f} ms through the warden, "
        f"{r['freeze_thaw_local_ms']:.2f} ms with a Freezer in the process (5 threads)",
    ]

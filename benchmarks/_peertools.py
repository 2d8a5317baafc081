"""Running the tools the peers benchmarks compare, one measurement each.

Every ``run_*`` returns a row: ``ok``, ``wall_s``, ``frozen_s``, ``bytes``
(apparent size of every file written, CRIU's log left out) and, when it
failed, ``error`` (one line). :func:`median_of` repeats a measurement.

- dumper in this process (:func:`run_dumper`, through the Python API: no
  interpreter start-up in its wall time) or in a fresh interpreter
  (:func:`run_dumper_child`: its peak RSS, and a time limit);
- ``criu dump`` (:func:`run_criu`): frozen time from its ``stats-dump``
  (``frozen_time``), CRIU found by :func:`dumper.restore.criu.find_criu`;
- ``gcore`` (:func:`run_gcore`): frozen time sampled from /proc/PID/stat.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from ._util import ROOT, dir_bytes

CRIU_TIMEOUT_S = 300.0
GCORE_MAX_BYTES = 2 << 30
GCORE_MAX_S = 60.0


class StopSampler:
    """Time a process spends in tracing stop ('t'), sampled every 0.5 ms."""

    def __init__(self, pid: int) -> None:
        self.path = f"/proc/{pid}/stat"
        self.first = self.last = None
        self._done = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                with open(self.path, "rb") as f:
                    d = f.read()
            except OSError:
                return
            if d[d.rindex(b")") + 2 :].split()[0] == b"t":
                now = time.perf_counter()
                self.first = self.first or now
                self.last = now
            time.sleep(0.0005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._t.join()

    @property
    def seconds(self) -> float | None:
        return None if self.first is None else self.last - self.first


# --- finding the peers


def find_criu() -> tuple[str | None, str]:
    """(path of a CRIU that runs here, note): the CRIU ``dumper restore``
    would use (``$DUMPER_CRIU``, the source tree's build, PATH), checked
    with ``criu check``."""
    from dumper.errors import CriuNotFound
    from dumper.restore.criu import find_criu as locate

    try:
        criu = locate()
    except CriuNotFound as err:
        return None, f"criu: {err}: skipped"
    r = subprocess.run([criu.path, "check"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        errs = [line.strip() for line in (r.stderr + r.stdout).splitlines() if "Error" in line]
        return None, (f"criu {criu.version_text} ({criu.path}) does not run here: "
                      f"{errs[-1] if errs else r.returncode}: skipped")
    return criu.path, f"criu {criu.version_text} ({criu.path})"


def find_gcore() -> tuple[str | None, str]:
    path = shutil.which("gcore")
    if path is None:
        return None, "gcore (gdb) not installed: skipped"
    ver = subprocess.run(["gdb", "--version"], capture_output=True, text=True).stdout.splitlines()
    return path, f"gcore ({ver[0] if ver else 'gdb'})"


# --- the tools


def _first_error(log: Path, fallback: str) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return fallback.strip()[-200:]
    errs = [line.split(": ", 1)[-1] if "): " in line else line for line in lines
            if "Error" in line and "RLIMIT_NOFILE" not in line]
    return (errs[0] if errs else fallback.strip()[-200:]).strip()


def recorded_pages(dest: Path, pid: int) -> int:
    """Pages the checkpoint (ours or CRIU's) records for ``pid``."""
    from dumper.image.checkpoint import open_checkpoint

    with open_checkpoint(dest) as ck:
        return sum(e - s for s, e in ck.recorded_ranges(pid)) // os.sysconf("SC_PAGE_SIZE")


def run_criu(criu: str, pid: int, dest: Path, *args: str, env: dict | None = None, action: str = "dump") -> dict:
    """``criu ACTION -t PID -D dest --shell-job ARGS``; the log is dest/dump.log."""
    from dumper.image import read_image

    dest.mkdir()
    t0 = time.perf_counter()
    try:
        r = subprocess.run([criu, action, "-t", str(pid), "-D", str(dest), "--shell-job", "-o", "dump.log", *args],
                           capture_output=True, text=True, timeout=CRIU_TIMEOUT_S,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no answer in {CRIU_TIMEOUT_S:.0f} s"}
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"ok": False, "wall_s": wall, "error": _first_error(dest / "dump.log", r.stderr)}
    frozen = None
    if (dest / "stats-dump").exists():
        _, (st,) = read_image(dest / "stats-dump")
        frozen = st.dump.frozen_time / 1e6
    log = dest / "dump.log"
    row = {"ok": True, "wall_s": wall, "frozen_s": frozen,
           "bytes": dir_bytes(dest) - (log.stat().st_size if log.exists() else 0)}
    if action == "dump":
        row["pages"] = recorded_pages(dest, pid)
    return row


def run_gcore(gcore: str, pid: int, dest: Path) -> dict:
    """``gcore -o dest/core PID``, stopped once it has written
    ``GCORE_MAX_BYTES`` or run ``GCORE_MAX_S``."""
    dest.mkdir()
    core = dest / f"core.{pid}"
    t0 = time.perf_counter()
    with StopSampler(pid) as sampler:
        p = subprocess.Popen([gcore, "-o", str(dest / "core"), str(pid)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        gave_up = None
        while p.poll() is None:
            time.sleep(0.05)
            size = core.stat().st_size if core.exists() else 0
            if size > GCORE_MAX_BYTES or time.perf_counter() - t0 > GCORE_MAX_S:
                gave_up = (f"stopped after {time.perf_counter() - t0:.0f} s with {size / 2**30:.1f} GiB written "
                           "(a core holds every byte of the reservation)")
                os.killpg(p.pid, signal.SIGKILL)
                break
        err = p.communicate()[1]
    wall = time.perf_counter() - t0
    size = core.stat().st_size if core.exists() else 0
    if gave_up:
        return {"ok": False, "wall_s": wall, "bytes": size, "error": gave_up}
    if p.returncode != 0 or not core.exists():
        return {"ok": False, "wall_s": wall, "error": (err or f"exit {p.returncode}").strip()[-200:]}
    return {"ok": True, "wall_s": wall, "frozen_s": sampler.seconds, "bytes": size}


def _dumper_row(result, phases: dict, wall: float, dest: Path) -> dict:
    # frozen: every stop of the target, the reap of a copy-on-write snapshot's child too
    if result.reap_ns:
        phases = {**phases, "reap": result.reap_ns / 1e6}
    return {"ok": True, "wall_s": wall, "frozen_s": (result.frozen_ns + result.reap_ns) / 1e9,
            "bytes": dir_bytes(dest), "pages": result.pages_written, "pages_parent": result.pages_parent,
            "notes": list(result.notes), "backend": result.backend, "tracker": result.tracker,
            "copy": result.copy, "phases_ms": phases}


def run_dumper(pid: int, dest: Path, **options) -> dict:
    """``dumper.dump.dump(pid, dest, **options)`` in this process, its phases
    timed (``phases_ms``, see :func:`benchmarks._util.timed_dump`)."""
    from dumper.errors import DumperError

    from ._util import timed_dump

    t0 = time.perf_counter()
    try:
        result, phases = timed_dump(pid, dest, **options)
    except DumperError as err:
        return {"ok": False, "wall_s": time.perf_counter() - t0, "error": f"{type(err).__name__}: {err}"}
    return _dumper_row(result, phases, time.perf_counter() - t0, dest)


_CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from benchmarks._peertools import _dumper_row
    from benchmarks._util import peak_rss_kib, timed_dump
    pid, dest, options = json.loads(sys.argv[1])
    t0 = time.perf_counter()
    result, phases = timed_dump(pid, dest, **options)
    row = _dumper_row(result, phases, time.perf_counter() - t0, Path(dest))
    row["max_rss_kib"] = peak_rss_kib()
    print(json.dumps(row))
""")


def run_dumper_child(pid: int, dest: Path, *, timeout: float = 600.0, **options) -> dict:
    """As :func:`run_dumper`, in a fresh interpreter: adds ``max_rss_kib``
    (that interpreter's peak RSS: :func:`benchmarks._util.peak_rss_kib`;
    the dumper's, not its warden's). Past ``timeout`` seconds it gets SIGTERM (the
    dump thaws the target and removes its output) and the row fails
    saying so."""
    p = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps([pid, str(dest), options])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    t0 = time.perf_counter()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        return {"ok": False, "wall_s": time.perf_counter() - t0, "timed_out": True,
                "error": f"stopped after {timeout:.0f} s (BENCH_FALLBACK_MAX_S)"}
    if p.returncode:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        return {"ok": False, "wall_s": time.perf_counter() - t0, "error": (lines[-1] if lines else
                                                                            f"exit {p.returncode}")[-300:]}
    return json.loads(out.strip().splitlines()[-1])


# --- repeating


def _median(values: list):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def median_of(n: int, measure, dest: Path) -> dict:
    """Run ``measure(path)`` ``n`` times (fresh output each time, removed
    after). The row is the run with the median wall time, with ``wall_s``,
    ``frozen_s``, ``bytes`` and ``max_rss_kib`` replaced by the median of
    each over the runs (lists in ``runs``). Stops at the first failure and
    returns it."""
    runs = []
    for i in range(n):
        out = dest.with_name(f"{dest.name}-{i}")
        try:
            row = measure(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if not row.get("ok"):
            return row
        runs.append(row)
    runs.sort(key=lambda r: r["wall_s"])
    best = dict(runs[len(runs) // 2])
    best["runs"] = {}
    for k in ("wall_s", "frozen_s", "bytes", "max_rss_kib"):
        if k in best:
            best["runs"][k] = [r.get(k) for r in runs]
            best[k] = _median(best["runs"][k])
    return best


def cont_if_stopped(pid: int) -> None:
    """CRIU and gdb hand a running target back running; make sure."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def then_cont(pid: int, row: dict) -> dict:
    cont_if_stopped(pid)
    return row


# --- page sets


def compare_page_sets(ours: Path, theirs: Path, pid: int) -> dict:
    """Which pages each checkpoint records for ``pid``: counts, and the
    pages only one of them has (addresses, each with its VMA in CRIU's set
    or ours: prot and file), e.g. the text page CRIU's parasite dirties
    (docs/criu-export.md)."""
    import numpy as np

    from dumper.dump import intervals as iv
    from dumper.image import format as fmt
    from dumper.image.checkpoint import open_checkpoint

    page = os.sysconf("SC_PAGE_SIZE")
    file_backed = fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED

    def ranges(path):
        with open_checkpoint(path) as ck:
            return ck.recorded_ranges(pid)

    a, b = ranges(ours), ranges(theirs)
    sa = (np.array([s for s, _ in a], np.uint64), np.array([e for _, e in a], np.uint64))
    sb = (np.array([s for s, _ in b], np.uint64), np.array([e for _, e in b], np.uint64))
    only_a, only_b = iv.subtract(sa, sb), iv.subtract(sb, sa)

    def where(path, ivs) -> list[str]:
        out = []
        with open_checkpoint(path) as ck:
            proc = ck.process(pid)
            for s, e in zip(*ivs):
                v = proc.vma_at(int(s))
                prot = "".join(c if v is not None and v.prot & bit else "-"
                               for c, bit in (("r", 1), ("w", 2), ("x", 4)))
                kind = "file" if v is not None and v.status & file_backed else "anon"
                out.append(f"{int(s):#x}+{(int(e) - int(s)) // page} {prot} {kind}")
                if len(out) == 8:
                    break
        return out

    only_b_exec = 0
    with open_checkpoint(theirs) as ck:
        proc = ck.process(pid)
        for s, e in zip(*only_b):
            v = proc.vma_at(int(s))
            if v is not None and v.prot & 4 and v.status & file_backed:
                only_b_exec += (int(e) - int(s)) // page
    return {"pages_dumper": iv.total(*sa) // page, "pages_criu": iv.total(*sb) // page,
            "only_dumper": iv.total(*only_a) // page, "only_criu": iv.total(*only_b) // page,
            "only_criu_in_code": only_b_exec,
            "only_dumper_where": where(ours, only_a), "only_criu_where": where(theirs, only_b)}

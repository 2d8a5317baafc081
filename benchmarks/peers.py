"""dumper side by side with CRIU (``criu dump``) and gdb (``gcore``).

Three scenarios, every peer run on the same target in the same run, and
every figure also given as a ratio to dumper's (zstd) figure of that run:

- dense: a 1 GiB target (half random, half text): dumper compressed and
  ``--no-compress``, ``criu dump --leave-running``, ``gcore -o FILE PID``;
  wall time, frozen time, bytes written;
- sparse, ASan-shaped: 1, 15, 16 and 64 TiB MAP_NORESERVE reservations with
  1000 touched pages: dumper, criu (also with its PAGEMAP_SCAN path switched
  off by CRIU's fault injection 135, i.e. the pre-6.7 path) and gcore, which
  is stopped once it has written ``GCORE_MAX_BYTES`` or run ``GCORE_MAX_S``;
- incremental: 1% of the 1 GiB target written between dumps: dumper with
  uffd-wp tracking (``track_mem`` then ``parent``); CRIU's ``pre-dump`` and
  ``dump --track-mem`` (which need soft-dirty) reported as they answer.

Frozen time: dumper's and CRIU's own figures (``frozen_ns``; stats-dump
``frozen_time``); for gcore the time /proc/PID/stat shows the target in
tracing stop, sampled every 0.5 ms. Bytes: the apparent size of every file
written. Each tool that succeeds runs ``BENCH_REPEAT`` times (default 3)
and the run with the median wall time is shown. A peer that is not installed (or, for criu, whose ``criu check``
fails) is skipped with a note. ``BENCH_TMP`` picks the output directory
(default /dev/shm, so the tools rather than the disk are measured).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ._util import spawn_sparse, stop
from .incremental import TARGET as DENSE_TARGET

DENSE_MIB = 1024
SPARSE = [("1 TiB", 1 << 40), ("15 TiB", 15 << 40), ("16 TiB", 16 << 40), ("64 TiB", 64 << 40)]
GCORE_MAX_BYTES = 2 << 30
GCORE_MAX_S = 60.0
CRIU_TIMEOUT_S = 300.0
CRIU_NO_SCAN_FAULT = "135"  # FI_DONT_USE_PAGEMAP_SCAN (criu/include/fault-injection.h)
# Each successful measurement is taken this many times; the median is shown.
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def _outdir() -> str | None:
    return os.environ.get("BENCH_TMP") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class _StopSampler:
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


# --- peers


def find_criu() -> tuple[str | None, str]:
    """(path of a criu that works here, note)."""
    path = shutil.which("criu")
    if path is None:
        return None, "criu not installed: skipped"
    ver = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.split()
    version = ver[1] if len(ver) > 1 else "?"
    r = subprocess.run([path, "check"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        errs = [line.strip() for line in (r.stderr + r.stdout).splitlines() if "Error" in line]
        return None, f"criu {version} ({path}) does not run here: {errs[-1] if errs else r.returncode}: skipped"
    return path, f"criu {version} ({path})"


def find_gcore() -> tuple[str | None, str]:
    path = shutil.which("gcore")
    if path is None:
        return None, "gcore (gdb) not installed: skipped"
    ver = subprocess.run(["gdb", "--version"], capture_output=True, text=True).stdout.splitlines()
    return path, f"gcore ({ver[0] if ver else 'gdb'})"


def _first_error(log: Path, fallback: str) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return fallback.strip()[-200:]
    errs = [line.split(": ", 1)[-1] if "): " in line else line for line in lines
            if "Error" in line and "RLIMIT_NOFILE" not in line]
    return (errs[0] if errs else fallback.strip()[-200:]).strip()


def run_criu(criu: str, pid: int, dest: Path, *args: str, env: dict | None = None, action: str = "dump") -> dict:
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
    return {"ok": True, "wall_s": wall, "frozen_s": frozen, "bytes": _dir_bytes(dest) - _log_bytes(dest)}


def _log_bytes(dest: Path) -> int:
    log = dest / "dump.log"
    return log.stat().st_size if log.exists() else 0


def run_gcore(gcore: str, pid: int, dest: Path) -> dict:
    dest.mkdir()
    core = dest / f"core.{pid}"
    t0 = time.perf_counter()
    with _StopSampler(pid) as sampler:
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


def run_dumper(pid: int, dest: Path, **kw) -> dict:
    from dumper.dump import dump

    t0 = time.perf_counter()
    r = dump(pid, dest, **kw)
    wall = time.perf_counter() - t0
    return {"ok": True, "wall_s": wall, "frozen_s": r.frozen_ns / 1e9, "bytes": _dir_bytes(dest),
            "pages": r.pages_written, "pages_parent": r.pages_parent}


def _median_of(n: int, measure, dest: Path) -> dict:
    """Run ``measure(path)`` up to ``n`` times (fresh output each time,
    removed after) and return the run with the median wall time, all wall
    times in ``walls_s``. Stops at the first failure and returns it."""
    runs = []
    for i in range(n):
        out = dest.with_name(f"{dest.name}-{i}")
        row = measure(out)
        shutil.rmtree(out, ignore_errors=True)
        if not row.get("ok"):
            return row
        runs.append(row)
    runs.sort(key=lambda r: r["wall_s"])
    best = dict(runs[len(runs) // 2])
    best["walls_s"] = [r["wall_s"] for r in runs]
    return best


def _cont_if_stopped(pid: int) -> None:
    """CRIU and gdb hand a running target back running; make sure."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _then_cont(pid: int, row: dict) -> dict:
    _cont_if_stopped(pid)
    return row


# --- scenarios


def _spawn_dense(mib: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", DENSE_TARGET.format(mib=mib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "READY":
        stop(p)
        raise RuntimeError("dense target did not start")
    return p


def dense(criu, gcore, tmp: Path, mib: int) -> dict:
    p = _spawn_dense(mib)
    rows = {}
    n = REPEAT
    try:
        rows["dumper"] = _median_of(n, lambda d: run_dumper(p.pid, d), tmp / "d-zstd")
        rows["dumper --no-compress"] = _median_of(n, lambda d: run_dumper(p.pid, d, compress=False), tmp / "d-raw")
        if criu:
            rows["criu dump"] = _median_of(n, lambda d: _then_cont(p.pid, run_criu(criu, p.pid, d, "--leave-running")),
                                           tmp / "d-criu")
        if gcore:
            rows["gcore"] = _median_of(n, lambda d: _then_cont(p.pid, run_gcore(gcore, p.pid, d)), tmp / "d-gcore")
    finally:
        stop(p)
    return {"target": f"dense {mib} MiB", "rows": rows}


def sparse(criu, gcore, tmp: Path) -> list[dict]:
    out = []
    for label, size in SPARSE:
        p = spawn_sparse(size)
        rows = {}
        key = label.replace(" ", "")
        try:
            rows["dumper"] = _median_of(REPEAT, lambda d: run_dumper(p.pid, d), tmp / f"s-{key}")
            if criu:
                rows["criu dump"] = _median_of(
                    REPEAT, lambda d: _then_cont(p.pid, run_criu(criu, p.pid, d, "--leave-running")),
                    tmp / f"s-{key}-criu")
                rows["criu, PAGEMAP_SCAN off (1)"] = run_criu(
                    criu, p.pid, tmp / f"s-{key}-criu-noscan", "--leave-running",
                    env={"CRIU_FAULT": CRIU_NO_SCAN_FAULT})
                _cont_if_stopped(p.pid)
            if gcore:
                rows["gcore"] = run_gcore(gcore, p.pid, tmp / f"s-{key}-gcore")
                shutil.rmtree(tmp / f"s-{key}-gcore")
                _cont_if_stopped(p.pid)
        finally:
            stop(p)
        out.append({"target": f"sparse {label}, 1000 pages", "rows": rows})
    return out


def incremental(criu, tmp: Path, mib: int) -> dict:
    from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

    pages = (mib << 20) // 4096
    touch = pages // 100
    rows = {}
    notes = []
    p = _spawn_dense(mib)
    try:
        if probe_scan_categories() and probe_uffd_wp_async():
            rows["dumper full (arms uffd-wp)"] = run_dumper(p.pid, tmp / "i-full", track_mem=True)
            p.stdin.write(f"{touch}\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "OK"
            rows["dumper incremental"] = run_dumper(p.pid, tmp / "i-inc", parent=tmp / "i-full")
        else:
            notes.append("uffd-wp tracking unavailable on this kernel: dumper incremental skipped")
        if criu:
            rows["criu pre-dump (2)"] = run_criu(criu, p.pid, tmp / "i-criu-pre", action="pre-dump")
            _cont_if_stopped(p.pid)
            rows["criu dump --track-mem (2)"] = run_criu(criu, p.pid, tmp / "i-criu-track", "--track-mem",
                                                     "--leave-running")
            _cont_if_stopped(p.pid)
    finally:
        stop(p)
    return {"target": f"incremental: 1% of {mib} MiB rewritten", "pages_touched": touch, "rows": rows,
            "notes": notes, "base": "dumper full (arms uffd-wp)"}


def _ratios(section: dict) -> None:
    base = section["rows"].get(section.get("base", "dumper"))
    for row in section["rows"].values():
        for k in ("wall_s", "frozen_s", "bytes"):
            b = base.get(k) if base and base.get("ok") else None
            v = row.get(k) if row.get("ok") else None
            row[f"{k}_ratio"] = v / b if v is not None and b else None


def run(dense_mib: int = DENSE_MIB) -> dict:
    criu, criu_note = find_criu()
    gcore, gcore_note = find_gcore()
    sections = []
    with tempfile.TemporaryDirectory(dir=_outdir(), prefix="peers-") as tmp:
        tmp = Path(tmp)
        sections.append(dense(criu, gcore, tmp, dense_mib))
        sections.extend(sparse(criu, gcore, tmp))
        sections.append(incremental(criu, tmp, dense_mib))
    for s in sections:
        _ratios(s)
    return {"peers": {"criu": criu_note, "gcore": gcore_note}, "outdir": _outdir(),
            "kernel": os.uname().release, "sections": sections}


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "s":
        return f"{v:.3f}"
    if kind == "ms":
        return f"{v * 1e3:.1f}"
    if kind == "bytes":
        return f"{v / 2**20:.1f}"
    if kind == "x":
        return f"{v:.2f}x"
    return str(v)


def table(r: dict) -> list[str]:
    head = (f"{'target':<38} {'tool':<28} {'wall s':>8} {'frozen ms':>10} {'MiB':>9} "
            f"{'wall/d':>8} {'frozen/d':>9} {'bytes/d':>8}  note")
    out = [f"peers: {r['peers']['criu']}; {r['peers']['gcore']}; output in {r['outdir']}",
           f"(median of {REPEAT} runs where a tool succeeds; ratios: to dumper's zstd dump of the same target, "
           "measured in this run; incremental: to dumper's full dump)", head, "-" * len(head)]
    for s in r["sections"]:
        target = s["target"]
        for name, row in s["rows"].items():
            if row.get("ok"):
                note = ""
                if "pages_parent" in row and row["pages_parent"]:
                    note = f"{row['pages']} pages written, {row['pages_parent']} in parent"
                cells = (_fmt(row.get("wall_s"), "s"), _fmt(row.get("frozen_s"), "ms"), _fmt(row.get("bytes"), "bytes"),
                         _fmt(row.get("wall_s_ratio"), "x"), _fmt(row.get("frozen_s_ratio"), "x"),
                         _fmt(row.get("bytes_ratio"), "x"))
            else:
                cells = (_fmt(row.get("wall_s"), "s"), "-", _fmt(row.get("bytes"), "bytes") if row.get("bytes") else "-",
                         "-", "-", "-")
                note = f"FAILED: {row.get('error', '?')}"
            out.append(f"{target:<38} {name:<28} {cells[0]:>8} {cells[1]:>10} {cells[2]:>9} "
                       f"{cells[3]:>8} {cells[4]:>9} {cells[5]:>8}  {note}")
            target = ""
        for note in s.get("notes", []):
            out.append(f"{'':<38} {note}")
    sparse_criu = [(s["target"], s["rows"]["criu dump"]) for s in r["sections"]
                   if s["target"].startswith("sparse") and "criu dump" in s["rows"]]
    if sparse_criu:
        failed = [t for t, row in sparse_criu if not row.get("ok")]
        out.append("criu dump of the sparse targets: " + (
            f"failed for {', '.join(failed)}" if failed else
            "all dumped, 16 and 64 TiB included (no abort at multiples of 16 TiB with PAGEMAP_SCAN on this kernel)"))
    if any("criu, PAGEMAP_SCAN off (1)" in s["rows"] for s in r["sections"]):
        out.append("(1) CRIU_FAULT=135 (FI_DONT_USE_PAGEMAP_SCAN): CRIU's pre-6.7 path, which reads "
                   "/proc/PID/pagemap through a buffer of 8 bytes per page of the largest VMA")
    if any("criu pre-dump (2)" in s["rows"] for s in r["sections"]):
        out.append("(2) CRIU's incremental dumps need soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY), absent here; "
                   "pre-dump implies --track-mem (CRIU 4.2 then trips BUG_ON(!kdat.has_dirty_track), criu/mem.c)")
    return out

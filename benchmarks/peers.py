"""dumper side by side with CRIU (``criu dump``) and gdb (``gcore``): what
issues 10 and 14 promise, every row with its ratio to CRIU's figure of the
same target in the same run.

Scenarios (``BENCH_PEERS``, comma-separated; default all, in this order):

- ``dense``: a 1 GiB target (half random, half text; C, idle): dumper
  (zstd; ``--copy auto`` forks it: pages read from the copy-on-write child
  after the thaw), ``--copy frozen`` (the spool: copied while frozen),
  ``--no-compress``, ``--pre-copy`` (4 rounds at most, as the CLI),
  ``criu dump --leave-running``, ``gcore``; wall, frozen, bytes. Issue 14
  item 1: frozen <= 0.5x CRIU's, wall <= 1.0x, bytes <= 0.55x.
- ``writing``: the same target rewriting random pages continuously, at
  ``BENCH_RATES`` percent of its pages per second (default 1,10,100,max;
  ``max`` writes as fast as one core can, faster than any copy):
  ``--pre-copy`` (its rounds and what each copied, from ``DumpResult.notes``)
  and ``criu dump``; a plain dump at the first rate only. Item 2: ``--pre-copy`` frozen <= 0.2x CRIU's at 1%/s.
- ``vmas``: ``BENCH_VMA_PAGES`` (64,000) written pages in as many one-page
  VMAs (every other page read-only), and the same pages in one VMA: dumper
  in a fresh interpreter (its peak RSS, getrusage RUSAGE_SELF) and ``criu
  dump``, with the default copy strategy and with ``--copy frozen``. Item 3:
  dumper's frozen time and peak RSS, many/one, <= 2x each, both sides
  copied the same way (``--copy frozen``: the one-VMA process would fork,
  which 64,000 VMAs make slower than a copy).
- ``sparse``: ``BENCH_SPARSE_TIB`` (16) TiB MAP_NORESERVE reservations with
  ``BENCH_SPARSE_PAGES`` (1000) touched pages: dumper, ``criu dump``, and
  dumper's pagemap fallback (``backend="pagemap"``, the pre-6.7 scanner; run
  once, in a fresh interpreter, stopped after ``BENCH_FALLBACK_MAX_S``
  seconds, default 60; when stopped, a 256 GiB reservation is measured for
  its rate instead). Items 4 and 5: frozen <= CRIU's; the fallback under
  10 s (>= 5 GB/s of pagemap entries). ``BENCH_CRIU_NOSCAN=1`` adds CRIU's
  own pre-6.7 path (fault injection 135), ``BENCH_SPARSE_GCORE=1`` gcore.
- ``programs``: ``BENCH_PROGRAMS`` (asan,tsan,node,python): a C program
  built with ``-fsanitize=address`` and with ``-fsanitize=thread``, node,
  python3: dumper and ``criu dump`` frozen time (item 4: <= CRIU's), then,
  the program stopped, the pages each one's checkpoint records, compared
  address by address (CRIU's parasite dirties one code page:
  docs/criu-export.md).
- ``incremental``: the 1 GiB Python target, 1% of its pages written
  between dumps: dumper's uffd-wp incremental dump against CRIU's full
  dump; CRIU's own ``pre-dump`` and ``dump --track-mem`` need soft-dirty.

Every measurement that succeeds runs ``BENCH_REPEAT`` times (default 3):
wall, frozen, bytes and peak RSS are each the median over the runs, the
rest comes from the run of median wall time. dumper runs through its Python
API (no interpreter start-up in its wall time) with each phase timed: the
frozen-time breakdown (:func:`benchmarks._util.timed_dump`). Frozen time:
dumper's ``frozen_ns`` and CRIU's stats-dump ``frozen_time`` (every thread
stopped -> thaw done); for gcore the time /proc/PID/stat shows the target
in tracing stop. Bytes: apparent size of every file written. A peer that
is missing (or whose ``criu check`` fails) is skipped with a note.
``BENCH_TMP`` picks the output directory (default /dev/shm), and
``BENCH_DENSE_MIB`` (1024) the dense target's size.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import _peertools as tools
from ._peertools import StopSampler as _StopSampler  # noqa: F401  (benchmarks/core.py imports it from here)
from ._peertools import find_criu, find_gcore  # noqa: F401
from ._util import build_c, outdir, spawn_ready, spawn_sparse, stop
from .incremental import TARGET as DENSE_TARGET

CRIU_NO_SCAN_FAULT = "135"  # FI_DONT_USE_PAGEMAP_SCAN (criu/include/fault-injection.h)
PRE_COPY_ROUNDS = 4  # `dumper dump --pre-copy` without a number
FALLBACK_SMALL = 256 << 30  # measured for the fallback's rate when the large reservation hits the time limit
BASE = "criu dump"  # every row's ratios are to this row of its section
SCENARIOS = ("dense", "writing", "vmas", "sparse", "programs", "incremental")
PROGRAMS = ("asan", "tsan", "node", "python")
# Kept for other benchmarks: the number of runs when nothing else is said.
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))

NODE_TARGET = textwrap.dedent("""
    const a = [];
    for (let i = 0; i < 200000; i++) a.push({ i, s: 'x' + i });
    const b = Buffer.alloc(16 << 20, 7);
    setInterval(() => { a[0].i++; }, 10);
    console.log('READY');
    process.stdin.on('data', () => {});
    process.stdin.on('end', () => process.exit(0));
""")
PYTHON_TARGET = textwrap.dedent("""
    import sys
    d = {i: str(i) * 3 for i in range(200000)}
    b = bytearray(range(256)) * (1 << 16)
    print("READY", flush=True)
    sys.stdin.read()
""")


@dataclass
class Config:
    """What one run measures; :meth:`from_env` reads the ``BENCH_*`` knobs."""

    repeat: int = 3
    scenarios: tuple = SCENARIOS
    dense_mib: int = 1024
    rates: tuple = ("1", "10", "100", "max")  # percent of the pages per second, or "max"
    vma_pages: int = 64000
    sparse_tib: tuple = (16,)
    sparse_pages: int = 1000
    fallback_max_s: float = 60.0
    programs: tuple = PROGRAMS
    gcore: bool = True
    sparse_gcore: bool = False
    criu_noscan: bool = False
    rate_window_s: float = 1.0  # how long the achieved write rate is measured
    notes: list = field(default_factory=list)

    @classmethod
    def from_env(cls, environ=os.environ) -> "Config":
        def lst(name, default):
            v = environ.get(name)
            return tuple(x.strip() for x in v.split(",") if x.strip()) if v else default

        c = cls()
        c.repeat = int(environ.get("BENCH_REPEAT", c.repeat))
        c.scenarios = lst("BENCH_PEERS", c.scenarios)
        unknown = set(c.scenarios) - set(SCENARIOS)
        if unknown:
            raise SystemExit(f"BENCH_PEERS: unknown {', '.join(sorted(unknown))} (choose from {', '.join(SCENARIOS)})")
        c.dense_mib = int(environ.get("BENCH_DENSE_MIB", c.dense_mib))
        c.rates = lst("BENCH_RATES", c.rates)
        c.vma_pages = int(environ.get("BENCH_VMA_PAGES", c.vma_pages))
        c.sparse_tib = tuple(float(x) for x in lst("BENCH_SPARSE_TIB", c.sparse_tib))
        c.sparse_pages = int(environ.get("BENCH_SPARSE_PAGES", c.sparse_pages))
        c.fallback_max_s = float(environ.get("BENCH_FALLBACK_MAX_S", c.fallback_max_s))
        c.programs = lst("BENCH_PROGRAMS", c.programs)
        c.gcore = environ.get("BENCH_GCORE", "1") != "0"
        c.sparse_gcore = environ.get("BENCH_SPARSE_GCORE", "0") == "1"
        c.criu_noscan = environ.get("BENCH_CRIU_NOSCAN", "0") == "1"
        return c

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "notes"}


@dataclass
class Peers:
    criu: str | None
    gcore: str | None
    tmp: Path
    bins: Path
    cfg: Config

    def median(self, measure, name: str) -> dict:
        return tools.median_of(self.cfg.repeat, measure, self.tmp / name)

    def dumper(self, pid: int, name: str, **options) -> dict:
        return self.median(lambda d: tools.run_dumper(pid, d, **options), name)

    def criu_dump(self, pid: int, name: str) -> dict:
        return self.median(lambda d: tools.then_cont(pid, tools.run_criu(self.criu, pid, d, "--leave-running")), name)


def _section(target: str, key: str, rows: dict, notes: list | None = None, **extra) -> dict:
    return {"target": target, "key": key, "rows": rows, "notes": notes or [], "base": BASE, **extra}


def _label_size(n: float) -> str:
    return f"{n:g} TiB"


# --- dense, idle and writing


def _spawn_dense_c(peers: Peers, mib: int, rate: str | None = None) -> subprocess.Popen:
    argv = [str(peers.bins / "dense_writer"), str(mib)] + ([rate] if rate else [])
    return spawn_ready(argv)


def _spawn_dense(mib: int) -> subprocess.Popen:
    """The Python dense target (benchmarks/incremental.py): 1% of it is
    rewritten on request (a line with a page count on its stdin)."""
    p = subprocess.Popen([sys.executable, "-c", DENSE_TARGET.format(mib=mib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    if p.stdout.readline().strip() != "READY":
        stop(p)
        raise RuntimeError("dense target did not start")
    return p


def dense(peers: Peers) -> dict:
    mib = peers.cfg.dense_mib
    p = _spawn_dense_c(peers, mib)
    rows = {}
    try:
        rows["dumper"] = peers.dumper(p.pid, "d-zstd")
        rows["dumper --copy frozen"] = peers.dumper(p.pid, "d-frozen", copy="frozen")
        rows["dumper --no-compress"] = peers.dumper(p.pid, "d-raw", compress=False)
        rows["dumper --pre-copy"] = peers.dumper(p.pid, "d-pre", pre_copy=PRE_COPY_ROUNDS)
        if peers.criu:
            rows["criu dump"] = peers.criu_dump(p.pid, "d-criu")
        if peers.gcore and peers.cfg.gcore:
            rows["gcore"] = peers.median(lambda d: tools.then_cont(p.pid, tools.run_gcore(peers.gcore, p.pid, d)),
                                         "d-gcore")
    finally:
        stop(p)
    return _section(f"dense {mib} MiB, idle", "dense", rows)


def _written(p: subprocess.Popen) -> tuple[int, int]:
    p.stdin.write("?\n")
    p.stdin.flush()
    words = p.stdout.readline().split()
    if len(words) != 3 or words[0] != "WRITTEN":
        raise RuntimeError(f"the writing target answered {' '.join(words)!r}")
    return int(words[1]), int(words[2])


def writing(peers: Peers, rate: str) -> dict:
    """The dense target rewriting ``rate`` percent of its pages per second
    (or "max"), measured before the dumps for ``rate_window_s``."""
    mib = peers.cfg.dense_mib
    pages = (mib << 20) // 4096
    per_s = None if rate == "max" else max(1, round(pages * float(rate) / 100))
    p = _spawn_dense_c(peers, mib, "max" if per_s is None else str(per_s))
    rows, notes = {}, []
    try:
        w0, t0 = _written(p)
        time.sleep(peers.cfg.rate_window_s)
        w1, t1 = _written(p)
        achieved = (w1 - w0) / ((t1 - t0) / 1e9)
        notes.append(f"writes {achieved:,.0f} pages/s measured ({achieved / pages:.1%} of its pages per second"
                     + (f"; {per_s:,} asked)" if per_s else ", as fast as it can)"))
        key = rate
        if rate == peers.cfg.rates[0]:  # the plain dump's copy hardly depends on the rate: once is enough
            rows["dumper"] = peers.dumper(p.pid, f"w{key}-zstd")
        rows["dumper --pre-copy"] = peers.dumper(p.pid, f"w{key}-pre", pre_copy=PRE_COPY_ROUNDS)
        if peers.criu:
            rows["criu dump"] = peers.criu_dump(p.pid, f"w{key}-criu")
    finally:
        stop(p)
    label = "as fast as it can" if per_s is None else f"{rate}% of pages/s"
    return _section(f"dense {mib} MiB, writing {label}", f"writing {rate}", rows, notes,
                    pages_per_s=achieved, rate=rate)


# --- many VMAs


def vmas(peers: Peers) -> list[dict]:
    n = peers.cfg.vma_pages
    out = []
    for mode in ("many", "one"):
        p = spawn_ready([str(peers.bins / "many_vmas"), str(n), mode])
        rows = {}
        try:
            nvmas = sum(1 for _ in open(f"/proc/{p.pid}/maps", "rb"))
            rows["dumper"] = peers.median(lambda d: tools.run_dumper_child(p.pid, d), f"v-{mode}")
            rows["dumper --copy frozen"] = peers.median(lambda d: tools.run_dumper_child(p.pid, d, copy="frozen"),
                                                        f"v-{mode}-frozen")
            if peers.criu:
                rows["criu dump"] = peers.criu_dump(p.pid, f"v-{mode}-criu")
        finally:
            stop(p)
        what = f"{n} VMAs" if mode == "many" else "one VMA"
        out.append(_section(f"{n} pages in {what}", f"vmas {mode}", rows,
                            [f"{nvmas} VMAs in the process"], vmas=nvmas))
    # Item 3 measures what each VMA costs dumper: the same copy strategy on
    # both sides. (With the default, auto, the one-VMA process forks, which
    # 64,000 VMAs would make slower than their copy: see the dumper rows.)
    many, one = (s["rows"].get("dumper --copy frozen", {}) for s in out)
    if many.get("ok") and one.get("ok"):
        out[0]["many_over_one"] = {"frozen": many["frozen_s"] / one["frozen_s"],
                                   "rss": many["max_rss_kib"] / one["max_rss_kib"]}
        out[0]["notes"].append("dumper --copy frozen, many/one: frozen {frozen:.2f}x, peak RSS {rss:.2f}x".format(
            **out[0]["many_over_one"]))
    many, one = (s["rows"].get("dumper", {}) for s in out)
    if many.get("ok") and one.get("ok"):
        out[0]["notes"].append(f"dumper (auto: the one-VMA process forks), many/one: frozen "
                               f"{many['frozen_s'] / one['frozen_s']:.2f}x, peak RSS "
                               f"{many['max_rss_kib'] / one['max_rss_kib']:.2f}x")
    return out


# --- sparse


def _fallback(peers: Peers, pid: int, name: str, size: int) -> dict:
    row = tools.run_dumper_child(pid, peers.tmp / name, timeout=peers.cfg.fallback_max_s, backend="pagemap")
    shutil.rmtree(peers.tmp / name, ignore_errors=True)
    if row.get("ok") and row.get("phases_ms", {}).get("scan"):
        row["entries_gb_per_s"] = size / 4096 * 8 / 1e9 / (row["phases_ms"]["scan"] / 1e3)
    return row


def sparse(peers: Peers) -> list[dict]:
    out = []
    for tib in peers.cfg.sparse_tib:
        size = int(tib * (1 << 40))
        label = _label_size(tib)
        key = label.replace(" ", "")
        p = spawn_sparse(size, peers.cfg.sparse_pages)
        rows, notes = {}, []
        try:
            rows["dumper"] = peers.dumper(p.pid, f"s-{key}")
            if peers.criu:
                rows["criu dump"] = peers.criu_dump(p.pid, f"s-{key}-criu")
            rows["dumper --backend pagemap (1)"] = _fallback(peers, p.pid, f"s-{key}-pagemap", size)
            if peers.criu and peers.cfg.criu_noscan:
                rows["criu, PAGEMAP_SCAN off (2)"] = tools.then_cont(p.pid, tools.run_criu(
                    peers.criu, p.pid, peers.tmp / f"s-{key}-criu-noscan", "--leave-running",
                    env={"CRIU_FAULT": CRIU_NO_SCAN_FAULT}))
                shutil.rmtree(peers.tmp / f"s-{key}-criu-noscan", ignore_errors=True)
            if peers.gcore and peers.cfg.sparse_gcore:
                rows["gcore"] = tools.then_cont(p.pid, tools.run_gcore(peers.gcore, p.pid, peers.tmp / f"s-{key}-gc"))
                shutil.rmtree(peers.tmp / f"s-{key}-gc", ignore_errors=True)
        finally:
            stop(p)
        fb = rows["dumper --backend pagemap (1)"]
        if fb.get("timed_out") and size > FALLBACK_SMALL:
            q = spawn_sparse(FALLBACK_SMALL, peers.cfg.sparse_pages)
            try:
                small = _fallback(peers, q.pid, "s-small-pagemap", FALLBACK_SMALL)
            finally:
                stop(q)
            if small.get("ok"):
                fb["entries_gb_per_s"] = small.get("entries_gb_per_s")
                fb["estimated_s"] = size / FALLBACK_SMALL * small["frozen_s"]
                notes.append(f"(1) stopped at {peers.cfg.fallback_max_s:.0f} s; a {FALLBACK_SMALL >> 30} GiB "
                             f"reservation took {small['frozen_s']:.1f} s frozen, "
                             f"{small.get('entries_gb_per_s') or 0:.2f} GB/s of pagemap entries: "
                             f"about {fb['estimated_s']:.0f} s for {label}")
        out.append(_section(f"sparse {label}, {peers.cfg.sparse_pages} pages", f"sparse {key}", rows, notes,
                            reservation=size))
    return out


# --- real programs


def _build_programs(peers: Peers) -> dict[str, list[str] | str]:
    """name -> argv, or name -> why it is skipped."""
    out: dict[str, list[str] | str] = {}
    for name in peers.cfg.programs:
        try:
            if name in ("asan", "tsan"):
                flag = "address" if name == "asan" else "thread"
                binary = build_c("sanitized", peers.bins, "-O1", "-g", "-pthread", f"-fsanitize={flag}",
                                 "-fno-omit-frame-pointer", out=f"sanitized_{name}")
                out[name] = [str(binary)]
            elif name == "node":
                node = shutil.which("node")
                out[name] = [node, "-e", NODE_TARGET] if node else "node is not installed"
            elif name == "python":
                out[name] = [sys.executable, "-c", PYTHON_TARGET]
            else:
                out[name] = f"unknown program {name!r} (choose from {', '.join(PROGRAMS)})"
        except (FileNotFoundError, RuntimeError) as err:
            out[name] = str(err)
    return out


PROGRAM_LABELS = {"asan": "C, -fsanitize=address", "tsan": "C, -fsanitize=thread", "node": "node", "python": "python3"}


def _wait_state(pid: int, states: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            d = f.read()
        if d[d.rindex(b")") + 2 :].split()[0].decode() in states:
            return
        time.sleep(0.01)
    raise RuntimeError(f"pid {pid} did not reach state {states} in {timeout:.0f} s")


def page_sets(peers: Peers, pid: int, name: str) -> dict:
    """The same stopped process dumped by dumper, then by ``criu dump``:
    the pages each records, compared."""
    ours, theirs = peers.tmp / f"{name}-ours", peers.tmp / f"{name}-theirs"
    os.kill(pid, signal.SIGSTOP)
    try:
        _wait_state(pid, "T")
        tools.run_dumper(pid, ours, thaw="leave-stopped")
        row = tools.run_criu(peers.criu, pid, theirs, "--leave-running")
        if not row.get("ok"):
            return {"error": row.get("error")}
        return tools.compare_page_sets(ours, theirs, pid)
    finally:
        os.kill(pid, signal.SIGCONT)
        shutil.rmtree(ours, ignore_errors=True)
        shutil.rmtree(theirs, ignore_errors=True)


def programs(peers: Peers) -> list[dict]:
    out = []
    for name, argv in _build_programs(peers).items():
        target = f"program: {PROGRAM_LABELS.get(name, name)}"
        if isinstance(argv, str):
            out.append(_section(target, f"program {name}", {}, [f"skipped: {argv}"]))
            continue
        rows, notes, extra = {}, [], {}
        p = spawn_ready(argv)
        try:
            extra["threads"] = len(os.listdir(f"/proc/{p.pid}/task"))
            if peers.criu:  # first: CRIU's parasite leaves a text page copied-on-write for every later dump
                extra["page_sets"] = ps = page_sets(peers, p.pid, f"p-{name}-sets")
                notes.append(_page_set_note(ps))
            rows["dumper"] = peers.dumper(p.pid, f"p-{name}")
            if peers.criu:
                rows["criu dump"] = peers.criu_dump(p.pid, f"p-{name}-criu")
        finally:
            stop(p)
        notes.insert(0, f"{extra['threads']} thread(s)")
        out.append(_section(target, f"program {name}", rows, notes, **extra))
    return out


def _page_set_note(ps: dict) -> str:
    if "error" in ps:
        return f"page sets not compared: criu dump of the stopped process failed: {ps['error']}"
    s = (f"stopped, same process: dumper records {ps['pages_dumper']} pages, CRIU {ps['pages_criu']}; "
         f"only dumper's: {ps['only_dumper']}, only CRIU's: {ps['only_criu']}")
    if ps["only_criu"] and ps["only_criu_in_code"] == ps["only_criu"]:
        s += " (in executable file mappings: its parasite's code page)"
    elif ps["only_criu"] or ps["only_dumper"]:
        s += f" [dumper: {', '.join(ps['only_dumper_where'])}; CRIU: {', '.join(ps['only_criu_where'])}]"
    return s


# --- incremental (uffd-wp here; CRIU needs soft-dirty)


def incremental(peers: Peers) -> dict:
    from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

    mib = peers.cfg.dense_mib
    touch = (mib << 20) // 4096 // 100
    rows, notes = {}, []
    tmp = peers.tmp
    p = _spawn_dense(mib)
    try:
        if peers.criu:
            rows["criu dump"] = peers.criu_dump(p.pid, "i-criu-full")
        if probe_scan_categories() and probe_uffd_wp_async():
            rows["dumper full (arms uffd-wp)"] = tools.run_dumper(p.pid, tmp / "i-full", track_mem=True)
            p.stdin.write(f"{touch}\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "OK"
            rows["dumper incremental"] = tools.run_dumper(p.pid, tmp / "i-inc", parent=tmp / "i-full")
            if rows["dumper incremental"].get("ok"):
                r = rows["dumper incremental"]
                r["note"] = f"{r['pages']} pages written, {r['pages_parent']} in parent"
            shutil.rmtree(tmp / "i-inc", ignore_errors=True)
            shutil.rmtree(tmp / "i-full", ignore_errors=True)
        else:
            notes.append("uffd-wp tracking unavailable on this kernel: dumper incremental skipped")
        if peers.criu:
            rows["criu pre-dump (3)"] = tools.then_cont(p.pid, tools.run_criu(peers.criu, p.pid, tmp / "i-criu-pre",
                                                                              action="pre-dump"))
            rows["criu dump --track-mem (3)"] = tools.then_cont(p.pid, tools.run_criu(
                peers.criu, p.pid, tmp / "i-criu-track", "--track-mem", "--leave-running"))
    finally:
        stop(p)
    return _section(f"incremental: 1% of {mib} MiB rewritten", "incremental", rows, notes,
                    pages_touched=touch)


# --- ratios, goals, running


def _ratios(section: dict) -> None:
    base = section["rows"].get(section.get("base", BASE))
    for row in section["rows"].values():
        for k in ("wall_s", "frozen_s", "bytes"):
            b = base.get(k) if base and base.get("ok") else None
            v = row.get(k) if row.get("ok") else None
            row[f"{k}_ratio"] = v / b if v is not None and b else None


def _row(sections: list[dict], key: str, tool: str) -> dict:
    for s in sections:
        if s["key"] == key:
            row = s["rows"].get(tool)
            return row if row and row.get("ok") else {}
    return {}


def goals(sections: list[dict]) -> list[dict]:
    """Each target of issues 14 (items 1-5) and 10 (process state) that
    this run measured: ``{"issue", "what", "value", "limit", "met"}``
    (value and limit as ratios, seconds or GB/s, named in ``what``)."""
    out = []

    def add(issue, what, value, limit, unit="x", *, at_least=False):
        if value is not None:
            out.append({"issue": issue, "what": what, "value": value, "limit": limit, "unit": unit,
                        "at_least": at_least, "met": value >= limit if at_least else value <= limit})

    d = _row(sections, "dense", "dumper")
    add("14.1", "dense: dumper frozen / criu frozen", d.get("frozen_s_ratio"), 0.5)
    add("14.1", "dense: dumper wall / criu wall", d.get("wall_s_ratio"), 1.0)
    add("14.1", "dense: dumper bytes / criu bytes", d.get("bytes_ratio"), 0.55)
    add("14.2", "writing 1%/s: dumper --pre-copy frozen / criu frozen",
        _row(sections, "writing 1", "dumper --pre-copy").get("frozen_s_ratio"), 0.2)
    for s in sections:
        if s["key"] == "vmas many" and "many_over_one" in s:
            add("14.3", "many VMAs (--copy frozen): dumper frozen, many / one", s["many_over_one"]["frozen"], 2.0)
            add("14.3", "many VMAs (--copy frozen): dumper peak RSS, many / one", s["many_over_one"]["rss"], 2.0)
    for s in sections:
        if s["key"].startswith("sparse"):
            add("14.4", f"{s['target']}: dumper frozen / criu frozen", _row(sections, s["key"], "dumper")
                .get("frozen_s_ratio"), 1.0)
            fb = s["rows"].get("dumper --backend pagemap (1)", {})
            if s.get("reservation", 0) >= 16 << 40:
                add("14.5", f"{s['target']}: pagemap fallback frozen" + (" (estimated)" if "estimated_s" in fb else ""),
                    fb.get("frozen_s") if fb.get("ok") else fb.get("estimated_s", float("inf"))
                    if fb.get("timed_out") else None, 10.0, "s")
            add("14.5", f"{s['target']}: pagemap fallback, pagemap entries", fb.get("entries_gb_per_s"), 5.0,
                "GB/s", at_least=True)
        if s["key"].startswith("program"):
            add("14.4", f"{s['target']}: dumper frozen / criu frozen",
                _row(sections, s["key"], "dumper").get("frozen_s_ratio"), 1.0)
            ps = s.get("page_sets")
            if ps and "error" not in ps:
                add("14.4", f"{s['target']}: pages in one set only, CRIU's parasite page apart",
                    ps["only_dumper"] + ps["only_criu"] - min(ps["only_criu_in_code"], 1), 0, "pages")
    collect = d.get("phases_ms", {}).get("collect")
    add("10", "dense (1 process, 2 threads): process state while frozen (collect)", collect, 20.0, "ms")
    return out


def run(cfg: Config | None = None) -> dict:
    cfg = cfg or Config.from_env()
    criu, criu_note = find_criu()
    gcore, gcore_note = find_gcore()
    sections: list[dict] = []
    t_start = time.monotonic()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=outdir(), prefix="peers-") as tmp:
        tmp = Path(tmp)
        bins = tmp / "bin"
        bins.mkdir()
        build_c("dense_writer", bins, "-O2", "-pthread")
        build_c("many_vmas", bins, "-O2")
        peers = Peers(criu, gcore, tmp, bins, cfg)
        for name in cfg.scenarios:
            print(f"peers: {name}", file=sys.stderr, flush=True)
            if name == "dense":
                sections.append(dense(peers))
            elif name == "writing":
                sections.extend(writing(peers, rate) for rate in cfg.rates)
            elif name == "vmas":
                sections.extend(vmas(peers))
            elif name == "sparse":
                sections.extend(sparse(peers))
            elif name == "programs":
                sections.extend(programs(peers))
            elif name == "incremental":
                sections.append(incremental(peers))
    for s in sections:
        _ratios(s)
    return {"peers": {"criu": criu_note, "gcore": gcore_note}, "outdir": outdir(), "kernel": os.uname().release,
            "config": cfg.to_json(), "loadavg_before": load, "loadavg_after": os.getloadavg(),
            "seconds": time.monotonic() - t_start, "sections": sections, "goals": goals(sections)}


# --- the table


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


def _row_note(row: dict) -> str:
    parts = []
    for n in row.get("notes", []):
        if n.startswith("pre-copy:"):
            parts.append(n)
    if row.get("note"):
        parts.append(row["note"])
    if "max_rss_kib" in row:
        parts.append(f"peak RSS {row['max_rss_kib'] / 1024:.0f} MiB")
    if row.get("entries_gb_per_s"):
        parts.append(f"{row['entries_gb_per_s']:.2f} GB/s of pagemap entries")
    if "pages" in row and not parts:
        parts.append(f"{row['pages']} pages")
    return "; ".join(parts)


def _goal_value(g: dict) -> str:
    v, unit = g["value"], g.get("unit", "x")
    if v == float("inf"):
        return "stopped"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:.2f} {unit}" if isinstance(v, float) else f"{v} {unit}"


def table(r: dict) -> list[str]:
    cfg = r.get("config", {})
    head = (f"{'target':<40} {'tool':<28} {'wall s':>8} {'frozen ms':>10} {'MiB':>9} "
            f"{'wall/C':>7} {'frozen/C':>9} {'MiB/C':>7}  note")
    out = [f"peers: {r['peers']['criu']}; {r['peers']['gcore']}; output in {r['outdir']}; "
           f"load average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after, "
           f"{os.cpu_count()} CPUs; {r['seconds']:.0f} s",
           f"(median of {cfg.get('repeat', REPEAT)} runs where a tool succeeds; /C: ratio to `criu dump` of the same "
           "target in this run)", head, "-" * len(head)]
    for s in r["sections"]:
        target = s["target"]
        for name, row in s["rows"].items():
            if row.get("ok"):
                note = _row_note(row)
                cells = (_fmt(row.get("wall_s"), "s"), _fmt(row.get("frozen_s"), "ms"), _fmt(row.get("bytes"), "bytes"),
                         _fmt(row.get("wall_s_ratio"), "x"), _fmt(row.get("frozen_s_ratio"), "x"),
                         _fmt(row.get("bytes_ratio"), "x"))
            else:
                size = _fmt(row.get("bytes"), "bytes") if row.get("bytes") else "-"
                cells = (_fmt(row.get("wall_s"), "s"), "-", size,
                         "-", "-", "-")
                note = f"FAILED: {row.get('error', '?')}"
            out.append(f"{target:<40} {name:<28} {cells[0]:>8} {cells[1]:>10} {cells[2]:>9} "
                       f"{cells[3]:>7} {cells[4]:>9} {cells[5]:>7}  {note}")
            target = ""
        for note in s.get("notes", []):
            out.append(f"{'':<40} {note}")
        if not s["rows"] and not s.get("notes"):
            out.append(f"{target:<40} (nothing measured)")
    out.append("(1) dumper's pre-6.7 scanner (/proc/PID/pagemap), run once in a fresh interpreter")
    if any("criu, PAGEMAP_SCAN off (2)" in s["rows"] for s in r["sections"]):
        out.append("(2) CRIU_FAULT=135 (FI_DONT_USE_PAGEMAP_SCAN): CRIU's pre-6.7 path, which reads "
                   "/proc/PID/pagemap through a buffer of 8 bytes per page of the largest VMA")
    if any("criu pre-dump (3)" in s["rows"] for s in r["sections"]):
        out.append("(3) CRIU's incremental dumps need soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY), absent here")
    out.extend(_by_rate(r))
    out.extend(_breakdown(r))
    if r.get("goals"):
        out.append("")
        out.append("targets (issue.item: measured, limit):")
        for g in r["goals"]:
            unit = "x" if g.get("unit", "x") == "x" else f" {g['unit']}"
            limit = f"{'>=' if g.get('at_least') else '<='} {g['limit']:g}{unit}"
            out.append(f"  {g['issue']:<5} {g['what']:<78} {_goal_value(g):>11}  {limit:<11} "
                       f"{'met' if g['met'] else 'NOT MET'}")
    return out


def _by_rate(r: dict) -> list[str]:
    """``--pre-copy`` frozen time against the target's write rate."""
    lines = []
    for s in r["sections"]:
        pre, criu = s["rows"].get("dumper --pre-copy", {}), s["rows"].get(BASE, {})
        if "pages_per_s" not in s or not pre.get("ok"):
            continue
        rounds = next((n for n in pre.get("notes", []) if n.startswith("pre-copy: ")), "")
        lines.append(f"  {s['rate']:>5}  {s['pages_per_s']:>12,.0f}  {pre['frozen_s'] * 1e3:>10.1f}  "
                     f"{_fmt(criu.get('frozen_s'), 'ms'):>10}  {_fmt(pre.get('frozen_s_ratio'), 'x'):>7}  "
                     f"{rounds[len('pre-copy: '):]}")
    if not lines:
        return []
    return ["", "--pre-copy frozen time vs the target's write rate (% of its pages per second):",
            f"  {'rate':>5}  {'pages/s':>12}  {'frozen ms':>10}  {'criu ms':>10}  {'ratio':>7}  rounds", *lines]


BREAKDOWN = ("prepare", "rounds", "freezing", "freeze", "list_vmas", "collect", "arm", "scan", "select", "snapshot",
             "copy", "reset", "thaw", "other", "write", "reap")


def _breakdown(r: dict) -> list[str]:
    """dumper's phases (ms) for the rows that have them: what the frozen
    time is made of (freeze .. other), and around it."""
    lines = []
    for s in r["sections"]:
        for name, row in s["rows"].items():
            ph = row.get("phases_ms") if row.get("ok") else None
            if ph:
                cells = " ".join(f"{ph[k]:>8.1f}" if k in ph else f"{'-':>8}" for k in BREAKDOWN)
                lines.append(f"{s['target'][:40]:<40} {name[:28]:<28} {cells}")
    if not lines:
        return []
    head = f"{'dumper phases, ms':<40} {'':<28} " + " ".join(f"{k[:8]:>8}" for k in BREAKDOWN)
    return ["", "frozen-time breakdown (freeze .. other add up to the frozen time; prepare, rounds, write run "
            "unfrozen; freezing comes before it; snapshot: the fork of --copy fork, whose pages are read during "
            "write; reap: the second stop that reaps its child, counted in the frozen column above)",
            head, "-" * len(head), *lines]

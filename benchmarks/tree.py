"""Trees with shared memory: ``dumper dump`` against ``criu dump -t`` of the
same pre-fork server, in the same run (issue 11).

Target (``tests/targets/shmem_targets.c prefork``, built with gcc at run
time): a parent with a ``SHARED_MIB`` MiB MAP_SHARED|MAP_ANONYMOUS buffer, a
2 MiB memfd, ``INHERITED_MIB`` MiB of private memory its 4 forked workers
inherit and never write, and ``PRIVATE_MIB`` MiB of private data per worker;
every page random (zstd cannot shrink it: the sizes show what is stored,
not how well it compresses). Each process bumps a counter every 2 ms.

Dumps of the running tree, each ``BENCH_REPEAT`` times (medians,
:func:`benchmarks._peertools.median_of`): ``criu dump -t ROOT
--leave-running --shell-job``, ``dumper dump`` (zstd; the
shared buffer and the inherited memory stored once) and ``dumper dump
--no-compress`` (CRIU's layout: inherited memory per process, as CRIU).
Reported: frozen time (CRIU's stats-dump ``frozen_time``, dumper's
``frozen_ns``, with its phases), wall time, image bytes, and ratios to
CRIU's.

Then the O(populated) check: a 1 TiB MAP_SHARED|MAP_NORESERVE anonymous
mapping with 1000 pages written, dumped by ``dumper dump``: wall and frozen
time. (``criu dump`` of it reads the object's size page by page; not timed.)

``BENCH_TMP`` picks the directory for the images (default /dev/shm: the
tools are measured, not the disk).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dumper.cli.options import human_bytes

from ._peertools import find_criu, median_of, run_criu, run_dumper, then_cont
from ._util import ROOT, outdir

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
SHARED_MIB = int(os.environ.get("BENCH_TREE_SHARED_MIB", "1024"))
INHERITED_MIB = int(os.environ.get("BENCH_TREE_INHERITED_MIB", "64"))
PRIVATE_MIB = int(os.environ.get("BENCH_TREE_PRIVATE_MIB", "16"))
WORKERS = 4


def _support():
    sys.path.insert(0, str(ROOT / "tests"))
    from targets import restore_support

    return restore_support


def _build(tmp: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc is not installed")
    out = tmp / "shmem_targets"
    r = subprocess.run([gcc, "-O2", "-o", str(out), str(ROOT / "tests" / "targets" / "shmem_targets.c")],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-1000:])
    return out


def _kill_tree(sup, t) -> None:
    try:
        os.killpg(t.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    t.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sup.reap_zombie_children() is not None:
        if not any(os.path.exists(f"/proc/{p}") for p in getattr(t, "pids", [])):
            break
        time.sleep(0.05)


def _prefork(sup, binary: Path, criu: str | None, tmp: Path) -> dict:
    t = sup.Target([str(binary)], tmp, "prefork",
                   args=("prefork", str(SHARED_MIB), str(INHERITED_MIB), str(PRIVATE_MIB), str(WORKERS)),
                   timeout=300)
    info = json.loads(t.output().splitlines()[0])
    t.pids = [t.pid, *(w["pid"] for w in info["workers"])]
    tools = {
        "criu dump -t": lambda d: then_cont(t.pid, run_criu(criu, t.pid, d, "--leave-running")),
        "dumper dump": lambda d: then_cont(t.pid, run_dumper(t.pid, d)),
        "dumper dump --no-compress": lambda d: then_cont(t.pid, run_dumper(t.pid, d, compress=False)),
    }
    if not criu:
        del tools["criu dump -t"]
    try:
        time.sleep(0.3)
        dumps = {name: median_of(REPEAT, measure, tmp / name.replace(" ", "_")) for name, measure in tools.items()}
    finally:
        _kill_tree(sup, t)
    raw = (SHARED_MIB + 2 + INHERITED_MIB + WORKERS * PRIVATE_MIB) << 20
    return {"target": f"pre-fork server: {SHARED_MIB} MiB shared + 2 MiB memfd, {INHERITED_MIB} MiB inherited, "
                      f"{WORKERS} workers x {PRIVATE_MIB} MiB private",
            "distinct_bytes": raw, "dumps": dumps}


def _sparse(sup, binary: Path, tmp: Path) -> dict:
    t = sup.Target([str(binary)], tmp, "sparse", args=("sparse",))
    try:
        row = median_of(REPEAT, lambda d: run_dumper(t.pid, d), tmp / "sparse")
    finally:
        _kill_tree(sup, t)
    return {"target": "1 TiB MAP_SHARED|MAP_NORESERVE anonymous, 1000 pages written",
            "dumps": {"dumper dump": row}}


def run() -> dict:
    sup = _support()
    criu, _ = find_criu()
    sup.become_subreaper()
    with tempfile.TemporaryDirectory(dir=outdir(), prefix="tree-bench-") as tmp:
        tmp = Path(tmp)
        binary = _build(tmp)
        out = {"criu": criu, "sections": [_prefork(sup, binary, criu, tmp), _sparse(sup, binary, tmp)]}
    sup.reap_zombie_children()
    return out


def table(res: dict) -> list[str]:
    lines = []
    if not res.get("criu"):
        lines.append("(no CRIU found: dumper only; build it with .ci/build-criu)")
    for sec in res["sections"]:
        lines.append(sec["target"])
        lines.append(f"  {'tool':<28} {'frozen':>10} {'wall':>10} {'image':>12}")
        dumps = sec["dumps"]
        for name, r in dumps.items():
            if not r.get("ok"):
                lines.append(f"  {name:<28} FAILED: {r.get('error')}")
                continue
            lines.append(f"  {name:<28} {r['frozen_s'] * 1e3:>8.1f}ms {r['wall_s']:>9.2f}s "
                         f"{human_bytes(r['bytes']):>12}")
            frozen = {k: v for k, v in r.get("phases_ms", {}).items()
                      if k not in ("prepare", "write", "rounds", "freezing") and v >= 0.5}
            if frozen:
                lines.append("    frozen ms: " + ", ".join(f"{k} {v:.0f}" for k, v in frozen.items()))
        ref = dumps.get("criu dump -t")
        if ref and ref.get("ok"):
            for name, r in dumps.items():
                if name.startswith("criu") or not r.get("ok"):
                    continue
                lines.append(f"  {name} / criu dump -t: frozen {r['frozen_s'] / ref['frozen_s']:.2f}x, "
                             f"wall {r['wall_s'] / ref['wall_s']:.2f}x, image {r['bytes'] / ref['bytes']:.2f}x")
        if "distinct_bytes" in sec:
            for name, r in dumps.items():
                if r.get("ok"):
                    lines.append(f"  {name}: image / distinct memory = {r['bytes'] / sec['distinct_bytes']:.2f}x")
    return lines

"""Trees with shared memory: ``dumper dump`` against ``criu dump -t`` of the
same pre-fork server, in the same run (issue 11).

Target (``tests/targets/shmem_targets.c prefork``, built with gcc at run
time): a parent with a ``SHARED_MIB`` MiB MAP_SHARED|MAP_ANONYMOUS buffer, a
2 MiB memfd, ``INHERITED_MIB`` MiB of private memory its 4 forked workers
inherit and never write, and ``PRIVATE_MIB`` MiB of private data per worker;
every page random (zstd cannot shrink it: the sizes show what is stored,
not how well it compresses). Each process bumps a counter every 2 ms.

Dumps of the running tree, each ``BENCH_REPEAT`` times (median by wall
time): ``criu dump -t ROOT --leave-running``, ``dumper dump`` (zstd; the
shared buffer and the inherited memory stored once) and ``dumper dump
--no-compress`` (CRIU's layout: inherited memory per process, as CRIU).
Reported: frozen time (CRIU's stats-dump ``frozen_time``, dumper's
``frozen_ns``), wall time, image bytes, and ratios to CRIU's.

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

ROOT = Path(__file__).resolve().parents[1]
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
SHARED_MIB = int(os.environ.get("BENCH_TREE_SHARED_MIB", "1024"))
INHERITED_MIB = int(os.environ.get("BENCH_TREE_INHERITED_MIB", "64"))
PRIVATE_MIB = int(os.environ.get("BENCH_TREE_PRIVATE_MIB", "16"))
WORKERS = 4


def _support():
    sys.path.insert(0, str(ROOT / "tests"))
    from targets import restore_support

    return restore_support


def _outdir() -> str | None:
    return os.environ.get("BENCH_TMP") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _median(rows: list[dict]) -> dict:
    bad = [r for r in rows if not r.get("ok")]
    if bad:
        return bad[0]
    rows = sorted(rows, key=lambda r: r["wall_s"])
    best = dict(rows[len(rows) // 2])
    best["walls_s"] = [r["wall_s"] for r in rows]
    return best


def _criu_dump(criu: str, pid: int, dest: Path) -> dict:
    from dumper.image import read_image

    dest.mkdir()
    log = dest.with_name(dest.name + ".log")
    t0 = time.perf_counter()
    r = subprocess.run([criu, "dump", "-t", str(pid), "-D", str(dest), "--leave-running", "-o", str(log)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln][-2:]
        return {"ok": False, "error": f"criu dump exit {r.returncode}: {tail}"}
    _, (st,) = read_image(dest / "stats-dump")
    return {"ok": True, "wall_s": wall, "frozen_s": st.dump.frozen_time / 1e6, "bytes": _dir_bytes(dest)}


def _dumper_dump(pid: int, dest: Path, **kw) -> dict:
    from dumper.dump import dump

    t0 = time.perf_counter()
    r = dump(pid, dest, **kw)
    return {"ok": True, "wall_s": time.perf_counter() - t0, "frozen_s": r.frozen_ns / 1e9,
            "bytes": _dir_bytes(dest), "processes": len(r.pids)}


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
    rows: dict[str, list] = {"dumper dump": [], "dumper dump --no-compress": []}
    if criu:
        rows = {"criu dump -t": [], **rows}
    try:
        time.sleep(0.3)
        for i in range(REPEAT):
            for name in rows:
                d = tmp / f"{name.replace(' ', '_')}-{i}"
                if name.startswith("criu"):
                    row = _criu_dump(criu, t.pid, d)
                else:
                    row = _dumper_dump(t.pid, d, compress=not name.endswith("--no-compress"))
                rows[name].append(row)
                os.killpg(t.pid, signal.SIGCONT)  # every tool leaves it running; make sure
                shutil.rmtree(d, ignore_errors=True)
    finally:
        _kill_tree(sup, t)
    raw = (SHARED_MIB + 2 + INHERITED_MIB + WORKERS * PRIVATE_MIB) << 20
    return {"target": f"pre-fork server: {SHARED_MIB} MiB shared + 2 MiB memfd, {INHERITED_MIB} MiB inherited, "
                      f"{WORKERS} workers x {PRIVATE_MIB} MiB private",
            "distinct_bytes": raw, "dumps": {k: _median(v) for k, v in rows.items()}}


def _sparse(sup, binary: Path, tmp: Path) -> dict:
    t = sup.Target([str(binary)], tmp, "sparse", args=("sparse",))
    try:
        runs = []
        for i in range(REPEAT):
            d = tmp / f"sparse-{i}"
            runs.append(_dumper_dump(t.pid, d))
            shutil.rmtree(d, ignore_errors=True)
    finally:
        _kill_tree(sup, t)
    return {"target": "1 TiB MAP_SHARED|MAP_NORESERVE anonymous, 1000 pages written", "dumps": {"dumper dump":
                                                                                               _median(runs)}}


def run() -> dict:
    sup = _support()
    from dumper.errors import CriuNotFound
    from dumper.restore.criu import find_criu

    try:
        criu = find_criu().path
    except CriuNotFound:
        criu = None
    sup.become_subreaper()
    with tempfile.TemporaryDirectory(dir=_outdir(), prefix="tree-bench-") as tmp:
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
                         f"{r['bytes'] / 2**20:>9.1f}MiB")
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

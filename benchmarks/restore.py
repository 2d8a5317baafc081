"""Restore: ``dumper restore`` against ``criu restore``, and the dumps they
restore from, measured on the same targets in the same run (issue 10).

Two targets (C, built with gcc at run time): a 1 GiB dense process (half
random, half text; ``tests/targets/restore_dense.c``) and the AddressSanitizer
counter (``restore_asan.c``: a 14 TiB shadow reservation, few pages).

For each target:

* dumps of the running target, each ``BENCH_REPEAT`` times (median shown):
  ``criu dump --leave-running``, ``dumper dump`` (zstd) and ``dumper dump
  --no-compress``; wall time, frozen time (CRIU's stats-dump
  ``frozen_time``, dumper's ``frozen_ns``) and bytes;
* then, the target killed and reaped (restore needs its pid), restores
  from those sets, each restored process killed and reaped before the next:
  ``criu restore -d`` of CRIU's set (the reference), ``dumper restore`` of
  CRIU's set (handed to CRIU as it is), ``dumper restore`` of CRIU's set
  with its pages rewritten as dumper's ``pages-N.zst.img`` (the zstd path:
  raw pages written back, then CRIU), and ``dumper restore`` of dumper's own
  dumps (failing, with the reason, while the dump writes no process state).

``dumper restore`` is timed through the Python API (no interpreter start),
split into preparing (checks and raw pages) and CRIU's run. ``BENCH_TMP``
picks the directory for images and raw pages (default /dev/shm, so the
tools rather than the disk are measured).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DENSE_MIB = 1024
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def _support():
    sys.path.insert(0, str(ROOT / "tests"))
    from targets import restore_support

    return restore_support


def _outdir() -> str | None:
    return os.environ.get("BENCH_TMP") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _median(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("ok")]
    if len(ok) < len(rows):
        return next(r for r in rows if not r.get("ok"))
    ok.sort(key=lambda r: r["wall_s"])
    best = dict(ok[len(ok) // 2])
    best["walls_s"] = [r["wall_s"] for r in ok]
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
        return {"ok": False, "error": f"criu dump exit {r.returncode}"}
    _, (st,) = read_image(dest / "stats-dump")
    return {"ok": True, "wall_s": wall, "frozen_s": st.dump.frozen_time / 1e6, "bytes": _dir_bytes(dest)}


def _dumper_dump(pid: int, dest: Path, **kw) -> dict:
    from dumper.dump import dump

    t0 = time.perf_counter()
    r = dump(pid, dest, **kw)
    return {"ok": True, "wall_s": time.perf_counter() - t0, "frozen_s": r.frozen_ns / 1e9,
            "bytes": _dir_bytes(dest)}


def _dumps(sup, criu: str, pid: int, tmp: Path) -> tuple[dict, dict[str, Path]]:
    """Each dump REPEAT times; the last output of each kind is kept."""
    rows: dict[str, list] = {"criu dump": [], "dumper dump": [], "dumper dump --no-compress": []}
    kept: dict[str, Path] = {}
    for i in range(REPEAT):
        last = i == REPEAT - 1
        for name, fn in (("criu dump", lambda d: _criu_dump(criu, pid, d)),
                         ("dumper dump", lambda d: _dumper_dump(pid, d)),
                         ("dumper dump --no-compress", lambda d: _dumper_dump(pid, d, compress=False))):
            d = tmp / f"{name.replace(' ', '_')}-{i}"
            rows[name].append(fn(d))
            os.kill(pid, signal.SIGCONT)  # both leave it running; make sure
            if last:
                kept[name] = d
            else:
                shutil.rmtree(d, ignore_errors=True)
    return {k: _median(v) for k, v in rows.items()}, kept


def _plain_criu_restore(sup, criu: str, images: Path, work: Path) -> dict:
    work.mkdir(exist_ok=True)
    pidfile = work / "pid"
    pidfile.unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run([criu, "restore", "-D", str(images), "-d", "-o", str(work / "restore.log"),
                        "--pidfile", str(pidfile)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sup.reap_zombie_children()
        return {"ok": False, "wall_s": wall, "error": f"criu restore exit {r.returncode}"}
    return {"ok": True, "wall_s": wall, "pid": int(pidfile.read_text())}


def _dumper_restore(sup, images: Path, tmp: Path) -> dict:
    from dumper.errors import DumperError
    from dumper.restore import restore

    try:
        r = restore(images, tmp_dir=tmp)
    except DumperError as err:
        sup.reap_zombie_children()
        return {"ok": False, "error": str(err).replace(str(images), "DIR")[:160]}
    return {"ok": True, "wall_s": r.total_s, "prepare_s": r.prepare_s, "criu_s": r.criu_s, "pid": r.pid,
            "pages_bytes": r.pages_bytes}


def _restores(sup, criu: str, kept: dict[str, Path], tmp: Path) -> dict:
    zstd = tmp / "criu-set-as-zstd"
    sup.to_zstd(kept["criu dump"], zstd, frame_pages=64)
    plans = [
        ("criu restore (CRIU's set)", lambda: _plain_criu_restore(sup, criu, kept["criu dump"], tmp / "plain")),
        ("dumper restore (CRIU's set, raw)", lambda: _dumper_restore(sup, kept["criu dump"], tmp)),
        ("dumper restore (CRIU's set, zstd)", lambda: _dumper_restore(sup, zstd, tmp)),
        ("dumper restore (dumper dump)", lambda: _dumper_restore(sup, kept["dumper dump"], tmp)),
        ("dumper restore (dumper dump --no-compress)",
         lambda: _dumper_restore(sup, kept["dumper dump --no-compress"], tmp)),
    ]
    out = {}
    for name, fn in plans:
        runs = []
        for _ in range(REPEAT):
            row = fn()
            if row.get("pid"):
                sup.kill_restored(row["pid"])
            runs.append(row)
            if not row.get("ok"):
                break
        out[name] = _median(runs)
    shutil.rmtree(zstd, ignore_errors=True)
    return out


def _target(sup, bins: dict, name: str, tmp: Path) -> tuple[object, str]:
    if name == "dense":
        t = sup.Target([str(bins["dense"])], tmp, "dense", args=(str(DENSE_MIB),), timeout=300)
        return t, f"dense {DENSE_MIB} MiB"
    t = sup.Target([str(bins["asan"])], tmp, "asan")
    return t, "ASan counter (14 TiB shadow)"


def run() -> dict:
    sup = _support()
    from dumper.errors import CriuNotFound
    from dumper.restore.criu import find_criu

    try:
        criu = find_criu()
    except CriuNotFound as err:
        return {"skipped": str(err), "sections": []}
    sup.become_subreaper()
    sections = []
    with tempfile.TemporaryDirectory(dir=_outdir(), prefix="restore-bench-") as tmp:
        tmp = Path(tmp)
        bins = sup.build_targets(tmp)
        for which in ("dense", "asan"):
            work = tmp / which
            work.mkdir()
            t, label = _target(sup, bins, which, work)
            try:
                time.sleep(0.3)
                dumps, kept = _dumps(sup, criu.path, t.pid, work)
            finally:
                t.close()  # kill and reap: restore needs the pid
            restores = _restores(sup, criu.path, kept, work)
            for d in kept.values():
                shutil.rmtree(d, ignore_errors=True)
            sections.append({"target": label, "dumps": dumps, "restores": restores})
            sup.reap_zombie_children()
    return {"criu": f"CRIU {criu.version_text} ({criu.path})", "outdir": _outdir(), "repeat": REPEAT,
            "sections": sections}


def _f(v, scale=1.0, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v * scale)


def table(r: dict) -> list[str]:
    if r.get("skipped"):
        return [f"restore: skipped: {r['skipped']}"]
    out = [f"restore: {r['criu']}; images in {r['outdir']}; median of {r['repeat']} runs",
           f"{'target':<30} {'tool':<44} {'wall s':>8} {'frozen ms':>10} {'MiB':>8} {'wall/criu':>9}  note"]
    out.append("-" * len(out[-1]))
    for s in r["sections"]:
        target = s["target"]
        base = s["dumps"]["criu dump"].get("wall_s")
        for name, row in s["dumps"].items():
            ratio = row["wall_s"] / base if row.get("ok") and base else None
            note = "" if row.get("ok") else f"FAILED: {row.get('error')}"
            out.append(f"{target:<30} {name:<44} {_f(row.get('wall_s')):>8} {_f(row.get('frozen_s'), 1e3, '{:.1f}'):>10} "
                       f"{_f(row.get('bytes'), 2**-20, '{:.1f}'):>8} {_f(ratio, fmt='{:.2f}x'):>9}  {note}")
            target = ""
        base = s["restores"]["criu restore (CRIU's set)"].get("wall_s")
        for name, row in s["restores"].items():
            ratio = row["wall_s"] / base if row.get("ok") and base else None
            if row.get("ok"):
                note = (f"prepare {row['prepare_s'] * 1e3:.0f} ms (raw pages {row['pages_bytes'] / 2**20:.0f} MiB), "
                        f"criu {row['criu_s'] * 1e3:.0f} ms" if "prepare_s" in row else "")
            else:
                note = f"FAILED: {row.get('error')}"
            out.append(f"{'':<30} {name:<44} {_f(row.get('wall_s')):>8} {'':>10} {'':>8} {_f(ratio, fmt='{:.2f}x'):>9}  {note}")
    return out


if __name__ == "__main__":
    import json

    res = run()
    print("\n".join(table(res)))
    json.dump(res, sys.stdout if len(sys.argv) < 2 else open(sys.argv[1], "w"), indent=2)

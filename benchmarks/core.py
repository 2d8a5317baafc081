"""ELF cores of the same processes in the same run: dumper against gdb's
``gcore`` and CRIU's ``criu-coredump``.

Targets: a small C program (tests/targets/elfcore/threads.c: every tool
finishes, and gdb's reading of each core can be compared), the
AddressSanitizer program (tests/targets/elfcore/asan.c, 64 MiB of heap
written; ASan reserves ~16 TiB of shadow, MADV_DONTDUMP), a 1 GiB dense
process (benchmarks/incremental.py's target), and a 16 TiB MAP_NORESERVE
reservation with 1000 touched pages.

Tools, each on the running target:

- ``dumper core PID`` (a separate command: freeze, dump into a temporary
  checkpoint, thaw, write the core): wall time of the command, and the core
  write alone as the command reports it;
- ``dumper export --format elf`` of a checkpoint made beforehand (zstd):
  wall time of the core write, in process;
- ``gcore -o FILE PID``: stopped after ``GCORE_MAX_S`` (60 s) or once it has
  written ``GCORE_MAX_BYTES`` (16 GiB, a guard for the disk); whether it
  finished, what it wrote, and how long the target was stopped (sampled in
  /proc/PID/stat: gdb holds it stopped while it writes);
- ``criu dump --leave-running`` then CRIU's ``coredump/coredump`` on those
  images (pycriu built in a scratch directory from the CRIU tree with
  Debian's ``protoc``, run by /usr/bin/python3 with python3-protobuf: pycriu
  does not run on protobuf 7; never kept), stopped after
  ``CRIU_COREDUMP_MAX_S`` or when it passes ``CRIU_COREDUMP_MAX_AS`` of
  address space (it builds each VMA in memory).

Per tool: wall seconds, the core's apparent and allocated size (st_size,
st_blocks * 512), and how gdb reads a finished core: backtrace frames with a
function name against all frames. Ratios are to ``dumper core`` of the same
target in this run. Output under ``BENCH_TMP`` (default: the system's
temporary directory, on disk: gcore writes whole reservations).

``python -m benchmarks.core`` prints the table and writes
benchmarks/results/core.json; ``python -m benchmarks core`` runs it with the
others.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._util import ROOT, spawn_sparse, stop
from .peers import _spawn_dense, _StopSampler, find_gcore

GCORE_MAX_S = float(os.environ.get("BENCH_GCORE_S", "60"))
GCORE_MAX_BYTES = int(os.environ.get("BENCH_GCORE_BYTES", str(16 << 30)))  # a disk guard: 60 s stops it first
CRIU_COREDUMP_MAX_S = float(os.environ.get("BENCH_CRIU_COREDUMP_S", "120"))
CRIU_COREDUMP_MAX_AS = 6 << 30
ASAN_FILL_MIB = 64
DENSE_MIB = 1024
SPARSE_BYTES = 16 << 40
SPARSE_TOUCHED = 1000
GDB_ENV = {**os.environ, "DEBUGINFOD_URLS": "", "LC_ALL": "C"}


def _sizes(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return 0, 0
    return st.st_size, st.st_blocks * 512


def _gdb_frames(prog: str, core: Path) -> dict:
    """Backtrace frames of the core's first thread: named ones and all."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return {}
    try:
        r = subprocess.run([gdb, "-nx", "-batch", "-iex", "set debuginfod enabled off", "-ex", "echo MARK\\n",
                            "-ex", "bt", prog, str(core)], capture_output=True, text=True, timeout=300, env=GDB_ENV)
    except subprocess.TimeoutExpired:
        return {"gdb": "no answer in 300 s"}
    frames = [ln for ln in r.stdout.split("MARK\n", 1)[-1].splitlines() if re.match(r"#\d+ ", ln)]
    return {"frames": len(frames), "named_frames": sum(" ?? (" not in f for f in frames)}


# --- the tools -------------------------------------------------------------------


def run_dumper_core(pid: int, out: Path, prog: str) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dumper", "core", str(pid), "-o", str(out), "--json"],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode:
        return {"ok": False, "wall_s": wall, "error": r.stderr.strip()[-200:]}
    res = json.loads(r.stdout)
    apparent, allocated = _sizes(out)
    return {"ok": True, "finished": True, "wall_s": wall, "write_s": res["core"]["elapsed_ns"] / 1e9,
            "frozen_s": res["frozen_ns"] / 1e9, "apparent": apparent, "allocated": allocated,
            "data_bytes": res["core"]["data_bytes"], **_gdb_frames(prog, out)}


def run_dumper_export(pid: int, tmp: Path, prog: str) -> dict:
    from dumper.dump import dump
    from dumper.export.elf import export_elf

    ck = tmp / "ck"
    dump(pid, ck)
    t0 = time.perf_counter()
    res = export_elf(ck, tmp / "core.export")
    wall = time.perf_counter() - t0
    apparent, allocated = _sizes(tmp / "core.export")
    shutil.rmtree(ck, ignore_errors=True)
    return {"ok": True, "finished": True, "wall_s": wall, "apparent": apparent, "allocated": allocated,
            "checkpoint_pages": res.checkpoint_pages, **_gdb_frames(prog, tmp / "core.export")}


def _killpg(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def run_gcore(gcore: str, pid: int, out: Path, prog: str) -> dict:
    core = out.with_name(f"{out.name}.{pid}")
    t0 = time.perf_counter()
    with _StopSampler(pid) as sampler:  # gdb holds the target stopped while it writes
        p = subprocess.Popen([gcore, "-o", str(out), str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True, env=GDB_ENV)
        stopped = None
        while p.poll() is None:
            time.sleep(0.05)
            apparent, _ = _sizes(core)
            elapsed = time.perf_counter() - t0
            if elapsed > GCORE_MAX_S or apparent > GCORE_MAX_BYTES:
                stopped = f"stopped after {elapsed:.0f} s, {apparent / 2**30:.2f} GiB written"
                _killpg(p)
                break
        err = p.stderr.read()
        p.stderr.close()
    wall = time.perf_counter() - t0
    _cont(pid)
    apparent, allocated = _sizes(core)
    row = {"wall_s": wall, "apparent": apparent, "allocated": allocated, "finished": stopped is None,
           "frozen_s": sampler.seconds}
    if stopped:
        return {**row, "ok": True, "note": stopped}
    if p.returncode or not core.exists():
        return {**row, "ok": False, "error": (err or f"exit {p.returncode}").strip()[-200:]}
    return {**row, "ok": True, **_gdb_frames(prog, core)}


def find_criu() -> Path | None:
    for cand in (os.environ.get("DUMPER_CRIU"), ROOT / "build" / "criu-4.2" / "criu" / "criu",
                 Path("/work/main/build/criu-4.2/criu/criu"), shutil.which("criu")):
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def build_pycriu(criu: Path, scratch: Path) -> tuple[Path | None, str]:
    """CRIU's coredump tool runnable from ``scratch`` (pycriu generated
    there): (directory holding coredump.py, note)."""
    tree = criu.resolve().parent.parent
    if not (tree / "coredump" / "criu_coredump").is_dir() or not (tree / "lib" / "pycriu").is_dir():
        return None, f"no coredump/ and lib/pycriu beside {criu}: criu-coredump skipped"
    protoc, py = shutil.which("protoc"), "/usr/bin/python3"
    ok = protoc and os.access(py, os.X_OK) and subprocess.run(
        [py, "-c", "import google.protobuf"], capture_output=True).returncode == 0
    if not ok:
        return None, "criu-coredump needs protoc and /usr/bin/python3 with python3-protobuf: skipped"
    d = scratch / "criu-coredump"
    shutil.copytree(tree / "lib" / "pycriu", d / "pycriu")
    shutil.copytree(tree / "coredump" / "criu_coredump", d / "criu_coredump")
    shutil.copy(tree / "coredump" / "coredump", d / "coredump.py")
    protos = sorted(str(p) for p in (tree / "images").glob("*.proto") if p.name != "rpc.proto")
    for outdir, files in ((d / "pycriu" / "images", protos), (d / "pycriu", [str(tree / "images" / "rpc.proto")])):
        subprocess.run([protoc, f"-I{tree / 'images'}", "-I/usr/include", f"--python_out={outdir}", *files],
                       check=True)
    subprocess.run([py, str(tree / "scripts" / "magic-gen.py"), str(tree / "criu" / "include" / "magic.h"),
                    str(d / "pycriu" / "images" / "magic.py")], check=True)
    mods = sorted(p.stem for p in (d / "pycriu" / "images").glob("*_pb2.py") if p.stem != "opts_pb2")
    (d / "pycriu" / "images" / "pb.py").write_text("".join(f"from .{m} import *\n" for m in mods))
    (d / "pycriu" / "version.py").write_text('__version__ = "4.2"\n')
    return d, f"criu-coredump from {tree} (pycriu built in a scratch directory)"


def _limit_as() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CRIU_COREDUMP_MAX_AS, CRIU_COREDUMP_MAX_AS))


def run_criu_coredump(criu: Path, tool: Path, pid: int, tmp: Path, prog: str) -> dict:
    images, out = tmp / "criu-images", tmp / "criu-cores"
    images.mkdir()
    out.mkdir()
    t0 = time.perf_counter()
    r = subprocess.run([str(criu), "dump", "-t", str(pid), "-D", str(images), "--shell-job", "--leave-running",
                        "-o", "dump.log"], capture_output=True, text=True, timeout=600)
    dump_s = time.perf_counter() - t0
    _cont(pid)
    if r.returncode:
        log = (images / "dump.log").read_text(errors="replace") if (images / "dump.log").exists() else r.stderr
        errs = [ln for ln in log.splitlines() if "Error" in ln]
        return {"ok": False, "wall_s": dump_s, "error": "criu dump: " + (errs[0] if errs else log[-200:])}
    t1 = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/python3", str(tool / "coredump.py"), "-i", str(images), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tool,
                         env={**os.environ, "PYTHONPATH": str(tool)}, preexec_fn=_limit_as, start_new_session=True)
    stopped = None
    try:
        err = p.communicate(timeout=CRIU_COREDUMP_MAX_S)[1]
    except subprocess.TimeoutExpired:
        _killpg(p)
        err = ""
        stopped = f"stopped after {CRIU_COREDUMP_MAX_S:.0f} s (criu dump took {dump_s:.1f} s)"
    wall = time.perf_counter() - t1
    core = out / f"core.{pid}"
    apparent, allocated = _sizes(core)
    row = {"wall_s": dump_s + wall, "criu_dump_s": dump_s, "coredump_s": wall, "apparent": apparent,
           "allocated": allocated, "finished": stopped is None and p.returncode == 0}
    if stopped:
        return {**row, "ok": True, "note": stopped}
    if p.returncode or not core.exists():
        last = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
        why = "MemoryError (address space limited to " f"{CRIU_COREDUMP_MAX_AS >> 30} GiB)" \
            if "MemoryError" in (err or "") else (last[-1] if last else f"exit {p.returncode}")
        return {**row, "ok": False, "error": f"criu-coredump: {why}"[-200:]}
    return {**row, "ok": True, **_gdb_frames(prog, core)}


def _cont(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# --- targets -----------------------------------------------------------------------


def _spawn_asan(tmp: Path) -> tuple[subprocess.Popen | None, str, str]:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "", "gcc not installed: the ASan target is skipped"
    prog = tmp / "asan"
    r = subprocess.run([gcc, "-g", "-O0", "-fsanitize=address", "-o", str(prog),
                        str(ROOT / "tests" / "targets" / "elfcore" / "asan.c")], capture_output=True, text=True)
    if r.returncode:
        return None, "", f"gcc -fsanitize=address failed: {r.stderr.strip()[-200:]}"
    p = subprocess.Popen([str(prog), str(ASAN_FILL_MIB)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    if not p.stdout.readline().startswith("READY"):
        stop(p)
        return None, "", "the ASan target did not start"
    return p, str(prog), ""


def _spawn_threads(tmp: Path) -> tuple[subprocess.Popen | None, str, str]:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "", "gcc not installed: the small C target is skipped"
    prog = tmp / "threads"
    subprocess.run([gcc, "-g", "-O0", "-pthread", "-o", str(prog),
                    str(ROOT / "tests" / "targets" / "elfcore" / "threads.c")], check=True)
    p = subprocess.Popen([str(prog)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    if not p.stdout.readline().startswith("READY"):
        stop(p)
        return None, "", "the small C target did not start"
    return p, str(prog), ""


def _targets(tmp: Path):
    """(label, spawn) pairs; spawn() -> (Popen or None, program for gdb, note)."""
    py = os.path.realpath(sys.executable)
    yield "small C program, 5 threads", lambda: _spawn_threads(tmp)
    yield f"asan ({ASAN_FILL_MIB} MiB heap)", lambda: _spawn_asan(tmp)
    yield f"dense {DENSE_MIB} MiB", lambda: (_spawn_dense(DENSE_MIB), py, "")
    yield f"sparse {SPARSE_BYTES >> 40} TiB, {SPARSE_TOUCHED} pages", \
        lambda: (spawn_sparse(SPARSE_BYTES, SPARSE_TOUCHED), py, "")


def run() -> dict:
    base = Path(tempfile.mkdtemp(prefix="bench-core-", dir=os.environ.get("BENCH_TMP")))
    gcore, gcore_note = find_gcore()
    criu = find_criu()
    tool, criu_note = build_pycriu(criu, base) if criu else (None, "criu not found: criu-coredump skipped")
    sections = []
    try:
        for i, (label, spawn) in enumerate(_targets(base)):
            tmp = base / f"t{i}"
            tmp.mkdir()
            p, prog, note = spawn()
            if p is None:
                sections.append({"target": label, "rows": {}, "notes": [note]})
                continue
            rows: dict[str, dict] = {}
            try:
                rows["dumper core"] = run_dumper_core(p.pid, tmp / "core.dumper", prog)
                rows["dumper export --format elf"] = run_dumper_export(p.pid, tmp, prog)
                if gcore:
                    rows["gcore"] = run_gcore(gcore, p.pid, tmp / "core.gcore", prog)
                if tool:
                    rows["criu dump + criu-coredump"] = run_criu_coredump(criu, tool, p.pid, tmp, prog)
            finally:
                stop(p)
                shutil.rmtree(tmp, ignore_errors=True)
            ref = rows["dumper core"]
            for row in rows.values():
                for k in ("wall_s", "apparent", "allocated"):
                    if row.get(k) is not None and ref.get(k):
                        row[f"{k}_ratio"] = row[k] / ref[k]
            sections.append({"target": label, "rows": rows, "notes": []})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"peers": {"gcore": gcore_note, "criu_coredump": criu_note}, "outdir": str(base),
            "limits": {"gcore_s": GCORE_MAX_S, "gcore_bytes": GCORE_MAX_BYTES,
                       "criu_coredump_s": CRIU_COREDUMP_MAX_S, "criu_coredump_as": CRIU_COREDUMP_MAX_AS},
            "sections": sections}


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def table(r: dict) -> list[str]:
    head = (f"{'target':<28} {'tool':<27} {'done':>4} {'wall s':>8} {'apparent':>9} {'allocated':>9} "
            f"{'wall/d':>8} {'alloc/d':>8} {'gdb frames':>10}  note")
    out = [f"peers: {r['peers']['gcore']}; {r['peers']['criu_coredump']}",
           f"(limits: gcore {r['limits']['gcore_s']:.0f} s or {_size(r['limits']['gcore_bytes'])}; criu-coredump "
           f"{r['limits']['criu_coredump_s']:.0f} s, {_size(r['limits']['criu_coredump_as'])} of address space; "
           "ratios to `dumper core` of the same target, this run; gdb frames: named/all of the first thread)",
           head, "-" * len(head)]
    for s in r["sections"]:
        target = s["target"]
        for name, row in s["rows"].items():
            frames = f"{row['named_frames']}/{row['frames']}" if "frames" in row else "-"
            note = row.get("note", "") if row.get("ok") else f"FAILED: {row.get('error', '?')}"
            if name == "dumper core" and row.get("ok"):
                note = f"core write {row['write_s']:.2f} s, target frozen {row['frozen_s'] * 1e3:.0f} ms"
            elif name == "gcore" and row.get("frozen_s") is not None:
                note = "; ".join(x for x in (f"target stopped {row['frozen_s']:.1f} s", note) if x)
            wall = f"{row['wall_s']:.2f}" if row.get("wall_s") is not None else "-"
            ratio = lambda k: f"{row[k]:.2f}x" if row.get(k) is not None else "-"  # noqa: E731
            out.append(f"{target:<28} {name:<27} {'yes' if row.get('finished') else 'no':>4} {wall:>8} "
                       f"{_size(row.get('apparent')):>9} {_size(row.get('allocated')):>9} {ratio('wall_s_ratio'):>8} "
                       f"{ratio('allocated_ratio'):>8} {frames:>10}  {note}")
            target = ""
        for note in s.get("notes", []):
            out.append(f"{s['target']:<28} {note}")
    return out


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.core", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "core.json"))
    args = ap.parse_args(argv)
    res = {"kernel": os.uname().release, "cpus": os.cpu_count(), "time": time.time(), "core": run()}
    print("\n".join(table(res["core"])))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

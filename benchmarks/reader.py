"""Reading a 1 GiB checkpoint: show, mems, open, cat of one page, verify.

``examples/target.py --dense-mib 1024`` is dumped (zstd) into a directory on
disk (``BENCH_TMP``, default the system temp directory; not /dev/shm, so that
dropping the page cache makes reads really cold), then:

* ``dumper show DIR`` and ``dumper mems DIR`` (when that subcommand exists)
  as subprocesses, wall time, median of 5 warm runs and one cold run;
* ``open_checkpoint`` and ``read`` of one page in a fresh interpreter after
  ``echo 3 > /proc/sys/vm/drop_caches`` (imports excluded, and the whole
  ``dumper cat`` process for reference);
* ``Checkpoint.verify()`` (open included) against zstd itself: the same
  frames, already in memory, decompressed one after the other with one
  reused ``ZstdDecompressor`` (the baseline); best of 5 rounds, the three
  measurements taking turns so that load changes hit them alike.

Targets: show and mems < 0.5 s, cat of one page < 50 ms cold, verify
throughput >= 80% of the baseline.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._util import ROOT, run_child, stop

CAT_CHILD = """
import json, time
t0 = time.perf_counter()
from dumper import open_checkpoint
t1 = time.perf_counter()
ck = open_checkpoint({dir!r})
t2 = time.perf_counter()
data = ck.read(None, {addr}, 4096)
t3 = time.perf_counter()
assert len(data) == 4096
print(json.dumps({{"import_s": t1 - t0, "open_s": t2 - t1, "read_s": t3 - t2, "open_read_s": t3 - t1}}))
"""


def _drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()[-300:]}")
    return dt


def _cli_times(args: list[str], repeat: int = 5) -> dict:
    argv = [sys.executable, "-m", "dumper", *args]
    cold = _wall(argv) if _drop_caches() else None
    warm = [_wall(argv) for _ in range(repeat)]
    return {"cold_s": cold, "median_s": statistics.median(warm), "min_s": min(warm)}


def _zstd_pass(pages_path: str):
    """A function decompressing every frame of the file (read into memory
    once, here) sequentially with one reused decompressor; returns the
    bytes it produced."""
    import zstandard

    from dumper.image.reader import read_zpages_layout

    with open(pages_path, "rb") as f:
        lay = read_zpages_layout(f, pages_path)
        f.seek(lay.data_offset)
        blob = f.read(lay.index_offset - lay.data_offset)
    mv = memoryview(blob)
    frames = [(mv[o - lay.data_offset : o - lay.data_offset + s], lay.frame_len(i))
              for i, (o, s) in enumerate(zip(lay.offsets.tolist(), lay.sizes.tolist()))]
    dctx = zstandard.ZstdDecompressor()

    def decompress_all() -> int:
        return sum(len(dctx.decompress(frame, max_output_size=n)) for frame, n in frames)

    return decompress_all


def _verify_pass(ckdir: str, threads: int | None):
    from dumper import open_checkpoint

    def verify() -> None:
        with open_checkpoint(ckdir) as ck:
            problems = list(ck.verify(threads=threads))
        if problems:
            raise RuntimeError(f"verify found problems in a fresh checkpoint: {problems[:3]}")

    return verify


def _interleaved(fns: dict, rounds: int = 5) -> dict:
    """Best time of each function over ``rounds``, run in turn, so that a
    change in machine load hits all of them alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def run(dense_mib: int = 1024) -> dict:
    from dumper.cli import COMMANDS
    from dumper.dump import dump
    from dumper.image.checkpoint import open_checkpoint

    tmp_parent = os.environ.get("BENCH_TMP") or None
    p = subprocess.Popen([sys.executable, str(ROOT / "examples" / "target.py"), "--dense-mib", str(dense_mib),
                          "--threads", "1"], stdout=subprocess.PIPE, text=True)
    with tempfile.TemporaryDirectory(dir=tmp_parent, prefix="bench-reader-") as tmp:
        ckdir = str(Path(tmp) / "ck")
        try:
            assert p.stdout.readline().startswith("READY")
            res = dump(p.pid, ckdir)
        finally:
            stop(p)
        with open_checkpoint(ckdir) as ck:
            proc = ck.process()
            big = max(proc.entries, key=lambda e: e.nr_pages)
            addr = big.vaddr + (big.nr_pages // 2) * proc.page_size + 123  # mid-frame, unaligned
            pages_path = str(proc.pages_path)
            nr_frames = proc.pages.layout.nr_frames
        out: dict = {"dir_fs": tmp_parent or tempfile.gettempdir(), "raw_bytes": res.bytes_raw,
                     "image_bytes": res.bytes_written, "frames": nr_frames}

        out["show"] = _cli_times(["show", ckdir])
        out["mems"] = _cli_times(["mems", ckdir]) if "mems" in COMMANDS else None
        cold = _drop_caches()
        out["cat_cold"] = cold
        out["cat_child"] = run_child(CAT_CHILD.format(dir=ckdir, addr=addr))
        if cold:
            _drop_caches()
        out["cat_process_s"] = _wall([sys.executable, "-m", "dumper", "cat", ckdir, "--addr", hex(addr),
                                      "--size", "4096"])
        open_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            with open_checkpoint(ckdir):
                pass
            open_times.append(time.perf_counter() - t0)
        out["open_warm_s"] = statistics.median(open_times)

        zstd = _zstd_pass(pages_path)
        nbytes = zstd()
        threads = min(4, os.cpu_count() or 1)
        t = _interleaved({"zstd": zstd, "verify": _verify_pass(ckdir, None), "verify1": _verify_pass(ckdir, 1)})
        del zstd
        out["zstd_s"] = t["zstd"]
        out["zstd_gib_s"] = nbytes / t["zstd"] / 2**30
        out["verify_threads"] = threads
        out["verify_s"] = t["verify"]
        out["verify_1_thread_s"] = t["verify1"]
        out["verify_gib_s"] = nbytes / t["verify"] / 2**30
        out["verify_over_zstd"] = t["zstd"] / t["verify"]
        out["verify_1_thread_over_zstd"] = t["zstd"] / t["verify1"]
    return out


def table(r: dict) -> list[str]:
    def cli(name: str) -> str:
        t = r[name]
        if t is None:
            return f"  dumper {name:<24} (subcommand not present)"
        cold = f", cold {t['cold_s']:.3f} s" if t["cold_s"] is not None else ""
        ok = "ok" if t["median_s"] < 0.5 else "OVER"
        return f"  dumper {name:<24} {t['median_s']:7.3f} s median (min {t['min_s']:.3f}){cold}  [< 0.5 s: {ok}]"

    c = r["cat_child"]
    cold = "cold (caches dropped)" if r["cat_cold"] else "warm (could not drop caches)"
    return [
        f"reading a checkpoint of {r['raw_bytes'] / 2**30:.2f} GiB ({r['image_bytes'] / 2**20:.0f} MiB, "
        f"{r['frames']} zstd frames) in {r['dir_fs']}",
        cli("show"),
        cli("mems"),
        f"  open_checkpoint                 {r['open_warm_s'] * 1e3:7.1f} ms warm (median of 5)",
        f"  cat one page, {cold}: open {c['open_s'] * 1e3:.1f} ms + read {c['read_s'] * 1e3:.1f} ms = "
        f"{c['open_read_s'] * 1e3:.1f} ms  [< 50 ms: {'ok' if c['open_read_s'] < 0.05 else 'OVER'}]",
        f"    (imports {c['import_s'] * 1e3:.0f} ms; whole `dumper cat` process {r['cat_process_s'] * 1e3:.0f} ms)",
        f"  zstd alone, 1 thread, in memory {r['zstd_s']:7.3f} s ({r['zstd_gib_s']:.2f} GiB/s)",
        f"  verify ({r['verify_threads']} threads)             {r['verify_s']:7.3f} s ({r['verify_gib_s']:.2f} GiB/s) "
        f"= {r['verify_over_zstd']:.0%} of zstd  [>= 80%: {'ok' if r['verify_over_zstd'] >= 0.8 else 'UNDER'}]",
        f"  verify (1 thread)               {r['verify_1_thread_s']:7.3f} s "
        f"= {r['verify_1_thread_over_zstd']:.0%} of zstd",
    ]

"""Incremental dumps: a 1 GiB target, 1% of its pages written between dumps.

Expected: the incremental image <= 2% of the full dump's bytes, and the
frozen time of a final dump taken right after a pre-dump <= 10% of a full
dump's frozen time, measured in the same run (uffd-wp tracking here; CRIU
needs soft-dirty, which this kernel lacks).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from ._util import stop

TARGET = textwrap.dedent("""
    import ctypes, mmap, os, random, sys
    size = {mib} << 20
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    rng = random.Random(5)
    half = size // 2
    for off in range(0, half, 1 << 20):
        buf[off : off + (1 << 20)] = rng.randbytes(1 << 20)
    text = b"The quick brown fox jumps over the lazy dog. " * 1000
    for off in range(half, size, len(text)):
        n = min(len(text), size - off)
        buf[off : off + n] = text[:n]
    print("READY", flush=True)
    for line in sys.stdin:
        n = int(line)
        for p in rng.sample(range(size // 4096), n):
            buf[p * 4096 : p * 4096 + 16] = os.urandom(16)
        print("OK", flush=True)
""")


def run(mib: int = 1024) -> dict:
    from dumper.dump import dump

    pages = (mib << 20) // 4096
    touch = pages // 100
    p = subprocess.Popen([sys.executable, "-c", TARGET.format(mib=mib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    outdir = os.environ.get("BENCH_TMP") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        assert p.stdout.readline().strip() == "READY"

        def write_1pct():
            p.stdin.write(f"{touch}\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "OK"

        with tempfile.TemporaryDirectory(dir=outdir) as tmp:
            tmp = Path(tmp)
            full = dump(p.pid, tmp / "full", track_mem=True)
            write_1pct()
            inc = dump(p.pid, tmp / "inc", parent=tmp / "full")
            write_1pct()
            pre = dump(p.pid, tmp / "pre", parent=tmp / "inc", pre_dump=True)
            write_1pct()
            final = dump(p.pid, tmp / "final", parent=tmp / "pre")
            plain = dump(p.pid, tmp / "plain")  # a full dump without tracking, for frozen time
    finally:
        stop(p)
    return {
        "target_mib": mib, "pages_touched": touch,
        "full": {"bytes": full.bytes_written, "frozen_s": full.frozen_ns / 1e9, "pages": full.pages_written},
        "incremental": {"bytes": inc.bytes_written, "frozen_s": inc.frozen_ns / 1e9, "pages": inc.pages_written,
                        "parent_pages": inc.pages_parent},
        "pre_dump": {"bytes": pre.bytes_written, "frozen_s": pre.frozen_ns / 1e9},
        "final_after_pre_dump": {"bytes": final.bytes_written, "frozen_s": final.frozen_ns / 1e9},
        "plain_full_frozen_s": plain.frozen_ns / 1e9,
        "incremental_over_full_bytes": inc.bytes_written / full.bytes_written,
        "final_over_full_frozen": final.frozen_ns / plain.frozen_ns,
    }


def table(r: dict) -> list[str]:
    f, i, pre, fin = r["full"], r["incremental"], r["pre_dump"], r["final_after_pre_dump"]
    return [
        f"incremental dumps of a {r['target_mib']} MiB target, {r['pages_touched']} pages (1%) written between dumps",
        f"  full dump (+ arming uffd-wp)   {f['bytes'] / 2**20:8.1f} MiB, frozen {f['frozen_s'] * 1e3:7.1f} ms",
        f"  incremental --parent            {i['bytes'] / 2**20:8.2f} MiB, frozen {i['frozen_s'] * 1e3:7.1f} ms "
        f"({i['pages']} pages written, {i['parent_pages']} in parent)",
        f"  pre-dump                        {pre['bytes'] / 2**20:8.2f} MiB, frozen {pre['frozen_s'] * 1e3:7.1f} ms",
        f"  final dump after the pre-dump   {fin['bytes'] / 2**20:8.2f} MiB, frozen {fin['frozen_s'] * 1e3:7.1f} ms",
        f"  full dump without tracking      frozen {r['plain_full_frozen_s'] * 1e3:7.1f} ms",
        f"  incremental / full bytes = {r['incremental_over_full_bytes']:.2%} (target <= 2%)",
        f"  final-after-pre-dump / full frozen = {r['final_over_full_frozen']:.2%} (target <= 10%)",
    ]

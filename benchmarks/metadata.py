"""Hostile-size metadata: decoding and memory of huge pagemaps, mms and
pstrees (issue 15 item 9).

* a pagemap of 3 million entries: ``load_pagemap`` with the bulk numpy
  decoder against protobuf one entry at a time (the reference), CPU
  seconds of each in the same run, and the peak memory of opening it in a
  fresh interpreter (bytes an entry);
* an mm of 400,000 VMAs and a pstree of 1 million processes: open time and
  peak memory against the file's size;
* the cost of the raw-set checksums: crc32 over 1 GiB.

Targets: the bulk decoder >= 5x faster than protobuf; <= 64 bytes a pagemap
entry; VMAs and pstree within 4x their file's size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from ._util import ROOT

_OPEN_CHILD = """
import sys, time
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]) * 1024
from dumper.image.checkpoint import open_checkpoint
import numpy, google.protobuf
base = hwm()
t = time.process_time()
with open_checkpoint(sys.argv[1]) as ck:
    n = len(ck.process().entries)
print(time.process_time() - t, hwm() - base)
"""


def _open(d: Path) -> tuple[float, int]:
    r = subprocess.run([sys.executable, "-c", _OPEN_CHILD, str(d)], capture_output=True, text=True, cwd=ROOT,
                       check=True)
    cpu, grown = r.stdout.split()
    return float(cpu), int(grown)


def run() -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import write_big_checkpoint, write_big_mm_checkpoint, write_big_pstree_checkpoint

    from dumper.image.reader import load_pagemap

    out: dict = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t = Path(tmp)
        n = 3_000_000
        pm = write_big_checkpoint(t / "pagemap", n)
        times = {}
        for fast in (True, False, True):
            c = time.process_time()
            load_pagemap(pm, fast=fast)
            times.setdefault("bulk" if fast else "protobuf", []).append(time.process_time() - c)
        cpu, grown = _open(t / "pagemap")
        out["pagemap"] = {"entries": n, "file_bytes": pm.stat().st_size, "bulk_cpu_s": min(times["bulk"]),
                          "protobuf_cpu_s": times["protobuf"][0], "open_cpu_s": cpu, "open_peak_bytes": grown}
        mm = write_big_mm_checkpoint(t / "mm", 400_000)
        cpu, grown = _open(t / "mm")
        out["mm"] = {"vmas": 400_000, "file_bytes": mm.stat().st_size, "open_cpu_s": cpu, "open_peak_bytes": grown}
        ps = write_big_pstree_checkpoint(t / "pstree", 1_000_000)
        cpu, grown = _open(t / "pstree")
        out["pstree"] = {"entries": 1_000_000, "file_bytes": ps.stat().st_size, "open_cpu_s": cpu,
                         "open_peak_bytes": grown}
    block = os.urandom(16 << 20)
    c = time.process_time()
    crc = 0
    for _ in range(64):
        crc = zlib.crc32(block, crc)
    out["crc32_1gib_cpu_s"] = time.process_time() - c
    return out


def table(r: dict) -> list[str]:
    p, m, s = r["pagemap"], r["mm"], r["pstree"]
    return [
        f"pagemap of {p['entries']:,} entries ({p['file_bytes'] / 2**20:.0f} MiB)",
        f"  bulk decoder {p['bulk_cpu_s']:.2f} s CPU, protobuf {p['protobuf_cpu_s']:.2f} s: "
        f"{p['protobuf_cpu_s'] / p['bulk_cpu_s']:.1f}x (target >= 5x)",
        f"  open: {p['open_peak_bytes'] / p['entries']:.0f} bytes an entry (target <= 64)",
        f"mm of {m['vmas']:,} VMAs ({m['file_bytes'] / 2**20:.0f} MiB): open {m['open_cpu_s']:.2f} s CPU, "
        f"{m['open_peak_bytes'] / m['file_bytes']:.1f}x the file (target <= 4x)",
        f"pstree of {s['entries']:,} ({s['file_bytes'] / 2**20:.0f} MiB): open {s['open_cpu_s']:.2f} s CPU, "
        f"{s['open_peak_bytes'] / s['file_bytes']:.1f}x the file (target <= 4x)",
        f"crc32 of 1 GiB (raw-set checksums, after the thaw): {r['crc32_1gib_cpu_s']:.2f} s CPU",
    ]

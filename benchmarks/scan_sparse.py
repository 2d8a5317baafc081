"""Scanner on sparse memory: 1000 touched pages in 1 GiB ... 64 TiB reservations.

Time and peak memory of both backends, each scan in a fresh interpreter (so
peak RSS is the scan's). Expected: the ioctl stays flat (64 TiB within 2x of
1 GiB); the pagemap fallback grows with the reservation, which is the point of
the ioctl. The pagemap backend is skipped above ``--pagemap-max`` (its cost is
linear: ~128 GiB of pagemap entries for 64 TiB) and the skip is reported.
"""

from __future__ import annotations

from ._util import run_child, spawn_sparse, stop

SIZES = [("1 GiB", 1 << 30), ("64 GiB", 64 << 30), ("1 TiB", 1 << 40), ("64 TiB", 64 << 40)]
PAGEMAP_MAX = 1 << 40

CHILD = """
import json, time
from dumper.scan import scan
best = None
for _ in range({repeat}):
    t0 = time.perf_counter()
    r = scan({pid}, {addr}, {addr} + {size}, anyof="PRESENT,SWAPPED", returned="", backend="{backend}")
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
dt = best
print(json.dumps({{"seconds": dt, "pages": r.nr_pages, "regions": len(r)}}))
"""


def run(pagemap_max: int = PAGEMAP_MAX) -> dict:
    rows = []
    for label, size in SIZES:
        p = spawn_sparse(size)
        try:
            row = {"reservation": label, "bytes": size}
            for backend in ("ioctl", "pagemap"):
                if backend == "pagemap" and size > pagemap_max:
                    row[backend] = {"skipped": f"linear in the reservation; above {pagemap_max >> 30} GiB"}
                    continue
                repeat = 5 if backend == "ioctl" else 1
                row[backend] = run_child(CHILD.format(pid=p.pid, addr=p.addr, size=size, backend=backend,
                                                      repeat=repeat))
            rows.append(row)
        finally:
            stop(p)
    first, last = rows[0]["ioctl"]["seconds"], rows[-1]["ioctl"]["seconds"]
    by = {r["reservation"]: r["ioctl"]["seconds"] for r in rows}
    return {"rows": rows, "ioctl_64TiB_over_1GiB": last / first, "ioctl_64TiB_over_1TiB": by["64 TiB"] / by["1 TiB"]}


def table(result: dict) -> list[str]:
    out = ["scan of 1000 touched pages   ioctl s  ioctl RSS   pagemap s  pagemap RSS"]
    for r in result["rows"]:
        io, pm = r["ioctl"], r["pagemap"]
        pm_s = f"{pm['seconds']:9.3f}  {pm['max_rss_kib'] / 1024:8.0f} MiB" if "seconds" in pm else "  skipped (linear)"
        out.append(f"  {r['reservation']:>8} reservation    {io['seconds']:7.4f}  {io['max_rss_kib'] / 1024:6.0f} MiB  {pm_s}")
    out.append(f"  ioctl time, 64 TiB / 1 GiB: {result['ioctl_64TiB_over_1GiB']:.2f}x (target <= 2x); "
               f"64 TiB / 1 TiB: {result['ioctl_64TiB_over_1TiB']:.2f}x")
    out.append("  (the ioctl's cost follows the page tables the touched pages need: 1000 pages in 1 GiB share")
    out.append("   ~500 PTE tables, in 64 TiB each needs its own PTE and PMD table)")
    return out

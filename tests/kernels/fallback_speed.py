"""The pagemap fallback's speed on a 16 TiB reservation, here or under a guest kernel.

    python tests/kernels/fallback_speed.py                       # this machine
    python tests/kernels/fallback_speed.py --kernel /boot/vmlinuz-6.1.0-50-amd64

A process reserves ``--size-tib`` TiB (MAP_NORESERVE) and writes 1000 pages
at random, as examples/target.py does; then, best of ``--rounds``:

* ``raw``: the kernel alone, ``preadv`` of the pagemap of the first
  ``--raw-gib`` GiB into a reused 1 MiB buffer (the bound: the kernel emits
  every entry, holes included);
* ``fallback``: ``scan_range`` with the pagemap backend over the whole
  reservation (what ``dump --backend pagemap`` spends frozen on it);
* ``estimate``: :func:`dumper.scan.estimate_scan_seconds` for that scan.

Prints one JSON object. With ``--kernel`` it boots that kernel under qemu
(tests/kernels/guest.py; TCG, so everything is slower than on the host) and
runs itself there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def measure(size_tib: float, raw_gib: float, rounds: int) -> dict:
    sys.path.insert(0, str(REPO))
    from benchmarks._util import spawn_sparse, stop
    from dumper.proc import Process
    from dumper.scan import ScanMasks, estimate_scan_seconds, scan_range
    from dumper.scan.pagemap import PagemapBackend, default_threads

    size = int(size_tib * (1 << 40))
    raw_bytes = int(raw_gib * (1 << 30)) // 4096 * 8
    p = spawn_sparse(size)
    try:
        fd = os.open(f"/proc/{p.pid}/pagemap", os.O_RDONLY)
        buf = memoryview(bytearray(1 << 20))
        first = p.addr // 4096 * 8

        def raw() -> float:
            t0 = time.perf_counter()
            off = first
            while off < first + raw_bytes:
                off += os.preadv(fd, [buf[: min(len(buf), first + raw_bytes - off)]], off)
            return time.perf_counter() - t0

        vmas = [v for v in Process(p.pid).vmas() if v.start <= p.addr < v.end]
        t0 = time.perf_counter()
        estimate = estimate_scan_seconds("pagemap", vmas)
        estimate_cost = time.perf_counter() - t0
        best_raw = best_scan = float("inf")
        pages = None
        for _ in range(rounds):
            best_raw = min(best_raw, raw())
            with PagemapBackend(Process(p.pid), progress=False) as be:
                t0 = time.perf_counter()
                r = scan_range(be, p.addr, p.addr + size, ScanMasks(anyof="PRESENT,SWAPPED", returned=""))
                best_scan = min(best_scan, time.perf_counter() - t0)
                pages = r.nr_pages
        os.close(fd)
    finally:
        stop(p)
    entries = size // 4096 * 8
    return {
        "kernel": os.uname().release, "cpus": os.cpu_count(), "threads": default_threads(),
        "reservation_tib": size_tib, "pages_found": pages,
        "raw": {"entry_bytes": raw_bytes, "seconds": best_raw, "entries_gb_s": raw_bytes / best_raw / 1e9},
        "fallback": {"entry_bytes": entries, "seconds": best_scan, "entries_gb_s": entries / best_scan / 1e9},
        "estimate": {"seconds": estimate, "probe_s": estimate_cost},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", help="boot this kernel image under qemu and measure there")
    ap.add_argument("--size-tib", type=float, default=16)
    ap.add_argument("--raw-gib", type=float, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3000)
    args = ap.parse_args(argv)
    if not args.kernel:
        print(json.dumps(measure(args.size_tib, args.raw_gib, args.rounds)))
        return 0
    sys.path.insert(0, str(HERE))
    import guest

    venv = REPO / ".venv" / "bin" / "python"
    py = str(venv if venv.exists() else Path(sys.executable))
    res = guest.run_in_guest(args.kernel, [py, str(Path(__file__).resolve()), "--size-tib", str(args.size_tib),
                                           "--raw-gib", str(args.raw_gib), "--rounds", str(args.rounds)],
                             cwd=REPO, timeout=args.timeout)
    lines = [x for x in res.output.splitlines() if x.startswith("{")]
    if res.returncode or not lines:
        print(res.output[-3000:], file=sys.stderr)
        return res.returncode or 1
    out = json.loads(lines[-1])
    out["where"] = "qemu-tcg"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

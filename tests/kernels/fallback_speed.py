"""The pagemap fallback's speed on a 16 TiB reservation, here or under a guest kernel.

    python tests/kernels/fallback_speed.py                       # this machine
    python tests/kernels/fallback_speed.py --kernel /boot/vmlinuz-6.1.0-50-amd64

A process reserves ``--size-tib`` TiB (MAP_NORESERVE) and writes 1000 pages
at random, as examples/target.py does; then, best of ``--rounds``:

* ``raw``: the kernel alone, ``preadv`` of the pagemap of the first
  ``--raw-gib`` GiB into a reused 1 MiB buffer (the bound: the kernel emits
  every entry, holes included);
* ``fallback``: ``scan_range`` with the pagemap backend over the whole
  reservation, every entry read (``dumper scan --backend pagemap``);
* ``prefiltered``: the same with the target frozen by a warden and the
  residency pre-filter (mincore in the target; what ``dump --backend
  pagemap`` spends frozen on it); ``--no-full`` measures only this one;
* ``estimate``: :func:`dumper.scan.estimate_scan_seconds` for both.

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


def measure(size_tib: float, raw_gib: float, rounds: int, full: bool = True) -> dict:
    sys.path.insert(0, str(REPO))
    import functools

    from benchmarks._util import spawn_sparse, stop
    from dumper.proc import Process
    from dumper.proc.residency import resident_runs
    from dumper.proc.warden import Warden
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
        estimate_pre = estimate_scan_seconds("pagemap", vmas, residency=True)
        best_raw = best_scan = best_pre = float("inf")
        pages = pages_pre = reads = None
        masks = ScanMasks(anyof="PRESENT,SWAPPED", returned="")
        for _ in range(rounds if full else 0):
            best_raw = min(best_raw, raw())
            with PagemapBackend(Process(p.pid), progress=False) as be:
                t0 = time.perf_counter()
                r = scan_range(be, p.addr, p.addr + size, masks)
                best_scan = min(best_scan, time.perf_counter() - t0)
                pages = r.nr_pages
        os.close(fd)
        with Warden() as w:
            w.freeze(p.pid, tree=False)
            for _ in range(rounds):
                with PagemapBackend(Process(p.pid), progress=False,
                                    residency=functools.partial(w.call, resident_runs, p.pid)) as be:
                    t0 = time.perf_counter()
                    r = scan_range(be, p.addr, p.addr + size, masks)
                    best_pre = min(best_pre, time.perf_counter() - t0)
                    pages_pre, reads = r.nr_pages, sorted(set(be.vma_reads.values()))
            w.keep()
    finally:
        stop(p)
    entries = size // 4096 * 8

    def rate(seconds: float) -> float | None:
        return entries / seconds / 1e9 if seconds < float("inf") else None

    return {
        "kernel": os.uname().release, "cpus": os.cpu_count(), "threads": default_threads(),
        "reservation_tib": size_tib, "pages_found": pages,
        "raw": {"entry_bytes": raw_bytes, "seconds": best_raw,
                "entries_gb_s": raw_bytes / best_raw / 1e9 if full else None},
        "fallback": {"entry_bytes": entries, "seconds": best_scan if full else None, "entries_gb_s": rate(best_scan)},
        "prefiltered": {"seconds": best_pre, "entries_gb_s": rate(best_pre), "pages_found": pages_pre,
                        "vma_reads": reads},
        "estimate": {"seconds": estimate, "probe_s": estimate_cost, "prefiltered_seconds": estimate_pre},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", help="boot this kernel image under qemu and measure there")
    ap.add_argument("--size-tib", type=float, default=16)
    ap.add_argument("--raw-gib", type=float, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3000)
    ap.add_argument("--no-full", action="store_true", help="measure only the pre-filtered scan")
    args = ap.parse_args(argv)
    if not args.kernel:
        print(json.dumps(measure(args.size_tib, args.raw_gib, args.rounds, full=not args.no_full)))
        return 0
    sys.path.insert(0, str(HERE))
    import guest

    venv = REPO / ".venv" / "bin" / "python"
    py = str(venv if venv.exists() else Path(sys.executable))
    res = guest.run_in_guest(args.kernel, [py, str(Path(__file__).resolve()), "--size-tib", str(args.size_tib),
                                           "--raw-gib", str(args.raw_gib), "--rounds", str(args.rounds),
                                           *(["--no-full"] if args.no_full else [])],
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

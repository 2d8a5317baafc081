"""Frozen-time cost of saving open files, per descriptor, next to CRIU's.

A target opens ``N`` descriptors of one kind (regular files, pipes holding
100 bytes, eventfds, /dev/null) or a mix of them, and stops (SIGSTOP). We
time, in this process, :func:`dumper.proc.fds.collect_fds` and
:meth:`dumper.dump.files.FileTable.add_process` -- the work the dump does
while the target is frozen -- and divide by the number of descriptors.

CRIU's cost per descriptor is the growth of its own ``frozen_time``
(stats-dump) between a target with the mixed ``N`` descriptors and the same
target with none, divided by the difference in descriptors; ratio = ours /
CRIU's. CRIU is $DUMPER_CRIU or build/criu-4.2/criu/criu; without it that
column is skipped with a note. ``BENCH_REPEAT`` (default 3) runs per
figure, median shown.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

N = int(os.environ.get("BENCH_FILES_N", "1000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
KINDS = ("reg", "pipe", "eventfd", "devnull", "mixed")

TARGET = textwrap.dedent(
    """
    import os, resource, sys, time
    n, kind, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    resource.setrlimit(resource.RLIMIT_NOFILE, (n * 2 + 64, n * 2 + 64))
    fds = []
    for i in range(n):
        k = kind if kind != "mixed" else ("reg", "pipe", "eventfd", "devnull")[i % 4]
        if k == "reg":
            fds.append(os.open(f"{d}/f{i}", os.O_RDWR | os.O_CREAT, 0o600))
        elif k == "pipe":
            r, w = os.pipe()
            os.write(w, b"x" * 100)
            fds += [r, w]
        elif k == "eventfd":
            fds.append(os.eventfd(i))
        else:
            fds.append(os.open("/dev/null", os.O_RDONLY))
    print(len(fds), flush=True)
    time.sleep(600)
    """
)


def _criu() -> str | None:
    for c in (os.environ.get("DUMPER_CRIU"), str(Path(__file__).resolve().parents[1] / "build/criu-4.2/criu/criu"),
              "/work/main/build/criu-4.2/criu/criu"):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _spawn(n: int, kind: str, d: str) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, "-c", TARGET, str(n), kind, d], stdout=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    count = int(p.stdout.readline())
    p.stdout.close()
    os.kill(p.pid, signal.SIGSTOP)
    while open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.001)
    return p, count


def _ours(pid: int) -> tuple[float, float, int]:
    from dumper.dump.files import FileTable
    from dumper.proc.fds import collect_fds
    from dumper.proc.process import Process

    p = Process(pid)
    t0 = time.perf_counter()
    fds = collect_fds(p)
    t1 = time.perf_counter()
    FileTable().add_process(pid, fds)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(fds)


def _criu_frozen_us(criu: str, pid: int, d: str) -> float | None:
    from dumper.image.reader import read_image

    out = tempfile.mkdtemp(dir=d)
    r = subprocess.run([criu, "dump", "--leave-running", "-t", str(pid), "-D", out, "-o", "dump.log"],
                       capture_output=True, text=True)
    if r.returncode:
        return None
    _, (stats,) = read_image(os.path.join(out, "stats-dump"))
    return float(stats.dump.frozen_time)


def run() -> dict:
    res: dict = {"n": N, "repeat": REPEAT, "kinds": {}}
    criu = _criu()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP") or "/dev/shm") as d:
        for kind in KINDS:
            collect, add, counts = [], [], []
            for _ in range(REPEAT):
                p, _count = _spawn(N, kind, d)
                try:
                    c, a, n = _ours(p.pid)
                finally:
                    p.kill()
                    p.wait()
                collect.append(c / n)
                add.append(a / n)
                counts.append(n)
            res["kinds"][kind] = {"fds": counts[0], "collect_us_per_fd": statistics.median(collect) * 1e6,
                                  "add_us_per_fd": statistics.median(add) * 1e6}
        if criu is None:
            res["criu"] = "CRIU not built: skipped"
            return res
        frozen = {}
        for n in (0, N):
            vals = []
            for _ in range(REPEAT):
                p, count = _spawn(n, "mixed", d)
                try:
                    v = _criu_frozen_us(criu, p.pid, d)
                finally:
                    p.kill()
                    p.wait()
                if v is not None:
                    vals.append(v)
            frozen[n] = (statistics.median(vals) if vals else None, count)
        (f0, c0), (f1, c1) = frozen[0], frozen[N]
        if f0 is None or f1 is None:
            res["criu"] = "criu dump failed: skipped"
            return res
        per_fd = (f1 - f0) / (c1 - c0)
        ours = res["kinds"]["mixed"]
        res["criu"] = {"frozen_us_0": f0, f"frozen_us_{N}": f1, "us_per_fd": per_fd,
                       "ratio_ours_to_criu": (ours["collect_us_per_fd"] + ours["add_us_per_fd"]) / per_fd}
    return res


def table(res: dict) -> list[str]:
    lines = [f"{'kind':<10}{'fds':>8}{'collect us/fd':>15}{'add us/fd':>12}"]
    for kind, r in res["kinds"].items():
        lines.append(f"{kind:<10}{r['fds']:>8}{r['collect_us_per_fd']:>15.1f}{r['add_us_per_fd']:>12.1f}")
    c = res.get("criu")
    if isinstance(c, dict):
        lines.append(f"criu dump frozen time per descriptor (mixed): {c['us_per_fd']:.1f} us; "
                     f"ours/criu = {c['ratio_ours_to_criu']:.2f}")
    else:
        lines.append(f"criu: {c}")
    return lines


if __name__ == "__main__":
    print("\n".join(table(run())))

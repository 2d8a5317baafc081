"""A 1 GiB dense target (half random, half compressible), dumped.

Reports dump wall time, frozen time and image bytes beside limits measured in
the same run on the same bytes: raw /proc/PID/mem read bandwidth into a reused
buffer, and zstd throughput at the chosen level with 1 thread and all threads.
Expected: dump time within 1.5x of max(read time, compress time / threads);
image <= 55% of the raw size. The dump also has to write its image: the write
bandwidth of the output directory (``BENCH_TMP``, default /dev/shm so the
dumper is measured rather than the disk) is measured too, and the limit is
reported both with and without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard

from ._util import ROOT, stop

LEVEL = 3


def _read_all(pid: int, runs, buf: bytearray) -> tuple[float, int]:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    mv = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    try:
        for addr, length in runs:
            off = 0
            while off < length:
                n = os.preadv(fd, [mv[: min(len(buf), length - off)]], addr + off)
                total += n
                off += n
    finally:
        os.close(fd)
    return time.perf_counter() - t0, total


def _write_speed(directory: str, nbytes: int) -> float:
    """Seconds to write and fsync ``nbytes`` into ``directory``."""
    chunk = os.urandom(1 << 20)
    path = os.path.join(directory, ".bench-write")
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(nbytes >> 20):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.unlink(path)
    return dt


def run(dense_mib: int = 1024) -> dict:
    from dumper.dump import dump
    from dumper.scan import scan

    threads = os.cpu_count() or 1
    p = subprocess.Popen([sys.executable, str(ROOT / "examples" / "target.py"), "--dense-mib", str(dense_mib),
                          "--threads", "1", "--sparse-pages", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("READY")
        os.kill(p.pid, 19)  # SIGSTOP: same bytes for every measurement
        regions = scan(p.pid, anyof="PRESENT,SWAPPED", excluded="FILE,PFNZERO", returned="")
        runs = [(r.start, r.end - r.start) for r in regions]
        buf = bytearray(4 << 20)
        read_s, nbytes = _read_all(p.pid, runs, buf)

        # zstd on the same bytes, frames of 256 KiB like the writer
        data = bytearray()
        fd = os.open(f"/proc/{p.pid}/mem", os.O_RDONLY)
        for addr, length in runs:
            data += os.pread(fd, length, addr)
        os.close(fd)
        frames = [bytes(data[i : i + (256 << 10)]) for i in range(0, len(data), 256 << 10)]
        del data
        cctx = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True, write_checksum=True)
        t0 = time.perf_counter()
        csize = sum(len(cctx.compress(f)) for f in frames)
        z1_s = time.perf_counter() - t0
        local = __import__("threading").local()

        def comp(f):
            if not hasattr(local, "c"):
                local.c = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True, write_checksum=True)
            return len(local.c.compress(f))

        with ThreadPoolExecutor(threads) as ex:
            t0 = time.perf_counter()
            sum(ex.map(comp, frames))
            zn_s = time.perf_counter() - t0
        del frames
        os.kill(p.pid, 18)  # SIGCONT

        outdir = os.environ.get("BENCH_TMP") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        out = {}
        for mode, compress in (("zstd", True), ("raw", False)):
            with tempfile.TemporaryDirectory(dir=outdir) as tmp:
                t0 = time.perf_counter()
                r = dump(p.pid, Path(tmp) / "ck", compress=compress, level=LEVEL)
                out[mode] = {"wall_s": time.perf_counter() - t0, "frozen_s": r.frozen_ns / 1e9,
                             "image_bytes": r.bytes_written, "raw_bytes": r.bytes_raw}
    finally:
        stop(p)
    limit = max(read_s, zn_s)
    write_s = _write_speed(outdir or tempfile.gettempdir(), out["zstd"]["image_bytes"])
    return {
        "outdir": outdir, "write_image_s": write_s,
        "dump_over_limit_with_write": out["zstd"]["wall_s"] / max(limit, write_s),
        "bytes": nbytes, "threads": threads, "level": LEVEL,
        "read_s": read_s, "read_gib_s": nbytes / read_s / 2**30,
        "zstd_1_thread_s": z1_s, "zstd_all_threads_s": zn_s, "zstd_ratio": csize / nbytes,
        "dump": out,
        "dump_over_limit": out["zstd"]["wall_s"] / limit,
        "image_over_raw": out["zstd"]["image_bytes"] / out["zstd"]["raw_bytes"],
    }


def table(r: dict) -> list[str]:
    gib = r["bytes"] / 2**30
    z, raw = r["dump"]["zstd"], r["dump"]["raw"]
    return [
        f"dense dump of {gib:.2f} GiB ({r['threads']} threads, zstd level {r['level']})",
        f"  /proc/PID/mem read         {r['read_s']:7.3f} s ({r['read_gib_s']:.2f} GiB/s)",
        f"  zstd 1 thread / all        {r['zstd_1_thread_s']:7.3f} s / {r['zstd_all_threads_s']:.3f} s",
        f"  dumper dump (zstd)         {z['wall_s']:7.3f} s, frozen {z['frozen_s']:.3f} s, image {z['image_bytes'] / 2**20:.0f} MiB",
        f"  dumper dump --no-compress  {raw['wall_s']:7.3f} s, frozen {raw['frozen_s']:.3f} s, image {raw['image_bytes'] / 2**20:.0f} MiB",
        f"  writing the image to {r['outdir']}: {r['write_image_s']:.3f} s",
        f"  dump / max(read, zstd/threads) = {r['dump_over_limit']:.2f}x (target <= 1.5x); "
        f"with the write: {r['dump_over_limit_with_write']:.2f}x",
        f"  image / raw = {r['image_over_raw']:.2%} (target <= 55%)",
    ]

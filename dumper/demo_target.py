#!/usr/bin/env python3
"""A sample process worth checkpointing (no compiler needed).

It maps:
  * dense data: ``--dense-mib`` MiB, the first half random bytes, the second
    half compressible text;
  * an ASan-shaped sparse reservation: 16 TiB of MAP_NORESERVE memory with
    ``--sparse-pages`` scattered pages touched (shadow memory looks like this);
  * a private file mapping with a few pages written (copy-on-write);
  * ``--threads`` threads that each keep a counter going.

It prints ``READY <pid>`` on stdout once everything is in place and then runs
until killed (or until stdin closes, with ``--until-eof``).

    python -m dumper.demo_target --dense-mib 64 &     # or: python examples/target.py
    dumper dump $! -D /tmp/ckpt

It ships inside the package (``dumper demo`` runs it) and imports nothing
from dumper: standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import random
import sys
import tempfile
import threading
import time

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]

PAGE = os.sysconf("SC_PAGE_SIZE")
PROT_RW = 0x3
MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x02, 0x20, 0x4000
SPARSE_BYTES = 16 << 40


def mmap(length: int, flags: int, fd: int = -1) -> int:
    addr = libc.mmap(None, length, PROT_RW, flags, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap({length}): {os.strerror(err)}")
    return addr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense-mib", type=int, default=64)
    ap.add_argument("--sparse-pages", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--until-eof", action="store_true", help="exit when stdin closes")
    args = ap.parse_args()
    if args.dense_mib < 1 or args.sparse_pages < 0 or args.threads < 0:
        ap.error("--dense-mib must be >= 1, --sparse-pages and --threads >= 0")

    rng = random.Random(1234)
    dense = args.dense_mib << 20
    base = mmap(dense, MAP_PRIVATE | MAP_ANONYMOUS)
    half = dense // 2
    for off in range(0, half, 1 << 20):  # random half, 1 MiB at a time
        n = min(1 << 20, half - off)
        ctypes.memmove(base + off, rng.randbytes(n), n)
    text = b"The quick brown fox jumps over the lazy dog. " * 1000
    for off in range(half, dense, len(text)):  # compressible half
        ctypes.memmove(base + off, text, min(len(text), dense - off))

    shadow = mmap(SPARSE_BYTES, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    for i in range(args.sparse_pages):
        page = rng.randrange(SPARSE_BYTES // PAGE)
        ctypes.memmove(shadow + page * PAGE, b"shadow %d" % i, 9)

    fd, path = tempfile.mkstemp(prefix="dumper-example-")
    os.write(fd, b"file-backed page\n" * (16 * PAGE // 17 + 1))
    filemap = mmap(16 * PAGE, MAP_PRIVATE, fd)
    os.close(fd)
    os.unlink(path)  # the mapping keeps it alive, shown as "(deleted)"
    for p in (1, 5, 9):
        ctypes.memmove(filemap + p * PAGE, b"written copy-on-write page", 26)

    counters = (ctypes.c_uint64 * max(args.threads, 1))()

    def spin(i: int) -> None:
        while True:
            counters[i] += 1
            time.sleep(0.001)

    for i in range(args.threads):
        threading.Thread(target=spin, args=(i,), daemon=True).start()

    print(f"READY {os.getpid()}", flush=True)
    if args.until_eof:
        sys.stdin.read()
        return
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()

"""``dumper verify DIR [--pid PID]``: is a checkpoint intact?

Without ``--pid``: every zstd frame is decompressed (content size, XXH64
checksum, frame length against the index) and the structure is checked
(:meth:`dumper.image.checkpoint.Checkpoint.verify`: entries sorted, disjoint,
page aligned, inside dumped VMAs; PE_PRESENT pages matching the pages file;
per-VMA page counts; the parent chain holding every PE_PARENT range), for the
checkpoint and its parent chain.

With ``--pid PID``: also compares every recorded page with the memory of the
live process PID, frozen with ptrace for the comparison and then given back
in the state it was found in. Pages the process changed since the dump differ
legitimately, so this is meant for a process that stayed stopped (``dump
--leave-stopped``) or otherwise unchanged.

Exit status 0 when intact, 1 with one line per problem (at most
``--max-problems``, then a count of the rest); errors that stop the check
(unreadable directory, no such process) are one ``dumper: error:`` line,
also status 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from typing import Iterator, Sequence

import numpy as np

from ..errors import ImageError
from ..image.checkpoint import Checkpoint, open_checkpoint
from ..proc.warden import Warden
from ..proc.process import Process
from .options import human_bytes, non_negative, pid

EXIT_OK = 0
EXIT_PROBLEMS = 1


def _positive(text: str) -> int:
    value = non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--pid", type=pid, default=None,
                        help="also compare every recorded page with this live process (frozen meanwhile)")
    parser.add_argument("--no-parents", action="store_true", help="check this checkpoint only, not its parents")
    parser.add_argument("--threads", type=_positive, default=None, metavar="N",
                        help="decompression threads (default: up to 4)")
    parser.add_argument("--max-problems", type=non_negative, default=50, metavar="N",
                        help="problems listed before only counting the rest (default 50)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary line when intact")


def page_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(first, count)`` runs of True in a boolean array (no Python loop per page)."""
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[::2], edges[1::2]
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def differing_runs(a, b, page_size: int) -> list[tuple[int, int]]:
    """``(first_page, count)`` runs of pages that differ between two
    equal-length bytes-like objects of whole pages. One vectorised pass over
    8-byte words; no copy of the data."""
    if len(a) == 0:
        return []
    if type(a) is bytes and type(b) is bytes and a == b:  # memcmp: the common case
        return []
    words = page_size // 8
    x = np.frombuffer(a, np.uint64).reshape(-1, words)
    y = np.frombuffer(b, np.uint64).reshape(-1, words)
    return page_runs((x != y).any(axis=1))


def _pread_live(fd: int, view: memoryview, addr: int) -> int:
    """Fill ``view`` from /proc/PID/mem at ``addr``; returns the bytes read,
    fewer where the kernel stops (an unreadable page)."""
    got = 0
    while got < len(view):
        try:
            n = os.preadv(fd, [view[got:]], addr + got)
        except OSError as err:
            if err.errno in (errno.EIO, errno.EFAULT, errno.ENOMEM):
                break
            raise
        if n <= 0:
            break
        got += n
    return got


class _Runs:
    """Merges adjacent page ranges of the same kind into one report line."""

    def __init__(self, fmt_line) -> None:
        self.fmt_line = fmt_line
        self.cur: list | None = None  # [kind, start, end]

    def add(self, kind: str, s: int, e: int) -> Iterator[str]:
        if self.cur is not None and self.cur[0] == kind and self.cur[2] == s:
            self.cur[2] = e
            return
        yield from self.flush()
        self.cur = [kind, s, e]

    def flush(self) -> Iterator[str]:
        if self.cur is not None:
            yield self.fmt_line(*self.cur)
            self.cur = None


def compare_live(ck: Checkpoint, live_pid: int, ckpt_pid: int | None = None) -> Iterator[str]:
    """Freeze ``live_pid``, compare every recorded page of checkpoint process
    ``ckpt_pid`` (default: ``live_pid`` if the checkpoint has it, else the
    root) with its memory, thaw it; yield one line per range of pages that
    differ or cannot be read any more. Work is per chunk (a zstd frame),
    read into one reused buffer; only a failing read goes on page-wise."""
    if ckpt_pid is None:
        ckpt_pid = live_pid if live_pid in ck.processes else ck.root_pid
    ps = ck.process(ckpt_pid).page_size
    target = Process(live_pid)
    what = {"differ": "differ from the checkpoint", "unreadable": "cannot be read from the live process"}
    runs = _Runs(lambda kind, s, e: f"pid {live_pid}: [{s:#x}, {e:#x}) {(e - s) // ps} page(s) {what[kind]}")

    buf = bytearray()
    with Warden() as w:
        w.freeze(target.pid, tree=False)
        fd = target.open("mem")
        try:
            for start, end in ck.recorded_ranges(ckpt_pid):
                for vaddr, chunk in ck.iter_chunks(ckpt_pid, start, end - start, recorded_only=True):
                    if len(buf) < len(chunk):
                        buf = bytearray(len(chunk))
                    pos = 0
                    while pos < len(chunk):
                        view = memoryview(buf)[: len(chunk) - pos]
                        with target.translate("mem"):
                            got = _pread_live(fd, view, vaddr + pos)
                        got -= got % ps
                        for first, count in differing_runs(memoryview(chunk)[pos : pos + got], view[:got], ps):
                            s = vaddr + pos + first * ps
                            yield from runs.add("differ", s, s + count * ps)
                        pos += got
                        if pos < len(chunk):  # this page cannot be read: note it, go on after it
                            yield from runs.add("unreadable", vaddr + pos, vaddr + pos + ps)
                            pos += ps
            yield from runs.flush()
        finally:
            os.close(fd)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    shown = 0
    total = 0

    def report(line: str) -> None:
        nonlocal shown, total
        total += 1
        if shown < args.max_problems:
            print(line)
            shown += 1

    try:
        ck = open_checkpoint(args.dir)
    except ImageError as err:
        report(str(err))
        print(f"FAILED: {args.dir}: the checkpoint cannot be opened", file=sys.stderr)
        return EXIT_PROBLEMS
    with ck:
        for problem in ck.verify(parents=not args.no_parents, threads=args.threads):
            report(str(problem))
        compared = ""
        if args.pid is not None:
            if args.pid not in ck.processes:
                print(f"note: the checkpoint has no pid {args.pid}; comparing its root pid {ck.root_pid}",
                      file=sys.stderr)
            for line in compare_live(ck, args.pid):
                report(line)
            compared = f", compared with live pid {args.pid}"
        if total > shown:
            print(f"... and {total - shown} more problem(s)")
        if total:
            print(f"FAILED: {args.dir}: {total} problem(s)", file=sys.stderr)
            return EXIT_PROBLEMS
        if not args.quiet:
            pages = sum(p.nr_pages_present for p in ck.processes.values())
            nparents = len(ck.parent_paths) if not args.no_parents else 0
            print(f"OK: {args.dir}: {len(ck.processes)} process(es), {pages} pages "
                  f"({human_bytes(pages * ck.page_size)}) verified"
                  + (f", parent chain of {nparents}" if nparents else "")
                  + compared + f" in {time.monotonic() - t0:.2f} s")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("verify", argv)

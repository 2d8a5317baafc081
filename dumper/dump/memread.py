"""Reading page contents from /proc/PID/mem into one bounded, reused buffer.

fs/proc/base.c ``mem_rw`` copies page by page; when the first page fails the
read returns EIO, otherwise it stops short before the failing page (guard
markers, PROT_NONE without FOLL_FORCE, file pages past EOF). A failing page is
recorded and left out; it never aborts the dump.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

from ..kernel.libc import PAGE_SIZE
from ..proc.process import Process

__all__ = ["MemReader", "CHUNK_BYTES"]

CHUNK_BYTES = 4 << 20  # the whole read buffer: never sized from a VMA


@dataclass(slots=True)
class MemReader:
    """Reads ``(vaddr, nr_pages)`` runs of a stopped process.

    ``unreadable`` collects ``(vaddr, nr_pages)`` runs that could not be read;
    ``read_ns`` and ``bytes_read`` are statistics.
    """

    process: Process
    chunk_bytes: int = CHUNK_BYTES
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    read_ns: int = 0
    bytes_read: int = 0
    fd: int = -1
    buf: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.fd = self.process.open("mem")
        self.buf = bytearray(self.chunk_bytes)

    def _pread(self, view: memoryview, addr: int) -> int:
        """Fill as much of ``view`` as the kernel gives; stop at the first failure."""
        got = 0
        while got < len(view):
            try:
                n = os.preadv(self.fd, [view[got:]], addr + got)
            except OSError as err:
                if err.errno in (errno.EIO, errno.EFAULT, errno.ENOMEM):
                    break
                with self.process.translate("mem"):
                    raise
            if n <= 0:
                break
            got += n
        return got - got % PAGE_SIZE

    def read_runs(self, runs: list[tuple[int, int]]) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(vaddr, data)`` pieces covering the readable pages of ``runs``.

        ``data`` is a view into the reused buffer, valid until the next item:
        copy it (or finish with it) before asking for more.
        """
        mv = memoryview(self.buf)
        max_pages = self.chunk_bytes // PAGE_SIZE
        for vaddr, nr_pages in runs:
            pos, left = vaddr, nr_pages
            while left:
                n = min(left, max_pages)
                t0 = time.perf_counter_ns()
                got = self._pread(mv[: n * PAGE_SIZE], pos)
                self.read_ns += time.perf_counter_ns() - t0
                self.bytes_read += got
                if got:
                    yield pos, mv[:got]
                done = got // PAGE_SIZE
                if done < n:
                    # The page at pos+got failed: record it, go on after it.
                    bad = pos + got
                    self._record_unreadable(bad)
                    done += 1
                pos += done * PAGE_SIZE
                left -= done

    def _record_unreadable(self, addr: int) -> None:
        last = self.unreadable[-1] if self.unreadable else None
        if last and last[0] + last[1] * PAGE_SIZE == addr:
            self.unreadable[-1] = (last[0], last[1] + 1)
        else:
            self.unreadable.append((addr, 1))

    @property
    def pages_unreadable(self) -> int:
        return sum(n for _, n in self.unreadable)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

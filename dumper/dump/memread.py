"""Reading page contents from /proc/PID/mem straight into the writer's buffers.

The buffers are the pages writer's bounded frame pool: nothing is ever sized
from a VMA's length or the dump's total size.

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

from ..kernel.libc import PAGE_SIZE
from ..proc.process import Process

__all__ = ["MemReader"]


@dataclass(slots=True)
class MemReader:
    """Reads ``(vaddr, nr_pages)`` runs of a stopped process.

    ``unreadable`` collects ``(vaddr, nr_pages)`` runs that could not be read;
    ``read_ns`` and ``bytes_read`` are statistics.
    """

    process: Process
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    read_ns: int = 0
    bytes_read: int = 0
    fd: int = -1

    def __post_init__(self) -> None:
        self.fd = self.process.open("mem")

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

    def readinto(self, view: memoryview, addr: int) -> int:
        """Read ``len(view)`` bytes at ``addr``; returns the bytes got (whole
        pages), fewer when the page after them cannot be read."""
        t0 = time.perf_counter_ns()
        got = self._pread(view, addr)
        self.read_ns += time.perf_counter_ns() - t0
        self.bytes_read += got
        return got

    def copy_runs(self, runs: list[tuple[int, int]], add_from, progress=None) -> int:
        """Feed the readable pages of ``(vaddr, nr_pages)`` runs to a sink.

        ``add_from(vaddr, nr_pages, readinto) -> pages added`` is
        :meth:`dumper.image.PagesWriter.add_present_from`: the pages go
        straight from the kernel into the writer's buffers. A page that
        cannot be read is recorded in ``unreadable`` and skipped. Returns the
        pages copied; ``progress(nbytes)`` is called as they go.
        """
        copied = 0
        for vaddr, nr_pages in runs:
            done = 0
            while done < nr_pages:
                got = add_from(vaddr + done * PAGE_SIZE, nr_pages - done, self.readinto)
                done += got
                copied += got
                if progress is not None and got:
                    progress(got * PAGE_SIZE)
                if done < nr_pages:  # the page at this address failed
                    self._record_unreadable(vaddr + done * PAGE_SIZE)
                    done += 1
        return copied

    def _record_unreadable(self, addr: int) -> None:
        # A dead target reads as failures too: that is not an unreadable page.
        self.process.check_has_mm()
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

"""Copying page runs of a process into the spool, in batched syscalls.

Two ways in, picked per run:

* ``process_vm_readv(2)`` for runs in readable VMAs: up to 1024 scattered
  remote runs per call, copied once, straight from the target's pages into
  the spool (about twice as fast as /proc/PID/mem here);
* ``/proc/PID/mem`` (fs/proc/base.c ``mem_rw``) for runs in VMAs without
  PROT_READ, which only it can read (FOLL_FORCE), and for the page a
  process_vm_readv batch stopped at, to tell "unreadable" from "not
  readable that way".

Both stop short at a page that cannot be read (a guard marker, a file page
past EOF, a hole that appeared). Such a page is recorded in ``unreadable``
and left out; it never aborts the dump. A target that died reads as
failures too: that is reported as the process being gone, not as
unreadable pages.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import KernelError, NoSuchProcess
from ..kernel.libc import PAGE_SIZE
from ..kernel.uio import IOVEC_DTYPE, UIO_MAXIOV, process_vm_readv
from ..proc.process import Process
from .spool import Spool

__all__ = ["PageCopier", "Extents"]

_STEP = 64 << 20  # bytes asked of the spool per step: bounds one syscall's work


@dataclass(slots=True)
class Extents:
    """Where copied pages went: parallel arrays, in copy order.

    ``vaddr[i]`` (bytes) for ``nbytes[i]`` bytes now lives at spool offset
    ``offset[i]``. Adjacent rows may be contiguous in both spaces.
    """

    vaddr: np.ndarray
    nbytes: np.ndarray
    offset: np.ndarray

    @classmethod
    def concat(cls, parts: list[Extents]) -> Extents:
        if not parts:
            e = np.empty(0, np.uint64)
            return cls(e, e.copy(), e.copy())
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("vaddr", "nbytes", "offset")))

    def __len__(self) -> int:
        return len(self.vaddr)

    @property
    def total(self) -> int:
        return int(self.nbytes.sum()) if len(self.nbytes) else 0


@dataclass(slots=True)
class PageCopier:
    """Copies ``[start, end)`` byte runs of ``process`` into a :class:`Spool`.

    ``unreadable`` collects ``(vaddr, nr_pages)`` runs that could not be
    read; ``read_ns`` and ``bytes_read`` are statistics.
    """

    process: Process
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    read_ns: int = 0
    bytes_read: int = 0
    _mem_fd: int = -1

    def _mem(self) -> int:
        if self._mem_fd < 0:
            self._mem_fd = self.process.open("mem")
        return self._mem_fd

    def copy(self, spool: Spool, starts: np.ndarray, ends: np.ndarray, *,
             forced: np.ndarray | None = None, progress=None) -> Extents:
        """Copy every run; returns where the bytes went.

        ``starts``/``ends`` are sorted, disjoint, page-aligned byte addresses
        (uint64 arrays); ``forced[i]`` marks a run that only /proc/PID/mem
        can read (its VMA lacks PROT_READ). ``progress(nbytes)`` is called as
        bytes land. Raises NoSuchProcess if the target dies, DumpError if the
        spool cannot take more, KernelError for other failures.
        """
        t0 = time.perf_counter_ns()
        parts: list[Extents] = []
        try:
            if forced is None or not forced.any():
                self._vm_readv(spool, starts, ends, parts, progress)
            else:
                # Alternate between the two ways in, keeping address order.
                edges = np.flatnonzero(np.diff(forced.astype(np.int8))) + 1
                for lo, hi in zip(np.concatenate(([0], edges)), np.concatenate((edges, [len(starts)]))):
                    if forced[lo]:
                        for s, e in zip(starts[lo:hi].tolist(), ends[lo:hi].tolist()):
                            self._mem_read(spool, s, e, parts, progress)
                    else:
                        self._vm_readv(spool, starts[lo:hi], ends[lo:hi], parts, progress)
        finally:
            self.read_ns += time.perf_counter_ns() - t0
        out = Extents.concat(parts)
        self.bytes_read += out.total
        return out

    # -- process_vm_readv ------------------------------------------------------

    def _vm_readv(self, spool: Spool, starts: np.ndarray, ends: np.ndarray, parts: list, progress) -> None:
        starts = starts.astype(np.uint64, copy=True)
        ends = ends.astype(np.uint64, copy=False)
        i, n = 0, len(starts)
        remote = np.empty(UIO_MAXIOV, IOVEC_DTYPE)
        local = np.empty(1, IOVEC_DTYPE)
        while i < n:
            buf = spool.buffer(min(_STEP, int((ends[i:i + UIO_MAXIOV] - starts[i:i + UIO_MAXIOV]).sum())))
            room = len(buf)
            lens = ends[i:i + UIO_MAXIOV] - starts[i:i + UIO_MAXIOV]
            cum = np.cumsum(lens)
            k = int(np.searchsorted(cum, room, side="right"))  # whole runs that fit
            take = lens[:k].copy()
            if k < len(lens) and (room - (int(cum[k - 1]) if k else 0)) >= PAGE_SIZE:
                take = np.append(take, np.uint64(room - (int(cum[k - 1]) if k else 0)))  # part of the next run
            cnt = len(take)
            remote["iov_base"][:cnt] = starts[i:i + cnt]
            remote["iov_len"][:cnt] = take
            want = int(take.sum())
            local["iov_base"][0] = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            local["iov_len"][0] = want
            try:
                # A live thread's id: with the main thread exited, the pid no longer reaches the mm.
                got = process_vm_readv(self.process.mm_tid(), local, remote[:cnt])
            except OSError as err:
                if err.errno == errno.ESRCH:
                    raise NoSuchProcess(self.process.pid, "process exited during the dump") from err
                if err.errno not in (errno.EFAULT, errno.ENOMEM, errno.EIO):
                    raise KernelError(err.errno, "process_vm_readv", f"pid {self.process.pid}") from err
                got = 0
            got -= got % PAGE_SIZE
            if got:
                # Record the whole runs (and the piece) that arrived.
                done = np.minimum(np.cumsum(take), got)
                sizes = np.diff(np.concatenate(([0], done))).astype(np.uint64)
                keep = sizes > 0
                offs = spool.size + np.concatenate(([0], done[:-1])).astype(np.uint64)
                parts.append(Extents(starts[i:i + cnt][keep].copy(), sizes[keep], offs[keep]))
                spool.advance(got)
                if progress is not None:
                    progress(got)
            # Move past what arrived.
            left = got
            while left and i < n:
                run = int(ends[i] - starts[i])
                if left >= run:
                    left -= run
                    i += 1
                else:
                    starts[i] += np.uint64(left)
                    left = 0
            if got < want and i < n:
                # Stopped at starts[i]: one page through /proc/PID/mem decides.
                addr = int(starts[i])
                self._mem_read(spool, addr, addr + PAGE_SIZE, parts, progress)
                starts[i] += np.uint64(PAGE_SIZE)
                if starts[i] >= ends[i]:
                    i += 1

    # -- /proc/PID/mem ---------------------------------------------------------

    def _mem_read(self, spool: Spool, start: int, end: int, parts: list, progress) -> None:
        def fail(err: OSError):
            with self.process.translate("mem"):
                raise err

        def unreadable(addr: int) -> None:
            self.process.check_has_mm()  # a dead target reads as failures too: that is not an unreadable page
            add_unreadable(self.unreadable, addr)

        read_into_spool(self._mem(), spool, start, end, parts, fail=fail, unreadable=unreadable, progress=progress)

    @property
    def pages_unreadable(self) -> int:
        return sum(n for _, n in self.unreadable)

    def close(self) -> None:
        if self._mem_fd >= 0:
            os.close(self._mem_fd)
            self._mem_fd = -1


def add_unreadable(runs: list[tuple[int, int]], addr: int) -> None:
    """Record page ``addr`` in ``runs`` (``(first address, pages)``,
    ascending), extending the last run when it ends there."""
    last = runs[-1] if runs else None
    if last and last[0] + last[1] * PAGE_SIZE == addr:
        runs[-1] = (last[0], last[1] + 1)
    else:
        runs.append((addr, 1))


def read_into_spool(fd: int, spool: Spool, start: int, end: int, parts: list, *, fail, unreadable,
                    progress=None, eof_zeros: bool = False) -> None:
    """Read bytes ``[start, end)`` (page aligned) of ``fd`` (``/proc/PID/mem``
    or a shared memory object) into ``spool`` with ``preadv``, appending
    :class:`Extents` to ``parts``. A page that cannot be read (EIO, EFAULT,
    ENOMEM: a hole in the address space, a poisoned page) or lies past the
    end of the file is passed to ``unreadable(addr)`` and skipped; other
    errors go to ``fail(err)``, which raises. ``eof_zeros``: a partial last
    page at the end of the file is completed with zeros (as it reads when
    mapped). ``progress(nbytes)`` after each piece."""
    pos = start
    while pos < end:
        buf = spool.buffer(min(_STEP, end - pos))
        got = 0
        while got < len(buf):
            try:
                k = os.preadv(fd, [buf[got:]], pos + got)
            except OSError as err:
                if err.errno in (errno.EIO, errno.EFAULT, errno.ENOMEM):
                    break
                fail(err)
                raise
            if k <= 0:
                break
            got += k
        if eof_zeros and got % PAGE_SIZE and got < len(buf):
            pad = PAGE_SIZE - got % PAGE_SIZE
            buf[got:got + pad] = bytes(pad)
            got += pad
        got -= got % PAGE_SIZE
        if got:
            parts.append(Extents(np.array([pos], np.uint64), np.array([got], np.uint64),
                                 np.array([spool.size], np.uint64)))
            spool.advance(got)
            if progress is not None:
                progress(got)
            pos += got
        if pos < end and got < len(buf):
            unreadable(pos)
            pos += PAGE_SIZE

"""Page copy strategies: while frozen into the spool, or after the thaw from
a copy-on-write snapshot.

``frozen`` (:class:`~dumper.dump.memread.PageCopier`): the pages are copied
into the spool while the target waits; its memory must be mapped and
populated before the freeze (the kernel zeroes and maps every 4 KiB page:
~0.5 s per GiB on this project's machines), and is freed after.

``fork`` (:class:`ForkSnapshot`): the frozen target forks
(:mod:`dumper.proc.snapshot`), which takes page tables, not pages (~40 ms
per GiB of 4 KiB pages), and runs again; the compression workers read the
child's pages themselves, frame by frame, while the target runs
(:meth:`~dumper.image.writer.PagesWriter.add_present_read`), and the child
is killed as soon as its last page is read and reaped at the end. No spool, so no populate before and no free
after; the target pays a page copy for each page it writes while the child
lives (copy-on-write), in its own memory cgroup.

``auto`` takes ``fork`` for a single process (not a tree: trees share pages
copy-on-write between their processes, which PE_COW entries store once from
the spool) with at least :data:`AUTO_MIN_BYTES` to copy and not so many VMAs
that the fork would take longer than the copy (:func:`fork_pays`), when
nothing in :func:`why_not` holds, and ``frozen`` otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import DumpError, NoSuchProcess
from ..kernel.libc import PAGE_SIZE
from ..kernel.x86_64 import ARCH
from ..proc.freeze import thread_state
from ..proc.maps import Vma
from ..proc.snapshot import SnapshotRefused, fork_snapshot, memcg_headroom, release_snapshot
from . import intervals as iv
from .memread import Extents, add_unreadable

__all__ = ["COPY_MODES", "AUTO_MIN_BYTES", "ForkSnapshot", "SnapshotRefused", "why_not", "fork_pays", "kept_out",
           "not_in_child"]

COPY_MODES = ("auto", "fork", "frozen")

#: Below this many bytes to copy, ``auto`` copies while frozen: the fork and
#: the reap (a second short stop) cost more than the copy saves.
AUTO_MIN_BYTES = 64 << 20

# Frozen-time costs measured here (2 cores, Linux 6.18, loaded): a fork
# copies every VMA (kernel/fork.c dup_mmap: ~3 us each) and the page tables
# (~35 us per MiB of 4 KiB pages); a frozen copy moves ~250 us per MiB. So
# 64,000 one-page VMAs fork in ~200 ms where their 250 MiB copy in ~70 ms.
_FORK_NS_PER_VMA = 3_000
_FORK_NS_PER_MIB = 35_000
_COPY_NS_PER_MIB = 250_000


def fork_pays(nr_vmas: int, nbytes: int) -> bool:
    """Whether forking a process with ``nr_vmas`` VMAs is expected to keep
    it frozen for less time than copying ``nbytes`` would."""
    mib = nbytes / (1 << 20)
    return nr_vmas * _FORK_NS_PER_VMA + mib * _FORK_NS_PER_MIB < mib * _COPY_NS_PER_MIB

# VmFlags of VMAs a forked child does not hold as they are: "dc" (VM_DONTCOPY,
# MADV_DONTFORK: absent) and "wf" (VM_WIPEONFORK: empty). Copied while frozen.
_NOT_IN_CHILD = frozenset({"dc", "wf"})
# VmFlags of userfaultfd-registered VMAs (missing, write-protect, minor).
_UFFD = frozenset({"um", "uw", "ui"})


def why_not(mode: str, *, tree: bool, pre_dump: bool, pre_copy: bool, thaw: str, pid: int,
            vmas: list[Vma], expected: int) -> str | None:
    """Why process ``pid`` is copied while frozen rather than forked (None:
    fork it). ``expected``: bytes to copy as estimated before the freeze."""
    if mode == "frozen":
        return "--copy frozen"
    if ARCH != "x86_64":
        return f"no syscall injection on {ARCH}"
    if pre_dump or pre_copy:
        return "a pre-dump or --pre-copy copies while the process runs already"
    if tree:
        return "a process tree (pages shared between its processes are stored once from frozen copies)"
    if thaw == "kill":
        # The orphaned child would keep the process's pid in use (as its
        # session and group id) until its new parent reaps it: a restore
        # right after could not have the pid back.
        return "the process is killed at the thaw"
    if any(v.vmflags & _UFFD for v in vmas):
        return "VMAs registered with a userfaultfd (a fork could wait for its frozen monitor)"
    if mode == "auto" and expected < AUTO_MIN_BYTES:
        return f"less than {AUTO_MIN_BYTES >> 20} MiB to copy"
    if mode == "auto" and not fork_pays(len(vmas), expected):
        return f"{len(vmas)} VMAs take longer to fork than {expected >> 20} MiB to copy"
    headroom = memcg_headroom(pid)
    if headroom is not None and headroom < expected:
        return (f"its memory cgroup has {headroom >> 20} MiB left: pages it writes while the "
                "snapshot lives would be copied there")
    return None


def not_in_child(v: Vma) -> bool:
    """Whether a forked child does not hold VMA ``v`` as it is."""
    return bool(v.vmflags & _NOT_IN_CHILD)


def kept_out(vmas: list[Vma]) -> tuple:
    """Interval set of the VMAs a forked child does not hold as they are."""
    return iv.from_pairs([(v.start, v.end) for v in vmas if not_in_child(v)])


@dataclass(eq=False)
class ForkSnapshot:
    """The copy-on-write child of one frozen process and the page runs read
    from it after the thaw.

    ``runs``: ``(starts, ends)`` byte intervals to read (sorted, disjoint,
    page aligned). Statistics as :class:`~dumper.dump.memread.PageCopier`'s:
    ``unreadable`` ``(vaddr, nr_pages)`` runs (stored as zeros: the writer's
    workers read as they compress, after the entries are laid out; only a
    poisoned page can fail here, as every page is a private anonymous page
    of a process that never runs), ``read_ns``, ``bytes_read``;
    ``extents`` the runs read, after :meth:`release` (offsets meaningless:
    the bytes went straight to the writer).
    """

    pid: int
    child: int
    runs: tuple
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    read_ns: int = 0
    bytes_read: int = 0
    extents: Extents | None = None
    _mem_fd: int = -1
    _done: list = field(default_factory=list)
    _bad: list = field(default_factory=list)  # addresses of pages read as zeros (from worker threads)
    _left: int = -1  # bytes still to read; at 0 the child is killed at once
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def take(cls, tracer, pid: int, runs: tuple) -> ForkSnapshot:
        """Fork frozen ``pid`` (in the warden). SnapshotRefused: not done."""
        return cls(pid, tracer.call(fork_snapshot, pid), runs)

    @property
    def total(self) -> int:
        return iv.total(*self.runs)

    @property
    def pages_unreadable(self) -> int:
        return sum(n for _, n in self.unreadable)

    def open(self) -> None:
        """Open the child's ``/proc/PID/mem`` (before reading from several threads)."""
        if self._mem_fd < 0:
            try:
                self._mem_fd = os.open(f"/proc/{self.child}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as err:
                raise NoSuchProcess(self.child, "the snapshot process was killed (out of memory?)") from err

    def readinto(self, view: memoryview, addr: int) -> int:
        """Fill ``view`` with the child's memory at ``addr``; bytes got (short:
        the page after them could not be read). Thread-safe after :meth:`open`.

        Through ``/proc/CHILD/mem``, not process_vm_readv: that one pins the
        pages (FOLL_PIN), and pinning an anonymous page the child still
        shares with the target makes the kernel copy it first (mm/gup.c
        ``gup_must_unshare``): a page allocated and copied for every page
        read, 5x slower here. /proc/PID/mem takes plain references
        (``access_remote_vm``) and reads VMAs without PROT_READ too
        (FOLL_FORCE). Raises NoSuchProcess if the child died (its memory
        then reads as nothing).
        """
        got = 0
        while got < len(view):
            try:
                k = os.preadv(self._mem_fd, [view[got:]], addr + got)
            except OSError as err:
                if err.errno not in (errno.EIO, errno.EFAULT, errno.ENOMEM):
                    raise DumpError(f"reading the snapshot of pid {self.pid}: {err.strerror}") from err
                k = 0
            if k <= 0:
                self._check_alive()
                break
            got += k
        got -= got % PAGE_SIZE
        self._consumed(got)
        return got

    def _unreadable(self, addr: int) -> None:
        self._bad.append(addr)
        self._consumed(PAGE_SIZE)

    def _consumed(self, nbytes: int) -> None:
        """Count bytes read (or given up); after the last one the child is
        killed right away, so the kernel tears its address space down while
        the last frames are compressed and written, not after."""
        with self._lock:
            self._left -= nbytes
            last = self._left == 0
        if last:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGKILL)  # still our tracee until reaped: the pid is its own

    def _check_alive(self) -> None:
        if thread_state(self.child, self.child) in (None, "Z", "X"):
            raise NoSuchProcess(self.child, "the snapshot process was killed (out of memory?)")

    def write_run(self, pw, start: int, end: int) -> None:
        """``[start, end)`` as PE_PRESENT pages of ``pw``, read from the child
        by its compression workers (a page that cannot be read is stored as
        zeros and recorded in ``unreadable``)."""
        self.open()
        if self._left < 0:
            self._left = self.total
        t0 = time.perf_counter_ns()
        pw.add_present_read(start, (end - start) // PAGE_SIZE, self.readinto, self._unreadable)
        self._done.append((start, end))
        self.bytes_read += end - start
        self.read_ns += time.perf_counter_ns() - t0

    def release(self, tracer, thaw: str) -> int | None:
        """Kill and reap the child (the target stops for the reap, then goes
        on in ``thaw`` mode); ``extents`` is then final. Returns the
        nanoseconds the target was stopped for the reap, None if the target
        exited while its snapshot was read."""
        if self._mem_fd >= 0:
            os.close(self._mem_fd)
            self._mem_fd = -1
        for addr in sorted(self._bad):
            add_unreadable(self.unreadable, addr)
        done = np.array(self._done, np.uint64).reshape(-1, 2)
        self.extents = Extents(done[:, 0].copy(), done[:, 1] - done[:, 0], np.zeros(len(done), np.uint64))
        if not self.child:
            return 0
        child, self.child = self.child, 0
        return tracer.call(release_snapshot, self.pid, child, thaw)


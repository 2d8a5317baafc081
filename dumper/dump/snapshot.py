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

How the child's pages are read: the child copies them itself into a window
(:func:`dumper.proc.snapshot.open_window`) that this process maps, a slot of
:data:`WINDOW_SLOT_BYTES` per request, the next slot copied while the
writer compresses the previous ones straight from the window
(:class:`_Window`); 0.2 s of CPU per GiB where reading /proc/CHILD/mem took
0.4. Where the window cannot be made (kernels before 5.9), the compression
workers read /proc/CHILD/mem (:meth:`ForkSnapshot.readinto`).

``auto`` takes ``fork`` for a single process (not a tree: trees share pages
copy-on-write between their processes, which PE_COW entries store once from
the spool) with at least :data:`AUTO_MIN_BYTES` to copy and not so many VMAs
that the fork would take longer than the copy (:func:`fork_pays`), when
nothing in :func:`why_not` holds, and ``frozen`` otherwise.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import mmap
import os
import queue
import signal
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import DumpError, KernelError, NoSuchProcess, UnsupportedKernel
from ..image.writer import read_whole
from ..kernel.libc import PAGE_SIZE
from ..kernel.pidfd import pidfd_getfd, pidfd_open
from ..kernel.x86_64 import ARCH
from ..proc.freeze import thread_state
from ..proc.maps import Vma
from ..proc.snapshot import (WINDOW_DESC_BYTES, SnapshotRefused, copy_in_child, fork_snapshot, memcg_headroom,
                             open_window, release_snapshot)
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


#: The child copies runs into a window of this many slots of this many bytes
#: (64 MiB): one slot copying while the writer compresses others, ahead.
WINDOW_SLOTS = 8
WINDOW_SLOT_BYTES = 8 << 20
_SLOT_RUNS = WINDOW_SLOT_BYTES // PAGE_SIZE  # the most runs a slot can hold (a page each)
_DESC_OFFSET = WINDOW_SLOTS * WINDOW_SLOT_BYTES  # the descriptors follow the slots
_WINDOW_BYTES = _DESC_OFFSET + WINDOW_SLOTS * _SLOT_RUNS * WINDOW_DESC_BYTES


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


class _Window:
    """The snapshot child's window as this process maps it, and the runs the
    child copied into it that the writer has not taken yet.

    The runs (sorted byte intervals) are cut into pieces at slot ends; the
    child copies a slot's pieces in one request (the warden runs
    :func:`~dumper.proc.snapshot.copy_in_child`), issued with
    ``call_soon`` so that it copies the next slot while this process hands
    the previous one to the writer. A slot is free again once every frame
    made from it is compressed (its pieces' ``release``)."""

    def __init__(self, snap: ForkSnapshot, base: int, view: memoryview) -> None:
        self.snap, self.base, self.view = snap, base, view
        starts, ends = snap.runs
        self.runs = list(zip(starts.tolist(), ends.tolist()))
        self.run_i, self.run_pos = 0, self.runs[0][0] if self.runs else 0
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(WINDOW_SLOTS):
            self.free.put(slot)
        self.refs = [0] * WINDOW_SLOTS
        self.lock = threading.Lock()
        self.ready: collections.deque = collections.deque()  # (addr, nbytes, view, slot)
        self.pending = None  # (result, slot, pieces) of the copy under way

    def pieces(self, start: int, end: int):
        """The pieces of run ``[start, end)``, copied: ``(addr, view, release)``."""
        pos = start
        while pos < end:
            if not self.ready:
                self._advance()
            elif not self.free.empty():
                self._run_ahead()
            addr, n, view, slot = self.ready.popleft()
            if addr != pos or addr + n > end:
                raise RuntimeError(f"snapshot run {start:#x}-{end:#x} asked out of order (have {addr:#x})")
            yield addr, view, functools.partial(self._unref, slot)
            pos += n

    def _unref(self, slot: int) -> None:
        with self.lock:
            self.refs[slot] -= 1
            if self.refs[slot]:
                return
        self.free.put(slot)

    def _advance(self) -> None:
        """Wait for the copy under way (starting one if none is), queue its
        pieces, and run ahead."""
        if self.pending is None:
            self._issue(block=True)
            if self.pending is None:
                raise RuntimeError("snapshot runs asked past the last one")
        self._take_pending()
        self._run_ahead()

    def _run_ahead(self) -> None:
        """Fill every free slot, leaving one copy under way while the writer
        is fed: the sooner the last copy is done, the sooner the child goes
        (its teardown, 40 ms per GiB here, then overlaps the compression of
        what the window holds). The last copy is waited for at once."""
        while self.run_i < len(self.runs) and not self.free.empty():
            if self.pending is not None:
                self._take_pending()
            self._issue(block=False)
        if self.run_i >= len(self.runs):
            if self.pending is not None:
                self._take_pending()
            self.snap._all_read()

    def _take_pending(self) -> None:
        """Wait for the copy under way and queue its pieces."""
        result, slot, pieces = self.pending
        self.pending = None
        got = result()
        if got < sum(n for _, n in pieces):
            self._read_rest(slot, pieces, got)
        off = slot * WINDOW_SLOT_BYTES
        self.refs[slot] = len(pieces)
        for addr, n in pieces:
            self.ready.append((addr, n, self.view[off:off + n], slot))
            off += n

    def _issue(self, *, block: bool) -> bool:
        """Start the child copying the next slot's worth of runs, if any
        (and, unless ``block``, if a slot is free now); whether it did."""
        if self.run_i >= len(self.runs):
            return False
        try:
            slot = self.free.get(block=block)
        except queue.Empty:
            return False
        pieces, room = [], WINDOW_SLOT_BYTES
        while room and self.run_i < len(self.runs) and len(pieces) < _SLOT_RUNS:
            end = self.runs[self.run_i][1]
            n = min(room, end - self.run_pos)
            pieces.append((self.run_pos, n))
            room -= n
            self.run_pos += n
            if self.run_pos == end:
                self.run_i += 1
                if self.run_i < len(self.runs):
                    self.run_pos = self.runs[self.run_i][0]
        desc = _DESC_OFFSET + slot * _SLOT_RUNS * WINDOW_DESC_BYTES
        struct.pack_into(f"<{2 * len(pieces)}Q", self.view, desc, *(x for p in pieces for x in p))
        snap = self.snap
        result = snap._tracer.call_soon(copy_in_child, snap.child, self.base + slot * WINDOW_SLOT_BYTES,
                                        self.base + desc, len(pieces))
        self.pending = (result, slot, pieces)
        return True

    def _read_rest(self, slot: int, pieces: list, got: int) -> None:
        """The child stopped at a page it could not read: the rest of the
        slot through /proc/CHILD/mem (which reads PROT_NONE pages too; what
        even that cannot read becomes zeros, recorded)."""
        skip = got - got % PAGE_SIZE
        off = slot * WINDOW_SLOT_BYTES
        for addr, n in pieces:
            if skip < n:
                self.snap._read_fully(self.view[off + skip:off + n], addr + skip)
            skip = max(0, skip - n)
            off += n


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
    _tracer: object = None
    _window: _Window | None = None
    #: Whether the child copies its pages into a window (False: read
    #: /proc/CHILD/mem); tests turn it off to cover that path.
    use_window = True

    _thaw: str = "resume"
    _released: object = None  # the result of a release started early (call_soon)

    @classmethod
    def take(cls, tracer, pid: int, runs: tuple, thaw: str = "resume") -> ForkSnapshot:
        """Fork frozen ``pid`` (in the warden); ``thaw``: how the target goes
        on after the reap. SnapshotRefused: not done."""
        return cls(pid, tracer.call(fork_snapshot, pid), runs, _tracer=tracer, _thaw=thaw)

    @property
    def read_via(self) -> str:
        """How the pages were read: ``"window"`` or ``"/proc/PID/mem"``."""
        return "window" if self._window is not None else "/proc/PID/mem"

    @property
    def total(self) -> int:
        return iv.total(*self.runs)

    @property
    def pages_unreadable(self) -> int:
        return sum(n for _, n in self.unreadable)

    def open(self) -> None:
        """Open the child's ``/proc/PID/mem`` (before reading from several
        threads) and, first time, its window."""
        if self._mem_fd < 0:
            try:
                self._mem_fd = os.open(f"/proc/{self.child}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as err:
                raise NoSuchProcess(self.child, "the snapshot process was killed (out of memory?)") from err
            if self.use_window and self._tracer is not None and self.total:
                self._open_window()

    def _open_window(self) -> None:
        """Have the child make its window and map it here; left unset where
        a step is refused (old kernel, memory): /proc/CHILD/mem is read then.
        The window's pages are allocated here (fallocate), so they are
        charged to this process's memory cgroup, not the target's."""
        try:
            made = self._tracer.call(open_window, self.child, _WINDOW_BYTES)
        except (KernelError, UnsupportedKernel):
            return
        if made is None:
            return
        child_fd, base = made
        try:
            pidfd = pidfd_open(self.child)
            try:
                fd = pidfd_getfd(pidfd, child_fd)
            finally:
                os.close(pidfd)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, _WINDOW_BYTES)
            view = memoryview(mmap.mmap(fd, _WINDOW_BYTES, flags=mmap.MAP_SHARED))
        except OSError:
            return
        finally:
            os.close(fd)
        self._window = _Window(self, base, view)

    def _all_read(self) -> None:
        """Every page is in the window: the child goes at once, so the kernel
        tears its address space down (40 ms per GiB here) and the warden
        reaps it while the last frames are compressed, not after."""
        if self._released is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child, signal.SIGKILL)  # still our tracee until reaped: the pid is its own
        self._released = self._tracer.call_soon(release_snapshot, self.pid, self.child, self._thaw)

    def _read_fully(self, view: memoryview, addr: int) -> None:
        """``view`` from /proc/CHILD/mem at ``addr``; a page it cannot read
        becomes zeros, recorded in ``unreadable``."""
        read_whole(self._pread, view, addr, PAGE_SIZE, self._bad.append)

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
        got = self._pread(view, addr)
        self._consumed(got)
        return got

    def _pread(self, view: memoryview, addr: int) -> int:
        """As :meth:`readinto`, without counting the bytes towards the kill."""
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
        return got - got % PAGE_SIZE

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
        t0 = time.perf_counter_ns()
        if self._window is not None:
            for addr, view, release in self._window.pieces(start, end):
                pw.add_present(addr, view, stable=True, release=release)
        else:
            if self._left < 0:
                self._left = self.total
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
        if self._window is not None:  # unmapped once the writer's last views of it are gone
            with contextlib.suppress(BufferError):
                self._window.view.release()
        for addr in sorted(self._bad):
            add_unreadable(self.unreadable, addr)
        done = np.array(self._done, np.uint64).reshape(-1, 2)
        self.extents = Extents(done[:, 0].copy(), done[:, 1] - done[:, 0], np.zeros(len(done), np.uint64))
        if not self.child:
            return 0
        child, self.child = self.child, 0
        if self._released is not None:  # started by _all_read (the same thaw mode)
            return self._released()
        return tracer.call(release_snapshot, self.pid, child, thaw)


"""uffd-wp write tracking armed inside the target (include/uapi/linux/userfaultfd.h,
Documentation/admin-guide/mm/userfaultfd.rst "Write Protect Notifications",
fs/proc/task_mmu.c PAGEMAP_SCAN; Linux >= 6.7 for WP_ASYNC).

A userfaultfd is bound to the mm of the process that creates it, so the
frozen target is made to create one (syscalls injected with ptrace, see
:mod:`dumper.proc.inject`), in WP_ASYNC + WP_UNPOPULATED mode, and to
register its private VMAs with UFFDIO_REGISTER_MODE_WP. From then on the
kernel clears the uffd-wp bit of a page on its first write, without any
fault reaching a reader: PAGEMAP_SCAN reports the page as WRITTEN.

Resetting ("write-protect everything again") is one PAGEMAP_SCAN call with
PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC over the pages that exist
(any-of PRESENT|SWAPPED): restricting the match keeps the kernel from
installing uffd-wp markers into unpopulated page tables, which for a 16 TiB
sparse reservation would allocate gigabytes of page tables.

What a tracked page can be, as PAGEMAP_SCAN sees it:

* PRESENT|WRITTEN or SWAPPED|WRITTEN — written since the last reset: dump it;
* PRESENT or SWAPPED without WRITTEN — unchanged: its data is in the parent;
* a uffd-wp *marker* (an unpopulated PTE kept write-protected, e.g. after
  MADV_DONTNEED of a protected page) reads SWAPPED without WRITTEN too, but
  holds no data: it reads as zeros. Markers are told apart from real swap
  entries by their pagemap entry (the kernel's pte-marker swap type).

Arming and disarming inject system calls, so they run inside the warden
(:mod:`dumper.proc.warden`): :func:`arm_call`, :func:`register_call` and
:func:`disarm_call` are passed to ``Warden.call``. Each registers an undo
action first, so a session that fails or is interrupted removes what it
armed, and each records what it creates in the tracking state file before
creating it (:mod:`dumper.track.state`), so ``dumper untrack`` finds it
whatever happens. A userfaultfd dumper made is recognised by that record
(descriptor and inode) or, without one, by what only dumper's have
(:func:`dumper_uffds`): WP_ASYNC|WP_UNPOPULATED exactly, opened
O_NONBLOCK|O_CLOEXEC.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import DumperError, KernelError, NoSuchProcess, ProcessError, UnsupportedKernel
from ..kernel import fs, mman, userfaultfd as uffd
from ..kernel.libc import PAGE_SIZE
from ..kernel.pagemap import PM_PFRAME_MASK, PM_SWAP, PM_UFFD_WP
from ..kernel.x86_64 import NR_close, NR_ioctl, NR_mmap, NR_munmap, NR_userfaultfd
from ..proc.freeze import Freezer
from ..proc.inject import Injector
from . import state as tracking_state
from ..scan.categories import Category, KernelMasks
from ..scan.ioctl import pagemap_scan

__all__ = ["UffdTracking", "arm", "register", "reset", "disarm", "find_uffd", "marker_mask",
           "arm_call", "register_call", "disarm_call", "dumper_uffds", "uffd_ino", "untrack_hint"]

# PTE_MARKER_UFFD_WP encoded as a swap entry in pagemap: swap type bits 0-4
# all set (SWP_PTE_MARKER, the last swap type), offset 1 (include/linux/
# swapops.h). Measured on 6.18; checked again by tests.
_SWP_TYPE_BITS = 5
_MARKER_TYPE = (1 << _SWP_TYPE_BITS) - 1
_PTE_MARKER_UFFD_WP = 1


@dataclass(slots=True)
class UffdTracking:
    """What was armed: the target's fd number and the ranges registered.

    ``ranges`` are ``(start, end)`` byte pairs, end-exclusive; ``failed``
    the VMAs the kernel refused to register (they are always dumped whole).
    """

    fd: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    failed: list[tuple[int, int, int]] = field(default_factory=list)  # start, end, errno
    ino: int | None = None  # the userfaultfd's own inode (st_ino of /proc/PID/fd/FD)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise KernelError(-ret, what, "inside the target")
    return ret


def _poke(freezer: Freezer, addr: int, data: bytes) -> None:
    fd = freezer.process.open("mem", os.O_RDWR)
    try:
        with freezer.process.translate("mem"):
            os.pwrite(fd, data, addr)
    finally:
        os.close(fd)


def _peek(freezer: Freezer, addr: int, size: int) -> bytes:
    fd = freezer.process.open("mem")
    try:
        with freezer.process.translate("mem"):
            return os.pread(fd, size, addr)
    finally:
        os.close(fd)


def _scratch(inj: Injector) -> int:
    return _check(inj.syscall(NR_mmap, 0, PAGE_SIZE, mman.PROT_READ | mman.PROT_WRITE,
                              mman.MAP_PRIVATE | mman.MAP_ANONYMOUS, -1, 0), "mmap(scratch)")


def _coalesce(ranges: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Group sorted ``(start, end)`` ranges into runs that touch end to start."""
    groups: list[list[tuple[int, int]]] = []
    for r in sorted(ranges):
        if groups and groups[-1][-1][1] == r[0]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _register(freezer: Freezer, inj: Injector, scratch: int, state: UffdTracking,
              ranges: list[tuple[int, int]]) -> None:
    """Register ``ranges``: one UFFDIO_REGISTER per run of adjacent VMAs (the
    kernel registers each VMA of the range), VMA by VMA where a run fails."""
    def one(start: int, end: int) -> int:
        reg = uffd.uffdio_register(range=uffd.uffdio_range(start, end - start), mode=uffd.UFFDIO_REGISTER_MODE_WP)
        _poke(freezer, scratch, bytes(reg))
        return inj.syscall(NR_ioctl, state.fd, uffd.UFFDIO_REGISTER, scratch)

    for group in _coalesce(ranges):
        if len(group) > 1 and one(group[0][0], group[-1][1]) >= 0:
            state.ranges.append((group[0][0], group[-1][1]))
            continue
        for start, end in group:
            ret = one(start, end)
            if ret < 0:
                state.failed.append((start, end, -ret))
            else:
                state.ranges.append((start, end))


def _unregister(freezer: Freezer, inj: Injector, scratch: int, fd: int, ranges: list[tuple[int, int]]) -> None:
    """UFFDIO_UNREGISTER ``ranges`` (runs of adjacent ones at once; errors ignored:
    closing the descriptor unregisters the rest)."""
    def one(start: int, end: int) -> int:
        _poke(freezer, scratch, bytes(uffd.uffdio_range(start, end - start)))
        return inj.syscall(NR_ioctl, fd, uffd.UFFDIO_UNREGISTER, scratch)

    for group in _coalesce(ranges):
        if len(group) > 1 and one(group[0][0], group[-1][1]) >= 0:
            continue
        for start, end in group:
            one(start, end)


def arm(freezer: Freezer, ranges: list[tuple[int, int]], *, protect: bool = True) -> UffdTracking:
    """Make the frozen target create a WP_ASYNC userfaultfd and register ``ranges``.

    Then, with ``protect``, write-protects every existing page (:func:`reset`).
    The injected calls let the thread back into user mode for an instant,
    where the kernel may update its rseq area: a dump injects *before* it
    scans and reads, and protects after. Raises
    UnsupportedKernel when userfaultfd or WP_ASYNC is missing, KernelError
    for other failures inside the target. The scratch page used for the
    ioctl arguments is unmapped again before returning.
    """
    state = UffdTracking(-1)
    _arm(freezer, state, ranges, None)
    if protect:
        reset(freezer.pid, state.ranges)
    return state


def _arm(freezer: Freezer, state: UffdTracking, ranges: list[tuple[int, int]], created) -> None:
    """Create the userfaultfd into ``state`` (fd, ino), call ``created(state)``
    once it exists, then register ``ranges``. On failure inside, what was
    made is taken down again before raising."""
    with Injector(freezer) as inj:
        fd = inj.syscall(NR_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
        if fd < 0:
            raise UnsupportedKernel("userfaultfd", os.strerror(-fd))
        state.fd = fd
        state.ino = uffd_ino(freezer.pid, fd)
        scratch = None
        try:
            if created is not None:
                created(state)
            scratch = _scratch(inj)
            want = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED
            _poke(freezer, scratch, bytes(uffd.uffdio_api(api=uffd.UFFD_API, features=want)))
            ret = inj.syscall(NR_ioctl, fd, uffd.UFFDIO_API, scratch)
            if ret < 0:
                raise UnsupportedKernel("userfaultfd WP_ASYNC", f"UFFDIO_API: {os.strerror(-ret)} (needs Linux 6.7)")
            _register(freezer, inj, scratch, state, ranges)
        except BaseException:
            if scratch is not None:
                _unregister(freezer, inj, scratch, fd, state.ranges)
            inj.syscall(NR_close, fd)
            state.ranges.clear()
            state.fd = -1
            raise
        finally:
            if scratch is not None:
                inj.syscall(NR_munmap, scratch, PAGE_SIZE)


def register(freezer: Freezer, state: UffdTracking, ranges: list[tuple[int, int]], *,
             protect: bool = True) -> None:
    """Register more ranges (new VMAs) with the target's existing userfaultfd
    and, with ``protect``, write-protect them; ``state`` is updated."""
    if not ranges:
        return
    with Injector(freezer) as inj:
        scratch = _scratch(inj)
        try:
            before = len(state.ranges)
            _register(freezer, inj, scratch, state, ranges)
        finally:
            inj.syscall(NR_munmap, scratch, PAGE_SIZE)
    if protect:
        reset(freezer.pid, state.ranges[before:])


def reset(pid: int, ranges: list[tuple[int, int]]) -> None:
    """Write-protect every existing page of ``ranges`` again.

    PAGEMAP_SCAN with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, matching
    WRITTEN pages that are PRESENT or SWAPPED. An output vector is passed on
    purpose: without one the kernel takes a fast path that ignores the masks
    and puts a uffd-wp marker into every empty PTE of the page tables it
    walks (fs/proc/task_mmu.c ``pagemap_scan_pmd_entry``), and markers read as
    SWAPPED pages. EPERM -> a range is no longer registered (KernelError).
    """
    masks = KernelMasks(category_mask=int(Category.WRITTEN), category_inverted=0,
                        category_anyof_mask=int(Category.PRESENT | Category.SWAPPED), return_mask=0)
    vec = (fs.page_region * 512)()
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, end in ranges:
            pos = start
            while pos < end:
                try:
                    n, walk_end = pagemap_scan(fd, pos, end, masks, vec, 0,
                                               fs.PM_SCAN_WP_MATCHING | fs.PM_SCAN_CHECK_WPASYNC)
                except OSError as err:
                    raise KernelError(err.errno, "ioctl(PAGEMAP_SCAN, WP_MATCHING)",
                                      f"[{start:#x}, {end:#x}) of pid {pid}") from err
                if n:
                    walk_end = max(walk_end, vec[n - 1].end)
                if walk_end <= pos:
                    raise KernelError(errno.EAGAIN, "ioctl(PAGEMAP_SCAN, WP_MATCHING)", "no progress")
                pos = walk_end
    finally:
        os.close(fd)


def disarm(freezer: Freezer, tracking: UffdTracking) -> None:
    """Unregister the ranges and close the target's userfaultfd."""
    with Injector(freezer) as inj:
        scratch = _scratch(inj)
        try:
            _unregister(freezer, inj, scratch, tracking.fd, tracking.ranges)
        finally:
            inj.syscall(NR_munmap, scratch, PAGE_SIZE)
        inj.syscall(NR_close, tracking.fd)


def _fd_dir(pid: int) -> str:
    """/proc/PID/fd, or a live thread's when the leader exited (its own table is gone)."""
    from ..proc.process import Process

    try:
        tid = Process(pid).mm_tid()
    except ProcessError:
        tid = pid
    return f"/proc/{pid}/fd" if tid == pid else f"/proc/{pid}/task/{tid}/fd"


def find_uffd(pid: int, fd: int, ino: int | None = None) -> bool:
    """True if the target's descriptor ``fd`` is still a userfaultfd (with
    inode ``ino``, when given)."""
    try:
        if os.readlink(f"{_fd_dir(pid)}/{fd}") != "anon_inode:[userfaultfd]":
            return False
        return ino is None or os.stat(f"{_fd_dir(pid)}/{fd}").st_ino == ino
    except OSError:
        return False


def uffd_ino(pid: int, fd: int) -> int | None:
    try:
        return os.stat(f"{_fd_dir(pid)}/{fd}").st_ino
    except OSError:
        return None


# What fdinfo shows for a userfaultfd dumper made (fs/userfaultfd.c
# userfaultfd_show_fdinfo(): "API:\t%Lx:%x:%Lx" = UFFD_API, ctx->features,
# ioctls; the features carry the kernel's internal UFFD_FEATURE_INITIALIZED,
# bit 31). Flags: O_NONBLOCK|O_CLOEXEC as given to userfaultfd(2).
_FEATURE_INITIALIZED = 1 << 31
_OUR_FEATURES = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED
_OUR_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC


def _fdinfo(pid: int, fd: int) -> dict[str, str]:
    out = {}
    try:
        with open(f"{_fd_dir(pid)}/../fdinfo/{fd}", "rb") as f:
            for line in f.read(4096).decode(errors="replace").splitlines():
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def dumper_uffds(pid: int) -> dict[int, tuple[int | None, bool]]:
    """The target's userfaultfds: ``{fd: (inode, looks like dumper's)}``.

    "Looks like dumper's": features exactly WP_ASYNC|WP_UNPOPULATED and
    flags O_NONBLOCK|O_CLOEXEC, which is how dumper creates them; a target
    could make one alike, so a state record naming the inode is the proof,
    this the fallback.
    """
    out = {}
    fd_dir = _fd_dir(pid)
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") != "anon_inode:[userfaultfd]":
                continue
            ino = os.stat(f"{fd_dir}/{name}").st_ino
        except OSError:
            continue
        info = _fdinfo(pid, int(name))
        ours = False
        try:
            features = int(info.get("API", "0:0:0").split(":")[1], 16) & ~_FEATURE_INITIALIZED
            flags = int(info.get("flags", "0"), 8)
            ours = features == _OUR_FEATURES and flags & _OUR_FLAGS == _OUR_FLAGS
        except (ValueError, IndexError):
            pass
        out[int(name)] = (ino, ours)
    return out


def untrack_hint(pid: int) -> str:
    return f"remove it with `dumper untrack {pid}`"


def _lowest_free_fd(pid: int) -> int | None:
    """The descriptor number the frozen target's next open gets (fs/file.c
    alloc_fd(): the lowest free one; nothing else can take it while frozen,
    unless another process shares its descriptor table)."""
    try:
        used = {int(n) for n in os.listdir(_fd_dir(pid))}
    except OSError:
        return None
    fd = 0
    while fd in used:
        fd += 1
    return fd


# -- run inside the warden (Warden.call) -------------------------------------


def arm_call(ctx, pid: int, ranges: list[tuple[int, int]], *, start_time: int, checkpoint: str,
             protect: bool = False) -> UffdTracking:
    """In the warden: make frozen ``pid`` create a userfaultfd and register
    ``ranges`` (see :func:`arm`).

    The state file is written first (``armed=False``, the descriptor number
    it will get), then with the real descriptor and inode before any range is
    registered; an undo action is registered that, if the session ends
    without ``keep()``, unregisters and closes it and removes the record.
    Raises StateDirError (nothing armed) when the record cannot be written.
    """
    fz = ctx.freezer(pid)
    record = tracking_state.TrackingState(tracking_id="", tracker="uffd-wp", checkpoint=checkpoint,
                                          uffd_fd=_lowest_free_fd(pid), armed=False)
    tracking_state.save(pid, start_time, record)
    state = UffdTracking(-1)
    ctx.on_abort(_undo_arm, pid, start_time, state)

    def created(st: UffdTracking) -> None:
        record.uffd_fd, record.uffd_ino = st.fd, st.ino
        tracking_state.save(pid, start_time, record)

    try:
        _arm(fz, state, ranges, created)
    except BaseException:
        tracking_state.clear(pid, start_time)
        raise
    record.armed = True
    tracking_state.save(pid, start_time, record)
    if protect:
        reset(fz.pid, state.ranges)
    return state


def _undo_arm(ctx, pid: int, start_time: int, state: UffdTracking) -> None:
    """Undo of :func:`arm_call`: take down the userfaultfd it made, if still there."""
    if state.fd < 0:
        tracking_state.clear(pid, start_time)
        return
    try:
        if not find_uffd(pid, state.fd, state.ino):
            tracking_state.clear(pid, start_time, ino=state.ino)
            return
        fz = ctx.freeze(pid)
        # What carries VM_UFFD_WP now: the target may have run (and split or
        # moved VMAs) since arming; it had none of its own (arming refuses).
        ranges = [(v.start, v.end) for v in fz.process.vmas(smaps=True) if "uw" in v.vmflags]
        disarm(fz, UffdTracking(state.fd, ranges or list(state.ranges), ino=state.ino))
    except NoSuchProcess:
        tracking_state.clear(pid, start_time)
        return
    except DumperError as err:
        raise DumperError(f"uffd-wp tracking left armed in pid {pid} (descriptor {state.fd}): {err}; "
                          f"{untrack_hint(pid)}") from err
    tracking_state.clear(pid, start_time, ino=state.ino)


def register_call(ctx, pid: int, state: UffdTracking, ranges: list[tuple[int, int]],
                  protect: bool = False) -> UffdTracking:
    """In the warden: register ``ranges`` with the existing userfaultfd
    ``state`` (see :func:`register`); undo unregisters them. Returns the
    updated state."""
    fz = ctx.freezer(pid)
    before = set(state.ranges)
    added = UffdTracking(state.fd, ino=state.ino)
    ctx.on_abort(_undo_register, pid, added)
    register(fz, added, ranges, protect=protect)
    state.ranges = sorted(before | set(added.ranges))
    state.failed.extend(added.failed)
    return state


def _undo_register(ctx, pid: int, added: UffdTracking) -> None:
    if not added.ranges or not find_uffd(pid, added.fd, added.ino):
        return
    try:
        fz = ctx.freeze(pid)
        with Injector(fz) as inj:
            scratch = _scratch(inj)
            try:
                _unregister(fz, inj, scratch, added.fd, added.ranges)
            finally:
                inj.syscall(NR_munmap, scratch, PAGE_SIZE)
    except NoSuchProcess:
        return


def disarm_call(ctx, pid: int, state: UffdTracking, *, start_time: int | None = None) -> list[tuple[int, int]]:
    """In the warden: unregister and close ``state``'s userfaultfd in frozen
    ``pid`` (``state.ranges`` empty: every VMA marked ``uw``), then remove
    the state record naming it (``start_time`` given), in the same request so
    no interruption can separate the two. Returns the ranges unregistered."""
    fz = ctx.freezer(pid)
    if not state.ranges:
        state.ranges = [(v.start, v.end) for v in fz.process.vmas() if "uw" in v.vmflags]
    disarm(fz, state)
    if start_time is not None:
        tracking_state.clear(pid, start_time, ino=state.ino)
    return list(state.ranges)


def marker_mask(pid: int, runs: list[tuple[int, int]]) -> list[np.ndarray]:
    """For each ``(vaddr, nr_pages)`` run, a bool array: True where the page
    is only a uffd-wp marker (no data). Reads pagemap entries of those runs
    only (they are the few SWAPPED pages a scan returned)."""
    out = []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for vaddr, n in runs:
            e = np.frombuffer(os.pread(fd, n * 8, vaddr // PAGE_SIZE * 8), dtype="<u8")
            frame = e & np.uint64(PM_PFRAME_MASK)
            out.append(((e & np.uint64(PM_SWAP)) != 0)
                       & ((frame & np.uint64(_MARKER_TYPE)) == _MARKER_TYPE)
                       & ((frame >> np.uint64(_SWP_TYPE_BITS)) == _PTE_MARKER_UFFD_WP))
    finally:
        os.close(fd)
    return out

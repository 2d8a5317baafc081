"""Copy-on-write snapshots of a frozen process: a child forked from inside it.

A process's private memory can be saved without keeping it frozen while the
pages are copied: the frozen target forks, and the child holds every
private page as it was at that instant (the kernel shares the pages
copy-on-write: fork copies page tables, not pages; kernel/fork.c
``dup_mmap``, mm/memory.c ``copy_page_range``). The target runs again at
once; the pages are read from the child afterwards, and the child is
killed. Redis saves its dataset this way (BGSAVE).

How, without code of ours running in the target:

* the fork is one ``clone(2)`` injected into the target's main thread
  (:mod:`dumper.proc.inject`) with PTRACE_O_TRACECLONE set for it, so the
  kernel attaches the child to the warden before it runs a single
  instruction (ptrace(2), "automatically attached"); it never runs the
  target's code, only our copy loop (below);
* flags ``CLONE_FILES``: the child shares the descriptor table (a
  descriptor the target closes is closed, whatever the child holds). Not
  CLONE_FS: a shared fs_struct makes the target's setns(CLONE_NEWNS) and
  setns into a user namespace fail with EINVAL and a setuid exec lose its
  privileges (fs/exec.c check_unsafe_exec) while the child lives. The
  exit signal is 0, so the target
  gets no SIGCHLD and its ``wait()``s do not see the child (only
  ``__WALL``/``__WCLONE`` do: kernel/exit.c ``eligible_child``);
* in case the warden dies before killing it, the child has
  PTRACE_O_EXITKILL and registers that make it call ``exit_group(0)`` if it
  ever runs;
* done with it, the warden kills it, collects its death as its tracer, and
  reaps the zombie as its parent must: a ``wait4(child, WNOHANG|__WALL)``
  injected into the target, stopped for that moment. An exit signal of 0 is
  never auto-reaped (kernel/signal.c ``do_notify_parent``): without this the
  target would keep a zombie child until it exits.

Reading the child (:func:`open_window`, :func:`copy_in_child`): its pages
are not pinned from outside (process_vm_readv pins, and pinning a page the
child shares with the target copies it first) nor read one page per call
(/proc/PID/mem: a page-table walk, two copies); the child copies them itself,
with one ``rep movsb`` per run, into a window: a memfd the dumper maps too.
The child's descriptor table is first replaced by an empty one of its own
(``close_range(CLOSE_RANGE_UNSHARE)``, 5.9), so the memfd never reaches the
target's table; its code (24 bytes: a loop of ``rep movsb`` over a list of
runs the dumper writes into the window, then ``int3``) lives in a page mapped
in the child only. The target's memory is never written.

What the child does not hold: VMAs with MADV_DONTFORK (not copied) and
MADV_WIPEONFORK (empty in the child) -- the caller copies those while the
target is frozen -- and shared memory (the same pages: saved apart, frozen).
Refused (:class:`SnapshotRefused`, the caller copies frozen instead) where
the fork could harm the target: a seccomp filter on the thread (it could
kill the process for ``clone``), VMAs registered with a userfaultfd (a
context with UFFD_FEATURE_EVENT_FORK makes ``fork`` wait for a monitor
that is frozen), and when the kernel refuses the clone (pids limit, memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal

from ..errors import DumperError, KernelError, NoSuchProcess, SnapshotRefused
from ..kernel import mman, ptrace, sched, x86_64
from ..kernel.libc import PAGE_SIZE
from .inject import Injector
from .task import read_status

__all__ = ["fork_snapshot", "release_snapshot", "memcg_headroom", "open_window", "copy_in_child",
           "WINDOW_DESC_BYTES"]

# Snapshots alive in this warden, by child pid (as the warden sees it): the
# child's pid in the target's pid namespace (what wait4 there takes), the
# undo action's token, which must be dropped (ctx.forget) where it was made,
# and the address of a syscall instruction in it.
_alive: dict[int, tuple[int, tuple, int]] = {}
# The copy code's address in each child given a window.
_windows: dict[int, int] = {}

#: Bytes of one run's descriptor in a window: two little-endian u64 (address, length).
WINDOW_DESC_BYTES = 16
# The copy loop (rbx: descriptors, r12: how many, rdi: destination):
#   loop: test r12, r12; jz done; mov rsi, [rbx]; mov rcx, [rbx+8]; rep movsb
#         add rbx, 16; dec r12; jmp loop
#   done: int3
_COPY_LOOP = (b"\x4d\x85\xe4" b"\x74\x12" b"\x48\x8b\x33" b"\x48\x8b\x4b\x08" + x86_64.REP_MOVSB
              + b"\x48\x83\xc3\x10" b"\x49\xff\xcc" b"\xeb\xe9" + x86_64.INT3)
_WINDOW_NAME = b"dumper-window\0"
_MFD_CLOEXEC = 0x1  # include/uapi/linux/memfd.h
# RFLAGS bits the copy must not run with, whatever the target had: TF (a
# trap per instruction), DF (rep movsb backwards), AC (alignment checks).
_EFLAGS_CLEAR = (1 << 8) | (1 << 10) | (1 << 18)


def fork_snapshot(ctx, pid: int) -> int:
    """Fork frozen process ``pid`` from inside; returns the child's pid.

    The child is a stopped tracee of the warden until
    :func:`release_snapshot`; if the dumper dies first, the warden's abort
    path releases it. Raises SnapshotRefused (nothing changed) or
    KernelError/NoSuchProcess.
    """
    fz = ctx.freezer(pid)
    tid = fz.main_tid
    if read_status(f"/proc/{pid}/task/{tid}/status").get("Seccomp", "0") != "0":
        raise SnapshotRefused(f"thread {tid} runs under seccomp: a clone could be denied or kill it")
    with Injector(fz, tid) as inj:
        ptrace.setoptions(tid, ptrace.PTRACE_O_TRACECLONE)
        try:
            ret = inj.syscall(x86_64.NR_clone, sched.CLONE_FILES, 0, 0, 0, 0)
        finally:
            ptrace.setoptions(tid, 0)  # the Freezer seizes with no options
        insn = inj.insn
        children = list(inj.new_tasks)
    if ret < 0:
        for child in children:  # cannot happen: a failed clone makes no task
            _kill_traced(child)
        raise SnapshotRefused(f"clone inside the process failed: {os.strerror(-ret)}")
    # clone returned the pid in the target's pid namespace; the event message
    # names it in the tracer's (kernel/fork.c ptrace_event_pid), which may differ
    inner = ret
    if len(children) != 1:
        for child in children:
            _kill_traced(child)
        raise SnapshotRefused(f"clone inside the process reported {len(children)} new tasks")
    child = children[0]
    try:
        _wait_stopped(child)
        # If it ever ran (the warden killed before it could kill it): exit at once.
        regs = x86_64.user_regs_struct()
        ptrace.getregs(child, regs)
        x86_64.set_syscall(regs, x86_64.NR_exit_group, (0,), insn)
        ptrace.setregs(child, regs)
        ptrace.setoptions(child, ptrace.PTRACE_O_EXITKILL)
    except BaseException:
        _kill_traced(child)
        _reap_in(ctx, pid, inner, fz_frozen=True)
        raise
    _alive[child] = (inner, ctx.on_abort(_release_on_abort, pid, child, inner), insn)
    return child


def _wait_stopped(child: int) -> None:
    # The auto-attached child reports its first stop on its own (ptrace(2)).
    while True:
        _, status = os.waitpid(child, ptrace.WALL)
        if os.WIFSTOPPED(status):
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            raise NoSuchProcess(child, "the snapshot child died at birth")


def _kill_traced(child: int) -> None:
    """SIGKILL our tracee ``child`` and collect its death as its tracer."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        while True:
            _, status = os.waitpid(child, ptrace.WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return


def _reap_in(ctx, pid: int, child: int, *, fz_frozen: bool, mode: str = "resume") -> int | None:
    """Reap zombie ``child`` (its pid in ``pid``'s namespace) from inside its
    parent ``pid`` (frozen now if it is not; let go again in ``mode`` then).
    Returns the nanoseconds ``pid`` was stopped for it (0 if it already was),
    None if ``pid`` is gone (the child was reparented: its new parent reaps it)."""
    try:
        fz = ctx.freezer(pid) if fz_frozen else ctx.freeze(pid)
    except NoSuchProcess:
        return None
    try:
        with Injector(fz) as inj:
            ret = inj.syscall(x86_64.NR_wait4, child, 0, os.WNOHANG | ptrace.WALL, 0)
        if ret < 0 and ret != -errno.ECHILD:
            raise SnapshotRefused(f"reaping the snapshot child {child} in pid {pid}: {os.strerror(-ret)}")
    finally:
        if not fz_frozen:
            ctx.thaw(pid, mode)
    return 0 if fz_frozen else (fz.freezing_ns or 0) + (fz.frozen_time_ns or 0)


def release_snapshot(ctx, pid: int, child: int, mode: str = "resume") -> int | None:
    """Kill snapshot ``child`` of ``pid`` and reap it (``pid`` is stopped
    for the injected ``wait4``, then let go in thaw ``mode``); returns the
    nanoseconds ``pid`` was stopped for that, None if ``pid`` exited
    meanwhile."""
    inner, token, _ = _alive.pop(child)
    _windows.pop(child, None)
    _kill_traced(child)
    stopped = _reap_in(ctx, pid, inner, fz_frozen=False, mode=mode)
    ctx.forget(token)
    return stopped


def _release_on_abort(ctx, pid: int, child: int, inner: int) -> None:
    _alive.pop(child, None)
    _windows.pop(child, None)
    _kill_traced(child)
    # Still frozen when the dump failed before its thaw; otherwise frozen for this.
    try:
        frozen = ctx.freezer(pid) is not None
    except DumperError:
        frozen = False
    _reap_in(ctx, pid, inner, fz_frozen=frozen)


def open_window(ctx, child: int, size: int) -> tuple[int, int] | None:
    """Give snapshot ``child`` a window of ``size`` bytes (a memfd mapped
    shared, read-write, in the child) and the code of :func:`copy_in_child`.
    Returns the memfd's descriptor in the child and the window's address
    there; None when the kernel lacks a step (CLOSE_RANGE_UNSHARE: 5.9):
    the caller reads /proc/CHILD/mem instead, nothing having reached the
    target. The child stays stopped, with its exit_group registers.
    Raises NoSuchProcess if the child died, KernelError."""
    insn = _alive[child][2]
    try:
        with Injector.tracee(child, insn) as inj:
            # An empty table of its own: the memfd must not land in the target's.
            if inj.syscall(x86_64.NR_close_range, 0, 0xFFFFFFFF, sched.CLOSE_RANGE_UNSHARE) < 0:
                return None
            code = inj.syscall(x86_64.NR_mmap, 0, PAGE_SIZE, mman.PROT_READ | mman.PROT_EXEC,
                               mman.MAP_PRIVATE | mman.MAP_ANONYMOUS, -1, 0)
            if code < 0:
                return None
            fd = os.open(f"/proc/{child}/mem", os.O_RDWR | os.O_CLOEXEC)
            try:  # through the missing PROT_WRITE, as a debugger writes breakpoints
                blob = _COPY_LOOP + _WINDOW_NAME
                if os.pwrite(fd, blob, code) != len(blob):
                    return None
            finally:
                os.close(fd)
            memfd = inj.syscall(x86_64.NR_memfd_create, code + len(_COPY_LOOP), _MFD_CLOEXEC)
            if memfd < 0 or inj.syscall(x86_64.NR_ftruncate, memfd, size) < 0:
                return None
            base = inj.syscall(x86_64.NR_mmap, 0, size, mman.PROT_READ | mman.PROT_WRITE, mman.MAP_SHARED,
                               memfd, 0)
            if base < 0:
                return None
    except (KernelError, OSError) as err:
        _raise_if_gone(child, err)
        raise
    _windows[child] = code
    return memfd, base


def copy_in_child(ctx, child: int, dst: int, desc: int, count: int) -> int:
    """Have snapshot ``child`` copy ``count`` runs of its memory, described
    at ``desc`` in its window (:data:`WINDOW_DESC_BYTES` each: address,
    length), one after another to ``dst`` in its window. Returns the bytes
    copied: short when the child could not read a page (SIGSEGV or SIGBUS
    there, not delivered) -- the rest is for the caller to read otherwise.
    Raises NoSuchProcess if the child died, KernelError."""
    code = _windows[child]
    try:
        with Injector.tracee(child, _alive[child][2]) as inj:
            regs = x86_64.user_regs_struct()
            ctypes.pointer(regs)[0] = inj.saved
            regs.rip, regs.rbx, regs.r12, regs.rdi = code, desc, count, dst
            regs.orig_rax = 0xFFFFFFFFFFFFFFFF
            regs.eflags &= ~_EFLAGS_CLEAR
            done, _ = inj.run_code(regs, code + len(_COPY_LOOP), faults=frozenset({signal.SIGSEGV, signal.SIGBUS}))
    except (KernelError, OSError) as err:
        _raise_if_gone(child, err)
        raise
    return done.rdi - dst


def _raise_if_gone(child: int, err: OSError | KernelError) -> None:
    """NoSuchProcess for a ptrace error that means ``child`` died (killed by
    someone, or by the OOM killer) while we worked on it."""
    if err.errno == errno.ESRCH:
        raise NoSuchProcess(child, "the snapshot process was killed (out of memory?)") from err


def memcg_headroom(pid: int) -> int | None:
    """How many bytes ``pid``'s memory cgroup may still charge: the least,
    over its cgroup and every ancestor, of limit minus usage (cgroup v2
    ``memory.max``/``memory.current``, v1 ``memory.limit_in_bytes``/
    ``memory.usage_in_bytes``): a limit on a parent (a systemd slice, a pod)
    binds as much as one on the leaf. None: no limit, or none known. Pages
    the target writes while a snapshot lives are copied and charged there."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    trees = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            trees.append(("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes"))
        elif controllers == "":
            for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                trees.append((root, path, "memory.max", "memory.current"))
    for root, path, limit_name, usage_name in trees:
        parts = [p for p in path.split("/") if p]
        if not os.path.exists(os.path.join(root, *parts, limit_name)):
            continue  # not this mount
        least = None
        for depth in range(len(parts), 0, -1):  # the leaf, then each ancestor (the root has no limit)
            base = os.path.join(root, *parts[:depth])
            try:
                with open(os.path.join(base, limit_name), "rb") as f:
                    limit = f.read().strip()
                with open(os.path.join(base, usage_name), "rb") as f:
                    usage = int(f.read())
            except (OSError, ValueError):
                continue
            if limit == b"max" or not limit.isdigit() or int(limit) >= 1 << 62:  # v1 "no limit": near 2^63
                continue
            room = int(limit) - usage
            least = room if least is None else min(least, room)
        return least
    return None

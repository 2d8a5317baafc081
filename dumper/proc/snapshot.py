"""Copy-on-write snapshots of a frozen process: a child forked from inside it.

A process's private memory can be saved without keeping it frozen while the
pages are copied: the frozen target forks, and the child holds every
private page as it was at that instant (the kernel shares the pages
copy-on-write: fork copies page tables, not pages; kernel/fork.c
``dup_mmap``, mm/memory.c ``copy_page_range``). The target runs again at
once; the pages are read from the child afterwards, and the child is
killed. Redis saves its dataset this way (BGSAVE).

How, without code of ours running in either process:

* the fork is one ``clone(2)`` injected into the target's main thread
  (:mod:`dumper.proc.inject`) with PTRACE_O_TRACECLONE set for it, so the
  kernel attaches the child to the warden before it runs a single
  instruction (ptrace(2), "automatically attached"); it never runs;
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
import errno
import os
import signal

from ..errors import DumperError, NoSuchProcess, SnapshotRefused
from ..kernel import ptrace, sched, x86_64
from .inject import Injector
from .task import read_status

__all__ = ["fork_snapshot", "release_snapshot", "memcg_headroom"]

# Snapshots alive in this warden, by child pid (as the warden sees it): the
# child's pid in the target's pid namespace (what wait4 there takes) and the
# undo action's token, which must be dropped (ctx.forget) where it was made.
_alive: dict[int, tuple[int, tuple]] = {}


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
    _alive[child] = (inner, ctx.on_abort(_release_on_abort, pid, child, inner))
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
    inner, token = _alive.pop(child)
    _kill_traced(child)
    stopped = _reap_in(ctx, pid, inner, fz_frozen=False, mode=mode)
    ctx.forget(token)
    return stopped


def _release_on_abort(ctx, pid: int, child: int, inner: int) -> None:
    _alive.pop(child, None)
    _kill_traced(child)
    # Still frozen when the dump failed before its thaw; otherwise frozen for this.
    try:
        frozen = ctx.freezer(pid) is not None
    except DumperError:
        frozen = False
    _reap_in(ctx, pid, inner, fz_frozen=frozen)


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

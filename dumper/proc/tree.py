"""Freeze a process and all its descendants, as CRIU's freezer does (criu/seize.c).

Top-down: a process is frozen (every thread stopped, see
:class:`~dumper.proc.freeze.Freezer`) before its children are listed, from
``/proc/PID/task/TID/children`` of every thread. A stopped process cannot fork
or clone, so once it is frozen its list of children only shrinks... except
that a child not frozen yet may still fork with CLONE_PARENT (a new child of
the frozen parent) or exit. So every frozen process's children are listed
again until a whole pass finds nothing new.

* a zombie in the tree is recorded (CRIU restores it) and never seized;
* a process that exits while it is being frozen is dropped (if it turned
  into a zombie of a frozen parent, it is recorded as a zombie): the tree is
  what exists once the freeze is done;
* a process killed (SIGKILL from outside) after it was frozen is dropped at
  the final check, with its own descendants if they were reparented out of
  the tree;
* one deadline (``stop_timeout``) covers the whole tree. On any failure
  everything frozen so far is thawed as it was found, and the error raised.

The vfork parent case: its child shares its mm and must run to exec or
exit before the parent can stop; top-down order lets it, since the child is
only frozen after the parent is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..errors import NoSuchProcess, ProcessError, RefusedTarget
from .freeze import Freezer, _read_stat, _uninterruptible, thread_state
from .process import Process

__all__ = ["FrozenProcess", "FrozenTree", "freeze_tree", "thaw_tree"]


@dataclass(frozen=True, slots=True)
class FrozenProcess:
    """One process of a frozen tree.

    ``threads``: thread ids, leader first (also when it exited: ``states``
    then says "Z" for it); ``states``: the state letter of each thread as
    found just before it was seized (proc(5)); ``was_stopped``: it was in
    job-control stop and :func:`thaw_tree` leaves it so; ``zombie``: exited,
    not reaped: recorded, never seized or read.
    """

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]
    states: tuple[str, ...]
    was_stopped: bool
    zombie: bool = False
    stop_signo: int = 19  # the signal of its job-control stop (SIGSTOP unless seen otherwise)

    @property
    def leader_exited(self) -> bool:
        return not self.zombie and bool(self.states) and self.states[0] in ("Z", "X")


@dataclass(slots=True)
class FrozenTree:
    """What :func:`freeze_tree` froze. ``processes`` in freeze order (root
    first, parents before children). Times from ``time.monotonic_ns()``:
    ``freezing_ns`` from the start of the freeze to every thread stopped,
    ``stopped_ns`` that last moment (CRIU's end of "freezing")."""

    root: int
    processes: dict[int, FrozenProcess] = field(default_factory=dict)
    freezing_ns: int = 0
    stopped_ns: int = 0


def _ids(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, sid) from /proc/PID/stat, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[1]), int(rest[2]), int(rest[3])


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (/proc/PID/task/TID/children)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _record(fz: Freezer) -> FrozenProcess:
    ppid, pgid, sid = _ids(fz.pid) or (0, 0, 0)
    others = [t for t in fz.threads if t != fz.pid]
    threads = (fz.pid, *others)
    return FrozenProcess(
        pid=fz.pid, ppid=ppid, pgid=pgid, sid=sid, threads=threads,
        states=tuple(fz.states.get(t, "?") for t in threads), was_stopped=fz.was_stopped,
        stop_signo=int(fz.stop_signo))


def _zombie(pid: int) -> FrozenProcess | None:
    ids = _ids(pid)
    if ids is None:
        return None
    return FrozenProcess(pid=pid, ppid=ids[0], pgid=ids[1], sid=ids[2], threads=(pid,), states=("Z",),
                         was_stopped=False, zombie=True)


def freeze_tree(root: int | Process, *, tree: bool = True, stop_timeout: float = 5.0,
                exclude: frozenset[int] = frozenset(),
                attempts: list[Freezer] | None = None) -> tuple[FrozenTree, dict[int, Freezer]]:
    """Freeze ``root`` and, with ``tree``, every descendant.

    Returns the :class:`FrozenTree` and the Freezer of each frozen (not
    zombie) process, by pid. ``exclude``: pids never to freeze (the dumper's
    own processes); meeting one in the tree raises RefusedTarget.
    ``attempts``: every Freezer created is appended to it, so a caller can
    let go later the threads of a failed freeze that had not stopped yet
    (:attr:`Freezer.pending`).

    Raises what :class:`Freezer` raises for the root (NoSuchProcess,
    ZombieProcess, AccessDenied, RefusedTarget, FreezeTimeout...), and for a
    descendant anything but its exit; everything frozen so far is thawed
    first.
    """
    t0 = time.monotonic_ns()
    deadline = time.monotonic() + stop_timeout
    freezers: dict[int, Freezer] = {}
    zombies: dict[int, FrozenProcess] = {}
    order: list[int] = []  # discovery order: parents before children

    attempts = [] if attempts is None else attempts

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.0)

    try:
        fz = Freezer(root, stop_timeout=stop_timeout)
        attempts.append(fz)
        fz.freeze()
        freezers[fz.pid] = fz
        root_pid = fz.pid
        order.append(root_pid)
        while tree:
            found = False
            for pid in list(freezers):
                for child in _children(pid):
                    if child in freezers or child in zombies:
                        continue
                    if child in exclude:
                        raise RefusedTarget(child, "the process tree contains the dumper itself")
                    found = True
                    state = thread_state(child, child)
                    if state is None:
                        continue  # gone and reaped
                    if state in ("Z", "X") and len(_task_ids(child)) <= 1:
                        if (z := _zombie(child)) is not None:
                            zombies[child] = z
                            order.append(child)
                        continue
                    try:
                        cfz = Freezer(child, stop_timeout=remaining())
                        attempts.append(cfz)
                        cfz.freeze()
                    except NoSuchProcess:
                        if thread_state(child, child) in ("Z", "X") and (z := _zombie(child)) is not None:
                            zombies[child] = z
                            order.append(child)
                        continue
                    freezers[cfz.pid] = cfz
                    order.append(cfz.pid)
            if not found:
                break
        stopped_ns = time.monotonic_ns()
        _drop_killed(freezers, zombies, root_pid)
    except BaseException:
        thaw_tree(freezers.values(), "resume")
        raise
    frozen = FrozenTree(root=root_pid, freezing_ns=stopped_ns - t0, stopped_ns=stopped_ns)
    for pid in order:
        if pid in zombies:
            frozen.processes[pid] = zombies[pid]
        elif pid in freezers:
            frozen.processes[pid] = _record(freezers[pid])
    return frozen, freezers


def _task_ids(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _drop_killed(freezers: dict[int, Freezer], zombies: dict[int, FrozenProcess], root: int) -> None:
    """Drop members killed after they were frozen, and whatever is no longer
    below the root (reparented out of the tree when its parent died)."""
    for pid, fz in list(freezers.items()):
        st = _read_stat(f"/proc/{pid}/stat")
        alive = st is not None and fz.process.same_process() and any(
            thread_state(pid, t) == "t" for t in fz.threads)
        if not alive:
            if pid == root:
                raise NoSuchProcess(root, "process exited while its tree was being frozen")
            with _uninterruptible():
                fz.thaw("resume")
            del freezers[pid]
    members = set(freezers) | set(zombies)
    changed = True
    while changed:
        changed = False
        for pid in list(members):
            if pid == root:
                continue
            ids = _ids(pid)
            if ids is None or ids[0] not in members:
                members.discard(pid)
                changed = True
                if pid in freezers:
                    with _uninterruptible():
                        freezers.pop(pid).thaw("resume")
                zombies.pop(pid, None)


def thaw_tree(freezers, mode: str = "resume") -> list[ProcessError]:
    """Thaw every Freezer in ``freezers`` (children first) with ``mode``.

    Goes on past a failure; returns the errors met (a process that died
    meanwhile is not one).
    """
    errors = []
    for fz in reversed(list(freezers)):
        try:
            if fz.resumed_ns is None or fz.pending:
                fz.thaw(mode)
        except Exception as err:  # noqa: BLE001 - every process must get its thaw
            errors.append(err)
    return errors

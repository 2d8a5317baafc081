"""The ptrace side of a dump, as the orchestrator sees it.

:class:`LocalTracer` runs the ptrace work in this process (the Freezer's
tracer thread); it has the interface of the out-of-process warden
(freeze / call / keep / thaw) so the orchestrator does not care which one
it drives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..proc.freeze import Freezer
from ..proc.inject import Injector
from ..proc.process import Process

__all__ = ["FrozenProcess", "FrozenTree", "LocalTracer"]


@dataclass(slots=True)
class FrozenProcess:
    """One frozen process: ``threads`` with the leader first; ``zombie``
    processes are recorded, never read."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]
    was_stopped: bool
    zombie: bool = False
    stop_signo: int = 19  # the signal of its job-control stop, when was_stopped (SIGSTOP unless known)


@dataclass(slots=True)
class FrozenTree:
    """What :meth:`LocalTracer.freeze` froze. Times are ``time.monotonic_ns()``."""

    root: int
    processes: dict[int, FrozenProcess]
    freezing_ns: int
    stopped_ns: int


def _ids(pid: int) -> tuple[int, int, int]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[1]), int(rest[2]), int(rest[3])  # ppid, pgrp, session


@dataclass
class _Context:
    freezers: dict[int, Freezer]
    undo: list = field(default_factory=list)

    def freezer(self, pid: int) -> Freezer:
        return self.freezers[pid]

    def injector(self, pid: int, tid: int | None = None) -> Injector:
        return Injector(self.freezers[pid], tid)

    def on_abort(self, func, *args) -> None:
        self.undo.append((func, args))


class LocalTracer:
    """Freeze, run tracer-side functions, thaw: all in this process.

    A context manager; leaving it runs pending undo actions (unless
    :meth:`keep` was called) and thaws with "resume" whatever is still frozen.
    """

    def __init__(self, *, stop_timeout: float = 5.0) -> None:
        self.stop_timeout = stop_timeout
        self._ctx = _Context({})
        self._thawed = False
        self.tree: FrozenTree | None = None
        self.frozen_ns = 0

    def freeze(self, pid: int, *, tree: bool = False) -> FrozenTree:
        t0 = time.monotonic_ns()
        fz = Freezer(Process(pid), stop_timeout=self.stop_timeout)
        fz.freeze()
        self._ctx.freezers[fz.pid] = fz
        t1 = time.monotonic_ns()
        ppid, pgid, sid = _ids(fz.pid)
        fp = FrozenProcess(fz.pid, ppid, pgid, sid, tuple(sorted(fz.threads, key=lambda t: (t != fz.pid, t))),
                           fz.was_stopped)
        self.tree = FrozenTree(fz.pid, {fz.pid: fp}, t1 - t0, t1)
        return self.tree

    def call(self, func, /, *args, **kwargs):
        return func(self._ctx, *args, **kwargs)

    def keep(self) -> None:
        self._ctx.undo.clear()

    def _undo(self) -> None:
        while self._ctx.undo:
            func, args = self._ctx.undo.pop()
            try:
                func(self._ctx, *args)
            except Exception:  # best effort: the thaw must still happen
                pass

    def thaw(self, mode: str = "resume") -> None:
        if self._thawed:
            return
        t = time.monotonic_ns()
        if self.tree is not None:
            self.frozen_ns = t - self.tree.stopped_ns
        for fz in self._ctx.freezers.values():
            fz.thaw(mode)
        self._thawed = True

    def __enter__(self) -> LocalTracer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._ctx.undo:
            self._undo()
        if not self._thawed and self._ctx.freezers:
            self.thaw("resume")

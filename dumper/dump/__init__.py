"""``dump()``: freeze a process, select its pages, write a checkpoint.

The work is a list of phases (:class:`dumper.dump.session.DumpSession`),
ordered to keep the frozen time to the page copy: checks and allocations
before the freeze, the copy into a spool while frozen, compression and
writing after the thaw. Write trackers are one object per kind
(:mod:`dumper.dump.trackers`).
"""

from __future__ import annotations

import os

from ..proc.freeze import THAW_MODES
from .session import DumpOptions, DumpResult, DumpSession
from .trackers import TRACKERS, pick_tracker

__all__ = ["dump", "DumpOptions", "DumpResult", "THAW_MODES", "TRACKERS", "pick_tracker"]


def dump(pid: int, dest: str | os.PathLike, **options) -> DumpResult:
    """Checkpoint process ``pid`` into directory ``dest``.

    ``options`` are the fields of :class:`DumpOptions`: ``thaw`` ("resume",
    "leave-stopped", "kill"), ``compress``, ``level``, ``threads``,
    ``backend``, ``force``, ``progress``, ``parent``, ``track_mem``,
    ``tracker``, ``pre_dump``, ``freeze_timeout`` (seconds), ``spool_limit``
    (bytes), ``copy`` ("auto", "fork": pages read after the thaw from a
    copy-on-write child of the frozen target, "frozen": copied while it is
    frozen; see :mod:`dumper.dump.snapshot`).

    Raises DumpError (destination exists without ``force``, bad parent,
    disk full, ...), UnsupportedKernel (no working tracker, ``backend="ioctl"``
    before 6.7), the ProcessError kinds (NoSuchProcess, ZombieProcess,
    NoMemoryMap, AccessDenied, RefusedTarget); KeyboardInterrupt/SystemExit
    on SIGINT/SIGTERM/SIGHUP. TypeError for an unknown option.
    """
    return DumpSession(pid, dest, DumpOptions(**options)).run()

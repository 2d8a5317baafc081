"""Termination signals that Python would drop (no dumper imports: the
command installs this before it loads anything else).

A SIGINT (or a SIGTERM turned into SystemExit) whose exception lands in a
finalizer or a weakref callback -- an import's module-lock callback, a
``__del__`` -- is printed as "Exception ignored" and dropped: the dumper
would go on as if never asked to stop. :func:`redeliver_termination`, as
``sys.unraisablehook``, sends the signal again a moment later, when
ordinary code runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

__all__ = ["install", "redeliver_termination", "in_hook"]

_depth = 0  # > 0 while redeliver_termination runs
_previous = None  # the hook other exceptions go to


def install():
    """Make :func:`redeliver_termination` ``sys.unraisablehook``; returns
    the hook it replaces (to put back)."""
    global _previous
    prev = sys.unraisablehook
    if prev is not redeliver_termination:
        _previous = prev
    sys.unraisablehook = redeliver_termination
    return prev


def in_hook() -> bool:
    """Whether :func:`redeliver_termination` is running (a termination
    signal's handler must not raise there: the exception would be dropped
    again; the resend comes after)."""
    return _depth > 0


def redeliver_termination(unraisable) -> None:
    """``sys.unraisablehook``: resend a dropped termination signal; hand
    anything else to the hook :func:`install` replaced."""
    exc = unraisable.exc_value
    signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else (
        exc.code - 128 if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128 else 0)
    if not signum:
        (_previous or sys.__unraisablehook__)(unraisable)
        return
    global _depth
    _depth += 1
    try:
        threading.Thread(target=_resend, args=(signum,), name="dumper-resend", daemon=True).start()
    finally:
        _depth -= 1


def _resend(signum: int) -> None:
    # Never while the hook still runs (starting this thread waits for it to
    # run: on a loaded machine the signal landed there and was lost again).
    time.sleep(0.001)
    while _depth:
        time.sleep(0.001)
    os.kill(os.getpid(), signum)

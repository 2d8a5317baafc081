"""clone(2) flags (include/uapi/linux/sched.h; since 2.0).

The low byte of the flags (CSIGNAL) is the signal sent to the parent when
the child exits; 0 sends none, and such a "clone child" is seen only by
``wait4(..., __WALL)`` or ``__WCLONE`` (kernel/exit.c eligible_child()).
"""

from __future__ import annotations

__all__ = ["CLONE_FILES", "CSIGNAL"]

CSIGNAL = 0x000000FF  # signal mask to be sent at exit
CLONE_FILES = 0x00000400  # share the file descriptor table

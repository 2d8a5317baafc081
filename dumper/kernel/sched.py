"""clone(2) flags (include/uapi/linux/sched.h; every flag here since 2.x).

The low byte of the flags is the signal sent to the parent when the child
exits; 0 sends none, and such a "clone child" is seen only by
``wait4(..., __WALL)`` or ``__WCLONE`` (kernel/exit.c eligible_child()).
"""

from __future__ import annotations

__all__ = ["CLONE_FS", "CLONE_FILES", "WCLONE", "CSIGNAL"]

CSIGNAL = 0x000000FF  # signal mask to be sent at exit
CLONE_FS = 0x00000200  # share cwd, root and umask
CLONE_FILES = 0x00000400  # share the file descriptor table

# include/uapi/linux/wait.h: wait for clone children only
WCLONE = 0x80000000

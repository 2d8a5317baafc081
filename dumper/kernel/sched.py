"""clone(2) flags (include/uapi/linux/sched.h; since 2.0).

The low byte of the flags (CSIGNAL) is the signal sent to the parent when
the child exits; 0 sends none, and such a "clone child" is seen only by
``wait4(..., __WALL)`` or ``__WCLONE`` (kernel/exit.c eligible_child()).
"""

from __future__ import annotations

__all__ = ["CLONE_FILES", "CSIGNAL", "CLOSE_RANGE_UNSHARE"]

CSIGNAL = 0x000000FF  # signal mask to be sent at exit
CLONE_FILES = 0x00000400  # share the file descriptor table

# close_range(2) flags (include/uapi/linux/close_range.h; 5.9): unshare the
# descriptor table first. Closing every descriptor copies none of them
# (fs/file.c __close_range: only those below the range are duplicated).
CLOSE_RANGE_UNSHARE = 1 << 1

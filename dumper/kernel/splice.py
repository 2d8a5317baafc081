"""tee(2) (Linux 2.6.17): duplicate a pipe's buffered bytes into another
pipe without consuming them. Flags from include/linux/splice.h."""

from __future__ import annotations

import ctypes

from .libc import check, libc

__all__ = ["SPLICE_F_MOVE", "SPLICE_F_NONBLOCK", "SPLICE_F_MORE", "SPLICE_F_GIFT", "tee"]

SPLICE_F_MOVE = 0x01
SPLICE_F_NONBLOCK = 0x02
SPLICE_F_MORE = 0x04
SPLICE_F_GIFT = 0x08

libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
libc.tee.restype = ctypes.c_ssize_t


def tee(fd_in: int, fd_out: int, length: int, flags: int = 0) -> int:
    """Copy up to ``length`` bytes from pipe ``fd_in`` (read end) to pipe
    ``fd_out`` (write end), leaving ``fd_in``'s contents in place. Returns
    the bytes duplicated; OSError (EAGAIN when empty with SPLICE_F_NONBLOCK)."""
    return check(libc.tee(fd_in, fd_out, length, flags), "tee")

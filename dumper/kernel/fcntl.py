"""fcntl: mirror of include/uapi/asm-generic/fcntl.h and linux/fcntl.h.

Only what reading another process's descriptors needs: the open-flag bits
``/proc/PID/fdinfo`` prints (octal ``flags:``), the owner and signal of a
file (F_GETOWN_EX and F_GETOWNER_UIDS: Linux 2.6.32 / 3.6) and pipe sizes
(F_GETPIPE_SZ: 2.6.35), the seals of a memfd or shmem file (F_GET_SEALS:
3.17). The wrappers raise ``OSError``; callers translate.
"""

from __future__ import annotations

import ctypes
import fcntl as _fcntl
import struct

__all__ = [
    "O_ACCMODE", "O_RDONLY", "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC",
    "O_APPEND", "O_NONBLOCK", "O_DSYNC", "FASYNC", "O_DIRECT", "O_LARGEFILE", "O_DIRECTORY",
    "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_SYNC", "O_PATH", "O_TMPFILE",
    "F_GETFD", "F_GETFL", "F_GETSIG", "F_GETOWN_EX", "F_GETOWNER_UIDS", "F_SETPIPE_SZ", "F_GETPIPE_SZ",
    "F_OWNER_TID", "F_OWNER_PID", "F_OWNER_PGRP", "FD_CLOEXEC", "F_GET_SEALS",
    "F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE", "F_SEAL_FUTURE_WRITE", "F_SEAL_EXEC",
    "f_owner_ex", "get_owner_ex", "get_owner_uids", "get_sig", "get_pipe_size", "set_pipe_size", "get_seals",
]

# Octal, as the header spells them (x86_64/arm64 values; asm-generic).
O_ACCMODE = 0o3
O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_EXCL = 0o200
O_NOCTTY = 0o400
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DSYNC = 0o10000
FASYNC = 0o20000
O_DIRECT = 0o40000  # on a pipe: packet mode (3.4)
O_LARGEFILE = 0o100000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_NOATIME = 0o1000000
O_CLOEXEC = 0o2000000  # fdinfo shows it from the descriptor's close-on-exec bit
__O_SYNC = 0o4000000
O_SYNC = __O_SYNC | O_DSYNC
O_PATH = 0o10000000  # 2.6.39
__O_TMPFILE = 0o20000000
O_TMPFILE = __O_TMPFILE | O_DIRECTORY  # 3.11

F_GETFD = 1
F_GETFL = 3
F_GETSIG = 11
F_GETOWN_EX = 16  # 2.6.32
F_GETOWNER_UIDS = 17  # 3.6
F_LINUX_SPECIFIC_BASE = 1024
F_SETPIPE_SZ = F_LINUX_SPECIFIC_BASE + 7  # 2.6.35
F_GETPIPE_SZ = F_LINUX_SPECIFIC_BASE + 8
F_GET_SEALS = F_LINUX_SPECIFIC_BASE + 10  # 3.17 (linux/fcntl.h)

# Seals (linux/fcntl.h): shmem files other than sealable memfds carry F_SEAL_SEAL.
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010  # 5.1
F_SEAL_EXEC = 0x0020  # 6.3

F_OWNER_TID = 0
F_OWNER_PID = 1
F_OWNER_PGRP = 2

FD_CLOEXEC = 1


class f_owner_ex(ctypes.Structure):
    """``struct f_owner_ex { int type; __kernel_pid_t pid; }``."""

    _fields_ = [("type", ctypes.c_int), ("pid", ctypes.c_int)]


def get_owner_ex(fd: int) -> tuple[int, int]:
    """``(type, pid)`` of the file's owner (F_GETOWN_EX); pid 0: no owner.
    The pid is in the caller's pid namespace."""
    buf = _fcntl.fcntl(fd, F_GETOWN_EX, bytes(ctypes.sizeof(f_owner_ex)))
    owner = f_owner_ex.from_buffer_copy(buf)
    return owner.type, owner.pid


def get_owner_uids(fd: int) -> tuple[int, int]:
    """``(uid, euid)`` recorded when the owner was set (F_GETOWNER_UIDS)."""
    return struct.unpack("=II", _fcntl.fcntl(fd, F_GETOWNER_UIDS, bytes(8)))


def get_sig(fd: int) -> int:
    """The signal sent on I/O readiness (F_GETSIG; 0 means SIGIO)."""
    return _fcntl.fcntl(fd, F_GETSIG)


def get_pipe_size(fd: int) -> int:
    """Capacity of the pipe or FIFO behind ``fd``, in bytes."""
    return _fcntl.fcntl(fd, F_GETPIPE_SZ)


def set_pipe_size(fd: int, size: int) -> int:
    """Resize a pipe (F_SETPIPE_SZ); returns the size the kernel chose."""
    return _fcntl.fcntl(fd, F_SETPIPE_SZ, size)


def get_seals(fd: int) -> int:
    """The seals of the memfd or shmem file behind ``fd`` (F_GET_SEALS);
    EINVAL for files that cannot carry seals."""
    return _fcntl.fcntl(fd, F_GET_SEALS)

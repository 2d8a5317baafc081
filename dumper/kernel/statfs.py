"""statfs(2) file system types: mirror of include/uapi/linux/magic.h.

Only ``f_type`` is used: it tells a FIFO on a disk from a pipe (pipefs),
anonymous inodes, devpts, procfs, memfd and the like. The pidfs magic is
Linux 6.9 (pidfds were anonymous inodes before).
"""

from __future__ import annotations

import ctypes
import os

from .libc import check, libc

__all__ = [
    "PIPEFS_MAGIC", "ANON_INODE_FS_MAGIC", "SOCKFS_MAGIC", "DEVPTS_SUPER_MAGIC", "PROC_SUPER_MAGIC",
    "NSFS_MAGIC", "PID_FS_MAGIC", "TMPFS_MAGIC", "HUGETLBFS_MAGIC", "BTRFS_SUPER_MAGIC",
    "NFS_SUPER_MAGIC", "OVERLAYFS_SUPER_MAGIC", "SECRETMEM_MAGIC", "statfs", "statfs_type",
]

PIPEFS_MAGIC = 0x50495045
ANON_INODE_FS_MAGIC = 0x09041934
SOCKFS_MAGIC = 0x534F434B
DEVPTS_SUPER_MAGIC = 0x1CD1
PROC_SUPER_MAGIC = 0x9FA0
NSFS_MAGIC = 0x6E736673
PID_FS_MAGIC = 0x50494446  # 6.9
TMPFS_MAGIC = 0x01021994
HUGETLBFS_MAGIC = 0x958458F6
BTRFS_SUPER_MAGIC = 0x9123683E
NFS_SUPER_MAGIC = 0x6969
OVERLAYFS_SUPER_MAGIC = 0x794C7630
SECRETMEM_MAGIC = 0x5345434D  # 5.14


class statfs(ctypes.Structure):
    """``struct statfs`` as glibc lays it out on 64-bit Linux."""

    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(statfs)]
libc.statfs.restype = ctypes.c_int


def statfs_type(path: str | bytes) -> int:
    """``f_type`` of the file system holding ``path`` (followed, so
    ``/proc/PID/fd/N`` names the open file's file system); OSError."""
    buf = statfs()
    check(libc.statfs(os.fsencode(path), ctypes.byref(buf)), "statfs")
    return buf.f_type & 0xFFFFFFFF

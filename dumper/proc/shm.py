"""SysV shared memory segments: ``/proc/sysvipc/shm`` (ipc/util.c
``sysvipc_proc_show``, ipc/shm.c ``sysvipc_shm_proc_show``).

A segment attached by a process shows in its maps as ``/SYSV%08x
(deleted)`` (the key) with the segment id as inode number (ipc/shm.c
``newseg`` sets ``i_ino`` to it); this table gives what the VMA does not:
key, owner and creator ids, permission bits, size. The file lists the
segments of the reader's IPC namespace: read it from the dumper's own
``/proc``, which is the target's namespace or the segment is not there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KernelError

__all__ = ["SysvSegment", "read_sysv_segments", "SYSV_SHM_PATH"]

SYSV_SHM_PATH = "/proc/sysvipc/shm"

# Columns of /proc/sysvipc/shm (header line names them; fixed since 2.6):
# key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime rss swap
_COLUMNS = ("key", "shmid", "perms", "size", "cpid", "lpid", "nattch", "uid", "gid", "cuid", "cgid")


@dataclass(frozen=True, slots=True)
class SysvSegment:
    """One segment: ``key`` as the u32 ``ipc_perm.key`` holds it, ``shmid``
    (the id shmget returned), ``mode`` (permission bits, ``perms`` column),
    ``size`` in bytes (shm_segsz), owner ``uid``/``gid``, creator
    ``cuid``/``cgid``, ``nattch`` (attachments, every process)."""

    key: int
    shmid: int
    mode: int
    size: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    nattch: int


def read_sysv_segments(path: str = SYSV_SHM_PATH) -> dict[int, SysvSegment]:
    """Every segment of the caller's IPC namespace, by shmid. An absent
    file (a kernel without SysV IPC) gives {}; KernelError when it cannot
    be read."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise KernelError(err.errno, f"reading {path}") from err
    out = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < len(_COLUMNS):
            continue
        v = dict(zip(_COLUMNS, parts))
        seg = SysvSegment(
            key=int(v["key"]) & 0xFFFFFFFF,  # printed as a signed int (%10d)
            shmid=int(v["shmid"]),
            mode=int(v["perms"], 8),  # printed as %4o
            size=int(v["size"]),
            uid=int(v["uid"]),
            gid=int(v["gid"]),
            cuid=int(v["cuid"]),
            cgid=int(v["cgid"]),
            nattch=int(v["nattch"]),
        )
        out[seg.shmid] = seg
    return out

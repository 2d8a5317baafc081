"""Open files of a frozen process: descriptors, cwd, root, exe and mapped files.

:func:`collect_fds` reads what CRIU 4.2's dump reads for each descriptor
(criu/files.c ``dump_one_file``), from outside the process: the link and
``/proc/PID/fdinfo/N`` (position, flags, mount id, eventfd counter), a
``stat``/``statfs`` through the ``/proc/PID/fd/N`` magic link, and, through
a copy of the descriptor taken with ``pidfd_getfd`` (Linux 5.6), what only
the open file description answers: owner and signal (``F_GETOWN_EX``,
``F_GETSIG``), pipe capacity, the bytes buffered in a pipe or FIFO (``tee``
into a pipe of ours: nothing is consumed), terminal settings. Files deleted
while open have their contents read (CRIU's ghost files), up to a limit.

Nothing here writes images or numbers files: :mod:`dumper.dump.files` does.
Nothing changes the target: no descriptor is added to or removed from its
table, no position moves (reads use ``pread``), nothing is flushed.

Call these while the process (and every process sharing its descriptor
table) is frozen; the caller holds it frozen, no ptrace is needed here.
Errors: :class:`~dumper.errors.ProcessError` kinds for a vanished or
inaccessible process, :class:`~dumper.errors.UnsupportedKernel` without
``pidfd_getfd``. A descriptor that cannot be saved is not an error: its
:attr:`OpenFd.unrestorable` says why.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl as _fcntl
import os
import re
import socket
import stat
import struct
import termios
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import AccessDenied, KernelError, UnsupportedKernel
from ..kernel import fcntl as kf
from ..kernel import tty as ktty
from ..kernel.pidfd import pidfd_getfd, pidfd_open
from ..kernel.splice import SPLICE_F_NONBLOCK, tee
from ..kernel.statfs import (
    ANON_INODE_FS_MAGIC,
    DEVPTS_SUPER_MAGIC,
    HUGETLBFS_MAGIC,
    NFS_SUPER_MAGIC,
    PID_FS_MAGIC,
    PROC_SUPER_MAGIC,
    SECRETMEM_MAGIC,
    statfs_type,
)
from .maps import Vma
from .process import Process

__all__ = [
    "OpenFd",
    "FileInfo",
    "Fown",
    "PipeBuffer",
    "GhostContents",
    "TtyState",
    "collect_fds",
    "collect_path",
    "collect_mapped_file",
    "read_umask",
    "map_files_fdflags",
    "read_mount_ids",
    "memfd_dev",
    "is_shared_memory",
    "DEFAULT_GHOST_LIMIT",
    "RESTORABLE_KINDS",
]

# criu/include/cr_options.h DEFAULT_GHOST_LIMIT: allocated bytes of a
# deleted file CRIU copies into the checkpoint before refusing.
DEFAULT_GHOST_LIMIT = 1 << 20
# criu/files-reg.c BUILD_ID_MAP_SIZE: the build-id note is looked for here.
BUILD_ID_MAP_SIZE = 1 << 20

# Kinds saved in CRIU images; every other kind is reported unrestorable.
REG, DIR, CHR, TTY, PIPE, FIFO, EVENTFD, MEMFD = "reg", "dir", "chr", "tty", "pipe", "fifo", "eventfd", "memfd"
RESTORABLE_KINDS = frozenset({REG, DIR, CHR, TTY, PIPE, FIFO, EVENTFD, MEMFD})

_DELETED = " (deleted)"
# anon_inode:NAME as the kernel names them -> our kind
_ANON_KINDS = {
    "[eventfd]": EVENTFD,
    "inotify": "inotify",
    "[fanotify]": "fanotify",
    "[signalfd]": "signalfd",
    "[timerfd]": "timerfd",
    "[eventpoll]": "eventpoll",
    "[io_uring]": "io_uring",
    "[perf_event]": "perf_event",
    "[pidfd]": "pidfd",
    "[userfaultfd]": "userfaultfd",
    "bpf-map": "bpf",
    "bpf-prog": "bpf",
    "bpf_link": "bpf",
    "bpf_iter": "bpf",
    "[bpf_token]": "bpf",
}
_NS_LINK = re.compile(r"^(cgroup|ipc|mnt|net|pid|pid_for_children|time|time_for_children|user|uts):\[\d+\]$")
_PROC_PID = re.compile(r"^/proc/(\d+)(?=/|$| \(deleted\)$)")


@dataclass(frozen=True, slots=True)
class Fown:
    """A file's owner for SIGIO/SIGURG (``fcntl(F_SETOWN_EX)``) and the
    signal it gets (``F_SETSIG``; 0 means SIGIO): CRIU's ``fown_entry``.
    ``pid`` is in the dumper's pid namespace; 0 means no owner."""

    uid: int = 0
    euid: int = 0
    signum: int = 0
    pid_type: int = 0
    pid: int = 0


@dataclass(slots=True)
class PipeBuffer:
    """A pipe or FIFO at collection time. ``pipe_id`` is its inode (CRIU's
    pipe_id); ``size`` its capacity in bytes (F_GETPIPE_SZ); ``data`` the
    bytes buffered in it, or None when read from no end (a process holding
    only write ends, as CRIU, does not read it)."""

    pipe_id: int
    size: int
    data: bytes | None


@dataclass(slots=True)
class GhostContents:
    """Contents of a file deleted while open. ``extents`` are (offset,
    bytes) runs of data in ascending order, holes left out (SEEK_DATA /
    SEEK_HOLE); ``size`` is the file size in bytes."""

    size: int
    extents: list[tuple[int, bytes]]

    def read_all(self) -> bytes:
        """The whole file, holes as zeros (for small files)."""
        buf = bytearray(self.size)
        for off, data in self.extents:
            buf[off : off + len(data)] = data
        return bytes(buf)


@dataclass(slots=True)
class TtyState:
    """A terminal descriptor, as CRIU's ``tty_info_entry`` needs it.

    ``driver`` is one of ``pts`` (a pseudo-terminal slave), ``ptmx`` (a
    master), ``ctty`` (/dev/tty), ``console``, ``vt``, ``serial``. ``index``
    is the pty number (``/dev/pts/N``). ``sid``/``pgrp`` are the terminal's
    session and foreground process group as the target sees them (0 when it
    is not the target's controlling terminal). ``termios``/``termios_locked``
    are the kernel's 36-byte ``struct termios``, ``winsize`` the
    ``(row, col, xpixel, ypixel)``; all None when ``hangup``.
    """

    driver: str
    index: int
    sid: int = 0
    pgrp: int = 0
    exclusive: bool = False
    packet_mode: bool = False
    locked: bool = False
    hangup: bool = False
    controlling: bool = False
    termios: bytes | None = None
    termios_locked: bytes | None = None
    winsize: tuple[int, int, int, int] | None = None


@dataclass(slots=True)
class FileInfo:
    """A file reached by a path: what a REG entry records and checks.

    ``path`` is the name the kernel gives it, without the `` (deleted)``
    suffix; ``deleted`` is true when it has no name left (nlink 0) and its
    contents are in ``ghost``. Stat fields as ``os.stat`` gives them (times
    in ns). ``mnt_id`` as /proc fdinfo shows it (-1 unknown); ``fs_type``
    the statfs magic. ``build_id`` the ELF NT_GNU_BUILD_ID note, when the
    file is an ELF file that has one (CRIU validates files with it).
    ``reason`` is set when a restore could not reopen the file.
    """

    path: str
    mode: int
    dev: int
    ino: int
    rdev: int
    nlink: int
    size: int
    uid: int
    gid: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    mnt_id: int = -1
    fs_type: int = 0
    deleted: bool = False
    ghost: GhostContents | None = None
    build_id: bytes | None = None
    reason: str | None = None

    @property
    def kdev(self) -> int:
        """``st_dev`` in the kernel's (major << 20 | minor) encoding, as
        CRIU's ghost_file_entry.dev holds it."""
        return (os.major(self.dev) << 20) | os.minor(self.dev)


@dataclass(slots=True)
class OpenFd:
    """One descriptor of a process.

    ``kind``: ``reg``, ``dir``, ``chr`` (a memory device such as /dev/null),
    ``tty``, ``pipe``, ``fifo``, ``eventfd``, ``memfd`` (saved; a MFD_HUGETLB
    memfd is not), or what it is when it is not saved (``socket``,
    ``inotify``, ``fanotify``, ``signalfd``, ``timerfd``, ``eventpoll``,
    ``io_uring``, ``perf_event``, ``bpf``, ``pidfd``, ``userfaultfd``,
    ``namespace``, ``block device``, ``anon_inode:NAME``, ``unknown``). ``flags`` are the open file's status
    flags as fdinfo shows them without O_CLOEXEC, which is ``cloexec`` (the
    descriptor's FD_CLOEXEC). ``pos`` in bytes. ``link`` is the readlink of
    /proc/PID/fd/N. ``file`` is set for path-backed kinds (reg, dir, chr,
    tty, fifo, memfd). ``unrestorable`` says why it cannot be saved, else None.
    """

    fd: int
    kind: str
    link: str
    flags: int
    cloexec: bool
    pos: int
    mnt_id: int
    ino: int
    dev: int
    mode: int
    rdev: int = 0
    fs_type: int = 0
    fown: Fown = field(default_factory=Fown)
    file: FileInfo | None = None
    pipe: PipeBuffer | None = None
    eventfd_counter: int | None = None
    tty: TtyState | None = None
    fdinfo: dict[str, str] = field(default_factory=dict)
    unrestorable: str | None = None

    @property
    def path(self) -> str | None:
        return self.file.path if self.file is not None else None


# --- helpers ---------------------------------------------------------------


def _parse_fdinfo(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key not in out:
            out[key] = value.strip()
    return out


def _read_small(path: str) -> bytes:
    """A /proc file that fits one read (fdinfo: a few lines, more for
    inotify/epoll, which get read whole)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 4096)
        if len(data) < 4096:
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_mount_ids(process: Process) -> set[int]:
    """Ids of the mounts in the process's mount table (/proc/PID/mountinfo)."""
    ids = set()
    for line in process.read_file("mountinfo").splitlines():
        head = line.split(None, 1)
        if head:
            ids.add(int(head[0]))
    return ids


def _fown(fd: int, flags: int) -> Fown:
    """CRIU's parasite fill_fds_fown + fill_fd_params, on our copy of the
    open file description (owner and signal live there, not in the table)."""
    if flags & kf.O_PATH:
        return Fown()
    signum = kf.get_sig(fd)
    pid_type, pid = kf.get_owner_ex(fd)
    if pid == 0:
        return Fown(signum=signum)
    uid, euid = kf.get_owner_uids(fd)
    return Fown(uid=uid, euid=euid, signum=signum, pid_type=pid_type, pid=pid)


def _pread_exact(fd: int, n: int, off: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.pread(fd, n - len(out), off + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_build_id(fd: int, size: int) -> bytes | None:
    """The NT_GNU_BUILD_ID note of the ELF file open at ``fd`` (readable),
    looked for as CRIU does (criu/files-reg.c get_build_id_64: PT_NOTE
    segments within the first :data:`BUILD_ID_MAP_SIZE` bytes); None when
    not ELF or there is none. Reads with pread: no position moves."""
    limit = min(size, BUILD_ID_MAP_SIZE)
    if limit < 5:
        return None
    try:
        head = _pread_exact(fd, min(limit, 64), 0)
    except OSError:
        return None
    if head[:4] != b"\x7fELF" or len(head) < 64 or head[4] != 2:  # ELFCLASS64 only (x86_64)
        return None
    e_phoff, = struct.unpack_from("<Q", head, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", head, 54)
    if e_phnum == 0 or e_phoff == 0 or e_phentsize < 56:
        return None
    phdr_end = limit - 56
    try:
        phdrs = _pread_exact(fd, min(e_phnum * e_phentsize, max(0, limit - e_phoff)), e_phoff)
    except OSError:
        return None
    for i in range(e_phnum):
        off = i * e_phentsize
        if e_phoff + off > phdr_end or off + 56 > len(phdrs):
            break
        p_type, = struct.unpack_from("<I", phdrs, off)
        if p_type != 4:  # PT_NOTE
            continue
        p_offset, = struct.unpack_from("<Q", phdrs, off + 8)
        p_filesz, = struct.unpack_from("<Q", phdrs, off + 32)
        if p_offset == 0 or p_offset >= limit:
            continue
        end = min(p_offset + p_filesz, limit - 12)
        try:
            notes = _pread_exact(fd, max(0, min(limit, p_offset + p_filesz) - p_offset), p_offset)
        except OSError:
            return None
        pos = p_offset
        while pos <= end and pos - p_offset + 12 <= len(notes):
            namesz, descsz, n_type = struct.unpack_from("<III", notes, pos - p_offset)
            if n_type == 3:  # NT_GNU_BUILD_ID
                if descsz == 0 or descsz > 512:
                    return None
                start = pos + 12 + ((namesz + 3) & ~3)
                if start + descsz > limit:
                    return None
                rel = start - p_offset
                if rel + descsz <= len(notes):
                    return notes[rel : rel + descsz]
                return _pread_exact(fd, descsz, start)
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return None


def read_ghost(fd: int, size: int) -> GhostContents:
    """Data extents of the readable file at ``fd`` (SEEK_DATA/SEEK_HOLE,
    as CRIU's copy_file_to_chunks without FIEMAP, whose FIEMAP_FLAG_SYNC
    would write the file back; a file system without SEEK_DATA is read
    whole). Moves ``fd``'s position: pass a descriptor of our own."""
    extents: list[tuple[int, bytes]] = []
    hole = 0
    while hole < size:
        try:
            data = os.lseek(fd, hole, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                break
            if hole != 0:
                raise
            data, hole = 0, size
        else:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        if hole > size:
            hole = size
        chunk = _pread_exact(fd, hole - data, data)
        if chunk:
            extents.append((data, chunk))
    return GhostContents(size=size, extents=extents)


def _open_readable(proc_path: str) -> int:
    """Our own read-only descriptor for the file behind a /proc magic link
    (O_NOATIME where allowed: the file's atime stays as it was)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        return os.open(proc_path, flags | kf.O_NOATIME)
    except PermissionError:
        return os.open(proc_path, flags)


_MEMFD_DEV: list[int] = []


def memfd_dev() -> int:
    """st_dev of the kernel's internal shmem mount, which holds memfd files,
    MAP_SHARED anonymous memory and SysV shm segments; found the way CRIU's
    is_memfd does: by making a memfd."""
    if not _MEMFD_DEV:
        fd = os.memfd_create("dumper-probe", os.MFD_CLOEXEC)
        try:
            _MEMFD_DEV.append(os.fstat(fd).st_dev)
        finally:
            os.close(fd)
    return _MEMFD_DEV[0]


def _file_info(link: str, st: os.stat_result, mnt_id: int, fs_type: int) -> FileInfo:
    return FileInfo(
        path=link,
        mode=st.st_mode,
        dev=st.st_dev,
        ino=st.st_ino,
        rdev=st.st_rdev,
        nlink=st.st_nlink,
        size=st.st_size,
        uid=st.st_uid,
        gid=st.st_gid,
        blocks=st.st_blocks,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        mnt_id=mnt_id,
        fs_type=fs_type,
    )


def _check_path(info: FileInfo, mount_ids: set[int] | None) -> None:
    """CRIU's check_path_remap (criu/files-reg.c) without its side effects:
    sets ``path``/``deleted`` and, where CRIU would need something we do
    not do (a link-remap file on the user's file system, a dead-pid
    helper, a ghost directory), ``reason``."""
    link = info.path
    if not link.startswith("/"):
        info.reason = f"path {link!r} is not absolute"
        return
    try:
        link.encode("utf-8")
    except UnicodeEncodeError:
        info.reason = f"path {link!r} is not UTF-8 (image paths are protobuf strings)"
        return
    if mount_ids is not None and info.mnt_id >= 0 and info.mnt_id not in mount_ids:
        info.reason = f"its mount (mnt_id {info.mnt_id}) is not in the process's mount table"
        return
    stripped = link[: -len(_DELETED)] if link.endswith(_DELETED) else link
    if info.fs_type == PROC_SUPER_MAGIC:
        m = _PROC_PID.match(link)
        if m and (link.endswith(_DELETED) or not os.path.exists(f"/proc/{m.group(1)}")):
            info.reason = f"a file of exited process {m.group(1)} under /proc"
        return
    if info.fs_type == DEVPTS_SUPER_MAGIC:
        info.path = stripped
        return
    if info.nlink == 0:
        info.path = stripped
        info.deleted = True
        if not stat.S_ISREG(info.mode):
            what = "directory" if stat.S_ISDIR(info.mode) else "FIFO" if stat.S_ISFIFO(info.mode) else "file"
            info.reason = f"deleted {what} {stripped!r}: a restore cannot reopen it"
        return
    if info.fs_type == NFS_SUPER_MAGIC and re.search(r"/\.nfs[0-9a-fA-F]{24}$", stripped):
        info.reason = f"NFS silly-renamed file {stripped!r}: CRIU would link it under a new name"
        return
    try:
        pst = os.stat(link, follow_symlinks=not stat.S_ISLNK(info.mode))
    except FileNotFoundError:
        info.path = stripped
        info.reason = (
            f"{stripped!r} no longer leads to the file, which still has links elsewhere (unlinked, or"
            " hidden by a mount): a restore cannot reopen it (CRIU would create a link-remap file)"
        )
        return
    except OSError as err:
        info.reason = f"cannot check {link!r}: {err.strerror}"
        return
    if (pst.st_dev, pst.st_ino) != (info.dev, info.ino):
        info.reason = f"{link!r} now names another file (renamed over or overmounted)"


def _add_contents(info: FileInfo, reopen: str, ghost_limit: int, want_build_id: bool) -> None:
    """Read the ghost contents and build-id that ``info`` needs, through a
    descriptor of our own opened from the magic link ``reopen`` with
    O_NOATIME: reading through the target's open file description would
    update the file's atime (CRIU's reads do; ours leave it as it was)."""
    need_ghost = info.deleted and info.reason is None and stat.S_ISREG(info.mode)
    if need_ghost and info.blocks * 512 > ghost_limit:
        info.reason = (
            f"deleted file {info.path!r} holds {info.blocks * 512} bytes, over the {ghost_limit}-byte"
            " ghost limit"
        )
        need_ghost = False
    want_build_id = want_build_id and stat.S_ISREG(info.mode) and info.size >= 5 and info.reason is None
    if not (need_ghost or want_build_id):
        return
    fd = None
    try:
        fd = _open_readable(reopen)
        if want_build_id:
            info.build_id = read_build_id(fd, info.size)
        if need_ghost:
            info.ghost = read_ghost(fd, info.size)
    except OSError as err:
        if need_ghost:
            info.reason = f"cannot read deleted file {info.path!r}: {err.strerror}"
    finally:
        if fd is not None:
            os.close(fd)


# --- terminals ---------------------------------------------------------------


def _tty_driver(rdev: int) -> str | None:
    """criu/tty.c get_tty_driver: which driver a character device is."""
    maj, mnr = os.major(rdev), os.minor(rdev)
    if maj == ktty.TTYAUX_MAJOR:
        return {2: "ptmx", 1: "console", 0: "ctty"}.get(mnr)
    if maj == ktty.TTY_MAJOR:
        return "vt" if ktty.MIN_NR_CONSOLES <= mnr <= ktty.MAX_NR_CONSOLES else None
    if maj in (ktty.USB_SERIAL_MAJOR, ktty.LOW_DENSE_SERIAL_MAJOR):
        return "serial"
    if ktty.UNIX98_PTY_MASTER_MAJOR <= maj < ktty.UNIX98_PTY_MASTER_MAJOR + ktty.UNIX98_PTY_MAJOR_COUNT:
        return "ptmx"
    if maj == ktty.UNIX98_PTY_SLAVE_MAJOR:
        return "pts"
    return None


def _ioctl_int(fd: int, req: int) -> int:
    return struct.unpack("i", _fcntl.ioctl(fd, req, bytes(4)))[0]


def _read_tty(fd: int, driver: str, rdev: int, path: str, ctl: tuple[int, int, int]) -> TtyState:
    """CRIU's parasite_dump_tty and dump_tty_info, from outside.

    ``ctl`` is the target's (tty_nr, session, tpgid) from /proc/PID/stat.
    TIOCGSID/TIOCGPGRP on a slave answer only to a process whose controlling
    terminal it is, so for a slave the target's own /proc view is used;
    on a master they answer anybody.
    """
    if driver == "ptmx":
        index = _ioctl_int(fd, ktty.TIOCGPTN)
    elif driver == "pts":
        index = int(path.rsplit("/", 1)[1])
    else:
        index = -1
    st = TtyState(driver=driver, index=index)

    def get(req: int) -> int:
        try:
            return _ioctl_int(fd, req)
        except OSError as err:
            if err.errno == errno.ENOTTY:
                return 0
            raise

    try:
        if driver == "ptmx":
            st.sid, st.pgrp = get(ktty.TIOCGSID), get(ktty.TIOCGPGRP)
        else:
            tty_nr, session, tpgid = ctl
            if tty_nr and tty_nr == _new_encode_dev(rdev):
                st.controlling = True
                st.sid, st.pgrp = session, max(tpgid, 0)
        st.exclusive = bool(get(ktty.TIOCGEXCL))
        if driver in ("ptmx", "pts"):
            st.packet_mode = bool(get(ktty.TIOCGPKT))
            st.locked = bool(get(ktty.TIOCGPTLCK))
    except OSError as err:
        if err.errno != errno.EIO:  # EIO: a pty whose other side is gone (hung up)
            raise
        st.hangup = True
        return st
    st.termios = _fcntl.ioctl(fd, ktty.TCGETS, bytes(36))
    st.termios_locked = _fcntl.ioctl(fd, ktty.TIOCGLCKTRMIOS, bytes(36))
    st.winsize = struct.unpack("HHHH", _fcntl.ioctl(fd, ktty.TIOCGWINSZ, bytes(8)))
    return st


def _new_encode_dev(dev: int) -> int:
    """include/linux/kdev_t.h new_encode_dev: how /proc/PID/stat prints tty_nr."""
    maj, mnr = os.major(dev), os.minor(dev)
    return (mnr & 0xFF) | (maj << 8) | ((mnr & ~0xFF) << 12)


def _ctl_terminal(process: Process) -> tuple[int, int, int]:
    """(tty_nr, session, tpgid) from /proc/PID/stat (proc(5) fields 7, 6, 8)."""
    data = process.read_file("stat")
    f = data[data.rindex(b")") + 2 :].split()
    return int(f[4]), int(f[3]), int(f[5])


# --- the collection ----------------------------------------------------------


class _Collector:
    """One pass over one process's descriptors."""

    def __init__(self, process: Process, ghost_limit: int) -> None:
        self.process = process
        self.pid = process.pid
        self.ghost_limit = ghost_limit
        self.pidfd: int | None = None
        self.mount_ids = read_mount_ids(process)
        self.pipes_read: dict[int, bytes] = {}  # pipe_id -> data, read once per process
        self.fs_types: dict[int, int] = {}  # st_dev -> statfs f_type
        self._ctl: tuple[int, int, int] | None = None

    def fs_type(self, dev: int, base: str) -> int:
        """statfs f_type of the file at ``base``; one statfs per device."""
        t = self.fs_types.get(dev)
        if t is None:
            t = self.fs_types[dev] = statfs_type(base)
        return t

    def ctl(self) -> tuple[int, int, int]:
        if self._ctl is None:
            self._ctl = _ctl_terminal(self.process)
        return self._ctl

    @contextlib.contextmanager
    def getfd(self, fd: int) -> Iterator[int]:
        """Our copy of the target's ``fd`` for the duration of the block."""
        if self.pidfd is None:
            with self.process.translate("pidfd_open"):
                self.pidfd = pidfd_open(self.pid)
        try:
            copy = pidfd_getfd(self.pidfd, fd)
        except OSError as err:
            if err.errno == errno.ENOSYS:
                raise UnsupportedKernel("pidfd_getfd", "Linux 5.6 or later is needed to read descriptors") from err
            raise  # EPERM, ESRCH...: translated by collect_fds
        try:
            yield copy
        finally:
            os.close(copy)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def one(self, fd: int) -> OpenFd:
        base = self.process.file_path(f"fd/{fd}")
        # OSErrors here are translated once, around the whole walk (collect_fds)
        link = os.readlink(base)
        info = _parse_fdinfo(_read_small(self.process.file_path(f"fdinfo/{fd}")))
        st = os.stat(base)
        raw_flags = int(info.get("flags", "0"), 8)
        o = OpenFd(
            fd=fd,
            kind="unknown",
            link=link,
            flags=raw_flags & ~kf.O_CLOEXEC,
            cloexec=bool(raw_flags & kf.O_CLOEXEC),
            pos=int(info.get("pos", "0")),
            mnt_id=int(info.get("mnt_id", "-1")),
            ino=int(info.get("ino", st.st_ino)),
            dev=st.st_dev,
            mode=st.st_mode,
            rdev=st.st_rdev,
            fdinfo=info,
        )
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return self._socket(o)
        if link.startswith("anon_inode:") or link.startswith("pidfd:"):
            return self._anon(o, link)
        if _NS_LINK.match(link):
            o.kind = "namespace"
            o.unrestorable = f"namespace file {link}"
            return o
        if stat.S_ISFIFO(mode) and link.startswith("pipe:["):
            o.kind = PIPE
            return self._pipe(o)
        o.fs_type = self.fs_type(st.st_dev, base)
        if o.fs_type == PID_FS_MAGIC:
            o.kind = "pidfd"
            o.unrestorable = "pidfd"
            return o
        if o.fs_type == ANON_INODE_FS_MAGIC:
            return self._anon(o, link)
        if stat.S_ISCHR(mode):
            return self._chr(o, base, st)
        if stat.S_ISBLK(mode):
            o.kind = "block device"
            o.unrestorable = f"block device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} ({link})"
            return o
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode) or stat.S_ISFIFO(mode):
            return self._path(o, base, st)
        o.unrestorable = f"file of unknown type {stat.S_IFMT(mode):o} ({link})"
        return o

    # --- kinds

    def _socket(self, o: OpenFd) -> OpenFd:
        o.kind = "socket"
        what = "socket"
        try:
            with self.getfd(o.fd) as copy:
                s = socket.socket(fileno=os.dup(copy))
                try:
                    what = _socket_name(s.family, s.type, s.proto)
                finally:
                    s.close()
        except (OSError, AccessDenied):
            pass
        o.unrestorable = what
        return o

    def _anon(self, o: OpenFd, link: str) -> OpenFd:
        name = link.split(":", 1)[1]
        kind = _ANON_KINDS.get(name)
        if link.startswith("pidfd:"):
            kind = "pidfd"
        if kind == EVENTFD:
            o.kind = EVENTFD
            o.eventfd_counter = int(o.fdinfo.get("eventfd-count", "0"), 16)
            if o.fdinfo.get("eventfd-semaphore", "0").strip() == "1":
                o.unrestorable = "eventfd in semaphore mode (CRIU 4.2 restores it without EFD_SEMAPHORE)"
                return o
            with self.getfd(o.fd) as copy:
                o.fown = _fown(copy, o.flags)
            return o
        o.kind = kind or f"anon_inode:{name}"
        o.unrestorable = kind or f"anonymous inode {name}"
        return o

    def _pipe(self, o: OpenFd) -> OpenFd:
        """Pipes and FIFOs: capacity, and buffered bytes tee'd from a
        readable end (criu/pipes.c dump_one_pipe_data, without consuming)."""
        if o.flags & kf.O_DIRECT:
            o.unrestorable = f"{o.kind} in packet mode (O_DIRECT)"
            return o
        pipe_id = o.ino
        with self.getfd(o.fd) as copy:
            o.fown = _fown(copy, o.flags)
            size = kf.get_pipe_size(copy)
            data = None
            if (o.flags & kf.O_ACCMODE) != kf.O_WRONLY:
                data = self.pipes_read.get(pipe_id)
                if data is None:
                    data = self.pipes_read[pipe_id] = _peek_pipe(copy, size)
                queued = _ioctl_int(copy, termios.FIONREAD)
                if len(data) != queued:
                    o.unrestorable = f"{o.kind} holds {queued} bytes, {len(data)} could be copied"
                    return o
        o.pipe = PipeBuffer(pipe_id=pipe_id, size=size, data=data)
        return o

    def _chr(self, o: OpenFd, base: str, st: os.stat_result) -> OpenFd:
        """criu/files.c dump_chrdev: memory devices are reopened by path,
        terminals get tty entries, anything else is not saved."""
        maj, mnr = os.major(st.st_rdev), os.minor(st.st_rdev)
        driver = _tty_driver(st.st_rdev)
        if maj == ktty.MEM_MAJOR or (maj == ktty.MISC_MAJOR and mnr == 235):  # 235: autofs
            o.kind = CHR
        elif driver is not None:
            o.kind = TTY
        else:
            o.kind = f"character device {maj}:{mnr}"
            o.unrestorable = f"character device {maj}:{mnr} ({o.link})"
            return o
        o.file = _file_info(o.link, st, o.mnt_id, o.fs_type)
        _check_path(o.file, self.mount_ids)
        if o.file.reason:
            o.unrestorable = o.file.reason
            return o
        with self.getfd(o.fd) as copy:
            o.fown = _fown(copy, o.flags)
            if o.kind == TTY:
                if driver not in ("pts",):
                    o.unrestorable = _TTY_UNSUPPORTED[driver]
                    if driver != "ptmx":
                        return o
                o.tty = _read_tty(copy, driver, st.st_rdev, o.file.path, self.ctl())
        return o

    def _path(self, o: OpenFd, base: str, st: os.stat_result) -> OpenFd:
        mode = st.st_mode
        if stat.S_ISFIFO(mode):
            o.kind = FIFO
        elif stat.S_ISDIR(mode):
            o.kind = DIR
        else:
            o.kind = REG
        if o.link.startswith("/memfd:") and (st.st_dev == memfd_dev() or o.fs_type == HUGETLBFS_MAGIC):
            # Saved as CRIU does (criu/memfd.c): the descriptor as a MEMFD file,
            # its contents once per inode with the tree's shared memory.
            o.kind = MEMFD
            o.file = _file_info(o.link, st, o.mnt_id, o.fs_type)
            if o.fs_type == HUGETLBFS_MAGIC:
                o.unrestorable = f"memfd {o.link[1:].removesuffix(_DELETED)!r} with MFD_HUGETLB: contents not saved"
                return o
            with self.getfd(o.fd) as copy:
                o.fown = _fown(copy, o.flags)
            return o
        if o.fs_type == SECRETMEM_MAGIC:
            o.kind = "secretmem"
            o.unrestorable = "memfd_secret"
            return o
        o.file = info = _file_info(o.link, st, o.mnt_id, o.fs_type)
        _check_path(info, self.mount_ids)
        if o.kind == FIFO:
            if info.reason:
                o.unrestorable = info.reason
                return o
            return self._pipe(o)  # reopened by path on restore; the bytes come from the pipe
        want_build_id = not ((o.flags & kf.O_ACCMODE) == kf.O_WRONLY and o.flags & kf.O_APPEND)
        if not o.flags & kf.O_PATH:
            with self.getfd(o.fd) as copy:
                o.fown = _fown(copy, o.flags)
        _add_contents(info, base, self.ghost_limit, want_build_id)
        if info.reason:
            o.unrestorable = info.reason
        return o


_TTY_UNSUPPORTED = {
    "ptmx": "pseudo-terminal master (pty pairs are not saved)",
    "ctty": "/dev/tty (the controlling terminal by its generic name is not saved)",
    "console": "/dev/console is not saved",
    "vt": "virtual console is not saved",
    "serial": "serial terminal is not saved",
}


def _socket_name(family: int, type_: int, proto: int) -> str:
    fam = {socket.AF_UNIX: "unix", socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6",
           socket.AF_NETLINK: "netlink", getattr(socket, "AF_PACKET", 17): "packet"}.get(family, f"family {family}")
    typ = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram", socket.SOCK_RAW: "raw",
           socket.SOCK_SEQPACKET: "seqpacket"}.get(type_ & 0xF, f"type {type_}")
    if family in (socket.AF_INET, socket.AF_INET6):
        p = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP"}.get(proto)
        if p:
            return f"{p} socket ({fam})"
    return f"{fam} {typ} socket"


def _peek_pipe(fd: int, size: int) -> bytes:
    """The bytes buffered in the pipe read end ``fd`` (ours), left there:
    tee(2) into a pipe of ours as large, then read ours."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if kf.get_pipe_size(w) < size:
            kf.set_pipe_size(w, size)
        try:
            n = tee(fd, w, size, SPLICE_F_NONBLOCK)
        except OSError as err:
            if err.errno == errno.EAGAIN:
                return b""
            raise KernelError(err.errno, "tee", "copying a pipe's buffered bytes") from err
        out = bytearray()
        while len(out) < n:
            chunk = os.read(r, n - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        os.close(r)
        os.close(w)


def collect_fds(process: Process, *, ghost_limit: int = DEFAULT_GHOST_LIMIT) -> list[OpenFd]:
    """Every descriptor of ``process``, in fd order (see :class:`OpenFd`).

    The process must be frozen. ``ghost_limit``: the most allocated bytes
    of a deleted file whose contents are read (CRIU's ``--ghost-limit``,
    1 MiB by default); a larger one is reported unrestorable. Errors:
    ProcessError kinds (ZombieProcess for a zombie), UnsupportedKernel (no
    pidfd_getfd), KernelError.
    """
    process.check_has_mm()  # a zombie has no descriptors left; a kernel thread never had any
    col = _Collector(process, ghost_limit)
    fd = None
    try:
        with process.translate("descriptors"):
            out = []
            for fd in sorted(int(n) for n in os.listdir(process.file_path("fd"))):
                o = col.one(fd)
                lock = o.fdinfo.get("lock")
                if lock is not None and o.unrestorable is None:
                    # fdinfo "lock:" lines (fs/locks.c show_fd_locks): flock, POSIX locks, leases
                    kind = " ".join(lock.split()[1:4])
                    o.unrestorable = f"holds a file lock ({kind}): locks are not saved (criu needs --file-locks)"
                out.append(o)
            return out
    except OSError as err:  # what translate leaves: an unexpected errno
        raise KernelError(err.errno, "reading descriptors", f"pid {process.pid} fd {fd}") from err
    finally:
        col.close()


def collect_path(
    process: Process, name: str, *, ghost_limit: int = DEFAULT_GHOST_LIMIT, mount_ids: set[int] | None = None
) -> FileInfo:
    """The file behind ``/proc/PID/NAME`` for NAME ``cwd``, ``root`` or
    ``exe`` (or ``map_files/START-END``), as CRIU's dump_task_fs and
    dump_task_exe_link record it: path, stat, mount id; contents if it was
    deleted. ``reason`` set when a restore could not reopen it.
    ``mount_ids``: the process's mount ids (:func:`read_mount_ids`), read
    here when not given. Errors: ProcessError kinds; KernelError when NAME
    does not exist in a live process (a mapping that is gone: the process
    was not frozen)."""
    base = process.file_path(name)
    try:
        with process.translate(name):
            link = os.readlink(base)
            st = os.stat(base)
            fs_type = statfs_type(base)
            mnt_id = _mnt_id_of(base)
    except OSError as err:
        raise KernelError(err.errno, f"reading /proc/{process.pid}/{name}") from err
    info = _file_info(link, st, mnt_id, fs_type)
    if is_shared_memory(info):
        info.reason = f"{link!r} is a shared memory object, not a file"
        return info
    _check_path(info, mount_ids if mount_ids is not None else read_mount_ids(process))
    _add_contents(info, base, ghost_limit, want_build_id=name != "cwd" and name != "root")
    return info


def is_shared_memory(info: FileInfo) -> bool:
    """True for the objects behind MAP_SHARED|MAP_ANONYMOUS mappings (also
    with MAP_HUGETLB), memfd files and SysV shm segments: their contents
    are memory to save, not a file to reopen."""
    return info.dev == memfd_dev() or (info.fs_type == HUGETLBFS_MAGIC and info.nlink == 0)


def _mnt_id_of(path: str) -> int:
    """Mount id of the file behind ``path`` (an O_PATH descriptor's fdinfo,
    as CRIU's get_fd_mntid)."""
    fd = os.open(path, kf.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            return int(_parse_fdinfo(f.read()).get("mnt_id", "-1"))
    finally:
        os.close(fd)


def collect_mapped_file(
    process: Process, vma: Vma, *, ghost_limit: int = DEFAULT_GHOST_LIMIT, mount_ids: set[int] | None = None
) -> FileInfo:
    """The file mapped at ``vma`` (through /proc/PID/map_files, which needs
    CAP_SYS_ADMIN), as CRIU's dump_filemap records it."""
    return collect_path(process, f"map_files/{vma.start:x}-{vma.end:x}", ghost_limit=ghost_limit, mount_ids=mount_ids)


def map_files_fdflags(process: Process, vma: Vma) -> int | None:
    """O_RDONLY, O_WRONLY or O_RDWR: how the file mapped at ``vma`` was
    opened, from the mode of its /proc/PID/map_files link (criu/proc_parse.c
    vma_get_mapfile_flags; CRIU's restore reopens the file so, as
    ``vma_entry.fdflags``). None when there is no such link."""
    path = process.file_path(f"map_files/{vma.start:x}-{vma.end:x}")
    with process.translate("map_files"):
        try:
            mode = os.lstat(path).st_mode & 0o600
        except FileNotFoundError:
            return None
    return {0o200: kf.O_WRONLY, 0o400: kf.O_RDONLY, 0o600: kf.O_RDWR}.get(mode)


def read_umask(process: Process) -> int:
    """The process's umask (/proc/PID/status ``Umask``, Linux 4.7)."""
    value = process.status().get("Umask")
    if value is None:
        raise UnsupportedKernel("Umask in /proc/PID/status", "Linux 4.7 or later")
    return int(value, 8)

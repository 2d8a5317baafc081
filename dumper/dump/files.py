"""Open files of a checkpoint as CRIU 4.2 writes them.

A :class:`FileTable` numbers the open file descriptions of a whole
checkpoint (a tree of processes shares one) and turns what
:mod:`dumper.proc.fds` collected into CRIU's images:

- ``files.img``: one ``file_entry`` per open file description (REG for
  files, directories and memory devices, PIPE, FIFO, EVENTFD, TTY, MEMFD),
  and per file a process maps, runs (``mm_entry.exe_file_id``) or sits in
  (cwd, root); a shared memory object mapped (MAP_SHARED anonymous or
  ``/dev/zero``, memfd) is a MEMFD entry as CRIU 4.2 writes it
  (criu/memfd.c), its contents saved once by
  :class:`~dumper.dump.shmem.SharedMemory`;
- ``fdinfo-<files_id>.img``: one ``fdinfo_entry`` per descriptor (returned
  by :meth:`FileTable.add_process`; :func:`write_fdinfo` writes it);
- ``pipes-data.img`` / ``fifo-data.img``: the bytes buffered in each pipe
  and FIFO, once per pipe whatever the number of ends;
- ``remap-fpath.img`` and ``ghost-file-<id>.img``: files deleted while
  open, with their contents;
- ``tty-info.img``: terminals;
- ``fs-<pid>.img``: cwd, root and umask.

Numbering follows criu/files.c and criu/file-ids.c: one counter from 1 for
every file id; descriptors naming the same open file description (dup,
fork, SCM_RIGHTS) get one id, found with ``kcmp(KCMP_FILE)`` among
descriptors with the same device, inode and position (CRIU's gen_id), so
:meth:`FileTable.add_process` must run while every process added so far is
still frozen. Mapped files, the executable, cwd and root reuse an earlier
entry of the same (device, inode, mount) as CRIU's fd_id_generate_special
does (never for directories and devices, where CRIU makes a new one).

Descriptors CRIU could restore but we do not save, and files a restore
could not reopen, are not written: each becomes a ``(pid, kind, what,
why)`` in :attr:`FileTable.unrestorable`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from google.protobuf.message import Message

from ..errors import DumperError, KernelError
from ..image import format as fmt
from ..image.pb import (
    eventfd_pb2,
    fdinfo_pb2,
    fifo_pb2,
    fown_pb2,
    fs_pb2,
    memfd_pb2,
    ghost_file_pb2,
    pipe_data_pb2,
    pipe_pb2,
    regfile_pb2,
    remap_file_path_pb2,
    tty_pb2,
)
from ..kernel import fcntl as kf
from ..kernel import tty as ktty
from ..kernel.kcmp import KCMP_EQ, KCMP_FILE, KCMP_LT, kcmp
from ..proc.fds import (
    DEFAULT_GHOST_LIMIT,
    FileInfo,
    Fown,
    OpenFd,
    TtyState,
    collect_path,
    is_shared_memory,
    read_mount_ids,
    read_umask,
)
from ..proc.maps import Vma
from ..proc.process import Process
from .shmem import SYSV, SharedMemory, ShmemObject

__all__ = ["FileTable", "Unrestorable", "write_fdinfo", "GHOST_CHUNKS_THRESH"]

# criu/files-reg.c: smaller ghost files are stored whole, larger in chunks.
GHOST_CHUNKS_THRESH = 3 * 4096

_FD_TYPE = {
    "reg": fdinfo_pb2.REG,
    "dir": fdinfo_pb2.REG,
    "chr": fdinfo_pb2.REG,
    "pipe": fdinfo_pb2.PIPE,
    "fifo": fdinfo_pb2.FIFO,
    "eventfd": fdinfo_pb2.EVENTFD,
    "tty": fdinfo_pb2.TTY,
    "memfd": fdinfo_pb2.MEMFD,
}

_KMSG = (ktty.MEM_MAJOR, 11)
_U64_MAX = (1 << 64) - 1


class Unrestorable(NamedTuple):
    """One thing of the checkpoint a restore would lack: ``pid``, ``kind``
    (``socket``, ``inotify``, ...), ``what`` (``fd 5``, ``cwd``, ``exe``,
    ``mapping 0x7f..-0x7f..``), ``why`` (one line). A tuple."""

    pid: int
    kind: str
    what: str
    why: str

    def __str__(self) -> str:
        return f"pid {self.pid} {self.what} ({self.kind}): {self.why}"


@dataclass(slots=True)
class _PipeData:
    pipe_id: int
    size: int
    data: bytes


@dataclass(slots=True)
class _Pty:
    """A pseudo-terminal end seen in the tree, for the pairing checks."""

    pid: int
    fd: int
    index: int
    master: bool


def _fown_entry(f: Fown) -> fown_pb2.fown_entry:
    return fown_pb2.fown_entry(uid=f.uid, euid=f.euid, signum=f.signum, pid_type=f.pid_type, pid=f.pid)


def _should_check_size(flags: int) -> bool:
    """criu/files-reg.c should_check_size: not for O_WRONLY|O_APPEND logs."""
    return not ((flags & kf.O_ACCMODE) == kf.O_WRONLY and flags & kf.O_APPEND)


def _build_id_words(build_id: bytes) -> list[int]:
    """CRIU stores the note's bytes in a repeated uint32, zero-padded."""
    padded = build_id + bytes(-len(build_id) % 4)
    return [int.from_bytes(padded[i : i + 4], "little") for i in range(0, len(padded), 4)]


def _termios_entry(raw: bytes) -> tty_pb2.termios_entry:
    """The kernel's struct termios as CRIU's termios_entry holds it.

    criu/tty.c termios_copy memcpy()s glibc's 32-byte c_cc into the uint32
    array, so c_cc[0..7] carry the control characters four to a word (little
    endian) and c_cc[8..18] nothing; restore copies the same 32 bytes back.
    c_ispeed/c_ospeed stay 0: TCGETS does not fill glibc's extra fields.
    """
    iflag, oflag, cflag, lflag = (int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4))
    line = raw[16]
    cc = bytes(raw[17 : 17 + ktty.NCCS]) + bytes(32 - ktty.NCCS)
    words = [int.from_bytes(cc[i : i + 4], "little") for i in range(0, 32, 4)] + [0] * (ktty.NCCS - 8)
    return tty_pb2.termios_entry(
        c_iflag=iflag, c_oflag=oflag, c_cflag=cflag, c_lflag=lflag, c_line=line, c_ispeed=0, c_ospeed=0, c_cc=words
    )


class FileTable:
    """The open files of one checkpoint. See the module docstring.

    Methods that look at a process (:meth:`add_process`'s sharing check,
    :meth:`mapped_file`, :meth:`exe_file`, :meth:`fs_entry`) must run while
    it is frozen. Errors: ProcessError kinds, KernelError (kcmp).

    ``shmem``: where shared memory objects (mapped, or memfd descriptors)
    are registered for their contents to be saved; without it they are not
    saved, each with a reason in :attr:`unrestorable`.
    """

    def __init__(self, *, ghost_limit: int = DEFAULT_GHOST_LIMIT, shmem: SharedMemory | None = None) -> None:
        self.ghost_limit = ghost_limit
        self.shmem = shmem
        self._mapped_obj: dict[tuple, ShmemObject] = {}
        self._next_id = 1
        self._next_ghost = 1
        self.files: list[fdinfo_pb2.file_entry] = []  # files.img, in CRIU's order of creation
        self._shared: dict[tuple, list[tuple[int, int, int]]] = {}  # gen key -> [(pid, fd, id)] in kcmp order
        self._special: dict[tuple[int, int, int], tuple[int, int]] = {}  # (dev, ino, mnt_id) -> (id, mode)
        self._mapped: dict[tuple[int, str, int, int, int], int] = {}  # per pid and vma file -> id
        self._pipes: dict[int, _PipeData] = {}
        self._fifos: dict[int, _PipeData] = {}
        self._ghosts: dict[tuple[int, int], int] = {}  # (kdev, ino) -> ghost id
        self._ghost_files: list[tuple[int, FileInfo]] = []
        self.remaps: list[remap_file_path_pb2.remap_file_path_entry] = []
        self.tty_infos: dict[int, tty_pb2.tty_info_entry] = {}
        self._ptys: list[_Pty] = []
        self.fs: dict[int, fs_pb2.fs_entry] = {}
        self._unrestorable: list[Unrestorable] = []
        self._processes: dict[int, Process] = {}
        self._mount_ids: dict[int, set[int]] = {}
        self._prefetched: dict[tuple, FileInfo] = {}  # see prefetch_mapped

    # --- ids

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def _process(self, pid: int) -> Process:
        p = self._processes.get(pid)
        if p is None:
            p = self._processes[pid] = Process(pid)
        return p

    def _mounts(self, pid: int) -> set[int]:
        ids = self._mount_ids.get(pid)
        if ids is None:
            ids = self._mount_ids[pid] = read_mount_ids(self._process(pid))
        return ids

    def _collect(self, pid: int, name: str) -> FileInfo:
        return collect_path(self._process(pid), name, ghost_limit=self.ghost_limit, mount_ids=self._mounts(pid))

    def _not_saved(self, pid: int, kind: str, what: str, why: str) -> None:
        self._unrestorable.append(Unrestorable(pid, kind, what, why))

    @property
    def unrestorable(self) -> list[Unrestorable]:
        """Everything not saved, one entry each, plus checks that need the
        whole tree (pseudo-terminal pairs). Ask after the last process."""
        shm = [Unrestorable(*r) for r in self.shmem.unrestorable] if self.shmem is not None else []
        return self._unrestorable + self._pty_reasons() + shm

    @property
    def needs_shell_job(self) -> bool:
        """True when a terminal of the checkpoint is a pty slave whose master
        is not in it (a job started from a shell): ``criu restore`` must run
        with ``--shell-job`` and a terminal on its stdin, which the restored
        process then gets in its place (criu/tty.c pty_open_unpaired_slave)."""
        masters = {p.index for p in self._ptys if p.master}
        return any(not p.master and p.index not in masters for p in self._ptys)

    def _pty_reasons(self) -> list[Unrestorable]:
        out = []
        masters = {p.index for p in self._ptys if p.master}
        slaves = {p.index for p in self._ptys if not p.master}
        for p in self._ptys:
            if not p.master and p.index in masters:
                out.append(Unrestorable(p.pid, "tty", f"fd {p.fd}",
                                        f"/dev/pts/{p.index}: its master is in the checkpoint (pty pairs are not saved)"))
        unpaired = sorted(slaves - masters)
        if len(unpaired) > 1:
            p = next(p for p in self._ptys if not p.master and p.index == unpaired[1])
            out.append(Unrestorable(p.pid, "tty", f"fd {p.fd}",
                                    f"terminals /dev/pts/{unpaired[0]} and /dev/pts/{unpaired[1]}: a restore "
                                    "inherits only one terminal (criu --shell-job)"))
        return out

    # --- descriptors

    def add_process(self, pid: int, fds: Iterable[OpenFd]) -> list[fdinfo_pb2.fdinfo_entry]:
        """The ``fdinfo_entry`` list of ``pid``'s descriptors (for
        ``fdinfo-<files_id>.img``), adding their files to the table.

        Call once per file table (threads and CLONE_FILES processes share
        one), in pstree order, while all processes added so far are frozen.
        Descriptors that are not saved are left out of the list and listed
        in :attr:`unrestorable`.
        """
        out = []
        for o in fds:
            if o.unrestorable is None and o.kind == "memfd" and self.shmem is None:
                o.unrestorable = f"memfd {o.link!r}: its contents are not saved"
            if o.unrestorable is not None:
                self._not_saved(pid, o.kind, f"fd {o.fd}", o.unrestorable)
                if o.tty is not None:  # a pty master: its slaves are not shell-job terminals
                    self._ptys.append(_Pty(pid, o.fd, o.tty.index, o.tty.driver == "ptmx"))
                continue
            file_id = self._shared_id(pid, o)
            out.append(
                fdinfo_pb2.fdinfo_entry(
                    id=file_id, flags=kf.FD_CLOEXEC if o.cloexec else 0, type=_FD_TYPE[o.kind], fd=o.fd
                )
            )
        return out

    def _shared_id(self, pid: int, o: OpenFd) -> int:
        """The id of ``o``'s open file description: an earlier one if kcmp
        says it is the same (a sorted list per gen key, binary search by the
        kernel's order, as CRIU's kcmp tree), else a new file entry."""
        # eventfd-id (Linux 6.6 fdinfo) tells eventfds apart: they share one inode
        key = (o.kind, o.dev, o.ino, o.pos, o.flags, o.fdinfo.get("eventfd-id"))
        group = self._shared.setdefault(key, [])
        lo, hi = 0, len(group)
        while lo < hi:
            mid = (lo + hi) // 2
            pid2, fd2, id2 = group[mid]
            try:
                r = kcmp(pid, pid2, KCMP_FILE, o.fd, fd2)
            except OSError as err:
                raise KernelError(err.errno, "kcmp(KCMP_FILE)", f"pid {pid} fd {o.fd} vs pid {pid2} fd {fd2}") from err
            if r == KCMP_EQ:
                return id2
            if r == KCMP_LT:
                hi = mid
            else:
                lo = mid + 1
        file_id = self._new_fd_file(pid, o)
        group.insert(lo, (pid, o.fd, file_id))
        return file_id

    def _new_fd_file(self, pid: int, o: OpenFd) -> int:
        file_id = self._new_id()
        fown = _fown_entry(o.fown)
        if o.kind in ("reg", "dir", "chr"):
            self._add_reg(file_id, o.file, o.flags, o.pos, fown)
            self._special.setdefault((o.file.dev, o.file.ino, o.file.mnt_id), (file_id, o.file.mode))
        elif o.kind == "pipe":
            pe = pipe_pb2.pipe_entry(id=file_id, pipe_id=o.pipe.pipe_id, flags=o.flags & ~kf.O_DIRECT, fown=fown)
            self.files.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.PIPE, id=file_id, pipe=pe))
            self._note_pipe_data(self._pipes, o)
        elif o.kind == "fifo":
            regf_id = self._new_id()  # criu/fifo.c: the path as a REG entry, written first
            self._add_reg(regf_id, o.file, o.flags, o.pos, fown)
            fe = fifo_pb2.fifo_entry(id=file_id, pipe_id=o.pipe.pipe_id, regf_id=regf_id)
            self.files.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.FIFO, id=file_id, fifo=fe))
            self._note_pipe_data(self._fifos, o)
        elif o.kind == "eventfd":
            efd = eventfd_pb2.eventfd_file_entry(id=file_id, flags=o.flags, fown=fown, counter=o.eventfd_counter)
            self.files.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.EVENTFD, id=file_id, efd=efd))
        elif o.kind == "tty":
            self._add_tty(pid, file_id, o, fown)
        elif o.kind == "memfd":
            obj = self.shmem.descriptor(self._process(pid), o.fd, o.file)
            self._add_memfd(file_id, obj, o.flags, o.pos, fown)
            self._special.setdefault((o.file.dev, o.file.ino, o.file.mnt_id), (file_id, o.file.mode))
        else:  # collect_fds gives every other kind a reason
            raise ValueError(f"fd {o.fd} of kind {o.kind!r} has no image entry")
        return file_id

    @staticmethod
    def _note_pipe_data(where: dict[int, _PipeData], o: OpenFd) -> None:
        # criu/pipes.c dump_one_pipe_data: once per pipe, from a readable end
        if o.pipe.data is not None and o.pipe.pipe_id not in where:
            where[o.pipe.pipe_id] = _PipeData(o.pipe.pipe_id, o.pipe.size, o.pipe.data)

    def _add_reg(self, file_id: int, info: FileInfo, flags: int, pos: int, fown: fown_pb2.fown_entry) -> None:
        """A REG file_entry as criu/files-reg.c dump_one_reg_file writes it,
        and the ghost remap of a deleted file."""
        if stat.S_ISCHR(info.mode) and (os.major(info.rdev), os.minor(info.rdev)) == _KMSG:
            if (flags & kf.O_ACCMODE) == kf.O_WRONLY and pos == 0:
                pos = _U64_MAX  # criu/files.c get_mem_dev_ops: restore must not seek it
        rfe = regfile_pb2.reg_file_entry(id=file_id, flags=flags, pos=pos, fown=fown, name=info.path, mode=info.mode)
        if stat.S_ISREG(info.mode) and _should_check_size(flags):
            rfe.size = info.size
            if info.build_id:
                rfe.build_id.extend(_build_id_words(info.build_id))
        self.files.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=file_id, reg=rfe))
        if info.deleted:
            key = (info.kdev, info.ino)
            ghost_id = self._ghosts.get(key)
            if ghost_id is None:
                ghost_id = self._ghosts[key] = self._next_ghost
                self._next_ghost += 1
                self._ghost_files.append((ghost_id, info))
            self.remaps.append(
                remap_file_path_pb2.remap_file_path_entry(
                    orig_id=file_id, remap_id=ghost_id, remap_type=remap_file_path_pb2.GHOST
                )
            )

    def _add_memfd(self, file_id: int, obj: ShmemObject, flags: int, pos: int, fown: fown_pb2.fown_entry) -> None:
        """A MEMFD file_entry (criu/memfd.c dump_one_memfd) naming the
        object's ``memfd.img`` inode."""
        mfe = memfd_pb2.memfd_file_entry(id=file_id, flags=flags, pos=pos, fown=fown, inode_id=obj.inode_id)
        self.files.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.MEMFD, id=file_id, memfd=mfe))

    def _add_tty(self, pid: int, file_id: int, o: OpenFd, fown: fown_pb2.fown_entry) -> None:
        """criu/tty.c dump_one_tty: the path as a REG entry, one tty_info per
        terminal, then the TTY file_entry."""
        t: TtyState = o.tty
        master = t.driver == "ptmx"
        info_id = (t.index << 1) + (1 if master else 0)
        regf_id = self._new_id()
        self._add_reg(regf_id, o.file, o.flags, o.pos, fown)
        self._ptys.append(_Pty(pid, o.fd, t.index, master))
        if info_id not in self.tty_infos:
            tie = tty_pb2.tty_info_entry(
                id=info_id,
                type=tty_pb2.PTY,
                locked=t.locked,
                exclusive=t.exclusive,
                packet_mode=t.packet_mode,
                sid=t.sid,
                pgrp=t.pgrp,
                rdev=o.rdev & 0xFFFFFFFF,
                dev=o.dev & 0xFFFFFFFF,
                uid=o.file.uid,
                gid=o.file.gid,
                pty=tty_pb2.tty_pty_entry(index=t.index),
            )
            if not t.hangup:
                tie.termios.CopyFrom(_termios_entry(t.termios))
                tie.termios_locked.CopyFrom(_termios_entry(t.termios_locked))
                row, col, xpix, ypix = t.winsize
                tie.winsize.CopyFrom(tty_pb2.winsize_entry(ws_row=row, ws_col=col, ws_xpixel=xpix, ws_ypixel=ypix))
            self.tty_infos[info_id] = tie
        tfe = tty_pb2.tty_file_entry(id=file_id, tty_info_id=info_id, flags=o.flags, fown=fown, regf_id=regf_id)
        self.files.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.TTY, id=file_id, tty=tfe))

    # --- files reached without a descriptor

    def _special_id(self, pid: int, kind: str, what: str, info: FileInfo) -> int:
        """criu/file-ids.c fd_id_generate_special + dump_one_reg_file: reuse
        an entry of the same file, else a new REG entry (flags 0, pos 0).
        Returns 0, and records why, when a restore could not reopen it."""
        if info.reason is not None:
            self._not_saved(pid, kind, what, info.reason)
            return 0
        key = (info.dev, info.ino, info.mnt_id)
        hit = self._special.get(key)
        # CRIU tests st_mode & (S_IFCHR | S_IFBLK): directories match too.
        if hit is not None and not (hit[1] & (stat.S_IFCHR | stat.S_IFBLK)):
            return hit[0]
        file_id = self._new_id()
        self._add_reg(file_id, info, 0, 0, _fown_entry(Fown()))
        self._special.setdefault(key, (file_id, info.mode))
        return file_id

    def mapped_file(self, pid: int, vma: Vma) -> int:
        """``vma_entry.shmid`` of file-backed ``vma``, private or shared: the
        file id of the file mapped there, a MEMFD file id for a shared memory
        object (MAP_SHARED anonymous, ``/dev/zero``, memfd: registered with
        :attr:`shmem`), or a SysV segment's id. 0 when it is not saved (no
        ``shmem``, or a file a restore cannot reopen), with a reason in
        :attr:`unrestorable`. Call while ``pid`` is frozen."""
        key = (pid, vma.path, vma.dev_major, vma.dev_minor, vma.inode)
        hit = self._mapped.get(key)
        if hit is not None:
            obj = self._mapped_obj.get(key)
            if obj is not None:  # another VMA of the same object (a split mapping)
                obj.mappings.append((pid, vma.start, vma.end, vma.pgoff))
            return hit
        what = f"mapping {vma.start:#x}-{vma.end:#x}"
        info = self._mapped_info(pid, vma)
        if is_shared_memory(info):
            file_id = self._shared_memory(pid, vma, info, what)
            if self.shmem is not None and file_id:
                self._mapped_obj[key] = self.shmem.objects[(info.dev, info.ino)]
        else:
            file_id = self._special_id(pid, "mapped file", f"{what} {info.path}", info)
        self._mapped[key] = file_id
        return file_id

    def prefetch_mapped(self, pid: int, vmas: Iterable[Vma]) -> None:
        """Collect the files mapped at ``vmas`` while ``pid`` still runs
        (one VMA per file): path, mount and build id are the file's, not
        the process's, and reading them (an ELF header per library) was
        most of the frozen time of a small process. :meth:`mapped_file`
        takes one only for the same VMA (range, path, device, inode) of a
        named regular file whose map_files link, stat'ed frozen, still shows
        the same device, inode, links, mode, size and mtime; deleted files
        (their contents are saved) and shared memory (its size can change
        under the same VMA) are collected frozen. Errors leave that to the
        frozen collection too."""
        seen = set()
        for vma in vmas:
            key = _prefetch_key(pid, vma)
            if key[3:] in seen:  # the file, as the maps line names it
                continue
            seen.add(key[3:])
            try:
                info = self._collect(pid, f"map_files/{vma.start:x}-{vma.end:x}")
            except DumperError:
                continue
            if stat.S_ISREG(info.mode) and not info.deleted and info.nlink and not is_shared_memory(info):
                self._prefetched[key] = info

    def _mapped_info(self, pid: int, vma: Vma) -> FileInfo:
        name = f"map_files/{vma.start:x}-{vma.end:x}"
        info = self._prefetched.pop(_prefetch_key(pid, vma), None)
        if info is not None:
            try:
                st = os.stat(self._process(pid).file_path(name))
            except OSError:
                st = None
            if st is not None and (st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_size, st.st_mtime_ns) == (
                    info.dev, info.ino, info.nlink, info.mode, info.size, info.mtime_ns):
                return info
        return self._collect(pid, name)

    def _shared_memory(self, pid: int, vma: Vma, info: FileInfo, what: str) -> int:
        """criu/cr-dump.c dump_filemap for a VMA_AREA_MEMFD VMA: one MEMFD
        entry per object (fd_id_generate_special: reused by every mapping
        and descriptor of the same inode); a SysV VMA's shmid is its id."""
        if self.shmem is None:
            self._not_saved(pid, "shared memory", what,
                            f"{info.path!r}: shared anonymous memory, memfd or SysV shm contents are not saved")
            return 0
        obj = self.shmem.mapping(self._process(pid), vma.start, vma.end, vma.pgoff, info)
        if obj.reason:
            self._not_saved(pid, "shared memory", what, obj.reason)
            return 0
        if obj.kind == SYSV:
            return obj.shmid
        skey = (info.dev, info.ino, info.mnt_id)
        hit = self._special.get(skey)
        if hit is not None:
            return hit[0]
        file_id = self._new_id()
        self._add_memfd(file_id, obj, 0, 0, _fown_entry(Fown()))
        self._special[skey] = (file_id, info.mode)
        return file_id

    def exe_file(self, pid: int) -> int:
        """``mm_entry.exe_file_id``: the file id of /proc/PID/exe (0 and a
        reason when not saved). Call while ``pid`` is frozen."""
        info = self._collect(pid, "exe")
        return self._special_id(pid, "exe", "exe", info)

    def fs_entry(self, pid: int) -> fs_pb2.fs_entry:
        """``fs_entry`` for ``fs-PID.img``: ids of the cwd and root
        directories (new REG entries, as CRIU) and the umask; :meth:`write`
        writes it. Call while ``pid`` is frozen."""
        p = self._process(pid)
        cwd = self._special_id(pid, "cwd", "cwd", self._collect(pid, "cwd"))
        root = self._special_id(pid, "root", "root", self._collect(pid, "root"))
        fs = fs_pb2.fs_entry(cwd_id=cwd, root_id=root, umask=read_umask(p))
        self.fs[pid] = fs
        return fs

    # --- images

    def image_items(self) -> list[tuple[str, str, list[Message | bytes]]]:
        """``(file name, magic, items)`` of every image :meth:`write` writes;
        an item is a message (an entry) or bytes (raw data after it)."""
        out: list[tuple[str, str, list[Message | bytes]]] = [(fmt.FILES_NAME, "FILES", list(self.files))]
        for name, magic, pipes in (
            (fmt.PIPES_DATA_NAME, "PIPES_DATA", self._pipes),
            (fmt.FIFO_DATA_NAME, "FIFO_DATA", self._fifos),
        ):
            if pipes:
                items: list[Message | bytes] = []
                for pd in pipes.values():
                    items.append(pipe_data_pb2.pipe_data_entry(pipe_id=pd.pipe_id, bytes=len(pd.data), size=pd.size))
                    if pd.data:
                        items.append(pd.data)
                out.append((name, magic, items))
        if self.remaps:
            out.append((fmt.REMAP_FPATH_NAME, "REMAP_FPATH", list(self.remaps)))
        for ghost_id, info in self._ghost_files:
            out.append((fmt.ghost_file_name(ghost_id), "GHOST_FILE", _ghost_items(info)))
        if self.tty_infos:
            out.append((fmt.TTY_INFO_NAME, "TTY_INFO", list(self.tty_infos.values())))
        for pid, fs in self.fs.items():
            out.append((fmt.fs_name(pid), "FS", [fs]))
        return out

    def write(self, writer) -> list[str]:
        """Write the images (see :meth:`image_items`) through ``writer``, a
        :class:`~dumper.image.writer.CheckpointWriter`; returns their names.
        fdinfo images are the caller's (:func:`write_fdinfo`)."""
        names = []
        for name, magic, items in self.image_items():
            writer.write_image_extra(name, magic, items)
            names.append(name)
        return names


def _ghost_items(info: FileInfo) -> list[Message | bytes]:
    """criu/files-reg.c dump_ghost_file: the entry, then the contents whole
    (small files) or as (ghost_chunk_entry, bytes) pairs of data extents."""
    from ..image.pb import time_pb2

    g = info.ghost
    gfe = ghost_file_pb2.ghost_file_entry(
        uid=info.uid,
        gid=info.gid,
        mode=info.mode,
        dev=info.kdev,
        ino=info.ino,
        atim=time_pb2.timeval(tv_sec=info.atime_ns // 10**9, tv_usec=info.atime_ns % 10**9 // 1000),
        mtim=time_pb2.timeval(tv_sec=info.mtime_ns // 10**9, tv_usec=info.mtime_ns % 10**9 // 1000),
    )
    if stat.S_ISREG(info.mode) and info.size >= GHOST_CHUNKS_THRESH:
        gfe.chunks = True
        gfe.size = info.size
        items: list[Message | bytes] = [gfe]
        for off, data in g.extents:
            items.append(ghost_file_pb2.ghost_chunk_entry(len=len(data), off=off))
            items.append(data)
        return items
    return [gfe, g.read_all()]


def write_fdinfo(writer, files_id: int, fdinfos: list[fdinfo_pb2.fdinfo_entry]) -> None:
    """Write ``fdinfo-<files_id>.img`` (``files_id`` from the process's
    task_kobj_ids_entry) holding ``fdinfos`` from :meth:`FileTable.add_process`."""
    writer.write_image(fmt.fdinfo_name(files_id), "FDINFO", fdinfos)


def _prefetch_key(pid: int, vma: Vma) -> tuple:
    """A prefetched file's key: the VMA (range) and the file its maps line names."""
    return (pid, vma.start, vma.end, vma.path, vma.dev_major, vma.dev_minor, vma.inode)

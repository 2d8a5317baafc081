"""Shared memory objects of a tree, each saved once (CRIU 4.2's layout).

A shared memory object is the shmem inode behind a MAP_SHARED|MAP_ANONYMOUS
or ``/dev/zero`` mapping, a memfd (mapped or only held by a descriptor), or
a SysV segment. Every process that maps it sees the same pages, so its
contents are saved once, however many processes and mappings share it
(criu/shmem.c, criu/memfd.c; the image layout is in
:mod:`dumper.image.format`):

- ``memfd.img``: one ``memfd_inode_entry`` per memfd or shared anonymous
  object (name ``/dev/zero`` for the latter, as CRIU, which restores both
  as memfds), with its size, seals, owner and mode; the MEMFD
  ``file_entry`` items naming it are :class:`~dumper.dump.files.FileTable`'s;
- ``ipcns-shm-ID.img``: one ``ipc_shm_entry`` per SysV segment
  (``in_pagemaps``), whose pages are saved like the others although the
  checkpoint is then not restorable: ``criu dump`` refuses a segment of an
  IPC namespace it does not dump ("doesn't live in IPC ns");
- ``pagemap-shmem-SHMID.img`` and a pages file per object with data:
  entries by offset in the object.

Which pages exist is found in O(populated pages), never O(size): the
object's data extents by ``lseek(SEEK_DATA/SEEK_HOLE)`` (mm/shmem.c
``shmem_file_llseek``; swapped-out pages are swap entries in the object's
page cache and count as data), joined with the mask scanner's PRESENT and
SWAPPED pages of every mapping of the tree (the PAGEMAP_SCAN ioctl walks
populated page tables only; the /proc/PID/pagemap emulation would walk the
whole length, so it is not used for this). Contents are read with
``pread`` on a descriptor of our own for the object, opened through
``/proc/PID/map_files/START-END`` or ``/proc/PID/fd/N``: a new open file
description, so no position of the target's moves, and the target's page
tables are never touched (no fault, no access bit). Pages present only in
the object (written by a process outside the tree, or by one that unmapped
it since) are saved too.

Phases, driven by the dump session: objects are registered while the tree
is frozen (:meth:`SharedMemory.mapping`, :meth:`SharedMemory.descriptor`,
from the file table), their pages found and copied into the spool while it
is still frozen (:meth:`SharedMemory.copy`), the images written after the
thaw (:meth:`SharedMemory.write`).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import KernelError, NoSuchProcess
from ..image import format as fmt
from ..image.pb import ipc_desc_pb2, ipc_shm_pb2, memfd_pb2
from ..kernel import fcntl as kf
from ..kernel.libc import PAGE_SIZE
from ..kernel.statfs import HUGETLBFS_MAGIC
from ..proc.fds import FileInfo
from ..proc.process import Process
from ..proc.shm import SysvSegment, read_sysv_segments
from . import intervals as iv
from .memread import Extents, add_unreadable, read_into_spool
from .spool import Spool

__all__ = ["ShmemObject", "SharedMemory", "settle_plans", "spool_estimate", "MEMFD", "ANON", "SYSV", "SYSV_REASON"]

MEMFD, ANON, SYSV = "memfd", "anon", "sysv"
# criu/cr-dump.c check_sysvipc_map_dump, for a tree in the dumper's IPC namespace.
SYSV_REASON = ("SysV shared memory outside an IPC namespace of its own: `criu dump` refuses it "
               "(\"doesn't live in IPC ns\"); its contents are saved")

_DELETED = " (deleted)"
_MEMFD_PREFIX = "/memfd:"
_PM = PAGE_SIZE


@dataclass(eq=False)
class ShmemObject:
    """One shared memory object of the tree.

    ``shmid`` names ``pagemap-shmem-SHMID.img``: the inode number (for a SysV
    segment that is its id). ``name`` is what ``memfd.img`` records
    (``/dev/zero`` for shared anonymous memory, the memfd's name without
    ``/memfd:``) or the SysV key as ``SYSV%08x``. ``size`` in bytes (st_size;
    shm_segsz for SysV). ``mappings``: ``(pid, start, end, pgoff)`` of every
    VMA of the tree mapping it, addresses and file offset in bytes.
    ``data``: object offsets ``(starts, ends)`` (bytes) found to hold pages;
    ``extents``: where they went in the spool (``vaddr`` = object offset).
    ``reason``: why its contents are not saved, or "".
    """

    dev: int
    ino: int
    kind: str
    name: str
    size: int
    uid: int
    gid: int
    mode: int
    seals: int
    fd: int = -1
    inode_id: int = 0
    sysv: SysvSegment | None = None
    mappings: list[tuple[int, int, int, int]] = field(default_factory=list)
    reason: str = ""
    data: tuple = iv.EMPTY
    extents: Extents | None = None
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    pages_id: int = 0

    @property
    def shmid(self) -> int:
        return self.ino

    @property
    def what(self) -> str:
        if self.kind == SYSV:
            return f"SysV segment {self.ino} (key {self.sysv.key:#x})" if self.sysv else f"SysV segment {self.ino}"
        if self.kind == ANON:
            return f"shared anonymous memory (shmem inode {self.ino})"
        return f"memfd {self.name!r} (inode {self.ino})"


def _open_object(path: str, pid: int) -> int:
    """Our own read-only descriptor for the object behind the /proc magic
    link ``path``: a new open file description (our lseek never moves the
    target's position)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
    try:
        try:
            return os.open(path, flags | kf.O_NOATIME)
        except PermissionError:
            return os.open(path, flags)
    except FileNotFoundError as err:
        raise NoSuchProcess(pid, f"{path} is gone") from err
    except OSError as err:
        raise KernelError(err.errno, f"opening {path}") from err


def data_extents(fd: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` byte offsets (page aligned) of the data in the
    shmem file ``fd`` below ``size``: one SEEK_DATA and one SEEK_HOLE per
    extent (mm/shmem.c ``shmem_file_llseek``: pages in memory or in swap
    are data, never-written ones holes)."""
    starts, ends = [], []
    pos = 0
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data past pos
                break
            raise KernelError(err.errno, "lseek(SEEK_DATA) on a shared memory object") from err
        if d >= size:
            break
        try:
            h = os.lseek(fd, d, os.SEEK_HOLE)
        except OSError as err:
            raise KernelError(err.errno, "lseek(SEEK_HOLE) on a shared memory object") from err
        h = min(h, size)
        s = d - d % _PM
        e = -(-h // _PM) * _PM
        if starts and s <= ends[-1]:
            ends[-1] = max(ends[-1], e)
        else:
            starts.append(s)
            ends.append(e)
        pos = max(h, d + 1)
    return np.array(starts, np.uint64), np.array(ends, np.uint64)


def _object_name(link: str, kind: str) -> str:
    """``memfd_inode_entry.name`` from the /proc link (criu/memfd.c
    dump_one_memfd: `` (deleted)`` and ``/memfd:`` stripped)."""
    name = link.removesuffix(_DELETED)
    if kind == MEMFD and name.startswith(_MEMFD_PREFIX):
        return name[len(_MEMFD_PREFIX):]
    if kind == ANON:
        return "/dev/zero"  # what the kernel names every shmem_zero_setup file
    return name


def settle_plans(plans, vma_shmid: dict[int, int], shmem_idx: list[int] | None = None) -> None:
    """After the file table saw a process's VMAs: a "shmem" VMA whose object
    is not saved (no ``shmid``; the table recorded why) is skipped.
    ``shmem_idx``: the indices of the "shmem" plans, when already known."""
    if shmem_idx is None:
        shmem_idx = [i for i, plan in enumerate(plans) if plan.mode == "shmem"]
    for i in shmem_idx:
        plan = plans[i]
        if not vma_shmid.get(i):
            plan.mode = "skip"
            plan.reason = plan.reason or "shared memory object not saved"


def spool_estimate(vmas) -> int:
    """Bytes of spool the shared memory objects behind ``vmas`` (smaps
    read) will likely take: per object (device, inode), the most any one
    mapping has resident or in swap. Pages only the object holds are not
    seen here; the spool grows for them."""
    best: dict[tuple, int] = {}
    for v in vmas:
        key = (v.dev_major, v.dev_minor, v.inode)
        best[key] = max(best.get(key, 0), v.rss + v.swap)
    return sum(best.values())


class SharedMemory:
    """The shared memory objects of one dump, keyed by (st_dev, st_ino).

    Register objects while the tree is frozen (:meth:`mapping`,
    :meth:`descriptor`), then :meth:`copy` (still frozen), :meth:`write`
    (after the thaw), :meth:`close` (always; closes our descriptors).
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[int, int], ShmemObject] = {}
        self._next_inode_id = 1
        self._segments: dict[int, SysvSegment] | None = None
        self.copy_ns = 0
        self.find_ns = 0

    # --- registering (frozen)

    def _segment(self, shmid: int) -> SysvSegment | None:
        if self._segments is None:
            self._segments = read_sysv_segments()
        return self._segments.get(shmid)

    def _object(self, proc: Process, link_path: str, info: FileInfo) -> ShmemObject:
        key = (info.dev, info.ino)
        obj = self.objects.get(key)
        if obj is not None:
            return obj
        link = info.path
        if link.startswith("/SYSV"):
            kind = SYSV
        elif link.startswith(_MEMFD_PREFIX):
            kind = MEMFD
        else:
            kind = ANON
        fd = _open_object(proc.file_path(link_path), proc.pid)
        try:
            st = os.fstat(fd)
            try:
                seals = kf.get_seals(fd)
            except OSError:
                seals = kf.F_SEAL_SEAL  # criu/memfd.c: what it records when F_GET_SEALS fails
            obj = ShmemObject(dev=st.st_dev, ino=st.st_ino, kind=kind, name=_object_name(link, kind),
                              size=st.st_size, uid=st.st_uid, gid=st.st_gid, mode=st.st_mode, seals=seals, fd=fd)
        except BaseException:
            os.close(fd)
            raise
        if info.fs_type == HUGETLBFS_MAGIC:
            obj.reason = "MAP_HUGETLB shared memory: contents are not saved"
        if kind == SYSV:
            obj.sysv = self._segment(st.st_ino)
            if obj.sysv is None:
                obj.reason = f"SysV segment {st.st_ino} is not in this IPC namespace's /proc/sysvipc/shm"
            else:
                obj.size = obj.sysv.size
            if any(o.kind != SYSV and o.ino == st.st_ino for o in self.objects.values()):
                obj.reason = f"SysV segment id {st.st_ino} equals a memfd's inode number: one pagemap-shmem name"
        else:
            obj.inode_id = self._next_inode_id
            self._next_inode_id += 1
            clash = next((o for o in self.objects.values() if o.kind == SYSV and o.ino == st.st_ino), None)
            if clash is not None:
                clash.reason = f"SysV segment id {clash.ino} equals a memfd's inode number: one pagemap-shmem name"
        self.objects[key] = obj
        return obj

    def mapping(self, proc: Process, start: int, end: int, pgoff: int, info: FileInfo) -> ShmemObject:
        """The object mapped at ``[start, end)`` of frozen ``proc`` (``info``:
        the stat of its /proc/PID/map_files link), registered and the
        mapping recorded. Opens the object on first sight. Errors:
        NoSuchProcess, KernelError."""
        obj = self._object(proc, f"map_files/{start:x}-{end:x}", info)
        obj.mappings.append((proc.pid, start, end, pgoff))
        return obj

    def descriptor(self, proc: Process, fd: int, info: FileInfo) -> ShmemObject:
        """The memfd held by descriptor ``fd`` of frozen ``proc``, registered."""
        return self._object(proc, f"fd/{fd}", info)

    # --- finding and copying (frozen)

    def _mapped_pages(self, obj: ShmemObject, backend: str) -> tuple[np.ndarray, np.ndarray]:
        """Object offsets of the PRESENT or SWAPPED pages of every mapping
        (the ioctl only: it walks populated page tables, the emulation the
        whole length)."""
        from ..scan import Category, ScanMasks, open_backend, scan_range

        parts_s, parts_e = [], []
        by_pid: dict[int, list[tuple[int, int, int]]] = {}
        for pid, start, end, pgoff in obj.mappings:
            by_pid.setdefault(pid, []).append((start, end, pgoff))
        for pid, maps in by_pid.items():
            try:
                be = open_backend(Process(pid), backend)
            except NoSuchProcess:
                continue
            with be:
                if be.name != "ioctl":
                    return iv.EMPTY
                masks = ScanMasks(anyof=Category.PRESENT | Category.SWAPPED,
                                  excluded=Category.GUARD & be.supported, returned=Category(0))
                for start, end, pgoff in maps:
                    r = scan_range(be, start, end, masks).array
                    if len(r):
                        parts_s.append(r["start"] - np.uint64(start) + np.uint64(pgoff))
                        parts_e.append(r["end"] - np.uint64(start) + np.uint64(pgoff))
        if not parts_s:
            return iv.EMPTY
        return iv.union(np.concatenate(parts_s), np.concatenate(parts_e))

    def find(self, backend: str = "auto") -> None:
        """Which pages of each object exist (see the module docstring)."""
        t0 = time.monotonic_ns()
        for obj in self.objects.values():
            if obj.reason:
                continue
            size = -(-obj.size // _PM) * _PM
            found = data_extents(obj.fd, obj.size)
            mapped = self._mapped_pages(obj, backend)
            if len(mapped[0]):
                mapped = iv.intersect(mapped, (np.array([0], np.uint64), np.array([size], np.uint64)))
                found = iv.union(np.concatenate((found[0], mapped[0])), np.concatenate((found[1], mapped[1])))
            obj.data = found
        self.find_ns += time.monotonic_ns() - t0

    def copy(self, spool: Spool, backend: str = "auto") -> None:
        """Find each object's pages and read them into ``spool`` with
        ``pread`` on our descriptor. A page the kernel refuses (EIO: a
        poisoned page) is left out and listed in ``unreadable``."""
        self.find(backend)
        t0 = time.monotonic_ns()
        for obj in self.objects.values():
            if obj.reason:
                continue
            parts: list[Extents] = []
            for s, e in zip(obj.data[0].tolist(), obj.data[1].tolist()):
                self._read_run(obj, spool, s, e, parts)
            obj.extents = Extents.concat(parts)
        self.copy_ns += time.monotonic_ns() - t0

    @staticmethod
    def _read_run(obj: ShmemObject, spool: Spool, start: int, end: int, parts: list) -> None:
        def fail(err: OSError):
            raise KernelError(err.errno, f"reading {obj.what}") from err

        # pages past a truncated object's end are unreadable; a partial last page reads as mapped
        read_into_spool(obj.fd, spool, start, end, parts, fail=fail,
                        unreadable=lambda addr: add_unreadable(obj.unreadable, addr), eof_zeros=True)

    # --- writing (after the thaw)

    @property
    def saved(self) -> list[ShmemObject]:
        """Objects whose contents are saved, in registration order."""
        return [o for o in self.objects.values() if not o.reason and o.extents is not None]

    def write(self, writer, spool: Spool, first_pages_id: int, *, compress: bool, level: int,
              threads: int | None, ipc_ns_id: int) -> tuple[list, int]:
        """Write every object's pagemap and pages (pages ids from
        ``first_pages_id``), ``memfd.img`` and ``ipcns-shm-IPC_NS_ID.img``.
        Returns ``(pages writer stats, next free pages id)``."""
        stats = []
        pages_id = first_pages_id
        for obj in self.saved:
            obj.pages_id = pages_id
            pages_id += 1
            pw = writer.pages_writer(0, obj.pages_id, compress=compress, level=level, threads=threads,
                                     pagemap_name=fmt.pagemap_shmem_name(obj.shmid))
            ext = obj.extents
            order = np.argsort(ext.vaddr, kind="stable")
            for a, n, off in zip(ext.vaddr[order].tolist(), ext.nbytes[order].tolist(), ext.offset[order].tolist()):
                pw.add_present(a, spool.read(off, n), stable=True)
            pw.close()
            stats.append(pw.stats)
        inodes = [self.memfd_inode_entry(o) for o in self.objects.values() if o.kind != SYSV]
        if inodes:
            writer.write_image(fmt.MEMFD_INODE_NAME, "MEMFD_INODE", inodes)
        segs = [self.ipc_shm_entry(o) for o in self.objects.values() if o.kind == SYSV and o.sysv is not None]
        if segs:
            writer.write_image(fmt.ipcns_shm_name(ipc_ns_id), "IPCNS_SHM", segs)
        return stats, pages_id

    @staticmethod
    def memfd_inode_entry(obj: ShmemObject) -> memfd_pb2.memfd_inode_entry:
        """criu/memfd.c dump_memfd_inode."""
        return memfd_pb2.memfd_inode_entry(name=obj.name, uid=obj.uid, gid=obj.gid, size=obj.size,
                                           shmid=obj.shmid, seals=obj.seals, inode_id=obj.inode_id,
                                           mode=obj.mode)

    @staticmethod
    def ipc_shm_entry(obj: ShmemObject) -> ipc_shm_pb2.ipc_shm_entry:
        """criu/ipc_ns.c dump_ipc_shm_seg (contents in pagemap-shmem-SHMID)."""
        seg = obj.sysv
        desc = ipc_desc_pb2.ipc_desc_entry(key=seg.key, uid=seg.uid, gid=seg.gid, cuid=seg.cuid, cgid=seg.cgid,
                                           mode=seg.mode, id=seg.shmid)
        return ipc_shm_pb2.ipc_shm_entry(desc=desc, size=seg.size, in_pagemaps=True)

    @property
    def unrestorable(self) -> list[tuple[int, str, str, str]]:
        """``(pid, kind, what, why)`` for objects CRIU 4.2 cannot restore as
        they are: a memfd sealed against writes that the tree maps shared
        (criu/memfd.c maps it first, then F_ADD_SEALS fails with EBUSY: a
        MAP_SHARED mapping of a descriptor opened for writing counts as
        writable; its own dumps of such a tree fail the same way)."""
        out = []
        for obj in self.objects.values():
            if obj.kind == MEMFD and obj.seals & kf.F_SEAL_WRITE and obj.mappings:
                pid, start, end, _ = obj.mappings[0]
                out.append((pid, "shared memory", f"mapping {start:#x}-{end:#x}",
                            f"{obj.what} is sealed against writes (F_SEAL_WRITE) and mapped shared: `criu restore` "
                            "maps it before sealing it again and then fails (EBUSY)"))
        return out

    # --- figures

    @property
    def pages_found(self) -> int:
        return sum(int(iv.total(*o.data)) // _PM for o in self.objects.values())

    @property
    def pages_copied(self) -> int:
        return sum(o.extents.total // _PM for o in self.saved)

    @property
    def pages_unreadable(self) -> int:
        return sum(n for o in self.objects.values() for _, n in o.unreadable)

    @property
    def size_pages(self) -> int:
        """Pages of every object's size: CRIU's shpages_scanned."""
        return sum(-(-o.size // _PM) for o in self.objects.values() if not o.reason)

    def close(self) -> None:
        for obj in self.objects.values():
            if obj.fd >= 0:
                os.close(obj.fd)
                obj.fd = -1

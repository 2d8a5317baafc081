"""Export a checkpoint as a CRIU 4.x image directory (memory only).

:func:`export_criu` turns a dumper checkpoint (or a CRIU image set, read
through :mod:`dumper.image.checkpoint`) into files CRIU's tools read:

==================  =========================================================
``inventory.img``   ``inventory_entry``: img_version 2, fdinfo_per_id true
``pstree.img``      one ``pstree_entry`` per process, root first
``files.img``       one REG ``file_entry`` per mapped file and executable
                    (``crit x mems``/``rss`` look file VMAs up there)
``mm-PID.img``      ``mm_entry`` with its ``vma_entry`` list, CRIU's status bits
``pagemap-PID.img`` ``pagemap_head`` + ``pagemap_entry`` (fields 2 and 5 set)
``pages-N.img``     the PE_PRESENT pages, raw, in entry order
==================  =========================================================

Every message holds CRIU's fields only (numbers below 32); dumper's own
additions (inventory versions, VMA paths, pagemap ``pages_off``...) are
left out, so ``crit decode`` shows exactly what CRIU would have written.
The set holds **memory only**: no ``core-PID.img`` (registers, signals),
no ``ids``/``fdinfo``/``fs`` images, no namespaces. CRIU cannot restore
from it; ``crit decode``, ``crit show``, ``crit x DIR mems`` and
``crit x DIR rss`` read it.

Chains: by default PE_PARENT pages are resolved through the source's
``parent`` chain and written as PE_PRESENT, so the set stands alone. With
``keep_chain`` every checkpoint of the chain is exported as its own set,
PE_PARENT entries kept, the parent set written in a directory named
``parent`` inside its child (CRIU opens ``parent`` with ``openat``, a
directory serves as well as its usual symlink, and the chain moves as one
tree): ``OUT``, ``OUT/parent``, ``OUT/parent/parent``...

VMAs are listed as CRIU 4.2 lists them: the pieces of ``[vvar]`` merged
into one VMA, ``[vvar]``/``[vsyscall]`` marked anonymous private. File VMAs
and the executable name their ``files.img`` entry in ``shmid`` and
``exe_file_id``; shared memory has its inode as ``shmid``.

Facts a dumper checkpoint does not record are written as CRIU's "unknown":
``pgid``/``sid`` 0 and ``threads`` = the pid alone (unless the source has
a ``pstree.img``), ``mm_entry`` fields it lacks 0; the saved auxv stops
before its AT_NULL pair, as CRIU stores it. The executable's file is
the file mapping that holds ``mm_start_code`` when the image does not name it.

The output is written like a checkpoint, through
:class:`~dumper.image.safefs.OutputDir` (mode 0700, files 0600: process
memory holds secrets; created through directory descriptors; fsynced, then
renamed into place), so a failed export leaves nothing that looks like an
image set, what a killed one leaves is removed by the next run into the
same place, and ``out`` follows the rules every checkpoint writer follows:
an empty directory is filled, an image set is replaced only with ``force``,
anything else -- a regular file, a symlink, a non-empty directory, a place
inside a checkpoint of the chain being exported -- is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from google.protobuf.message import Message

from ..errors import DumpError, ImageError
from ..image import format as fmt
from ..image.checkpoint import PSTREE_NAME, Checkpoint, CheckpointProcess, open_checkpoint
from ..image.pb import fdinfo_pb2, fown_pb2, inventory_pb2, mm_pb2, pagemap_pb2, pstree_pb2, regfile_pb2
from ..image.safefs import Dir, OutputDir
from ..image.vmas import as_criu_lists_them

__all__ = [
    "ExportError",
    "ExportedSet",
    "ExportResult",
    "export_criu",
    "criu_fields_only",
    "FILES_NAME",
    "PSTREE_NAME",
    "FIRST_OWN_FIELD",
]

FILES_NAME = fmt.FILES_NAME
# dumper's additions to CRIU's messages start at this field number.
FIRST_OWN_FIELD = 32

_U32_LIMIT = 1 << 32
_O_RDWR = 0o2
_PROT_WRITE = 0x2
_MAP_ANONYMOUS = fmt.FLAG_TABLES["mmap.flags"]["MAP_ANONYMOUS"]
_FILE_VMA = fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED
_SHMEM_VMA = fmt.VMA_ANON_SHARED | fmt.VMA_AREA_SYSVIPC
# Pages copied per read/write when streaming a pages file.
_CHUNK_PAGES = 256
# CRIU's own files images, copied as they are when exporting a CRIU set.
_CRIU_FILE_IMAGES = ("files.img", "reg-files.img")


class ExportError(DumpError):
    """An export could not be completed (destination exists, I/O error, a
    source page the format cannot express)."""

    __module__ = "dumper"


@dataclass(slots=True)
class ExportedSet:
    """One CRIU image directory written by an export.

    ``path`` is its final location; ``pids`` root first; per pid
    ``pages_present`` (pages in ``pages-N.img``) and ``pages_parent``
    (PE_PARENT pages, only with ``keep_chain``); ``files`` the names written;
    ``bytes`` their total size.
    """

    path: Path
    source: Path
    pids: tuple[int, ...]
    pages_present: dict[int, int] = field(default_factory=dict)
    pages_parent: dict[int, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    bytes: int = 0


@dataclass(slots=True)
class ExportResult:
    """What :func:`export_criu` wrote: ``sets`` top first (one unless
    ``keep_chain``), ``bytes`` in all files, ``notes`` for the reader."""

    out: Path
    source: Path
    keep_chain: bool
    sets: list[ExportedSet]
    bytes: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "out": str(self.out),
            "source": str(self.source),
            "keep_chain": self.keep_chain,
            "bytes": self.bytes,
            "notes": list(self.notes),
            "sets": [
                {
                    "path": str(s.path),
                    "source": str(s.source),
                    "pids": list(s.pids),
                    "pages_present": {str(k): v for k, v in s.pages_present.items()},
                    "pages_parent": {str(k): v for k, v in s.pages_parent.items()},
                    "files": list(s.files),
                    "bytes": s.bytes,
                }
                for s in self.sets
            ],
        }


def criu_fields_only(msg: Message) -> Message:
    """A new message of ``msg``'s type holding only CRIU's fields (numbers
    below :data:`FIRST_OWN_FIELD`), nested messages filtered the same way.
    Unknown fields are dropped."""
    out = type(msg)()
    for fd, value in msg.ListFields():
        if fd.number >= FIRST_OWN_FIELD:
            continue
        if fd.type == fd.TYPE_MESSAGE:
            if fd.is_repeated:
                getattr(out, fd.name).extend(criu_fields_only(v) for v in value)
            else:
                getattr(out, fd.name).CopyFrom(criu_fields_only(value))
        elif fd.is_repeated:
            getattr(out, fd.name).extend(value)
        else:
            setattr(out, fd.name, value)
    return out


# --- files


class _SetWriter:
    """Files of one image directory (a :class:`~dumper.image.safefs.Dir`);
    every file fsynced when closed."""

    def __init__(self, directory: Dir, final: Path, source: Path, pids: tuple[int, ...]) -> None:
        self.dir = directory
        self.result = ExportedSet(path=final, source=source, pids=pids)

    def create(self, name: str) -> BinaryIO:
        f = self.dir.create(name)
        self.result.files.append(name)
        return f

    def finish(self, f: BinaryIO) -> None:
        try:
            f.flush()
            self.result.bytes += f.tell()
            f.sync_close()
        except OSError as err:
            f.discard()
            raise ExportError(f"writing {f.display_name}: {err.strerror}") from err

    def image(self, name: str, magic: str, msgs: list[Message]) -> None:
        f = self.create(name)
        try:
            fmt.write_magic(f, magic)
            fmt.write_entries(f, msgs)
        except OSError as err:
            f.discard()
            raise ExportError(f"writing {self.result.path / name}: {err.strerror}") from err
        self.finish(f)

    def copy(self, src: Path, name: str) -> None:
        """Copy the source's ``name``: a regular file, never through a symlink."""
        f = self.create(name)
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as g:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ExportError(f"{src}: not a regular file")
                shutil.copyfileobj(g, f, 1 << 20)
        except OSError as err:
            f.discard()
            raise ExportError(f"copying {src} to {self.result.path / name}: {err.strerror}") from err
        except BaseException:
            f.discard()
            raise
        self.finish(f)


# --- per-process content


class _FileIds:
    """Ids for ``files.img``: one per distinct mapped file, from 1."""

    def __init__(self) -> None:
        self.ids: dict[tuple, int] = {}
        self.entries: list[Message] = []

    def get(self, name: str, key: tuple, flags: int) -> int:
        if key in self.ids:
            return self.ids[key]
        fid = len(self.entries) + 1
        self.ids[key] = fid
        reg = regfile_pb2.reg_file_entry(
            id=fid, flags=flags, pos=0, name=name,
            fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0),
        )
        self.entries.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=fid, reg=reg))
        return fid


def _file_key(v) -> tuple[str, tuple]:
    """(name for reg_file_entry, identity) of a file VMA of a dumper image.
    An empty name is what crit prints as "unknown path"."""
    path = v.path if v.HasField("path") else ""
    if path.endswith(" (deleted)"):
        path = path[: -len(" (deleted)")]
    if not path.startswith("/"):
        path = ""
    if v.HasField("inode") and (v.inode or path):
        return path, (path, v.dev_major, v.dev_minor, v.inode)
    return path, (path, "vma", v.start)  # nothing to share the id on


def _exe_vma(mm: mm_pb2.mm_entry):
    """The file VMA that holds the start of the code: the executable."""
    code = mm.mm_start_code
    for v in mm.vmas:
        if v.status & _FILE_VMA and v.start <= code < v.end:
            return v
    return None


def _mm_for(proc: CheckpointProcess, files: _FileIds | None) -> mm_pb2.mm_entry:
    """``proc``'s mm_entry with CRIU's fields only. With ``files`` (a dumper
    source) file VMAs and the executable get ``files.img`` ids in
    ``shmid``/``exe_file_id``, and shared memory its inode as ``shmid``
    (CRIU's shmem id); a CRIU source keeps its ids."""
    src = proc.mm.to_message()  # the whole mm_entry (readers hold VMAs compactly)
    mm = criu_fields_only(src)
    for f in mm.DESCRIPTOR.fields:  # CRIU's required fields, 0 when unknown
        if f.is_required and not mm.HasField(f.name):
            setattr(mm, f.name, 0)
    if files is None:
        return mm
    auxv = list(mm.mm_saved_auxv)
    for i in range(0, len(auxv) - 1, 2):
        if auxv[i] == 0:  # AT_NULL ends the vector; CRIU stores what precedes it
            del mm.mm_saved_auxv[i:]
            break
    exe = _exe_vma(src)
    if src.HasField("exe_path") and src.exe_path:
        name = src.exe_path.removesuffix(" (deleted)")
        key = next((_file_key(v)[1] for v in src.vmas if v.status & _FILE_VMA and v.path == src.exe_path), None)
        mm.exe_file_id = files.get(name, key or (name, "exe"), 0)
    elif exe is not None:
        name, key = _file_key(exe)
        mm.exe_file_id = files.get(name, key, 0)
    else:
        mm.exe_file_id = files.get("", ("", "exe", proc.pid), 0)
    for v, out in zip(src.vmas, mm.vmas):
        if v.status & _FILE_VMA:
            name, key = _file_key(v)
            writable_shared = v.status & fmt.VMA_FILE_SHARED and v.prot & _PROT_WRITE
            out.shmid = files.get(name, key, _O_RDWR if writable_shared else 0)
        elif v.status & _SHMEM_VMA and not v.shmid and v.HasField("inode") and v.inode:
            out.shmid = v.inode
    as_criu_lists_them(mm)
    return mm


def _pagemap_entry(vaddr: int, nr: int, flags: int) -> pagemap_pb2.pagemap_entry:
    # Field 2 for CRIU < 4.2 (0 when it does not fit, as CRIU 4.2 does),
    # field 5 for 4.2 and later.
    return pagemap_pb2.pagemap_entry(
        vaddr=vaddr, compat_nr_pages=nr if nr < _U32_LIMIT else 0, flags=flags, nr_pages=nr
    )


def _flat_runs(ck: Checkpoint, pid: int) -> Iterator[tuple[int, bytes]]:
    """Every recorded page of ``pid``, PE_PARENT resolved, ascending."""
    proc = ck.process(pid)
    for e in proc.entries:
        if not e.flags & (fmt.PE_PRESENT | fmt.PE_PARENT):
            raise ExportError(
                f"{proc.pagemap_path}: pages [{e.vaddr:#x}, {e.end(proc.page_size):#x}) are "
                f"{fmt.format_flags(e.flags, 'pmap.flags')} only: their data is in no image"
            )
    # (holes of a sparse raw pages file in anonymous memory are left out: zeros anyway)
    yield from ck.iter_copy(pid, max_pages=_CHUNK_PAGES, parents=True)


def _own_runs(ck: Checkpoint, proc: CheckpointProcess) -> Iterator[tuple[int, int, int, bytes | None]]:
    """``(vaddr, nr_pages, flags, data)`` of ``proc``'s own entries, data for
    PE_PRESENT pieces only (entries cut into chunks, holes of a sparse raw
    pages file in anonymous memory left out)."""
    ps = proc.page_size
    present = ck.iter_copy(proc.pid, max_pages=_CHUNK_PAGES, parents=False)
    nxt = next(present, None)
    for e in proc.entries:
        if e.flags & fmt.PE_PRESENT:
            end = e.end(ps)
            while nxt is not None and nxt[0] < end:
                yield nxt[0], len(nxt[1]) // ps, e.flags, nxt[1]
                nxt = next(present, None)
        else:
            yield e.vaddr, e.nr_pages, e.flags, None


def _write_pages(w: _SetWriter, ck: Checkpoint, pid: int, pages_id: int, flatten: bool) -> None:
    proc = ck.process(pid)
    ps = proc.page_size
    entries: list[list[int]] = []  # [vaddr, nr, flags], merged when contiguous with equal flags
    present = parent = 0
    f = w.create(fmt.pages_name(pages_id))
    try:
        if flatten:
            runs = ((vaddr, len(data) // ps, fmt.PE_PRESENT, data) for vaddr, data in _flat_runs(ck, pid))
        else:
            runs = _own_runs(ck, proc)
        for vaddr, nr, flags, data in runs:
            if data is not None:
                f.write(data)
                present += nr
            elif flags & fmt.PE_PARENT:
                parent += nr
            last = entries[-1] if entries else None
            if last is not None and last[2] == flags and last[0] + last[1] * ps == vaddr:
                last[1] += nr
            else:
                entries.append([vaddr, nr, flags])
    except OSError as err:
        f.discard()
        raise ExportError(f"writing {w.result.path / fmt.pages_name(pages_id)}: {err.strerror}") from err
    except BaseException:
        f.discard()
        raise
    w.finish(f)
    msgs: list[Message] = [pagemap_pb2.pagemap_head(pages_id=pages_id)]
    msgs.extend(_pagemap_entry(v, n, fl) for v, n, fl in entries)
    w.image(fmt.pagemap_name(pid), "PAGEMAP", msgs)
    w.result.pages_present[pid] = present
    if parent:
        w.result.pages_parent[pid] = parent


def _pstree(ck: Checkpoint) -> list[Message]:
    tree = ck.pstree  # read with the checkpoint (through its directory, compactly)
    out = []
    for pid in ck.pids:
        row = tree.find(pid) if tree is not None else -1
        e = tree[row] if row >= 0 else None
        if e is not None:
            out.append(pstree_pb2.pstree_entry(pid=pid, ppid=e.ppid, pgid=e.pgid, sid=e.sid,
                                               threads=list(e.threads) or [pid]))
        else:
            ppid = 0 if pid == ck.root_pid else ck.root_pid
            out.append(pstree_pb2.pstree_entry(pid=pid, ppid=ppid, pgid=0, sid=0, threads=[pid]))
    return out


def _write_set(ck: Checkpoint, directory: Dir, final: Path, flatten: bool) -> ExportedSet:
    w = _SetWriter(directory, final, ck.path, tuple(ck.pids))
    inv = inventory_pb2.inventory_entry(img_version=fmt.CRTOOLS_IMAGES_V1_1, fdinfo_per_id=True)
    w.image(fmt.INVENTORY_NAME, "INVENTORY", [inv])
    w.image(PSTREE_NAME, "PSTREE", _pstree(ck))
    files = None if ck.is_criu else _FileIds()
    mms = {pid: _mm_for(ck.processes[pid], files) for pid in ck.pids if ck.processes[pid].mm is not None}
    if files is not None:
        w.image(FILES_NAME, "FILES", files.entries)
    else:
        for name in _CRIU_FILE_IMAGES:
            if (ck.path / name).is_file():
                w.copy(ck.path / name, name)
    for pages_id, pid in enumerate(ck.pids, 1):
        if pid in mms:
            w.image(fmt.mm_name(pid), "MM", [mms[pid]])
        _write_pages(w, ck, pid, pages_id, flatten)
    return w.result


# --- destination


def export_criu(
    src: str | os.PathLike | Checkpoint,
    out: str | os.PathLike,
    *,
    keep_chain: bool = False,
    force: bool = False,
) -> ExportResult:
    """Write checkpoint ``src`` (a directory or an open
    :class:`~dumper.image.checkpoint.Checkpoint`) as CRIU image set ``out``.

    ``keep_chain``: export the whole parent chain as nested sets
    (``out/parent``...) keeping PE_PARENT entries; default: one set, the
    chain's pages resolved into it. ``out`` follows
    :class:`~dumper.image.safefs.OutputDir`'s rules: absent or an empty
    directory is fine; an image set (holds ``inventory.img``) is replaced
    only with ``force``; anything else, or a place inside a checkpoint of
    the chain, is refused.

    Raises ExportError (``out`` exists, I/O failure, lazy pages whose data
    no image holds) and ImageError for a damaged source.
    """
    own = not isinstance(src, Checkpoint)
    ck = open_checkpoint(src) if own else src
    try:
        chain = list(ck.chain())
        with OutputDir(out, force=force, sources=[c.path for c in chain], error=ExportError,
                       what="image set") as output:
            dest = output.dest
            sets = []
            d = output.dir
            for depth, c in enumerate(chain if keep_chain else [ck]):
                if depth:
                    d = d.mkdir(fmt.PARENT_LINK)
                final = dest.joinpath(*([fmt.PARENT_LINK] * depth))
                sets.append(_write_set(c, d, final, flatten=not keep_chain))
            output.commit()
    except OSError as err:
        raise ExportError(f"exporting to {out}: {err.strerror}") from err
    finally:
        if own:
            ck.close()
    notes = ["memory only: CRIU cannot restore from this image set (no core, ids, fdinfo or namespace images)"]
    if keep_chain and len(sets) > 1:
        notes.append(f"{len(sets) - 1} parent set(s) nested as {dest.name}/{fmt.PARENT_LINK}/...")
    return ExportResult(out=dest, source=sets[0].source, keep_chain=keep_chain, sets=sets,
                        bytes=sum(s.bytes for s in sets), notes=notes)

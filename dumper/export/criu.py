"""Export a checkpoint as a CRIU 4.2 image directory.

:func:`export_criu` turns a dumper checkpoint (or a CRIU image set) into a
directory of CRIU's own images, holding CRIU's fields only (numbers below
32; dumper's additions are left out), so ``crit decode`` shows what CRIU
would have written. What the set holds depends on the source:

**complete** -- the source holds process state (``pstree.img``,
``core-TID.img`` per thread... what ``dumper dump`` and ``criu dump`` write;
not a pre-dump). Plain ``criu restore -D OUT`` brings the process tree back,
and ``crit x OUT ps|fds|mems|rss`` read it. Every CRIU image of the source
is copied entry by entry with CRIU's fields only
(:func:`~dumper.image.criuset.copy_image`; the raw bytes after entries of
``pipes-data.img``, ``fifo-data.img``, ghost files... copied with them), and
nothing is synthesised: ids (``files.img``, ``mm_entry.exe_file_id``, VMA
``shmid``), the inventory's CRIU fields, ``pstree.img`` with every thread
and zombie are the source's. Every pagemap (``pagemap-PID.img``,
``pagemap-shmem-ID.img``) is written with its pages in CRIU's raw layout
(:mod:`dumper.image.rawpages`; pages a forked tree shares copy-on-write,
stored once by dumper, go into each process's own ``pages-N.img`` as
PE_PRESENT, as CRIU stores them). dumper's own image types
(``pages-N.zst.img``, ``cow-PID.img``) and files that are not images are
left out and listed in the result.

A source marked not restorable (``inventory_entry.unrestorable``: a socket,
an inotify descriptor, a child outside the checkpoint... that the dump did
not save) is refused with its reasons: its images lack what ``criu
restore`` needs, and that mark is dumper's own field, which the set cannot
carry. ``force_unrestorable`` exports it anyway; the result's
``unrestorable`` and notes keep the reasons. A source whose process state
lacks images CRIU needs (``core-TID``, ``ids``, ``fs``, ``mm``) is refused.

**memory** -- the source holds memory only (a dumper checkpoint from before
process state was saved, a pre-dump, CRIU's pre-dumps). The set holds
``inventory.img``, ``pstree.img``, ``files.img``, ``mm-PID.img``, pagemaps
and raw pages, and the shared memory objects' ``memfd.img`` and
``ipcns-shm-ID.img``; ``crit`` reads it, CRIU cannot restore from it. Where the
source has no ``files.img`` (old dumper checkpoints), one REG entry per
mapped file and executable is made up for ``crit x mems``, and the mm's ids
point to it; ``pstree.img`` without one: pgid/sid 0, threads the pid alone.

Chains: by default PE_PARENT pages are resolved through the source's
``parent`` chain and written as PE_PRESENT, so the set stands alone. With
``keep_chain`` each checkpoint of the chain becomes its own set, PE_PARENT
entries kept, the parent set written as a memory set (CRIU reads only pages
from a parent, as from its own pre-dumps) in a directory named ``parent``
inside its child: ``OUT``, ``OUT/parent``, ``OUT/parent/parent``...

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

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from google.protobuf.message import Message

from ..errors import BadMagic, CorruptImage, DumpError, ImageError
from ..image import format as fmt
from ..text import plural
from ..image.checkpoint import PSTREE_NAME, Checkpoint, CheckpointProcess, open_checkpoint
from ..image.criuset import (
    FIRST_OWN_FIELD,
    copy_image,
    criu_fields_only,
    has_process_state,
    image_type,
    is_dumper_image,
    missing_images,
    process_tree,
    shell_job_needed,
    unrestorable_lines,
)
from ..image.pb import fdinfo_pb2, fown_pb2, mm_pb2, pstree_pb2, regfile_pb2
from ..image.rawpages import PagemapPlan, copy_pagemap, pagemap_names, pages_id_of, write_pagemap
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
    "COMPLETE",
    "MEMORY",
]

FILES_NAME = fmt.FILES_NAME
COMPLETE = "complete"  # ExportedSet.kind: criu restore brings the tree back
MEMORY = "memory"  # memory images only: crit reads it, criu restore cannot

_O_RDWR = 0o2
_PROT_WRITE = 0x2
_FILE_VMA = fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED
_SHMEM_VMA = fmt.VMA_ANON_SHARED | fmt.VMA_AREA_SYSVIPC
# CRIU's own files images, copied when a memory set's source has one.
_CRIU_FILE_IMAGES = (FILES_NAME, fmt.REG_FILES_NAME)
# What the shared memory objects are (their pagemaps are written with the others).
_SHARED_IMAGES_RE = re.compile(r"^(memfd\.img|ipcns-shm-\d+\.img)$")
# Names of pages files (raw or ours): written from their pagemaps, if any names them.
_PAGES_RE = re.compile(r"^pages-\d+(\.zst)?\.img$")
_MAX_SHOWN = 20
# Images criu restore reads by these names: one that is a symlink, FIFO...
# makes the set damaged (as show, verify and restore say), not a file to leave out.
_RESTORE_READS_RE = re.compile(
    r"^(inventory|pstree|files|reg-files|seccomp|pipes-data|fifo-data|tty-info|remap-fpath|memfd)\.img$"
    r"|^(core|ids|fs|mm|pagemap|fdinfo|timens|ghost-file|pagemap-shmem|ipcns-shm|tty|pipes|fifo)-[0-9a-f]+\.img$")


class ExportError(DumpError):
    """An export could not be completed (destination exists, I/O error, a
    source CRIU could not restore). ``details``: further lines for the user
    (reasons, missing images), shown before the one-line message."""

    __module__ = "dumper"
    details: tuple[str, ...] = ()


def _refuse(msg: str, details: list[str]) -> ExportError:
    err = ExportError(msg)
    err.details = tuple(details)
    return err


@dataclass(slots=True)
class ExportedSet:
    """One CRIU image directory written by an export.

    ``path`` is its final location; ``kind`` :data:`COMPLETE` or
    :data:`MEMORY`; ``pids`` root first (processes with memory); per pid
    ``pages_present`` (pages in its ``pages-N.img``) and ``pages_parent``
    (PE_PARENT pages, only with ``keep_chain``); ``shared_pages`` the same
    for other pagemaps (``pagemap-shmem-ID.img``: name -> pages);
    ``files`` the names written; ``left_out`` source files not exported,
    name -> why; ``zero_pages_left_out`` pages of zeros a sparse raw pages
    file held as holes in anonymous memory, left out of the pagemaps (they
    read as zeros without an entry too); ``bytes`` the total size written.
    """

    path: Path
    source: Path
    pids: tuple[int, ...]
    kind: str = MEMORY
    pages_present: dict[int, int] = field(default_factory=dict)
    pages_parent: dict[int, int] = field(default_factory=dict)
    shared_pages: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    zero_pages_left_out: int = 0
    bytes: int = 0

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "source": str(self.source),
            "kind": self.kind,
            "pids": list(self.pids),
            "pages_present": {str(k): v for k, v in self.pages_present.items()},
            "pages_parent": {str(k): v for k, v in self.pages_parent.items()},
            "shared_pages": dict(self.shared_pages),
            "files": list(self.files),
            "left_out": dict(self.left_out),
            "zero_pages_left_out": self.zero_pages_left_out,
            "bytes": self.bytes,
        }


@dataclass(slots=True)
class ExportResult:
    """What :func:`export_criu` wrote: ``sets`` top first (one unless
    ``keep_chain``), ``bytes`` in all files, ``notes`` for the reader.

    ``complete``: the top set is complete (``criu restore -D out`` restores
    it; ``restore_command`` says how, with ``--shell-job`` when the tree's
    session or terminal lies outside it, ``shell_job``); ``terminal``: it
    saved a terminal (``--shell-job`` then needs one on criu's stdin);
    ``unrestorable``: the reasons of a source marked not restorable,
    exported with ``force_unrestorable``.
    """

    out: Path
    source: Path
    keep_chain: bool
    sets: list[ExportedSet]
    bytes: int
    complete: bool = False
    shell_job: bool = False
    terminal: bool = False
    unrestorable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def restore_command(self) -> str | None:
        if not self.complete:
            return None
        return f"criu restore -D {self.out}" + (" --shell-job" if self.shell_job else "")

    def to_json(self) -> dict:
        return {
            "out": str(self.out),
            "source": str(self.source),
            "keep_chain": self.keep_chain,
            "complete": self.complete,
            "restore_command": self.restore_command,
            "shell_job": self.shell_job,
            "terminal": self.terminal,
            "unrestorable": list(self.unrestorable),
            "bytes": self.bytes,
            "notes": list(self.notes),
            "sets": [s.to_json() for s in self.sets],
        }


# --- files


class _SetWriter:
    """Files of one image directory (a :class:`~dumper.image.safefs.Dir`);
    every file fsynced when closed."""

    def __init__(self, directory: Dir, final: Path, level: Checkpoint, kind: str) -> None:
        self.dir = directory
        self.level = level
        self.result = ExportedSet(path=final, source=level.path, pids=tuple(level.pids), kind=kind)

    @contextlib.contextmanager
    def file(self, name: str) -> Iterator[BinaryIO]:
        """A new file ``name``, kept (fsynced) when the block ends, dropped
        if it raises. OSError becomes ExportError naming the file."""
        f = self.dir.create(name)
        self.result.files.append(name)
        try:
            yield f
            f.flush()
            self.result.bytes += f.tell()
            f.sync_close()
        except OSError as err:
            f.discard()
            raise ExportError(f"writing {self.result.path / name}: {err.strerror}") from err
        except BaseException:
            f.discard()
            raise

    def image(self, name: str, magic: str, msgs: list[Message]) -> None:
        with self.file(name) as f:
            fmt.write_magic(f, magic)
            fmt.write_entries(f, msgs)

    def pagemap(self, name: str, *, flatten: bool, threads: int | None) -> PagemapPlan:
        """Pagemap ``name`` of the level and its raw pages file, CRIU's layout."""
        pages_id = pages_id_of(self.level, name)
        with self.file(fmt.pages_name(pages_id)) as f:
            plan = copy_pagemap(self.level, name, f, flatten=flatten, threads=threads)
        with self.file(name) as f:
            write_pagemap(plan, f)
        self.result.zero_pages_left_out += sum(b - a for a, b in plan.left_out) // plan.page_size
        m = re.fullmatch(r"pagemap-(\d+)\.img", name)
        if m and int(m.group(1)) in self.level.processes:
            pid = int(m.group(1))
            self.result.pages_present[pid] = plan.present
            if plan.parent:
                self.result.pages_parent[pid] = plan.parent
        else:
            self.result.shared_pages[name] = plan.present
        return plan

    def pagemaps(self, *, flatten: bool, threads: int | None) -> set[str]:
        """Every pagemap of the level with its pages; returns the source
        names they stand for (pagemaps and pages files)."""
        done = set()
        for name in pagemap_names(self.level):
            plan = self.pagemap(name, flatten=flatten, threads=threads)
            done |= {name, plan.stream.name}
        return done


# --- complete sets


def _copy_entry(w: _SetWriter, name: str) -> None:
    """Copy file ``name`` of the level if it is one of CRIU's images (CRIU's
    fields only); else record why it is left out."""
    level = w.level
    path = level.path / name
    try:
        f = level.open_image(name)
    except ImageError:
        if _RESTORE_READS_RE.match(name):
            raise  # "is a symbolic link: image files must be regular files..." as every reader says
        w.result.left_out[name] = "not a regular file"
        return
    with f:
        try:
            magic = image_type(f, path)
        except (BadMagic, CorruptImage):
            if _PAGES_RE.match(name):
                w.result.left_out[name] = "a pages file no pagemap names"
            elif name.endswith(".img"):  # CRIU's raw images: ifaddr-N, tmpfs-dev-N.tar.gz...
                f.seek(0)
                with w.file(name) as out:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
            else:
                w.result.left_out[name] = "not an image"
            return
        if magic == "COW_REFS":
            w.result.left_out[name] = ("dumper's own COW_REFS image: the pages shared copy-on-write it places are "
                                       "in each process's own pages file")
        elif is_dumper_image(magic):
            w.result.left_out[name] = f"dumper's own {magic} image, which CRIU does not read"
        elif magic == "PAGEMAP":
            w.result.left_out[name] = "a pagemap named after no process or object"
        else:
            with w.file(name) as out:
                copy_image(f, path, magic, out)


def _write_complete(level: Checkpoint, d: Dir, final: Path, *, flatten: bool, threads: int | None) -> ExportedSet:
    w = _SetWriter(d, final, level, COMPLETE)
    done = w.pagemaps(flatten=flatten, threads=threads)
    for name in level.listdir():
        if name in done or name == fmt.PARENT_LINK:
            continue
        _copy_entry(w, name)
    return w.result


def _check_complete(ck: Checkpoint, force_unrestorable: bool) -> tuple[list[str], bool]:
    """``(unrestorable reasons, shell job needed)`` of a source with process
    state; ExportError if it is marked not restorable (unless
    ``force_unrestorable``) or lacks images criu restore needs."""
    reasons = unrestorable_lines(ck)
    if reasons and not force_unrestorable:
        raise _refuse(
            f"{ck.path} is marked not restorable: the dump did not save {plural(len(reasons), 'resource')} criu restore "
            "would need (listed above), and the mark is dumper's own, which an image set of CRIU's fields cannot "
            "carry; --force-unrestorable exports it anyway",
            reasons,
        )
    tree = process_tree(ck)
    if not tree:
        raise ExportError(f"{ck.path / PSTREE_NAME} lists no process")
    missing = missing_images(ck, tree)
    if missing:
        more = f" and {len(missing) - _MAX_SHOWN} more" if len(missing) > _MAX_SHOWN else ""
        raise ExportError(f"{ck.path} lacks images criu restore needs: {', '.join(missing[:_MAX_SHOWN])}{more}")
    return reasons, shell_job_needed(ck, tree)


# --- memory sets


class _FileIds:
    """Ids for a made-up ``files.img``: one per distinct mapped file, from 1."""

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
    """``proc``'s mm_entry with CRIU's fields only. With ``files`` (a source
    without a files image) file VMAs and the executable get made-up
    ``files.img`` ids in ``shmid``/``exe_file_id``, and shared memory its
    inode as ``shmid`` (CRIU's shmem id); otherwise the source's ids stay."""
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


def _write_memory(level: Checkpoint, d: Dir, final: Path, *, flatten: bool, threads: int | None) -> ExportedSet:
    w = _SetWriter(d, final, level, MEMORY)
    inv = criu_fields_only(level.inventory)
    inv.img_version = fmt.CRTOOLS_IMAGES_V1_1
    w.image(fmt.INVENTORY_NAME, "INVENTORY", [inv])
    w.image(PSTREE_NAME, "PSTREE", _pstree(level))
    names = set(level.listdir())
    own = [n for n in _CRIU_FILE_IMAGES if n in names]
    files = None if own else _FileIds()
    mms = {pid: _mm_for(p, files) for pid, p in level.processes.items() if p.mm is not None}
    if files is not None:
        w.image(FILES_NAME, "FILES", files.entries)
    for name in own + sorted(n for n in names if _SHARED_IMAGES_RE.match(n)):
        _copy_entry(w, name)
    for pid in level.pids:
        if pid in mms:
            w.image(fmt.mm_name(pid), "MM", [mms[pid]])
    w.pagemaps(flatten=flatten, threads=threads)
    return w.result


# --- the export


def export_criu(
    src: str | os.PathLike | Checkpoint,
    out: str | os.PathLike,
    *,
    keep_chain: bool = False,
    force: bool = False,
    force_unrestorable: bool = False,
    threads: int | None = None,
) -> ExportResult:
    """Write checkpoint ``src`` (a directory or an open
    :class:`~dumper.image.checkpoint.Checkpoint`) as CRIU image set ``out``:
    complete when the source holds process state, else memory images only
    (see the module docstring; ``result.complete`` says which).

    ``keep_chain``: export the whole parent chain as nested sets
    (``out/parent``...) keeping PE_PARENT entries; default: one set, the
    chain's pages resolved into it. ``force``: replace an image set at
    ``out`` (:class:`~dumper.image.safefs.OutputDir`'s rules: absent or an
    empty directory is fine; anything else, or a place inside a checkpoint
    of the chain, is refused). ``force_unrestorable``: export a source
    marked not restorable. ``threads``: page readers (decompression) working
    ahead, default up to 4.

    Raises ExportError (marked not restorable, images criu restore needs
    missing, ``out`` exists, I/O failure; ``details`` lists reasons) and
    ImageError for a damaged source or chain (lazy pages whose data no
    image holds, a PE_PARENT range the chain lacks).
    """
    own = not isinstance(src, Checkpoint)
    ck = open_checkpoint(src) if own else src
    try:
        complete = has_process_state(ck)
        reasons, shell_job = _check_complete(ck, force_unrestorable) if complete else ([], False)
        terminal = complete and (ck.path / fmt.TTY_INFO_NAME).is_file()
        levels = list(ck.chain()) if keep_chain else [ck]
        sources = [c.path for c in levels] if keep_chain else [ck.path, *ck.parent_paths]
        with OutputDir(out, force=force, sources=sources, error=ExportError, what="image set") as output:
            dest = output.dest
            sets = []
            d = output.dir
            for depth, level in enumerate(levels):
                if depth:
                    d = d.mkdir(fmt.PARENT_LINK)
                final = dest.joinpath(*([fmt.PARENT_LINK] * depth))
                write = _write_complete if complete and not depth else _write_memory
                sets.append(write(level, d, final, flatten=not keep_chain, threads=threads))
            output.commit()
        why_memory = None if complete else _why_memory_only(ck)
    except OSError as err:
        raise ExportError(f"exporting to {out}: {err.strerror}") from err
    finally:
        if own:
            ck.close()
    result = ExportResult(out=dest, source=sets[0].source, keep_chain=keep_chain, sets=sets,
                          bytes=sum(s.bytes for s in sets), complete=complete, shell_job=shell_job,
                          terminal=terminal, unrestorable=reasons)
    result.notes = _notes(result, why_memory)
    return result


def _why_memory_only(ck: Checkpoint) -> str:
    if ck.inventory.HasField("pre_dump") and ck.inventory.pre_dump:
        return (f"{ck.path} is a pre-dump (its registers and memory are of different moments): "
                "export the dump taken with --parent over it")
    if ck.is_criu:
        return f"{ck.path} holds no process state (no {PSTREE_NAME} and core-PID.img: a CRIU pre-dump?)"
    return (f"{ck.path} holds no process state (no {PSTREE_NAME} and core-PID.img): a checkpoint from a dumper "
            "that saved memory only")


def _notes(result: ExportResult, why_memory: str | None) -> list[str]:
    notes = []
    if result.complete:
        notes.append(f"complete CRIU 4.2 image set: `{result.restore_command}` restores the process tree "
                     f"(pids {', '.join(map(str, result.sets[0].pids))}); crit x {result.out} ps|fds|mems|rss reads it")
        if result.shell_job:
            notes.append("the tree's session or terminal lies outside it: restore with --shell-job (it joins the "
                         "restoring shell's session and process group)")
        if result.terminal:
            notes.append("it holds a terminal: criu restore --shell-job gives the restored process the terminal on "
                         "criu's own stdin, so run it from a terminal")
        if result.unrestorable:
            notes.append(f"NOT restorable as saved (exported with --force-unrestorable): the dump did not save "
                         f"{plural(len(result.unrestorable), 'resource')} criu restore needs: "
                         + "; ".join(result.unrestorable[:_MAX_SHOWN]))
    else:
        notes.append(f"memory only: {why_memory}; crit reads this image set, CRIU cannot restore from it")
    if len(result.sets) > 1:
        notes.append(f"{plural(len(result.sets) - 1, 'parent set')} nested as "
                     f"{result.out.name}/{fmt.PARENT_LINK}/...: "
                     "memory images, from which criu restore reads the PE_PARENT pages")
    for s in result.sets:
        if s.zero_pages_left_out:
            notes.append(f"{s.path}: {s.zero_pages_left_out} pages of zeros (holes of a sparse raw pages file in "
                         "anonymous memory) left out of the pagemaps: they read as zeros all the same")
        if s.left_out:
            shown = ", ".join(f"{n} ({why})" for n, why in sorted(s.left_out.items()))
            notes.append(f"left out of {s.path}: {shown}")
    return notes

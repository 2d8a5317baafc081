"""What makes a checkpoint an image set CRIU 4.2 restores, and its images
with CRIU's fields only.

dumper's images are CRIU's, with dumper's additions in fields numbered from
:data:`FIRST_OWN_FIELD` (proto/*.proto) and a few image types of its own.
``dumper export`` writes a set holding CRIU's part only; ``dumper restore``
checks that a checkpoint is complete before giving it to ``criu restore``.
Both use this module (page data: :mod:`.rawpages`):

* :func:`criu_fields_only` -- a message without dumper's fields;
* :func:`image_type` / :func:`copy_image` -- one image file copied entry by
  entry with CRIU's fields only, the raw bytes that follow some entries
  (pipes-data, fifo-data, ghost files, old ipcns-shm) copied as they are;
  :func:`is_dumper_image` tells dumper's own image types (``ZPAGES``...);
* :func:`has_process_state`, :func:`process_tree`, :func:`missing_images`,
  :func:`unrestorable_lines`, :func:`shell_job_needed` -- whether a
  checkpoint holds the state ``criu restore`` needs, and what it lacks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from google.protobuf import unknown_fields
from google.protobuf.message import Message

from . import format as fmt
from .checkpoint import PSTREE_NAME, Checkpoint, read_pstree

__all__ = [
    "FIRST_OWN_FIELD",
    "REQUIRED_PER_PROCESS",
    "Task",
    "criu_fields_only",
    "is_dumper_image",
    "image_type",
    "copy_image",
    "has_process_state",
    "process_tree",
    "missing_images",
    "unrestorable_lines",
    "shell_job_needed",
]

# dumper's additions to CRIU's messages are numbered from here (CRIU grows
# its own numbers one by one; 4.2 uses at most 24).
FIRST_OWN_FIELD = 32


# --- messages


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _unknown_criu_fields(msg: Message) -> bytes:
    """The wire bytes of ``msg``'s unknown fields numbered below
    :data:`FIRST_OWN_FIELD`: fields of a CRIU newer than proto/ (groups,
    which CRIU never uses, are dropped)."""
    out = bytearray()
    for f in unknown_fields.UnknownFieldSet(msg):
        if f.field_number >= FIRST_OWN_FIELD:
            continue
        tag = _varint(f.field_number << 3 | f.wire_type)
        if f.wire_type == 0:  # varint
            out += tag + _varint(f.data & ((1 << 64) - 1))
        elif f.wire_type == 1:  # 64-bit
            out += tag + f.data.to_bytes(8, "little")
        elif f.wire_type == 2:  # length-delimited
            out += tag + _varint(len(f.data)) + f.data
        elif f.wire_type == 5:  # 32-bit
            out += tag + f.data.to_bytes(4, "little")
    return bytes(out)


def criu_fields_only(msg: Message) -> Message:
    """A new message of ``msg``'s type holding only CRIU's fields (numbers
    below :data:`FIRST_OWN_FIELD`), nested messages filtered the same way.
    Unknown fields below 32 (a newer CRIU's) are kept, unknown ones from 32
    (a newer dumper's) dropped."""
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
    extra = _unknown_criu_fields(msg)
    if extra:
        out.MergeFromString(extra)
    return out


# --- image files


def _is_dumper_magic(value: int) -> bool:
    # CRIU's magics are coordinates written in decimal digits (every hex
    # nibble 0-9, criu/include/magic.h); dumper picks values with a nibble
    # above 9 (format.ZPAGES_MAGIC), so no CRIU magic is ever taken for ours.
    return any((value >> shift) & 0xF > 9 for shift in range(0, 32, 4))


def is_dumper_image(name: str) -> bool:
    """Whether magic ``name`` (a :data:`~dumper.image.format.MAGICS` key) is
    one of dumper's own image types (``ZPAGES``...), which CRIU does not
    read."""
    return _is_dumper_magic(fmt.MAGICS[name])


def image_type(f: BinaryIO, path: str | os.PathLike | None = None) -> str:
    """The magic name of the image file ``f`` (read from its start).
    BadMagic for raw data (``pages-N.img``, CRIU's raw images such as
    ``ifaddr-N.img``, anything that is not an image)."""
    f.seek(0)
    return fmt.read_magic(f, path)


def copy_image(f: BinaryIO, path: str | os.PathLike | None, name: str, out: BinaryIO) -> int:
    """Copy image file ``f`` (magic ``name``, from :func:`image_type`) into
    ``out``, every entry with CRIU's fields only (:func:`criu_fields_only`)
    and the raw bytes after entries (:data:`~dumper.image.format.EXTRA_PAYLOADS`)
    as they are, padding included. A CRIU image type dumper has no schema
    for is copied byte for byte (dumper never writes one, so it holds no
    dumper field). Returns the bytes written.

    Raises ValueError for one of dumper's own image types (never CRIU's),
    CorruptImage for a damaged image (memory stays bounded: entries are
    checked against :data:`~dumper.image.format.MAX_ENTRY_SIZE` and extra
    payloads are copied in pieces).
    """
    if is_dumper_image(name):
        raise ValueError(f"{name} is dumper's own image type, not CRIU's")
    f.seek(0)
    if name not in fmt.ENTRY_TYPES:
        written = 0
        while chunk := f.read(1 << 20):
            out.write(chunk)
            written += len(chunk)
        return written
    written = fmt.write_magic(out, name)
    f.seek(written)
    for e in fmt.iter_image(f, path, name, written):
        written += fmt.write_entry(out, criu_fields_only(e.msg))
        if e.extra is not None:
            resume = f.tell()  # iter_image goes on from here
            for chunk in fmt.iter_extra(f, e.extra, path):
                out.write(chunk)
            pad = e.extra.span - e.extra.size
            if pad:
                out.write(bytes(pad))
            written += e.extra.span
            f.seek(resume)
    return written


# --- what criu restore needs

# Images criu restore reads for every process that has memory, besides one
# core-TID.img per thread (CRIU 4.2, by removing each from a `criu dump` set:
# without ids-PID "No IDS for root task"; without fs-PID or mm-PID the
# restored task dies of SIGSEGV; without pagemap-PID "Restoring FAILED";
# without the pages file "Can't read pages data"). fdinfo-N, seccomp.img,
# timens-0.img and stats-dump may be absent (no fds, no filters, host time).
REQUIRED_PER_PROCESS = ("ids-{pid}.img", "fs-{pid}.img", "mm-{pid}.img", "pagemap-{pid}.img")


@dataclass(frozen=True, slots=True)
class Task:
    """One ``pstree_entry``: ``pid``, ``ppid``, ``pgid``, ``sid``, ``threads``
    (at least the pid)."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]


def process_tree(ck: Checkpoint) -> list[Task]:
    """The checkpoint's process tree, root first (``pstree.img``; zombies
    included). ImageError if it is missing or damaged."""
    tree = ck.pstree if ck.pstree is not None else read_pstree(ck.path / PSTREE_NAME)
    return [Task(e.pid, e.ppid, e.pgid, e.sid, tuple(e.threads) or (e.pid,)) for e in tree]


def _regular(ck: Checkpoint, name: str) -> bool:
    """Whether ``name`` in ``ck``'s directory is a regular file (a symlink
    is not: image files are read without following them)."""
    try:
        return stat.S_ISREG(os.lstat(ck.path / name).st_mode)
    except OSError:
        return False


def has_process_state(ck: Checkpoint) -> bool:
    """Whether ``ck`` holds process state for ``criu restore`` besides
    memory: not a pre-dump (whose registers and memory are of different
    moments) with a ``pstree.img`` (:func:`missing_images` checks the rest). False
    for dumper checkpoints from before process state was saved and for
    CRIU's pre-dumps (pages only)."""
    inv = ck.inventory
    if inv.HasField("pre_dump") and inv.pre_dump:
        return False
    # Present in any form: a pstree or core that is a symlink or a FIFO is a
    # damaged set (missing_images names it, as restore does), not a memory-only one.
    return os.path.lexists(ck.path / PSTREE_NAME)


def missing_images(ck: Checkpoint, tree: Iterable[Task]) -> list[str]:
    """Names of the images ``criu restore`` needs for ``tree`` that ``ck``
    lacks (or holds as something else than a regular file): ``core-TID.img``
    for every thread, and for every process with memory (or the root)
    :data:`REQUIRED_PER_PROCESS`."""
    missing = []
    for i, t in enumerate(tree):
        names = [fmt.core_name(tid) for tid in t.threads]
        if (ck.path / fmt.pagemap_name(t.pid)).exists() or t.pid in ck.processes:
            names += [n.format(pid=t.pid) for n in REQUIRED_PER_PROCESS]
        elif i == 0:
            names.append(fmt.pagemap_name(t.pid))
        missing += [n for n in names if not _regular(ck, n)]
    return missing


def unrestorable_lines(ck: Checkpoint) -> list[str]:
    """One line per resource the dump did not save
    (``inventory_entry.unrestorable``): ``"pid 5 fd 3: socket: why"``.
    Empty when the checkpoint is restorable as far as the dump knew."""
    lines = []
    for r in ck.inventory.unrestorable:
        where = " ".join(x for x in (f"pid {r.pid}", r.what) if x)
        lines.append(f"{where}: {r.kind or 'resource'}" + (f": {r.why}" if r.why else ""))
    return lines


def shell_job_needed(ck: Checkpoint, tree: list[Task]) -> bool:
    """Whether ``criu restore`` needs ``--shell-job``: what the dump recorded
    (``inventory_entry.shell_job``: a terminal or a session that lives
    outside the checkpoint), else whether the root task is not a session
    leader (CRIU's own sets; criu/pstree.c refuses such a tree without it)."""
    inv = ck.inventory
    if inv.HasField("shell_job"):
        return inv.shell_job
    root = tree[0]
    return root.sid != root.pid


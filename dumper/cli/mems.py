"""``dumper mems DIR``: the VMAs of each process, like ``crit x DIR mems``.

Per pid: the pid, the executable (when the image records it), then one line
per VMA in image order::

    \\t<start>-<end>                   rwx    PAGES<annotation>[  [REASON]]

``start-end``, ``rwx`` and the annotation are crit's (file path ``+ pgoff``,
``(s)`` shared, ``shmem[n]``, ``[stack]``, ``[vdso]``, ``[heap]``..., a
trailing ``*`` when the VMA is not VMA_AREA_REGULAR; see
:func:`dumper.image.pretty.vma_annotation`). ``PAGES`` is ours: the
PE_PRESENT pages the pagemap holds inside the VMA (``N+Mp`` when M more
are PE_PARENT or lazy, ``N+Mc`` when M more are stored once in another
process's stream: pages shared copy-on-write), ``Ms`` for a shared memory
VMA (the object stores M pages inside the mapping's range, saved once for
every process mapping it), or ``skipped`` with the dump's reason at the end
of the line when the dump did not look at the VMA's contents.

``--json`` prints one object instead: ``{"dir", "processes": [{"pid",
"page_size", "exe", "vmas": [{"vma": <vma_entry as protobuf JSON>,
"annotation", "pages_present", "pages_other", "pages_cow", "pages_shared",
"shmid"}], "pages_outside_vmas"}]}``
(``vmas`` is null for a set without ``mm-PID.img``).

Every process of a tree, root first; ``--pid PID`` lists that one only.

Works on CRIU image directories too (read like every command reads a
checkpoint, :func:`dumper.image.checkpoint.open_checkpoint`; file names come
from the set's ``files.img`` or ``reg-files.img``). Guard regions
(VMA_AREA_GUARD pseudo-VMAs) show ``guard`` in the pages column. The helpers
here (:func:`pages_per_vma_of`, :func:`file_names`) are shared with ``rss``
and ``show``.
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

import numpy as np

from ..errors import ImageError
from ..image import format as fmt
from ..image.checkpoint import open_checkpoint, pages_per_vma
from ..image.pb import vma_pb2
from ..image.pretty import message_to_dict, printable, prot_text, vma_annotation
from .options import pid as pid_arg

# crit's layout: "\t%-36s%s%s" % ("start-end", "rwx", annotation)
_ADDR_WIDTH = 36
_PAGES_WIDTH = 8


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_pid_option(parser)


def add_pid_option(parser: argparse.ArgumentParser) -> None:
    """``--pid``: one process of a tree (mems, rss, show)."""
    parser.add_argument("--pid", type=pid_arg, default=None,
                        help="only this process of the tree (default: every process, the root first)")


def selected_pids(ck, pid: int | None) -> list[int]:
    """``[pid]`` (ImageError if the checkpoint has no such process), or
    every pid of ``ck``, root first."""
    return [ck.process(pid).pid] if pid is not None else list(ck.pids)


def pages_per_vma_of(proc) -> tuple[list[tuple[int, int]], int]:
    """:func:`pages_per_vma_arrays` as a list of ``(present, other)``."""
    pres, other, outside = pages_per_vma_arrays(proc)
    return list(zip(pres.tolist(), other.tolist())), outside


def pages_per_vma_arrays(proc) -> tuple[np.ndarray, np.ndarray, int]:
    """``(present, other, pages outside every VMA)``: per VMA of proc.mm in
    image order (int64 arrays), pagemap pages inside it, PE_PRESENT and not
    (guard pseudo-VMAs count (0, 0)). ``proc``: a
    :class:`~dumper.image.checkpoint.CheckpointProcess`. Prefix sums and
    binary search over the compact arrays
    (:func:`~dumper.image.checkpoint.pages_per_vma`): no Python per VMA."""
    if proc.mm is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    t = proc.mm.vmas
    ent = proc.entries
    pres, other = pages_per_vma(ent, t.start, t.end, proc.page_size)
    guard = (t.status & np.uint32(fmt.VMA_AREA_GUARD)) != 0
    pres[guard] = 0
    other[guard] = 0
    total = int(ent.nr_pages.sum(dtype=np.uint64)) if len(ent) else 0
    inside = int(pres.sum()) + int(other.sum())
    return pres, other, total - inside


def _named(v: vma_pb2.vma_entry, names: dict[int, str]) -> vma_pb2.vma_entry:
    """``v``, or a copy carrying the name a CRIU set's files.img gives its file."""
    if v.path or not v.status & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED) or v.shmid not in names:
        return v
    c = vma_pb2.vma_entry()
    c.CopyFrom(v)
    c.path = names[v.shmid]
    return c


def file_names(ck) -> dict[int, str]:
    """CRIU file ids -> names from the set's files.img/reg-files.img ({}
    for a dumper checkpoint, whose VMAs carry their paths, and when that
    image is damaged: the listing goes on without names, as show's does;
    verify reports the damage, cat of a page that needs the file too)."""
    if not ck.is_criu:
        return {}
    try:
        return {i: f.name for i, f in ck.criu_files().items()}
    except ImageError:
        return {}


def _pages_column(v: vma_pb2.vma_entry, present: int, other: int, cow: int = 0,
                  shared: int | None = None) -> tuple[str, str]:
    """(count column, trailing note) of one VMA; ``cow``: PE_COW pages among
    ``other``; ``shared``: pages of its shared memory object in range."""
    if v.HasField("dumped") and not v.dumped:
        reason = printable(v.contents_skipped_reason) if v.contents_skipped_reason else "no reason recorded"
        return "skipped", f"  [{reason}]"
    if shared is not None:
        return f"{shared}s", ""
    other -= cow
    col = f"{present}" + (f"+{other}p" if other else "") + (f"+{cow}c" if cow else "")
    return col, ""


def shared_counts(ck, proc) -> tuple[list[int], list[tuple[int | None, int | None]]]:
    """Per VMA of ``proc.mm.vmas`` (image order): PE_COW pages, and
    ``(shmid, pages)`` of its shared memory object (``(None, None)`` for
    other VMAs). Reads ``ck.shared`` only when the process has either."""
    from ..image.shared import SHMEM_VMAS

    t = proc.mm.vmas if proc.mm is not None else None
    n = len(t) if t is not None else 0
    cows, shm = [0] * n, [(None, None)] * n
    if ck is None or not n:
        return cows, shm
    rows = np.flatnonzero(((t.status & np.uint32(SHMEM_VMAS)) != 0) & (t.dumped != 0)).tolist()
    has_cow = proc.entries.mask(fmt.PE_COW).any()
    if not rows and not has_cow:
        return cows, shm
    sh = ck.shared
    if has_cow:
        cows = sh.cow_pages_per_vma(proc, t)
    for i in rows:
        obj, pages = sh.vma_pages(t[i])
        shm[i] = (obj.shmid if obj is not None else None, pages)
    return cows, shm


def mems_lines(proc, names: dict[int, str] | None = None, ck=None) -> list[str]:
    """The lines ``mems`` prints for one process (a CheckpointProcess);
    ``names``: CRIU file ids -> names (:func:`file_names`); ``ck``: the
    checkpoint, for shared memory and COW counts."""
    names = names or {}
    lines = [f"{proc.pid}"]
    if proc.mm is None:
        lines.append("\t(no mm image: VMAs unknown; "
                     f"{len(proc.entries)} pagemap entries, {proc.entries.pages(fmt.PE_PRESENT)} pages present)")
        return lines
    if proc.mm.exe_path:
        lines.append(f"\t{'exe':<{_ADDR_WIDTH}}    {printable(proc.mm.exe_path)}")
    pres, oth, outside = pages_per_vma_arrays(proc)
    cows, shm = shared_counts(ck, proc)
    shm_ids: dict[int, int] = {}
    for v, present, other, cow, (_, spages) in zip(proc.mm.vmas, pres.tolist(), oth.tolist(), cows, shm):
        if v.status & fmt.VMA_AREA_GUARD:
            col, note = "guard", ""
        else:
            col, note = _pages_column(v, present, other, cow, spages)
        addr = f"{v.start:08x}-{v.end:08x}"
        lines.append(f"\t{addr:<{_ADDR_WIDTH}}{prot_text(v.prot)} {col:>{_PAGES_WIDTH}}"
                     f"{vma_annotation(_named(v, names), shm_ids)}{note}")
    if outside:
        lines.append(f"\t({outside} pagemap pages outside every VMA)")
    return lines


def mems_json(proc, names: dict[int, str] | None = None, ck=None) -> dict:
    """What ``mems --json`` prints for one process (a CheckpointProcess)."""
    names = names or {}
    out = {"pid": proc.pid, "page_size": proc.page_size, "exe": None, "vmas": None, "pages_outside_vmas": 0}
    if proc.mm is None:
        return out
    counts, outside = pages_per_vma_of(proc)
    cows, shm = shared_counts(ck, proc)
    shm_ids: dict[int, int] = {}
    out["exe"] = proc.mm.exe_path or None
    out["vmas"] = [
        {"vma": message_to_dict(_named(v, names)), "annotation": vma_annotation(_named(v, names), shm_ids).strip(),
         "pages_present": present, "pages_other": other, "pages_cow": cow, "pages_shared": spages, "shmid": shmid}
        for v, (present, other), cow, (shmid, spages) in zip(proc.mm.vmas, counts, cows, shm)
    ]
    out["pages_outside_vmas"] = outside
    return out


def print_processes(args: argparse.Namespace, lines_of, json_of, shared_of=None) -> int:
    """``run`` of mems and rss: per process ``lines_of(proc, names, ck)``
    (text) or ``json_of(proc, names, ck)`` (``--json``: one object for all).
    Everything is read first: a damaged image gives one error and no partial
    listing. ``shared_of(ck, as_json, pids)``: lines (or a JSON value, key
    ``shared``) for the shared memory objects, after the processes.
    ``args.pid``: that process only (and the objects it maps)."""
    with open_checkpoint(args.dir) as ck:
        pids = selected_pids(ck, getattr(args, "pid", None))
        names = file_names(ck)
        if args.json:
            doc = {"dir": args.dir, "processes": [json_of(ck.process(pid), names, ck) for pid in pids]}
            if shared_of is not None:
                doc["shared"] = shared_of(ck, True, pids)
            text = [json.dumps(doc, indent=2)]
        else:
            text = [line for pid in pids for line in lines_of(ck.process(pid), names, ck)]
            if shared_of is not None:
                text.extend(shared_of(ck, False, pids))
    print("\n".join(text))
    return 0


def run(args: argparse.Namespace) -> int:
    return print_processes(args, mems_lines, mems_json)


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("mems", argv)

"""``dumper rss DIR``: pagemap entries and the VMAs they fall in, like
``crit x DIR rss``.

Per pid: the pid, then per pagemap entry ``vaddr / nr_pages`` and its flags
(``PRESENT``, ``PARENT``, ``LAZY|PRESENT``), followed by the VMAs the entry
overlaps, one per line: ``start / npages`` and the VMA's annotation (file
path, ``[stack]``... as in ``dumper mems``), or ``~`` for a VMA already
listed for the previous entry (it continues). An entry outside every VMA
says so. Addresses are hex, counts in pages. Works on CRIU image
directories too. ``COW`` entries are pages shared copy-on-write with
another process, stored once in its stream. Then, per shared memory object
(``shmem SHMID``): its entries by offset in the object, and the VMAs of
every process that maps it.

``--json`` prints one object instead: ``{"dir", "processes": [{"pid",
"page_size", "entries": [{"vaddr", "nr_pages", "flags": [names], "vmas":
[{"start", "end", "annotation"}]}]}], "shared": [{"shmid", "kind", "name",
"size", "entries": [{"offset", "nr_pages"}], "mapped_by": [{"pid", "start",
"end", "pgoff"}]}]}`` (every VMA an entry overlaps; no ``~`` shorthand).

Every process of a tree, root first; ``--pid PID`` lists that one only, and
the shared memory objects it maps.
"""

from __future__ import annotations

import argparse
from typing import Iterator, Sequence

import numpy as np

from ..image import format as fmt
from ..image.pretty import vma_annotation
from .mems import _named, add_pid_option, print_processes

_FLAG_NAMES = (("LAZY", fmt.PE_LAZY), ("PARENT", fmt.PE_PARENT), ("PRESENT", fmt.PE_PRESENT), ("COW", fmt.PE_COW))
# crit: "%-24s%s" % ("\t%lx / %-8d" % (vaddr, nr_pages), vmas); ours adds the flags.
_ENTRY_WIDTH = 23
_FLAGS_WIDTH = 13


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_pid_option(parser)


def _flags_text(flags: int) -> str:
    return "|".join(name for name, bit in _FLAG_NAMES if flags & bit) or "0"


def _entries_with_vmas(proc) -> Iterator[tuple[object, range]]:
    """``(entry, rows)`` per pagemap entry of ``proc``: the rows of
    ``proc.vmas`` (ascending, disjoint; guard pseudo-VMAs are not there)
    the entry overlaps, found by binary search over the table's columns."""
    ps = proc.page_size
    t, ent = proc.vmas, proc.entries
    if len(ent) and len(t):
        first = np.searchsorted(t.end, ent.vaddr, side="right").tolist()
        last = np.searchsorted(t.start // np.uint64(ps), ent.end_pages(ps), side="left").tolist()
    else:
        first = last = [0] * len(ent)
    for e, lo, hi in zip(ent, first, last):
        yield e, range(lo, hi)


class _Named:
    """``proc.vmas[i]`` as the listing names it (a CRIU set's files.img
    name), parsed when first asked for and kept while the walk is near it."""

    def __init__(self, proc, names: dict[int, str]) -> None:
        self.t, self.names = proc.vmas, names
        self.cache: dict[int, object] = {}

    def __getitem__(self, i: int):
        v = self.cache.get(i)
        if v is None:
            if len(self.cache) > 64:
                self.cache.clear()
            v = self.cache[i] = _named(self.t[i], self.names)
        return v


def rss_lines(proc, names: dict[int, str] | None = None, ck=None) -> list[str]:
    """The lines ``rss`` prints for one process (a CheckpointProcess).
    VMAs are parsed only when a line names them."""
    ps = proc.page_size
    # GUARD pseudo-VMAs hold no pages and may overlap the others: left out.
    vmas = _Named(proc, names or {})
    shm_ids: dict[int, int] = {}
    indent = "\t" + " " * (_ENTRY_WIDTH + 1 + _FLAGS_WIDTH)
    lines = [f"{proc.pid}"]
    prev = -1  # index of the last VMA listed
    for e, hit in _entries_with_vmas(proc):
        head = f"\t{f'{e.vaddr:x} / {e.nr_pages:<8}':<{_ENTRY_WIDTH}} {_flags_text(e.flags):<{_FLAGS_WIDTH}}"
        parts = []
        for i in hit:
            if i == prev:
                parts.append("~")
            else:
                v = vmas[i]
                parts.append(f"{v.start:08x} / {(v.end - v.start) // ps:<8}{vma_annotation(v, shm_ids)}")
                prev = i
        if not parts:
            parts.append("(outside every VMA)")
        lines.append((head + parts[0]).rstrip())
        lines.extend((indent + p).rstrip() for p in parts[1:])
    return lines


def rss_json(proc, names: dict[int, str] | None = None, ck=None) -> dict:
    """What ``rss --json`` prints for one process (a CheckpointProcess)."""
    vmas = _Named(proc, names or {})
    shm_ids: dict[int, int] = {}
    notes: dict[int, str] = {}
    entries = []
    for e, hit in _entries_with_vmas(proc):
        for i in hit:
            if i not in notes:
                notes[i] = vma_annotation(vmas[i], shm_ids).strip()
        entries.append({
            "vaddr": e.vaddr, "nr_pages": e.nr_pages,
            "flags": [name for name, bit in reversed(_FLAG_NAMES) if e.flags & bit],
            "vmas": [{"start": vmas[i].start, "end": vmas[i].end, "annotation": notes[i]} for i in hit],
        })
    return {"pid": proc.pid, "page_size": proc.page_size, "entries": entries}


def rss_shared(ck, as_json: bool, pids=None):
    """Lines (or, ``as_json``, a list) for every shared memory object of
    ``ck`` (with ``pids``: those one of them maps, a process being asked for)."""
    out_json, lines = [], []
    ps = ck.page_size
    for obj in ck.shared.objects.values():
        ents = [(int(v), int(n)) for v, n in zip(obj.entries.vaddr, obj.entries.nr_pages)] if obj.entries else []
        maps = ck.shared.mapped_by(obj)
        if pids is not None and len(pids) < len(ck.pids) and not any(pid in pids for pid, _ in maps):
            continue
        if as_json:
            out_json.append({"shmid": obj.shmid, "kind": obj.kind, "name": obj.name, "size": obj.size,
                             "entries": [{"offset": v, "nr_pages": n} for v, n in ents],
                             "mapped_by": [{"pid": pid, "start": v.start, "end": v.end, "pgoff": v.pgoff}
                                           for pid, v in maps]})
            continue
        size = f"{obj.size} bytes" if obj.size is not None else "size unknown"
        lines.append(f"shmem {obj.shmid} ({obj.describe()}, {size}"
                     + (", not saved)" if not obj.saved else ")"))
        for pid, v in maps:
            lines.append(f"\tmapped by {pid} at {v.start:08x} / {(v.end - v.start) // ps:<8} offset {v.pgoff:#x}")
        for v, n in ents:
            lines.append(f"\t{f'{v:x} / {n:<8}':<{_ENTRY_WIDTH}} PRESENT")
    return out_json if as_json else lines


def run(args: argparse.Namespace) -> int:
    return print_processes(args, rss_lines, rss_json, rss_shared)


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("rss", argv)

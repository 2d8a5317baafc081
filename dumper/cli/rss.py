"""``dumper rss DIR``: pagemap entries and the VMAs they fall in, like
``crit x DIR rss``.

Per pid: the pid, then per pagemap entry ``vaddr / nr_pages`` and its flags
(``PRESENT``, ``PARENT``, ``LAZY|PRESENT``), followed by the VMAs the entry
overlaps, one per line: ``start / npages`` and the VMA's annotation (file
path, ``[stack]``... as in ``dumper mems``), or ``~`` for a VMA already
listed for the previous entry (it continues). An entry outside every VMA
says so. Addresses are hex, counts in pages. Works on CRIU image
directories too.

``--json`` prints one object instead: ``{"dir", "processes": [{"pid",
"page_size", "entries": [{"vaddr", "nr_pages", "flags": [names], "vmas":
[{"start", "end", "annotation"}]}]}]}`` (every VMA an entry overlaps; no
``~`` shorthand).
"""

from __future__ import annotations

import argparse
from typing import Iterator, Sequence

from ..image import format as fmt
from ..image.pretty import vma_annotation
from .mems import _named, print_processes

_FLAG_NAMES = (("LAZY", fmt.PE_LAZY), ("PARENT", fmt.PE_PARENT), ("PRESENT", fmt.PE_PRESENT))
# crit: "%-24s%s" % ("\t%lx / %-8d" % (vaddr, nr_pages), vmas); ours adds the flags.
_ENTRY_WIDTH = 23
_FLAGS_WIDTH = 13


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _flags_text(flags: int) -> str:
    return "|".join(name for name, bit in _FLAG_NAMES if flags & bit) or "0"


def _entries_with_vmas(proc, vmas: list) -> Iterator[tuple[object, list[int]]]:
    """``(entry, indices)`` per pagemap entry of ``proc``: the indices in
    ``vmas`` (ascending, disjoint) of the VMAs the entry overlaps. Linear in
    entries + VMAs."""
    ps = proc.page_size
    vmi = 0
    for e in proc.entries:
        while vmi < len(vmas) and vmas[vmi].end <= e.vaddr:
            vmi += 1
        end = e.end(ps)
        hit = []
        while vmi < len(vmas) and vmas[vmi].start < end:
            hit.append(vmi)
            vmi += 1
        if hit:
            vmi -= 1  # the last VMA may continue into the next entry
        yield e, hit


def rss_lines(proc, names: dict[int, str] | None = None) -> list[str]:
    """The lines ``rss`` prints for one process (a CheckpointProcess)."""
    ps = proc.page_size
    names = names or {}
    # GUARD pseudo-VMAs hold no pages and may overlap the others: left out.
    vmas = [_named(v, names) for v in proc.vmas]
    shm_ids: dict[int, int] = {}
    indent = "\t" + " " * (_ENTRY_WIDTH + 1 + _FLAGS_WIDTH)
    lines = [f"{proc.pid}"]
    prev = -1  # index of the last VMA listed
    for e, hit in _entries_with_vmas(proc, vmas):
        head = f"\t{f'{e.vaddr:x} / {e.nr_pages:<8}':<{_ENTRY_WIDTH}} {_flags_text(e.flags):<{_FLAGS_WIDTH}}"
        parts = []
        for i in hit:
            v = vmas[i]
            if i == prev:
                parts.append("~")
            else:
                parts.append(f"{v.start:08x} / {(v.end - v.start) // ps:<8}{vma_annotation(v, shm_ids)}")
                prev = i
        if not parts:
            parts.append("(outside every VMA)")
        lines.append((head + parts[0]).rstrip())
        lines.extend((indent + p).rstrip() for p in parts[1:])
    return lines


def rss_json(proc, names: dict[int, str] | None = None) -> dict:
    """What ``rss --json`` prints for one process (a CheckpointProcess)."""
    names = names or {}
    vmas = [_named(v, names) for v in proc.vmas]
    shm_ids: dict[int, int] = {}
    notes: dict[int, str] = {}
    entries = []
    for e, hit in _entries_with_vmas(proc, vmas):
        for i in hit:
            if i not in notes:
                notes[i] = vma_annotation(vmas[i], shm_ids).strip()
        entries.append({
            "vaddr": e.vaddr, "nr_pages": e.nr_pages,
            "flags": [name for name, bit in reversed(_FLAG_NAMES) if e.flags & bit],
            "vmas": [{"start": vmas[i].start, "end": vmas[i].end, "annotation": notes[i]} for i in hit],
        })
    return {"pid": proc.pid, "page_size": proc.page_size, "entries": entries}


def run(args: argparse.Namespace) -> int:
    return print_processes(args, rss_lines, rss_json)


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("rss", argv)

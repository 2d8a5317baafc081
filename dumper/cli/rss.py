"""``dumper rss DIR``: pagemap entries and the VMAs they fall in, like
``crit x DIR rss``.

Per pid: the pid, then per pagemap entry ``vaddr / nr_pages`` and its flags
(``PRESENT``, ``PARENT``, ``LAZY|PRESENT``), followed by the VMAs the entry
overlaps, one per line: ``start / npages`` and the VMA's annotation (file
path, ``[stack]``... as in ``dumper mems``), or ``~`` for a VMA already
listed for the previous entry (it continues). An entry outside every VMA
says so. Addresses are hex, counts in pages. Works on CRIU image
directories too.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from ..image import format as fmt
from ..image.checkpoint import open_checkpoint
from ..image.pretty import vma_annotation
from .mems import _named, file_names

_FLAG_NAMES = (("LAZY", fmt.PE_LAZY), ("PARENT", fmt.PE_PARENT), ("PRESENT", fmt.PE_PRESENT))
# crit: "%-24s%s" % ("\t%lx / %-8d" % (vaddr, nr_pages), vmas); ours adds the flags.
_ENTRY_WIDTH = 23
_FLAGS_WIDTH = 13


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")


def _flags_text(flags: int) -> str:
    return "|".join(name for name, bit in _FLAG_NAMES if flags & bit) or "0"


def rss_lines(proc, names: dict[int, str] | None = None) -> list[str]:
    """The lines ``rss`` prints for one process (a CheckpointProcess)."""
    ps = proc.page_size
    names = names or {}
    # GUARD pseudo-VMAs hold no pages and may overlap the others: left out.
    vmas = [_named(v, names) for v in proc.vmas]
    shm_ids: dict[int, int] = {}
    indent = "\t" + " " * (_ENTRY_WIDTH + 1 + _FLAGS_WIDTH)
    lines = [f"{proc.pid}"]
    vmi = 0
    prev = -1  # index of the last VMA listed
    for e in proc.entries:
        head = f"\t{f'{e.vaddr:x} / {e.nr_pages:<8}':<{_ENTRY_WIDTH}} {_flags_text(e.flags):<{_FLAGS_WIDTH}}"
        while vmi < len(vmas) and vmas[vmi].end <= e.vaddr:
            vmi += 1
        end = e.end(ps)
        parts = []
        while vmi < len(vmas) and vmas[vmi].start < end:
            v = vmas[vmi]
            if vmi == prev:
                parts.append("~")
            else:
                parts.append(f"{v.start:08x} / {(v.end - v.start) // ps:<8}{vma_annotation(v, shm_ids)}")
                prev = vmi
            vmi += 1
        if parts:
            vmi -= 1  # the last VMA may continue into the next entry
        else:
            parts.append("(outside every VMA)")
        lines.append((head + parts[0]).rstrip())
        lines.extend((indent + p).rstrip() for p in parts[1:])
    return lines


def run(args: argparse.Namespace) -> int:
    with open_checkpoint(args.dir) as ck:
        names = file_names(ck)
        text = [line for pid in ck.pids for line in rss_lines(ck.process(pid), names)]
    print("\n".join(text))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("rss", argv)

"""``dumper mems DIR``: the VMAs of each process, like ``crit x DIR mems``.

Per pid: the pid, the executable (when the image records it), then one line
per VMA in image order::

    \\t<start>-<end>                   rwx    PAGES<annotation>[  [REASON]]

``start-end``, ``rwx`` and the annotation are crit's (file path ``+ pgoff``,
``(s)`` shared, ``shmem[n]``, ``[stack]``, ``[vdso]``, ``[heap]``..., a
trailing ``*`` when the VMA is not VMA_AREA_REGULAR; see
:func:`dumper.image.pretty.vma_annotation`). ``PAGES`` is ours: the
PE_PRESENT pages the pagemap holds inside the VMA (``N+Mp`` when M more
are PE_PARENT or lazy), or ``skipped`` with the dump's reason at the end of
the line when the dump did not look at the VMA's contents.

``--json`` prints one object instead: ``{"dir", "processes": [{"pid",
"page_size", "exe", "vmas": [{"vma": <vma_entry as protobuf JSON>,
"annotation", "pages_present", "pages_other"}], "pages_outside_vmas"}]}``.

Works on CRIU image directories too (no dumper fields; pids then come from
the ``mm-PID.img``/``pagemap-PID.img`` file names). The helpers here
(:func:`checkpoint_pids`, :func:`load_process`) are shared with ``rss``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import BadMagic, CorruptImage, ImageError
from ..image import format as fmt
from ..image import load_inventory, load_pagemap, read_image
from ..image.pb import inventory_pb2, mm_pb2, pagemap_pb2, vma_pb2
from ..image.pretty import message_to_dict, printable, prot_text, vma_annotation
from ..image.reader import PagemapEntry

_PID_FILE = re.compile(r"(?:mm|pagemap)-(\d+)\.img")
# crit's layout: "\t%-36s%s%s" % ("start-end", "rwx", annotation)
_ADDR_WIDTH = 36
_PAGES_WIDTH = 8


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass
class ProcessImages:
    """What ``mems``/``rss`` read for one pid: its ``mm_entry`` (VMAs
    checked), its pagemap (CRIU's compat rules applied) and page size."""

    pid: int
    mm: mm_pb2.mm_entry
    head: pagemap_pb2.pagemap_head
    entries: list[PagemapEntry]
    page_size: int


def open_inventory(path: str) -> inventory_pb2.inventory_entry:
    """The checked inventory of checkpoint directory ``path``."""
    if not os.path.isdir(path):
        raise ImageError(path, None, "not a checkpoint directory")
    return load_inventory(os.path.join(path, fmt.INVENTORY_NAME))


def checkpoint_pids(path: str, inv: inventory_pb2.inventory_entry) -> list[int]:
    """The dumped pids: the inventory's list (root first) in a dumper
    image, else those named by ``mm-PID.img``/``pagemap-PID.img`` files,
    ascending (a CRIU inventory lists none; the file names are enough here,
    pstree.img is not needed)."""
    if inv.pids:
        return list(dict.fromkeys(inv.pids))
    if inv.HasField("root_pid"):
        return [inv.root_pid]
    try:
        names = os.listdir(path)
    except OSError as err:
        raise ImageError(path, None, f"cannot list: {err.strerror}") from err
    pids = sorted({int(m.group(1)) for m in map(_PID_FILE.fullmatch, names) if m})
    if not pids:
        raise ImageError(path, None, "no mm-PID.img or pagemap-PID.img files")
    return pids


def check_vmas(mm: mm_pb2.mm_entry, path: str, page_size: int) -> None:
    """CorruptImage unless every VMA is a page-aligned non-empty range and
    the VMAs ascend without overlapping (CRIU's VMA_AREA_GUARD pseudo-VMAs,
    kept at the end of the list, may overlap the others)."""
    prev_end = 0
    for i, v in enumerate(mm.vmas):
        if not (v.start < v.end and v.start % page_size == 0 and v.end % page_size == 0):
            raise CorruptImage(path, 8, f"vma {i}: bad range {v.start:#x}-{v.end:#x}")
        if v.status & fmt.VMA_AREA_GUARD:
            continue
        if v.start < prev_end:
            raise CorruptImage(path, 8, f"vma {i}: {v.start:#x}-{v.end:#x} overlaps or precedes the previous VMA")
        prev_end = v.end


def load_process(path: str, pid: int, inv: inventory_pb2.inventory_entry) -> ProcessImages:
    """Read and check ``mm-PID.img`` and ``pagemap-PID.img`` of ``pid``."""
    mm_path = os.path.join(path, fmt.mm_name(pid))
    name, msgs = read_image(mm_path)
    if name != "MM":
        raise BadMagic(mm_path, 4, f"expected an MM image, found {name}")
    if len(msgs) != 1:
        raise CorruptImage(mm_path, 8, f"MM image holds {len(msgs)} entries, expected 1")
    mm = msgs[0]
    inv_ps = inv.page_size if inv.HasField("page_size") else None
    if inv_ps is not None:
        fmt.check_page_size(inv_ps, os.path.join(path, fmt.INVENTORY_NAME), 4)
    head, entries = load_pagemap(os.path.join(path, fmt.pagemap_name(pid)), page_size=inv_ps)
    ps = head.page_size if head.HasField("page_size") else (inv_ps or os.sysconf("SC_PAGE_SIZE"))
    check_vmas(mm, mm_path, ps)
    return ProcessImages(pid, mm, head, entries, ps)


def pages_per_vma(proc: ProcessImages) -> tuple[list[tuple[int, int]], int]:
    """``([(present, other), ...] per VMA in image order, pages outside
    every VMA)``: pagemap pages inside each VMA, PE_PRESENT and not.
    Linear in VMAs + entries (both ascending)."""
    ps = proc.page_size
    entries = proc.entries
    counts = [(0, 0)] * len(proc.mm.vmas)
    inside = 0
    j = 0
    for i, v in enumerate(proc.mm.vmas):
        if v.status & fmt.VMA_AREA_GUARD:
            continue
        while j < len(entries) and entries[j].end(ps) <= v.start:
            j += 1
        present = other = 0
        k = j
        while k < len(entries) and entries[k].vaddr < v.end:
            e = entries[k]
            n = (min(e.end(ps), v.end) - max(e.vaddr, v.start)) // ps
            if e.present:
                present += n
            else:
                other += n
            k += 1
        counts[i] = (present, other)
        inside += present + other
    total = sum(e.nr_pages for e in entries)
    return counts, total - inside


def _pages_column(v: vma_pb2.vma_entry, present: int, other: int) -> tuple[str, str]:
    """(count column, trailing note) of one VMA."""
    if v.HasField("dumped") and not v.dumped:
        reason = printable(v.contents_skipped_reason) if v.contents_skipped_reason else "no reason recorded"
        return "skipped", f"  [{reason}]"
    return (f"{present}+{other}p" if other else f"{present}"), ""


def mems_lines(proc: ProcessImages) -> list[str]:
    """The lines ``mems`` prints for one process."""
    lines = [f"{proc.pid}"]
    if proc.mm.exe_path:
        lines.append(f"\t{'exe':<{_ADDR_WIDTH}}    {printable(proc.mm.exe_path)}")
    counts, outside = pages_per_vma(proc)
    shm_ids: dict[int, int] = {}
    for v, (present, other) in zip(proc.mm.vmas, counts):
        col, note = _pages_column(v, present, other)
        addr = f"{v.start:08x}-{v.end:08x}"
        lines.append(f"\t{addr:<{_ADDR_WIDTH}}{prot_text(v.prot)} {col:>{_PAGES_WIDTH}}{vma_annotation(v, shm_ids)}{note}")
    if outside:
        lines.append(f"\t({outside} pagemap pages outside every VMA)")
    return lines


def mems_json(proc: ProcessImages) -> dict:
    """What ``mems --json`` prints for one process."""
    counts, outside = pages_per_vma(proc)
    shm_ids: dict[int, int] = {}
    vmas = [
        {"vma": message_to_dict(v), "annotation": vma_annotation(v, shm_ids).strip(),
         "pages_present": present, "pages_other": other}
        for v, (present, other) in zip(proc.mm.vmas, counts)
    ]
    return {"pid": proc.pid, "page_size": proc.page_size, "exe": proc.mm.exe_path or None,
            "vmas": vmas, "pages_outside_vmas": outside}


def run(args: argparse.Namespace) -> int:
    inv = open_inventory(args.dir)
    # Read everything first: a damaged image gives one error and no partial listing.
    procs = [load_process(args.dir, pid, inv) for pid in checkpoint_pids(args.dir, inv)]
    if args.json:
        print(json.dumps({"dir": args.dir, "processes": [mems_json(p) for p in procs]}, indent=2))
        return 0
    for proc in procs:
        print("\n".join(mems_lines(proc)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("mems", argv)

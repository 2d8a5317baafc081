"""``dumper export --format criu DIR OUT``: write a checkpoint as a CRIU image set.

OUT gets CRIU 4.x images that CRIU's ``crit`` reads (``decode``, ``show``,
``x OUT mems``, ``x OUT rss``): inventory.img, pstree.img, files.img,
mm-PID.img, pagemap-PID.img and raw pages-N.img, CRIU's fields only. The
parent chain is resolved into OUT, or with ``--keep-chain`` exported as
nested sets (OUT/parent, OUT/parent/parent...) with PE_PARENT entries kept.

The set holds memory only (no registers, files, sockets, namespaces): CRIU
cannot restore from it. See docs/criu-export.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from ..export import FORMATS, ExportError, export
from .core import add_elf_options, run_export
from .options import human_bytes, pid

MEMORY_ONLY = (
    "The image set holds memory only: no registers, file descriptors, sockets or namespaces "
    "(no core-PID.img, ids, fdinfo images). CRIU's crit reads it (decode, show, x OUT mems, "
    "x OUT rss); CRIU cannot restore from it."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Write checkpoint DIR as a CRIU 4.x image directory OUT: inventory.img, pstree.img, files.img,\n"
        "mm-PID.img, pagemap-PID.img and raw pages-N.img, CRIU's fields only.\n\n" + MEMORY_ONLY
    )
    parser.add_argument("--format", choices=FORMATS, default="criu", help="output format (default: criu)")
    parser.add_argument("dir", help="checkpoint directory (dumper's, or CRIU's)")
    parser.add_argument("out", help="image directory to create (must not exist unless --force)")
    parser.add_argument("--keep-chain", action="store_true",
                        help="export the parent chain as nested sets OUT/parent/... keeping PE_PARENT entries "
                             "(default: resolve the chain into one stand-alone set)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT if it is an image set (an empty directory OUT is filled without it; "
                             "anything else is never replaced)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    elf = parser.add_argument_group("--format elf (one ELF core per process: OUT is the core file, or a "
                                    "directory of core.PID files for a tree)")
    elf.add_argument("--pid", type=pid, help="only this process (OUT is then its core file)")
    add_elf_options(elf)


def run(args: argparse.Namespace) -> int:
    if args.format == "elf":
        return run_export(args)
    if args.pid is not None or args.with_file_pages:
        raise ExportError("--pid and --with-file-pages are for --format elf")
    result = export(args.dir, args.out, format=args.format, keep_chain=args.keep_chain, force=args.force)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for s in result.sets:
        pages = sum(s.pages_present.values())
        parent = sum(s.pages_parent.values())
        extra = f", {parent} pages PE_PARENT" if parent else ""
        pids = ",".join(map(str, s.pids))
        print(f"{s.path}: pids {pids}, {pages} pages{extra}, {len(s.files)} files, {human_bytes(s.bytes)}")
    print(f"exported {result.source} as a CRIU image set ({human_bytes(result.bytes)})")
    print(MEMORY_ONLY)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("export", argv)

"""``dumper export --format criu|elf DIR OUT``: a checkpoint as a CRIU image set or ELF cores.

From a checkpoint with process state (what ``dumper dump`` writes) OUT is a
complete CRIU 4.2 image set: every CRIU image of DIR with CRIU's fields only,
pagemaps with raw pages-N.img; plain ``criu restore -D OUT`` brings the
process tree back and ``crit`` reads it. A checkpoint marked not restorable
is refused (``--force-unrestorable`` exports it anyway). From a checkpoint
with memory only (a pre-dump, an older dumper checkpoint, a CRIU pre-dump)
OUT holds memory images (inventory, pstree, files, mm, pagemap, pages),
which crit reads and CRIU cannot restore. The parent chain is resolved into
OUT, or with ``--keep-chain`` exported as nested sets (OUT/parent...) with
PE_PARENT entries kept. See docs/criu-export.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ..export import FORMATS, ExportError, export
from .core import add_elf_options, run_export
from .options import human_bytes, pid, plural, positive

DESCRIPTION = """\
Write checkpoint DIR as a CRIU 4.2 image directory OUT, CRIU's fields only.

From a checkpoint with process state (dumper dump, criu dump) OUT is complete:
every CRIU image of DIR (core, ids, pstree with every thread, fs, files,
fdinfo, pipe data, ghost files, ...), the pagemaps with raw pages-N.img.
`criu restore -D OUT` brings the process tree back; crit reads it
(decode, show, x OUT ps|fds|mems|rss). A checkpoint marked not restorable
is refused unless --force-unrestorable.

From a checkpoint with memory only (a pre-dump, an older dumper checkpoint,
a CRIU pre-dump) OUT holds memory images only: inventory.img, pstree.img,
files.img, mm-PID.img, pagemap-PID.img and pages-N.img. crit reads them
(decode, show, x OUT mems, x OUT rss); CRIU cannot restore from them.

With --format elf, OUT is an ELF core in the Linux kernel's layout that gdb
and lldb open (a directory of core.PID files for a tree; see docs/elf-core.md)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = DESCRIPTION
    parser.add_argument("--format", choices=FORMATS, default="criu", help="output format (default: criu)")
    parser.add_argument("dir", help="checkpoint directory (dumper's, or CRIU's)")
    parser.add_argument("out", help="image directory to create (must not exist unless --force)")
    parser.add_argument("--keep-chain", action="store_true",
                        help="export the parent chain as nested sets OUT/parent/... keeping PE_PARENT entries "
                             "(default: resolve the chain into one stand-alone set)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT if it is an image set (an empty directory OUT is filled without it; "
                             "anything else is never replaced)")
    parser.add_argument("--force-unrestorable", action="store_true",
                        help="export a checkpoint marked not restorable (resources the dump did not save) as a "
                             "complete set anyway; criu restore may fail or bring back a process without them")
    parser.add_argument("--threads", type=positive, default=None, metavar="N",
                        help="page decompression threads (default: up to 4)")
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
    try:
        result = export(args.dir, args.out, format=args.format, keep_chain=args.keep_chain, force=args.force,
                        force_unrestorable=args.force_unrestorable, threads=args.threads)
    except ExportError as err:
        for line in err.details:
            print(f"  {line}", file=sys.stderr)
        raise
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for s in result.sets:
        pages = sum(s.pages_present.values()) + sum(s.shared_pages.values())
        parent = sum(s.pages_parent.values())
        extra = f", {plural(parent, 'page')} PE_PARENT" if parent else ""
        pids = ",".join(map(str, s.pids))
        print(f"{s.path}: {s.kind}, pids {pids}, {plural(pages, 'page')}{extra}, {plural(len(s.files), 'file')}, "
              f"{human_bytes(s.bytes)}")
    print(f"exported {result.source} as a CRIU image set ({human_bytes(result.bytes)})")
    for note in result.notes:
        print(note)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("export", argv)

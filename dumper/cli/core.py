"""``dumper core PID [-o FILE]``: write an ELF core of a running process, as
``gcore PID`` does: freeze, dump into a private temporary checkpoint, let
the process go, write the core from the checkpoint. gdb and lldb open it.

Also the printing of ``dumper export --format elf`` (:func:`run_export`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .options import human_bytes, pid

_HELP = (
    "Write an ELF core file of process PID (default ./core.PID), as gcore does: the process is frozen,\n"
    "checkpointed into a private temporary directory beside FILE and let go as soon as its pages are\n"
    "copied; the core is then written from the checkpoint (the kernel's core layout: every thread's\n"
    "registers, the mapped files, only the pages the process wrote; file holes for untouched memory).\n"
    "Open it with: gdb PROGRAM FILE"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = _HELP
    parser.add_argument("pid", type=pid, help="process to write a core of")
    parser.add_argument("-o", "--output", metavar="FILE", help="core file to create (default: core.PID)")
    after = parser.add_mutually_exclusive_group()
    after.add_argument("--leave-stopped", action="store_true", help="leave the process stopped (state T)")
    after.add_argument("--kill", action="store_true", help="kill the process once its state is saved")
    add_elf_options(parser)
    parser.add_argument("--force", action="store_true", help="replace FILE if it is a regular file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_elf_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--with-file-pages", action="store_true",
                        help="copy the untouched pages of private file mappings too (coredump_filter bit 2); "
                             "by default gdb reads them from the files the core names")


def core_lines(r) -> list[str]:
    ratio = f"{r.allocated / r.data_bytes:.2f}x the data" if r.data_bytes else "no data"
    lines = [
        f"{r.path}: ELF core of pid {r.pid}, {r.threads} threads, {r.segments} segments for {r.vmas} VMAs",
        f"  data        {human_bytes(r.data_bytes)} written ({human_bytes(r.file_fill_bytes)} from mapped files), "
        f"notes {human_bytes(r.note_bytes)}",
        f"  file        {human_bytes(r.apparent)} long, {human_bytes(r.allocated)} on disk ({ratio})",
    ]
    lines += [f"  note        {n}" for n in r.notes]
    return lines


def run(args: argparse.Namespace) -> int:
    from ..export.elf import core_of_process

    thaw = "kill" if args.kill else "leave-stopped" if args.leave_stopped else "resume"
    out = args.output or f"core.{args.pid}"
    result, dumped = core_of_process(args.pid, out, thaw=thaw, with_file_pages=args.with_file_pages,
                                     force=args.force)
    if args.json:
        print(json.dumps({"core": result.to_json(), "frozen_ns": dumped.frozen_ns, "thaw": thaw}, indent=2))
        return 0
    after = {"resume": "running again", "leave-stopped": "left stopped", "kill": "killed"}[thaw]
    if thaw == "resume" and dumped.was_stopped:
        after = "left stopped, as it was before"
    print("\n".join(core_lines(result)))
    print(f"  process     frozen {dumped.frozen_ns / 1e6:.1f} ms, {after}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``dumper export --format elf DIR OUT [--pid PID] [--with-file-pages]``."""
    from ..errors import DumpError
    from ..export.elf import export_elf

    if args.keep_chain:
        raise DumpError("--keep-chain is for --format criu: an ELF core always reads through the parent chain")
    if getattr(args, "force_unrestorable", False) or getattr(args, "threads", None) is not None:
        raise DumpError("--force-unrestorable and --threads are for --format criu")
    result = export_elf(args.dir, args.out, pid=getattr(args, "pid", None), force=args.force,
                        with_file_pages=args.with_file_pages)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for r in result.cores:
        print("\n".join(core_lines(r)))
    print(f"exported {result.source} as {len(result.cores)} ELF core{'s' if len(result.cores) > 1 else ''} "
          f"({result.checkpoint_pages} pages recorded in the checkpoint)", file=sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("core", argv)

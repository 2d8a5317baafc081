"""``dumper dump PID -D DIR``: checkpoint a process's memory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ..dump import TRACKERS, dump
from ..scan import BACKENDS
from .options import human_bytes, pid


def _level(text: str) -> int:
    value = int(text)
    if not -7 <= value <= 22:
        raise argparse.ArgumentTypeError("zstd levels run from -7 to 22")
    return value


def _threads(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("need at least one thread")
    return value


def configure(parser: argparse.ArgumentParser, *, pre_dump: bool = False) -> None:
    parser.add_argument("pid", type=pid, help="process to checkpoint")
    parser.add_argument("-D", "--images-dir", required=True, metavar="DIR",
                        help="checkpoint directory to create (refused if it exists, unless --force)")
    after = parser.add_mutually_exclusive_group()
    after.add_argument("--leave-stopped", action="store_true", help="leave the process stopped (state T)")
    after.add_argument("--kill", action="store_true", help="kill the process after the dump")
    parser.add_argument("--no-compress", action="store_true", help="write CRIU's raw pages-1.img")
    parser.add_argument("--compress-level", type=_level, default=3, metavar="N", help="zstd level (default 3)")
    parser.add_argument("--threads", type=_threads, default=None, metavar="N",
                        help="compression threads (default: all cores)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="page scanner (default auto)")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint directory")
    add_tracking_options(parser, pre_dump=pre_dump)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the summary")


def add_tracking_options(parser: argparse.ArgumentParser, *, pre_dump: bool = False) -> None:
    if not pre_dump:
        parser.add_argument("--track-mem", action="store_true",
                            help="arm write tracking before the process resumes, for a later --parent dump")
    parser.add_argument("--parent", metavar="PREV",
                        help="incremental: save only pages written since checkpoint PREV")
    parser.add_argument("--tracker", choices=TRACKERS, default="auto",
                        help="write tracker (default auto: what `dumper check` found working)")


def summary_lines(r, verbose: bool = False) -> list[str]:
    ms = lambda ns: f"{ns / 1e6:.1f} ms"  # noqa: E731
    ratio = r.bytes_raw / r.bytes_written if r.bytes_written else 0.0
    lines = [
        f"dumped pid {r.pid} ({r.comm}) into {r.dest}",
        f"  pages       {r.pages_written} written ({human_bytes(r.bytes_raw)}) of "
        f"{r.pages_scanned} in private VMAs; {r.pages_unreadable} unreadable"
        + (f"; {r.pages_parent} in parent {r.parent}" if r.parent else ""),
        f"  image       {human_bytes(r.bytes_written)} (compression {ratio:.2f}x)",
        f"  frozen      {ms(r.frozen_ns)} (freezing {ms(r.freezing_ns)}); total {ms(r.total_ns)}",
        f"  scanner     {r.backend}, scan {ms(r.scan_ns)}, read {ms(r.read_ns)}, "
        f"compress {ms(r.compress_ns)} (all threads), write {ms(r.write_ns)}",
    ]
    if r.tracker != "none":
        lines.append(f"  tracking    {r.tracker} armed for the next dump --parent {r.dest}"
                     + ("  (PRE-DUMP: pages only)" if r.pre_dump else ""))
    for note in r.notes:
        lines.append(f"  note        {note}")
    if verbose or r.vmas_skipped:
        lines.append(f"  VMAs        {r.vmas}; contents skipped: "
                     + (", ".join(f"{n} ({why})" for why, n in r.vmas_skipped.items()) or "none"))
    return lines


def run(args: argparse.Namespace) -> int:
    thaw = "kill" if args.kill else "leave-stopped" if args.leave_stopped else "resume"
    result = dump(
        args.pid, args.images_dir, thaw=thaw, compress=not args.no_compress,
        level=args.compress_level, threads=args.threads, backend=args.backend,
        force=args.force, progress=sys.stderr.isatty() and not args.json,
        track_mem=getattr(args, "track_mem", False), parent=args.parent, tracker=args.tracker,
        pre_dump=getattr(args, "pre_dump", False),
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print("\n".join(summary_lines(result, args.verbose)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("dump", argv)

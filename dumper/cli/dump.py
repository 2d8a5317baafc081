"""``dumper dump PID -D DIR``: checkpoint a process tree (memory, threads, files) for ``criu restore``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ..dump import TRACKERS, dump
from ..dump.snapshot import COPY_MODES
from ..scan import BACKENDS
from ..kernel.libc import PAGE_SIZE
from .options import human_bytes, pid, plural


def _level(text: str) -> int:
    value = int(text)
    if not -7 <= value <= 22:
        raise argparse.ArgumentTypeError("zstd levels run from -7 to 22")
    return value


def _bounded_int(text: str, lo: int, hi: int, what: str, bounds: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number{what}: {text!r}") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(bounds)
    return value


def _threads(text: str) -> int:
    from ..image.writer import MAX_THREADS

    return _bounded_int(text, 1, MAX_THREADS, "", f"threads must be between 1 and {MAX_THREADS}")


def _rounds(text: str) -> int:
    return _bounded_int(text, 1, 100, " of rounds", "--pre-copy rounds run from 1 to 100")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("the freeze timeout must be between 0 and 3600 seconds")
    return value


def _size(text: str) -> int:
    from ..dump.spool import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _directory(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("empty directory name")
    return text


def configure(parser: argparse.ArgumentParser, *, pre_dump: bool = False) -> None:
    parser.add_argument("pid", type=pid, help="process to checkpoint")
    parser.add_argument("-D", "--images-dir", required=True, metavar="DIR", type=_directory,
                        help="checkpoint directory to create (refused if it exists, unless --force)")
    after = parser.add_mutually_exclusive_group()
    after.add_argument("--leave-stopped", action="store_true", help="leave the process stopped (state T)")
    after.add_argument("--kill", action="store_true", help="kill the process after the dump")
    parser.add_argument("--no-compress", action="store_true", help="write CRIU's raw pages-1.img")
    parser.add_argument("--compress-level", type=_level, default=3, metavar="N", help="zstd level (default 3)")
    parser.add_argument("--threads", type=_threads, default=None, metavar="N",
                        help="compression threads (default: all cores)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="page scanner: the PAGEMAP_SCAN ioctl, or reading /proc/PID/pagemap "
                             "(slow on huge sparse mappings; default auto: the ioctl where the kernel has it)")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint directory")
    parser.add_argument("--single", action="store_true",
                        help="dump only PID, not the tree of processes under it (children are then "
                             "not restorable)")
    parser.add_argument("--freeze-timeout", type=_seconds, default=5.0, metavar="SECONDS",
                        help="how long a thread may take to stop before the dump gives up (default 5)")
    parser.add_argument("--spool-limit", type=_size, default=None, metavar="SIZE",
                        help="RAM for pages copied while the process is frozen (e.g. 2G; default: half of "
                             "MemAvailable); beyond it pages spill into the checkpoint's directory")
    if not pre_dump:
        parser.add_argument("--copy", choices=COPY_MODES, default="auto",
                            help="how pages are copied: fork (the frozen process forks; pages are read from "
                                 "that copy-on-write child after the process runs again, which is frozen only "
                                 "for the fork), frozen (copied while it is frozen), or auto (fork for a "
                                 "single process with 64 MiB or more to copy, where it is safe)")
        parser.add_argument("--pre-copy", nargs="?", type=_rounds, const=4, default=0, metavar="N",
                            help="copy pages while the process runs, in up to N rounds (default 4) while "
                                 "the set of written pages shrinks; then freeze and copy only what changed")
        parser.add_argument("--restorable", action="store_true",
                            help="fail (leaving the process as it was) rather than write a checkpoint "
                                 "`criu restore` could not bring back")
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
    after = {"resume": "running again", "leave-stopped": "left stopped", "kill": "killed"}[r.thaw]
    if r.thaw == "resume" and r.was_stopped:
        after = "left stopped, as it was before"
    if r.exited_after_thaw:
        after += ", then exited while its pages were read (see the note)"
    who = f"pid {r.pid} ({r.comm})" if len(r.pids) <= 1 else f"the tree of pid {r.pid} ({r.comm}, {len(r.pids)} processes)"
    lines = [
        f"dumped {who} into {r.dest}; the process was {after}",
        f"  pages       {r.pages_written} written ({human_bytes(r.bytes_raw)}) from "
        f"{human_bytes(r.pages_scanned * PAGE_SIZE)} of private mappings; {r.pages_unreadable} unreadable"
        + (f"; {r.pages_parent} in parent {r.parent}" if r.parent else ""),
        f"  image       {human_bytes(r.bytes_written)}"
        + (f" (raw / image = {ratio:.2f}x)" if r.bytes_written != r.bytes_raw else " (uncompressed)"),
        f"  frozen      {ms(r.frozen_ns)}, after {ms(r.freezing_ns)} freezing; total {ms(r.total_ns)}"
        + (f"; pages read after the thaw from a copy-on-write child (stopped {ms(r.reap_ns)} more to reap it)"
           if r.copy == "fork" else ""),
        f"  time        scan {ms(r.scan_ns)} ({r.backend}), read {ms(r.read_ns)}, "
        f"compress {ms(r.compress_ns)} of CPU, write {ms(r.write_ns)}",
    ]
    if r.tracker != "none":
        lines.append(f"  tracking    {r.tracker} armed for the next dump --parent {r.dest}"
                     + ("  (PRE-DUMP: pages only)" if r.pre_dump else ""))
    for note in r.notes:
        lines.append(f"  note        {note}")

    lines.append(f"  VMAs        {r.vmas}; contents skipped: "
                 + (", ".join(f"{n} ({why})" for why, n in r.vmas_skipped.items()) or "none"))
    if verbose:
        lines.append(f"  copy        {r.copy}" + (f" ({r.copy_why})" if r.copy_why else "")
                     + (f", read through {'the child' if r.copy_read == 'window' else r.copy_read}"
                        if r.copy_read else ""))
        for vaddr, n in r.unreadable[:20]:
            lines.append(f"  unreadable  {vaddr:#x} +{plural(n, 'page')}")
        if len(r.unreadable) > 20:
            lines.append(f"  unreadable  ... {len(r.unreadable) - 20} more runs")
        lines.append(f"  stats       {plural(r.pages_scanned, 'page')} of private mappings, {plural(r.vmas, 'VMA')}, "
                     f"{plural(r.bytes_raw, 'byte')} raw, {plural(r.bytes_written, 'byte')} written")
    return lines


def run(args: argparse.Namespace) -> int:
    thaw = "kill" if args.kill else "leave-stopped" if args.leave_stopped else "resume"
    result = dump(
        args.pid, args.images_dir, thaw=thaw, compress=not args.no_compress,
        level=args.compress_level, threads=args.threads, backend=args.backend,
        force=args.force, progress=sys.stderr.isatty() and not args.json,
        track_mem=getattr(args, "track_mem", False), parent=args.parent, tracker=args.tracker,
        pre_dump=getattr(args, "pre_dump", False), freeze_timeout=args.freeze_timeout,
        spool_limit=args.spool_limit, restorable=getattr(args, "restorable", False),
        pre_copy=getattr(args, "pre_copy", 0), single=args.single, copy=getattr(args, "copy", "auto"),
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print("\n".join(summary_lines(result, args.verbose)))
    if result.unrestorable and not result.pre_dump:
        more = len(result.unrestorable) - 1
        print(f"dumper: warning: `criu restore` cannot bring this checkpoint back: {result.unrestorable[0]}"
              + (f" (and {more} more; `dumper show {result.dest}` lists them)" if more else ""), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("dump", argv)

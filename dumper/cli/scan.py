"""``dumper scan PID``: page regions selected by the four masks."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ..errors import ScanError
from ..kernel.libc import PAGE_SIZE
from ..proc.process import Process
from ..scan import BACKENDS, Category, ScanMasks, default_range, open_backend, parse_categories, scan_range
from ..scan.base import validate_range
from ..scan.features import probe_soft_dirty
from .options import address, human_bytes, non_negative, pid, plural


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=pid, help="target process id")
    parser.add_argument("--start", type=address, help="first address, 0x... or decimal, page aligned "
                        "(default: the first VMA)")
    parser.add_argument("--end", type=address, help="end address, exclusive, rounded up to a page as the kernel "
                        "does (default: the end of the last VMA)")
    for name, what in (
        ("required", "categories that must all be set"),
        ("anyof", "categories of which at least one must be set"),
        ("excluded", "categories that must all be clear"),
        ("return", "categories to report (default: all the backend computes)"),
    ):
        parser.add_argument(f"--{name}", metavar="NAMES", help=f"{what}, comma-separated")
    parser.add_argument("--max-pages", type=non_negative, default=0, help="stop after N pages (0: no limit)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="the PAGEMAP_SCAN ioctl, or reading /proc/PID/pagemap entries (slow on huge "
                             "sparse mappings: 1-2 GB/s of entries per core, 8 bytes per page; a progress bar "
                             "shows on a terminal; cannot report HUGE); default auto: the ioctl where it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    names = {k: parse_categories(getattr(args, k)) for k in ("required", "anyof", "excluded")}
    asked_return = args.__dict__["return"]
    asked = names["required"] | names["anyof"] | names["excluded"] | parse_categories(asked_return)
    proc = Process(args.pid)
    with open_backend(proc, args.backend) as be:
        start, end = args.start, args.end
        if start is None or end is None:
            lo, hi = default_range(proc)
            if start is not None and start >= hi:
                raise ScanError(f"--start {start:#x} is past the last VMA (which ends at {hi:#x})")
            if end is not None and end <= lo:
                raise ScanError(f"--end {end:#x} is before the first VMA (which starts at {lo:#x})")
            start = lo if start is None else start
            end = hi if end is None else end
        returned = be.supported if asked_return is None else parse_categories(asked_return)
        masks = ScanMasks(returned=returned, **names)
        # Every argument error before any note.
        validate_range(start, end)
        be.check_masks(masks)
        if Category.SOFT_DIRTY & asked and not probe_soft_dirty():
            print("dumper: note: soft-dirty tracking does not work on this kernel: SOFT_DIRTY is never set",
                  file=sys.stderr)
        result = scan_range(be, start, end, masks, max_pages=args.max_pages)
    if args.json:
        print(json.dumps(result.to_json(args.pid)))
        return 0
    print(f"pid {args.pid} ({proc.name}), backend {result.backend}, "
          f"range {start:#x}-{end:#x}, walk_end {result.walk_end:#x}")
    print(f"{'start':>18} {'end':>18} {'pages':>10} {'size':>10}  categories")
    for r in result:
        print(f"{r.start:#18x} {r.end:#18x} {r.nr_pages:>10} {human_bytes(r.end - r.start):>10}  "
              f"{','.join(Category.names(r.categories)) or '-'}")
    print(f"{plural(len(result), 'region')}, {plural(result.nr_pages, 'page')} "
          f"({human_bytes(result.nr_pages * PAGE_SIZE)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("scan", argv)

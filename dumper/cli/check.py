"""``dumper check [--json]``: what the running kernel supports, probed for real."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from ..scan.features import kernel_features


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def run(args: argparse.Namespace) -> int:
    f = kernel_features()
    if args.json:
        print(json.dumps(f, indent=2))
        return 0
    pm = f["pagemap"]
    rows = [
        ("kernel", f"{f['kernel']} ({f['machine']}, {f['page_size']} B pages)"),
        ("PAGEMAP_SCAN ioctl", _yes(f["pagemap_scan"])),
        ("  categories", ",".join(f["pagemap_scan_categories"]) or "-"),
        ("pagemap PFNs visible", _yes(pm["pfn_visible"])),
        ("  zero page PFN", str(pm["zero_pfn"]) if pm["zero_pfn"] is not None else "unknown"),
        ("  huge zero PFN", str(pm["huge_zero_pfn"]) if pm["huge_zero_pfn"] is not None else "not seen"),
        ("  guard regions", pm["guard"]),
        ("soft-dirty tracking", _yes(f["soft_dirty"])),
        ("userfaultfd WP_ASYNC", _yes(f["uffd_wp_async"])),
        ("swap devices", ", ".join(d["name"] for d in f["swap"]["devices"]) or "none"),
        ("THP", f["thp"]["enabled"] or "unavailable"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("check", argv)

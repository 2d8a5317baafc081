"""``dumper flatten DIR OUT``: one standalone checkpoint from an incremental chain."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Sequence

from ..dump.flatten import flatten
from .options import human_bytes, plural


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="newest checkpoint of the chain")
    parser.add_argument("out", help="checkpoint directory to create")
    parser.add_argument("--no-compress", action="store_true", help="write CRIU's raw pages-1.img")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing checkpoint at OUT (an empty directory OUT is filled without it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    r = flatten(args.dir, args.out, compress=not args.no_compress, force=args.force)
    if args.json:
        print(json.dumps(dataclasses.asdict(r), indent=2))
        return 0
    print(f"flattened {r.source} (chain of {r.chain_length}) into {r.dest}: "
          f"{plural(r.pages, 'page')}, {human_bytes(r.bytes_written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("flatten", argv)

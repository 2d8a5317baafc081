"""``dumper pre-dump PID -D DIR [--parent PREV]``: pages only, like CRIU's pre-dump.

The process is frozen only while tracking is reset and the pages to copy are
listed; they are copied after it runs again. The result is not a complete
checkpoint: finish with ``dumper dump PID -D FINAL --parent DIR``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from . import dump as dump_cli


def configure(parser: argparse.ArgumentParser) -> None:
    dump_cli.configure(parser, pre_dump=True)  # a pre-dump always arms tracking
    parser.set_defaults(pre_dump=True, track_mem=True)


def run(args: argparse.Namespace) -> int:
    return dump_cli.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("pre-dump", argv)

"""``dumper demo``: run the bundled example target, dump it, show the result."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .. import demo_target
from ..dump import dump
from ..errors import DumperError
from . import dump as dump_cli
from . import show as show_cli


def _example_target() -> list[str]:
    """The example target that ships in the package (dumper/demo_target.py),
    run by its file name: nothing from a checkout is needed."""
    return [sys.executable, str(Path(demo_target.__file__).resolve())]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dense-mib", type=_positive, default=64, help="dense memory of the example (MiB, >= 1)")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the checkpoint in DIR instead of a temp dir (an empty directory DIR is filled)")
    parser.add_argument("--force", action="store_true", help="with --keep: replace an existing checkpoint in DIR")


def run(args: argparse.Namespace) -> int:
    if args.force and not args.keep:
        raise DumperError("--force only applies to --keep DIR")
    cmd = _example_target() + ["--dense-mib", str(args.dense_mib), "--until-eof"]
    print(f"$ {' '.join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))}")
    target = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tmp = tempfile.mkdtemp(prefix="dumper-demo-")
    dest = args.keep or os.path.join(tmp, "checkpoint")
    try:
        line = target.stdout.readline().strip()
        if not line.startswith("READY"):
            raise DumperError(f"the example target did not start (it said {line!r})")
        print(f"example target running as pid {target.pid}: {args.dense_mib} MiB dense memory, a 16 TiB sparse "
              "reservation with 1000 touched pages, a private file mapping, 4 threads")
        print(f"$ dumper dump {target.pid} -D {dest}" + (" --force" if args.force else ""))
        result = dump(target.pid, dest, force=args.force, progress=sys.stderr.isatty())
        print("\n".join(dump_cli.summary_lines(result)))
        state = open(f"/proc/{target.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        print(f"target state after the dump: {state} (running again)")
        print(f"$ dumper show {dest}")
        show_cli.run(argparse.Namespace(dir=dest, json=False, all_vmas=False))
        return 0
    finally:
        target.kill()
        target.wait()
        for f in (target.stdin, target.stdout):
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("demo", argv)

"""``dumper restore DIR [--leave-stopped] [--criu PATH] [-- CRIU-OPTIONS...]``.

Brings a checkpoint back with CRIU's own ``criu restore`` (CRIU >= 4.0; see
:mod:`dumper.restore`) and prints the restored pid. The process is not a
child of dumper: it is re-parented to init (or the nearest child subreaper)
when CRIU exits, and keeps its original pid.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ..errors import RestoreError
from .options import positive


def _split_criu_options(parser: argparse.ArgumentParser) -> None:
    """Everything after the first ``--`` goes to CRIU as ``criu_args``.

    argparse alone cannot do it: a ``nargs="*"`` positional after DIR is
    matched (empty) as soon as DIR is, so ``DIR --json -- -v4`` would leave
    ``-v4`` unrecognised. Both the subcommand action and ``parse_args`` go
    through this parser's ``parse_known_args``."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        extra: list[str] = []
        if "--" in args:
            i = args.index("--")
            args, extra = args[:i], args[i + 1 :]
        ns, rest = parse(args, namespace)
        ns.criu_args = extra
        return ns, rest

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s DIR [options] [-- CRIU-OPTION...]"
    parser.epilog = "Options after -- go to criu restore unchanged (e.g. -- --tcp-established)."
    parser.add_argument("dir", help="checkpoint directory (dumper's, or CRIU's own)")
    _split_criu_options(parser)
    parser.add_argument("--leave-stopped", action="store_true",
                        help="leave the restored process stopped (state T); SIGCONT resumes it")
    parser.add_argument("--criu", metavar="PATH",
                        help="the CRIU binary (default: $DUMPER_CRIU, then build/criu-4.2/criu/criu of the "
                             "source tree, then criu on PATH); CRIU >= 4.0")
    job = parser.add_mutually_exclusive_group()
    job.add_argument("--shell-job", dest="shell_job", action="store_true", default=None,
                     help="pass --shell-job to CRIU (default: when the root task is not a session leader)")
    job.add_argument("--no-shell-job", dest="shell_job", action="store_false",
                     help="never pass --shell-job")
    parser.add_argument("--tmp-dir", metavar="DIR",
                        help="where the raw pages of a compressed checkpoint are written for CRIU "
                             "(default: $TMPDIR or /tmp; removed afterwards)")
    parser.add_argument("--threads", type=positive, default=None, metavar="N",
                        help="decompression threads (default: up to 4)")
    parser.add_argument("--log", metavar="FILE", help="keep CRIU's restore log (-v4) in FILE")
    parser.add_argument("--timeout", type=positive, default=None, metavar="SECONDS",
                        help="kill CRIU and what it restored if it has not finished by then (default: no limit)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ..restore import restore

    try:
        result = restore(
            args.dir, leave_stopped=args.leave_stopped, criu=args.criu, criu_args=args.criu_args,
            shell_job=args.shell_job, tmp_dir=args.tmp_dir, threads=args.threads, log=args.log,
            timeout=args.timeout,
        )
    except RestoreError as err:
        for line in err.details:
            print(f"  {line}", file=sys.stderr)
        raise
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        state = "stopped (SIGCONT resumes it)" if result.leave_stopped else "running"
        print(f"restored pid {result.pid} from {result.dir}: {state}; CRIU {result.criu_version}, "
              f"{result.total_s:.2f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("restore", argv)

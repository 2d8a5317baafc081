"""The ``dumper`` command line: one module per subcommand.

Each subcommand module defines ``configure(parser)`` (its arguments),
``run(args) -> int`` and ``main(argv) -> int`` (run it alone). Expected
failures (:class:`dumper.DumperError`) print one line and exit non-zero;
``--traceback`` (or ``DUMPER_TRACEBACK=1``) shows the stack as well.
Warnings (:class:`dumper.DumperWarning`) print one line each,
``dumper: warning: ...``, and the command goes on.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from typing import Callable, Sequence

from ..errors import DumperError, DumperWarning

__all__ = ["main", "COMMANDS", "build_parser", "run_command"]

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("check", "report what the running kernel supports"),
    "scan": ("scan", "list page regions of a process with the mask scanner"),
    "dump": ("dump", "checkpoint a process and its children into an image directory criu restore accepts"),
    "pre-dump": ("predump", "copy pages now and arm write tracking, for a later dump --parent"),
    "untrack": ("untrack", "remove the uffd-wp write tracking a dump armed in a process"),
    "flatten": ("flatten", "write one standalone checkpoint from an incremental chain"),
    "show": ("show", "summarise a checkpoint directory"),
    "cat": ("cat", "print memory of a checkpointed process as it was at dump time"),
    "verify": ("verify", "check a checkpoint's frames and structure (and a live process with --pid)"),
    "diff": ("diff", "list the pages that differ between two checkpoints"),
    "decode": ("decode", "print one image file as JSON (like crit decode)"),
    "mems": ("mems", "list the VMAs of a checkpoint (like crit x DIR mems)"),
    "rss": ("rss", "list pagemap entries with their VMAs (like crit x DIR rss)"),
    "restore": ("restore", "bring a checkpoint back as a running process, with CRIU's criu restore"),
    "export": ("export", "write a checkpoint as a CRIU image set (criu restore, crit) or as ELF cores (gdb)"),
    "core": ("core", "write an ELF core file of a running process, as gcore does (gdb and lldb open it)"),
    "demo": ("demo", "dump a bundled example process and show the result"),
}

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _module(name: str):
    return importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")


def _add_common(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    # SUPPRESS in subcommands, so `dumper --traceback CMD` is not reset by CMD's default.
    parser.add_argument("--traceback", action="store_true", help="show a traceback on errors",
                        default=argparse.SUPPRESS if sub else False)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given ``argv``, only the subcommand it names
    is configured (its module imported): ``dumper show`` must not load the
    dump machinery, nor ``dumper --version``/``--help`` any (the list of
    subcommands needs only their one-line help). Without ``argv``, every one
    is configured."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="dumper", description="CRIU-style process memory checkpoints.")
    parser.add_argument("--version", action="version", version=f"dumper {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if argv is None:
        only = set(COMMANDS)
    else:  # the top-level options take no value: the first other word names the subcommand
        only = {next((a for a in argv if not a.startswith("-")), None)} & set(COMMANDS)
    for name, (_, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _add_common(p, sub=True)
        if name in only:
            _module(name).configure(p)
    return parser


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning expected failures into one line on stderr."""
    show_tb = getattr(args, "traceback", False) or os.environ.get("DUMPER_TRACEBACK") == "1"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DumperWarning)
            show_other = warnings.showwarning

            def show(message, category, *rest, **kw) -> None:
                if issubclass(category, DumperWarning):
                    print(f"dumper: warning: {message}", file=sys.stderr)
                else:
                    show_other(message, category, *rest, **kw)

            warnings.showwarning = show
            return func(args)
    except DumperError as err:
        if show_tb:
            traceback.print_exc()
        print(f"dumper: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if show_tb:
            traceback.print_exc()
        print("dumper: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # SIGTERM/SIGHUP, turned into SystemExit(128 + signo)
        if isinstance(exc.code, int) and exc.code > 128:
            print(f"dumper: stopped by signal {exc.code - 128}", file=sys.stderr)
        raise
    except BrokenPipeError:
        # `dumper ... | head`: stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as err:
        if err.errno is None or getattr(err, "filename", None):
            raise
        # Writing our own output failed (`> /dev/full`, closed stdout).
        print(f"dumper: error: writing output: {err.strerror}", file=sys.stderr)
        return EXIT_ERROR


def subcommand_main(name: str, argv: Sequence[str] | None) -> int:
    """``main(argv)`` of one subcommand module."""
    mod = _module(name)
    parser = argparse.ArgumentParser(prog=f"dumper {name}", description=COMMANDS[name][1])
    _add_common(parser)
    mod.configure(parser)
    args = parser.parse_args(argv)
    return run_command(mod.run, args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser(sys.argv[1:] if argv is None else list(argv))
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while modules still load
        print("dumper: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

    def run_and_flush(a: argparse.Namespace) -> int:
        rc = _module(a.command).run(a)
        sys.stdout.flush()  # surface a failing write (/dev/full) inside run_command
        return rc

    return run_command(run_and_flush, args)

"""``dumper untrack PID``: remove the uffd-wp write tracking a dump armed.

Unregisters the ranges and closes the userfaultfd inside the process (found
through the checkpoint that armed it, or by its descriptor number).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

from ..errors import DumperError
from ..image import format as fmt
from ..image import load_inventory
from ..proc.freeze import Freezer, raise_on_termination
from ..proc.process import Process
from ..track import state as tracking_state
from ..track import uffd
from .options import pid


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=pid, help="tracked process")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("-D", "--images-dir", metavar="DIR", help="the last checkpoint that armed or reset tracking")
    src.add_argument("--fd", type=int, help="the process's userfaultfd descriptor number")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    proc = Process(args.pid)
    start_time = proc.stat().starttime
    if args.images_dir:
        inv = load_inventory(os.path.join(args.images_dir, fmt.INVENTORY_NAME))
        if inv.tracker != "uffd-wp" or not inv.HasField("uffd_fd"):
            raise DumperError(f"{args.images_dir} armed no uffd-wp tracking (tracker: {inv.tracker or 'none'})")
        if args.pid not in (inv.pids or [inv.root_pid]) or (
                inv.HasField("task_start_time") and inv.task_start_time != start_time):
            raise DumperError(f"{args.images_dir} is not a checkpoint of pid {args.pid} "
                              "(another process, or the pid was reused)")
        state = uffd.UffdTracking(inv.uffd_fd, [(r.start, r.end) for r in inv.tracked_ranges])
    else:
        last = tracking_state.load(args.pid, start_time)
        if last is None or last.uffd_fd != args.fd:
            raise DumperError(f"dumper armed no uffd-wp tracking on descriptor {args.fd} of pid {args.pid}")
        state = uffd.UffdTracking(args.fd, [])
    if not uffd.find_uffd(args.pid, state.fd):
        raise DumperError(f"descriptor {state.fd} of pid {args.pid} is not a userfaultfd: nothing to remove")
    with raise_on_termination(), Freezer(args.pid) as fz:
        if not state.ranges:  # unregister whatever carries VM_UFFD_WP
            state.ranges = [(v.start, v.end) for v in fz.process.vmas() if "uw" in v.vmflags]
        uffd.disarm(fz, state)
    tracking_state.clear(args.pid, start_time)
    if args.json:
        print(json.dumps({"pid": args.pid, "fd": state.fd, "ranges": [list(r) for r in state.ranges]}, indent=2))
        return 0
    print(f"removed uffd-wp tracking from pid {args.pid} (descriptor {state.fd} closed, "
          f"{len(state.ranges)} ranges unregistered)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("untrack", argv)

"""``dumper untrack PID``: remove the uffd-wp write tracking dumper armed.

Unregisters the ranges and closes the userfaultfd inside the process (the
injection runs in the warden process, :mod:`dumper.proc.warden`, so an
interrupted untrack leaves the process as it was). Which descriptor: the one
the state file records (descriptor and inode), the one a checkpoint names
(``-D``), or ``--fd N``; with none of them, every userfaultfd that is
recorded or that looks like dumper's (see :func:`dumper.track.uffd.dumper_uffds`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

from ..errors import DumperError
from ..image import format as fmt
from ..image import load_inventory
from ..proc.freeze import raise_on_termination
from ..proc.process import Process
from ..proc.warden import Warden
from ..track import state as tracking_state
from ..track import uffd
from .options import pid


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=pid, help="tracked process")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("-D", "--images-dir", metavar="DIR", help="the last checkpoint that armed or reset tracking")
    src.add_argument("--fd", type=int, help="the process's userfaultfd descriptor number")
    parser.add_argument("--json", action="store_true", help="print what was removed as JSON")


def _targets(args: argparse.Namespace, start_time: int) -> list[uffd.UffdTracking]:
    """The userfaultfds to remove, refusing any dumper did not make."""
    found = uffd.dumper_uffds(args.pid)  # fd -> (inode, looks like dumper's)
    last = tracking_state.load(args.pid, start_time)
    recorded = {last.uffd_fd: last.uffd_ino} if last is not None and last.uffd_fd is not None else {}

    def recorded_here(fd: int) -> bool:
        return fd in found and fd in recorded and recorded[fd] in (None, found[fd][0])

    if last is not None and last.uffd_fd is not None and last.uffd_fd not in found:
        tracking_state.clear(args.pid, start_time)  # what it names is gone already
        recorded = {}
    if args.images_dir:
        inv = load_inventory(os.path.join(args.images_dir, fmt.INVENTORY_NAME))
        if inv.tracker != "uffd-wp" or not inv.HasField("uffd_fd"):
            raise DumperError(f"{args.images_dir} armed no uffd-wp tracking (tracker: {inv.tracker or 'none'})")
        if args.pid not in (inv.pids or [inv.root_pid]) or (
                inv.HasField("task_start_time") and inv.task_start_time != start_time):
            raise DumperError(f"{args.images_dir} is not a checkpoint of pid {args.pid} "
                              "(another process, or the pid was reused)")
        if inv.uffd_fd not in found:
            raise DumperError(f"descriptor {inv.uffd_fd} of pid {args.pid} is not a userfaultfd any more: "
                              "nothing to remove")
        return [uffd.UffdTracking(inv.uffd_fd, [(r.start, r.end) for r in inv.tracked_ranges],
                                  ino=found[inv.uffd_fd][0])]
    if args.fd is not None:
        if args.fd not in found:
            raise DumperError(f"descriptor {args.fd} of pid {args.pid} is not a userfaultfd: nothing to remove")
        # Named by the user: a record, or the way dumper sets its own up, is enough.
        if not (recorded_here(args.fd) or found[args.fd][1]):
            raise DumperError(f"descriptor {args.fd} of pid {args.pid} is a userfaultfd dumper did not make "
                              "(no record names it, and it is not set up as dumper sets its own up)")
        return [uffd.UffdTracking(args.fd, [], ino=found[args.fd][0])]
    fds = sorted(fd for fd in found if recorded_here(fd))
    if not fds:
        like = sorted(fd for fd, (_, ours) in found.items() if ours)
        if like:
            raise DumperError(f"no record says dumper armed tracking in pid {args.pid}, but descriptor {like[0]} "
                              "is a userfaultfd set up as dumper sets its own up; if an earlier dumper left "
                              f"it, `dumper untrack {args.pid} --fd {like[0]}` removes it")
        others = f" ({len(found)} userfaultfd(s) of its own left alone)" if found else ""
        raise DumperError(f"pid {args.pid} has no uffd-wp tracking armed by dumper{others}")
    return [uffd.UffdTracking(fd, [], ino=found[fd][0]) for fd in fds]


def run(args: argparse.Namespace) -> int:
    proc = Process(args.pid)
    start_time = proc.stat().starttime
    tracking_state.clean_stale()
    targets = _targets(args, start_time)
    removed = []
    with raise_on_termination(), Warden() as w:
        w.freeze(args.pid, tree=False)
        for state in targets:
            # Ranges the checkpoint names, or (empty) whatever carries VM_UFFD_WP.
            ranges = w.call(uffd.disarm_call, args.pid, state, start_time=start_time)
            removed.append({"fd": state.fd, "ranges": [list(r) for r in ranges]})
        w.thaw("resume")
        w.keep()
    if args.json:
        print(json.dumps({"pid": args.pid, "removed": removed}))
    else:
        for r in removed:
            print(f"removed uffd-wp tracking from pid {args.pid} (descriptor {r['fd']} closed, "
                  f"{len(r['ranges'])} ranges unregistered)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("untrack", argv)

"""Progress bars by bytes on stderr (tqdm), one way for every command."""

from __future__ import annotations

import os
import sys


def byte_bar(total: int, desc: str, *, delay: float = 1.0):
    """A tqdm bar of ``total`` bytes labelled ``desc``, on stderr, cleared
    when closed, shown only once ``delay`` seconds have passed.

    A terminal that reports a 0x0 size (a new pty, a serial console) gets
    80x24: tqdm would print nothing there.
    """
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        ncols, nrows = size.columns or 80, size.lines or 24
    except (OSError, ValueError):
        ncols = nrows = None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc=desc,
                delay=delay, leave=False, ncols=ncols, nrows=nrows)

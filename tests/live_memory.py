"""Comparing a checkpoint's pages with the memory of the process it saved.

A process dumped with ``--leave-stopped`` (or stopped after a dump) can
differ from its checkpoint in one place the process did not write: the
kernel rewrites a thread's rseq cpu ids (``struct rseq`` cpu_id_start,
cpu_id, node_id, mm_cid) when it returns to user space after moving CPU,
which the thaw can let happen before the stop lands. ``dumper verify``
ignores those bytes (dumper.cli.verify.only_kernel_written); tests that
compare pages themselves do the same through :func:`differing_pages`.
"""

from __future__ import annotations

import os
from pathlib import Path

from dumper.cli.verify import only_kernel_written
from dumper.image.checkpoint import open_checkpoint


def differing_pages(ck: Path, pid: int, pages: dict[int, bytes]) -> list[int]:
    """Addresses of ``pages`` (``{vaddr: bytes}``) that differ from live
    process ``pid`` other than in the rseq fields checkpoint ``ck`` records
    for its threads."""
    with open_checkpoint(ck) as c:
        rseq = c.rseq_areas(pid)
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        bad = []
        for a, data in pages.items():
            live = os.pread(fd, len(data), a)
            if live != data and not only_kernel_written(data, live, a, rseq):
                bad.append(a)
        return bad
    finally:
        os.close(fd)

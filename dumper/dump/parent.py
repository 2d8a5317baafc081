"""The parent of an incremental dump: which pages it (with its own chain) holds.

CRIU's rule (criu/mem.c, ``check_pagehole_in_parent``): a page may be written
as a PE_PARENT hole only if the parent image covers it with a PE_PRESENT or
PE_PARENT entry. The parent's own PE_PARENT entries were checked the same way
when it was written, so the parent's pagemap alone answers the question.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import DumpError, ImageError
from ..image.mapped import ImageDir
from ..image import format as fmt
from ..image import load_inventory, load_pagemap
from ..image.checkpoint import check_not_a_parent, children_of  # noqa: F401  (re-exported)
from ..image.pb import inventory_pb2
from ..kernel.libc import PAGE_SIZE

__all__ = ["ParentInfo", "load_parent", "check_parent_placement", "chain_paths",
           "children_of", "check_not_a_parent"]


@dataclass(slots=True)
class ParentInfo:
    """``path`` of the parent directory, its inventory, and the ranges
    ``[start_pages[i], end_pages[i])`` its pagemap covers for ``pid``, in
    pages (uint64 page numbers: an entry ending at 2**64 fits), sorted, merged."""

    path: str
    inventory: inventory_pb2.inventory_entry
    start_pages: np.ndarray
    end_pages: np.ndarray


def chain_paths(path: str | os.PathLike) -> list[str]:
    """Real paths of ``path`` and of every checkpoint its ``parent`` links
    reach (stops at a loop or a missing link; the readers report those)."""
    seen: list[str] = []
    cur = os.path.realpath(path)
    while cur not in seen and os.path.isdir(cur):
        seen.append(cur)
        link = os.path.join(cur, fmt.PARENT_LINK)
        if not os.path.islink(link):
            break
        cur = os.path.realpath(link)
    return seen


def check_parent_placement(parent: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Refuse a parent the readers could not follow, or one ``dest`` would replace.

    The readers follow ``parent`` links only inside the directory holding
    the checkpoint (a link leaving it could point anywhere), so the parent
    must live next to ``dest``. With ``--force``, ``dest`` must not be the
    parent or any checkpoint of its chain. Raises DumpError.
    """
    dest_real = os.path.realpath(dest)
    if dest_real in chain_paths(parent):
        raise DumpError(f"{dest} is {parent} or one of its ancestors: it cannot be replaced by a child of it")
    if os.path.dirname(os.path.realpath(parent)) != os.path.dirname(dest_real):
        raise DumpError(f"the parent {parent} must be in the same directory as {dest} "
                        "(readers follow parent links only within it)")


def load_parent(path: str | os.PathLike, pid: int, start_time: int) -> ParentInfo:
    """Read what a dump of ``pid`` needs from checkpoint ``path``.

    Raises DumpError when ``path`` is no checkpoint of this very process
    (another pid, or the pid was reused: the start time differs), and
    ImageError when its images are damaged (opened as every reader opens
    them: through the directory, no symlinked image files).
    """
    path = os.fspath(path)
    try:
        d = ImageDir(path)
    except ImageError as err:
        raise DumpError(f"parent {path!r} is not a checkpoint directory ({err.msg})") from err
    try:
        if not d.exists(fmt.INVENTORY_NAME):
            raise DumpError(f"parent {path!r} is not a checkpoint directory (no {fmt.INVENTORY_NAME})")
        inv = load_inventory(os.path.join(path, fmt.INVENTORY_NAME), d.open(fmt.INVENTORY_NAME))
        if pid not in (inv.pids or [inv.root_pid]):
            raise DumpError(f"parent {path!r} is a checkpoint of pid {inv.root_pid}, not {pid}")
        if inv.HasField("task_start_time") and inv.task_start_time != start_time:
            raise DumpError(f"parent {path!r} was taken of an earlier process with pid {pid} (pid reused)")
        name = fmt.pagemap_name(pid)
        _, entries = load_pagemap(os.path.join(path, name), f=d.open(name))
    finally:
        d.close()
    ps = np.uint64(PAGE_SIZE)
    starts = entries.vaddr // ps
    ends = entries.end_pages(PAGE_SIZE)
    if len(starts) > 1:  # merge touching entries so coverage tests cross them
        brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        starts = starts[np.concatenate(([0], brk))]
        ends = ends[np.concatenate((brk - 1, [len(ends) - 1]))]
    return ParentInfo(path, inv, starts, ends)

"""Facts a dump records for the readers, gathered while the target is frozen.

* :func:`mapped_file_identities` / :func:`apply_file_identities`: size, mtime
  and ctime (ns) of each file behind a file VMA, from
  ``/proc/PID/map_files/START-END`` (the mapped file itself, whatever its name
  now): one ``stat`` per VMA, no file data read. A reader then refuses to
  take untouched private pages from a file that was written since
  (:mod:`dumper.image.mapped`).
* :func:`with_guards` / :func:`split_guards`: MADV_GUARD_INSTALL ranges
  (Linux 6.16 PAGEMAP_SCAN category GUARD; pagemap bit 58 since 6.15) found
  by the dump's own scan, recorded as CRIU 4.2 does (criu/mem.c
  ``collect_madv_guards``): pseudo-VMAs with status VMA_AREA_GUARD only, at
  the end of the VMA list.
"""

from __future__ import annotations

import numpy as np

from ..scan import Category
from ..scan.categories import ScanMasks
from . import format as fmt
from .mapped import FileIdentity, file_identity, record_file_identity
from .pb import vma_pb2

__all__ = ["mapped_file_identities", "apply_file_identities", "with_guards", "split_guards", "guard_vma_entry"]


def mapped_file_identities(pid: int, vmas) -> dict[tuple[int, int], FileIdentity]:
    """``{(start, end): FileIdentity}`` for every VMA of ``vmas`` (objects
    with ``start``, ``end``, ``inode``, ``path``) that maps a file. A VMA
    whose file cannot be stat'ed (gone meanwhile, no access) is left out:
    readers then check device and inode only."""
    out = {}
    for v in vmas:
        if not v.inode or not v.path.startswith("/"):
            continue
        try:
            out[(v.start, v.end)] = file_identity(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}")
        except OSError:
            continue
    return out


def apply_file_identities(entries, ids: dict[tuple[int, int], FileIdentity]) -> None:
    """Record ``ids`` in the matching ``vma_entry`` messages of ``entries``
    (fields file_size, file_mtime_ns, file_ctime_ns) when the device and
    inode match what the VMA records (the file was not replaced between)."""
    for e in entries:
        ident = ids.get((e.start, e.end))
        if ident is None:
            continue
        if (ident.dev_major, ident.dev_minor, ident.inode) == (e.dev_major, e.dev_minor, e.inode):
            record_file_identity(e, ident)


def with_guards(masks: ScanMasks, supported: Category) -> ScanMasks:
    """``masks`` that also select guard pages (and report them as GUARD),
    when the scanner knows the category; else ``masks`` unchanged."""
    g = Category.GUARD
    if not supported & g:
        return masks
    return ScanMasks(required=masks.required, anyof=masks.anyof | g, excluded=masks.excluded & ~g,
                     returned=masks.returned | g)


def guard_vma_entry(start: int, end: int) -> vma_pb2.vma_entry:
    """CRIU's guard pseudo-VMA for ``[start, end)`` (bytes, end-exclusive)."""
    return vma_pb2.vma_entry(start=start, end=end, pgoff=0, shmid=0, prot=0, flags=0,
                             status=fmt.VMA_AREA_GUARD, fd=-1)


def split_guards(regions: np.ndarray) -> tuple[np.ndarray, list[vma_pb2.vma_entry]]:
    """Split scan regions (REGION_DTYPE) into ``(the others, guard
    pseudo-VMAs)``; adjacent guard regions are merged."""
    if not len(regions):
        return regions, []
    is_guard = (regions["categories"] & np.uint64(int(Category.GUARD))) != 0
    if not is_guard.any():
        return regions, []
    guards: list[vma_pb2.vma_entry] = []
    for s, e in zip(regions["start"][is_guard].tolist(), regions["end"][is_guard].tolist()):
        if guards and guards[-1].end == s:
            guards[-1].end = e
        else:
            guards.append(guard_vma_entry(s, e))
    return regions[~is_guard], guards

"""VMA lists as CRIU 4.2 writes them (criu/proc_parse.c parse_smaps and
vma_area_is rules), for our own images and for exports: what `criu
restore` expects to find."""

from __future__ import annotations

from . import format as fmt
from .pb import mm_pb2

__all__ = ["as_criu_lists_them"]

FILE_VMA = fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED
MAP_ANONYMOUS = fmt.FLAG_TABLES["mmap.flags"]["MAP_ANONYMOUS"]


def as_criu_lists_them(mm: mm_pb2.mm_entry) -> None:
    """Make the VMA list read as CRIU 4.2 writes it (criu/proc_parse.c):
    kernel-provided anonymous mappings ([vvar], [vsyscall]) carry
    VMA_ANON_PRIVATE and MAP_ANONYMOUS, and consecutive [vvar] VMAs
    ([vvar] + [vvar_vclock] on 6.x kernels) are one VMA."""
    special = fmt.VMA_AREA_VVAR | fmt.VMA_AREA_VSYSCALL
    drop = []
    prev = None
    for i, v in enumerate(mm.vmas):
        st = v.status
        if st & special and not st & FILE_VMA:
            v.status |= fmt.VMA_ANON_PRIVATE
            v.flags |= MAP_ANONYMOUS
        if prev is not None and prev.status & fmt.VMA_AREA_VVAR and st & fmt.VMA_AREA_VVAR and prev.end == v.start:
            prev.end = v.end
            drop.append(i)
            continue
        prev = v
    for i in reversed(drop):  # a few at most: [vvar_vclock]
        del mm.vmas[i]

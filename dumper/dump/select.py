"""Which VMAs and which pages a dump saves (CRIU's rules, criu/mem.c).

VMA rules: private anonymous and private file-backed VMAs are dumped page by
page; ``[vdso]`` is dumped whole (its pages are not anonymous, so the page
rule would skip them); ``[vvar]``/``[vvar_vclock]``, ``[vsyscall]``, VM_IO
and VM_PFNMAP VMAs and MAP_DROPPABLE memory are skipped. Shared memory
(MAP_SHARED anonymous or ``/dev/zero``, memfd, SysV shm: a shmem inode,
criu/proc_parse.c) is mode "shmem": its contents are saved once per object
(:mod:`dumper.dump.shmem`), not in the process's pagemap; CRIU 4.2 marks
the first two kinds VMA_FILE_SHARED | VMA_AREA_MEMFD, SysV VMA_ANON_SHARED |
VMA_AREA_SYSVIPC. MAP_SHARED mappings of ordinary files are skipped: the
file holds their contents (CRIU saves none either).

Page rule: PRESENT or SWAPPED, and not FILE (still the page cache's), not
PFNZERO (the zero page), not GUARD (a marker; reading it fails).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..image import format as fmt
from ..kernel.libc import PAGE_SIZE
from ..proc.fds import memfd_dev
from ..proc.maps import Vma
from ..scan import Category, ScanMasks
from . import intervals as iv
from .shmem import SYSV_REASON

__all__ = ["VmaPlan", "classify", "classify_all", "is_shmem", "dump_masks", "drop_uffd_markers",
           "SHARED_FILE_REASON"]

SHARED_FILE_REASON = "shared file mapping: contents live in the file"

@dataclass(slots=True)
class VmaPlan:
    """A VMA with its CRIU status bits and what the dump does with it.

    ``mode`` is "pages" (select pages with the scanner), "whole" (every
    page, e.g. [vdso]), "shmem" (a shared memory object's: saved with the
    object) or "skip"; ``reason`` says why contents are skipped.
    """

    vma: Vma
    status: int
    mode: str
    reason: str = ""
    unrestorable: str = ""  # why `criu restore` could not rebuild it from our images, if so


def classify(vma: Vma) -> VmaPlan:
    """CRIU status bits and the dump mode for one VMA."""
    name = vma.special
    st = 0
    # As CRIU 4.2 marks them (criu/proc_parse.c): kernel-provided areas are
    # anonymous private, the main stack is plain REGULAR (MAP_GROWSDOWN tells it).
    if name in ("[vvar]", "[vvar_vclock]"):
        return VmaPlan(vma, fmt.VMA_AREA_REGULAR | fmt.VMA_AREA_VVAR | fmt.VMA_ANON_PRIVATE, "skip",
                       "vvar: provided by the kernel")
    if name == "[vsyscall]" or not vma.user:
        return VmaPlan(vma, fmt.VMA_AREA_VSYSCALL | fmt.VMA_ANON_PRIVATE, "skip", "vsyscall: provided by the kernel")
    if name == "[uprobes]":
        return VmaPlan(vma, fmt.VMA_AREA_UPROBES, "skip", "uprobes: provided by the kernel")
    st |= fmt.VMA_AREA_REGULAR
    if name == "[vdso]":
        return VmaPlan(vma, st | fmt.VMA_AREA_VDSO | fmt.VMA_ANON_PRIVATE, "whole")
    if name == "[heap]":
        st |= fmt.VMA_AREA_HEAP
    if vma.shared:
        if "ht" in vma.vmflags:  # hugetlbfs: SEEK_DATA would see every page as data
            return VmaPlan(vma, st | fmt.VMA_FILE_SHARED | fmt.VMA_AREA_MEMFD, "skip",
                           "MAP_HUGETLB shared memory: contents are not saved",
                           "MAP_HUGETLB shared memory is not saved")
        if is_shmem(vma):
            if vma.path.startswith("/SYSV"):
                return VmaPlan(vma, st | fmt.VMA_ANON_SHARED | fmt.VMA_AREA_SYSVIPC, "shmem", unrestorable=SYSV_REASON)
            return VmaPlan(vma, st | fmt.VMA_FILE_SHARED | fmt.VMA_AREA_MEMFD, "shmem")
        # the file holds the contents; CRIU maps it again
        return VmaPlan(vma, st | fmt.VMA_FILE_SHARED, "skip", SHARED_FILE_REASON)
    st |= fmt.VMA_FILE_PRIVATE if vma.file_backed else fmt.VMA_ANON_PRIVATE
    if vma.io or vma.pfnmap:
        return VmaPlan(vma, st, "skip", "VM_IO/VM_PFNMAP: device memory", "device memory cannot be saved")
    if "dp" in vma.vmflags:
        return VmaPlan(vma, st, "skip", "MAP_DROPPABLE: contents may be dropped anyway")
    if vma.path.startswith("/[aio]"):
        return VmaPlan(vma, st, "pages", unrestorable="AIO rings are not saved")
    return VmaPlan(vma, st, "pages")


def is_shmem(vma: Vma) -> bool:
    """True for a VMA backed by a shmem inode of the kernel's internal
    mount: shared anonymous, ``/dev/zero`` shared, memfd, SysV shm (CRIU's
    is_anon_shmem_map / is_memfd: the device tells, not the name)."""
    return (vma.dev_major, vma.dev_minor) == (os.major(memfd_dev()), os.minor(memfd_dev()))


def classify_all(vmas: list[Vma]) -> list[VmaPlan]:
    """:func:`classify` for a whole VMA list. What classify looks at repeats
    from VMA to VMA (name, VmFlags, sharing), so each distinct combination
    is classified once: 64,000 VMAs cost a few distinct calls."""
    cache: dict[tuple, VmaPlan] = {}
    out = []
    for v in vmas:
        key = (v.path, v.vmflags, v.perms[3], v.inode != 0, v.user, v.dev_major, v.dev_minor)
        proto = cache.get(key)
        if proto is None:
            proto = cache[key] = classify(v)
        out.append(VmaPlan(v, proto.status, proto.mode, proto.reason, proto.unrestorable))
    return out


def dump_masks(supported: Category) -> ScanMasks:
    """anyof PRESENT|SWAPPED, excluded FILE|PFNZERO|GUARD as far as supported.

    Without PFNZERO (PFNs hidden) zero pages are dumped as data, like CRIU;
    without GUARD, guard markers look SWAPPED and are caught at read time.
    """
    excluded = (Category.FILE | Category.PFNZERO | Category.GUARD) & supported
    return ScanMasks(anyof=Category.PRESENT | Category.SWAPPED, excluded=excluded, returned=Category(0))


def drop_uffd_markers(pid: int, starts: np.ndarray, ends: np.ndarray, cats: np.ndarray,
                      marker_vmas: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Runs without the uffd-wp *markers* in them: a marker (SWAPPED, not
    WRITTEN, in a VMA registered for uffd-wp — ours or the target's own)
    holds no data. Only those few runs are looked up in pagemap
    (:func:`dumper.track.uffd.marker_mask`). ``cats`` must carry WRITTEN
    and SWAPPED; returns ``(starts, ends, cats)``."""
    suspect = ((cats & np.uint64(Category.SWAPPED)) != 0) & ((cats & np.uint64(Category.WRITTEN)) == 0)
    if not suspect.any() or not len(marker_vmas[0]):
        return starts, ends, cats
    s_idx = np.flatnonzero(suspect)
    ms, me = iv.intersect((starts[s_idx], ends[s_idx]), marker_vmas)
    if not len(ms):
        return starts, ends, cats
    from ..track.uffd import marker_mask  # loaded only where markers may be: an import while frozen costs ms

    masks = marker_mask(pid, [(int(s), int(e - s) // PAGE_SIZE) for s, e in zip(ms, me)])
    drop_s, drop_e = [], []
    for s, m in zip(ms.tolist(), masks):
        idx = np.flatnonzero(m)
        if idx.size:
            for grp in np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1):
                drop_s.append(s + int(grp[0]) * PAGE_SIZE)
                drop_e.append(s + (int(grp[-1]) + 1) * PAGE_SIZE)
    if not drop_s:
        return starts, ends, cats
    return iv.intersect((starts, ends), iv.subtract((starts, ends), iv.from_pairs(list(zip(drop_s, drop_e)))),
                        keep=cats)

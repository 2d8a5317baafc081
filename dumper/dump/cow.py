"""Private pages a tree still shares copy-on-write after fork, stored once.

After ``fork`` parent and child map the same physical page until one of
them writes it; a forked tree of N workers holds one copy of the memory
they did not write, and a dump that saves every process's pages as its own
(as CRIU does) saves N. Here the pages to copy of every process are looked
up in ``/proc/PID/pagemap`` (PFNs need CAP_SYS_ADMIN) while the tree is
frozen: a page whose entry is present and not PM_MMAP_EXCLUSIVE (or a swap
entry) is keyed by its frame number (or swap slot), and each key is stored
only by the first process of pstree order that has it. The others do not
copy it: their pagemap marks the range PE_COW and ``cow-PID.img`` says
where in the owner's stream the pages are (format in
:mod:`dumper.image.format`).

Equal frame numbers while every process is frozen mean the same page and
so the same bytes (KSM-merged pages included, which is as true). Pages are
read in the same freeze, so the owner's copy is what the others held.

Not used for ``--no-compress`` (CRIU reads those sets directly and knows no
PE_COW), for a pre-dump (its pages are copied after the thaw), for a single
process, or when pagemap hides frame numbers. Costs 8 bytes of pagemap read
per page to copy, in few large reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import KernelError, NoSuchProcess
from ..kernel.libc import PAGE_SIZE
from ..kernel.pagemap import PM_ENTRY_BYTES, PM_MMAP_EXCLUSIVE, PM_PFRAME_MASK, PM_PRESENT, PM_SWAP
from . import intervals as iv
from .memread import Extents

__all__ = ["CowSharing", "CowRuns", "stream_layout", "write_cow_refs"]

_U64 = np.uint64
_PS = _U64(PAGE_SIZE)
# Runs of pages to look up closer than this (in pages) are read as one window.
_GAP_PAGES = 8192
_WINDOW_PAGES = 1 << 18  # 2 MiB of pagemap entries per read at most


@dataclass(slots=True)
class CowRuns:
    """The ``cow_ref_entry`` runs of one process: ``vaddr`` (bytes),
    ``nr_pages``, ``pages_id`` and ``pages_off`` (pages), ascending; and
    ``lost``: ``(vaddr, nr_pages)`` runs whose owner could not read them
    (left out for this process too)."""

    vaddr: np.ndarray
    nr_pages: np.ndarray
    pages_id: np.ndarray
    pages_off: np.ndarray
    lost: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.vaddr)

    @property
    def pages(self) -> int:
        return int(self.nr_pages.sum()) if len(self.nr_pages) else 0


def _pages_of(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Every page address of the interval set (uint64 array)."""
    if not len(starts):
        return np.empty(0, _U64)
    counts = ((ends - starts) // _PS).astype(np.int64)
    base = np.repeat(starts, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return base + (np.arange(int(counts.sum()), dtype=np.int64) - first).astype(_U64) * _PS


def read_pagemap(path: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The pagemap entry of every page of ``(starts, ends)`` (bytes,
    sorted, disjoint) from ``path`` (``/proc/PID/pagemap``), in address
    order: runs close to each other are read as one window."""
    npages = ((ends - starts) // _PS).astype(np.int64)
    out = np.empty(int(npages.sum()), _U64)
    if not len(out):
        return out
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise NoSuchProcess(0, f"{path} is gone") from err
    except OSError as err:
        raise KernelError(err.errno, f"opening {path}") from err
    try:
        first = starts // _PS
        last = ends // _PS
        pos = 0
        i, n = 0, len(starts)
        while i < n:
            j = i + 1  # runs i..j-1 share one window
            while j < n and int(first[j]) - int(last[j - 1]) <= _GAP_PAGES and \
                    int(last[j]) - int(first[i]) <= _WINDOW_PAGES:
                j += 1
            lo, hi = int(first[i]), int(last[j - 1])
            buf = np.empty(hi - lo, _U64)
            mv = memoryview(buf).cast("B")
            got = 0
            while got < len(mv):
                k = os.preadv(fd, [mv[got:]], lo * PM_ENTRY_BYTES + got)
                if k <= 0:
                    raise KernelError(5, f"reading {path}", "short read")
                got += k
            for r in range(i, j):
                a, b = int(first[r]) - lo, int(last[r]) - lo
                out[pos:pos + b - a] = buf[a:b]
                pos += b - a
            i = j
    except OSError as err:
        raise KernelError(err.errno, f"reading {path}") from err
    finally:
        os.close(fd)
    return out


class CowSharing:
    """The plan (:meth:`plan`, frozen, before the copy) and the runs each
    process writes (:meth:`runs`, after the copy). ``processes`` are the
    session's ProcessDump objects (``pid``, ``proc``, ``copy_iv``,
    ``extents``...), root first, parents before children."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        # pid -> (page vaddrs, owner index, owner page vaddrs), ascending by vaddr
        self._refs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.pages_shared = 0
        self.lookup_ns = 0

    def plan(self, processes: list) -> None:
        """Find the pages a process shares with an earlier one and take them
        out of its ``copy_iv``. Call while the tree is frozen."""
        import time

        if not self.enabled or len(processes) < 2:
            return
        from ..scan.features import probe_pagemap

        if not probe_pagemap().pfn_visible:  # frame numbers hidden: nothing tells pages apart
            self.enabled = False
            return
        t0 = time.monotonic_ns()
        keys, procs, addrs = [], [], []
        for k, p in enumerate(processes):
            s, e = p.copy_iv
            if not len(s):
                continue
            pm = read_pagemap(f"/proc/{p.pid}/task/{p.proc.mm_tid()}/pagemap", s, e)
            page = _pages_of(s, e)
            shared = ((pm & _U64(PM_PRESENT)) != 0) & ((pm & _U64(PM_MMAP_EXCLUSIVE)) == 0)
            shared |= (pm & _U64(PM_SWAP | PM_PRESENT)) == _U64(PM_SWAP)
            key = pm & _U64(PM_PFRAME_MASK | PM_SWAP)
            shared &= (key & _U64(PM_PFRAME_MASK)) != 0  # frame 0: hidden PFNs, never shared
            if shared.any():
                keys.append(key[shared])
                addrs.append(page[shared])
                procs.append(np.full(int(shared.sum()), k, np.int64))
        if keys:
            self._decide(processes, np.concatenate(keys), np.concatenate(procs), np.concatenate(addrs))
        self.lookup_ns = time.monotonic_ns() - t0

    def _decide(self, processes: list, key: np.ndarray, proc: np.ndarray, addr: np.ndarray) -> None:
        order = np.lexsort((addr, proc, key))
        key, proc, addr = key[order], proc[order], addr[order]
        start = np.ones(len(key), bool)
        start[1:] = key[1:] != key[:-1]
        group_first = np.maximum.accumulate(np.where(start, np.arange(len(key)), 0))
        owner, owner_addr = proc[group_first], addr[group_first]
        ref = proc != owner
        if not ref.any():
            return
        proc, addr, owner, owner_addr = proc[ref], addr[ref], owner[ref], owner_addr[ref]
        self.pages_shared = int(ref.sum())
        by = np.argsort(proc, kind="stable")
        proc, addr, owner, owner_addr = proc[by], addr[by], owner[by], owner_addr[by]
        bounds = np.flatnonzero(np.diff(proc)) + 1
        for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(proc)]))):
            p = processes[int(proc[lo])]
            o = np.argsort(addr[lo:hi], kind="stable")
            a, ow, oa = addr[lo:hi][o], owner[lo:hi][o], owner_addr[lo:hi][o]
            self._refs[p.pid] = (a, ow, oa)
            p.copy_iv = iv.subtract(p.copy_iv, _runs_of_pages(a))

    def runs(self, p, processes: list, stream_of) -> CowRuns:
        """``p``'s references, resolved against the owners' streams.
        ``stream_of(owner) -> (Extents of its stream in vaddr order, first
        stream index of each extent)``; ``processes`` as given to
        :meth:`plan`, each with its ``pages_id`` set."""
        ref = self._refs.get(p.pid)
        empty = np.empty(0, _U64)
        if ref is None:
            return CowRuns(empty, empty, np.empty(0, np.uint32), empty)
        a, ow, oa = ref
        idx = np.full(len(a), -1, np.int64)
        for k in np.unique(ow).tolist():
            sel = np.flatnonzero(ow == k)
            ext, first = stream_of(processes[k])
            if not len(ext):
                continue
            j = iv.owner(ext.vaddr, oa[sel])
            ok = j >= 0
            ok[ok] = oa[sel][ok] < ext.vaddr[j[ok]] + ext.nbytes[j[ok]]
            idx[sel[ok]] = first[j[ok]] + ((oa[sel][ok] - ext.vaddr[j[ok]]) // _PS).astype(np.int64)
        good = idx >= 0
        lost = [(int(s), int((e - s) // _PS)) for s, e in zip(*_runs_of_pages(a[~good]))]
        a, ow, idx = a[good], ow[good], idx[good]
        if not len(a):
            return CowRuns(empty, empty, np.empty(0, np.uint32), empty, lost)
        pages_id = np.array([processes[k].pages_id for k in ow.tolist()], np.uint32) if len(ow) else \
            np.empty(0, np.uint32)
        brk = np.ones(len(a), bool)
        brk[1:] = (a[1:] != a[:-1] + _PS) | (pages_id[1:] != pages_id[:-1]) | (idx[1:] != idx[:-1] + 1)
        starts = np.flatnonzero(brk)
        nr = np.diff(np.concatenate((starts, [len(a)]))).astype(_U64)
        return CowRuns(a[starts], nr, pages_id[starts], idx[starts].astype(_U64), lost)


def _runs_of_pages(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted page addresses -> interval set (bytes)."""
    if not len(pages):
        return iv.EMPTY
    brk = np.flatnonzero(pages[1:] != pages[:-1] + _PS) + 1
    s = pages[np.concatenate(([0], brk))]
    e = pages[np.concatenate((brk - 1, [len(pages) - 1]))] + _PS
    return s, e


def stream_layout(ext: Extents) -> tuple[Extents, np.ndarray]:
    """A process's stream extents sorted by vaddr and the stream index (in
    pages) where each begins: the order PagesWriter stores PE_PRESENT pages."""
    order = np.argsort(ext.vaddr, kind="stable")
    sorted_ext = Extents(ext.vaddr[order], ext.nbytes[order], ext.offset[order])
    pages = (sorted_ext.nbytes // _PS).astype(np.int64)
    first = np.cumsum(pages) - pages
    return sorted_ext, first


def write_cow_refs(writer, p, cow: CowRuns) -> None:
    """Write ``cow-PID.img`` for process ``p`` (a ProcessDump) when it has
    references; pages whose owner could not read them are ``p``'s
    unreadable pages too."""
    from ..image import format as fmt
    from ..image.pb import zpages_pb2

    if len(cow):
        writer.write_image(fmt.cow_name(p.pid), "COW_REFS", [
            zpages_pb2.cow_ref_entry(vaddr=v, nr_pages=n, pages_id=i, pages_off=o)
            for v, n, i, o in zip(cow.vaddr.tolist(), cow.nr_pages.tolist(), cow.pages_id.tolist(),
                                  cow.pages_off.tolist())])
    if cow.lost and p.copier is not None:
        p.copier.unreadable.extend(cow.lost)

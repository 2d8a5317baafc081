"""CRIU's raw page layout, written from any checkpoint: ``pages-N.img``.

CRIU reads page data only from raw pages files (criu/pagemap.c
``open_page_read_at``): a ``pagemap-*.img`` names ``pages_id`` N, and
``pages-N.img`` holds the pages of its PE_PRESENT entries, in entry order,
no header, read with ``preadv`` at running offsets. A checkpoint may keep
them otherwise: zstd-compressed (``pages-N.zst.img``), in an older
checkpoint of an incremental chain (PE_PARENT entries), or, for pages a
forked tree shares copy-on-write, once in another process's stream
(PE_COW entries and ``cow-PID.img``, dumper only). ``dumper export``
and ``dumper restore`` both write CRIU's layout through this module, for
every pagemap of a checkpoint (a process's ``pagemap-PID.img`` or a shared
memory object's ``pagemap-shmem-ID.img``)::

    for name in pagemap_names(ck):
        plan = copy_pagemap(ck, name, pages_file, flatten=True)   # pages-{plan.pages_id}.img
        write_pagemap(plan, pagemap_file)                         # CRIU's fields only

* :func:`plan_pagemap` -- a :class:`PagemapPlan`: CRIU's entries, and which
  runs of which page streams hold the pages of its PE_PRESENT ones. With
  ``flatten`` every PE_PARENT range is resolved through the parent chain
  (the same file name in each parent, as CRIU resolves it) and every entry
  is PE_PRESENT; without, the entries are the stored ones, PE_PARENT kept
  for CRIU to follow into ``parent``. PE_COW ranges always become
  PE_PRESENT, their pages read from the owner's stream (CRIU reads one
  pages file per process), so ``cow-PID.img`` is never part of a CRIU set.
* :func:`write_pages` -- the raw file of a plan: the runs read in order, a
  few threads decompressing ahead (memory near ``2 * threads`` batches of
  about 4 MiB whatever the size), every zstd frame checked as it is
  decompressed (content size, XXH64 checksum, length against the index).
* :func:`copy_pagemap` -- what an export writes: a process's pagemap
  through :meth:`Checkpoint.iter_copy <dumper.image.checkpoint.Checkpoint.iter_copy>`
  (the one reader of what a copy holds: raw entries' crc32 checked, holes of
  a sparse raw pages file in anonymous memory left out, so the work follows
  the data), except a zstd stream copied as stored, which
  :func:`write_pages` decompresses in parallel; other pagemaps (shared
  memory objects, which the Checkpoint does not read) by plan.
* :func:`write_pagemap` -- the pagemap image, CRIU's fields only.

Planning reads metadata only: its work and memory follow the number of
pagemap entries, never the pages or the VMAs' sizes.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import BadMagic, CorruptImage, ImageError
from . import format as fmt
from .checkpoint import Checkpoint
from .pb import pagemap_pb2
from .reader import PagemapEntries, PagesReader, load_pagemap

__all__ = ["Stream", "PagemapPlan", "pagemap_names", "plan_pagemap", "write_pages", "pages_id_of", "copy_pagemap",
           "write_pagemap"]

# Bytes of pages one worker reads (and decompresses) per task.
BATCH_BYTES = 4 << 20
_PAGEMAP_RE = re.compile(r"^pagemap-(?:shmem-)?\d+\.img$")
# The pagemap flags CRIU 4.2 knows (criu/include/pagemap.h). A dumper flag
# beyond them must be resolved by plan_pagemap before CRIU sees the entry.
CRIU_PE_FLAGS = fmt.PE_PARENT | fmt.PE_LAZY | fmt.PE_PRESENT
# dumper's flags plan_pagemap turns into CRIU's (a process's pagemap only).
RESOLVED_PE_FLAGS = fmt.PE_COW
_U32_LIMIT = 1 << 32


@dataclass(eq=False)
class Stream:
    """The page stream of one pages file of a checkpoint of the chain:
    ``name`` in ``level``'s directory, ``nr_pages`` pages of ``page_size``
    bytes, zstd frames of ``frame_pages`` pages (0: raw)."""

    level: Checkpoint
    name: str
    compressed: bool
    page_size: int
    nr_pages: int
    frame_pages: int

    @property
    def path(self) -> Path:
        return self.level.path / self.name

    def open(self) -> PagesReader:
        """A new reader of the stream (one per thread: readers are not
        thread-safe)."""
        return PagesReader(self.path, compressed=self.compressed, page_size=self.page_size,
                           f=self.level.open_image(self.name))


@dataclass(eq=False)
class PagemapPlan:
    """How to write pagemap ``name`` in CRIU's layout.

    ``entries``: CRIU's entries (``vaddr`` bytes, ``nr_pages``, ``flags``;
    ascending). ``runs``: ``(stream, first page, count)`` in the order their
    pages go into ``pages-{pages_id}.img``, ``present`` pages in all.
    ``parent``: PE_PARENT pages left for CRIU to read from ``parent``.
    ``stream``: the pagemap's own stream. ``as_stored``: the entries and the
    page stream are the stored ones (only the stream's encoding may
    differ), so the stored pagemap serves CRIU as it is. ``left_out``:
    ``(start, end)`` byte ranges of zeros left out of the copy (holes of a
    sparse raw pages file in anonymous memory, which read as zeros without
    an entry too; :func:`copy_pagemap` only).
    """

    name: str
    path: Path
    pages_id: int
    page_size: int
    entries: PagemapEntries
    stream: Stream
    runs: list[tuple[Stream, int, int]] = field(default_factory=list)
    present: int = 0
    parent: int = 0
    as_stored: bool = True
    left_out: list[tuple[int, int]] = field(default_factory=list)


def pagemap_names(ck: Checkpoint) -> list[str]:
    """Every pagemap image of ``ck``'s directory: the processes' in ``ck.pids``
    order, then the others (``pagemap-shmem-ID.img``...) by name."""
    own = [fmt.pagemap_name(pid) for pid in ck.pids]
    others = [n for n in ck.listdir() if _PAGEMAP_RE.match(n) and n not in own]
    return own + others


# --- planning


class _Chain:
    """The checkpoints of ``ck``'s chain, opened as far as needed, and the
    pagemaps loaded from them (by level and name)."""

    def __init__(self, ck: Checkpoint) -> None:
        self.levels = [ck]
        self.loaded: dict[tuple[int, str], tuple[pagemap_pb2.pagemap_head, PagemapEntries, Stream, Path]] = {}

    def level(self, depth: int, why) -> Checkpoint:
        while len(self.levels) <= depth:
            below = self.levels[-1]
            path, rng = why
            try:
                parent = below.parent
            except ImageError as err:
                raise ImageError(path, None, f"{rng} are in the parent checkpoint, which cannot be used: "
                                 f"{err}") from err
            if parent is None:
                raise ImageError(path, None, f"{rng} are PE_PARENT but there is no parent checkpoint")
            self.levels.append(parent)
        return self.levels[depth]

    def load(self, depth: int, name: str, why=None):
        key = (depth, name)
        hit = self.loaded.get(key)
        if hit is None:
            hit = self.loaded[key] = _load(self.level(depth, why), name, why)
        return hit


def _pid_of(name: str) -> int | None:
    """The pid of a process's pagemap name (``pagemap-PID.img``), else None."""
    m = re.fullmatch(r"pagemap-(\d+)\.img", name)
    return int(m.group(1)) if m else None


def _load(level: Checkpoint, name: str, why) -> tuple[pagemap_pb2.pagemap_head, PagemapEntries, Stream, Path]:
    """``(head, entries, stream, path)`` of pagemap ``name`` of ``level``;
    a process's comes from the Checkpoint, which loaded and checked it."""
    proc = _process_of(level, name)
    if proc is not None:
        pages = proc.pages
        stream = Stream(level, proc.pages_path.name, pages.compressed, pages.page_size, pages.nr_pages,
                        pages.frame_pages)
        return proc.head, proc.entries, stream, proc.pagemap_path
    path = level.path / name
    if why is not None and not level.has_image(name):
        raise ImageError(level.path, None, f"has no {name}; {why[0]} marks {why[1]} PE_PARENT")
    head, entries = load_pagemap(path, page_size=level.page_size, f=level.open_image(name))
    ps = head.page_size if head.HasField("page_size") else level.page_size
    compressed = head.compression == fmt.COMPRESSION_ZSTD  # load_pagemap refused unknown codecs
    pname = fmt.zpages_name(head.pages_id) if compressed else fmt.pages_name(head.pages_id)
    stream = Stream(level, pname, compressed, ps, 0, 0)
    present = entries.pages(fmt.PE_PRESENT)
    if not present and not level.has_image(pname):
        return head, entries, stream, path  # nothing to read: no pages file needed
    with stream.open() as r:
        stream.nr_pages, stream.frame_pages = r.nr_pages, r.frame_pages
        if r.page_size != ps:
            raise CorruptImage(r.path, 8, f"page size {r.page_size}, the pagemap's is {ps}")
    if stream.nr_pages != present:
        raise CorruptImage(stream.path, None, f"holds {stream.nr_pages} pages, {name} has {present} PE_PRESENT pages")
    return head, entries, stream, path


def _pieces(entries: PagemapEntries, ps: int, lo: int, hi: int):
    """``(start, end, flags, stream page of start or None)`` of the entries
    covering ``[lo, hi)``, in order; flags 0 for a gap no entry covers."""
    i = max(entries.index_at(lo), 0)
    pos = lo
    n = len(entries)
    while pos < hi and i < n:
        e = entries[i]
        end = e.vaddr + e.nr_pages * ps
        if end <= pos:
            i += 1
            continue
        if e.vaddr >= hi:
            break
        if e.vaddr > pos:
            yield pos, e.vaddr, 0, None
            pos = e.vaddr
        b = min(end, hi)
        yield pos, b, e.flags, (e.pages_off + (pos - e.vaddr) // ps) if e.flags & fmt.PE_PRESENT else None
        pos = b
        i += 1
    if pos < hi:
        yield pos, hi, 0, None


def plan_pagemap(ck: Checkpoint, name: str, *, flatten: bool) -> PagemapPlan:
    """Plan pagemap ``name`` of checkpoint ``ck`` in CRIU's layout (see
    :class:`PagemapPlan`). ``flatten``: resolve PE_PARENT ranges through the
    parent chain (each parent's pagemap of the same name) into PE_PRESENT
    pages; else keep the stored entries. PE_COW ranges (pages a forked tree
    shares copy-on-write, stored once in another process's stream:
    ``cow-PID.img``) always become PE_PRESENT with the owner's pages, at
    every level: CRIU reads one pages file per process.

    Raises ImageError for a PE_PARENT range the chain does not hold (a
    missing or broken parent, a parent without the pagemap or without
    entries there), a PE_COW range no reference covers and, with
    ``flatten``, for entries that are neither PE_PRESENT, PE_COW nor
    PE_PARENT (lazy pages: no image holds their data); CorruptImage for a
    damaged pagemap, reference or pages file.
    """
    chain = _Chain(ck)
    head, entries, stream, path = chain.load(0, name)
    ps = stream.page_size
    _check_flags(entries, ps, path, flatten)
    plan = PagemapPlan(name=name, path=path, pages_id=head.pages_id, page_size=ps, entries=entries, stream=stream)
    plan.parent = entries.pages(fmt.PE_PARENT)
    plan.present = stream.nr_pages
    cow = bool(entries.mask(fmt.PE_COW).any()) if len(entries) else False
    if not cow and (not flatten or not plan.parent):
        if plan.present:
            plan.runs.append((stream, 0, stream.nr_pages))
        return plan
    pid = _pid_of(name)

    out: list[list[int]] = []  # [vaddr, nr_pages, flags], merged when contiguous with equal flags
    runs: list[list] = []  # [stream, first, count], merged when contiguous

    def emit(vaddr: int, nr: int, flags: int, src: Stream | None = None, first: int = 0) -> None:
        last = out[-1] if out else None
        if last is not None and last[2] == flags and last[0] + last[1] * ps == vaddr:
            last[1] += nr
        else:
            out.append([vaddr, nr, flags])
        if src is None:
            return
        if runs and runs[-1][0] is src and runs[-1][1] + runs[-1][2] == first:
            runs[-1][2] += nr
        else:
            runs.append([src, first, nr])

    def shared_cow(depth: int, lo: int, hi: int) -> None:
        # PE_COW at ``depth``: the owners' streams of the same checkpoint.
        level = chain.levels[depth]
        for a, b, owner, first in level.shared.cow_pieces(level.process(pid), lo, hi):
            _, _, owned, _ = chain.load(depth, fmt.pagemap_name(owner.pid))
            emit(a, (b - a) // ps, fmt.PE_PRESENT, owned, first)

    for e in entries:
        if e.flags & fmt.PE_PRESENT:
            emit(e.vaddr, e.nr_pages, fmt.PE_PRESENT, stream, e.pages_off)
            continue
        if e.flags & fmt.PE_COW:
            shared_cow(0, e.vaddr, e.end(ps))
            continue
        if not (flatten and e.flags & fmt.PE_PARENT):
            emit(e.vaddr, e.nr_pages, e.flags)  # kept for CRIU: PE_PARENT, PE_LAZY
            continue
        # PE_PARENT: walk up the chain, one iterator of pieces per level.
        stack = [(1, iter([(e.vaddr, e.end(ps), fmt.PE_PARENT, None)]))]
        while stack:
            depth, it = stack[-1]
            piece = next(it, None)
            if piece is None:
                stack.pop()
                continue
            lo, hi, flags, first = piece
            what = (path, f"pages [{lo:#x}, {hi:#x})")
            if flags & fmt.PE_PARENT:
                _, pentries, _, _ = chain.load(depth, name, what)
                stack.append((depth + 1, _pieces(pentries, ps, lo, hi)))
            elif flags & fmt.PE_PRESENT:
                _, _, pstream, _ = chain.load(depth - 1, name, what)
                emit(lo, (hi - lo) // ps, fmt.PE_PRESENT, pstream, first)
            elif flags & fmt.PE_COW and pid is not None:
                shared_cow(depth - 1, lo, hi)
            else:
                level = chain.levels[depth - 1]
                kind = fmt.format_flags(flags, "pmap.flags") if flags else "covered by no entry"
                raise ImageError(level.path / name, None, f"pages [{lo:#x}, {hi:#x}), PE_PARENT in {path}, are "
                                 f"{kind} there: the chain does not hold their data")
    plan.entries = PagemapEntries.from_list([(v, n, f, -1) for v, n, f in out])
    plan.runs = [(s, a, n) for s, a, n in runs]
    plan.present = sum(n for _, _, n in runs)
    plan.parent = plan.entries.pages(fmt.PE_PARENT)
    plan.as_stored = False
    return plan


def _check_flags(entries: PagemapEntries, ps: int, path: Path, flatten: bool) -> None:
    """ImageError for entries CRIU could not be given: flags of dumper's
    own this module cannot resolve (PE_COW is resolved, in a process's
    pagemap only) and, when flattening, entries that hold no data (a
    flattened set must hold every page it lists)."""
    own = CRIU_PE_FLAGS | (RESOLVED_PE_FLAGS if _pid_of(path.name) is not None else 0)
    _refuse(entries, ps, path, (entries.flags & np.uint32(~own & 0xFFFFFFFF)) != 0,
            ": flags of dumper's own, which CRIU does not know and this version cannot write in CRIU's layout")
    if flatten:
        _refuse(entries, ps, path, (entries.flags & np.uint32(fmt.PE_PRESENT | fmt.PE_PARENT | fmt.PE_COW)) == 0,
                " only: their data is in no image")


def _refuse(entries: PagemapEntries, ps: int, path: Path, bad: np.ndarray, why: str) -> None:
    """ImageError naming the first entry marked in ``bad`` (a bool array)."""
    if bad.any():
        e = entries[int(np.argmax(bad))]
        raise ImageError(path, None, f"pages [{e.vaddr:#x}, {e.end(ps):#x}) are "
                         f"{fmt.format_flags(e.flags, 'pmap.flags')}{why}")


# --- writing


def _tasks(plan: PagemapPlan):
    """The runs cut into ``(stream, first, count)`` reads of about
    :data:`BATCH_BYTES`, cut at zstd frame boundaries."""
    for src, first, count in plan.runs:
        unit = src.frame_pages or 1
        step = max(1, BATCH_BYTES // (unit * src.page_size)) * unit
        pos, end = first, first + count
        while pos < end:
            nxt = min(end, (pos // step + 1) * step)
            yield src, pos, nxt - pos
            pos = nxt


def _read(reader: PagesReader, first: int, count: int) -> list[bytes]:
    """Pages ``[first, first + count)`` as a list of pieces (a compressed
    stream: one per frame, no joining copy)."""
    fp = reader.frame_pages
    if not fp:
        return [reader.read_pages(first, count)]
    parts = []
    pos, end = first, first + count
    while pos < end:
        n = min(fp - pos % fp, end - pos)
        parts.append(reader.read_pages(pos, n))
        pos += n
    return parts


def write_pages(plan: PagemapPlan, out: BinaryIO, *, threads: int | None = None) -> int:
    """Write the raw ``pages-{plan.pages_id}.img`` of ``plan`` into ``out``
    (a file open for writing); returns the bytes written
    (``plan.present * plan.page_size``). ``threads``: readers working ahead
    (default: up to 4); the writes stay in order. Interrupting
    (KeyboardInterrupt) waits for at most ``2 * threads`` reads in flight.

    Raises CorruptImage for damaged page data (a frame that does not
    decompress to what its index says, a stream shorter than planned),
    OSError from ``out``.
    """
    nthreads = threads or min(4, os.cpu_count() or 1)
    local = threading.local()
    readers: list[PagesReader] = []
    lock = threading.Lock()

    def read(task: tuple[Stream, int, int]) -> list[bytes]:
        src, first, count = task
        mine = getattr(local, "readers", None)
        if mine is None:
            mine = local.readers = {}
        r = mine.get(id(src))
        if r is None:
            r = mine[id(src)] = src.open()
            with lock:
                readers.append(r)
        return _read(r, first, count)

    written = 0

    def put(parts: list[bytes]) -> None:
        nonlocal written
        for part in parts:
            out.write(part)
            written += len(part)

    try:
        if nthreads == 1:
            for task in _tasks(plan):
                put(read(task))
        else:
            with ThreadPoolExecutor(nthreads, thread_name_prefix="rawpages") as pool:
                inflight: deque = deque()
                try:
                    for task in _tasks(plan):
                        inflight.append(pool.submit(read, task))
                        if len(inflight) >= 2 * nthreads:
                            put(inflight.popleft().result())
                    while inflight:
                        put(inflight.popleft().result())
                finally:
                    for fut in inflight:
                        fut.cancel()
    finally:
        for r in readers:
            r.close()
    expect = plan.present * plan.page_size
    if written != expect:
        raise CorruptImage(plan.stream.path, None, f"{written} bytes of pages read, {plan.name} needs {expect}")
    return written


def _process_of(ck: Checkpoint, name: str):
    pid = _pid_of(name)
    return ck.processes.get(pid) if pid is not None else None


def pages_id_of(ck: Checkpoint, name: str) -> int:
    """The ``pages_id`` pagemap ``name`` of ``ck`` names (its head only is
    read). BadMagic/CorruptImage for a file that is not a pagemap."""
    proc = _process_of(ck, name)
    if proc is not None:
        return proc.head.pages_id
    path = ck.path / name
    with ck.open_image(name) as f:
        if fmt.read_magic(f, path) != "PAGEMAP":
            raise BadMagic(path, 0, "expected a PAGEMAP image")
        first = next(fmt.iter_entries(f, path, 8), None)
    if first is None:
        raise CorruptImage(path, 8, "no pagemap_head")
    return fmt.parse_entry(pagemap_pb2.pagemap_head, first[1], path, first[0]).pages_id


def copy_pagemap(ck: Checkpoint, name: str, out: BinaryIO, *, flatten: bool,
                 threads: int | None = None, max_pages: int = 256) -> PagemapPlan:
    """Write the raw ``pages-N.img`` of pagemap ``name`` of ``ck`` into
    ``out`` as an export does (module docstring), PE_PARENT pages resolved
    through the chain with ``flatten``, kept otherwise, PE_COW pages
    written as PE_PRESENT with their data; returns the plan
    whose entries :func:`write_pagemap` writes. ``max_pages``: pages per
    read. Errors as :func:`plan_pagemap` and :func:`write_pages`, and
    CorruptImage for pages that do not match their entry's crc32."""
    proc = _process_of(ck, name)
    if proc is None or (proc.pages.compressed and not (flatten and proc.nr_pages_parent)):
        plan = plan_pagemap(ck, name, flatten=flatten)
        write_pages(plan, out, threads=threads)
        return plan
    ps = proc.page_size
    _check_flags(proc.entries, ps, proc.pagemap_path, flatten)
    pages = proc.pages
    stream = Stream(ck, proc.pages_path.name, pages.compressed, ps, pages.nr_pages, pages.frame_pages)
    plan = PagemapPlan(name=name, path=proc.pagemap_path, pages_id=proc.head.pages_id, page_size=ps,
                       entries=proc.entries, stream=stream, as_stored=False)
    ent = proc.entries
    # Entries kept as they are (no data here): PE_PARENT unless flattening, and PE_LAZY
    # (iter_copy gives PE_COW pages with their data, from the owner's stream).
    keep = ent[ent.mask(fmt.PE_PRESENT | fmt.PE_COW) == 0] if len(ent) else ent
    if flatten:
        keep = keep[keep.mask(fmt.PE_PARENT) == 0] if len(keep) else keep
    kv, kn, kf = keep.vaddr.tolist(), keep.nr_pages.tolist(), keep.flags.tolist()
    rows: list[list[int]] = []  # [vaddr, nr_pages, flags], merged when contiguous with equal flags
    k = 0

    def add(vaddr: int, nr: int, flags: int) -> None:
        last = rows[-1] if rows else None
        if last is not None and last[2] == flags and last[0] + last[1] * ps == vaddr:
            last[1] += nr
        else:
            rows.append([vaddr, nr, flags])

    for vaddr, data in ck.iter_copy(proc.pid, parents=flatten, max_pages=max_pages):
        while k < len(kv) and kv[k] < vaddr:
            add(kv[k], kn[k], kf[k])
            k += 1
        out.write(data)
        add(vaddr, len(data) // ps, fmt.PE_PRESENT)
        plan.present += len(data) // ps
    for k in range(k, len(kv)):
        add(kv[k], kn[k], kf[k])
    plan.entries = PagemapEntries.from_list([(v, n, f, -1) for v, n, f in rows])
    plan.parent = plan.entries.pages(fmt.PE_PARENT)
    plan.left_out = list(ck.left_out.get(proc.pid, []))
    return plan


def write_pagemap(plan: PagemapPlan, out: BinaryIO) -> int:
    """Write ``plan``'s pagemap image into ``out`` as CRIU 4.2 writes it:
    ``pagemap_head`` with ``pages_id`` only, then per entry ``vaddr``,
    ``nr_pages`` (field 5) and ``compat_nr_pages`` (field 2, for CRIU <
    4.2; 0 when it does not fit 32 bits, as CRIU writes it) and ``flags``.
    Returns the bytes written."""
    n = fmt.write_magic(out, "PAGEMAP")
    n += fmt.write_entry(out, pagemap_pb2.pagemap_head(pages_id=plan.pages_id))
    ent = plan.entries
    new = pagemap_pb2.pagemap_entry
    for vaddr, nr, flags in zip(ent.vaddr.tolist(), ent.nr_pages.tolist(), ent.flags.tolist()):
        n += fmt.write_entry(out, new(vaddr=vaddr, compat_nr_pages=nr if nr < _U32_LIMIT else 0, flags=flags,
                                      nr_pages=nr))
    return n

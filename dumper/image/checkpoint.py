"""A whole checkpoint directory, read-only: :func:`open_checkpoint`.

:class:`Checkpoint` bundles what the lower-level readers give separately
(:func:`~dumper.image.reader.load_inventory`,
:func:`~dumper.image.reader.load_pagemap`,
:class:`~dumper.image.reader.PagesReader`) into one object that answers "what
was in memory at address A of process P at dump time"::

    with open_checkpoint("/ckpt/2") as ck:
        ck.pids                        # (root_pid, ...)
        ck.processes[pid].vmas         # vma_entry list, ascending
        ck.read(pid, addr, 4096)       # bytes as they were at dump time
        for vaddr, data in ck.iter_pages():   # root pid's recorded pages
            ...

Opening reads metadata only: ``inventory.img``, ``pstree.img`` when there is
one, every ``mm-PID.img`` and ``pagemap-PID.img``, the head, footer and frame
index of every ``pages-N.zst.img`` (a raw ``pages-N.img`` is only stat'ed);
never page payload. Every image file is opened through
:class:`~dumper.image.mapped.ImageDir` (relative to the directory's
descriptor, never through a symlink, regular files only). Pagemaps are held
in compact arrays (:class:`~dumper.image.reader.PagemapEntries`).

Where the bytes of :meth:`Checkpoint.read` come from, page by page:

* a PE_PRESENT entry: this checkpoint's pages file (only the zstd frames
  that hold the range are decompressed);
* a PE_PARENT entry: the same pid's entries in the parent checkpoint,
  recursively (CRIU's incremental dumps, ``parent`` symlink);
* a PE_COW entry: another process's stream of this checkpoint, where
  ``cow-PID.img`` says (pages shared copy-on-write, stored once:
  :mod:`dumper.image.shared`);
* inside a shared memory VMA (shared anonymous, memfd, SysV): the object's
  bytes at dump time, from its ``pagemap-shmem-SHMID.img`` (zeros where it
  has no entry), however many processes map it (:mod:`dumper.image.shared`);
* no entry, inside a private anonymous VMA: zeros (never touched, the zero
  page, or a page a dump skips because the kernel would give zeros);
* no entry, inside a private file mapping: the mapped file at the VMA's
  offset, opened by :func:`~dumper.image.mapped.open_mapped_file` (only if
  the file is still the one recorded: device, inode, and size, mtime, ctime
  where the dump recorded them; CRIU sets name it in ``files.img`` or
  ``reg-files.img`` and record its size);
* inside a guard region (MADV_GUARD_INSTALL, CRIU's VMA_AREA_GUARD
  pseudo-VMAs): ImageError, as the live process would fault;
* anything else (outside every recorded VMA, a VMA whose contents were not
  dumped such as shared memory or [vvar]): :class:`~dumper.errors.ImageError`.

Broken chains, one rule: the parent is opened only when a read needs it. What
the checkpoint holds itself stays readable; what needs a parent that is
missing, damaged, outside the directory holding the checkpoint, looping, or
not the checkpoint the child was taken over (``parent_checkpoint_id`` differs
from the parent's ``checkpoint_id``: it was replaced) raises ImageError
naming the parent. :meth:`Checkpoint.chain_status` lists the chain with the
broken link marked.

CRIU image directories are read too: no dumper fields, raw ``pages-N.img``,
``nr_pages`` from pagemap field 5 or field 2, ``in_parent``/absent flags as
CRIU's reader; pids from ``pstree.img`` (CRIU's ``pstree_entry``) when the
inventory does not list them, else from the ``pagemap-PID.img`` names. A
CRIU set may lack ``mm-PID.img`` (a pre-dump): only pages with pagemap
entries can be read. A dumper checkpoint always has one: without it the
checkpoint does not open.

Units: addresses and sizes in bytes, ranges end-exclusive, ``nr_pages`` and
stream indexes in pages. A Checkpoint is not thread-safe (its PagesReaders
cache a frame); open one per thread.
"""

from __future__ import annotations

import os
import re
import threading
import types
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard
from google.protobuf.message import DecodeError, Message

from ..errors import BadMagic, CorruptImage, DumpError, ImageError
from . import format as fmt
from .criu_files import CriuFile, load_criu_files
from .mapped import FileIdentity, ImageDir, MappedFileError, open_mapped_file, printable_path, recorded_identity
from .pb import inventory_pb2, pagemap_pb2, stats_pb2, vma_pb2
from .shared import SHMEM_VMAS, SharedImages
from .reader import (
    PagemapEntries,
    PagemapEntry,
    PagesReader,
    _zstd_frame_length,
    load_inventory,
    load_pagemap,
    open_image_file,
    read_image,
)
from .tables import MmEntry, PstreeTable, VmaTable, load_mm, load_pstree

__all__ = [
    "Checkpoint",
    "CheckpointProcess",
    "open_checkpoint",
    "resolve_parent_chain",
    "read_pstree",
    "new_checkpoint_id",
    "children_of",
    "check_not_a_parent",
    "PSTREE_NAME",
    "MAX_PARENT_CHAIN",
]

PSTREE_NAME = "pstree.img"
# Longest parent chain followed. Loops are caught by identity, this only
# bounds the work a hostile directory tree can cause.
MAX_PARENT_CHAIN = 4096

_U64_LIMIT = 1 << 64
_OFF_LIMIT = (1 << 63) - 1  # largest file offset the kernel takes (loff_t)
_PAGEMAP_RE = re.compile(r"^pagemap-(\d+)\.img$")
_KERNEL_VMAS = fmt.VMA_AREA_VVAR | fmt.VMA_AREA_VSYSCALL | fmt.VMA_AREA_UPROBES
_SHARED_VMAS = (
    fmt.VMA_FILE_SHARED | fmt.VMA_ANON_SHARED | fmt.VMA_AREA_SYSVIPC | fmt.VMA_AREA_MEMFD | fmt.VMA_AREA_SOCKET
)
# Raw pages files are read in chunks of this many bytes (compressed: a frame).
_RAW_CHUNK = 16 << 20
# verify: compressed bytes handed to one worker at a time.
_VERIFY_BATCH = 4 << 20
# verify: problems of one kind listed per process before one line counts the rest.
_MAX_REPORTS = 100


def new_checkpoint_id() -> str:
    """A fresh random checkpoint id (128 bits, hex) for ``inventory_entry.checkpoint_id``."""
    import secrets

    return secrets.token_hex(16)


# --- pstree.img (CRIU images/pstree.proto; ours is proto/pstree.proto)


def read_pstree(path: str | os.PathLike, f=None) -> PstreeTable:
    """The entries of a CRIU ``pstree.img`` (root first) as a
    :class:`~dumper.image.tables.PstreeTable`: columns ``pid``, ``ppid``,
    ``pgid``, ``sid`` and ``threads(i)``; iterating gives ``pstree_entry``
    messages. Memory follows the file (decoded in bulk, streamed). BadMagic
    if the file is not a PSTREE image, CorruptImage if it is damaged.
    ``f``: the file, already open.
    """
    return load_pstree(path, f if f is not None else open_image_file(path))


# --- parent chain


def _parent_target(cur: Path, root: Path, seen: set[Path], depth: int) -> Path | None:
    """Where ``cur/parent`` leads (None without a link); ImageError naming
    the link if it dangles, loops, leaves ``root`` or is too deep."""
    link = cur / fmt.PARENT_LINK
    if not os.path.lexists(link):
        return None
    try:
        target = Path(os.path.realpath(link, strict=True))
    except OSError as err:
        raise ImageError(link, None, f"parent link does not resolve ({os.path.realpath(link)}): "
                         f"{err.strerror}") from err
    if not target.is_dir():
        raise ImageError(link, None, f"parent {target} is not a directory")
    if target == root or root not in target.parents:
        raise ImageError(link, None, f"parent {target} is outside {root}, the directory holding the checkpoint")
    if target in seen:
        raise ImageError(link, None, f"parent chain loops: {target} comes twice")
    if depth >= MAX_PARENT_CHAIN:
        raise ImageError(link, None, f"parent chain longer than {MAX_PARENT_CHAIN}")
    return target


def resolve_parent_chain(path: str | os.PathLike) -> list[Path]:
    """The resolved parent chain of checkpoint directory ``path``, nearest
    first (``[]`` without a ``parent`` link). Reads links only.

    Each ``parent`` (a symlink, as CRIU's ``--prev-images-dir`` makes, or a
    directory) must resolve to a directory strictly inside the directory that
    holds ``path`` (its real path's parent), and no directory may come twice.
    Raises ImageError naming the offending ``parent`` link: dangling or
    looping symlink, not a directory, outside, a loop, or longer than
    :data:`MAX_PARENT_CHAIN`.
    """
    top = Path(os.path.realpath(path))
    root = top.parent
    seen = {top}
    chain: list[Path] = []
    cur = top
    while (target := _parent_target(cur, root, seen, len(chain))) is not None:
        seen.add(target)
        chain.append(target)
        cur = target
    return chain


def children_of(path: str | os.PathLike) -> list[str]:
    """The checkpoints next to ``path`` (in the directory holding it, where
    readers follow ``parent`` links) whose ``parent`` resolves to ``path``.
    Sorted; reads directory entries and links only."""
    real = os.path.realpath(path)
    holder = os.path.dirname(real)
    try:
        names = os.listdir(holder)
    except OSError:
        return []
    out = []
    for name in names:
        link = os.path.join(holder, name, fmt.PARENT_LINK)
        if os.path.lexists(link) and os.path.realpath(link) == real:
            out.append(os.path.join(holder, name))
    return sorted(out)


def check_not_a_parent(path: str | os.PathLike) -> None:
    """Refuse to replace checkpoint ``path`` while another checkpoint is
    taken over it: the child's PE_PARENT pages would read the replacement's
    bytes (readers catch it by checkpoint id, but the child would be lost).
    Raises DumpError naming the child."""
    kids = children_of(path)
    if kids:
        more = f" (and {len(kids) - 1} more)" if len(kids) > 1 else ""
        raise DumpError(f"refusing to replace {path}: it is the parent of {kids[0]}{more}; "
                        "flatten or remove the child first")


# --- one process


def _vma_hole(vma: vma_pb2.vma_entry) -> tuple[str, str]:
    """What a page of ``vma`` with no pagemap entry holds: ``("zero", "")``,
    ``("file", "")`` or ``("none", why)``."""
    if vma.HasField("dumped") and not vma.dumped:
        return "none", printable_path(vma.contents_skipped_reason) or "the dump skipped this VMA's contents"
    st = vma.status
    if st & fmt.VMA_AREA_AIORING:
        return "zero", ""  # CRIU dumps AIO rings whole, whatever their other bits
    if st & _KERNEL_VMAS:
        return "none", "a kernel-provided mapping, not in the checkpoint"
    if st & SHMEM_VMAS:
        return "shared", ""  # the shared memory object's bytes (dumper.image.shared)
    if st & fmt.VMA_FILE_SHARED:
        return "none", "a MAP_SHARED file mapping: its contents live in the file, not in the checkpoint"
    if st & _SHARED_VMAS:
        return "none", "a shared mapping: its contents are not in the process's pagemap"
    if st & fmt.VMA_FILE_PRIVATE:
        return "file", ""
    return "zero", ""


_HOLE_ZERO, _HOLE_FILE, _HOLE_NONE, _HOLE_SHARED = 0, 1, 2, 3


def _split_by_zero_vmas(vmas: VmaTable | None, kinds, s: int, e: int) -> list[tuple[int, int, bool]]:
    """``[s, e)`` cut where VMAs of ``vmas`` begin and end: ``(a, b,
    droppable)``, droppable where the VMA's pages without an entry read
    as zeros (never without an mm)."""
    if vmas is None or not len(vmas):
        return [(s, e, False)]
    out = []
    pos = s
    n = len(vmas)
    i = max(vmas.index_at(s), 0)
    while pos < e:
        while i < n and int(vmas.end[i]) <= pos:
            i += 1
        if i < n and int(vmas.start[i]) <= pos:
            b, droppable = min(e, int(vmas.end[i])), bool(kinds[i] == _HOLE_ZERO)
            i += 1
        else:
            b, droppable = (min(e, int(vmas.start[i])) if i < n else e), False
        out.append((pos, b, droppable))
        pos = b
    return out


def hole_kinds(t: VmaTable) -> np.ndarray:
    """:func:`_vma_hole`'s kind for every row of ``t`` at once (int8:
    0 zeros, 1 the mapped file, 2 not in the checkpoint, 3 a shared memory
    object's)."""
    st = t.status
    out = np.full(len(t), _HOLE_ZERO, np.int8)
    out[(st & np.uint32(fmt.VMA_FILE_PRIVATE)) != 0] = _HOLE_FILE
    out[(st & np.uint32(_SHARED_VMAS | _KERNEL_VMAS)) != 0] = _HOLE_NONE
    out[((st & np.uint32(SHMEM_VMAS)) != 0) & ((st & np.uint32(_KERNEL_VMAS)) == 0)] = _HOLE_SHARED
    out[(st & np.uint32(fmt.VMA_AREA_AIORING)) != 0] = _HOLE_ZERO
    out[t.dumped == 0] = _HOLE_NONE
    return out


def pages_per_vma(entries: PagemapEntries, starts: np.ndarray, ends: np.ndarray, ps: int,
                  *, in_pages: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(present, other)``: pages of the pagemap ``entries`` (ascending,
    disjoint) inside each byte range ``[starts[i], ends[i])`` (uint64
    arrays, any order; ranges may overlap), PE_PRESENT and not; with
    ``in_pages`` the ranges are in pages (int64). Prefix
    sums and binary search: O((entries + ranges) log entries), no Python
    loop."""
    n = len(starts)
    if not len(entries) or not n:
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    ups = np.uint64(ps)
    sp = (entries.vaddr // ups).astype(np.int64)  # < 2**52: fits
    ep = sp + entries.nr_pages.astype(np.int64)
    present = entries.mask(fmt.PE_PRESENT)
    out = []
    for want in (present, ~present):
        nr = np.where(want, ep - sp, 0)
        before = np.zeros(len(nr) + 1, np.int64)  # pages of entries [0, j)
        np.cumsum(nr, out=before[1:])

        def below(x: np.ndarray) -> np.ndarray:
            # pages of the wanted entries below page x
            j = np.searchsorted(ep, x, side="right")  # entries [0, j) end at or before x
            total = before[j]
            k = np.minimum(j, len(sp) - 1)
            part = (j < len(sp)) & (sp[k] < x) & want[k]
            return total + np.where(part, x - sp[k], 0)

        if in_pages:
            out.append(below(ends) - below(starts))
        else:
            out.append(below((ends // ups).astype(np.int64)) - below((starts // ups).astype(np.int64)))
    return out[0], out[1]


@dataclass(eq=False)
class CheckpointProcess:
    """The recorded memory of one process of a checkpoint.

    ``mm`` is the ``mm_entry`` as an :class:`~dumper.image.tables.MmEntry`
    (its fields read as the message's; ``mm.vmas`` every VMA in image order,
    guards included; ``mm.to_message()`` the whole message), or None when a
    CRIU set has no ``mm-PID.img`` (e.g. a CRIU pre-dump: then VMAs are
    unknown and only pages with pagemap entries can be read). ``vmas``: a
    :class:`~dumper.image.tables.VmaTable` of the VMAs, ascending and
    disjoint, without CRIU's VMA_AREA_GUARD pseudo-VMAs (those are in
    ``guards``, ascending by start); indexing or iterating either gives
    ``vma_entry`` messages, their columns (``start``, ``end``, ``status``...)
    serve lookups. ``head``/``entries``: the pagemap after CRIU's compat
    rules (a :class:`~dumper.image.reader.PagemapEntries`: ascending,
    disjoint, page-aligned). ``pages``: the open
    :class:`~dumper.image.reader.PagesReader`. ``ppid``/``threads`` come
    from ``pstree.img`` when there is one.
    """

    pid: int
    page_size: int
    mm: MmEntry | None
    vmas: VmaTable
    guards: VmaTable
    head: pagemap_pb2.pagemap_head
    entries: PagemapEntries
    pages: PagesReader
    mm_path: Path
    pagemap_path: Path
    ppid: int | None = None
    threads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.entries, PagemapEntries):
            self.entries = PagemapEntries.from_list(self.entries)
        if not isinstance(self.vmas, VmaTable):
            self.vmas = VmaTable.from_messages(self.vmas)
        if not isinstance(self.guards, VmaTable):
            self.guards = VmaTable.from_messages(self.guards)
        if len(self.guards) > 1:
            self.guards = self.guards.take(np.argsort(self.guards.start, kind="stable"))

    @property
    def pages_path(self) -> Path:
        return Path(self.pages.path)

    @property
    def nr_pages_present(self) -> int:
        """Pages stored in this checkpoint's pages file."""
        return self.pages.nr_pages

    @property
    def nr_pages_parent(self) -> int:
        """Pages whose data is in the parent chain (PE_PARENT)."""
        return self.entries.pages(fmt.PE_PARENT)

    def vma_at(self, addr: int) -> vma_pb2.vma_entry | None:
        """The recorded VMA holding byte ``addr``, or None."""
        return self.vmas.at(addr)

    def guard_at(self, lo: int, hi: int) -> vma_pb2.vma_entry | None:
        """The first guard region overlapping ``[lo, hi)``, or None."""
        g = self.guards
        if not len(g):
            return None
        i = max(g.index_at(lo), 0)
        # Guards may overlap each other: the first ending past lo from i on.
        ends = g.end[i:]
        starts = g.start[i:]
        hit = np.flatnonzero((ends > np.uint64(lo)) & (starts < np.uint64(min(hi, (1 << 64) - 1))))
        return g[i + int(hit[0])] if len(hit) else None

    def check_crc(self, e: PagemapEntry, crc: int) -> None:
        """CorruptImage unless ``crc`` (zlib crc32 of entry ``e``'s pages as
        read) is the one its pagemap entry records."""
        if e.crc32 is not None and crc != e.crc32:
            ps = self.page_size
            raise CorruptImage(
                self.pages.path, e.pages_off * ps,
                f"pid {self.pid}: pages [{e.vaddr:#x}, {e.vaddr + e.nr_pages * ps:#x}) do not match their checksum "
                f"(crc32 {crc:#010x}, {self.pagemap_path.name} records {e.crc32:#010x}): the pages file is damaged",
            )

    def iter_entry_data(self, e: PagemapEntry, max_pages: int = 256) -> Iterator[tuple[int, bytes]]:
        """``(vaddr, data)`` of PE_PRESENT entry ``e``'s pages, at most
        ``max_pages`` a chunk, in order; the entry's crc32 (raw files dumper
        wrote) checked before the last chunk is given out (CorruptImage)."""
        ps = self.page_size
        crc = 0 if e.crc32 is not None else None
        for done in range(0, e.nr_pages, max_pages):
            n = min(max_pages, e.nr_pages - done)
            data = self.pages.read_pages(e.pages_off + done, n)
            if crc is not None:
                crc = zlib.crc32(data, crc)
                if done + n == e.nr_pages:
                    self.check_crc(e, crc)
            yield e.vaddr + done * ps, data

    def entry_at(self, addr: int) -> PagemapEntry | None:
        """The pagemap entry holding byte ``addr``, or None."""
        i = self.entries.index_at(addr)
        if i >= 0:
            e = self.entries[i]
            if addr < e.end(self.page_size):
                return e
        return None


# Where the first entry of an image starts, for errors about what it says:
# after the two magics of most images, after the one magic of inventory.img.
_FIRST_ENTRY_OFFSET = 8
_MM_ENTRY_OFFSET = _FIRST_ENTRY_OFFSET
_INVENTORY_ENTRY_OFFSET = 4


def _check_vmas(mm: MmEntry, path: Path, ps: int) -> tuple[VmaTable, VmaTable]:
    """``(VMAs, guard pseudo-VMAs)`` of ``mm``, checked with numpy: every
    VMA page aligned and not empty; the VMAs (guards aside) ascending and
    disjoint; private file mappings at page-aligned file offsets."""
    t = mm.vmas
    if not len(t):
        return t, t
    ups = np.uint64(ps - 1)
    bad = ((t.start & ups) != 0) | ((t.end & ups) != 0) | (t.end <= t.start)
    guard = (t.status & np.uint32(fmt.VMA_AREA_GUARD)) != 0
    rows = np.flatnonzero(~guard)
    order = np.zeros(len(t), bool)
    if len(rows) > 1:
        order[rows[1:]] = t.start[rows[1:]] < t.end[rows[:-1]]
    filep = (~guard) & ((t.status & np.uint32(fmt.VMA_FILE_PRIVATE)) != 0) & ((t.pgoff & ups) != 0)
    problems = bad | order | filep
    if problems.any():
        i = int(np.argmax(problems))
        s, e = int(t.start[i]), int(t.end[i])
        if bad[i]:
            raise CorruptImage(path, _MM_ENTRY_OFFSET, f"VMA {i} [{s:#x}, {e:#x}) is empty or not page aligned")
        if order[i]:
            raise CorruptImage(path, _MM_ENTRY_OFFSET, f"VMA {i} at {s:#x} overlaps or precedes the previous VMA")
        raise CorruptImage(path, _MM_ENTRY_OFFSET, f"VMA {i} [{s:#x}, {e:#x}): file offset "
                           f"{int(t.pgoff[i]):#x} is not page aligned")
    if len(rows) == len(t):
        return t, VmaTable.empty()  # no guards: no copy
    return t.take(rows), t.take(np.flatnonzero(guard))


# --- the checkpoint


class Checkpoint:
    """A checkpoint directory opened read-only (see the module docstring).

    Attributes: ``path`` (absolute, symlinks resolved), ``inventory``
    (``inventory_entry``), ``page_size`` (bytes), ``pids`` (root first),
    ``root_pid``, ``processes`` (read-only mapping pid ->
    :class:`CheckpointProcess`), ``is_criu`` (no dumper fields in the
    inventory), ``owner_uid`` (of the directory), ``pstree``
    (:class:`~dumper.image.tables.PstreeTable` of ``pstree.img``, or None). Properties ``stats``,
    ``parent``, ``parent_paths`` and ``parent_error`` load on first use.

    Raises ImageError (or a subclass) for anything wrong with this
    checkpoint's own metadata: not a directory, bad inventory, a pid without
    its pagemap, a pagemap whose PE_PRESENT pages do not match its pages
    file, bad VMAs, an image file that is a symlink or not a regular file. A
    broken parent chain does not stop the opening (see the module
    docstring). A context manager; :meth:`close` closes the files and any
    parent opened meanwhile.
    """

    def __init__(self, path: str | os.PathLike, *, _root: Path | None = None,
                 _seen: frozenset[Path] = frozenset()) -> None:
        self._dir = ImageDir(path)
        try:
            self._open(_root, _seen)
        except BaseException:
            self._dir.close()
            raise

    def _open(self, root: Path | None, seen: frozenset[Path]) -> None:
        d = self._dir
        self.path = d.path
        self.owner_uid = d.uid
        self._root = root if root is not None else self.path.parent
        self._seen = seen | {self.path}
        self._parent: Checkpoint | None = None
        self._parent_error: ImageError | None = None
        self._parent_checked = False
        self._stats: stats_pb2.dump_stats_entry | None | bool = False  # False: not loaded
        self._files: dict[tuple, tuple[int, str, int]] = {}
        self._criu_files: dict[int, CriuFile] | ImageError | None = None
        self._shared: SharedImages | None = None
        self.left_out: dict[int, list[tuple[int, int]]] = {}
        self._closed = False
        inv_path = self.path / fmt.INVENTORY_NAME
        self.inventory: inventory_pb2.inventory_entry = load_inventory(inv_path, d.open(fmt.INVENTORY_NAME))
        inv = self.inventory
        self.is_criu = not inv.HasField("dumper_format_version")
        inv_ps = inv.page_size if inv.HasField("page_size") else None
        if inv_ps is not None:
            fmt.check_page_size(inv_ps, inv_path, _INVENTORY_ENTRY_OFFSET)

        tree: PstreeTable | None = None
        if d.exists(PSTREE_NAME):  # ppid and threads of each process, whoever lists the pids
            tree = read_pstree(self.path / PSTREE_NAME, d.open(PSTREE_NAME))
        if len(inv.pids):
            pids = list(dict.fromkeys(inv.pids))
            root = inv.root_pid if inv.HasField("root_pid") else pids[0]
            for pid in pids:  # the inventory names them: a missing one is its error
                if not d.exists(fmt.pagemap_name(pid)):
                    raise CorruptImage(inv_path, _INVENTORY_ENTRY_OFFSET, f"pid {pid} has no {fmt.pagemap_name(pid)}")
        elif tree is not None:
            if not len(tree):
                raise CorruptImage(self.path / PSTREE_NAME, _FIRST_ENTRY_OFFSET, "no processes")
            # Processes without memory (zombies) have no pagemap in CRIU's
            # images; the directory is listed once, not looked up per pid.
            have = {int(m.group(1)) for n in d.listdir() if (m := _PAGEMAP_RE.match(n))}
            pids = tree.unique_pids(among=have)
            root = int(tree.pid[0])
        else:
            pids = sorted(int(m.group(1)) for n in d.listdir() if (m := _PAGEMAP_RE.match(n)))
            root = inv.root_pid if inv.HasField("root_pid") else (pids[0] if pids else 0)
        if not pids:
            raise ImageError(self.path, None, "no process images (no pagemap-PID.img)")
        if root not in pids:
            raise CorruptImage(inv_path, _INVENTORY_ENTRY_OFFSET, f"root pid {root} has no pagemap")
        pids.remove(root)
        self.pids: tuple[int, ...] = (root, *pids)
        self.root_pid = root

        procs: dict[int, CheckpointProcess] = {}
        try:
            for pid in self.pids:
                row = tree.find(pid) if tree is not None else -1
                procs[pid] = self._load_process(pid, inv_ps, (tree, row) if row >= 0 else None)
        except BaseException:
            for p in procs.values():
                p.pages.close()
            raise
        self.processes: Mapping[int, CheckpointProcess] = types.MappingProxyType(procs)
        self.page_size = procs[root].page_size
        self.pstree: PstreeTable | None = tree

    def _load_process(self, pid: int, inv_ps: int | None, tree_entry) -> CheckpointProcess:
        d = self._dir
        pm_path = self.path / fmt.pagemap_name(pid)
        mm_path = self.path / fmt.mm_name(pid)
        head, entries = load_pagemap(pm_path, page_size=inv_ps, f=d.open(pm_path.name))
        ps = head.page_size if head.HasField("page_size") else (inv_ps or os.sysconf("SC_PAGE_SIZE"))
        if inv_ps is not None and ps != inv_ps:
            raise CorruptImage(pm_path, _FIRST_ENTRY_OFFSET, f"page size {ps}, the inventory says {inv_ps}")
        # Without mm-PID.img (a CRIU pre-dump, or a damaged set) VMAs are
        # unknown: every command reads what the pagemap holds and says so.
        mm = load_mm(mm_path, d.open(mm_path.name)) if d.exists(mm_path.name) else None
        vmas, guards = _check_vmas(mm, mm_path, ps) if mm is not None else (VmaTable.empty(), VmaTable.empty())
        if mm is not None:
            mm.split(vmas, guards)  # one copy of the columns
        compressed = head.compression == fmt.COMPRESSION_ZSTD  # load_pagemap refused unknown codecs
        name = fmt.zpages_name(head.pages_id) if compressed else fmt.pages_name(head.pages_id)
        pages = PagesReader(self.path / name, compressed=compressed, page_size=ps, f=d.open(name))
        try:
            if pages.page_size != ps:
                raise CorruptImage(pages.path, _FIRST_ENTRY_OFFSET, f"page size {pages.page_size}, the pagemap's is {ps}")
            present = entries.pages(fmt.PE_PRESENT)
            if present != pages.nr_pages:
                raise CorruptImage(
                    pages.path, pages.end_offset,
                    f"holds {pages.nr_pages} pages, {pm_path.name} has {present} PE_PRESENT pages",
                )
        except BaseException:
            pages.close()
            raise
        return CheckpointProcess(
            pid=pid, page_size=ps, mm=mm, vmas=vmas, guards=guards, head=head, entries=entries, pages=pages,
            mm_path=mm_path, pagemap_path=pm_path,
            ppid=int(tree_entry[0].ppid[tree_entry[1]]) if tree_entry is not None else None,
            threads=tree_entry[0].threads(tree_entry[1]) if tree_entry is not None else (),
        )

    def open_image(self, name: str):
        """Image file ``name`` of this checkpoint opened for reading, the one
        safe way (relative to the directory, never through a symlink,
        regular files only: :class:`~dumper.image.mapped.ImageDir`).
        ImageError otherwise."""
        self._check_open()
        return self._dir.open(name)

    def has_image(self, name: str) -> bool:
        """Whether the directory has an entry ``name`` (not followed)."""
        return self._dir.exists(name)

    def listdir(self) -> list[str]:
        """Names in the checkpoint directory (any kind of entry), sorted."""
        self._check_open()
        return sorted(self._dir.listdir())

    # --- lazily loaded parts

    @property
    def stats(self) -> stats_pb2.dump_stats_entry | None:
        """The ``dump_stats_entry`` of ``stats-dump``, None if there is none.
        ImageError if the file is damaged."""
        if self._stats is False:
            spath = self.path / fmt.STATS_DUMP_NAME
            if not self._dir.exists(spath.name):
                self._stats = None
            else:
                from .reader import _read_entries

                name, msgs, _ = _read_entries(spath, self._dir.open(spath.name))
                if name != "STATS" or len(msgs) != 1:
                    raise CorruptImage(spath, _FIRST_ENTRY_OFFSET, f"expected one STATS entry, found {name} x{len(msgs)}")
                self._stats = msgs[0].dump if msgs[0].HasField("dump") else None
        return self._stats

    @property
    def has_parent_link(self) -> bool:
        """Whether the directory has a ``parent`` entry (good or not)."""
        return os.path.lexists(self.path / fmt.PARENT_LINK)

    @property
    def parent(self) -> Checkpoint | None:
        """The parent checkpoint (opened on first use, closed with this one),
        or None without a ``parent`` link. ImageError (the same each time)
        when the link is broken, the parent does not open, or it is not the
        checkpoint this one was taken over (checkpoint ids differ)."""
        self._check_open()
        if not self._parent_checked:
            self._parent_checked = True
            try:
                target = _parent_target(self.path, self._root, set(self._seen), len(self._seen) - 1)
                if target is not None:
                    self._parent = Checkpoint(target, _root=self._root, _seen=frozenset(self._seen))
                    self._check_parent_id(self._parent)
            except ImageError as err:
                if self._parent is not None:
                    self._parent.close()
                    self._parent = None
                self._parent_error = err
        if self._parent_error is not None:
            raise self._parent_error
        return self._parent

    def _check_parent_id(self, parent: Checkpoint) -> None:
        want = self.inventory.parent_checkpoint_id if self.inventory.HasField("parent_checkpoint_id") else None
        if not want:
            return  # CRIU's sets and older dumps record none
        have = parent.inventory.checkpoint_id if parent.inventory.HasField("checkpoint_id") else None
        if have != want:
            raise ImageError(
                parent.path, None,
                f"is not the parent {self.path} was taken over: its checkpoint id is {have or 'absent'}, "
                f"{self.path} records parent id {want} (the parent was replaced or the link re-pointed)",
            )

    @property
    def parent_error(self) -> ImageError | None:
        """Why the parent cannot be used, or None (no parent, or a good one)."""
        try:
            self.parent
        except ImageError as err:
            return err
        return None

    @property
    def parent_paths(self) -> tuple[Path, ...]:
        """The resolved parent chain, nearest first, as far as its links
        resolve inside the directory holding the checkpoint (reads links
        only; a damaged parent is still listed: :meth:`chain_status` says)."""
        out: list[Path] = []
        seen = set(self._seen)
        cur = self.path
        while True:
            try:
                target = _parent_target(cur, self._root, seen, len(seen) - 1)
            except ImageError:
                break
            if target is None:
                break
            out.append(target)
            seen.add(target)
            cur = target
        return tuple(out)

    def chain(self) -> Iterator[Checkpoint]:
        """This checkpoint, then its parent, grandparent... (opened as
        reached; ImageError at a broken link)."""
        ck: Checkpoint | None = self
        while ck is not None:
            yield ck
            ck = ck.parent

    def chain_status(self) -> list[dict]:
        """The parent chain, nearest first, as ``{"path", "ok", "error"}``
        dicts: every usable parent, then (if the chain is broken) one entry
        with ``ok`` false naming the broken link and why."""
        out = []
        ck = self
        while True:
            try:
                nxt = ck.parent
            except ImageError as err:
                link = ck.path / fmt.PARENT_LINK
                try:
                    target = os.readlink(link)
                except OSError:
                    target = None
                out.append({"path": str(link), "target": target, "ok": False, "error": str(err)})
                return out
            if nxt is None:
                return out
            out.append({"path": str(nxt.path), "target": None, "ok": True, "error": None})
            ck = nxt

    # --- lookups

    def process(self, pid: int | None = None) -> CheckpointProcess:
        """The process ``pid`` (None: the root). ImageError if absent."""
        self._check_open()
        if pid is None:
            pid = self.root_pid
        try:
            return self.processes[pid]
        except KeyError:
            raise ImageError(self.path, None, f"no process {pid} in this checkpoint (pids {list(self.pids)})") from None

    def rseq_areas(self, pid: int | None = None) -> list[tuple[int, int]]:
        """``(address, size)`` of the ``struct rseq`` of each thread of
        process ``pid``, from its ``core-TID.img`` (CRIU's rseq_entry); empty
        when the checkpoint has no core images. The kernel rewrites some of
        its fields by itself (:data:`dumper.kernel.ptrace.RSEQ_KERNEL_FIELDS`)."""
        from .pb import core_pb2

        proc = self.process(pid)
        out = []
        for tid in proc.threads or (proc.pid,):
            name = fmt.core_name(tid)
            if not self._dir.exists(name):
                continue
            f = self._dir.open(name)
            with f:
                if fmt.read_magic(f, self.path / name) != "CORE":
                    continue
                for off, payload in fmt.iter_entries(f, self.path / name, 8):
                    core = fmt.parse_entry(core_pb2.core_entry, payload, self.path / name, off)
                    r = core.thread_core.rseq_entry
                    if core.thread_core.HasField("rseq_entry") and r.rseq_abi_pointer:
                        out.append((r.rseq_abi_pointer, max(r.rseq_abi_size, 32)))
                    break
        return out

    @property
    def shared(self) -> SharedImages:
        """Shared memory objects and COW references
        (:class:`~dumper.image.shared.SharedImages`), loaded on first use."""
        self._check_open()
        if self._shared is None:
            self._shared = SharedImages(self)
        return self._shared

    def iter_entries(self, pid: int | None = None) -> Iterator[PagemapEntry]:
        """The pagemap entries of ``pid`` (default root), ascending by vaddr,
        as recorded here (PE_PARENT entries are not resolved)."""
        yield from self.process(pid).entries

    def iter_pages(
        self, pid: int | None = None, *, max_pages: int = 256, parents: bool = True
    ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(vaddr, data)`` for every recorded page of ``pid`` (default
        root), ascending: PE_PRESENT pages from this checkpoint and, with
        ``parents``, PE_PARENT pages read from the parent chain. ``data`` is
        a whole number of pages, at most ``max_pages`` of them, never spanning
        two entries. CorruptImage/ImageError on damaged data or a PE_PARENT
        range the chain does not hold."""
        if max_pages < 1:
            raise ValueError("max_pages must be >= 1")
        proc = self.process(pid)
        ps = proc.page_size
        for e in proc.entries:
            present = e.flags & fmt.PE_PRESENT
            if not present and not (parents and e.flags & fmt.PE_PARENT) and not e.flags & fmt.PE_COW:
                continue
            if present:
                yield from proc.iter_entry_data(e, max_pages)
                continue
            for done in range(0, e.nr_pages, max_pages):
                n = min(max_pages, e.nr_pages - done)
                vaddr = e.vaddr + done * ps
                if e.flags & fmt.PE_COW:  # stored once, in another process's stream
                    yield vaddr, b"".join(self.shared.cow_chunks(proc, vaddr, vaddr + n * ps))
                    continue
                yield vaddr, self._parent_for(proc, vaddr, n * ps).read_recorded(proc.pid, vaddr, n * ps)

    def iter_copy(self, pid: int | None = None, *, parents: bool = True, max_pages: int = 256,
                  max_zero_bytes: int = 1 << 30) -> Iterator[tuple[int, bytes | memoryview]]:
        """What a copy of the checkpoint (flatten, export) writes for
        ``pid``: ``(vaddr, data)`` like :meth:`iter_pages` (PE_PARENT resolved
        with ``parents``), except that pages which are holes of a raw pages
        file (a sparse file: zeros it does not hold) are left out where a
        page without an entry reads as zeros too (private anonymous VMAs),
        so the work follows the data the files hold, not the pages they
        declare (a 1 TiB sparse set is copied in the time of its data).
        Holes elsewhere (file mappings, sets without mm) are given as zeros,
        at most ``max_zero_bytes`` in all (then ImageError). After the
        iteration ``self.left_out[pid]`` holds the ``(start, end)`` byte
        ranges left out. Entries' crc32 checked as :meth:`iter_pages` does."""
        proc = self.process(pid)
        ps = proc.page_size
        ent = proc.entries
        bits = fmt.PE_PRESENT | fmt.PE_COW | (fmt.PE_PARENT if parents else 0)
        left_out: list[tuple[int, int]] = []
        self.left_out[proc.pid] = left_out
        zeros = 0
        vmas = proc.vmas if proc.mm is not None else None
        kinds = hole_kinds(vmas) if vmas is not None else None
        crcs: dict = {}
        for s, e in self._ranges(proc, bits):
            pos = s
            for chunk in self._chunks(proc, s, e, None, True, crcs):
                n = len(chunk)
                if type(chunk) is Hole:
                    for a, b, droppable in _split_by_zero_vmas(vmas, kinds, pos, pos + n):
                        if droppable:
                            left_out.append((a, b))
                            continue
                        zeros += b - a
                        if zeros > max_zero_bytes:
                            raise ImageError(
                                proc.pages.path, None,
                                f"pid {proc.pid}: [{a:#x}, {b:#x}) and more are holes of the pages file (a sparse "
                                f"file) where the zeros cannot be left out; refusing to write more than "
                                f"{max_zero_bytes >> 20} MiB of them",
                            )
                        for z in range(a, b, max_pages * ps):
                            yield z, bytes(min(max_pages * ps, b - z))
                else:
                    mv = memoryview(chunk)
                    for o in range(0, n, max_pages * ps):
                        yield pos + o, mv[o:o + max_pages * ps]
                pos += n

    def copied_per_vma(self, pid: int | None = None) -> np.ndarray:
        """Pages a copy made by :meth:`iter_copy` (PE_PARENT resolved) holds
        in each VMA of ``pid``'s ``mm.vmas`` (image order; int64; guard
        pseudo-VMAs 0): its ``nr_pages_dumped``."""
        proc = self.process(pid)
        t = proc.mm.vmas if proc.mm is not None else VmaTable.empty()
        if not len(t):
            return np.zeros(0, np.int64)
        ps = proc.page_size
        ent = proc.entries
        rec = ent[ent.mask(fmt.PE_PRESENT | fmt.PE_PARENT | fmt.PE_COW)] if len(ent) else ent
        rec = PagemapEntries(rec.vaddr, rec.nr_pages, np.full(len(rec), fmt.PE_PRESENT, np.uint32), rec.pages_off)
        have = pages_per_vma(rec, t.start, t.end, ps)[0]
        ranges = self.left_out.get(proc.pid, [])
        if ranges:
            holes = PagemapEntries(np.array([a for a, _ in ranges], np.uint64),
                                   np.array([(b - a) // ps for a, b in ranges], np.uint64),
                                   np.full(len(ranges), fmt.PE_PRESENT, np.uint32), np.zeros(len(ranges), np.int64))
            have -= pages_per_vma(holes, t.start, t.end, ps)[0]
        have[(t.status & np.uint32(fmt.VMA_AREA_GUARD)) != 0] = 0
        return have

    def recorded_ranges(self, pid: int | None = None) -> list[tuple[int, int]]:
        """``(start, end)`` byte ranges (end-exclusive, ascending, adjacent
        entries merged) of ``pid``'s pages that have PE_PRESENT, PE_PARENT or
        PE_COW entries here: the pages the dump recorded."""
        return self._ranges(self.process(pid), fmt.PE_PRESENT | fmt.PE_PARENT | fmt.PE_COW)

    @staticmethod
    def _ranges(proc: CheckpointProcess, bits: int) -> list[tuple[int, int]]:
        ent = proc.entries
        keep = ent.mask(bits)
        if not keep.any():
            return []
        ps = np.uint64(proc.page_size)
        starts = ent.vaddr[keep] // ps
        ends = starts + ent.nr_pages[keep]
        brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        s = starts[np.concatenate(([0], brk))].tolist()
        e = ends[np.concatenate((brk - 1, [len(ends) - 1]))].tolist()
        p = proc.page_size
        return [(a * p, b * p) for a, b in zip(s, e)]

    # --- reading memory

    def read(self, pid: int | None, addr: int, size: int) -> bytes:
        """``size`` bytes of process ``pid``'s memory (None: the root) at byte
        address ``addr``, as they were at dump time (see the module docstring
        for where each page comes from). Only the zstd frames holding the
        range are decompressed; the work is per entry and per frame.

        Raises ValueError for a negative ``addr``/``size`` or a range past
        2**64; ImageError when part of the range is outside every recorded
        VMA, in a guard region, in a VMA whose contents are not in the
        checkpoint, in a private file mapping whose file is gone or changed
        (MappedFileError naming the file and what changed), past the end of
        that file, or in a PE_PARENT range the parent chain does not hold;
        CorruptImage for damaged page data.
        """
        proc = self.process(pid)
        lo, hi = _page_span(proc.page_size, addr, size)
        crcs: dict = {}  # one read: entries cut at VMA boundaries are still checked whole
        parts = [c for s, e, vma in self._vma_pieces(proc, lo, hi, addr)
                 for c in self._chunks(proc, s, e, vma, False, crcs)]
        return _join(parts, addr - lo, size)

    def read_recorded(self, pid: int | None, addr: int, size: int) -> bytes:
        """Like :meth:`read`, but only pages that have pagemap entries here
        (PE_PRESENT, or PE_PARENT resolved through the chain) are allowed;
        any other page raises ImageError. VMAs are not consulted."""
        proc = self.process(pid)
        lo, hi = _page_span(proc.page_size, addr, size)
        parts = list(self._chunks(proc, lo, hi, None, False, {})) if hi > lo else []
        return _join(parts, addr - lo, size)

    def iter_chunks(
        self, pid: int | None, addr: int, size: int, *, recorded_only: bool = False
    ) -> Iterator[tuple[int, bytes | memoryview]]:
        """Stream what :meth:`read` (or, with ``recorded_only``,
        :meth:`read_recorded`) would return, without assembling it: yield
        ``(vaddr, chunk)`` in address order, each chunk a read-only
        bytes-like object (a decompressed frame or part of one, a view of
        shared zeros, file data) of a whole number of pages, together
        covering ``[addr, addr + size)``. ``addr`` and ``size`` must be page
        aligned (ValueError). Errors as :meth:`read`, raised when reached."""
        proc = self.process(pid)
        ps = proc.page_size
        if addr % ps or size % ps:
            raise ValueError(f"range {addr:#x} + {size} is not page aligned")
        lo, hi = _page_span(ps, addr, size)
        pieces = [(lo, hi, None)] if recorded_only else self._vma_pieces(proc, lo, hi, addr)
        pos = lo
        crcs: dict = {}
        for s, e, vma in pieces:
            if s >= e:
                continue
            for chunk in self._chunks(proc, s, e, vma, False, crcs):
                yield pos, chunk
                pos += len(chunk)

    def _vma_pieces(self, proc: CheckpointProcess, lo: int, hi: int, addr: int) -> Iterator[tuple[int, int, object]]:
        """Cut ``[lo, hi)`` at VMA boundaries: ``(start, end, vma)``; ImageError
        at the first address no recorded VMA holds (``addr``: the address
        asked for, named when the very first page is outside) or that lies
        in a guard region."""
        if hi <= lo:
            return
        if proc.mm is None:
            yield lo, hi, None
            return
        g = proc.guard_at(lo, hi)
        if g is not None:
            raise ImageError(
                proc.mm_path, None,
                f"pid {proc.pid}: [{max(lo, g.start):#x}, {min(hi, g.end):#x}) is a guard region "
                "(MADV_GUARD_INSTALL): reading it faults in the process (SIGSEGV)",
            )
        vmas = proc.vmas
        n = len(vmas)
        i = max(vmas.index_at(lo), 0)
        if i < n and int(vmas.end[i]) <= lo:
            i += 1
        pos = lo
        while pos < hi:
            if i >= n or int(vmas.start[i]) > pos:
                raise ImageError(
                    proc.mm_path, None, f"pid {proc.pid}: address {max(pos, addr):#x} is outside any recorded VMA"
                )
            end = min(int(vmas.end[i]), hi)
            yield pos, end, vmas[i]
            pos = end
            i += 1

    def _chunks(self, proc: CheckpointProcess, s: int, e: int, vma, holes: bool = False,
                crcs: dict | None = None) -> Iterator[bytes | memoryview | Hole]:
        """Bytes-like chunks that together are the bytes of page-aligned
        ``[s, e)``, in order. ``vma`` decides what pages without an entry
        hold; None: they are an error. With ``holes``, zeros that are holes
        of a raw pages file come as :class:`Hole` objects, never read.
        ``crcs``: running crc32 of entries being read whole, shared by the
        calls of one read (a range is cut at VMA boundaries, an entry is not):
        an entry read from its first page to its last is checked."""
        ps = proc.page_size
        entries = proc.entries
        n_ent = len(entries)
        i = max(entries.index_at(s), 0)
        if i < n_ent and entries[i].end(ps) <= s:
            i += 1
        pos = s
        while pos < e and i < n_ent:
            ent = entries[i]
            es = ent.vaddr
            if es >= e:
                break
            if es > pos:
                yield from self._hole(proc, pos, es, vma)
                pos = es
            b = min(es + ent.nr_pages * ps, e)
            if ent.flags & fmt.PE_PRESENT:
                track = None
                if crcs is not None and ent.crc32 is not None:
                    key = (id(self), proc.pid, es)
                    if pos == es:
                        crcs[key] = 0  # read from its first page: its checksum applies
                    if key in crcs:
                        track = (crcs, key, ent, b == es + ent.nr_pages * ps)
                yield from self._present(proc, ent.pages_off + (pos - es) // ps, pos, b, track, holes)
            elif ent.flags & fmt.PE_PARENT:
                parent = self._parent_for(proc, pos, b - pos)
                pproc = parent.processes.get(proc.pid)
                if pproc is None:
                    raise ImageError(
                        parent.path, None,
                        f"has no process {proc.pid}, whose pages [{pos:#x}, {b:#x}) {proc.pagemap_path} "
                        "marks PE_PARENT",
                    )
                yield from parent._chunks(pproc, pos, b, None, holes, crcs)
            elif ent.flags & fmt.PE_COW:
                yield from self.shared.cow_chunks(proc, pos, b)
            else:
                raise ImageError(
                    proc.pagemap_path, None,
                    f"pid {proc.pid}: pages [{pos:#x}, {b:#x}) are lazy ({fmt.format_flags(ent.flags, 'pmap.flags')}):"
                    " their data is not in the checkpoint",
                )
            pos = b
            i += 1
        if pos < e:
            yield from self._hole(proc, pos, e, vma)

    def _parent_for(self, proc: CheckpointProcess, addr: int, size: int) -> Checkpoint:
        try:
            parent = self.parent
        except ImageError as err:
            raise ImageError(
                proc.pagemap_path, None,
                f"pid {proc.pid}: pages [{addr:#x}, {addr + size:#x}) are in the parent checkpoint, which "
                f"cannot be used: {err}",
            ) from err
        if parent is None:
            raise ImageError(
                proc.pagemap_path, None,
                f"pid {proc.pid}: pages [{addr:#x}, {addr + size:#x}) are PE_PARENT but there is no parent checkpoint",
            )
        return parent

    def _present(self, proc: CheckpointProcess, index: int, s: int, e: int,
                 track: tuple | None = None, holes: bool = False) -> Iterator[bytes | Hole]:
        """Stream pages from ``index`` on, for ``[s, e)``: one chunk per zstd
        frame (whole frames come back without a copy), or per 16 MiB raw.
        ``track``: ``(crcs, key, entry, last)`` when the entry is being read
        from its first page: the running crc32 (raw files written by dumper)
        goes on in ``crcs[key]`` and, where ``[s, e)`` ends the entry
        (``last``), is checked before the last chunk is given out
        (CorruptImage). ``holes``: holes of a raw pages file come as
        :class:`Hole` (their zeros never read; the crc still checked)."""
        ps = proc.page_size
        pages = proc.pages
        step = pages.frame_pages or max(1, _RAW_CHUNK // ps)
        left = (e - s) // ps
        crc = track[0][track[1]] if track is not None else None
        gaps = pages.holes(index, left) if holes else []
        gaps.append((index + left, 0))  # sentinel
        g = 0
        while left:
            if index == gaps[g][0] and gaps[g][1]:  # a hole: zeros, not read
                n = gaps[g][1]
                data: bytes | Hole = Hole(n * ps)
                g += 1
            else:
                n = min(left, step - index % step, gaps[g][0] - index)  # stop at a frame boundary or a hole
                data = pages.read_pages(index, n)
            index += n
            left -= n
            if crc is not None:
                crc = crc32_zeros(crc, len(data)) if type(data) is Hole else zlib.crc32(data, crc)
                track[0][track[1]] = crc
                if not left and track[3]:
                    del track[0][track[1]]
                    proc.check_crc(track[2], crc)
            yield data

    def _hole(self, proc: CheckpointProcess, s: int, e: int, vma) -> Iterator[bytes | memoryview]:
        if vma is None:
            extra = " (and there is no mm image to say which VMA holds them)" if proc.mm is None else ""
            raise ImageError(proc.pagemap_path, None, f"pid {proc.pid}: no pagemap entry for [{s:#x}, {e:#x}){extra}")
        kind, why = _vma_hole(vma)
        if kind == "zero":
            yield from _zeros(e - s)
        elif kind == "file":
            yield from self._read_file(proc, s, e, vma)
        elif kind == "shared":
            yield from self.shared.vma_chunks(proc.pid, s, e, vma)
        else:
            raise ImageError(
                proc.mm_path, None,
                f"pid {proc.pid}: the contents of [{s:#x}, {e:#x}) (VMA {vma.start:#x}-{vma.end:#x} "
                f"{printable_path(vma.path or '')}) are not in the checkpoint: {why}",
            )

    # --- private file mappings

    def criu_files(self) -> dict[int, CriuFile]:
        """CRIU's regular files of this set by id (``files.img`` or
        ``reg-files.img``), loaded on first use; {} when it has neither.
        ImageError if the one present is damaged."""
        if self._criu_files is None:
            try:
                self._criu_files = load_criu_files(self._dir)
            except ImageError as err:
                self._criu_files = err  # the same answer every time, without reading again
        if isinstance(self._criu_files, ImageError):
            raise self._criu_files
        return self._criu_files

    def mapped_file(self, proc: CheckpointProcess, vma) -> tuple[str | None, FileIdentity | None, str]:
        """``(path, identity to check, why not)`` of the file behind private
        file VMA ``vma``: from dumper's own fields, else (a CRIU set) from
        its ``files.img``/``reg-files.img`` entry named by ``shmid``. Path
        None when the image does not say (``why`` says why)."""
        if vma.HasField("path") and vma.path.startswith("/"):
            path = vma.path.removesuffix(" (deleted)")
            ident = recorded_identity(vma)
            if ident.inode is None:
                return None, None, "the image records a path but no inode for it"
            return path, ident, ""
        files = self.criu_files()
        cf = files.get(vma.shmid)
        if cf is None:
            where = "in files.img or reg-files.img" if files else "named: the set has no files.img or reg-files.img"
            return None, None, f"file id {vma.shmid} is not {where}"
        if not cf.name.startswith("/"):
            return None, None, f"files.img names file id {vma.shmid} {printable_path(cf.name)!r}, not an absolute path"
        return cf.name, FileIdentity(None, None, None, cf.size), ""

    def _mapped_file(self, proc: CheckpointProcess, vma, s: int, e: int) -> tuple[int, str, int]:
        what = f"pid {proc.pid}'s untouched private pages [{s:#x}, {e:#x}) mapped at {vma.start:#x}"
        path, ident, why = self.mapped_file(proc, vma)
        if path is None:
            raise ImageError(
                proc.mm_path, None,
                f"pid {proc.pid}: [{s:#x}, {e:#x}) are untouched pages of a private file mapping and the image "
                f"does not say which file: {why}",
            )
        key = (path, ident)
        hit = self._files.get(key)
        if hit is not None:
            return hit
        deleted = vma.HasField("path") and vma.path.endswith(" (deleted)")
        try:
            fd, size = open_mapped_file(path, ident, checkpoint_uid=self.owner_uid, what=what)
        except MappedFileError as err:
            if deleted:
                raise MappedFileError(err.path, None, f"{err.msg} (it was already deleted at dump time)") from err
            raise
        self._files[key] = (fd, path, size)
        return fd, path, size

    def _read_file(self, proc: CheckpointProcess, s: int, e: int, vma) -> Iterator[memoryview]:
        """The mapped file's bytes for ``[s, e)``, in chunks of whole pages."""
        fd, path, size = self._mapped_file(proc, vma, s, e)
        shown = printable_path(path)
        ps = proc.page_size
        # Bounded before any arithmetic reaches the kernel: an offset past
        # 2**63 is no file's.
        first = vma.pgoff + (s - vma.start)
        if first > _OFF_LIMIT or first + (e - s) > _OFF_LIMIT:
            raise ImageError(proc.mm_path, None, f"pid {proc.pid}: VMA {vma.start:#x}-{vma.end:#x} maps file offset "
                             f"{vma.pgoff:#x}, beyond any file ({shown})")
        # Pages wholly past the end of the file do not exist (SIGBUS); the
        # page holding the end reads as zeros past it.
        have = -(-size // ps) * ps  # bytes of pages that exist
        if first + (e - s) > have:
            bad = max(s, vma.start + (have - vma.pgoff)) if have > vma.pgoff else s
            raise ImageError(
                shown, None,
                f"pid {proc.pid}: [{bad:#x}, {e:#x}) lies past the end of the mapped file ({size} bytes): no such pages",
            )
        pos = s
        while pos < e:
            n = min(e - pos, _RAW_CHUNK)
            offset = vma.pgoff + (pos - vma.start)
            buf = bytearray(n)
            got = 0
            while got < n:
                try:
                    k = os.preadv(fd, [memoryview(buf)[got:]], offset + got)
                except OSError as err:
                    raise ImageError(shown, offset + got, f"reading the mapped file: {err.strerror}") from err
                if k == 0:
                    break
                got += k
            yield memoryview(buf).toreadonly()
            pos += n

    # --- verification

    def verify(self, *, parents: bool = True, frames: bool = True, threads: int | None = None) -> Iterator[ImageError]:
        """Check the checkpoint; yield one CorruptImage/ImageError per problem
        found (not raised), nothing when intact.

        Checks: every zstd frame decompressed (content size, XXH64 checksum,
        frame length against the index) and, for raw pages files dumper
        wrote, every entry's pages against the crc32 its pagemap entry
        records, unless ``frames`` is false (raw files without checksums, as
        CRIU writes them, cannot be checked: :meth:`unchecked_pages`); PE_PRESENT
        pages equal to the pages file's length; every entry inside recorded
        VMAs whose contents are dumped; VMAs' ``nr_pages_dumped`` equal to
        their PE_PRESENT pages; ``stats-dump`` readable; every PE_PARENT range
        held by the parent's entries. With ``parents`` the whole parent chain
        is checked the same way. (Entry order, alignment and overlap, VMA
        order, the frame index and footer are checked when opening.)

        Frames are decompressed by ``threads`` workers (default: up to 4, the
        CPU count) in batches of about 4 MiB of compressed data, so memory
        stays bounded whatever the size. Each problem is yielded once (a
        broken parent link is met both by the PE_PARENT check and by the walk).
        """
        seen: set[str] = set()
        for err in self._verify_chain(frames, threads, parents):
            if str(err) not in seen:
                seen.add(str(err))
                yield err

    def _verify_chain(self, frames: bool, threads: int | None, parents: bool) -> Iterator[ImageError]:
        ck: Checkpoint | None = self
        while ck is not None:
            yield from ck._verify_one(frames, threads, parents)
            if not parents:
                return
            try:
                ck = ck.parent
            except ImageError as err:
                yield err
                return

    def _verify_one(self, frames: bool, threads: int | None, parents: bool = True) -> Iterator[ImageError]:
        try:
            self.stats
        except ImageError as err:
            yield err
        for proc in self.processes.values():
            yield from self._verify_layout(proc)
            yield from self._verify_files(proc)
            # Without parents the PE_PARENT ranges are not this checkpoint's
            # to check: what the child holds is verified, nothing more.
            if parents and proc.entries.mask(fmt.PE_PARENT).any():
                yield from self._verify_parent_cover(proc)
            if frames:
                yield from _verify_frames(proc.pages, threads)
                yield from _verify_crcs(proc)
        try:
            yield from self.shared.verify(frames, threads)  # shared memory objects, COW references
        except ImageError as err:
            yield err

    def unchecked_pages(self) -> dict[int, int]:
        """PE_PRESENT pages per pid whose contents nothing can check: raw
        pages files without checksums (CRIU's sets; dumper's raw sets carry a
        crc32 per pagemap entry, its compressed ones zstd's checksums)."""
        out = {}
        for pid, proc in self.processes.items():
            if proc.pages.compressed:
                continue
            ent = proc.entries
            no_crc = ent.mask(fmt.PE_PRESENT)
            if ent.crc32 is not None:
                no_crc &= ent.crc32 < 0
            n = int(ent.nr_pages[no_crc].sum(dtype=np.uint64)) if len(ent) else 0
            if n:
                out[pid] = n
        return out

    def _verify_files(self, proc: CheckpointProcess) -> Iterator[ImageError]:
        """One problem per mapped file that untouched private pages need
        and that cannot supply them (gone, changed, not to be read here)."""
        t = proc.vmas
        if not len(t):
            return
        ps = proc.page_size
        # Needed only where some page of a private file VMA has no pagemap entry.
        pres, other = pages_per_vma(proc.entries, t.start, t.end, ps)
        size = ((t.end - t.start) // np.uint64(ps)).astype(np.int64)
        need = np.flatnonzero((hole_kinds(t) == _HOLE_FILE) & (pres + other < size))
        seen = set()
        for i in need.tolist():
            v = t[i]
            if v.path.endswith(" (deleted)"):
                continue  # a file deleted before the dump: reads say so, nothing changed since
            path, ident, why = self.mapped_file(proc, v)
            if path is None or (path, ident) in seen:
                continue  # unknown file: reads say so; nothing to verify
            seen.add((path, ident))
            try:
                self._mapped_file(proc, v, v.start, v.end)
            except MappedFileError as err:
                yield err

    def _verify_layout(self, proc: CheckpointProcess) -> Iterator[ImageError]:
        """Entries outside recorded VMAs or in VMAs whose contents are not
        dumped, and VMAs whose recorded page counts differ from the
        pagemap's; at most :data:`_MAX_REPORTS` problems of each kind, then
        one line counting the rest. Vectorised: no Python loop per entry."""
        ps = proc.page_size
        path = proc.pagemap_path
        if proc.mm is None:
            return
        t = proc.vmas
        ent = proc.entries
        ups = np.uint64(ps)
        if len(ent):
            # Pages of each entry covered by VMAs (VMAs as "entries" of a pagemap: ascending, disjoint).
            as_entries = PagemapEntries(t.start, (t.end - t.start) // ups, np.full(len(t), fmt.PE_PRESENT, np.uint32),
                                        np.zeros(len(t), np.int64))
            covered, _ = pages_per_vma(as_entries, (ent.vaddr // ups).astype(np.int64),
                                       ent.end_pages(ps).astype(np.int64), ps, in_pages=True)
            outside = np.flatnonzero(covered < ent.nr_pages.astype(np.int64))
            for k in outside[:_MAX_REPORTS].tolist():
                s, e = int(ent.vaddr[k]), int(ent.vaddr[k]) + int(ent.nr_pages[k]) * ps
                pos = self._first_outside(t, s, e)
                yield CorruptImage(path, None,
                                   f"pid {proc.pid}: entry {k + 1} [{s:#x}, {e:#x}): {pos:#x} is outside any recorded VMA")
            if len(outside) > _MAX_REPORTS:
                yield CorruptImage(path, None, f"pid {proc.pid}: and {len(outside) - _MAX_REPORTS} more entries "
                                   "outside any recorded VMA")
            # Entries inside VMAs whose contents are not dumped.
            kinds = hole_kinds(t)
            none = np.flatnonzero((kinds == _HOLE_NONE) | (kinds == _HOLE_SHARED))
            reported = 0
            ends = ent.end_pages(ps)
            for j in none.tolist():
                lo = int(np.searchsorted(ends, t.start[j] // ups, side="right"))
                hi = int(np.searchsorted(ent.vaddr, t.end[j], side="left"))
                if hi <= lo:
                    continue
                v = t[j]
                why = _vma_hole(v)[1] or "a shared memory object's, saved once in its own pagemap"
                for k in range(lo, hi):
                    if reported == _MAX_REPORTS:
                        break
                    reported += 1
                    s, e = int(ent.vaddr[k]), int(ent.vaddr[k]) + int(ent.nr_pages[k]) * ps
                    yield CorruptImage(path, None,
                                       f"pid {proc.pid}: entry {k + 1} [{s:#x}, {e:#x}) lies in VMA {v.start:#x}-"
                                       f"{v.end:#x} whose contents are not dumped ({why})")
        pres, par = pages_per_vma(ent, t.start, t.end, ps)
        if len(ent):  # PE_PARENT only: lazy pages count in neither
            par = pages_per_vma(PagemapEntries(ent.vaddr, ent.nr_pages,
                                               np.where(ent.mask(fmt.PE_PARENT), np.uint32(fmt.PE_PRESENT),
                                                        np.uint32(0)), ent.pages_off),
                                t.start, t.end, ps)[0]
        for col, have, what in ((t.nr_pages_dumped, pres, "pages dumped"), (t.nr_pages_parent, par, "pages in the parent")):
            bad = np.flatnonzero((col >= 0) & (col != have))
            for j in bad[:_MAX_REPORTS].tolist():
                yield CorruptImage(
                    proc.mm_path, None,
                    f"pid {proc.pid}: VMA {int(t.start[j]):#x}-{int(t.end[j]):#x} records {int(col[j])} {what}, "
                    f"the pagemap has {int(have[j])}",
                )
            if len(bad) > _MAX_REPORTS:
                yield CorruptImage(proc.mm_path, None,
                                   f"pid {proc.pid}: and {len(bad) - _MAX_REPORTS} more VMAs whose {what} differ")

    @staticmethod
    def _first_outside(t: VmaTable, s: int, e: int) -> int:
        """The first address of ``[s, e)`` no row of ``t`` holds."""
        pos = s
        i = max(t.index_at(pos), 0)
        while pos < e:
            if i >= len(t) or int(t.start[i]) > pos:
                return pos
            if int(t.end[i]) > pos:
                pos = int(t.end[i])
            i += 1
        return e

    def _verify_parent_cover(self, proc: CheckpointProcess) -> Iterator[ImageError]:
        try:
            parent = self.parent
        except ImageError as err:
            yield err
            return
        if parent is None:
            yield CorruptImage(proc.pagemap_path, None, f"pid {proc.pid}: PE_PARENT entries but no parent checkpoint")
            return
        pproc = parent.processes.get(proc.pid)
        if pproc is None:
            yield CorruptImage(
                parent.path, None, f"no process {proc.pid}, which has PE_PARENT entries in {proc.pagemap_path}"
            )
            return
        ps = proc.page_size
        pent = pproc.entries
        for ent in proc.entries[proc.entries.mask(fmt.PE_PARENT)]:
            s, e = ent.vaddr, ent.vaddr + ent.nr_pages * ps
            i = pent.index_at(s)
            if i < 0 or pent[i].vaddr + pent[i].nr_pages * ps <= s:
                i += 1
            pos = s
            missing = []
            while pos < e:
                if i >= len(pent) or pent[i].vaddr >= e:
                    missing.append((pos, e))
                    break
                pe = pent[i]
                if pe.vaddr > pos:
                    missing.append((pos, pe.vaddr))
                    pos = pe.vaddr
                    continue
                stop = min(pe.vaddr + pe.nr_pages * ps, e)
                if not pe.flags & (fmt.PE_PRESENT | fmt.PE_PARENT):
                    missing.append((pos, stop))
                pos = stop
                i += 1
            for a, b in missing:
                yield CorruptImage(
                    proc.pagemap_path, None,
                    f"pid {proc.pid}: PE_PARENT pages [{a:#x}, {b:#x}) are not in the parent {pproc.pagemap_path}",
                )

    # --- life cycle

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"checkpoint {self.path} is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close pages files, mapped files and any parent opened. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for p in self.processes.values():
            p.pages.close()
        if self._shared is not None:
            self._shared.close()
        for fd, _, _ in self._files.values():
            os.close(fd)
        self._files.clear()
        if self._parent is not None:
            self._parent.close()
        self._dir.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Checkpoint {self.path} pids={list(self.pids)}{' closed' if self._closed else ''}>"


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open checkpoint directory ``path`` read-only (dumper's or CRIU's);
    see :class:`Checkpoint`. Reads metadata only. ImageError if it is not a
    readable checkpoint."""
    return Checkpoint(path)


# --- byte assembly


class Hole:
    """``nbytes`` zero bytes a raw pages file holds as a hole (sparse file):
    given instead of the zeros where a caller asked for holes
    (:meth:`Checkpoint.iter_copy`). ``len()`` is ``nbytes``."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        return f"<Hole {self.nbytes} bytes>"


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, m) for m in mat]


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` without the ``n`` bytes: the CRC
    register advanced over ``n`` zero bytes by squaring the one-bit operator
    (zlib's crc32_combine), O(log n). For holes of raw pages files."""
    if n <= 0:
        return crc
    odd = [0xEDB88320] + [1 << k for k in range(31)]  # one zero bit, reflected polynomial
    even = _gf2_square(odd)  # two bits
    odd = _gf2_square(even)  # four bits
    reg = crc ^ 0xFFFFFFFF
    while True:
        even = _gf2_square(odd)  # one zero byte, then 4, 16...
        if n & 1:
            reg = _gf2_times(even, reg)
        n >>= 1
        if not n:
            break
        odd = _gf2_square(even)
        if n & 1:
            reg = _gf2_times(odd, reg)
        n >>= 1
        if not n:
            break
    return reg ^ 0xFFFFFFFF

_ZERO = bytes(1 << 20)  # calloc'd: costs no memory until read


def _zeros(n: int) -> Iterator[memoryview]:
    """``n`` zero bytes as views of one shared block."""
    z = memoryview(_ZERO)
    while n > 0:
        k = min(n, len(z))
        yield z[:k]
        n -= k


def _page_span(ps: int, addr: int, size: int) -> tuple[int, int]:
    """``[lo, hi)``: ``[addr, addr + size)`` widened to whole pages."""
    if addr < 0 or size < 0 or addr + size > _U64_LIMIT:
        raise ValueError(f"bad range {addr:#x} + {size}")
    lo = addr - addr % ps
    hi = -(-(addr + size) // ps) * ps if size else lo
    return lo, hi


def _join(parts: list, skip: int, size: int) -> bytes:
    """``size`` bytes from the concatenation of ``parts``, ``skip`` bytes in;
    one copy (none when a single ``bytes`` part is the answer)."""
    if size == 0:
        return b""
    if len(parts) == 1 and skip == 0 and len(parts[0]) == size and type(parts[0]) is bytes:
        return parts[0]
    out = []
    need = size
    for p in parts:
        n = len(p)
        if skip >= n:
            skip -= n
            continue
        mv = memoryview(p)[skip:]
        skip = 0
        if len(mv) >= need:
            out.append(mv[:need])
            break
        out.append(mv)
        need -= len(mv)
    return b"".join(out)


# --- page contents verification


def _verify_crcs(proc: CheckpointProcess) -> Iterator[ImageError]:
    """Check every PE_PRESENT entry of a raw pages file against the crc32
    its pagemap entry records: one sequential pass over the file in 16 MiB
    reads into one buffer; at most :data:`_MAX_REPORTS` mismatches listed."""
    ent = proc.entries
    if proc.pages.compressed or ent.crc32 is None:
        return
    ps = proc.page_size
    rows = np.flatnonzero(ent.mask(fmt.PE_PRESENT) & (ent.crc32 >= 0))
    fd = proc.pages._fd
    buf = bytearray(_RAW_CHUNK)
    mv = memoryview(buf)
    have_at, have = 0, 0  # the file bytes [have_at, have_at + have) are in buf
    bad = 0
    for k in rows.tolist():
        off, n = int(ent.pages_off[k]) * ps, int(ent.nr_pages[k]) * ps
        crc, pos = 0, off
        while pos < off + n:
            if not have_at <= pos < have_at + have:
                try:
                    have_at, have = pos, os.preadv(fd, [mv], pos)
                except OSError as err:
                    yield ImageError(proc.pages.path, pos, f"read failed: {err.strerror}")
                    return
                if have == 0:
                    yield CorruptImage(proc.pages.path, pos, f"truncated: pages at {pos} are missing")
                    return
            take = min(off + n, have_at + have) - pos
            crc = zlib.crc32(mv[pos - have_at:pos - have_at + take], crc)
            pos += take
        try:
            proc.check_crc(ent[k], crc)
        except CorruptImage as err:
            bad += 1
            if bad <= _MAX_REPORTS:
                yield err
    if bad > _MAX_REPORTS:
        yield CorruptImage(proc.pages.path, None, f"pid {proc.pid}: and {bad - _MAX_REPORTS} more entries whose "
                           "pages do not match their checksum")


# --- frame verification


def _verify_frames(pages: PagesReader, threads: int | None) -> Iterator[ImageError]:
    """Decompress every frame of a compressed pages file; one ImageError per
    bad frame. Raw files have nothing to decompress (their length was
    checked on open)."""
    lay = pages.layout
    if lay is None or lay.nr_frames == 0:
        return
    offsets = lay.offsets.tolist()
    sizes = lay.sizes.tolist()
    n = len(sizes)
    full = lay.head.frame_pages * lay.head.page_size
    last = lay.frame_len(n - 1)
    # Batches of consecutive frames, about _VERIFY_BATCH compressed bytes each.
    batches = []
    i = 0
    while i < n:
        j, acc = i, 0
        while j < n and (acc < _VERIFY_BATCH or j == i):
            acc += sizes[j]
            j += 1
        batches.append((i, j))
        i = j
    try:
        fd = os.dup(pages._fd)  # the file opened (safely) with the checkpoint
    except OSError as err:
        yield ImageError(pages.path, None, f"cannot open: {err.strerror}")
        return
    local = threading.local()
    path = pages.path

    def check(batch: tuple[int, int]) -> list[ImageError]:
        dctx = getattr(local, "dctx", None)
        if dctx is None:
            dctx = local.dctx = zstandard.ZstdDecompressor()
        a, b = batch
        start = offsets[a]
        span = offsets[b - 1] + sizes[b - 1] - start
        # One buffer per thread, reused: fresh memory for every batch would
        # cost a page fault per 4 KiB.
        buf = getattr(local, "buf", None)
        if buf is None or len(buf) < span:
            buf = local.buf = bytearray(span)
        mv = memoryview(buf)[:span]
        got = 0
        try:
            while got < span:
                k = os.preadv(fd, [mv[got:]], start + got)
                if k == 0:
                    break
                got += k
        except OSError as err:
            return [ImageError(path, start + got, f"frames {a}-{b - 1}: read failed: {err.strerror}")]
        mv = mv[:got]
        problems = []
        for k in range(a, b):
            off = offsets[k] - start
            size = sizes[k]
            frame = mv[off : off + size]
            expect = full if k < n - 1 else last
            where = offsets[k]
            if len(frame) != size:
                problems.append(CorruptImage(path, where, f"frame {k}: truncated ({len(frame)} of {size} bytes)"))
                continue
            try:
                params = zstandard.get_frame_parameters(frame)
            except zstandard.ZstdError as err:
                problems.append(CorruptImage(path, where, f"frame {k}: bad zstd header: {err}"))
                continue
            if params.content_size != expect or not params.has_checksum:
                problems.append(CorruptImage(
                    path, where,
                    f"frame {k}: content size {params.content_size} (expected {expect}), checksum "
                    f"{'present' if params.has_checksum else 'absent'}",
                ))
                continue
            try:
                decoded = len(dctx.decompress(frame, max_output_size=expect))
            except zstandard.ZstdError as err:
                problems.append(CorruptImage(path, where, f"frame {k}: {err}"))
                continue
            if decoded != expect:
                problems.append(CorruptImage(path, where, f"frame {k}: {decoded} bytes decoded, expected {expect}"))
                continue
            flen = _zstd_frame_length(frame, zstandard.frame_header_size(frame))
            if flen != size:
                problems.append(
                    CorruptImage(path, where, f"frame {k}: the frame is {flen} bytes, the index says {size}")
                )
        return problems

    nthreads = threads or min(4, os.cpu_count() or 1)
    try:
        if nthreads <= 1:
            for batch in batches:
                yield from check(batch)
            return
        with ThreadPoolExecutor(nthreads, thread_name_prefix="zverify") as pool:
            inflight = []
            for batch in batches:
                inflight.append(pool.submit(check, batch))
                if len(inflight) >= 2 * nthreads:
                    yield from inflight.pop(0).result()
            for fut in inflight:
                yield from fut.result()
    finally:
        os.close(fd)

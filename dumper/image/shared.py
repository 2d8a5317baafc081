"""Reading what processes of a checkpoint share: shared memory objects and
pages shared copy-on-write (layouts in :mod:`dumper.image.format`).

:class:`SharedImages` is opened by a :class:`~dumper.image.checkpoint.
Checkpoint` on first use (``ck.shared``) and answers:

* which object a shared memory VMA maps (:meth:`SharedImages.object_for_vma`):
  a VMA_AREA_MEMFD VMA's ``shmid`` is a MEMFD ``file_entry`` of
  ``files.img`` -> ``memfd_inode_entry`` of ``memfd.img`` -> its ``shmid``;
  a VMA_ANON_SHARED or SysV VMA's ``shmid`` names the object directly (CRIU
  3.x shared anonymous memory, SysV segments, ``ipcns-shm-ID.img``);
* the object's bytes (:meth:`SharedObjectImage.chunks`): pages of
  ``pagemap-shmem-SHMID.img`` from its pages file, PE_PARENT ones from the
  same object of the parent checkpoint (CRIU's incremental dumps), zeros
  for pages it has no entry for (never written), an error past the
  object's size (the process would get SIGBUS there);
* where the pages of a PE_COW pagemap entry are (:meth:`SharedImages.cow_chunks`,
  from ``cow-PID.img``): pages of another process's stream.

Everything is untrusted input: sizes and ids are checked before use, a
reference must land inside an existing stream of the same checkpoint, and
errors name the file (and entry) at fault. Files are opened through the
checkpoint's :class:`~dumper.image.mapped.ImageDir`. Units: bytes for
offsets and addresses (end-exclusive), pages for ``nr_pages``/``pages_off``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import CorruptImage, ImageError
from . import format as fmt
from .reader import PagemapEntries, PagesReader, load_pagemap

__all__ = ["SharedImages", "SharedObjectImage", "CowRefs", "SHMEM_VMAS", "is_shmem_vma", "copy_shared"]

# VMA status bits whose contents are a shared memory object's.
SHMEM_VMAS = fmt.VMA_AREA_MEMFD | fmt.VMA_ANON_SHARED | fmt.VMA_AREA_SYSVIPC
_SHMEM_PAGEMAP_RE = re.compile(r"^pagemap-shmem-(\d+)\.img$")
_FD_TYPE_MEMFD = 18  # images/fdinfo.proto fd_types.MEMFD
_RAW_CHUNK = 16 << 20
# Most memfd inodes / MEMFD files / references a set may hold: bounds a hostile one.
_MAX_RECORDS = 1 << 20


def is_shmem_vma(vma) -> bool:
    """True for a VMA whose contents are a shared memory object's (not a
    MAP_SHARED mapping of an ordinary file, whose file holds them)."""
    return bool(vma.status & SHMEM_VMAS)


@dataclass(eq=False)
class SharedObjectImage:
    """One saved shared memory object. ``shmid`` names its pagemap;
    ``kind`` is "memfd" (``name`` its memfd name), "anon" (shared anonymous
    or /dev/zero memory, name ``/dev/zero``), "sysv" (a SysV segment) or
    "shmem" (a CRIU 3.x shared anonymous object: no record but its
    pagemap). ``size`` in bytes, None when no record gives it. ``entries``:
    its pagemap (``vaddr`` = offset in the object); ``pages`` the open
    pages file, None when the set has no pagemap for it (nothing saved).
    ``file_ids``: the MEMFD file ids naming it."""

    shmid: int
    kind: str
    name: str
    size: int | None
    seals: int | None = None
    mode: int | None = None
    key: int | None = None  # SysV key
    entries: PagemapEntries | None = None
    pages: PagesReader | None = None
    pagemap_name: str = ""
    page_size: int = 4096
    file_ids: list[int] = field(default_factory=list)
    # The checkpoint's SharedImages: PE_PARENT entries are read from its parent's object.
    owner: SharedImages | None = field(default=None, repr=False)

    @property
    def saved(self) -> bool:
        return self.pages is not None

    @property
    def nr_pages(self) -> int:
        """Pages stored for it."""
        return self.pages.nr_pages if self.pages is not None else 0

    def describe(self) -> str:
        if self.kind == "sysv":
            return f"SysV segment {self.shmid}" + (f" (key {self.key:#x})" if self.key is not None else "")
        if self.kind == "anon":
            return f"shared anonymous memory (shmem {self.shmid})"
        if self.kind == "memfd":
            return f"memfd {self.name!r} (shmem {self.shmid})"
        return f"shared memory {self.shmid}"

    def chunks(self, off: int, n: int, where: str) -> Iterator[bytes | memoryview]:
        """The object's bytes ``[off, off + n)`` (page aligned), in order.
        ``where`` names the reader (for errors). ImageError for pages past
        its size or not saved; CorruptImage for damaged data."""
        from .checkpoint import _zeros

        ps = self.page_size
        end = off + n
        if self.size is not None and end > -(-self.size // ps) * ps:
            bad = max(off, -(-self.size // ps) * ps)
            raise ImageError(self.pagemap_name or None, None,
                             f"{where}: offset {bad:#x} of {self.describe()} lies past its end ({self.size} bytes): "
                             "the process would get SIGBUS there")
        if self.pages is None:
            raise ImageError(None, None, f"{where}: the contents of {self.describe()} are not in the checkpoint")
        ent = self.entries
        i = max(ent.index_at(off), 0)
        if i < len(ent) and int(ent.vaddr[i]) + int(ent.nr_pages[i]) * ps <= off:
            i += 1
        pos = off
        while pos < end:
            if i >= len(ent) or int(ent.vaddr[i]) >= end:
                yield from _zeros(end - pos)
                return
            es = int(ent.vaddr[i])
            if es > pos:
                yield from _zeros(es - pos)
                pos = es
            b = min(es + int(ent.nr_pages[i]) * ps, end)
            flags = int(ent.flags[i])
            if flags & fmt.PE_PRESENT:
                yield from _stream(self.pages, int(ent.pages_off[i]) + (pos - es) // ps, (b - pos) // ps)
            elif flags & fmt.PE_PARENT:  # an incremental dump (CRIU's): the parent checkpoint's object
                yield from self._in_parent(pos, b, where).chunks(pos, b - pos, where)
            else:
                raise ImageError(self.pagemap_name, None,
                                 f"{where}: offsets [{pos:#x}, {b:#x}) of {self.describe()} are "
                                 f"{fmt.format_flags(flags, 'pmap.flags')}, not stored here")
            pos = b
            i += 1

    def _in_parent(self, s: int, e: int, where: str) -> SharedObjectImage:
        """The same object (shmid) in the parent checkpoint, which holds
        offsets ``[s, e)`` (PE_PARENT). ImageError when there is none."""
        ck = self.owner._ck if self.owner is not None else None
        parent = ck.parent if ck is not None else None  # ImageError for a broken link
        pobj = parent.shared.objects.get(self.shmid) if parent is not None else None
        if pobj is None or not pobj.saved:
            what = "there is no parent checkpoint" if parent is None else \
                f"the parent checkpoint {parent.path} does not hold {fmt.pagemap_shmem_name(self.shmid)}"
            raise ImageError(self.pagemap_name, None, f"{where}: offsets [{s:#x}, {e:#x}) of {self.describe()} are "
                             f"PE_PARENT but {what}")
        return pobj

    def close(self) -> None:
        if self.pages is not None:
            self.pages.close()


def _stream(pages: PagesReader, index: int, count: int) -> Iterator[bytes]:
    """Pages ``[index, index + count)`` of a stream, one chunk per zstd
    frame (or 16 MiB raw)."""
    step = pages.frame_pages or max(1, _RAW_CHUNK // pages.page_size)
    while count:
        k = min(count, step - index % step)
        yield pages.read_pages(index, k)
        index += k
        count -= k


@dataclass(eq=False)
class CowRefs:
    """``cow-PID.img`` of one process as arrays, ascending by ``vaddr``
    (bytes): ``nr_pages``, ``pages_id`` (the owner's stream), ``pages_off``
    (index in it)."""

    pid: int
    vaddr: np.ndarray
    nr_pages: np.ndarray
    pages_id: np.ndarray
    pages_off: np.ndarray
    path: str

    def __len__(self) -> int:
        return len(self.vaddr)


class SharedImages:
    """The shared memory objects and COW references of one checkpoint; see
    the module docstring. Made by ``Checkpoint.shared``; closed with it."""

    def __init__(self, ck) -> None:
        self._ck = ck
        self._dir = ck._dir
        self.path = ck.path
        self.page_size = ck.page_size
        self.objects: dict[int, SharedObjectImage] = {}  # by shmid
        self._memfd_files: dict[int, int] = {}  # MEMFD file id -> memfd inode_id
        self._inodes: dict[int, SharedObjectImage] = {}  # memfd inode_id -> object
        self._cow: dict[int, CowRefs | None] = {}
        self._by_pages_id = None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # --- loading

    def _entries(self, name: str, magic: str):
        path = self.path / name
        with self._dir.open(name) as f:
            got = fmt.read_magic(f, path)
            if got != magic:
                raise CorruptImage(path, 4, f"expected a {magic} image, found {got}")
            for n, e in enumerate(fmt.iter_image(f, path, magic, f.tell())):
                if n >= _MAX_RECORDS:
                    raise CorruptImage(path, e.offset, f"more than {_MAX_RECORDS} entries")
                yield e.offset, e.msg

    def _load(self) -> None:
        d = self._dir
        names = d.listdir()
        if fmt.MEMFD_INODE_NAME in names:
            for off, m in self._entries(fmt.MEMFD_INODE_NAME, "MEMFD_INODE"):
                if m.inode_id in self._inodes:
                    raise CorruptImage(self.path / fmt.MEMFD_INODE_NAME, off, f"memfd inode {m.inode_id} comes twice")
                obj = self.objects.get(m.shmid)
                if obj is not None:
                    raise CorruptImage(self.path / fmt.MEMFD_INODE_NAME, off, f"shmid {m.shmid} comes twice")
                kind = "anon" if m.name == "/dev/zero" and m.seals == 1 else "memfd"
                obj = SharedObjectImage(shmid=m.shmid, kind=kind, name=m.name, size=m.size, seals=m.seals,
                                        mode=m.mode if m.HasField("mode") else None, page_size=self.page_size)
                self.objects[m.shmid] = obj
                self._inodes[m.inode_id] = obj
        if fmt.FILES_NAME in names:
            for off, fe in self._entries(fmt.FILES_NAME, "FILES"):
                if fe.type == _FD_TYPE_MEMFD and fe.HasField("memfd"):
                    self._memfd_files[fe.id] = fe.memfd.inode_id
                    obj = self._inodes.get(fe.memfd.inode_id)
                    if obj is not None:
                        obj.file_ids.append(fe.id)
        for name in names:
            if name.startswith("ipcns-shm-") and name.endswith(".img"):
                for off, seg in self._entries(name, "IPCNS_SHM"):
                    sid = seg.desc.id
                    if sid in self.objects:
                        raise CorruptImage(self.path / name, off, f"SysV segment {sid} clashes with shmid {sid}")
                    self.objects[sid] = SharedObjectImage(shmid=sid, kind="sysv", name=f"SYSV{seg.desc.key:08x}",
                                                          size=seg.size, mode=seg.desc.mode, key=seg.desc.key,
                                                          page_size=self.page_size)
        for name in sorted(names):
            m = _SHMEM_PAGEMAP_RE.match(name)
            if not m:
                continue
            shmid = int(m.group(1))
            obj = self.objects.get(shmid)
            if obj is None:  # CRIU 3.x shared anonymous memory: only its pagemap
                obj = self.objects[shmid] = SharedObjectImage(shmid=shmid, kind="shmem", name="", size=None,
                                                              page_size=self.page_size)
            self._open_pagemap(obj, name)

    def _open_pagemap(self, obj: SharedObjectImage, name: str) -> None:
        d = self._dir
        path = self.path / name
        head, entries = load_pagemap(path, page_size=self.page_size, f=d.open(name))
        if head.HasField("page_size") and head.page_size != self.page_size:
            raise CorruptImage(path, 8, f"page size {head.page_size}, the checkpoint's is {self.page_size}")
        if entries.mask(fmt.PE_COW | fmt.PE_LAZY).any():
            raise CorruptImage(path, None, "a shared memory object's pagemap holds only PE_PRESENT and PE_PARENT "
                               "entries here")
        compressed = head.compression == fmt.COMPRESSION_ZSTD
        pname = fmt.zpages_name(head.pages_id) if compressed else fmt.pages_name(head.pages_id)
        pages = PagesReader(self.path / pname, compressed=compressed, page_size=self.page_size, f=d.open(pname))
        try:
            present = entries.pages(fmt.PE_PRESENT)
            if present != pages.nr_pages:
                raise CorruptImage(pages.path, pages.end_offset,
                                   f"holds {pages.nr_pages} pages, {name} has {present} PE_PRESENT pages")
            if obj.size is not None and len(entries):
                last = int(entries.vaddr[-1]) + int(entries.nr_pages[-1]) * self.page_size
                if last > -(-obj.size // self.page_size) * self.page_size:
                    raise CorruptImage(path, None, f"entries reach offset {last:#x}, past the object's "
                                       f"{obj.size} bytes")
        except BaseException:
            pages.close()
            raise
        obj.entries, obj.pages, obj.pagemap_name, obj.owner = entries, pages, name, self

    # --- shared memory VMAs

    def object_for_vma(self, vma) -> tuple[SharedObjectImage | None, str]:
        """``(object, "")`` for a shared memory VMA, or ``(None, why)``."""
        st = vma.status
        if st & fmt.VMA_AREA_MEMFD:
            inode_id = self._memfd_files.get(vma.shmid)
            if inode_id is None:
                return None, f"file id {vma.shmid} is no MEMFD entry of files.img"
            obj = self._inodes.get(inode_id)
            if obj is None:
                return None, f"memfd inode {inode_id} is not in memfd.img"
            return obj, ""
        obj = self.objects.get(vma.shmid)
        if obj is None:
            return None, f"no shared memory object {vma.shmid} in the checkpoint"
        return obj, ""

    def inode_id_of(self, obj: SharedObjectImage) -> int | None:
        """``memfd.img``'s ``inode_id`` of ``obj`` (None for SysV and CRIU 3.x objects)."""
        return next((i for i, o in self._inodes.items() if o is obj), None)

    def inode_entries(self) -> list:
        """The ``memfd_inode_entry`` messages of the set, as recorded."""
        if not self._dir.exists(fmt.MEMFD_INODE_NAME):
            return []
        return [m for _, m in self._entries(fmt.MEMFD_INODE_NAME, "MEMFD_INODE")]

    def ipc_entries(self) -> dict[str, list]:
        """``{ipcns-shm-ID.img: [ipc_shm_entry...]}`` of the set."""
        return {n: [m for _, m in self._entries(n, "IPCNS_SHM")] for n in sorted(self._dir.listdir())
                if n.startswith("ipcns-shm-") and n.endswith(".img")}

    def vma_ranges(self, vma) -> tuple[SharedObjectImage | None, np.ndarray, np.ndarray]:
        """``(object, starts, ends)`` of a shared memory VMA: the byte ranges
        of the mapping (its addresses, end-exclusive, ascending; uint64)
        where the object stores pages; empty arrays when the object is not
        here (``object`` None) or stores nothing there. Work follows the
        object's entries."""
        obj, _ = self.object_for_vma(vma)
        none = np.empty(0, np.uint64)
        if obj is None or obj.entries is None or not len(obj.entries):
            return obj, none, none
        ps = np.uint64(self.page_size)
        lo, hi = np.uint64(vma.pgoff), np.uint64(vma.pgoff + (vma.end - vma.start))
        s = obj.entries.vaddr.astype(np.uint64)
        e = s + obj.entries.nr_pages.astype(np.uint64) * ps
        a, b = np.maximum(s, lo), np.minimum(e, hi)
        keep = b > a
        shift = np.uint64((vma.start - vma.pgoff) % (1 << 64))  # address = offset + start - pgoff (arrays wrap)
        return obj, a[keep] + shift, b[keep] + shift

    def vma_pages(self, vma) -> tuple[SharedObjectImage | None, int]:
        """``(object, pages it stores inside the mapping's range)`` of a
        shared memory VMA; ``(None, 0)`` when the object is not here."""
        obj, a, b = self.vma_ranges(vma)
        return obj, int((b - a).sum()) // self.page_size

    def _shmem_vmas(self, proc) -> list:
        """``proc``'s shared memory VMAs (messages), found by the status column."""
        t = proc.vmas
        if not len(t):
            return []
        rows = np.flatnonzero((t.status & np.uint32(SHMEM_VMAS)) != 0)
        return list(t.take(rows)) if len(rows) else []

    def mapped_by(self, obj: SharedObjectImage) -> list[tuple[int, object]]:
        """``(pid, vma)`` of every VMA of the checkpoint mapping ``obj``."""
        out = []
        for pid, proc in self._ck.processes.items():
            for v in self._shmem_vmas(proc):
                if self.object_for_vma(v)[0] is obj:
                    out.append((pid, v))
        return out

    def vma_chunks(self, pid: int, s: int, e: int, vma) -> Iterator[bytes | memoryview]:
        """Bytes of ``[s, e)`` inside shared memory VMA ``vma`` of ``pid``:
        the object's at ``pgoff + (s - start)``."""
        obj, why = self.object_for_vma(vma)
        where = f"pid {pid}: [{s:#x}, {e:#x}) (VMA {vma.start:#x}-{vma.end:#x})"
        if obj is None:
            raise ImageError(self.path, None, f"{where}: its shared memory is not in the checkpoint: {why}")
        yield from obj.chunks(vma.pgoff + (s - vma.start), e - s, where)

    # --- pages shared copy-on-write

    def cow_refs(self, pid: int) -> CowRefs | None:
        """``cow-PID.img`` of ``pid`` (None without one), checked: ascending,
        disjoint, page aligned, each inside a stream of this checkpoint."""
        if pid in self._cow:
            return self._cow[pid]
        name = fmt.cow_name(pid)
        if not self._dir.exists(name):
            self._cow[pid] = None
            return None
        cols: list[list[int]] = [[], [], [], []]
        offs = []
        for off, m in self._entries(name, "COW_REFS"):
            for c, v in zip(cols, (m.vaddr, m.nr_pages, m.pages_id, m.pages_off)):
                c.append(v)
            offs.append(off)
        refs = CowRefs(pid, np.array(cols[0], np.uint64), np.array(cols[1], np.uint64),
                       np.array(cols[2], np.uint64), np.array(cols[3], np.uint64), str(self.path / name))
        self._check_refs(refs, offs)
        self._cow[pid] = refs
        return refs

    def _streams(self) -> dict[int, object]:
        if self._by_pages_id is None:
            self._by_pages_id = {p.head.pages_id: p for p in self._ck.processes.values()}
        return self._by_pages_id

    def _check_refs(self, refs: CowRefs, offs: list[int]) -> None:
        ps = self.page_size
        streams = self._streams()
        prev_end = 0
        for k in range(len(refs)):
            v, n, pid_, po = (int(refs.vaddr[k]), int(refs.nr_pages[k]), int(refs.pages_id[k]),
                              int(refs.pages_off[k]))
            if v % ps or n <= 0 or v + n * ps > 1 << 64 or v < prev_end:
                raise CorruptImage(refs.path, offs[k], f"entry {k + 1}: bad or unordered range {v:#x} + {n} pages")
            owner = streams.get(pid_)
            if owner is None:
                raise CorruptImage(refs.path, offs[k], f"entry {k + 1}: pages_id {pid_} is no process's stream here")
            if po + n > owner.pages.nr_pages:
                raise CorruptImage(refs.path, offs[k], f"entry {k + 1}: pages [{po}, {po + n}) beyond the "
                                   f"{owner.pages.nr_pages} pages of {owner.pages_path.name}")
            prev_end = v + n * ps

    def cow_pieces(self, proc, s: int, e: int) -> Iterator[tuple[int, int, object, int]]:
        """Where the pages of ``[s, e)`` of ``proc`` (a CheckpointProcess; the
        range all inside its PE_COW entries) are: ``(start, end, owner,
        first)`` in address order, bytes ``[start, end)`` being pages
        ``[first, ...)`` of the stream of ``owner`` (the CheckpointProcess
        whose ``pages_id`` the reference names). ImageError for a page no
        reference covers, or no ``cow-PID.img``."""
        refs = self.cow_refs(proc.pid)
        ps = self.page_size
        if refs is None:
            raise ImageError(proc.pagemap_path, None,
                             f"pid {proc.pid}: pages [{s:#x}, {e:#x}) are PE_COW but there is no {fmt.cow_name(proc.pid)}")
        streams = self._streams()
        starts = refs.vaddr
        k = max(int(np.searchsorted(starts, np.uint64(s), side="right")) - 1, 0)
        pos = s
        while pos < e:
            if k >= len(refs) or int(starts[k]) > pos or int(starts[k]) + int(refs.nr_pages[k]) * ps <= pos:
                if k < len(refs) and int(starts[k]) + int(refs.nr_pages[k]) * ps <= pos:
                    k += 1
                    continue
                raise ImageError(refs.path, None, f"pid {proc.pid}: PE_COW page {pos:#x} has no reference")
            rs = int(starts[k])
            b = min(rs + int(refs.nr_pages[k]) * ps, e)
            yield pos, b, streams[int(refs.pages_id[k])], int(refs.pages_off[k]) + (pos - rs) // ps
            pos = b
            k += 1

    def cow_chunks(self, proc, s: int, e: int) -> Iterator[bytes]:
        """Bytes of ``[s, e)`` of ``proc`` (a CheckpointProcess), all inside
        its PE_COW entries: the owners' stream pages the references name."""
        for a, b, owner, first in self.cow_pieces(proc, s, e):
            yield from _stream(owner.pages, first, (b - a) // self.page_size)

    def cow_pages_per_vma(self, proc, table=None) -> list[int]:
        """PE_COW pages of ``proc``'s pagemap inside each row of ``table``
        (a VmaTable; default ``proc.vmas``)."""
        from .checkpoint import pages_per_vma

        t = proc.vmas if table is None else table
        ent = proc.entries
        cow = ent.mask(fmt.PE_COW)
        if not cow.any() or not len(t):
            return [0] * len(t)
        sel = ent[cow]
        as_present = PagemapEntries(sel.vaddr, sel.nr_pages, np.full(len(sel), fmt.PE_PRESENT, np.uint32),
                                    sel.pages_off)
        n = pages_per_vma(as_present, t.start, t.end, self.page_size)[0]
        n[(t.status & np.uint32(fmt.VMA_AREA_GUARD)) != 0] = 0
        return n.tolist()

    # --- verification

    def verify(self, frames: bool, threads: int | None) -> Iterator[ImageError]:
        """One problem per damaged object, reference or frame."""
        from .checkpoint import _verify_frames

        for obj in self.objects.values():
            if frames and obj.pages is not None:
                yield from _verify_frames(obj.pages, threads)
        for proc in self._ck.processes.values():
            cow = proc.entries.mask(fmt.PE_COW)
            try:
                refs = self.cow_refs(proc.pid)
            except ImageError as err:
                yield err
                continue
            if not cow.any() and refs is None:
                continue
            if refs is None:
                yield CorruptImage(proc.pagemap_path, None, f"pid {proc.pid}: PE_COW entries but no "
                                   f"{fmt.cow_name(proc.pid)}")
                continue
            ps = np.uint64(self.page_size)
            want = _runs(proc.entries.vaddr[cow], proc.entries.vaddr[cow] + proc.entries.nr_pages[cow] * ps)
            have = _runs(refs.vaddr, refs.vaddr + refs.nr_pages * ps)
            if not (np.array_equal(want[0], have[0]) and np.array_equal(want[1], have[1])):
                yield CorruptImage(refs.path, None, f"pid {proc.pid}: the references do not cover the PE_COW "
                                   "entries of its pagemap exactly")
        inv = self._ck.inventory
        pre_dump = inv.HasField("pre_dump") and inv.pre_dump  # saves no shared object: the dump over it does
        for proc in self._ck.processes.values():  # a shared VMA must name a saved object
            for v in self._shmem_vmas(proc):
                if v.HasField("dumped") and not v.dumped:
                    continue
                obj, why = self.object_for_vma(v)
                if obj is None and v.status & fmt.VMA_AREA_MEMFD:  # a broken chain of ids (a CRIU 3.x set
                    # without a shared object's pagemap just has nothing to read there: reads say so)
                    yield ImageError(proc.mm_path, None, f"pid {proc.pid}: VMA {v.start:#x}-{v.end:#x}: {why}")
                elif obj is not None and not obj.saved and (obj.size or 0) > 0 and not pre_dump:
                    yield ImageError(proc.mm_path, None, f"pid {proc.pid}: VMA {v.start:#x}-{v.end:#x}: "
                                     f"{obj.describe()} has no {fmt.pagemap_shmem_name(obj.shmid)}")

    def close(self) -> None:
        for obj in self.objects.values():
            obj.close()


def copy_shared(ck, writer, first_pages_id: int, *, compress: bool, level: int, threads: int | None,
                max_pages: int = 256) -> list:
    """Write ``ck``'s shared memory objects into the checkpoint ``writer``
    builds (flatten): each saved object's pagemap and pages (pages ids from
    ``first_pages_id``), and the images that say which VMA maps which
    object (``memfd.img``, ``files.img``, ``ipcns-shm-*.img``) as they are.
    Returns the pages writers' stats."""
    sh = ck.shared
    ps = ck.page_size
    stats = []
    pages_id = first_pages_id
    for obj in sh.objects.values():
        if not obj.saved:
            continue
        pw = writer.pages_writer(0, pages_id, compress=compress, level=level, threads=threads,
                                 pagemap_name=fmt.pagemap_shmem_name(obj.shmid))
        pages_id += 1
        with pw:
            for v, n in zip(obj.entries.vaddr.tolist(), obj.entries.nr_pages.tolist()):
                for done in range(0, n, max_pages):
                    k = min(max_pages, n - done)
                    off = v + done * ps
                    pw.add_present(off, b"".join(obj.chunks(off, k * ps, f"copying {obj.describe()}")))
        stats.append(pw.stats)
    names = ck._dir.listdir()
    for name in sorted(names):
        if name in (fmt.MEMFD_INODE_NAME, fmt.FILES_NAME) or (name.startswith("ipcns-shm-") and name.endswith(".img")):
            magic = {fmt.MEMFD_INODE_NAME: "MEMFD_INODE", fmt.FILES_NAME: "FILES"}.get(name, "IPCNS_SHM")
            writer.write_image(name, magic, [m for _, m in sh._entries(name, magic)])
    return stats


def _runs(s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Touching intervals joined (sorted input)."""
    if len(s) < 2:
        return s, e
    brk = np.flatnonzero(s[1:] != e[:-1]) + 1
    return s[np.concatenate(([0], brk))], e[np.concatenate((brk - 1, [len(e) - 1]))]

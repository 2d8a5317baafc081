"""Reading image files back: decoding, pagemaps, page bytes.

Input is untrusted: sizes are checked against limits and the file size before
anything is allocated, zstd frames are checked against the index before they
are decompressed, and every failure is an :class:`~dumper.errors.ImageError`
naming the file and byte offset (BadMagic, UnsupportedVersion, CorruptImage).

- :func:`read_image` decodes any image file of ours (or CRIU's of the same
  types) into ``(magic_name, messages)``.
- :func:`load_pagemap` applies CRIU's compatibility rules (criu/pagemap.c
  ``init_compat_pagemap_entry``) and validates the entry list.
- :class:`PagesReader` returns pages of the page stream from a raw
  ``pages-N.img`` or a compressed ``pages-N.zst.img``, decompressing only the
  frames it needs.
- :func:`iter_present` walks the PE_PRESENT entries of a pagemap with their
  bytes.
"""

from __future__ import annotations

import array
import contextlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard
from google.protobuf.message import DecodeError, Message

from ..errors import BadMagic, CorruptImage, ImageError, UnsupportedVersion
from . import format as fmt
from .mapped import fdopen_regular
from .pb import inventory_pb2, pagemap_pb2, zpages_pb2

__all__ = [
    "PagemapEntry",
    "PagemapEntries",
    "ZpagesLayout",
    "read_image",
    "iter_image",
    "load_inventory",
    "load_pagemap",
    "read_zpages_layout",
    "PagesReader",
    "open_pages",
    "iter_present",
]

_U64_LIMIT = 1 << 64
_KNOWN_FLAGS = fmt.PE_PARENT | fmt.PE_LAZY | fmt.PE_PRESENT | fmt.PE_COW


@dataclass(frozen=True, slots=True)
class PagemapEntry:
    """One pagemap entry after CRIU's compat rules.

    ``vaddr`` in bytes; ``nr_pages`` pages; ``flags`` PE_* bits;
    ``pages_off`` is the index (in pages) of the entry's first page in the
    page stream for PE_PRESENT entries, -1 for the others. ``crc32``: zlib
    crc32 of the entry's pages where the pagemap records one (raw pages
    files written by dumper), else None; not compared by ``==``.
    """

    vaddr: int
    nr_pages: int
    flags: int
    pages_off: int
    crc32: int | None = field(default=None, compare=False)

    @property
    def present(self) -> bool:
        return bool(self.flags & fmt.PE_PRESENT)

    @property
    def in_parent(self) -> bool:
        return bool(self.flags & fmt.PE_PARENT)

    def end(self, page_size: int) -> int:
        """First byte address past the entry (end-exclusive)."""
        return self.vaddr + self.nr_pages * page_size


class PagemapEntries:
    """A pagemap's entries held in compact numpy arrays (28 bytes an entry):
    ``vaddr`` (uint64, bytes), ``nr_pages`` (uint64), ``flags`` (uint32,
    PE_* bits), ``pages_off`` (int64, pages; -1 unless PE_PRESENT), and
    ``crc32`` (int64, -1 where absent) or None when no entry records one.

    A sequence of :class:`PagemapEntry`: ``len()``, indexing (an int gives a
    PagemapEntry, a slice a PagemapEntries), iteration (entries made as they
    are reached), ``==`` against another one or a list of PagemapEntry.
    Lookups by address use :meth:`index_at` (binary search), never a scan.
    """

    __slots__ = ("vaddr", "nr_pages", "flags", "pages_off", "crc32")

    def __init__(self, vaddr: np.ndarray, nr_pages: np.ndarray, flags: np.ndarray, pages_off: np.ndarray,
                 crc32: np.ndarray | None = None) -> None:
        self.vaddr = vaddr
        self.nr_pages = nr_pages
        self.flags = flags
        self.pages_off = pages_off
        self.crc32 = crc32

    @classmethod
    def empty(cls) -> PagemapEntries:
        return cls(np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.uint32), np.empty(0, np.int64))

    @classmethod
    def from_list(cls, entries) -> PagemapEntries:
        """From PagemapEntry objects (or ``(vaddr, nr_pages, flags, pages_off)``)."""
        rows = [tuple(e) if not isinstance(e, PagemapEntry) else (e.vaddr, e.nr_pages, e.flags, e.pages_off)
                for e in entries]
        if not rows:
            return cls.empty()
        v, n, f, o = zip(*rows)
        return cls(np.array(v, np.uint64), np.array(n, np.uint64), np.array(f, np.uint32), np.array(o, np.int64))

    def __len__(self) -> int:
        return len(self.vaddr)

    def __getitem__(self, i):
        crc = self.crc32
        if isinstance(i, (slice, np.ndarray)):
            return PagemapEntries(self.vaddr[i], self.nr_pages[i], self.flags[i], self.pages_off[i],
                                  crc[i] if crc is not None else None)
        c = int(crc[i]) if crc is not None else -1
        return PagemapEntry(int(self.vaddr[i]), int(self.nr_pages[i]), int(self.flags[i]), int(self.pages_off[i]),
                            c if c >= 0 else None)

    def __iter__(self) -> Iterator[PagemapEntry]:
        step = 65536  # tolist() per block: fast, and memory stays bounded
        crc = self.crc32
        for s in range(0, len(self.vaddr), step):
            cols = [self.vaddr[s:s + step].tolist(), self.nr_pages[s:s + step].tolist(),
                    self.flags[s:s + step].tolist(), self.pages_off[s:s + step].tolist()]
            if crc is None:
                yield from map(PagemapEntry, *cols)
            else:
                yield from map(PagemapEntry, *cols, [c if c >= 0 else None for c in crc[s:s + step].tolist()])

    def __eq__(self, other) -> bool:
        if isinstance(other, PagemapEntries):
            return (len(self) == len(other) and bool(np.array_equal(self.vaddr, other.vaddr))
                    and bool(np.array_equal(self.nr_pages, other.nr_pages))
                    and bool(np.array_equal(self.flags, other.flags))
                    and bool(np.array_equal(self.pages_off, other.pages_off)))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable arrays

    def __repr__(self) -> str:
        return f"<PagemapEntries {len(self)} entries>"

    def end_pages(self, page_size: int) -> np.ndarray:
        """End of each entry in pages (``vaddr // page_size + nr_pages``;
        uint64, never overflows for a validated pagemap)."""
        return self.vaddr // np.uint64(page_size) + self.nr_pages

    def mask(self, bits: int) -> np.ndarray:
        """Boolean array: entries with any of the PE_* ``bits``."""
        return (self.flags & np.uint32(bits)) != 0

    def pages(self, bits: int) -> int:
        """Total pages of the entries with any of the PE_* ``bits``."""
        return int(self.nr_pages[self.mask(bits)].sum(dtype=np.uint64))

    def index_at(self, addr: int) -> int:
        """Index of the last entry starting at or before byte ``addr`` (-1
        if none); the entry holds ``addr`` only if it reaches past it."""
        if addr >= _U64_LIMIT:
            return len(self.vaddr) - 1
        return int(np.searchsorted(self.vaddr, np.uint64(addr), side="right")) - 1


def _file_size(f) -> int:
    return os.fstat(f.fileno()).st_size


def open_image_file(path):
    """Open an image file for reading: ImageError unless it is a regular file.

    O_NONBLOCK keeps a FIFO planted in a checkpoint from blocking the open;
    anything but a regular file (FIFO, device, directory) is refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ImageError(path, None, f"cannot open: {err.strerror}") from err
    return fdopen_regular(fd, path)



_open = open_image_file


# --- generic images


def read_image(path: str | os.PathLike) -> tuple[str, list[Message]]:
    """Decode an image file into ``(magic_name, messages)``.

    ``magic_name`` is a key of :data:`dumper.image.format.MAGICS`. Messages:
    one per entry, of :data:`~dumper.image.format.ENTRY_TYPES` (INVENTORY
    ``[inventory_entry]``, MM ``[mm_entry]``, CORE ``[core_entry]``...),
    the first of :data:`~dumper.image.format.HEAD_TYPES` where the type has
    one (PAGEMAP ``[pagemap_head, pagemap_entry...]``); ZPAGES
    ``[zpages_head, zpages_index]``. Raw bytes after entries (pipes-data,
    ghost files) are skipped: :func:`dumper.image.format.iter_image` gives
    where they are. Nothing is normalised or version-checked (see
    :func:`load_inventory`, :func:`load_pagemap`).

    Raises BadMagic (wrong or unknown magic, raw pages data), ImageError (a
    CRIU image type dumper does not read), CorruptImage (truncation, absurd
    sizes, undecodable or incomplete messages).
    """
    name, msgs, _ = _read_entries(path)
    return name, msgs


def _read_entries(path: str | os.PathLike, f=None) -> tuple[str, list[Message], list[int]]:
    """:func:`read_image` plus the file offset of each message's entry
    (for errors about what a message says) and, as the last element, the
    offset where the entries end. ``f``: the file, already open."""
    with (contextlib.nullcontext(f) if f is not None else _open(path)) as fh:
        fh.seek(0)
        name, it = _iter_open(fh, path)
        msgs: list[Message] = []
        offsets: list[int] = []
        for off, msg in it:
            msgs.append(msg)
            offsets.append(off)
        offsets.append(fh.tell() if name != "ZPAGES" else _file_size(fh))
    return name, msgs, offsets


def _iter_open(f, path) -> tuple[str, Iterator[tuple[int, Message]]]:
    name = fmt.read_magic(f, path)
    if name == "ZPAGES":
        layout = read_zpages_layout(f, path)
        return name, iter([(8, layout.head), (layout.index_offset, layout.index)])
    if name not in fmt.ENTRY_TYPES:
        raise ImageError(path, 4, f"CRIU {name} images are not read by dumper")
    # fmt.iter_image decodes one entry at a time and skips extra payloads.
    return name, ((e.offset, e.msg) for e in fmt.iter_image(f, path, name, f.tell()))


@contextlib.contextmanager
def iter_image(path: str | os.PathLike) -> Iterator[tuple[str, Iterator[tuple[int, Message]]]]:
    """Stream an image file: a context manager giving ``(magic_name,
    iterator of (offset, message))``; messages are decoded one at a time as
    :func:`read_image` decodes them, so memory does not grow with the file.
    Errors as :func:`read_image`, raised when reached."""
    with _open(path) as f:
        yield _iter_open(f, path)


def _single(path, name: str, expect: str, msgs: list[Message], offsets: list[int]) -> Message:
    if name != expect:
        raise BadMagic(path, 0, f"expected a {expect} image, found {name}")
    if len(msgs) != 1:
        # where the second entry starts, or where the first one is missing
        raise CorruptImage(path, offsets[min(1, len(msgs))], f"{expect} image holds {len(msgs)} entries, expected 1")
    return msgs[0]


def load_inventory(path: str | os.PathLike, f=None) -> inventory_pb2.inventory_entry:
    """Read ``inventory.img`` and check its versions
    (:func:`~dumper.image.format.check_inventory`: UnsupportedVersion).
    ``f``: the file, already open."""
    name, msgs, offsets = _read_entries(path, f)
    inv = _single(path, name, "INVENTORY", msgs, offsets)
    fmt.check_inventory(inv, path, offsets[0])
    return inv


# --- pagemap


def load_pagemap(
    path: str | os.PathLike, *, page_size: int | None = None, f=None, fast: bool = True
) -> tuple[pagemap_pb2.pagemap_head, PagemapEntries]:
    """Read ``pagemap-PID.img`` into ``(head, entries)``, streaming: memory
    is the compact :class:`PagemapEntries` (28 bytes an entry, 36 with
    checksums) plus one read block, whatever the file's size. ``f``: the
    file already open (``path`` then only names it in errors).

    Entries are decoded in blocks by :func:`dumper.image.wire.decode_flat`
    (numpy over the wire format); a block that holds anything it does not
    decode exactly as protobuf would (unknown fields, other wire types, a
    repeated field, missing required fields...) is parsed with protobuf, one
    entry at a time, the reference. ``fast=False`` parses everything so.

    Per entry (criu/pagemap.c ``init_compat_pagemap_entry``): ``nr_pages`` is
    field 5 if present, else field 2; ``in_parent`` adds PE_PARENT; absent
    ``flags`` means PE_PRESENT. ``page_size`` (bytes) is the head's if it
    has one, else the argument, else the running system's.

    Raises CorruptImage when entries are unaligned, empty, overlapping or
    descending, carry unknown flags or PE_PARENT|PE_PRESENT, have a
    ``pages_off`` that is not the running sum of PE_PRESENT pages, or do not
    add up to the head's ``nr_present_pages``; and for a bad ``pages_file``.
    """
    # vaddr, nr_pages, flags, pages_off, and crc32 (made at the first entry that has one)
    cols = [array.array("Q"), array.array("Q"), array.array("I"), array.array("Q"), None]
    head = None
    head_at = 8
    ps = 0
    index = 0  # entries before this block (the head is entry 0)
    with (contextlib.nullcontext(f) if f is not None else _open(path)) as fh:
        fh.seek(0)
        name = fmt.read_magic(fh, path)
        if name != "PAGEMAP":
            raise BadMagic(path, 0, f"expected a PAGEMAP image, found {name}")
        for base, buf, starts, sizes in _entry_blocks(fh, path, 8):
            if head is None:
                head_at = base + int(starts[0]) - 4
                s0 = int(starts[0])
                head = fmt.parse_entry(pagemap_pb2.pagemap_head, buf[s0:s0 + int(sizes[0])], path, head_at)
                ps = head.page_size if head.HasField("page_size") else (page_size or os.sysconf("SC_PAGE_SIZE"))
                fmt.check_page_size(ps, path, head_at)
                _pages_file_name(head, path, head_at)  # validates it
                starts, sizes = starts[1:], sizes[1:]
                index = 1
            if not (fast and _decode_block_fast(buf, starts, sizes, cols)):
                _decode_block_protobuf(path, base, buf, starts, sizes, index, cols)
            index += len(starts)
    if head is None:
        raise CorruptImage(path, 8, "no pagemap_head")
    va, nr, fl, po, crc = cols
    entries, total = _check_entries(path, f, va, nr, fl, po, ps, crc)
    if head.HasField("nr_present_pages") and head.nr_present_pages != total:
        raise CorruptImage(path, head_at, f"head says {head.nr_present_pages} present pages, entries hold {total}")
    return head, entries


_NO_PAGES_OFF = (1 << 64) - 1
_NO_CRC = -1
_READ_BLOCK = 1 << 20
_DECODE_BLOCK = 512 << 10  # bytes decoded by numpy at once: bounds its temporaries
# pagemap_entry's fields (proto/pagemap.proto), in the order decode_flat returns them.
_PE_FIELDS = (1, 2, 3, 4, 5, 32, 33)
_PE_U32 = (2, 4, 33)


def _entry_blocks(f, path, offset: int) -> Iterator[tuple[int, bytes, np.ndarray, np.ndarray]]:
    """The entries from the current position (file offset ``offset``) in
    blocks: ``(file offset of buf[0], buf, payload starts in buf, sizes)``,
    about :data:`_DECODE_BLOCK` bytes a block (more for one larger entry).
    Errors as :func:`~dumper.image.format.iter_entries`."""
    from .wire import entry_spans

    file_size = _file_size(f)
    limit = fmt.MAX_ENTRY_SIZE
    buf = b""
    base = offset
    while True:
        need = _DECODE_BLOCK
        if len(buf) >= 4:
            size = fmt.U32.unpack_from(buf, 0)[0]
            if size <= limit:
                need = max(need, min(4 + size - len(buf), file_size - base - len(buf)))
        more = fmt._read(f, need, path, base + len(buf))
        buf = buf + more if buf else more
        if not buf:
            return
        starts, sizes, pos, bad = entry_spans(buf, 0, base, file_size, limit)
        if bad is not None:
            at, size = base + bad[0], bad[1]
            if size > limit:
                raise CorruptImage(path, at, f"entry size {size} exceeds the {limit}-byte limit")
            raise CorruptImage(path, at, f"entry of {size} bytes runs past the end of the file ({file_size} bytes)")
        if len(starts):
            yield base, buf, starts, sizes
        if not more:
            if pos < len(buf):
                raise CorruptImage(path, base + pos, f"truncated entry size: {len(buf) - pos} of 4 bytes")
            return
        buf = buf[pos:]
        base += pos


def _decode_block_fast(buf, starts, sizes, cols) -> bool:
    """Append one block's entries to ``cols`` decoded in bulk; False (and
    nothing appended) when protobuf must parse it."""
    from .wire import decode_flat

    d = decode_flat(buf, starts, sizes, _PE_FIELDS, u32=_PE_U32)
    if d is None:
        return False
    (vaddr, compat, in_parent, flags, nr_pages, pages_off, crc), has = d.values, d.has
    if not (has[0].all() and has[1].all()):
        return False  # required fields missing: protobuf names them
    nr = np.where(has[4], nr_pages, compat)
    fl = np.where(in_parent != 0, flags | np.uint64(fmt.PE_PARENT),
                  np.where(has[3], flags, np.uint64(fmt.PE_PRESENT))).astype(np.uint32)
    po = np.where(has[5], pages_off, np.uint64(_NO_PAGES_OFF))
    _add_crcs(cols, np.where(has[6], crc.astype(np.int64), np.int64(_NO_CRC)) if has[6].any() else None, len(nr))
    for col, arr in zip(cols, (vaddr, nr, fl, po)):
        col.frombytes(arr.tobytes())
    return True


def _add_crcs(cols: list, crcs: np.ndarray | None, n: int) -> None:
    """Append ``n`` entries' crc32 values (int64, -1 for none; None: no
    entry has one) to ``cols[4]``, made (-1 for the earlier entries) the
    first time some entry has one: most pagemaps never pay for the column."""
    if crcs is None:
        if cols[4] is not None:
            cols[4].frombytes(np.full(n, _NO_CRC, np.int64).tobytes())
        return
    if cols[4] is None:
        cols[4] = array.array("q", np.full(len(cols[0]), _NO_CRC, np.int64).tobytes())
    cols[4].frombytes(crcs.tobytes())


def _decode_block_protobuf(path, base: int, buf, starts, sizes, index: int, cols) -> None:
    """Append one block's entries to ``cols``, parsed by protobuf one at a
    time (the reference decoder); ``index``: number of the first entry."""
    va_add, nr_add, fl_add, po_add = (c.append for c in cols[:4])
    crcs = []
    crc_add = crcs.append
    new = pagemap_pb2.pagemap_entry
    mv = memoryview(buf)
    for i, (s, z) in enumerate(zip(starts.tolist(), sizes.tolist()), index):
        at = base + s - 4
        pe = new()
        try:
            pe.ParseFromString(mv[s:s + z])
        except DecodeError as err:
            raise CorruptImage(path, at, f"entry {i}: bad pagemap_entry: {err}") from err
        if not pe.IsInitialized():
            raise CorruptImage(path, at, f"entry {i}: pagemap_entry lacks required fields: "
                               + ", ".join(pe.FindInitializationErrors()))
        va_add(pe.vaddr)
        nr_add(pe.nr_pages if pe.HasField("nr_pages") else pe.compat_nr_pages)
        if pe.in_parent:
            fl_add(pe.flags | fmt.PE_PARENT)
        elif pe.HasField("flags"):
            fl_add(pe.flags)
        else:
            fl_add(fmt.PE_PRESENT)
        po_add(pe.pages_off if pe.HasField("pages_off") else _NO_PAGES_OFF)
        crc_add(pe.pages_crc32 if pe.HasField("pages_crc32") else _NO_CRC)
    # (appended after the other columns: _add_crcs sizes a new column by them)
    arr = np.array(crcs, np.int64)
    cols_before = len(cols[0]) - len(crcs)
    if (arr != _NO_CRC).any() and cols[4] is None:
        cols[4] = array.array("q", np.full(cols_before, _NO_CRC, np.int64).tobytes())
    if cols[4] is not None:
        cols[4].frombytes(arr.tobytes())

def _stream_entries(f, path, offset: int) -> Iterator[tuple[int, bytes]]:
    """Like :func:`~dumper.image.format.iter_entries` from the current
    position (at byte ``offset``), reading the file in 1 MiB blocks: the
    per-entry cost is one unpack and one slice."""
    file_size = _file_size(f)
    buf = b""
    pos = 0  # in buf
    base = offset  # file offset of buf[0]
    unpack = fmt.U32.unpack_from
    limit = fmt.MAX_ENTRY_SIZE
    while True:
        if len(buf) - pos < 4:
            more = f.read(_READ_BLOCK)
            buf = buf[pos:] + more
            base += pos
            pos = 0
            if len(buf) < 4:
                if buf:
                    raise CorruptImage(path, base, f"truncated entry size: {len(buf)} of 4 bytes")
                return
        size = unpack(buf, pos)[0]
        at = base + pos
        if size > limit:
            raise CorruptImage(path, at, f"entry size {size} exceeds the {limit}-byte limit")
        end = pos + 4 + size
        if at + 4 + size > file_size:
            raise CorruptImage(path, at, f"entry of {size} bytes runs past the end of the file ({file_size} bytes)")
        if end > len(buf):
            more = f.read(max(_READ_BLOCK, end - len(buf)))
            buf = buf[pos:] + more
            base += pos
            end -= pos
            pos = 0
            if end > len(buf):
                raise CorruptImage(path, at + 4, f"truncated entry payload: {len(buf) - 4} of {size} bytes")
        yield at, buf[pos + 4:end]
        pos = end


def _entry_offset(path, f, index: int) -> int | None:
    """File offset of entry ``index`` (0: the head) of an image, for an
    error found after loading; None if the file cannot be read again."""
    try:
        with (contextlib.nullcontext(f) if f is not None else _open(path)) as fh:
            fh.seek(8)
            for i, (at, _) in enumerate(_stream_entries(fh, path, 8)):
                if i == index:
                    return at
    except (OSError, ImageError):
        pass
    return None


def _check_entries(path, f, va, nr, fl, po, ps: int, crc=None) -> tuple[PagemapEntries, int]:
    """Validate the loaded columns with numpy (no per-entry Python) and
    build the PagemapEntries; ``(entries, PE_PRESENT pages)``."""
    vaddr = np.frombuffer(va, np.uint64) if len(va) else np.empty(0, np.uint64)
    nrp = np.frombuffer(nr, np.uint64) if len(nr) else np.empty(0, np.uint64)
    flags = np.frombuffer(fl, np.uint32) if len(fl) else np.empty(0, np.uint32)
    n = len(vaddr)
    if n == 0:
        return PagemapEntries.empty(), 0
    ups = np.uint64(ps)
    first_page = vaddr // ups
    # end <= 2**64 <=> nr <= 2**64/ps - vaddr/ps (vaddr aligned): no overflow.
    bad_range = (nrp == 0) | ((vaddr & np.uint64(ps - 1)) != 0) | (nrp > np.uint64(_U64_LIMIT // ps) - first_page)
    end_page = np.where(bad_range, np.uint64(0), nrp)
    end_page += first_page  # in place: one temporary array fewer at the peak
    overlap = np.zeros(n, bool)
    overlap[1:] = first_page[1:] < end_page[:-1]
    del end_page, first_page
    both = np.uint32(fmt.PE_PARENT | fmt.PE_PRESENT)
    bad_flags = ((flags & np.uint32(~_KNOWN_FLAGS & 0xFFFFFFFF)) != 0) | ((flags & both) == both)
    bad_flags |= ((flags & np.uint32(fmt.PE_COW)) != 0) & ((flags & both) != 0)  # PE_COW stands alone
    present = (flags & np.uint32(fmt.PE_PRESENT)) != 0
    problems = [(bad_range, "range"), (overlap, "overlap"), (bad_flags, "flags")]
    first_bad = min((int(np.argmax(m)) for m, _ in problems if m.any()), default=n)
    expected = np.zeros(n, np.uint64)
    if n > 1:
        np.cumsum(np.where(present[:-1], nrp[:-1], np.uint64(0)), out=expected[1:])
    recorded = np.frombuffer(po, np.uint64)
    bad_off = present & (recorded != np.uint64(_NO_PAGES_OFF)) & (recorded != expected)
    if bad_off.any():
        first_bad = min(first_bad, int(np.argmax(bad_off)))
    if first_bad < n:
        i = first_bad
        at = _entry_offset(path, f, i + 1)
        where = f"entry {i + 1}"
        v, k, fla = int(vaddr[i]), int(nrp[i]), int(flags[i])
        if bad_range[i]:
            raise CorruptImage(path, at, f"{where}: bad range {v:#x} + {k} pages")
        if overlap[i]:
            raise CorruptImage(path, at, f"{where}: {v:#x} overlaps or precedes the previous entry")
        if bad_flags[i]:
            raise CorruptImage(path, at, f"{where}: bad flags {fmt.format_flags(fla, 'pmap.flags')}")
        raise CorruptImage(path, at, f"{where}: pages_off {int(recorded[i])}, expected {int(expected[i])}")
    del bad_range, overlap, bad_flags, bad_off
    total = int(expected[-1]) + (int(nrp[-1]) if present[-1] else 0)
    pages_off = expected.view(np.int64)  # < 2**52: fits
    pages_off[~present] = -1
    crcs = None
    if crc is not None and len(crc):
        crcs = np.frombuffer(crc, np.int64)
        if not (crcs != _NO_CRC).any():
            crcs = None  # no entry has one: no column
    return PagemapEntries(vaddr, nrp, flags, pages_off, crcs), total


def _pages_file_name(head: pagemap_pb2.pagemap_head, path, offset: int | None = None) -> tuple[str, bool]:
    """``(file name, compressed)`` of the pages file a pagemap head names.
    Only the two names derived from ``pages_id`` are accepted, so an
    untrusted head cannot point outside the image directory. ``offset``:
    where the head is, for errors."""
    codec = fmt.raw_enum(head, "compression")
    if codec not in (None, fmt.COMPRESSION_NONE, fmt.COMPRESSION_ZSTD):
        raise UnsupportedVersion(path, offset, f"unknown pages compression {codec}")
    compressed = codec == fmt.COMPRESSION_ZSTD
    name = fmt.zpages_name(head.pages_id) if compressed else fmt.pages_name(head.pages_id)
    if head.HasField("pages_file") and head.pages_file != name:
        raise CorruptImage(
            path, offset, f"pages_file {head.pages_file!r} does not match pages_id (expected {name!r})"
        )
    return name, compressed


# --- compressed pages


@dataclass(slots=True)
class ZpagesLayout:
    """The validated structure of a ``pages-N.zst.img``.

    ``offsets[i]``/``sizes[i]``: file offset and size in bytes of zstd frame
    ``i`` (int64 arrays); ``data_offset`` where frame 0 starts; ``index_offset``
    where the index entry starts (end of the frames).
    """

    head: zpages_pb2.zpages_head
    index: zpages_pb2.zpages_index
    data_offset: int
    index_offset: int
    offsets: np.ndarray
    sizes: np.ndarray

    @property
    def nr_pages(self) -> int:
        return self.index.nr_pages

    @property
    def nr_frames(self) -> int:
        return len(self.sizes)

    def frame_len(self, i: int) -> int:
        """Uncompressed length (bytes) of frame ``i``."""
        fp = self.head.frame_pages
        pages = min(fp, self.index.nr_pages - i * fp)
        return pages * self.head.page_size


def read_zpages_layout(f, path: str | os.PathLike | None) -> ZpagesLayout:
    """Read and validate header, footer and index of a compressed pages file
    open as ``f`` (a binary file object); see :mod:`dumper.image.format` for
    the layout. BadMagic if it is not one; UnsupportedVersion for an unknown
    compression; CorruptImage for any inconsistency (offset given)."""
    size = _file_size(f)
    f.seek(0)
    if fmt.read_magic(f, path) != "ZPAGES":
        raise BadMagic(path, 4, "not a compressed pages file")
    # Head entry: the first entry after the 8 magic bytes.
    head_payload = next(fmt.iter_entries(f, path, 8, limit=None), None)
    if head_payload is None:
        raise CorruptImage(path, 8, "no zpages_head")
    try:
        head = zpages_pb2.zpages_head.FromString(head_payload[1])
    except DecodeError:
        head = None  # parse_entry below reports it
    # Before the required-field check: an unknown codec would look "missing".
    codec = fmt.raw_enum(head, "compression") if head is not None else fmt.COMPRESSION_ZSTD
    if codec not in (None, fmt.COMPRESSION_ZSTD):
        raise UnsupportedVersion(path, 8, f"unknown pages compression {codec}")
    head = fmt.parse_entry(zpages_pb2.zpages_head, head_payload[1], path, 8)
    ps = fmt.check_page_size(head.page_size, path, 8)
    if not 1 <= head.frame_pages * ps <= fmt.MAX_FRAME_BYTES:
        raise CorruptImage(path, 8, f"implausible frame_pages {head.frame_pages}")
    data_offset = 8 + fmt.U32.size + len(head_payload[1])

    foot_at = size - fmt.ZPAGES_FOOTER.size
    if foot_at < data_offset + fmt.U32.size:
        raise CorruptImage(path, data_offset, "truncated: no room for index and footer")
    f.seek(foot_at)
    index_offset, crc, magic = fmt.ZPAGES_FOOTER.unpack(fmt._read_exact(f, fmt.ZPAGES_FOOTER.size, path, foot_at,
                                                                         "footer"))
    if magic != fmt.ZPAGES_MAGIC:
        raise CorruptImage(path, foot_at, f"no footer (magic {magic:#010x}): truncated or overwritten")
    if not data_offset <= index_offset <= foot_at - fmt.U32.size:
        raise CorruptImage(path, foot_at, f"index offset {index_offset} outside [{data_offset}, {foot_at})")
    f.seek(index_offset)
    _, payload = next(fmt.iter_entries(f, path, index_offset, limit=foot_at))
    if index_offset + fmt.U32.size + len(payload) != foot_at:
        raise CorruptImage(path, index_offset, "the index does not end where the footer starts")
    if zlib.crc32(payload) != crc:
        raise CorruptImage(path, index_offset, "index checksum mismatch")
    index = fmt.parse_entry(zpages_pb2.zpages_index, payload, path, index_offset)

    fp = head.frame_pages
    nr_frames = -(-index.nr_pages // fp)
    if len(index.frame_size) != nr_frames:
        raise CorruptImage(
            path, index_offset, f"{len(index.frame_size)} frames for {index.nr_pages} pages of {fp} per frame"
        )
    raw_sizes = np.fromiter(index.frame_size, dtype=np.uint64, count=nr_frames)
    bound = fmt.zstd_frame_bound(fp * ps)
    if nr_frames and (int(raw_sizes.min()) < 1 or int(raw_sizes.max()) > bound):
        raise CorruptImage(path, index_offset, f"frame size outside [1, {bound}]")
    sizes = raw_sizes.astype(np.int64)  # each <= bound, so no overflow
    if int(sizes.sum()) != index_offset - data_offset:
        raise CorruptImage(
            path, index_offset, f"frame sizes add up to {int(sizes.sum())}, frames span {index_offset - data_offset}"
        )
    offsets = np.empty_like(sizes)
    if nr_frames:
        offsets[0] = data_offset
        np.cumsum(sizes[:-1], out=offsets[1:])
        offsets[1:] += data_offset
    return ZpagesLayout(head, index, data_offset, index_offset, offsets, sizes)


# --- page bytes


def _zstd_frame_length(raw: bytes, pos: int) -> int:
    """Length in bytes of the zstd frame at the start of ``raw`` whose header
    is ``pos`` bytes long (RFC 8878 3.1.1: 3-byte block headers, bit 0 last
    block, bits 1-2 type, bits 3-23 size; an RLE block stores 1 byte), with
    its 4-byte checksum (we only accept checksummed frames). Only called on
    a frame that just decoded, so the walk ends within ``raw``'s length + 4."""
    n = len(raw)
    while pos + 3 <= n:
        hdr = int.from_bytes(raw[pos : pos + 3], "little")
        pos += 3 + (1 if (hdr >> 1) & 3 == 1 else hdr >> 3)
        if hdr & 1:
            return pos + 4
    return -1


class PagesReader:
    """Random access to the page stream of one pages file.

    ``path`` is a raw ``pages-N.img`` or a compressed ``pages-N.zst.img``
    (``compressed=None`` decides by the name's ``.zst.img`` suffix).
    ``page_size`` (bytes) is required knowledge for raw files (default: the
    running system's); a compressed file carries its own and a differing
    argument is CorruptImage. Not thread-safe; keeps the last decompressed
    frame for sequential reads.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        compressed: bool | None = None,
        page_size: int | None = None,
        f=None,
    ) -> None:
        self.path = os.fspath(path)
        if compressed is None:
            compressed = self.path.endswith(".zst.img")
        self.compressed = compressed
        self._f = f if f is not None else _open(self.path)
        self._fd = self._f.fileno()
        self._cached: tuple[int, bytes] | None = None
        try:
            if compressed:
                self.layout: ZpagesLayout | None = read_zpages_layout(self._f, self.path)
                self.page_size = self.layout.head.page_size
                if page_size is not None and page_size != self.page_size:
                    raise CorruptImage(self.path, 8, f"page size {self.page_size}, expected {page_size}")
                self.nr_pages = self.layout.nr_pages
                self.frame_pages = self.layout.head.frame_pages
                self._dctx = zstandard.ZstdDecompressor()
            else:
                self.layout = None
                self.page_size = fmt.check_page_size(page_size or os.sysconf("SC_PAGE_SIZE"), self.path)
                size = _file_size(self._f)
                if size % self.page_size:
                    raise CorruptImage(
                        self.path, size - size % self.page_size, f"size {size} is not a whole number of pages"
                    )
                self.nr_pages = size // self.page_size
                self.frame_pages = 0
        except BaseException:
            self._f.close()
            raise

    @property
    def end_offset(self) -> int:
        """Where the page stream's length is recorded: the index of a
        compressed file, the end of a raw one (for errors)."""
        return self.layout.index_offset if self.layout is not None else self.nr_pages * self.page_size

    def _pread(self, n: int, offset: int, what: str) -> bytes:
        parts = []
        got = 0
        while got < n:
            try:
                chunk = os.pread(self._fd, n - got, offset + got)
            except OSError as err:
                raise ImageError(self.path, offset + got, f"reading {what}: {err.strerror}") from err
            if not chunk:
                raise CorruptImage(self.path, offset + got, f"truncated {what}: {got} of {n} bytes")
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _frame(self, i: int) -> bytes:
        """Decompressed frame ``i``, checked against the index."""
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        lay = self.layout
        off, size = int(lay.offsets[i]), int(lay.sizes[i])
        expect = lay.frame_len(i)
        raw = self._pread(size, off, f"frame {i}")
        try:
            params = zstandard.get_frame_parameters(raw)
        except zstandard.ZstdError as err:
            raise CorruptImage(self.path, off, f"frame {i}: bad zstd header: {err}") from err
        # Frame_Header_Descriptor bits 3 (reserved) and 4 (unused, ignored by
        # decoders) are never set by libzstd: refuse them, or a flip of bit 4
        # would decode as if nothing had happened (RFC 8878 3.1.1.1.1).
        if raw[4] & 0x18:
            raise CorruptImage(self.path, off + 4, f"frame {i}: reserved bits set in the zstd frame header")
        # Check before decompressing: a lying content size must not drive allocation.
        if params.content_size != expect or not params.has_checksum:
            raise CorruptImage(
                self.path,
                off,
                f"frame {i}: content size {params.content_size} (expected {expect}), "
                f"checksum {'present' if params.has_checksum else 'absent'}",
            )
        try:
            # Output buffer is exactly the (checked) content size: a bound.
            data = self._dctx.decompress(raw, max_output_size=expect)
        except zstandard.ZstdError as err:
            raise CorruptImage(self.path, off, f"frame {i}: {err}") from err
        if len(data) != expect:
            raise CorruptImage(self.path, off, f"frame {i}: {len(data)} bytes decoded, expected {expect}")
        end = _zstd_frame_length(raw, zstandard.frame_header_size(raw))
        if end != size:
            raise CorruptImage(self.path, off, f"frame {i}: the frame is {end} bytes, the index expected {size}")
        self._cached = (i, data)
        return data

    def read_pages(self, page_index: int, count: int) -> bytes:
        """Bytes of stream pages ``[page_index, page_index + count)``
        (``count * page_size`` bytes). CorruptImage if the range passes the
        end of the stream or the data is damaged (a raw file shorter than
        it was when opened); ValueError if negative."""
        if page_index < 0 or count < 0:
            raise ValueError(f"bad page range {page_index} + {count}")
        if page_index + count > self.nr_pages:
            raise CorruptImage(
                self.path,
                self.end_offset,
                f"pages [{page_index}, {page_index + count}) beyond the {self.nr_pages} pages of the stream",
            )
        if count == 0:
            return b""
        ps = self.page_size
        if not self.compressed:
            return self._pread(count * ps, page_index * ps, "pages")
        fp = self.frame_pages
        first, last = page_index // fp, (page_index + count - 1) // fp
        start = (page_index - first * fp) * ps
        if first == last:
            frame = self._frame(first)
            if start == 0 and len(frame) == count * ps:
                return frame
            return frame[start : start + count * ps]
        out = bytearray()
        out += memoryview(self._frame(first))[start:]
        for i in range(first + 1, last):
            out += self._frame(i)
        tail = (page_index + count - last * fp) * ps
        out += memoryview(self._frame(last))[:tail]
        return bytes(out)

    def holes(self, page_index: int, count: int) -> list[tuple[int, int]]:
        """``(first page, pages)`` runs of stream pages ``[page_index,
        page_index + count)`` that are holes of a raw pages file (a sparse
        file: they read as zeros), from ``lseek`` SEEK_HOLE/SEEK_DATA: one
        pair of calls per extent, never a read. ``[]`` for a compressed
        file or where the filesystem reports no holes."""
        if self.compressed or count <= 0:
            return []
        ps = self.page_size
        pos, end = page_index * ps, (page_index + count) * ps
        out = []
        while pos < end:
            try:
                h = os.lseek(self._fd, pos, os.SEEK_HOLE)
            except OSError:
                return out  # ENXIO past EOF, or no SEEK_HOLE support: no holes known
            if h >= end:
                break
            try:
                d = os.lseek(self._fd, h, os.SEEK_DATA)
            except OSError:
                d = end  # ENXIO: a hole up to the end of the file
            first, last = -(-h // ps), min(d, end) // ps  # whole pages only
            if last > first:
                out.append((first, last - first))
            pos = max(d, h + 1)
        return out

    def close(self) -> None:
        self._f.close()
        self._cached = None

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> PagesReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pages(image_dir: str | os.PathLike, head: pagemap_pb2.pagemap_head) -> PagesReader:
    """Open the pages file that pagemap ``head`` names, inside ``image_dir``.

    Raw when the head has no ``compression`` (CRIU images) or NONE; the page
    size of a raw file is the head's, else the running system's.
    """
    name, compressed = _pages_file_name(head, None)
    ps = head.page_size if head.HasField("page_size") else None
    return PagesReader(Path(image_dir) / name, compressed=compressed, page_size=ps)


def iter_present(
    entries, pages: PagesReader, *, max_pages: int = 256
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(vaddr, data)`` for the PE_PRESENT entries, in order, in chunks
    of at most ``max_pages`` pages (an entry may span several chunks).
    ``entries``: a :class:`PagemapEntries` or a list of PagemapEntry.

    Raises CorruptImage first if the entries' PE_PRESENT pages do not add up
    to the length of the page stream.
    """
    if not isinstance(entries, PagemapEntries):
        entries = PagemapEntries.from_list(entries)
    total = entries.pages(fmt.PE_PRESENT)
    if total != pages.nr_pages:
        raise CorruptImage(
            pages.path, pages.end_offset, f"pagemap has {total} present pages, the pages file {pages.nr_pages}"
        )
    ps = pages.page_size
    off = 0
    for e in entries[entries.mask(fmt.PE_PRESENT)] if len(entries) else ():
        for done in range(0, e.nr_pages, max_pages):
            n = min(max_pages, e.nr_pages - done)
            yield e.vaddr + done * ps, pages.read_pages(off + done, n)
        off += e.nr_pages

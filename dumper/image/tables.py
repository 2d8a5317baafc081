"""Compact, streamed forms of the big lists a checkpoint holds: the VMAs of
an ``mm-PID.img`` and the processes of a ``pstree.img``.

A process with 400,000 VMAs, or a tree of a million processes, must not
cost a gigabyte in every reader. Here:

* :class:`VmaTable`: an mm_entry's ``vma_entry`` list kept as the image's
  bytes plus numpy columns (``start``, ``end``, ``pgoff``, ``status``,
  ``dumped``: about 45 bytes a VMA besides the file's own bytes). Lookups
  and checks use the columns; a ``vma_entry`` message is made only when
  one is asked for (indexing, iteration: parsed in batches).
* :class:`MmEntry`: the mm_entry's other fields (a real message without
  VMAs) with ``vmas`` the table; :meth:`MmEntry.to_message` builds the
  whole message for writers.
* :class:`PstreeTable`: pid, ppid, pgid, sid columns and the threads,
  decoded in bulk (:func:`dumper.image.wire.decode_flat`, protobuf for
  blocks it leaves).

Input is untrusted: every error is a CorruptImage naming the file and the
offset of the entry.
"""

from __future__ import annotations

import array
import os
from collections.abc import Iterator

import numpy as np
from google.protobuf.message import DecodeError, Message

from ..errors import BadMagic, CorruptImage
from . import format as fmt
from .pb import mm_pb2, pstree_pb2, vma_pb2

__all__ = ["VmaTable", "MmEntry", "load_mm", "PstreeTable", "load_pstree"]

_VMAS_TAG = 14 << 3 | 2  # mm_entry.vmas, length-delimited: 0x72
_BATCH = 4096  # VMAs parsed by protobuf at once
_NO_DUMPED = -1
_I64_MAX = (1 << 63) - 1


def _string_fields(msg: Message) -> list[str]:
    return [f.name for f in msg.DESCRIPTOR.fields if f.type == f.TYPE_STRING and not f.is_repeated]


_VMA_STRINGS = tuple(_string_fields(vma_pb2.vma_entry()))
_MM_FIELDS = frozenset(f.name for f in mm_pb2.mm_entry.DESCRIPTOR.fields) - {"vmas"}


class VmaTable:
    """``vma_entry`` messages held as their bytes plus columns.

    Columns (numpy, one row per VMA): ``start``, ``end`` (uint64 bytes,
    end-exclusive), ``pgoff`` (uint64 bytes), ``status`` (uint32 VMA_* bits),
    ``dumped`` (int8: 1, 0, or -1 when the field is absent),
    ``nr_pages_dumped`` and ``nr_pages_parent`` (int64 pages, -1 when
    absent). A sequence
    of ``vma_entry``: ``len()``, ``t[i]`` (a message, parsed then), ``t[a:b]``
    or ``t[bool or int array]`` (a VmaTable sharing the bytes), iteration
    (parsed in batches). Rows keep the order they were given (image order,
    or what :meth:`take` selected).
    """

    __slots__ = ("_payload", "_rs", "_re", "start", "end", "pgoff", "status", "dumped", "nr_pages_dumped",
                 "nr_pages_parent")

    def __init__(self, payload: bytes, rs: np.ndarray, re: np.ndarray, start: np.ndarray, end: np.ndarray,
                 pgoff: np.ndarray, status: np.ndarray, dumped: np.ndarray, nr_pages_dumped: np.ndarray,
                 nr_pages_parent: np.ndarray) -> None:
        self._payload = payload
        self._rs = rs  # where each VMA's field (tag, length, message) starts in payload
        self._re = re  # and ends
        self.start = start
        self.end = end
        self.pgoff = pgoff
        self.status = status
        self.dumped = dumped
        self.nr_pages_dumped = nr_pages_dumped
        self.nr_pages_parent = nr_pages_parent

    @classmethod
    def empty(cls) -> VmaTable:
        z64, zu = np.empty(0, np.int64), np.empty(0, np.uint64)
        return cls(b"", z64, z64, zu, zu, zu, np.empty(0, np.uint32), np.empty(0, np.int8), z64, z64)

    @classmethod
    def from_messages(cls, vmas) -> VmaTable:
        """A table of ``vma_entry`` messages (for tests and small lists)."""
        out = mm_pb2.mm_entry()
        out.vmas.extend(vmas)
        payload = out.SerializePartialToString()
        return _table_from_payload(payload, None, 0)[1]

    def __len__(self) -> int:
        return len(self.start)

    @staticmethod
    def merged(a: VmaTable, b: VmaTable) -> VmaTable:
        """Rows of two tables over the same image bytes, in image order."""
        if not len(b):
            return a
        if not len(a):
            return b
        both = VmaTable(a._payload, *(np.concatenate((getattr(a, k), getattr(b, k))) for k in
                                      ("_rs", "_re", "start", "end", "pgoff", "status", "dumped", "nr_pages_dumped",
                                       "nr_pages_parent")))
        return both.take(np.argsort(both._rs, kind="stable"))

    def take(self, rows) -> VmaTable:
        """The rows ``rows`` (slice, bool mask or index array), as a table."""
        return VmaTable(self._payload, self._rs[rows], self._re[rows], self.start[rows], self.end[rows],
                        self.pgoff[rows], self.status[rows], self.dumped[rows], self.nr_pages_dumped[rows],
                        self.nr_pages_parent[rows])

    def __getitem__(self, i):
        if isinstance(i, (slice, np.ndarray, list)):
            return self.take(i)
        n = len(self.start)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("VMA index out of range")
        m = mm_pb2.mm_entry.FromString(self._payload[int(self._rs[i]):int(self._re[i])])
        return m.vmas[0]

    def __iter__(self) -> Iterator[vma_pb2.vma_entry]:
        for _, chunk in _batches(self._payload, self._rs, self._re):
            yield from mm_pb2.mm_entry.FromString(chunk).vmas

    def __repr__(self) -> str:
        return f"<VmaTable {len(self)} VMAs>"

    def __eq__(self, other) -> bool:
        if isinstance(other, (VmaTable, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def index_at(self, addr: int) -> int:
        """Index of the last row starting at or before byte ``addr`` (-1 if
        none); rows must be ascending by start (binary search)."""
        if addr >= 1 << 64:
            return len(self.start) - 1
        if addr < 0:
            return -1
        return int(np.searchsorted(self.start, np.uint64(addr), side="right")) - 1

    def at(self, addr: int) -> vma_pb2.vma_entry | None:
        """The row holding byte ``addr`` (ascending, disjoint rows), or None."""
        i = self.index_at(addr)
        if i >= 0 and addr < int(self.end[i]):
            return self[i]
        return None

    def nbytes(self) -> int:
        """Memory held: columns plus the image bytes they point into."""
        return sum(a.nbytes for a in (self._rs, self._re, self.start, self.end, self.pgoff, self.status,
                                      self.dumped, self.nr_pages_dumped, self.nr_pages_parent)) + len(self._payload)


class MmEntry:
    """An ``mm_entry`` whose VMAs are a :class:`VmaTable` (``vmas``, image
    order). Its other fields read as the message's (``mm.exe_path``,
    ``mm.HasField("dumpable")``); anything else a message has (ListFields,
    SerializeToString, CopyFrom) is not here: :meth:`to_message` gives the
    whole message."""

    __slots__ = ("_head", "_parts")

    def __init__(self, head: mm_pb2.mm_entry, vmas: VmaTable) -> None:
        self._head = head
        self._parts = (vmas, None)

    def split(self, vmas: VmaTable, guards: VmaTable) -> None:
        """Hold the VMAs as two tables (VMAs, guard pseudo-VMAs) that the
        reader keeps anyway; ``vmas`` merges them when asked."""
        self._parts = (vmas, guards)

    @property
    def vmas(self) -> VmaTable:
        a, b = self._parts
        return a if b is None else VmaTable.merged(a, b)

    def __getattr__(self, name: str):
        if name in _MM_FIELDS:
            return getattr(self._head, name)
        raise AttributeError(f"MmEntry has no {name!r} (to_message() gives the whole mm_entry)")

    def HasField(self, name: str) -> bool:  # noqa: N802 (protobuf's name)
        return self._head.HasField(name)

    def to_message(self) -> mm_pb2.mm_entry:
        """The whole ``mm_entry``, VMAs included (image order), ready to be
        written: required fields the image lacks (readers tolerate that)
        are set as CRIU writes "unknown": 0, and -1 for a VMA's ``fd``."""
        m = mm_pb2.mm_entry()
        m.CopyFrom(self._head)
        m.vmas.extend(self.vmas)
        if not m.IsInitialized():
            for msg in (m, *m.vmas, *m.aios):
                for f in msg.DESCRIPTOR.fields:
                    if f.is_required and not msg.HasField(f.name):
                        setattr(msg, f.name, -1 if (msg is not m and f.name == "fd") else 0)
        return m


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """``(value, next position)`` of the varint at ``pos``; (-1, pos) when
    it is longer than 10 bytes or runs past ``end``."""
    value = shift = 0
    for i in range(pos, min(pos + 10, end)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    return -1, pos


def _split_mm(payload: bytes) -> tuple[bytes, array.array, array.array] | None:
    """Walk the top-level fields of an mm_entry: ``(the bytes of every
    field but the VMAs, VMA field starts, ends)``; None if the walk fails
    (protobuf then says why, or parses what this walk does not)."""
    n = len(payload)
    rs, re = array.array("q"), array.array("q")
    rs_add, re_add = rs.append, re.append
    head = bytearray()
    pos = 0
    while pos < n:
        tag = payload[pos]
        if tag == _VMAS_TAG and pos + 1 < n and payload[pos + 1] < 0x80:  # the common case: a VMA under 128 bytes
            q = pos + 2 + payload[pos + 1]
        else:
            tag, p = _varint(payload, pos, n)
            wt = tag & 7
            if tag < 8 or p == pos:
                return None
            if wt == 0:
                v, q = _varint(payload, p, n)
                if v < 0:
                    return None
            elif wt == 2:
                ln, q = _varint(payload, p, n)
                if ln < 0:
                    return None
                q += ln
            elif wt == 1:
                q = p + 8
            elif wt == 5:
                q = p + 4
            else:
                return None  # groups: protobuf's business
        if q > n:
            return None
        if tag == _VMAS_TAG:
            rs_add(pos)
            re_add(q)
        else:
            head += payload[pos:q]
        pos = q
    return bytes(head), rs, re


def _batches(payload: bytes, rs: np.ndarray, re: np.ndarray) -> Iterator[tuple[int, bytes]]:
    """``(first row, bytes)``: the VMA fields of rows ``[k, k + _BATCH)``,
    an mm_entry holding just those VMAs, for one protobuf parse."""
    for s in range(0, len(rs), _BATCH):
        a, b = rs[s:s + _BATCH], re[s:s + _BATCH]
        if len(a) > 1 and bool((a[1:] == b[:-1]).all()):
            yield s, payload[int(a[0]):int(b[-1])]  # contiguous in the image: one slice
        else:
            yield s, b"".join(payload[x:y] for x, y in zip(a.tolist(), b.tolist()))


def _table_from_payload(payload: bytes, path, off: int) -> tuple[mm_pb2.mm_entry, VmaTable]:
    """``(mm_entry without its VMAs, VmaTable)`` of an mm_entry's bytes."""
    split = _split_mm(payload)
    if split is None:
        try:
            whole = mm_pb2.mm_entry.FromString(payload)
        except DecodeError as err:
            raise CorruptImage(path, off, f"bad mm_entry: {err}") from err
        # Parsed by protobuf but not by the walk (groups, odd encodings):
        # written out again in the canonical form, VMAs last.
        whole.DiscardUnknownFields()
        vmas = list(whole.vmas)
        del whole.vmas[:]
        rebuilt = mm_pb2.mm_entry()
        rebuilt.vmas.extend(vmas)
        head_bytes = whole.SerializePartialToString()
        payload = head_bytes + rebuilt.SerializePartialToString()
        split = _split_mm(payload)
        if split is None:  # cannot happen: protobuf's own output
            raise CorruptImage(path, off, "bad mm_entry: cannot be read")
    head_bytes, rs_a, re_a = split
    try:
        head = mm_pb2.mm_entry.FromString(head_bytes)
    except DecodeError as err:
        raise CorruptImage(path, off, f"bad mm_entry: {err}") from err
    rs = np.frombuffer(rs_a, np.int64) if len(rs_a) else np.empty(0, np.int64)
    re = np.frombuffer(re_a, np.int64) if len(re_a) else np.empty(0, np.int64)
    n = len(rs)
    start, end, pgoff = array.array("Q"), array.array("Q"), array.array("Q")
    status, dumped, ndump, npar = array.array("I"), array.array("b"), array.array("q"), array.array("q")
    add_s, add_e, add_p, add_st, add_d = start.append, end.append, pgoff.append, status.append, dumped.append
    add_nd, add_np = ndump.append, npar.append
    index = 0
    for s, chunk in _batches(payload, rs, re):
        try:
            batch = mm_pb2.mm_entry.FromString(chunk).vmas
        except DecodeError as err:
            raise CorruptImage(path, off, f"bad mm_entry: VMAs {s}-{min(s + _BATCH, n) - 1}: {err}") from err
        for v in batch:
            if not (v.HasField("start") and v.HasField("end")):
                raise CorruptImage(path, off, f"VMA {index} has no start or end")
            for name in _VMA_STRINGS:
                if type(getattr(v, name)) is bytes:  # proto2 hands out bytes for invalid UTF-8
                    raise CorruptImage(path, off, f"VMA {index}: {name} is not valid UTF-8")
            add_s(v.start)
            add_e(v.end)
            add_p(v.pgoff)
            add_st(v.status)
            add_d(int(v.dumped) if v.HasField("dumped") else _NO_DUMPED)
            # (a count past 2**63 - 1 is kept as 2**63 - 1: it matches no pagemap)
            add_nd(min(v.nr_pages_dumped, _I64_MAX) if v.HasField("nr_pages_dumped") else -1)
            add_np(min(v.nr_pages_parent, _I64_MAX) if v.HasField("nr_pages_parent") else -1)
            index += 1
    cols = [np.frombuffer(c, dt) if len(c) else np.empty(0, dt)
            for c, dt in ((start, np.uint64), (end, np.uint64), (pgoff, np.uint64), (status, np.uint32),
                          (dumped, np.int8), (ndump, np.int64), (npar, np.int64))]
    return head, VmaTable(payload, rs, re, *cols)


def load_mm(path: str | os.PathLike, f) -> MmEntry:
    """Read ``mm-PID.img`` (open as ``f``, closed here) into an
    :class:`MmEntry`, tolerant of absent fields (only VMA start and end are
    required). Memory: the file's bytes plus the table's columns; VMAs are
    parsed a batch at a time. BadMagic if it is not an MM image,
    CorruptImage if it does not hold exactly one decodable mm_entry or a
    string is not UTF-8."""
    with f:
        name = fmt.read_magic(f, path)
        if name != "MM":
            raise BadMagic(path, 0, f"expected an MM image, found {name}")
        entries = list(fmt.iter_entries(f, path, 8))
    if len(entries) != 1:
        raise CorruptImage(path, 8, f"MM image holds {len(entries)} entries, expected 1")
    off, payload = entries[0]
    del entries
    head, table = _table_from_payload(payload, path, off)
    for name in _string_fields(head):
        if isinstance(getattr(head, name), bytes):
            raise CorruptImage(path, off, f"mm_entry.{name} is not valid UTF-8")
    return MmEntry(head, table)


# --- pstree.img


class PstreeTable:
    """The entries of a ``pstree.img`` as columns (image order): ``pid``,
    ``ppid``, ``pgid``, ``sid`` (uint32) and each entry's ``threads`` (a
    slice of one flat array). A sequence of ``pstree_entry`` messages (made
    when indexed or iterated); :meth:`find` looks a pid up (its first
    entry, binary search)."""

    __slots__ = ("pid", "ppid", "pgid", "sid", "_thr", "_thr_off", "_order")

    def __init__(self, pid, ppid, pgid, sid, thr, thr_off) -> None:
        self.pid, self.ppid, self.pgid, self.sid = pid, ppid, pgid, sid
        self._thr = thr  # all threads, entry after entry (uint32)
        self._thr_off = thr_off  # entry i's are _thr[_thr_off[i]:_thr_off[i + 1]]
        # Rows sorted by pid, the first entry of each pid first: find().
        order = np.argsort(pid, kind="stable")
        self._order = order.astype(np.int32) if len(pid) < 1 << 31 else order

    def __len__(self) -> int:
        return len(self.pid)

    def threads(self, i: int) -> tuple[int, ...]:
        return tuple(self._thr[self._thr_off[i]:self._thr_off[i + 1]].tolist())

    def __getitem__(self, i: int) -> pstree_pb2.pstree_entry:
        if not -len(self) <= i < len(self):
            raise IndexError("pstree index out of range")
        i %= len(self)
        return pstree_pb2.pstree_entry(pid=int(self.pid[i]), ppid=int(self.ppid[i]), pgid=int(self.pgid[i]),
                                       sid=int(self.sid[i]), threads=self.threads(i))

    def __iter__(self) -> Iterator[pstree_pb2.pstree_entry]:
        for i in range(len(self)):
            yield self[i]

    def find(self, pid: int) -> int:
        """Row of the first entry for ``pid``, -1 if none."""
        if not 0 <= pid < 1 << 32 or not len(self.pid):
            return -1
        k = int(np.searchsorted(self.pid, np.uint32(pid), sorter=self._order))
        if k < len(self._order) and int(self.pid[self._order[k]]) == pid:
            return int(self._order[k])
        return -1

    def unique_pids(self, among=None) -> list[int]:
        """Each pid once, in the order of its first entry; with ``among``
        (a collection of ints) only those pids."""
        o = self._order
        sp = self.pid[o]
        first = np.ones(len(sp), bool)
        first[1:] = sp[1:] != sp[:-1]  # first row of each pid in sorted order (stable: earliest entry)
        rows = np.sort(o[first])
        pids = self.pid[rows]
        if among is not None:
            pids = pids[np.isin(pids, np.fromiter(among, np.int64, len(among)))]
        return pids.tolist()


_PSTREE_FIELDS = (1, 2, 3, 4)


def load_pstree(path: str | os.PathLike, f) -> PstreeTable:
    """Read ``pstree.img`` (open as ``f``, closed here) into a
    :class:`PstreeTable`, streaming: blocks of entries decoded in bulk,
    protobuf for a block the bulk decoder leaves (packed threads, unknown
    fields). BadMagic if it is not a PSTREE image; CorruptImage for damage
    or an entry lacking a required field."""
    from .reader import _entry_blocks
    from .wire import decode_flat

    cols = [array.array("I") for _ in range(4)]
    thr = array.array("I")
    counts = array.array("q")
    index = 0
    with f:
        f.seek(0)
        name = fmt.read_magic(f, path)
        if name != "PSTREE":
            raise BadMagic(path, 0, f"expected a PSTREE image, found {name}")
        for base, buf, starts, sizes in _entry_blocks(f, path, 8):
            d = decode_flat(buf, starts, sizes, _PSTREE_FIELDS, repeated=(5,), u32=(1, 2, 3, 4, 5))
            if d is not None and all(h.all() for h in d.has):
                for col, v in zip(cols, d.values):
                    col.frombytes(v.astype(np.uint32).tobytes())
                msg, val = d.repeated[0]
                thr.frombytes(val.astype(np.uint32).tobytes())
                counts.frombytes(np.bincount(msg, minlength=len(starts)).astype(np.int64).tobytes())
            else:
                mv = memoryview(buf)
                for i, (s, z) in enumerate(zip(starts.tolist(), sizes.tolist()), index):
                    e = fmt.parse_entry(pstree_pb2.pstree_entry, mv[s:s + z].tobytes(), path, base + s - 4)
                    for col, v in zip(cols, (e.pid, e.ppid, e.pgid, e.sid)):
                        col.append(v)
                    thr.extend(e.threads)
                    counts.append(len(e.threads))
            index += len(starts)
    pid, ppid, pgid, sid = (np.frombuffer(c, np.uint32) if len(c) else np.empty(0, np.uint32) for c in cols)
    cnt = np.frombuffer(counts, np.int64) if len(counts) else np.empty(0, np.int64)
    off = np.zeros(len(cnt) + 1, np.int64)
    np.cumsum(cnt, out=off[1:])
    return PstreeTable(pid, ppid, pgid, sid, np.frombuffer(thr, np.uint32) if len(thr) else np.empty(0, np.uint32),
                       off)

"""Bulk decoding of protobuf messages made of varint fields only, with numpy.

Pagemap entries (``pagemap_entry``: vaddr, compat_nr_pages, in_parent,
flags, nr_pages, pages_off, crc32) and pstree entries (``pstree_entry``:
pid, ppid, pgid, sid, threads) are small messages whose fields are all
varints (wire type 0). Millions of them, parsed one protobuf call each,
cost tens of seconds; decoded here in bulk they cost a few numpy passes
over the bytes.

The wire format (https://protobuf.dev/programming-guides/encoding/): a
message is a sequence of ``tag value`` pairs; with wire type 0 both are
varints (7 bits a byte, little-endian groups, the high bit set on every
byte but the last). :func:`decode_flat` finds every varint of a block of
messages at once (the bytes with the high bit clear end them), pairs tags
with values, and scatters the values into one column per field.

Anything it does not handle exactly as protobuf does makes it return None,
so the caller parses that block with protobuf (the reference): another
wire type (a length-delimited or packed field), a field number it was not
told about, a singular field given twice (protobuf keeps the last; we do
not guess), a varint longer than 10 bytes or overflowing 64 bits, a value
too large for a 32-bit field, a message ending inside a varint or after a
tag with no value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FlatColumns", "decode_flat", "entry_spans"]

_U32_MAX = np.uint64(0xFFFFFFFF)


@dataclass(slots=True)
class FlatColumns:
    """Fields of ``n`` messages decoded by :func:`decode_flat`.

    ``values[i]``/``has[i]``: uint64 value and presence (bool) of singular
    field ``singular[i]`` per message (0 where absent). ``repeated[j]``:
    ``(message index, value)`` arrays of repeated field ``repeated[j]``, in
    the order the values appear (messages ascending)."""

    n: int
    values: list[np.ndarray]
    has: list[np.ndarray]
    repeated: list[tuple[np.ndarray, np.ndarray]]


def entry_spans(buf, pos: int, file_base: int, file_size: int, limit: int):
    """Walk ``[u32 size][payload]`` entries in ``buf`` from ``pos``: returns
    ``(starts, sizes, next_pos, bad)``; ``starts`` are payload offsets in
    ``buf`` (int64 arrays), ``next_pos`` where the first incomplete entry
    starts. ``bad`` is None, or ``(offset in buf, size)`` of the first
    entry whose size exceeds ``limit`` or runs past ``file_size`` (the file
    offset of ``buf[0]`` is ``file_base``): the caller reports it.

    One small Python step per entry (the sizes chain: entry k+1 starts
    where entry k ends), everything else is numpy."""
    import struct

    unpack = struct.Struct("<I").unpack_from
    n = len(buf)
    stop = min(n, file_size - file_base)  # an entry must end inside both
    starts = []
    add = starts.append
    while pos + 4 <= n:
        end = pos + 4 + unpack(buf, pos)[0]
        if end > stop:
            break
        add(pos)
        pos = end
    first = np.array(starts, np.int64)
    sizes = np.empty_like(first)
    if len(first):
        sizes[:-1] = first[1:] - first[:-1] - 4
        sizes[-1] = pos - first[-1] - 4
        big = np.flatnonzero(sizes > limit)
        if len(big):
            k = int(big[0])
            return first[:k] + 4, sizes[:k], int(first[k]), (int(first[k]), int(sizes[k]))
    bad = None
    if pos + 4 <= n:
        size = unpack(buf, pos)[0]
        if size > limit or pos + 4 + size > file_size - file_base:
            bad = (pos, size)
    return first + 4, sizes, pos, bad


def decode_flat(buf, starts: np.ndarray, sizes: np.ndarray, singular: tuple[int, ...],
                repeated: tuple[int, ...] = (), u32: tuple[int, ...] = ()) -> FlatColumns | None:
    """Decode the messages at ``buf[starts[i] : starts[i] + sizes[i]]``
    (bytes-like; int64 arrays; consecutive entries as :func:`entry_spans`
    finds them, each payload right after its 4-byte size), whose fields must all be varints with
    numbers in ``singular`` (at most once per message) or ``repeated``
    (unpacked). Fields in ``u32`` are 32-bit: a value past 2**32 - 1 is not
    decoded here. None when the block needs protobuf's own parser (see the
    module docstring); the caller then parses it message by message."""
    n = len(starts)
    b = np.frombuffer(buf, np.uint8)
    total = int(sizes.sum()) if n else 0
    if total == 0:
        empty = (np.empty(0, np.int64), np.empty(0, np.uint64))
        return FlatColumns(n, [np.zeros(n, np.uint64) for _ in singular], [np.zeros(n, bool) for _ in singular],
                           [empty for _ in repeated])
    nonempty = sizes > 0
    # Every message must end on a varint's last byte.
    if (b[(starts + sizes - 1)[nonempty]] & 0x80).any():
        return None
    # Payload bytes, concatenated: the block minus the 4-byte size fields
    # (entries are contiguous: each size field directly precedes its payload).
    keep = np.zeros(len(b), bool)
    keep[int(starts[0]) - 4:int(starts[-1] + sizes[-1])] = True
    for d in range(1, 5):
        keep[starts - d] = False
    pb = b[keep]
    del keep
    last = pb < 0x80  # the last byte of each varint
    vend = np.flatnonzero(last)
    vstart = np.empty_like(vend)
    vstart[0] = 0
    vstart[1:] = vend[:-1] + 1
    lengths = vend - vstart + 1
    longest = int(lengths.max())
    if longest > 10:
        return None
    # Value of each varint: byte j contributes (byte & 0x7f) << 7 * j; few
    # varints are long, so each further byte is gathered for those only.
    vals = (pb[vstart] & 0x7F).astype(np.uint64)
    for j in range(1, longest):
        m = np.flatnonzero(lengths > j)
        vals[m] |= (pb[vstart[m] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    # 10-byte varints: only bit 63 may come from the last byte.
    if longest == 10 and (pb[vend[lengths == 10]] > 1).any():
        return None
    # Varints per message (its payload's last bytes), then each varint's
    # message and rank inside it: tags at even ranks.
    ends = np.searchsorted(vend, np.cumsum(sizes), side="left")  # varints ending before each message's end
    count = np.diff(ends, prepend=0)
    del pb, last
    if (count & 1).any():
        return None  # a tag without its value
    # Every message has an even number of varints: tags are the even ones.
    msg = np.repeat(np.arange(n, dtype=np.int64), count // 2)
    if int(lengths[0::2].max()) > 5:
        return None  # protobuf reads tags of at most 5 bytes
    tags = vals[0::2]
    vals = vals[1::2]
    del count, lengths
    if ((tags & np.uint64(7)) != 0).any():
        return None  # another wire type
    field = tags >> np.uint64(3)
    del tags
    # Field number -> column: singular fields 0..k-1, repeated ones k..,
    # anything else -1 (numbers past the table are unknown too).
    nums = (*singular, *repeated)
    table = np.full(max(nums) + 2, -1, np.int64)
    table[list(nums)] = np.arange(len(nums))
    col = table[np.minimum(field, np.uint64(len(table) - 1)).astype(np.int64)]
    del field
    if (col < 0).any():
        return None  # a field number we were not told about
    k = len(singular)
    for num in u32:
        c = nums.index(num)
        if (vals[col == c] > _U32_MAX).any():
            return None
    sing = col < k
    key = msg[sing] * k + col[sing]
    if len(key) and int(np.bincount(key, minlength=n * k).max()) > 1:
        return None  # a singular field given twice in one message
    flat = np.zeros(n * k, np.uint64)
    flat[key] = vals[sing]
    present = np.zeros(n * k, bool)
    present[key] = True
    flat = flat.reshape(n, k)
    present = present.reshape(n, k)
    values = [flat[:, i] for i in range(k)]
    has = [present[:, i] for i in range(k)]
    reps = []
    for j in range(len(repeated)):
        m = col == k + j
        reps.append((msg[m], vals[m]))
    return FlatColumns(n, values, has, reps)

"""Large synthetic checkpoints for memory and hostile-size tests, written
with numpy (no per-entry Python): a pagemap of N one-page PE_PRESENT
entries over a sparse raw ``pages-1.img``, N * 4 KiB long but holding no
data blocks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dumper.image import format as fmt
from dumper.image.pb import inventory_pb2, pagemap_pb2

PS = 4096
# vaddr = BASE + 2 * i pages: gaps keep entries from merging; every vaddr
# needs 36..42 bits, so its varint is always 6 bytes.
BASE = 1 << 36


def _pagemap_body(first: int, n: int) -> bytes:
    """Entries ``first`` to ``first + n`` of ``{vaddr, compat_nr_pages=1, flags=PE_PRESENT, nr_pages=1}``,
    each framed by its u32 size: 17 bytes an entry."""
    vaddr = BASE + np.arange(first, first + n, dtype=np.uint64) * np.uint64(2 * PS)
    rec = np.empty((n, 17), dtype=np.uint8)
    rec[:, 0:4] = np.frombuffer(np.uint32(13).tobytes(), np.uint8)
    rec[:, 4] = 0x08
    for k in range(5):
        rec[:, 5 + k] = ((vaddr >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | 0x80
    rec[:, 10] = (vaddr >> np.uint64(35)).astype(np.uint8)
    rec[:, 11:17] = np.array([0x10, 0x01, 0x20, fmt.PE_PRESENT, 0x28, 0x01], np.uint8)
    return rec.tobytes()


def write_big_checkpoint(d: Path, n: int, *, pid: int = 1000) -> Path:
    """A CRIU-style raw set in ``d`` (created): inventory, ``pagemap-PID.img``
    with ``n`` entries, a sparse ``pages-1.img`` of ``n`` pages; no mm image."""
    d.mkdir(mode=0o700)
    inv = inventory_pb2.inventory_entry(img_version=fmt.CRTOOLS_IMAGES_V1_1, fdinfo_per_id=True)
    (d / fmt.INVENTORY_NAME).write_bytes(fmt.encode_image("INVENTORY", [inv]))
    with open(d / fmt.pagemap_name(pid), "wb") as f:
        f.write(fmt.encode_image("PAGEMAP", [pagemap_pb2.pagemap_head(pages_id=1)]))
        step = 1 << 20
        for s in range(0, n, step):
            f.write(_pagemap_body(s, min(step, n - s)))
    with open(d / fmt.pages_name(1), "wb") as f:
        f.truncate(n * PS)
    return d / fmt.pagemap_name(pid)


def _varint_cols(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` (uint64) as varints of exactly ``width`` bytes each (the
    caller keeps every value in [2**(7*(width-1)), 2**(7*width)))."""
    out = np.empty((len(values), width), np.uint8)
    for k in range(width):
        out[:, k] = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        if k < width - 1:
            out[:, k] |= 0x80
    return out


def _pb_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def big_mm_entry(n: int, *, with_paths: bool = True) -> bytes:
    """The payload of an ``mm_entry`` with ``n`` one-page VMAs at
    BASE + 2 * i pages (every start/end a 6-byte varint): anonymous private
    ones and, every other one with ``with_paths``, private file mappings
    naming ``/usr/lib/libsynthetic.so`` with device, inode and size."""
    head = b"".join(_pb_varint(f << 3) + _pb_varint(v) for f, v in
                    ((1, BASE), (2, BASE), (3, BASE), (4, BASE), (5, BASE), (6, BASE), (7, BASE),
                     (8, 0), (9, 0), (10, 0), (11, 0), (12, 0)))
    start = BASE + np.arange(n, dtype=np.uint64) * np.uint64(2 * PS)
    s6 = _varint_cols(start, 6)
    e6 = _varint_cols(start + np.uint64(PS), 6)
    # pgoff 0, shmid 0, prot rw, flags MAP_PRIVATE|MAP_ANONYMOUS, status, fd -1
    anon = (bytes([0x20, 0x00, 0x28, 0x03, 0x30, 0x22, 0x38]) + _pb_varint(fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_PRIVATE)
            + bytes([0x40, 0x01]))
    path = b"/usr/lib/libsynthetic.so"
    filev = (bytes([0x20, 0x00, 0x28, 0x01, 0x30, 0x02]) + _pb_varint(7 << 3)
             + _pb_varint(fmt.VMA_AREA_REGULAR | fmt.VMA_FILE_PRIVATE) + bytes([0x40, 0x01])
             + _pb_varint(32 << 3 | 2) + bytes([len(path)]) + path
             + _pb_varint(33 << 3) + b"\x08" + _pb_varint(34 << 3) + b"\x01" + _pb_varint(35 << 3) + _pb_varint(123456)
             + _pb_varint(41 << 3) + _pb_varint(1 << 20))
    parts = []
    for i in range(0, n, 1 << 16):
        k = min(1 << 16, n - i)
        rows = []
        for j in range(k):
            tail = filev if with_paths and (i + j) % 2 else anon
            body = b"\x08" + s6[i + j].tobytes() + b"\x10" + e6[i + j].tobytes() + b"\x18\x00" + tail
            rows.append(b"\x72" + _pb_varint(len(body)) + body)
        parts.append(b"".join(rows))
    return head + b"".join(parts)


def write_big_mm_checkpoint(d: Path, n_vmas: int, *, pid: int = 1000) -> Path:
    """A dumper-like raw set in ``d``: inventory naming ``pid``, an
    ``mm-PID.img`` of ``n_vmas`` VMAs (:func:`big_mm_entry`), a pagemap
    with one PE_PRESENT page in the last VMA, its one-page pages file."""
    d.mkdir(mode=0o700)
    inv = inventory_pb2.inventory_entry(img_version=fmt.CRTOOLS_IMAGES_V1_1, fdinfo_per_id=True, pids=[pid],
                                        root_pid=pid, page_size=PS)
    (d / fmt.INVENTORY_NAME).write_bytes(fmt.encode_image("INVENTORY", [inv]))
    payload = big_mm_entry(n_vmas)
    with open(d / fmt.mm_name(pid), "wb") as f:
        f.write(fmt._magic_words("MM") + fmt.U32.pack(len(payload)) + payload)
    last = BASE + (n_vmas - 1) * 2 * PS
    (d / fmt.pagemap_name(pid)).write_bytes(fmt.encode_image("PAGEMAP", [
        pagemap_pb2.pagemap_head(pages_id=1),
        pagemap_pb2.pagemap_entry(vaddr=last, compat_nr_pages=1, flags=fmt.PE_PRESENT, nr_pages=1)]))
    (d / fmt.pages_name(1)).write_bytes(b"\x5a" * PS)
    return d / fmt.mm_name(pid)


def write_big_pstree_checkpoint(d: Path, n: int, *, pid: int = 1 << 14) -> Path:
    """A CRIU-style raw set in ``d``: a ``pstree.img`` of ``n`` processes
    (pids from ``pid`` up, 3-byte varints, each with itself as its one
    thread), of which only the first has a pagemap (one page) and pages."""
    assert pid + n < 1 << 21
    d.mkdir(mode=0o700)
    inv = inventory_pb2.inventory_entry(img_version=fmt.CRTOOLS_IMAGES_V1_1, fdinfo_per_id=True)
    (d / fmt.INVENTORY_NAME).write_bytes(fmt.encode_image("INVENTORY", [inv]))
    pids = pid + np.arange(n, dtype=np.uint64)
    p3 = _varint_cols(pids, 3)
    rec = np.empty((n, 4 + 20), np.uint8)
    rec[:, 0:4] = np.frombuffer(np.uint32(20).tobytes(), np.uint8)
    rec[:, 4] = 0x08
    rec[:, 5:8] = p3
    rec[:, 8] = 0x10
    rec[:, 9:12] = _varint_cols(np.full(n, pid, np.uint64), 3)
    rec[:, 12] = 0x18
    rec[:, 13:16] = p3
    rec[:, 16] = 0x20
    rec[:, 17:20] = p3
    rec[:, 20] = 0x28
    rec[:, 21:24] = p3
    with open(d / "pstree.img", "wb") as f:
        f.write(fmt._magic_words("PSTREE"))
        f.write(rec.tobytes())
    (d / fmt.pagemap_name(pid)).write_bytes(fmt.encode_image("PAGEMAP", [
        pagemap_pb2.pagemap_head(pages_id=1),
        pagemap_pb2.pagemap_entry(vaddr=BASE, compat_nr_pages=1, flags=fmt.PE_PRESENT, nr_pages=1)]))
    (d / fmt.pages_name(1)).write_bytes(b"\x5a" * PS)
    return d / "pstree.img"

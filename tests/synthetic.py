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

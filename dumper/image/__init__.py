"""Checkpoint image files: the CRIU-compatible format, writing and reading.

- :mod:`.format` — magics, framing, file names, flags (the frozen format);
- :mod:`.writer` — :class:`CheckpointWriter` (atomic directory) and
  :class:`PagesWriter` (pagemap + raw or zstd pages);
- :mod:`.reader` — :func:`read_image`, :func:`load_pagemap`,
  :class:`PagesReader`, :func:`iter_present`;
- :mod:`.pb` — generated protobuf modules (``python -m dumper.image.gen``).
"""

from .reader import PagemapEntry, PagesReader, iter_present, load_inventory, load_pagemap, open_pages, read_image
from .writer import CheckpointWriter, PagesWriter, PagesWriterStats, vma_entry_from

__all__ = [
    "CheckpointWriter",
    "PagesWriter",
    "PagesWriterStats",
    "vma_entry_from",
    "PagemapEntry",
    "PagesReader",
    "iter_present",
    "load_inventory",
    "load_pagemap",
    "open_pages",
    "read_image",
]

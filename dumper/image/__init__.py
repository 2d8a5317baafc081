"""Checkpoint image files: the CRIU-compatible format, writing and reading.

- :mod:`.format` — magics, framing, file names, flags (the frozen format);
- :mod:`.writer` — :class:`CheckpointWriter` (atomic directory) and
  :class:`PagesWriter` (pagemap + raw or zstd pages);
- :mod:`.reader` — :func:`read_image`, :func:`load_pagemap`,
  :class:`PagesReader`, :func:`iter_present`;
- :mod:`.rawpages` — CRIU's raw ``pages-N.img`` and pagemaps from any
  checkpoint (chains flattened or kept), for export and restore;
- :mod:`.criuset` — images with CRIU's fields only, and what a set
  ``criu restore`` takes must hold;
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

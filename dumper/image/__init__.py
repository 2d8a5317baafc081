"""Checkpoint image files: the CRIU-compatible format, writing and reading.

- :mod:`.format` — magics, framing, file names, flags (the frozen format);
- :mod:`.writer` — :class:`CheckpointWriter` (atomic directory) and
  :class:`PagesWriter` (pagemap + raw or zstd pages);
- :mod:`.reader` — :func:`read_image`, :func:`load_pagemap`,
  :class:`PagesReader`, :func:`iter_present`;
- :mod:`.pb` — generated protobuf modules (``python -m dumper.image.gen``).
"""

from .. import lazy_exports

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

# Imported on first use: reading an inventory need not load the writer,
# nor writing load the reader.
__getattr__ = lazy_exports(__name__, {
    "CheckpointWriter": "writer", "PagesWriter": "writer", "PagesWriterStats": "writer",
    "vma_entry_from": "writer", "PagemapEntry": "reader", "PagesReader": "reader",
    "iter_present": "reader", "load_inventory": "reader", "load_pagemap": "reader",
    "open_pages": "reader", "read_image": "reader",
})

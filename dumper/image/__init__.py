"""Checkpoint image files: the CRIU-compatible format, writing and reading.

- :mod:`.format` — magics, framing, file names, flags (the frozen format);
- :mod:`.writer` — :class:`CheckpointWriter` (atomic directory) and
  :class:`PagesWriter` (pagemap + raw or zstd pages);
- :mod:`.reader` — :func:`read_image`, :func:`load_pagemap`,
  :class:`PagesReader`, :func:`iter_present`;
- :mod:`.pb` — generated protobuf modules (``python -m dumper.image.gen``).
"""

from importlib import import_module

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

# Imported on first use (PEP 562): reading an inventory need not load the
# writer, nor writing load the reader.
_WHERE = {
    "CheckpointWriter": "writer", "PagesWriter": "writer", "PagesWriterStats": "writer",
    "vma_entry_from": "writer", "PagemapEntry": "reader", "PagesReader": "reader",
    "iter_present": "reader", "load_inventory": "reader", "load_pagemap": "reader",
    "open_pages": "reader", "read_image": "reader",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

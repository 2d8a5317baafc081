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

# Loaded when first used: a reader (show, mems...) must not pay for the
# writer's imports, nor the other way round.
_LAZY = {
    "CheckpointWriter": "writer", "PagesWriter": "writer", "PagesWriterStats": "writer", "vma_entry_from": "writer",
    "PagemapEntry": "reader", "PagesReader": "reader", "iter_present": "reader", "load_inventory": "reader",
    "load_pagemap": "reader", "open_pages": "reader", "read_image": "reader",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value

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

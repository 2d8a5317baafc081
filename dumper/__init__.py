"""dumper: CRIU-style checkpoints of Linux process memory, built on PAGEMAP_SCAN."""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__", "open_checkpoint", "Checkpoint", *_errors_all]


def __getattr__(name: str):
    # Lazy: importing dumper (or dumper.errors) must not load numpy/zstd/protobuf.
    if name in ("open_checkpoint", "Checkpoint"):
        from .image import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

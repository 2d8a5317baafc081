"""dumper: CRIU-style checkpoints of Linux process memory, built on PAGEMAP_SCAN."""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__", *_errors_all]

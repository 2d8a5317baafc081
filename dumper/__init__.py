"""dumper: CRIU-style checkpoints of Linux process memory, built on PAGEMAP_SCAN."""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__", "open_checkpoint", "Checkpoint", *_errors_all]


def lazy_exports(package: str, where: dict[str, str]):
    """A module ``__getattr__`` (PEP 562) for ``package``: ``name`` is
    imported from its submodule ``where[name]`` on first use, then kept.

    So that importing a package (``dumper``, ``dumper.scan``...) loads no
    more than the names a command uses: numpy, zstd and protobuf cost most
    of a short command's start-up.
    """

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib
        import sys

        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__getattr__ = lazy_exports(__name__, {"open_checkpoint": "image.checkpoint", "Checkpoint": "image.checkpoint"})

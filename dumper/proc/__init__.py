"""Reading a process through /proc: identity and state, VMAs, pagemap, mem.

Files are read as bytes and decoded late. ``OSError`` is translated here into
the :mod:`dumper.errors` tree, once, with the cause attached.
"""

from .maps import Vma, parse_maps
from .process import Process

__all__ = ["Process", "Vma", "parse_maps"]

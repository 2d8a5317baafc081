"""Argument types shared by several subcommands."""

from __future__ import annotations

import argparse

from ..text import plural  # noqa: F401  (re-exported for the subcommands)


def _integer(text: str, *, base: int, what: str, minimum: int) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r} (must be >= {minimum})")
    return value


def address(text: str) -> int:
    """An address: hex with 0x, or decimal."""
    return _integer(text, base=0, what="an address (use 0x... or decimal)", minimum=0)


def pid(text: str) -> int:
    return _integer(text, base=10, what="a pid", minimum=1)


def non_negative(text: str) -> int:
    return _integer(text, base=0, what="a number", minimum=0)


def positive(text: str) -> int:
    return _integer(text, base=10, what="a number", minimum=1)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"



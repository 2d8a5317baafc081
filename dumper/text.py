"""Words for messages, one way for every layer."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 region"``, ``"2 regions"``, ``"0 pages"`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else many or word + 's'}"

"""Page categories and the four scan masks.

Category names are the kernel's ``PAGE_IS_*`` names without the prefix
(include/uapi/linux/fs.h, Linux 6.7+).

How the four masks map onto ``struct pm_scan_arg``
-------------------------------------------------

The kernel matches a page whose categories are ``cats`` when, with
``c = cats ^ category_inverted``::

    (c & category_mask) == category_mask
    and (category_anyof_mask == 0 or c & category_anyof_mask)

(fs/proc/task_mmu.c ``pagemap_scan_is_interesting_page``). The interface
proposed on linux-mm with CRIU in mind spoke of four masks instead; they
translate losslessly:

=============  ==========================================================
``required``   ``category_mask |= required`` (bit must be 1)
``excluded``   ``category_mask |= excluded; category_inverted |= excluded``
               (bit must be 0)
``anyof``      ``category_anyof_mask = anyof`` (at least one bit is 1)
``returned``   ``return_mask = returned``
=============  ==========================================================

The translation is exact only when ``excluded`` shares no bit with the
other two: a bit both required and excluded becomes "must be 0" in the
kernel's encoding, and the kernel tests ``anyof`` on the *inverted*
categories, so an excluded bit in ``anyof`` would be satisfied by its
absence. :class:`ScanMasks` refuses both combinations.

Reported categories are ``cats & return_mask`` (not inverted). Contiguous
matching pages with identical reported categories form one ``page_region``;
a smaller ``returned`` gives fewer, larger regions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from ..errors import ScanError
from ..kernel import fs

__all__ = ["Category", "ScanMasks", "KernelMasks", "parse_categories", "ALL_CATEGORIES"]


class Category(enum.IntFlag):
    """One bit per ``PAGE_IS_*`` category."""

    WPALLOWED = fs.PAGE_IS_WPALLOWED
    WRITTEN = fs.PAGE_IS_WRITTEN
    FILE = fs.PAGE_IS_FILE
    PRESENT = fs.PAGE_IS_PRESENT
    SWAPPED = fs.PAGE_IS_SWAPPED
    PFNZERO = fs.PAGE_IS_PFNZERO
    HUGE = fs.PAGE_IS_HUGE
    SOFT_DIRTY = fs.PAGE_IS_SOFT_DIRTY
    GUARD = fs.PAGE_IS_GUARD

    @classmethod
    def names(cls, bits: int) -> list[str]:
        """Names of the bits set in ``bits``, low bit first."""
        return [c.name for c in cls if bits & c]  # type: ignore[misc]


ALL_CATEGORIES = Category(sum(Category))


def parse_categories(text: str | Iterable[str] | int | None) -> Category:
    """``"PRESENT,SWAPPED"`` (or an iterable of names, or an int) -> Category.

    Names are case-insensitive, the ``PAGE_IS_`` prefix is optional.
    Raises :class:`ScanError` for an unknown name.
    """
    if text is None:
        return Category(0)
    if isinstance(text, int):
        if text & ~int(ALL_CATEGORIES):
            raise ScanError(f"unknown category bits {text & ~int(ALL_CATEGORIES):#x}")
        return Category(text)
    names = text.split(",") if isinstance(text, str) else list(text)
    out = Category(0)
    for raw in names:
        name = raw.strip().upper().removeprefix("PAGE_IS_")
        if not name:
            continue
        try:
            out |= Category[name]
        except KeyError:
            valid = ", ".join(c.name for c in Category)  # type: ignore[misc]
            raise ScanError(f"unknown page category {raw.strip()!r} (valid: {valid})") from None
    return out


class KernelMasks(NamedTuple):
    """The four masks as ``struct pm_scan_arg`` spells them."""

    category_mask: int
    category_inverted: int
    category_anyof_mask: int
    return_mask: int

    def match(self, cats: int) -> bool:
        """The kernel's matching rule for one page's categories."""
        c = cats ^ self.category_inverted
        if c & self.category_mask != self.category_mask:
            return False
        return not self.category_anyof_mask or bool(c & self.category_anyof_mask)


@dataclass(frozen=True, slots=True)
class ScanMasks:
    """What to select and what to report (see the module docstring)."""

    required: Category = Category(0)
    anyof: Category = Category(0)
    excluded: Category = Category(0)
    returned: Category = ALL_CATEGORIES

    def __post_init__(self) -> None:
        for name in ("required", "anyof", "excluded", "returned"):
            object.__setattr__(self, name, parse_categories(getattr(self, name)))
        for other in ("required", "anyof"):
            both = getattr(self, other) & self.excluded
            if both:
                raise ScanError(
                    f"a category cannot be both {other} and excluded: " + ",".join(Category.names(both))
                )

    @property
    def used(self) -> Category:
        """Every category the scan has to compute."""
        return self.required | self.anyof | self.excluded | self.returned

    def to_kernel(self) -> KernelMasks:
        return KernelMasks(
            category_mask=int(self.required | self.excluded),
            category_inverted=int(self.excluded),
            category_anyof_mask=int(self.anyof),
            return_mask=int(self.returned),
        )

    def matches(self, cats: int) -> bool:
        return self.to_kernel().match(cats)

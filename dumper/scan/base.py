"""What every scanner backend answers, and the loop that drives them.

A backend implements one kernel call's worth of work, :meth:`Backend.scan_once`,
with exactly the semantics of one ``ioctl(PAGEMAP_SCAN)`` (fs/proc/task_mmu.c
``do_pagemap_scan``): at most ``vec_len`` regions, at most ``max_pages`` pages,
and a ``walk_end`` telling where to resume. :func:`scan_range` repeats it
until the range is done, so memory stays bounded by ``vec_len``.
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, NamedTuple, overload

import numpy as np

from ..errors import ScanError, UnsupportedCategory
from ..kernel.libc import PAGE_SIZE
from .categories import Category, KernelMasks, ScanMasks

if TYPE_CHECKING:
    from ..proc.maps import Vma

__all__ = ["PageRegion", "ScanResult", "Backend", "scan_range", "REGION_DTYPE"]

# One row per page_region: start, end (exclusive, bytes), categories.
REGION_DTYPE = np.dtype([("start", "<u8"), ("end", "<u8"), ("categories", "<u8")])


class PageRegion(NamedTuple):
    """``[start, end)`` in bytes, with the reported categories."""

    start: int
    end: int
    categories: Category

    @property
    def nr_pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


@dataclass(slots=True, eq=False)
class ScanResult(Sequence[PageRegion]):
    """The regions found, a sequence of :class:`PageRegion` in address order
    (``len``, indexing, negative indexes; a slice gives a list), backed by
    ``array`` (numpy, REGION_DTYPE), and where the walk ended.

    ``walk_end`` is ``end`` when the whole range was walked, else the address
    of the first matching page not reported (``max_pages`` reached).
    """

    backend: str
    start: int
    end: int
    walk_end: int
    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, i: int) -> PageRegion: ...

    @overload
    def __getitem__(self, i: slice) -> list[PageRegion]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [PageRegion(s, e, Category(c)) for s, e, c in self.array[i].tolist()]
        s, e, c = self.array[operator.index(i)].tolist()  # IndexError past either end
        return PageRegion(s, e, Category(c))

    def __iter__(self) -> Iterator[PageRegion]:
        for start, end, cats in self.array.tolist():
            yield PageRegion(start, end, Category(cats))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScanResult):
            return NotImplemented
        return ((self.backend, self.start, self.end, self.walk_end) ==
                (other.backend, other.start, other.end, other.walk_end)
                and self.array.tolist() == other.array.tolist())

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    @property
    def regions(self) -> list[PageRegion]:
        return list(self)

    @property
    def nr_pages(self) -> int:
        if not len(self.array):
            return 0
        return int((self.array["end"] - self.array["start"]).sum()) // PAGE_SIZE

    def to_json(self, pid: int) -> dict:
        return {
            "pid": pid,
            "backend": self.backend,
            "walk_end": self.walk_end,
            "regions": [
                {"start": r.start, "end": r.end, "categories": Category.names(r.categories)}
                for r in self
            ],
        }


class Backend(abc.ABC):
    """One way of answering PAGEMAP_SCAN questions about one process."""

    name: str = "?"
    #: Categories this backend can compute on the running kernel.
    supported: Category = Category(0)

    def check_masks(self, masks: ScanMasks) -> None:
        """Raise UnsupportedCategory if ``masks`` uses a bit we cannot compute."""
        missing = masks.used & ~self.supported
        if missing:
            raise UnsupportedCategory(
                f"the {self.name} backend cannot compute {','.join(Category.names(missing))} "
                f"on this kernel: {self.why_unsupported(missing)}"
            )

    def why_unsupported(self, missing: Category) -> str:
        return "not available"

    @abc.abstractmethod
    def scan_once(
        self, start: int, end: int, masks: KernelMasks, vec_len: int, max_pages: int
    ) -> tuple[np.ndarray, int]:
        """One PAGEMAP_SCAN call: (regions as REGION_DTYPE array, walk_end).

        ``start`` page-aligned, ``end`` rounded up to a page; ``max_pages`` 0
        means unlimited; ``vec_len`` >= 1.
        """

    def prepare(self, vmas: Sequence[Vma] | None = None) -> None:
        """Called once before each full scan (re-reads what may have changed).

        ``vmas``: VMAs the caller just read from smaps (target frozen). The
        pagemap reader then reads no smaps itself and reads entries only
        inside these, so a subset skips VMAs whose pages do not matter
        (regions outside them are not reported); the ioctl walks the
        kernel's own VMA list and ignores them.
        """

    def finish(self) -> None:
        """Called once after each full scan, also when it failed: drops what
        :meth:`prepare` and the scan kept (the target may change from now)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def validate_range(start: int, end: int) -> tuple[int, int]:
    """Check a scan range as the kernel does; returns (start, end rounded up)."""
    if start < 0 or end < 0:
        raise ScanError(f"negative address in range [{start:#x}, {end:#x})")
    if start % PAGE_SIZE:
        raise ScanError(f"start {start:#x} is not page aligned ({PAGE_SIZE} bytes)")
    if end < start:
        raise ScanError(f"end {end:#x} is below start {start:#x}")
    if end >= 1 << 64:
        raise ScanError(f"end {end:#x} is outside the 64-bit address space")
    return start, -(-end // PAGE_SIZE) * PAGE_SIZE


def scan_range(
    backend: Backend,
    start: int,
    end: int,
    masks: ScanMasks,
    *,
    max_pages: int = 0,
    vec_len: int = 512,
    vmas: Sequence[Vma] | None = None,
) -> ScanResult:
    """Scan ``[start, end)`` completely (or up to ``max_pages`` pages).

    Each backend call returns at most ``vec_len`` regions; the walk resumes
    from ``walk_end``. Resuming from ``max(walk_end, last region end)``
    protects against a stale ``walk_end`` the kernel can report when one call
    spans more than its 512-entry bounce buffer (measured on 6.18).
    ``vmas``: see :meth:`Backend.prepare` (the pagemap reader needs them).
    Regions never straddle two calls: a call stops at the first page that
    would need a new region, so concatenation is the kernel's own answer.
    """
    backend.check_masks(masks)
    start, end = validate_range(start, end)
    if max_pages < 0:
        raise ScanError("max_pages must be >= 0")
    kmasks = masks.to_kernel()
    backend.prepare(vmas)
    parts: list[np.ndarray] = []
    pos, left, walk_end = start, max_pages, end
    try:
        while pos < end:
            arr, w_end = backend.scan_once(pos, end, kmasks, vec_len, left)
            if len(arr):
                parts.append(arr)
                w_end = max(w_end, int(arr["end"][-1]))
                if max_pages:
                    left -= int((arr["end"] - arr["start"]).sum()) // PAGE_SIZE
            if w_end >= end:
                break
            if max_pages and left <= 0:
                walk_end = w_end
                break
            if w_end <= pos:
                raise ScanError(f"{backend.name} scan made no progress at {pos:#x}")
            pos = w_end
    finally:
        backend.finish()
    array = np.concatenate(parts) if parts else np.empty(0, REGION_DTYPE)
    return ScanResult(backend.name, start, end, walk_end, array)

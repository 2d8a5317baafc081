"""Write trackers: which pages changed since the parent dump. One object per kind.

* :class:`NoTracker` — every dump is a full one;
* :class:`SoftDirtyTracker` — clear_refs "4" resets, PAGE_IS_SOFT_DIRTY (or
  pagemap bit 55) reports (Documentation/admin-guide/mm/soft-dirty.rst);
  new VMAs are born dirty, so every VMA is tracked;
* :class:`UffdWpTracker` — a WP_ASYNC userfaultfd armed inside the target
  (:mod:`dumper.track.uffd`), PAGE_IS_WRITTEN reports, a PAGEMAP_SCAN
  WP_MATCHING pass resets; only registered VMAs are tracked.

The orchestrator calls, per process, in this order: :meth:`Tracker.check_parent`
(before freezing), :meth:`~Tracker.prepare` (frozen, before the scan:
injected syscalls must come before pages are read, the thread passes through
user mode and the kernel may rewrite its rseq area), then the scan with
:attr:`~Tracker.returned` categories, :meth:`~Tracker.select` to split the
scanned runs into pages to copy and pages the parent holds, and
:meth:`~Tracker.reset` after the copy (still frozen; before it for a
pre-dump, which copies while the target runs).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DumpError, UnsupportedKernel
from ..kernel.libc import PAGE_SIZE
from ..scan import Category
from ..scan.features import probe_scan_categories, probe_soft_dirty, probe_uffd_wp_async
from ..track import state as tracking_state
from . import intervals as iv

__all__ = ["TRACKERS", "Tracker", "NoTracker", "SoftDirtyTracker", "UffdWpTracker", "make_tracker", "pick_tracker"]

TRACKERS = ("auto", "uffd-wp", "soft-dirty", "none")


def pick_tracker(requested: str) -> str:
    """The write tracker to use: ``requested``, or for "auto" what works here.

    Raises DumpError for an unknown name, UnsupportedKernel naming what is
    missing and what to do.
    """
    if requested not in TRACKERS:
        raise DumpError(f"unknown tracker {requested!r} (choose from {', '.join(TRACKERS)})")
    if requested == "none":
        return "none"
    uffd_ok = bool(probe_scan_categories()) and probe_uffd_wp_async()
    if requested == "auto":
        if uffd_ok:
            return "uffd-wp"
        if probe_soft_dirty():
            return "soft-dirty"
        raise UnsupportedKernel(
            "write tracking",
            "neither userfaultfd WP_ASYNC with PAGEMAP_SCAN (Linux 6.7+) nor soft-dirty "
            "(CONFIG_MEM_SOFT_DIRTY) works here (see `dumper check`); dump without "
            "--track-mem/--parent: every dump is then a full one")
    if requested == "uffd-wp" and not uffd_ok:
        raise UnsupportedKernel("uffd-wp tracking", "needs userfaultfd WP_ASYNC and PAGEMAP_SCAN (Linux 6.7)")
    if requested == "soft-dirty" and not probe_soft_dirty():
        raise UnsupportedKernel("soft-dirty tracking", "the kernel has no working soft-dirty bits "
                                "(CONFIG_MEM_SOFT_DIRTY, x86_64/ppc64/s390 only)")
    return requested


class Tracker:
    """What every tracker answers; the base class is "no tracking".

    ``state`` is the recorded state of the process's last reset
    (:mod:`dumper.track.state`), None if it was never tracked.
    """

    name = "none"
    changed = Category(0)  # category meaning "written since the last reset"

    def __init__(self, pid: int, start_time: int, dest: str = "") -> None:
        self.pid = pid
        self.start_time = start_time
        self._dest = os.path.abspath(dest) if dest else ""
        self.state = tracking_state.load(pid, start_time) if self.name != "none" else None
        self.tracking_id = tracking_state.new_id() if self.name != "none" else ""

    @property
    def returned(self) -> Category:
        """Categories the scan must report for :meth:`select`."""
        return Category(0)

    def check_parent(self, parent_inv) -> str | None:
        """Why the parent cannot serve as the base of an incremental dump
        (a note for the user), or None when it can."""
        last = self.state
        if last is None:
            return (f"pid {self.pid} has no write tracking armed by dumper any more (removed by "
                    "`dumper untrack`, or never armed): full dump")
        if not last.armed:
            return f"the write tracking of pid {self.pid} was being armed by a dump that did not finish: full dump"
        if parent_inv.tracking_id != last.tracking_id:
            return ("the parent is not the checkpoint that last reset write tracking "
                    f"(that is {last.checkpoint}): full dump")
        if parent_inv.tracker != self.name:
            return f"the parent was tracked with {parent_inv.tracker or 'nothing'}, not {self.name}: full dump"
        return None

    arms = True  # prepare() arms something: the session builds its range list (64,000 VMAs: ms frozen)

    def prepare(self, tracer, pid: int, vmas: list, want: list[tuple[int, int]], parent_inv) -> None:
        """Frozen, before the scan: arm or extend tracking for ``want`` ranges."""

    def tracked(self) -> tuple[np.ndarray, np.ndarray]:
        """The interval set whose changes the tracker knows since the parent."""
        return iv.EMPTY

    def reset(self, tracer, pid: int, dest: str, *, record: bool = True) -> list[str]:
        """Start the next interval; ``record`` it as this checkpoint's (the
        state file a later ``--parent`` checks). Returns notes for the user."""
        return []

    def disarm(self, tracer, pid: int) -> None:
        """Remove what this session armed in the target (nothing for most kinds)."""

    def known_fd(self, pid: int) -> int | None:
        """A descriptor dumper put into the target (the uffd-wp tracker's
        userfaultfd), not part of the program's own files; None if none."""
        return None

    preexisting = False  # tracking was armed before this session (an earlier dump's)

    def inventory(self, inv) -> None:
        """Record what was armed for the next dump in the checkpoint's
        inventory ("none" when nothing was: a --pre-copy dump removes its
        tracking unless --track-mem)."""
        inv.tracker = self.name if self.recorded else "none"
        if self.recorded and self.tracking_id:
            inv.tracking_id = self.tracking_id

    recorded = False  # a reset was recorded as this checkpoint's

    def _save_state(self, dest: str, uffd_fd: int | None, uffd_ino: int | None = None) -> None:
        # Recorded before the reset: should the dump fail after it, no
        # checkpoint carries the new id and no --parent can miss pages.
        try:
            tracking_state.save(self.pid, self.start_time, tracking_state.TrackingState(
                self.tracking_id, self.name, os.path.abspath(dest), uffd_fd, uffd_ino))
        except OSError as err:
            raise DumpError(f"cannot record the tracking state in {tracking_state.state_dir()}: "
                            f"{err.strerror}") from err
        self.recorded = True


class NoTracker(Tracker):
    arms = False

    def check_parent(self, parent_inv) -> str | None:
        return "no write tracking: full dump"


class SoftDirtyTracker(Tracker):
    name = "soft-dirty"
    changed = Category.SOFT_DIRTY

    def __init__(self, pid: int, start_time: int, dest: str = "") -> None:
        super().__init__(pid, start_time, dest)
        self._reset_done = False
        self._tracked = iv.EMPTY

    @property
    def returned(self) -> Category:
        return Category.SOFT_DIRTY

    def prepare(self, tracer, pid, vmas, want, parent_inv) -> None:
        self.preexisting = self.state is not None and not self._reset_done
        # New VMAs are born VM_SOFTDIRTY (entirely dirty): every VMA is tracked.
        has_base = self._reset_done or parent_inv is not None
        self._tracked = iv.merge(*iv.from_pairs(want)) if has_base else iv.EMPTY

    def tracked(self):
        return self._tracked

    def reset(self, tracer, pid, dest, *, record: bool = True) -> list[str]:
        if record:
            self._save_state(dest, None)
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("4")
        except OSError:
            from ..proc.process import Process

            with Process(pid).translate("clear_refs"):
                raise
        self._reset_done = True
        return []


class UffdWpTracker(Tracker):
    name = "uffd-wp"
    changed = Category.WRITTEN

    def __init__(self, pid: int, start_time: int, dest: str = "") -> None:
        from ..track import uffd  # noqa: F401  loaded before the freeze: an import while frozen costs ms

        super().__init__(pid, start_time, dest)
        self.uffd = None  # dumper.track.uffd.UffdTracking once armed
        self._tracked = iv.EMPTY
        self._reset_ranges: list[tuple[int, int]] = []

    @property
    def returned(self) -> Category:
        return Category.WRITTEN

    def check_parent(self, parent_inv) -> str | None:
        from ..track import uffd

        why = super().check_parent(parent_inv)
        if why is None and not parent_inv.HasField("uffd_fd"):
            why = "the parent armed no uffd-wp tracking that is still in place: full dump"
        elif why is None and not uffd.find_uffd(self.pid, parent_inv.uffd_fd, self.state.uffd_ino):
            why = f"the userfaultfd that tracked pid {self.pid} (descriptor {parent_inv.uffd_fd}) is gone: full dump"
        return why

    def prepare(self, tracer, pid, vmas, want, parent_inv) -> None:
        from ..track import uffd

        wanted = set(want)
        current = [(v.start, v.end) for v in vmas if "uw" in v.vmflags and (v.start, v.end) in wanted]
        last = self.state
        base = None  # ranges write-protected at the reset the dump builds on
        state = None
        if self.uffd is not None:  # armed by an earlier round of this session (--pre-copy)
            state, base = self.uffd, self._reset_ranges
        elif parent_inv is not None:  # check_parent found its userfaultfd in place
            state = uffd.UffdTracking(parent_inv.uffd_fd, [], ino=last.uffd_ino)
            base = sorted((r.start, r.end) for r in parent_inv.tracked_ranges)
        elif last is not None and last.armed and last.uffd_fd is not None \
                and uffd.find_uffd(pid, last.uffd_fd, last.uffd_ino):
            state = uffd.UffdTracking(last.uffd_fd, [], ino=last.uffd_ino)  # ours, armed by an earlier dump
        self.preexisting = state is not None and self.uffd is None
        if state is None and current:
            if last is not None and last.uffd_fd is not None and uffd.find_uffd(pid, last.uffd_fd, last.uffd_ino):
                raise DumpError(f"an earlier dump of pid {pid} was cut off while it armed uffd-wp tracking "
                                f"(descriptor {last.uffd_fd}): {uffd.untrack_hint(pid)}")
            like = [fd for fd, (_, ours) in uffd.dumper_uffds(pid).items() if ours]
            hint = (f"; if an earlier dumper left it behind, `dumper untrack {pid} --fd {like[0]}` "
                    "removes it") if like else ""
            raise DumpError(f"pid {pid} already has memory registered with a userfaultfd that dumper "
                            f"did not arm by any record (its own?): uffd-wp tracking cannot share it{hint}")
        if state is None:
            self.uffd = tracer.call(uffd.arm_call, pid, want, start_time=self.start_time,
                                    checkpoint=self._dest)
        else:
            state.ranges = list(current) if state is not self.uffd else state.ranges
            known = set(state.ranges)
            self.uffd = tracer.call(uffd.register_call, pid, state, [r for r in want if r not in known])
        # Known since the base: what was protected then and is still registered now.
        self._tracked = (iv.intersect(iv.merge(*iv.from_pairs(base)), iv.merge(*iv.from_pairs(current)))
                         if base else iv.EMPTY)

    def tracked(self):
        return self._tracked

    def reset(self, tracer, pid, dest, *, record: bool = True) -> list[str]:
        from ..track import uffd

        if record:
            self._save_state(dest, self.uffd.fd, self.uffd.ino)
        uffd.reset(pid, self.uffd.ranges)
        self._reset_ranges = list(self.uffd.ranges)
        if not self.uffd.ranges:
            return ["uffd-wp tracking could not register any mapping: the next dump will be full"]
        return []

    def known_fd(self, pid: int) -> int | None:
        from ..track import uffd

        if self.uffd is not None:
            return self.uffd.fd
        last = self.state
        if last is not None and last.uffd_fd is not None and uffd.find_uffd(pid, last.uffd_fd, last.uffd_ino):
            return last.uffd_fd
        return None

    def disarm(self, tracer, pid) -> None:
        """Remove what this session armed (unregister, close the userfaultfd)."""
        from ..track import uffd

        if self.uffd is not None:
            tracer.call(uffd.disarm_call, pid, self.uffd, start_time=self.start_time)
            self.uffd = None

    def inventory(self, inv) -> None:
        super().inventory(inv)
        if not self.recorded or self.uffd is None:
            return
        inv.uffd_fd = self.uffd.fd
        del inv.tracked_ranges[:]
        for s, e in self.uffd.ranges:
            inv.tracked_ranges.add(start=s, end=e)


_KINDS = {"none": NoTracker, "soft-dirty": SoftDirtyTracker, "uffd-wp": UffdWpTracker}


def make_tracker(name: str, pid: int, start_time: int, dest: str = "") -> Tracker:
    """The tracker object for a name :func:`pick_tracker` returned;
    ``dest`` is the checkpoint the state records name."""
    return _KINDS[name](pid, start_time, dest)

"""``dump()``: freeze a process, select its pages, write a checkpoint.

Order of work, chosen to keep the frozen time short:

1. refuse an existing destination, and check the parent, before touching
   the target;
2. freeze every thread (ptrace), list VMAs (smaps), scan the private ones
   with the mask scanner (:func:`dumper.dump.select.dump_masks`);
3. with a parent and write tracking, keep only the pages written since the
   parent (the others become PE_PARENT entries, after checking the parent
   really holds them);
4. read the selected pages from /proc/PID/mem straight into the pages
   writer's buffers, which compresses them in a thread pool (a pre-dump
   reads after the target runs again, like CRIU's ``--pre-dump-mode=read``);
5. arm or reset write tracking for the next dump, thaw (resume, leave
   stopped, or kill) as soon as the last page is copied;
6. let compression finish, write mm/inventory/stats, fsync and rename the
   checkpoint into place.

On any error, SIGINT or SIGTERM the target is thawed back into the state it
was found in and no checkpoint directory is left behind.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..errors import DumpError, UnsupportedKernel
from ..image import CheckpointWriter, vma_entry_from
from ..image import format as fmt
from ..image.pb import inventory_pb2, mm_pb2, stats_pb2
from ..kernel.libc import PAGE_SIZE
from ..proc.freeze import THAW_MODES, check_target, raise_on_termination
from ..proc.warden import Warden
from ..proc.process import Process
from ..scan import Category, open_backend, scan_range
from ..scan.base import REGION_DTYPE
from ..scan.features import probe_scan_categories, probe_soft_dirty, probe_uffd_wp_async
from .memread import MemReader
from ..track import state as tracking_state
from .parent import ParentInfo, check_parent_placement, load_parent, split_by_coverage
from .select import VmaPlan, classify, dump_masks, runs_in_vmas

__all__ = ["dump", "DumpResult", "THAW_MODES", "TRACKERS", "pick_tracker"]

TRACKERS = ("auto", "uffd-wp", "soft-dirty", "none")


@dataclass(slots=True)
class DumpResult:
    """What a dump did. Times in nanoseconds, sizes in bytes unless named pages."""

    dest: str
    pid: int
    comm: str
    backend: str
    tracker: str
    thaw: str
    was_stopped: bool
    parent: str | None
    pre_dump: bool
    frozen_ns: int
    freezing_ns: int
    scan_ns: int
    read_ns: int
    total_ns: int
    pages_scanned: int
    pages_written: int
    pages_parent: int
    pages_unreadable: int
    bytes_raw: int
    bytes_written: int
    compress_ns: int
    write_ns: int
    vmas: int
    vmas_skipped: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def pick_tracker(requested: str) -> str:
    """The write tracker to use: ``requested``, or for "auto" what works here.

    Raises UnsupportedKernel naming what is missing and what to do.
    """
    if requested not in TRACKERS:
        raise DumpError(f"unknown tracker {requested!r} (choose from {', '.join(TRACKERS)})")
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


def _progress(total_bytes: int, enabled: bool):
    if not enabled:
        return nullcontext(None)
    from tqdm import tqdm

    # delay: only dumps that take more than about a second show a bar.
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                desc="dumping", delay=1.0, leave=False)


def _relative_link(parent: str, dest: str) -> str:
    """The ``parent`` symlink's target, relative to the checkpoint directory
    (CRIU's documented ``../1`` style), so a chain can be moved as a whole."""
    return os.path.relpath(os.path.abspath(parent), os.path.abspath(dest))


# --- incremental selection -----------------------------------------------


def _tracked(plan: VmaPlan, tracker: str, ranges: list[tuple[int, int]]) -> bool:
    """Does the tracker know which pages of this VMA changed since the parent?"""
    if tracker == "soft-dirty":
        return True  # new VMAs are born VM_SOFTDIRTY: entirely dirty
    v = plan.vma
    return "uw" in v.vmflags and any(s <= v.start and v.end <= e for s, e in ranges)


def _without_markers(pid: int, runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Drop uffd-wp markers from ``(start, end, categories)`` runs.

    A marker (SWAPPED, not WRITTEN, in a uffd-wp VMA) holds no data. Only
    SWAPPED runs without WRITTEN are looked up in pagemap: few pages.
    """
    from ..track.uffd import marker_mask

    suspects = [(s, (e - s) // PAGE_SIZE) for s, e, c in runs
                if c & Category.SWAPPED and not c & Category.WRITTEN]
    if not suspects:
        return runs
    masks = iter(marker_mask(pid, suspects))
    out = []
    for s, e, c in runs:
        if not (c & Category.SWAPPED and not c & Category.WRITTEN):
            out.append((s, e, c))
            continue
        real = np.flatnonzero(~next(masks))
        if real.size:
            for grp in np.split(real, np.flatnonzero(np.diff(real) != 1) + 1):
                out.append((s + int(grp[0]) * PAGE_SIZE, s + (int(grp[-1]) + 1) * PAGE_SIZE, c))
    return out


def _incremental_runs(runs, tracker, parent):
    """Per tracked VMA: sorted ``(vaddr, nr_pages, "dump"|"parent")`` runs.

    ``runs`` are the VMA's ``(start, end, categories)`` scan regions, markers
    already dropped. Changed pages are dumped; unchanged ones become
    PE_PARENT where the parent holds them, and are dumped where it does not.
    """
    changed_bit = Category.SOFT_DIRTY if tracker == "soft-dirty" else Category.WRITTEN
    dump_runs = [(s, (e - s) // PAGE_SIZE) for s, e, c in runs if c & changed_bit]
    unchanged = [(s, (e - s) // PAGE_SIZE) for s, e, c in runs if not c & changed_bit]
    covered, missing = split_by_coverage(unchanged, parent)
    out = [(s, n, "dump") for s, n in dump_runs + missing] + [(s, n, "parent") for s, n in covered]
    out.sort()
    return out


def dump(
    pid: int,
    dest: str | os.PathLike,
    *,
    thaw: str = "resume",
    compress: bool = True,
    level: int = 3,
    threads: int | None = None,
    backend: str = "auto",
    force: bool = False,
    progress: bool = False,
    parent: str | os.PathLike | None = None,
    track_mem: bool = False,
    tracker: str = "auto",
    pre_dump: bool = False,
    freeze_timeout: float = 5.0,
) -> DumpResult:
    """Checkpoint the memory of process ``pid`` into directory ``dest``.

    ``thaw`` is "resume", "leave-stopped" or "kill". ``compress`` selects
    zstd frames (``pages-1.zst.img``) over CRIU's raw ``pages-1.img``.
    ``track_mem`` arms write tracking (``tracker``: auto, uffd-wp,
    soft-dirty) before the target resumes; ``parent`` makes the dump
    incremental over that checkpoint (tracking is kept armed); ``pre_dump``
    writes pages only, reading them after the target runs again.
    ``freeze_timeout`` (seconds) bounds the freeze. The ptrace side runs in
    a warden process (:mod:`dumper.proc.warden`): a dump that fails or is
    interrupted, even by SIGKILL, leaves the target as found and removes the
    tracking it armed.

    Raises DumpError (destination exists without ``force``, bad parent,
    disk full, ...), UnsupportedKernel (no working tracker, ``backend="ioctl"``
    before 6.7), the ProcessError kinds (NoSuchProcess, ZombieProcess,
    NoMemoryMap, AccessDenied, RefusedTarget); KeyboardInterrupt/SystemExit
    on SIGINT/SIGTERM.
    """
    if thaw not in THAW_MODES:
        raise DumpError(f"unknown thaw mode {thaw!r} (choose from {', '.join(THAW_MODES)})")
    from ..image.writer import MAX_THREADS

    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise DumpError(f"threads must be between 1 and {MAX_THREADS}, not {threads}")
    if pre_dump and thaw == "kill":
        raise DumpError("a pre-dump copies the pages after the process runs again: it cannot --kill it")
    if tracker == "none" and (pre_dump or track_mem or parent is not None):
        what = "a pre-dump" if pre_dump else "--parent" if parent is not None else "--track-mem"
        raise DumpError(f"{what} needs write tracking, and --tracker none arms none (a pre-dump or "
                        "incremental dump without it saves nothing the next dump can use): use "
                        "--tracker auto, uffd-wp or soft-dirty, or a plain dump")
    tracking_state.clean_stale()
    t_begin = time.monotonic_ns()
    wall_begin = time.time_ns()
    proc = Process(pid)
    start_time = proc.stat().starttime
    want_tracking = track_mem or pre_dump or parent is not None
    tracker = pick_tracker(tracker) if want_tracking else "none"
    check_target(proc)  # refuses self/ancestors/zombies/kthreads up front
    pinfo: ParentInfo | None = None
    if parent is not None:
        pinfo = load_parent(parent, pid, start_time)
        check_parent_placement(parent, dest)
    notes: list[str] = []
    last = tracking_state.load(pid, start_time) if want_tracking else None
    writer = CheckpointWriter(dest, force=force)  # refuses an existing dest up front
    with ExitStack() as stack:
        stack.callback(writer.abort)  # no-op after commit
        if threading.current_thread() is threading.main_thread():
            stack.enter_context(raise_on_termination())
        # Started before any thread (the pages writer's): the tracer process.
        # On any way out it undoes what it armed and thaws to "resume".
        warden = stack.enter_context(Warden(stop_timeout=freeze_timeout))
        # Allocated before the freeze: the target should not wait for it.
        pw = writer.pages_writer(pid, 1, compress=compress, level=level, threads=threads)
        frozen_tree = warden.freeze(pid, tree=False)
        freezing_ns = frozen_tree.freezing_ns

        plans = [classify(v) for v in proc.vmas()]

        # Is the parent's tracking still in place?
        tracked_ranges: list[tuple[int, int]] = []
        uffd_state = None
        if pinfo is not None and last is None:
            notes.append(f"pid {pid} has no write tracking armed by dumper any more (removed by "
                         "`dumper untrack`, or never armed): full dump")
            pinfo = None
        elif pinfo is not None and not last.armed:
            notes.append(f"the write tracking of pid {pid} was being armed by a dump that did not finish: full dump")
            pinfo = None
        elif pinfo is not None and pinfo.inventory.tracking_id != last.tracking_id:
            notes.append(f"the parent is not the checkpoint that last reset write tracking "
                         f"(that is {last.checkpoint}): full dump")
            pinfo = None
        if pinfo is not None:
            inv = pinfo.inventory
            if tracker == "uffd-wp":
                from ..track import uffd

                if inv.tracker != "uffd-wp" or not inv.HasField("uffd_fd"):
                    notes.append(f"the parent was tracked with {inv.tracker or 'nothing'}, not uffd-wp: full dump")
                    pinfo = None
                elif not uffd.find_uffd(pid, inv.uffd_fd, last.uffd_ino):
                    notes.append(f"the userfaultfd that tracked pid {pid} (descriptor {inv.uffd_fd}) is gone: full dump")
                    pinfo = None
                else:
                    tracked_ranges = [(r.start, r.end) for r in inv.tracked_ranges]
                    uffd_state = uffd.UffdTracking(inv.uffd_fd, [], ino=last.uffd_ino)
            elif inv.tracker != tracker:
                notes.append(f"the parent was tracked with {inv.tracker or 'nothing'}, not {tracker}: full dump")
                pinfo = None

        if tracker == "uffd-wp":
            # Inject first (create the userfaultfd, register new VMAs): the
            # thread touches user mode for an instant, and whatever the kernel
            # writes then (rseq) must be seen by the scan and the copy below.
            from ..track import uffd

            want = [(p.vma.start, p.vma.end) for p in plans if p.mode == "pages"]
            current = [(p.vma.start, p.vma.end) for p in plans if p.mode == "pages" and "uw" in p.vma.vmflags]
            if uffd_state is None and last is not None and last.armed and last.uffd_fd is not None \
                    and uffd.find_uffd(pid, last.uffd_fd, last.uffd_ino):
                uffd_state = uffd.UffdTracking(last.uffd_fd, [], ino=last.uffd_ino)  # ours, armed earlier
            if uffd_state is None and current and last is not None and last.uffd_fd is not None \
                    and uffd.find_uffd(pid, last.uffd_fd, last.uffd_ino):
                raise DumpError(f"an earlier dump of pid {pid} was cut off while it armed uffd-wp tracking "
                                f"(descriptor {last.uffd_fd}): {uffd.untrack_hint(pid)}")
            if uffd_state is None and current:
                like = [fd for fd, (_, ours) in uffd.dumper_uffds(pid).items() if ours]
                hint = (f"; if an earlier dumper left it behind, `dumper untrack {pid} --fd {like[0]}` "
                        "removes it") if like else ""
                raise DumpError(f"pid {pid} already has memory registered with a userfaultfd that dumper "
                                f"did not arm by any record (its own?): uffd-wp tracking cannot share it{hint}")
            if uffd_state is None:
                uffd_state = warden.call(uffd.arm_call, pid, want, start_time=start_time,
                                         checkpoint=os.path.abspath(dest))
            else:
                uffd_state.ranges = list(current)
                known = set(current)
                uffd_state = warden.call(uffd.register_call, pid, uffd_state,
                                         [r for r in want if r not in known])

        t0 = time.monotonic_ns()
        with open_backend(proc, backend) as be:
            backend_name = be.name
            masks = dump_masks(be.supported)
            # WRITTEN|SWAPPED tell uffd-wp markers apart; SOFT_DIRTY or
            # WRITTEN tell what changed since the parent.
            returned = (Category.WRITTEN | Category.SWAPPED) & be.supported
            if pinfo is not None:
                changed = Category.SOFT_DIRTY if tracker == "soft-dirty" else Category.WRITTEN
                if not be.supported & changed:
                    raise UnsupportedKernel(f"{tracker} tracking with the {be.name} scanner",
                                            f"it cannot report {changed.name}")
                returned |= changed
            masks = type(masks)(anyof=masks.anyof, excluded=masks.excluded, returned=returned)
            scanned = [p.vma for p in plans if p.mode == "pages"]
            if scanned:
                regions = scan_range(be, scanned[0].start, scanned[-1].end, masks).array
            else:
                regions = np.empty(0, REGION_DTYPE)
        scan_ns = time.monotonic_ns() - t0

        work: list[tuple[VmaPlan, list[tuple[int, int, str]]]] = []
        for plan, runs in runs_in_vmas(regions, plans, with_categories=True):
            if "uw" in plan.vma.vmflags:
                runs = _without_markers(pid, runs)
            if pinfo is not None and plan.mode == "pages" and _tracked(plan, tracker, tracked_ranges):
                work.append((plan, _incremental_runs(runs, tracker, pinfo)))
            else:
                work.append((plan, [(s_, (e_ - s_) // PAGE_SIZE, "dump") for s_, e_, _ in runs]))
        pages_scanned = sum(p.vma.size // PAGE_SIZE for p in plans if p.mode != "skip")
        total_bytes = sum(n for _, runs in work for _, n, k in runs if k == "dump") * PAGE_SIZE

        reader = MemReader(proc)
        stack.callback(reader.close)
        mm = mm_pb2.mm_entry(**proc.mm_layout(), exe_file_id=0, mm_saved_auxv=proc.auxv())

        tracking_id = tracking_state.new_id() if tracker != "none" else ""

        def reset_tracking() -> None:
            """Start the next interval: every page counts as unchanged from now."""
            # Recorded first: should this dump fail after the reset, no
            # checkpoint carries the new id and no --parent can miss pages.
            if tracker == "none":
                return  # state files only while tracking is armed
            with proc.translate("tracking state"):
                tracking_state.save(pid, start_time, tracking_state.TrackingState(
                    tracking_id, tracker, os.path.abspath(dest), uffd_state.fd if uffd_state else None,
                    uffd_state.ino if uffd_state else None))
            if tracker == "soft-dirty":
                with proc.translate("clear_refs"), open(f"{proc.path}/clear_refs", "w") as f:
                    f.write("4")
            elif tracker == "uffd-wp":
                from ..track import uffd

                uffd.reset(pid, uffd_state.ranges)
                if not uffd_state.ranges:
                    notes.append("uffd-wp tracking could not register any mapping: the next dump will be full")

        dumped = [0] * len(work)
        parent_pages = [0] * len(work)

        def copy_pages(bar) -> None:
            for i, (plan, runs) in enumerate(work):
                for vaddr, n, kind in runs:
                    if kind == "parent":
                        pw.add_parent(vaddr, n)
                        parent_pages[i] += n
                    else:
                        dumped[i] += reader.copy_runs([(vaddr, n)], pw.add_present_from,
                                                      bar.update if bar is not None else None)

        with _progress(total_bytes, progress) as bar:
            if pre_dump:
                # CRIU's read mode: reset tracking, let the target go, copy after.
                reset_tracking()
                warden.thaw(thaw)
                copy_pages(bar)
            else:
                copy_pages(bar)
                reset_tracking()
                warden.thaw(thaw)
        frozen_ns = warden.frozen_ns or 0

        pw.close()  # compression tail runs while the target already runs
        skipped: dict[str, int] = {}
        for i, (plan, _) in enumerate(work):
            if plan.mode == "skip":
                skipped[plan.reason] = skipped.get(plan.reason, 0) + 1
            mm.vmas.append(vma_entry_from(
                plan.vma, status=plan.status, dumped=plan.mode != "skip",
                contents_skipped_reason=plan.reason or None, nr_pages_dumped=dumped[i],
                nr_pages_parent=parent_pages[i] or None))
        writer.write_mm(pid, mm)
        st = pw.stats
        stats = stats_pb2.dump_stats_entry(
            freezing_time=min(freezing_ns // 1000, 2**32 - 1),
            frozen_time=min(frozen_ns // 1000, 2**32 - 1),
            memdump_time=min(reader.read_ns // 1000, 2**32 - 1),
            memwrite_time=min(st.write_ns // 1000, 2**32 - 1),
            pages_scanned=pages_scanned,
            pages_skipped_parent=st.pages_parent,
            pages_written=st.pages_present,
            pages_lazy=0,
            bytes_raw=st.bytes_raw,
            bytes_compressed=st.bytes_compressed,
            scan_time_us=scan_ns // 1000,
            read_time_us=reader.read_ns // 1000,
            compress_time_us=st.compress_ns // 1000,
            write_time_us=st.write_ns // 1000,
            pages_unreadable=reader.pages_unreadable,
        )
        writer.write_stats(stats)
        inv = inventory_pb2.inventory_entry(
            dumper_version=__version__,
            kernel_release=os.uname().release,
            machine=os.uname().machine,
            scanner=backend_name,
            tracker=tracker,
            dump_start_ns=wall_begin,
            dump_end_ns=time.time_ns(),
            root_pid=pid,
            pids=[pid],
            pre_dump=pre_dump,
            task_start_time=start_time,
        )
        if tracking_id:
            inv.tracking_id = tracking_id
        if uffd_state is not None:
            inv.uffd_fd = uffd_state.fd
            inv.tracked_ranges.extend(inventory_pb2.tracked_range(start=s, end=e) for s, e in uffd_state.ranges)
        parent_link = None
        if pinfo is not None:
            parent_link = _relative_link(pinfo.path, os.fspath(dest))
            writer.link_parent(parent_link)
            inv.parent_path = parent_link
        inv.compression = fmt.COMPRESSION_ZSTD if compress else fmt.COMPRESSION_NONE
        if compress:
            inv.compression_level = level
            inv.frame_pages = pw.frame_pages
        writer.write_inventory(inv)
        path = writer.commit()
        warden.keep()  # the checkpoint exists: what was armed for it stays
    return DumpResult(
        dest=os.fspath(path), pid=pid, comm=proc.name, backend=backend_name, tracker=tracker, thaw=thaw,
        was_stopped=frozen_tree.processes[frozen_tree.root].was_stopped,
        parent=parent_link, pre_dump=pre_dump,
        frozen_ns=frozen_ns, freezing_ns=freezing_ns, scan_ns=scan_ns, read_ns=reader.read_ns,
        total_ns=time.monotonic_ns() - t_begin, pages_scanned=pages_scanned,
        pages_written=st.pages_present, pages_parent=st.pages_parent, pages_unreadable=reader.pages_unreadable,
        bytes_raw=st.bytes_raw, bytes_written=st.bytes_file, compress_ns=st.compress_ns,
        write_ns=st.write_ns, vmas=len(plans), vmas_skipped=skipped, unreadable=reader.unreadable,
        notes=notes,
    )

"""One dump, as a list of phases (:meth:`DumpSession.run`).

Before the freeze (the target runs):
  ``prepare``      refuse a bad destination or parent, pick the tracker,
                   read each process's VMAs (smaps) and classify them, map
                   and populate the spool for the pages expected.
Frozen (the target waits only for this):
  ``freeze``       every thread (of the tree) stopped by the tracer;
  ``list_vmas``    /proc/PID/maps read again (a long one in the background);
  ``scan``         (no tracking to arm) meanwhile, over the pre-read VMAs;
  ``confirm_vmas`` maps unchanged (byte for byte) -> the pre-read VMAs
                   stand, else smaps is read now and the scan redone;
  ``collect``      process state (mm layout, auxv, open files...); the
                   per-task state (registers, signals...) is asked of the
                   warden, which works meanwhile;
  ``arm``          tracking prepared (injected syscalls come before any read);
  ``scan``         the mask scanner over the private VMAs (not scanned yet);
  ``select``       numpy interval algebra: pages to copy, pages the parent holds;
  ``share_cow``    pages a process shares copy-on-write with an earlier one
                   (same PFN): not copied again, referenced (PE_COW);
  ``snapshot``     (``--copy fork``/``auto``) the process forks from inside:
                   its pages are read from that copy-on-write child after
                   the thaw (:mod:`dumper.dump.snapshot`);
  ``copy``         page runs into the spool (process_vm_readv, batched): all
                   of them, or what a forked child does not hold;
  ``copy_shared``  shared memory objects into the spool, once each (pread);
  ``collected_tasks`` the warden's answer (task state) taken;
  ``reset``        tracking reset for the next dump;
  ``thaw``         resume, leave stopped, or kill.
After the thaw:
  ``write``        compress and write pages from the spool (or read from the
                   snapshot child, which is then killed and reaped inside the
                   stopped process), mm, inventory, stats; fsync; rename.

A pre-dump resets tracking and thaws before copying (CRIU's read mode).
On any error, SIGINT, SIGTERM or SIGHUP the tracer thaws the target into
the state it was found in and no checkpoint directory is left behind.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..errors import DumperWarning, DumpError, NoSuchProcess, UnsupportedKernel
from ..image import CheckpointWriter, vma_entry_from
from ..image import format as fmt
from ..image.checkpoint import new_checkpoint_id
from ..image.dumpfacts import apply_file_identities, mapped_file_identities, split_guards, with_guards
from ..image.pb import inventory_pb2, mm_pb2, stats_pb2
from ..image.vmas import as_criu_lists_them
from ..kernel.libc import PAGE_SIZE
from ..kernel.mman import PROT_READ
from ..proc.freeze import THAW_MODES, raise_on_termination
from ..proc.maps import Vma
from ..proc.process import Process
from ..scan import Category, backend_class, open_backend, scan_range
from ..text import plural
from . import intervals as iv
from .memread import Extents, PageCopier
from .parent import ParentInfo, check_parent_placement, load_parent
from .select import VmaPlan, classify_all, drop_uffd_markers, dump_masks
from .snapshot import AUTO_MIN_BYTES, COPY_MODES, ForkSnapshot, SnapshotRefused, kept_out, not_in_child, why_not
from .spool import Spool
from ..proc.residency import resident_runs
from ..proc.task import TaskState, collect_task
from . import core as criu_core
from .core import KobjIds, NamespaceIds
from .files import FileTable, write_fdinfo
from .shmem import SharedMemory, settle_plans, spool_estimate
from .cow import CowSharing, stream_layout, write_cow_refs
from ..proc.fds import collect_fds, map_files_fdflags
from ..proc.freeze import check_target
from ..proc.tree import FrozenProcess
from ..proc.warden import Warden
from ..track import state as tracking_state
from .trackers import Tracker, make_tracker, pick_tracker

__all__ = ["DumpOptions", "DumpResult", "DumpSession"]

_U64 = np.uint64


@dataclass(slots=True)
class DumpOptions:
    """What the caller asked for; :meth:`validate` checks it before anything runs.

    ``thaw``: "resume", "leave-stopped" or "kill". ``compress``: zstd frames
    (``pages-N.zst.img``) or CRIU's raw ``pages-N.img``. ``track_mem`` arms
    write tracking (``tracker``) for a later ``parent`` dump; ``pre_dump``
    writes pages only, copied after the target runs again. ``spool_limit``:
    bytes of RAM for pages copied while frozen (None: half of MemAvailable).
    ``single``: only ``pid``, not the tree of its descendants (like
    ``criu dump -t PID`` dumps the tree). ``pre_copy``: rounds of copying while the target runs before the final
    freeze (0: none). ``freeze_timeout``: seconds a thread may take to stop. ``restorable``:
    fail (before the thaw) rather than write a checkpoint `criu restore`
    could not bring back.
    """

    thaw: str = "resume"
    compress: bool = True
    level: int = 3
    threads: int | None = None
    backend: str = "auto"
    force: bool = False
    progress: bool = False
    parent: str | os.PathLike | None = None
    track_mem: bool = False
    tracker: str = "auto"
    pre_dump: bool = False
    freeze_timeout: float = 5.0
    spool_limit: int | None = None
    restorable: bool = False
    pre_copy: int = 0
    single: bool = False
    copy: str = "auto"

    def validate(self) -> None:
        if self.thaw not in THAW_MODES:
            raise DumpError(f"unknown thaw mode {self.thaw!r} (choose from {', '.join(THAW_MODES)})")
        from ..image.writer import MAX_THREADS

        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise DumpError(f"threads must be between 1 and {MAX_THREADS}, not {self.threads}")
        if self.pre_dump and self.thaw == "kill":
            raise DumpError("a pre-dump copies the pages after the process runs again: it cannot --kill it")
        if self.tracker == "none" and (self.pre_dump or self.track_mem or self.parent is not None or self.pre_copy):
            what = ("a pre-dump" if self.pre_dump else "--parent" if self.parent is not None
                    else "--pre-copy" if self.pre_copy else "--track-mem")
            raise DumpError(f"{what} needs write tracking, and --tracker none arms none (a pre-dump or "
                            "incremental dump without it saves nothing the next dump can use): use "
                            "--tracker auto, uffd-wp or soft-dirty, or a plain dump")
        if self.pre_copy < 0:
            raise DumpError("--pre-copy takes a number of rounds >= 1")
        if self.pre_copy and (self.pre_dump or self.parent is not None):
            raise DumpError("--pre-copy makes one standalone checkpoint: it does not combine with "
                            "pre-dump or --parent")
        if not self.freeze_timeout > 0:
            raise DumpError("the freeze timeout must be a positive number of seconds")
        if self.copy not in COPY_MODES:
            raise DumpError(f"unknown copy mode {self.copy!r} (choose from {', '.join(COPY_MODES)})")

    @property
    def wants_tracking(self) -> bool:
        return self.track_mem or self.pre_dump or self.parent is not None or bool(self.pre_copy)


@dataclass(slots=True)
class DumpResult:
    """What a dump did. Times in nanoseconds, sizes in bytes unless named pages.

    ``freezing_ns``: from the first freeze request until every thread had
    stopped; ``frozen_ns``: from then until the thaw began (CRIU's
    freezing_time and frozen_time).
    """

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
    pids: list = field(default_factory=list)
    spool_bytes: int = 0
    spilled_bytes: int = 0
    unrestorable: list = field(default_factory=list)  # one line per reason `criu restore` would fail
    copy: str = "frozen"  # how the pages were copied: "frozen" (spool), "fork" (copy-on-write snapshot)
    reap_ns: int = 0  # the second, short stop that reaps the snapshot child (fork), not in frozen_ns
    exited_after_thaw: bool = False  # the root exited while its snapshot was read (the checkpoint stands)
    copy_why: str = ""  # why the root's pages were copied frozen (``copy == "frozen"``)
    copy_read: str = ""  # how a snapshot was read (fork): "window" (the child copied), "/proc/PID/mem"

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(eq=False)
class ProcessDump:
    """One process through the phases.

    Interval sets are ``(starts, ends)`` uint64 byte arrays (see
    :mod:`dumper.dump.intervals`).
    """

    pid: int
    proc: Process
    start_time: int
    tracker: Tracker
    parent: ParentInfo | None = None
    frozen: FrozenProcess | None = None
    pre_maps: bytes = b""
    vmas: list[Vma] = field(default_factory=list)
    plans: list[VmaPlan] = field(default_factory=list)
    scan_iv: tuple = iv.EMPTY  # VMAs whose pages the scanner selects
    whole_iv: tuple = iv.EMPTY  # VMAs dumped whole ([vdso])
    forced_iv: tuple = iv.EMPTY  # dumped VMAs without PROT_READ
    marker_iv: tuple = iv.EMPTY  # VMAs registered with a uffd-wp userfaultfd
    copy_iv: tuple = iv.EMPTY  # what to copy
    parent_iv: tuple = iv.EMPTY  # what the parent holds (PE_PARENT)
    reuse_iv: tuple = iv.EMPTY  # unchanged since a --pre-copy round copied it
    rounds: list = field(default_factory=list)  # Extents of each --pre-copy round, oldest first
    regions: tuple = (iv.EMPTY[0], iv.EMPTY[1], np.empty(0, _U64))  # scanned runs and categories
    extents: Extents | None = None
    mm: mm_pb2.mm_entry | None = None
    task: TaskState | None = None
    file_ids: dict = field(default_factory=dict)  # (start, end) -> FileIdentity of the mapped file
    vma_shmid: dict = field(default_factory=dict)  # VMA index -> files.img id of its file
    vma_fdflags: dict = field(default_factory=dict)  # VMA index -> O_RDONLY/O_WRONLY/O_RDWR
    mapped_idx: list = field(default_factory=list)  # indices of file-backed VMAs ([vdso] and such apart)
    shmem_idx: list = field(default_factory=list)  # indices of VMAs planned "shmem"
    unrestorable_idx: list = field(default_factory=list)  # indices of VMAs CRIU could not restore
    guard_vmas: list = field(default_factory=list)  # CRIU's guard pseudo-VMAs (MADV_GUARD_INSTALL)
    ns_ids: dict = field(default_factory=dict)
    kobj_ids: dict = field(default_factory=dict)
    copier: PageCopier | None = None
    fork_why: str | None = "not decided"  # why the pages are copied frozen, None: forked (snapshot)
    snapshot: ForkSnapshot | None = None
    task_result: Callable[[], TaskState] | None = None  # collect_task under way in the warden
    pages_id: int = 0
    scanned: bool = False  # regions are those of this freeze and these VMAs


class DumpSession:
    """Checkpoint the process ``pid`` into ``dest``; see the module docstring."""

    def __init__(self, pid: int, dest: str | os.PathLike, opts: DumpOptions) -> None:
        opts.validate()
        self.pid = pid
        self.dest = os.fspath(dest)
        self.opts = opts
        self.notes: list[str] = []
        self.t_begin = time.monotonic_ns()
        self.wall_begin = time.time_ns()
        self.scan_ns = 0
        self.backend_name = ""
        self.processes: list[ProcessDump] = []
        self.tracker_name = "none"
        self.unrestorable: list[inventory_pb2.unrestorable_reason] = []
        self.shmem = SharedMemory()  # shared memory objects, saved once each
        # CRIU reads --no-compress sets itself: no PE_COW there; a pre-dump copies after the thaw
        self.cow = CowSharing(enabled=opts.compress and not opts.pre_dump)
        self.files = FileTable(shmem=self.shmem)
        self._fdinfos: dict[int, list] = {}  # files_id -> fdinfo entries
        self.round_bytes: list[int] = []
        self.frozen_ns = 0
        self.reap_ns = 0
        self.target_gone: set[int] = set()  # exited after the thaw, while a snapshot was read
        self.zombies: list[FrozenProcess] = []
        self.timens_id = 0  # the root's time namespace id if not the dumper's (timens-ID.img)
        self.timens_offsets: dict[str, int] = {}
        self._tracking_was_armed = False
        self._maps_check: _MapsCheck | None = None
        self.ns_ids = NamespaceIds()
        self.root_ns = self.ns_ids.of("self")  # the dumper's own come first: the inventory's root_ids
        self.kobj_ids = KobjIds()

    # -- phases ----------------------------------------------------------------

    def run(self) -> DumpResult:
        with ExitStack() as stack:
            if threading.current_thread() is threading.main_thread():
                # from the start: prepare() creates the temporary directory
                stack.enter_context(raise_on_termination())
            self.prepare()
            # LIFO: the writer (its compression threads read the spool) stops first.
            stack.callback(self.spool.close)
            stack.callback(self.shmem.close)
            stack.callback(self.writer.abort)  # no-op after commit
            # The tracer is a separate process (the warden): on any way out it
            # undoes what it armed and thaws; it must start before any thread.
            self.tracer = stack.enter_context(Warden(stop_timeout=self.opts.freeze_timeout))
            if self.opts.pre_copy:
                self.pre_copy_rounds()
            self.freeze()
            self.list_vmas()
            if not any(p.tracker.arms for p in self.processes):
                self.scan()  # while maps is read again; tracking, when armed, must come first
            self.confirm_vmas()
            self.collect()
            self.check_restorable()
            self.arm()
            self.scan()
            self.select()
            if self.opts.pre_dump:
                self.collected_tasks()
                self.reset()
                self.thaw()
                self.copy()
            else:
                self.share_cow()
                self.snapshot()
                self.copy()
                self.copy_shared()
                self.collected_tasks()
                self.check_restorable(after_copy=True)
                if self.opts.pre_copy and not self.opts.track_mem and not self._tracking_was_armed:
                    self.disarm()  # the rounds armed it for this dump only
                else:
                    self.reset()
                self.thaw()
            return self.write()

    def pre_copy_rounds(self) -> None:
        """Copy pages while the target runs (``--pre-copy=N``): each round
        freezes it only to arm or reset write tracking, then copies what was
        written since the previous round; rounds stop when that no longer
        shrinks. The final freeze then copies only what changed since the
        last round (:meth:`select` treats the rounds' copies as the base)."""
        last = None
        for rnd in range(self.opts.pre_copy):
            self.freeze()
            self.list_vmas()
            self.confirm_vmas()
            self.arm()
            if rnd == 0:
                self._tracking_was_armed = any(p.tracker.preexisting for p in self.processes)
            self.scan()
            self.select()
            for p in self.processes:
                p.tracker.reset(self.tracer, p.pid, self.dest, record=False)
                p.pre_maps = b""  # arming changed VmFlags (uw): read smaps again next time
            self.tracer.thaw("resume")
            self.copy()
            for p in self.processes:
                p.rounds.append(p.extents)
            copied = sum(p.extents.total for p in self.processes)
            self.round_bytes.append(copied)
            if last is not None and copied >= last * 0.9 or copied < (1 << 20):
                break  # not shrinking (written faster than copied), or little left: freeze now
            last = copied
        self.notes.append(f"pre-copy: {plural(len(self.round_bytes), 'round')} while running, copied "
                          + ", ".join(_mib(b) for b in self.round_bytes))

    def disarm(self) -> None:
        for p in self.processes:
            p.tracker.disarm(self.tracer, p.pid)

    def prepare(self) -> None:
        """Checks and allocations before the target is touched."""
        opts = self.opts
        root = Process(self.pid)
        check_target(root)  # refuses self, ancestors, zombies, kernel threads up front
        start_time = root.stat().starttime
        tracking_state.clean_stale()  # records of processes gone or restarted
        backend_class(opts.backend)  # the scanner's code loaded now, not while the target is frozen
        self.tracker_name = pick_tracker(opts.tracker) if opts.wants_tracking else "none"
        self.processes = [self._process_dump(root, start_time)]  # loads (checks) the parent first
        if opts.parent is not None:
            check_parent_placement(opts.parent, self.dest)
        if not opts.single:  # the tree as it is now; the freeze finds what appears meanwhile
            for pid in _descendants(root.pid):
                try:
                    proc = Process(pid)
                    if proc.stat().state not in ("Z", "X"):
                        self.processes.append(self._process_dump(proc, proc.stat().starttime))
                except NoSuchProcess:
                    continue
        self.writer = CheckpointWriter(self.dest, force=opts.force)  # refuses an existing dest up front
        try:
            self._prepare_spool()
        except BaseException:  # Ctrl-C while the spool is populated, ENOMEM...: no temporary directory left
            self.writer.abort()
            raise

    def _prepare_spool(self) -> None:
        """The spool, reserved for the pages expected (populated now, before
        the freeze), and the long-freeze warning."""
        opts = self.opts
        self.spool = Spool(limit=opts.spool_limit, spill_dir=self.writer.dir_fd)
        try:
            expected = spooled = 0
            for p in self.processes:
                try:
                    self._pre_read(p)
                except NoSuchProcess:
                    continue  # gone already: the freeze decides
                mine = self._expected_bytes(p.vmas, p.plans)
                p.fork_why = why_not(opts.copy, tree=len(self.processes) > 1, pre_dump=opts.pre_dump,
                                     pre_copy=bool(opts.pre_copy), thaw=opts.thaw, pid=p.pid, vmas=p.vmas,
                                     expected=mine)
                expected += mine
                if p.fork_why is None:  # only what the child will not hold is copied frozen
                    kept = [i for i, v in enumerate(p.vmas) if not_in_child(v)]
                    mine = self._expected_bytes([p.vmas[i] for i in kept], [p.plans[i] for i in kept])
                spooled += mine
            shared = spool_estimate((v for p in self.processes for v, pl in zip(p.vmas, p.plans)
                                     if pl.mode == "shmem"))
            expected += shared
            spooled += shared
            if not opts.pre_dump:
                self.spool.reserve(spooled + spooled // 16 + (1 << 20))
            self._warn_long_freeze(spooled)
        except BaseException:
            self.spool.close()
            raise

    @staticmethod
    def _expected_bytes(vmas, plans) -> int:
        """Bytes the VMAs' pages are expected to take (smaps counters)."""
        return (sum(v.anonymous + v.swap for v, pl in zip(vmas, plans) if pl.mode == "pages")
                + sum(v.size for v, pl in zip(vmas, plans) if pl.mode == "whole"))

    def _warn_long_freeze(self, expected: int) -> None:
        """Say so before a freeze estimated to last long: the pagemap
        fallback reads 8 bytes per page of every mapping while frozen, and
        the copy moves every expected byte (rates measured here, kept low)."""
        from ..scan import estimate_scan_seconds

        copy = 0.0 if self.opts.pre_dump else expected / 1.5e9
        scan = sum(estimate_scan_seconds(self.opts.backend, [v for v, pl in zip(p.vmas, p.plans)
                                                              if pl.mode == "pages"],
                                         residency=p.tracker.name != "uffd-wp")  # as _scan_one passes it
                   for p in self.processes)
        if copy + scan > 2.0:
            why = (f"scanning {sum(v.size for p in self.processes for v in p.vmas) / (1 << 40):.1f} TiB of "
                   "mappings with the pagemap fallback (no PAGEMAP_SCAN before Linux 6.7)" if scan > copy else
                   f"copying {expected / (1 << 30):.1f} GiB; --pre-copy copies most of it before the freeze")
            warnings.warn(DumperWarning(f"the process will stay frozen for about {copy + scan:.0f} s: {why}"))

    def _process_dump(self, proc: Process, start_time: int) -> ProcessDump:
        """A process of the dump, with its tracker and (incremental) its parent's pages."""
        pd = ProcessDump(proc.pid, proc, start_time, make_tracker(self.tracker_name, proc.pid, start_time, self.dest))
        if self.opts.parent is not None:
            try:
                pd.parent = load_parent(self.opts.parent, proc.pid, start_time)
            except DumpError as err:
                if proc.pid == self.pid:
                    raise
                self.notes.append(f"pid {proc.pid}: {err}: full dump of it")
                return pd
            why = pd.tracker.check_parent(pd.parent.inventory)
            if why:
                self.notes.append(why if proc.pid == self.pid else f"pid {proc.pid}: {why}")
                pd.parent = None
        return pd

    def _pre_read(self, p: ProcessDump) -> None:
        """VMAs (smaps) and their classification, read while the target
        runs. ``pre_maps`` is the maps text of that very smaps read (not a
        second read: an mprotect or rename between two reads, undone before
        the freeze, would pass the frozen comparison with stale VMAs)."""
        vmas, p.pre_maps = p.proc.vmas_and_maps()
        # Before the freeze is early enough: a file written in between reads
        # as changed to the readers, which then refuse it (never the reverse).
        p.file_ids = mapped_file_identities(p.pid, vmas)
        self._set_vmas(p, vmas)
        self.files.prefetch_mapped(p.pid, (vmas[i] for i in p.mapped_idx))

    def _set_vmas(self, p: ProcessDump, vmas: list[Vma]) -> None:
        """The VMAs, their plans, and what the frozen phases look up in
        them, computed once: with 64,000 VMAs each pass over the list costs
        tens of ms, which must not be spent while the target is frozen."""
        p.vmas = vmas
        p.scanned = False
        p.plans = classify_all(vmas)
        p.mapped_idx = [i for i, v in enumerate(vmas) if v.file_backed and not v.special]
        p.shmem_idx = [i for i, pl in enumerate(p.plans) if pl.mode == "shmem"]
        p.unrestorable_idx = [i for i, pl in enumerate(p.plans) if pl.unrestorable]
        pages = [(v.start, v.end) for v, pl in zip(vmas, p.plans) if pl.mode == "pages"]
        p.scan_iv = iv.from_pairs(pages)
        p.whole_iv = iv.from_pairs([(v.start, v.end) for v, pl in zip(vmas, p.plans) if pl.mode == "whole"])
        p.forced_iv = iv.merge(*iv.from_pairs([(v.start, v.end) for v, pl in zip(vmas, p.plans)
                                               if pl.mode != "skip" and not v.prot & PROT_READ]))
        p.marker_iv = iv.merge(*iv.from_pairs([(v.start, v.end) for v, pl in zip(vmas, p.plans)
                                               if pl.mode == "pages" and "uw" in v.vmflags]))

    def freeze(self) -> None:
        """Freeze the tree (or ``single``: the root); the processes of the
        dump become exactly those frozen, zombies apart (recorded only)."""
        tree = self.tracer.freeze(self.pid, tree=not self.opts.single)
        self.tree = tree
        self.freezing_ns = tree.freezing_ns
        known = {p.pid: p for p in self.processes}
        procs = []
        for fp in tree.processes.values():
            if fp.zombie:
                continue
            p = known.get(fp.pid)
            proc = Process(fp.pid)
            if p is None or proc.stat().starttime != p.start_time:  # appeared since (or pid reused)
                p = self._process_dump(proc, proc.stat().starttime)  # its VMAs are read frozen
            p.frozen = fp
            procs.append(p)
        self.processes = procs
        self.zombies = [fp for fp in tree.processes.values() if fp.zombie]

    def list_vmas(self) -> None:
        """The VMAs as they are now. A process without a pre-read has its
        smaps read now; the pre-read stands if /proc/PID/maps did not change.
        A long maps is read again in the background (the kernel takes ~30 ms
        to print 64,000 VMAs: time the scan can use) and compared by
        :meth:`confirm_vmas`."""
        recheck = []
        for p in self.processes:
            p.scanned = False  # every freeze scans afresh
            if len(p.pre_maps) >= _MAPS_IN_BACKGROUND:
                recheck.append(p)
            elif not p.pre_maps or p.proc.read_file("maps") != p.pre_maps:
                self._set_vmas(p, p.proc.vmas())
        self._maps_check = _MapsCheck(recheck) if recheck else None

    def confirm_vmas(self) -> None:
        """The pre-read stands where maps did not change (byte for byte);
        elsewhere smaps is read now and the process scanned again."""
        check, self._maps_check = self._maps_check, None
        if check is None:
            return
        for p, now in check.result():
            if now != p.pre_maps:
                self._set_vmas(p, p.proc.vmas())

    def collect(self) -> None:
        """Process state that must be read while it exists and holds still:
        registers, signals, credentials, limits... (:mod:`dumper.proc.task`),
        and open files."""
        # a zombie's exit code now: once thawed, its parent may reap it
        self.zombie_cores = [criu_core.zombie_core_entry(z.pid) for z in self.zombies]
        for p in self.processes:
            p.mm = mm_pb2.mm_entry(**p.proc.mm_layout(p.vmas), exe_file_id=0, mm_saved_auxv=_criu_auxv(p.proc.auxv()))
            mm_tid = p.proc.mm_tid()  # the leader may have exited (pthread_exit in main)
            _record_coredump_filter(p.mm, mm_tid)
            p.ns_ids = self.ns_ids.of(p.pid)
            p.kobj_ids = self.kobj_ids.of(p.pid)
            fp = p.frozen
            live = [t for t, st in zip(fp.threads, fp.states) if st not in ("Z", "X")]
            # The warden injects and ptraces while this process goes on
            # (files, scan, copy): collected_tasks() takes the result.
            p.task = None
            p.task_result = self.tracer.call_soon(collect_task, p.pid, live, was_stopped=fp.was_stopped,
                                                  stop_signo=fp.stop_signo if fp.was_stopped else 0,
                                                  proc_path=f"/proc/{p.pid}/task/{mm_tid}")
            if p.pid == self.pid and "time" in p.ns_ids and p.ns_ids["time"] != self.root_ns.get("time"):
                self.timens_id = p.ns_ids["time"]
                self.timens_offsets = p.proc.timens_offsets()
        self._collect_all_files()

    def collected_tasks(self) -> None:
        """The task state :meth:`collect` asked the warden for; its error
        raised (still frozen: the tracer then thaws as found)."""
        for p in self.processes:
            if p.task_result is not None:
                result, p.task_result = p.task_result, None
                p.task = result()
                p.mm.dumpable = p.task.dumpable
                p.mm.thp_disabled = p.task.thp_disabled

    def _collect_all_files(self) -> None:
        for p in self.processes:
            if p.frozen.leader_exited:
                # /proc/PID/map_files died with the main thread; memory is
                # still read through a live thread, but CRIU cannot restore it.
                self._unrestorable(p.pid, "process", f"pid {p.pid}",
                                   "its main thread exited (pthread_exit): `criu restore` cannot rebuild it")
            else:
                self._collect_files(p)

    def _collect_files(self, p: ProcessDump) -> None:
        """Open files, mapped files, cwd and root, in the order CRIU numbers
        them (mapped files, descriptors, exe, fs: dumper/dump/files.py)."""
        t = self.files
        vmas = p.vmas
        for i in p.mapped_idx:
            v = vmas[i]
            p.vma_shmid[i] = t.mapped_file(p.pid, v)
            fl = map_files_fdflags(p.proc, v)
            if fl is not None:
                p.vma_fdflags[i] = fl
        settle_plans(p.plans, p.vma_shmid, p.shmem_idx)  # shared memory whose object is not saved: skipped
        ours = p.tracker.known_fd(p.pid)  # dumper's own userfaultfd is not the program's
        fds = [o for o in collect_fds(p.proc) if o.fd != ours]
        if p.kobj_ids["files"] not in self._fdinfos:  # CLONE_FILES: one table for all sharers
            self._fdinfos[p.kobj_ids["files"]] = t.add_process(p.pid, fds)
        p.mm.exe_file_id = t.exe_file(p.pid)
        t.fs_entry(p.pid)

    def check_restorable(self, *, after_copy: bool = False) -> None:
        """Collect why `criu restore` could not bring the checkpoint back
        (one reason per resource); with ``restorable``, fail now, while the
        target is still frozen and nothing has changed in it."""
        if not after_copy:
            # zombies are in pstree.img too (CRIU restores them): not "outside"
            pids = {p.pid for p in self.processes} | {z.pid for z in self.zombies}
            for p in self.processes:
                for i in p.unrestorable_idx:
                    v, plan = p.vmas[i], p.plans[i]
                    self._unrestorable(p.pid, "memory", f"vma {v.start:#x}-{v.end:#x} {v.path}".rstrip(),
                                       plan.unrestorable)
                for kind, nid in p.ns_ids.items():
                    if kind == "time":
                        why = self._timens_problem(p)
                        if why:
                            self._unrestorable(p.pid, "namespace", "time namespace", why)
                        continue
                    if nid != self.root_ns.get(kind):
                        self._unrestorable(p.pid, "namespace", f"{kind} namespace",
                                           f"differs from the dumper's: namespaces are not saved")
                for child in p.proc.children():
                    if child not in pids:
                        self._unrestorable(p.pid, "child process", f"pid {child}",
                                           "a child process outside the checkpoint")
                if p.frozen.zombie:
                    self._unrestorable(p.pid, "zombie", f"pid {p.pid}", "zombie processes are not saved yet")
            for r in self.files.unrestorable:
                self._unrestorable(r.pid, r.kind, r.what, r.why)
        else:
            for p in self.processes:
                if p.copier is not None and p.copier.unreadable:
                    n = p.copier.pages_unreadable
                    self._unrestorable(p.pid, "memory", plural(n, "page"), "pages that could not be read")
            for obj in self.shmem.objects.values():
                if obj.unreadable:
                    n = sum(k for _, k in obj.unreadable)
                    self._unrestorable(self.pid, "shared memory", obj.what, f"{plural(n, 'page')} could not be read")
        if self.opts.restorable and self.unrestorable:
            r = self.unrestorable[0]
            more = f" (and {len(self.unrestorable) - 1} more)" if len(self.unrestorable) > 1 else ""
            raise DumpError(f"not restorable: pid {r.pid}: {r.kind} {r.what}: {r.why}{more}; "
                            "the process was left as it was (drop --restorable to dump it anyway)")

    def _timens_problem(self, p: ProcessDump) -> str | None:
        """Why CRIU could not restore ``p``'s time namespace, or None. It
        restores one: the dumper's, or another shared by the whole tree (the
        root's; criu/timens.c prepare_timens makes a new one with the saved
        clocks) -- where a process `criu restore` brought back lives. It
        refuses a process whose children get another one (criu/namespaces.c:
        "Can't dump nested time namespace")."""
        root = next(q for q in self.processes if q.pid == self.pid)
        if p.ns_ids.get("time") != root.ns_ids.get("time"):
            return "differs from the root process's: only one time namespace is saved"
        try:
            nested = os.stat(f"/proc/{p.pid}/ns/time").st_ino != os.stat(f"/proc/{p.pid}/ns/time_for_children").st_ino
        except OSError:  # a kernel without time namespaces, a leader that exited (its ns/ is gone)
            return None
        return "its children get another time namespace (nested time namespaces are not saved)" if nested else None

    def _unrestorable(self, pid: int, kind: str, what: str, why: str) -> None:
        self.unrestorable.append(inventory_pb2.unrestorable_reason(pid=pid, kind=kind, what=what, why=why))

    def arm(self) -> None:
        for p in self.processes:
            if not p.tracker.arms:
                continue
            want = [(v.start, v.end) for v, pl in zip(p.vmas, p.plans) if pl.mode == "pages"]
            p.tracker.prepare(self.tracer, p.pid, p.vmas, want, p.parent.inventory if p.parent else None)

    def scan(self) -> None:
        """The mask scanner over each process not scanned since its VMAs
        were (re)listed in this freeze."""
        t0 = time.monotonic_ns()
        for p in self.processes:
            if not p.scanned:
                self._scan_one(p)
                p.scanned = True
        self.scan_ns += time.monotonic_ns() - t0

    def _scan_one(self, p: ProcessDump) -> None:
        starts, ends = p.scan_iv
        # The pagemap reader reads only the resident pages of large anonymous VMAs (mincore run in the
        # target by the warden); not when this freeze registers uffd-wp, whose markers mincore misses
        # and the pre-read VmFlags do not show yet.
        residency = None if p.tracker.name == "uffd-wp" else functools.partial(self.tracer.call, resident_runs, p.pid)
        with open_backend(p.proc, self.opts.backend, progress=None if self.opts.progress else False,
                          residency=residency) as be:
            self.backend_name = be.name
            masks = dump_masks(be.supported)
            # WRITTEN|SWAPPED tell uffd-wp markers apart (see drop_uffd_markers).
            returned = (p.tracker.returned | Category.WRITTEN | Category.SWAPPED) & be.supported
            if p.parent is not None and not be.supported & p.tracker.changed:
                raise UnsupportedKernel(f"{p.tracker.name} tracking with the {be.name} scanner",
                                        f"it cannot report {p.tracker.changed.name}")
            masks = type(masks)(anyof=masks.anyof, excluded=masks.excluded, returned=returned)
            masks = with_guards(masks, be.supported)  # MADV_GUARD_INSTALL ranges, recorded as CRIU does
            if len(starts):
                # The pagemap reader reads entries only inside the VMAs it is given; the ioctl needs none.
                vmas = [v for v, pl in zip(p.vmas, p.plans) if pl.mode == "pages"] if be.name == "pagemap" else None
                regions = scan_range(be, int(starts[0]), int(ends[-1]), masks, vmas=vmas).array
            else:
                regions = np.empty(0, [("start", "<u8"), ("end", "<u8"), ("categories", "<u8")])
        regions, p.guard_vmas = split_guards(regions)
        # Regions merge across VMA boundaries: keep what lies in scanned VMAs.
        s, e, cats = iv.intersect((regions["start"], regions["end"]), p.scan_iv, keep=regions["categories"])
        s, e, cats = drop_uffd_markers(p.proc.mm_tid(), s, e, cats, p.marker_iv)
        p.regions = (s, e, cats)

    def select(self) -> None:
        """Pages to copy now; pages unchanged since the base are taken from
        it instead: the parent checkpoint (PE_PARENT entries) or the copies
        of earlier ``--pre-copy`` rounds."""
        for p in self.processes:
            s, e, cats = p.regions
            whole = p.whole_iv
            if p.parent is None and not p.rounds:
                p.copy_iv = _union((s, e), whole)
                continue
            tracked = p.tracker.tracked()
            changed = (cats & int(p.tracker.changed)) != 0
            in_t_s, in_t_e, src = iv.intersect((s, e), tracked, keep=np.arange(len(s)))
            unchanged = (in_t_s[~changed[src]], in_t_e[~changed[src]])
            if p.parent is not None:
                covered, _ = _split_by_parent(unchanged, p.parent)
                p.parent_iv = covered
            else:
                done = Extents.concat(p.rounds)
                covered = iv.intersect(unchanged, iv.union(done.vaddr, done.vaddr + done.nbytes))
                p.reuse_iv = covered
            p.copy_iv = _union(iv.subtract((s, e), covered), whole)

    def snapshot(self) -> None:
        """Processes planned for it fork (:mod:`dumper.dump.snapshot`): their
        pages are read from the child after the thaw; only what the child
        does not hold stays to copy now."""
        for p in self.processes:
            if p.fork_why is not None:
                continue
            out = kept_out(p.vmas)
            forked = iv.subtract(p.copy_iv, out)
            if self.opts.copy == "auto" and iv.total(*forked) < AUTO_MIN_BYTES:
                p.fork_why = f"less than {AUTO_MIN_BYTES >> 20} MiB to copy"
                continue
            try:
                p.snapshot = ForkSnapshot.take(self.tracer, p.pid, forked, self.opts.thaw)
            except SnapshotRefused as err:
                p.fork_why = str(err)
                continue
            p.copy_iv = iv.intersect(p.copy_iv, out)

    def copy(self) -> None:
        with _progress(sum(iv.total(*p.copy_iv) for p in self.processes), self.opts.progress) as bar:
            for p in self.processes:
                p.copier = PageCopier(p.proc)
                s, e = p.copy_iv
                forced = _inside(s, p.forced_iv)
                try:
                    p.extents = p.copier.copy(self.spool, s, e, forced=forced,
                                              progress=bar.update if bar is not None else None)
                finally:
                    p.copier.close()

    def share_cow(self) -> None:
        """Pages a process still shares copy-on-write with an earlier one
        of the tree leave its copy set (:mod:`dumper.dump.cow`)."""
        self.cow.plan(self.processes)
        if self.cow.pages_shared:
            self.notes.append(f"{plural(self.cow.pages_shared, 'page')} ({_mib(self.cow.pages_shared * PAGE_SIZE)}) shared "
                              "copy-on-write between processes: stored once")

    def copy_shared(self) -> None:
        """Shared memory objects into the spool, once each, still frozen
        (:meth:`dumper.dump.shmem.SharedMemory.copy`)."""
        self.shmem.copy(self.spool, self.opts.backend)

    def reset(self) -> None:
        for p in self.processes:
            self.notes.extend(p.tracker.reset(self.tracer, p.pid, self.dest))

    def thaw(self) -> None:
        self.tracer.thaw(self.opts.thaw)
        # CRIU's frozen_time: every thread stopped -> the thaw done (criu/cr-dump.c)
        self.frozen_ns = self.tracer.thaw_done_ns - self.tree.stopped_ns

    def write(self) -> DumpResult:
        """Everything after the thaw: pages from the spool or the snapshot,
        then the images."""
        opts, w = self.opts, self.writer
        pages_stats = []
        skipped: dict[str, int] = {}
        if opts.copy == "fork":
            self.notes.extend(f"pid {p.pid}: pages copied while frozen: {p.fork_why}"
                              for p in self.processes if p.snapshot is None)
        total = sum(p.extents.total + sum(e.total for e in self._reused(p))
                    + (p.snapshot.total if p.snapshot is not None else 0) for p in self.processes)
        for i, p in enumerate(self.processes, 1):
            p.pages_id = i  # all first: PE_COW references name earlier processes' streams
        with _progress(total, opts.progress, "writing") as bar:
            for p in self.processes:
                pw = w.pages_writer(p.pid, p.pages_id, compress=opts.compress, level=opts.level,
                                    threads=opts.threads, progress=bar.update if bar is not None else None)
                cow = self.cow.runs(p, self.processes, self._stream)
                self._write_pages(p, pw, cow)
                pw.close()  # its workers read the snapshot: released after
                if p.snapshot is not None:
                    self._release_snapshot(p)
                write_cow_refs(w, p, cow)
                pages_stats.append(pw.stats)
                w.write_mm(p.pid, self._mm_entry(p, skipped))
        shm_stats, _ = self.shmem.write(w, self.spool, len(self.processes) + 1, compress=opts.compress,
                                        level=opts.level, threads=opts.threads, ipc_ns_id=self.root_ns.get("ipc", 0))
        self._write_task_images()
        st = _sum_stats(pages_stats + shm_stats)
        copiers = [c for p in self.processes for c in (p.copier, p.snapshot) if c is not None]
        read_ns = sum(c.read_ns for c in copiers)
        unreadable = [u for c in copiers for u in c.unreadable]
        n_unreadable = sum(c.pages_unreadable for c in copiers)
        stats = stats_pb2.dump_stats_entry(
            freezing_time=min(self.freezing_ns // 1000, 2**32 - 1),
            frozen_time=min(self.frozen_ns // 1000, 2**32 - 1),
            memdump_time=min(read_ns // 1000, 2**32 - 1),
            memwrite_time=min(st.write_ns // 1000, 2**32 - 1),
            pages_scanned=self._pages_scanned(),
            pages_skipped_parent=st.pages_parent,
            pages_written=st.pages_present,
            pages_lazy=0,
            bytes_raw=st.bytes_raw,
            bytes_compressed=st.bytes_compressed,
            scan_time_us=self.scan_ns // 1000,
            read_time_us=read_ns // 1000,
            compress_time_us=st.compress_ns // 1000,
            write_time_us=st.write_ns // 1000,
            pages_unreadable=n_unreadable,
            shpages_scanned=self.shmem.size_pages,
            shpages_written=self.shmem.pages_copied,
        )
        w.write_stats(stats)
        root = self.processes[0]
        inv = inventory_pb2.inventory_entry(
            dumper_version=__version__,
            kernel_release=os.uname().release,
            machine=os.uname().machine,
            scanner=self.backend_name,
            dump_start_ns=self.wall_begin,
            dump_end_ns=time.time_ns(),
            root_pid=root.pid,
            pids=[p.pid for p in self.processes],
            pre_dump=opts.pre_dump,
            task_start_time=root.start_time,
            checkpoint_id=new_checkpoint_id(),
        )
        root.tracker.inventory(inv)
        criu_core.fill_inventory(inv, criu_core.ids_entry({k: 1 for k in KobjIds.KINDS}, self.root_ns))
        parent_link = None
        if root.parent is not None:
            parent_link = os.path.relpath(os.path.abspath(root.parent.path), os.path.abspath(self.dest))
            w.link_parent(parent_link)
            inv.parent_path = parent_link
            if root.parent.inventory.checkpoint_id:
                inv.parent_checkpoint_id = root.parent.inventory.checkpoint_id
        inv.unrestorable.extend(self.unrestorable)
        rf = root.frozen
        if self.files.needs_shell_job or (rf is not None and rf.sid != rf.pid):
            inv.shell_job = True  # `criu restore --shell-job`: the terminal or session lives outside
        inv.compression = fmt.COMPRESSION_ZSTD if opts.compress else fmt.COMPRESSION_NONE
        if opts.compress:
            inv.compression_level = opts.level
            inv.frame_pages = fmt.FRAME_PAGES
        w.write_inventory(inv)
        path = w.commit()
        self.tracer.keep()  # the checkpoint exists: what was armed for it stays
        return DumpResult(
            dest=os.fspath(path), pid=root.pid, comm=root.proc.name, backend=self.backend_name,
            tracker=inv.tracker, thaw=opts.thaw,
            was_stopped=bool(root.frozen and root.frozen.was_stopped), parent=parent_link, pre_dump=opts.pre_dump,
            frozen_ns=self.frozen_ns, freezing_ns=self.freezing_ns, scan_ns=self.scan_ns,
            read_ns=read_ns, total_ns=time.monotonic_ns() - self.t_begin,
            pages_scanned=self._pages_scanned(), pages_written=st.pages_present, pages_parent=st.pages_parent,
            pages_unreadable=n_unreadable, bytes_raw=st.bytes_raw, bytes_written=st.bytes_file,
            compress_ns=st.compress_ns, write_ns=st.write_ns, vmas=len(root.vmas), vmas_skipped=skipped,
            unreadable=unreadable, notes=self.notes, pids=[p.pid for p in self.processes],
            spool_bytes=self.spool.size, spilled_bytes=self.spool.spilled_bytes,
            unrestorable=[f"pid {r.pid}: {r.kind} {r.what}: {r.why}" for r in self.unrestorable],
            copy="fork" if any(p.snapshot is not None for p in self.processes) else "frozen",
            reap_ns=self.reap_ns, exited_after_thaw=root.pid in self.target_gone,
            copy_why=root.fork_why if root.snapshot is None and root.fork_why else "",
            copy_read=root.snapshot.read_via if root.snapshot is not None else "",
        )

    # -- helpers ---------------------------------------------------------------

    def _write_task_images(self) -> None:
        """core-TID, ids-PID, pstree, seccomp and timens images (criu/cr-dump.c)."""
        w = self.writer
        seccomp = criu_core.seccomp_entry([p.task for p in self.processes])  # sets each thread's filter index
        tree = []
        pids = {p.pid for p in self.processes} | {z.pid for z in self.zombies}
        for p in self.processes:
            fp = p.frozen
            for i, t in enumerate(p.task.threads):
                w.write_image(fmt.core_name(t.tid), "CORE", [criu_core.core_entry(p.task, t, leader=i == 0)])
            w.write_image(fmt.ids_name(p.pid), "IDS", [criu_core.ids_entry(p.kobj_ids, p.ns_ids)])
            ppid = fp.ppid if fp.ppid in pids and p.pid != self.pid else 0
            tree.append(criu_core.pstree_entry(p.pid, ppid, fp.pgid, fp.sid, [t.tid for t in p.task.threads]))
        for z, core in zip(self.zombies, self.zombie_cores):  # recorded, never read: CRIU restores them as zombies
            w.write_image(fmt.core_name(z.pid), "CORE", [core])
            tree.append(criu_core.pstree_entry(z.pid, z.ppid, z.pgid, z.sid, [z.pid]))
        w.write_image(fmt.PSTREE_NAME, "PSTREE", tree)
        self.files.write(w)  # files, fs-PID, pipes-data, fifo-data, ghost files, tty-info
        for files_id, fdinfos in self._fdinfos.items():
            write_fdinfo(w, files_id, fdinfos)
        w.write_image(fmt.SECCOMP_NAME, "SECCOMP", [seccomp])
        # CRIU names the image after the root's time namespace when it is not
        # the dumper's (timens-0.img otherwise) and restores into a new one
        w.write_image(fmt.timens_name(self.timens_id), "TIMENS", [criu_core.timens_entry(self.timens_offsets)])

    def _pages_scanned(self) -> int:
        return sum((iv.total(*p.scan_iv) + iv.total(*p.whole_iv)) // PAGE_SIZE for p in self.processes)

    def _stream(self, p: ProcessDump):
        """``p``'s page stream as written: extents by vaddr, first index of each."""
        return stream_layout(Extents.concat([p.extents, *self._reused(p)]))

    def _write_pages(self, p: ProcessDump, pw, cow=None) -> None:
        """PE_PRESENT entries from the spool, PE_PARENT entries and PE_COW
        entries (``cow``: :class:`~dumper.dump.cow.CowRuns`), by vaddr."""
        ext = Extents.concat([p.extents, *self._reused(p)])
        ps, pe = p.parent_iv
        cs = cow.vaddr if cow is not None else np.empty(0, _U64)
        cn = cow.nr_pages * _U64(PAGE_SIZE) if cow is not None else np.empty(0, _U64)
        fs, fe = p.snapshot.runs if p.snapshot is not None else iv.EMPTY
        vaddr = np.concatenate((ext.vaddr, ps, cs, fs)).astype(_U64)
        nbytes = np.concatenate((ext.nbytes, pe - ps, cn, fe - fs)).astype(_U64)
        offset = np.concatenate((ext.offset, np.zeros(len(ps) + len(cs) + len(fs), _U64)))
        kind = np.concatenate((np.zeros(len(ext), np.int8), np.ones(len(ps), np.int8), np.full(len(cs), 2, np.int8),
                               np.full(len(fs), 3, np.int8)))
        order = np.argsort(vaddr, kind="stable")
        spool = self.spool
        for a, n, off, k in zip(vaddr[order].tolist(), nbytes[order].tolist(),
                                offset[order].tolist(), kind[order].tolist()):
            if k == 0:
                pw.add_present(a, spool.read(off, n), stable=True)
            elif k == 1:
                pw.add_parent(a, n // PAGE_SIZE)
            elif k == 2:
                pw.add_cow(a, n // PAGE_SIZE)
            else:
                p.snapshot.write_run(pw, a, a + n)

    def _release_snapshot(self, p: ProcessDump) -> None:
        """The snapshot child killed and reaped; its pages join ``extents``
        (by vaddr) and its unreadable pages the restorability problems."""
        snap = p.snapshot
        stopped = snap.release(self.tracer, self.opts.thaw)
        if stopped is None:
            self.target_gone.add(p.pid)
            self.notes.append(f"pid {p.pid} exited while its pages were read from its snapshot (if it was killed, "
                              "the kernel log says whether by the OOM killer): the checkpoint holds it as it was "
                              "at the freeze")
        else:
            self.reap_ns += stopped
        ext = Extents.concat([p.extents, snap.extents])
        order = np.argsort(ext.vaddr, kind="stable")
        p.extents = Extents(ext.vaddr[order], ext.nbytes[order], ext.offset[order])
        if snap.unreadable:
            self._unrestorable(p.pid, "memory", plural(snap.pages_unreadable, "page"), "pages that could not be read")
            if self.opts.restorable:
                raise DumpError(f"not restorable: pid {p.pid}: {plural(snap.pages_unreadable, 'page')} of its "
                                "snapshot could not be read (drop --restorable to dump it anyway)")

    @staticmethod
    def _reused(p: ProcessDump) -> list[Extents]:
        """Where the pages of ``reuse_iv`` live in the spool: for each piece,
        the newest round that copied it."""
        out = []
        left = p.reuse_iv
        for ext in reversed(p.rounds):
            if not len(left[0]):
                break
            s, e, idx = _pieces(left, ext)
            if len(s):
                out.append(Extents(s, e - s, ext.offset[idx] + (s - ext.vaddr[idx])))
                left = iv.subtract(left, (s, e))
        return out

    def _mm_entry(self, p: ProcessDump, skipped: dict[str, int]) -> mm_pb2.mm_entry:
        mm = p.mm
        vs = np.array([v.start for v in p.vmas], _U64)
        ve = np.array([v.end for v in p.vmas], _U64)
        dumped = _pages_per(vs, ve, (p.extents.vaddr, p.extents.vaddr + p.extents.nbytes)).tolist()
        in_parent = _pages_per(vs, ve, p.parent_iv).tolist()
        for i, (v, plan) in enumerate(zip(p.vmas, p.plans)):
            if plan.mode == "skip":
                skipped[plan.reason] = skipped.get(plan.reason, 0) + 1
            e = vma_entry_from(
                v, status=plan.status, shmid=p.vma_shmid.get(i, 0), dumped=plan.mode != "skip",
                contents_skipped_reason=plan.reason or None, nr_pages_dumped=dumped[i],
                nr_pages_parent=in_parent[i] or None, into=mm.vmas)
            if i in p.vma_fdflags:
                e.fdflags = p.vma_fdflags[i]
        apply_file_identities(mm.vmas, p.file_ids)
        as_criu_lists_them(mm)  # [vvar] + [vvar_vclock]: one VMA
        mm.vmas.extend(p.guard_vmas)  # CRIU 4.2: guard pseudo-VMAs end the list
        return mm


def _record_coredump_filter(mm: mm_pb2.mm_entry, tid: int) -> None:
    """mm_entry.coredump_filter (ours, for ELF cores) from a live thread's
    view: /proc/PID/coredump_filter of an exited leader reads empty."""
    try:
        with open(f"/proc/{tid}/coredump_filter", "rb") as f:
            mm.coredump_filter = int(f.read(), 16)
    except (OSError, ValueError):
        pass  # left unset: readers take the kernel's default


# maps this long (about 3,000 VMAs) is compared in the background: below
# that, starting a thread costs more than the read
_MAPS_IN_BACKGROUND = 256 << 10


class _MapsCheck:
    """``/proc/PID/maps`` of some processes, read by a background thread
    (the read releases the GIL; the kernel does the work)."""

    def __init__(self, processes: list[ProcessDump]) -> None:
        self._processes = processes
        self._got: list = []
        self._thread = threading.Thread(target=self._read, name="maps-check", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for p in self._processes:
            try:
                self._got.append(p.proc.read_file("maps"))
            except BaseException as err:  # NoSuchProcess...: raised in the caller
                self._got.append(err)
                return

    def result(self) -> list[tuple[ProcessDump, bytes]]:
        """``(process, maps bytes)`` pairs; the reader's error re-raised."""
        self._thread.join()
        for got in self._got:
            if isinstance(got, BaseException):
                raise got
        return list(zip(self._processes, self._got))


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` now, parents before children."""
    out, todo = [], [pid]
    while todo:
        cur = todo.pop(0)
        try:
            kids = Process(cur).children()
        except NoSuchProcess:
            continue
        out.extend(kids)
        todo.extend(kids)
    return out


def _sum_stats(all_stats):
    """The counters of every process's pages writer, added up."""
    from ..image.writer import PagesWriterStats

    total = PagesWriterStats()
    for st in all_stats:
        for f in total.__dataclass_fields__:
            setattr(total, f, getattr(total, f) + getattr(st, f))
    return total


def _criu_auxv(words: list[int]) -> list[int]:
    """The saved auxv as CRIU keeps it: the pairs before AT_NULL, at most
    AT_VECTOR_SIZE (44 on x86_64, criu/arch/x86/include/asm/types.h) words;
    its restore refuses more as a corrupted image."""
    n = next((i for i in range(0, len(words) - 1, 2) if words[i] == 0), len(words) - len(words) % 2)
    return words[:min(n, 44)]


def _pieces(ivs, ext: Extents):
    """``ivs`` cut to the extents of ``ext``: ``(starts, ends, extent index)``."""
    es = ext.vaddr
    s, e, idx = iv.intersect((es, es + ext.nbytes), ivs, keep=np.arange(len(es)))
    order = np.argsort(s, kind="stable")
    return s[order], e[order], idx[order]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _union(a, b):
    """Union of two disjoint interval sets."""
    s = np.concatenate((a[0], b[0])).astype(_U64)
    e = np.concatenate((a[1], b[1])).astype(_U64)
    order = np.argsort(s, kind="stable")
    return iv.merge(s[order], e[order])


def _inside(starts: np.ndarray, cover) -> np.ndarray:
    """For each run start, whether it lies in the interval set ``cover``."""
    cs, ce = cover
    if not len(cs) or not len(starts):
        return np.zeros(len(starts), bool)
    k = iv.owner(cs, starts)
    ok = k >= 0
    out = np.zeros(len(starts), bool)
    out[ok] = starts[ok] < ce[k[ok]]
    return out


def _split_by_parent(runs, parent: ParentInfo):
    """``runs`` (bytes) -> (covered by the parent's pagemap, not covered).
    The parent's cover is in pages (it may end at 2**64 bytes); runs end
    below that, so the pages are clipped before going to bytes."""
    ps = np.uint64(PAGE_SIZE)
    top = np.uint64((1 << 64) // PAGE_SIZE - 1)
    cs = np.minimum(parent.start_pages, top) * ps
    ce = np.minimum(parent.end_pages, top) * ps
    ok = ce > cs
    cover = (cs[ok], ce[ok])
    return iv.intersect(runs, cover), iv.subtract(runs, cover)


def _pages_per(vs: np.ndarray, ve: np.ndarray, ivs) -> np.ndarray:
    """Pages of the interval set ``ivs`` inside each VMA ``[vs[i], ve[i])``."""
    out = np.zeros(len(vs), np.int64)
    if not len(ivs[0]) or not len(vs):
        return out
    s, e, idx = iv.intersect((vs, ve), ivs, keep=np.arange(len(vs)))
    np.add.at(out, idx, ((e - s) // PAGE_SIZE).astype(np.int64))
    return out


def _progress(total_bytes: int, enabled: bool, what: str = "copying"):
    """A progress bar by bytes (tqdm on stderr), shown only for work that
    takes more than about a second."""
    if not enabled:
        return nullcontext(None)
    from ..progress import byte_bar

    return byte_bar(total_bytes, what)
